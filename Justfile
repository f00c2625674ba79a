# nnct recipes. Run `bash setup.sh` once first (it installs `just` into .venv/bin).
set shell := ["bash", "-euo", "pipefail", "-c"]
export PATH := justfile_directory() + "/.venv/bin:" + env_var("PATH")
export HF_HUB_OFFLINE := "1"

# What the experiment recipes trace (`just data=FILE model=DIR subject` for others).
data := "experiments/data/known_smollm2.jsonl"
model := "smollm2-135m"
runs := "runs"

# Create .venv and install everything (torch pinned to the CPU build first).
setup:
    bash setup.sh

# Trace a few facts the embedded model knows (subject, no context: ROME's experiment); the
# trace ends with a summary of the cube (`nnct info CUBE` prints it again later).
demo out="runs/demo.nc":
    nnct trace --experiment subject-noctx --data experiments/data/known_smollm2.jsonl --max-examples 3 --components hidden --out {{out}}

# Experiment 0 (ROME, no context) from experiments/subject-noctx.toml into runs/subject-noctx.nc;
# options after the name override the definition (e.g. `just subject-noctx --max-examples 30`).
subject-noctx *args: (experiment "subject-noctx" args)

# Experiment 1: the subject mention inside the context passage (experiments/subject.toml).
subject *args: (experiment "subject" args)

# Experiment 2: the object mention inside the context passage (experiments/object.toml).
object *args: (experiment "object" args)

# Experiment 3: the relation words of the context passage (experiments/relation.toml).
relation *args: (experiment "relation" args)

# Any experiment from its definition, experiments/NAME.toml, into runs/NAME.nc (an
# interrupted run is resumed).
experiment name *args:
    nnct trace --definition experiments/{{name}}.toml --model {{model}} --data {{data}} --out {{runs}}/{{name}}.nc --resume {{args}}

# The memory study over the first n records (see README): answers.csv, the four experiments
# traced (`args` go to every trace, `lean` also to object and relation), summarised and drawn
# (the fact and cf variants apart: their targets differ), and the study's tables. Rerunning
# it keeps finished cubes and resumes an interrupted trace; the rest is redone (seconds).
memory-study n="30" out=(runs + "/memory") args="" lean="":
    mkdir -p {{out}}
    nnct answers --model {{model}} --data {{data}} --max-examples {{n}} --out {{out}}/answers.csv | tee {{out}}/answers.txt
    for e in subject-noctx subject; do test -f {{out}}/$e.nc || nnct trace --definition experiments/$e.toml --model {{model}} --data {{data}} --max-examples {{n}} --out {{out}}/$e.nc --resume {{args}}; done
    for e in object relation; do test -f {{out}}/$e.nc || nnct trace --definition experiments/$e.toml --model {{model}} --data {{data}} --max-examples {{n}} --out {{out}}/$e.nc --resume {{args}} {{lean}}; done
    nnct summarize {{out}}/subject-noctx.nc --out {{out}}/subject-noctx.summary.nc --csv {{out}}/subject-noctx.summary.csv > {{out}}/subject-noctx.summary.txt
    nnct plot {{out}}/subject-noctx.nc -o {{out}}/figures/subject-noctx
    for e in subject object relation; do for v in fact cf; do nnct summarize {{out}}/$e.nc --variant $v --out {{out}}/$e.$v.summary.nc --csv {{out}}/$e.$v.summary.csv > {{out}}/$e.$v.summary.txt; nnct plot {{out}}/$e.nc --variant $v -o {{out}}/figures/$e.$v; done; done
    python analysis/memory_study.py {{out}} | tee {{out}}/memory_study.txt
    python analysis/context_vs_memory.py {{out}} -o {{out}}/figures

# Subject substitution against Gaussian noise on the same 40 known facts (subject-noctx, ROME's
# settings): both traces (resumed if interrupted), then the comparison's table and figures.
substitution-study out=(runs + "/subst"):
    nnct trace --experiment subject-noctx --corruption substitute --data experiments/data/substitution_study.jsonl --out {{out}}/substitute.nc --resume -q
    nnct trace --experiment subject-noctx --data experiments/data/substitution_study.jsonl --out {{out}}/noise.nc --resume -q
    python analysis/substitution_vs_noise.py {{out}}/noise.nc {{out}}/substitute.nc -o {{out}}/comparison

# ROME's severed paths and the attention heads that carry a fact (embedded model, 30 known facts):
# hidden with later MLP / attention severed under noise (ROME's settings), one head at a time
# (one layer, and at all positions) with the subject or the context's object substituted;
# then the tables and figures of analysis/results/heads/.
heads-study n="30" out=(runs + "/heads"):
    nnct trace --experiment subject-noctx --data {{data}} --max-examples {{n}} --components hidden,hidden-sever-mlp,hidden-sever-attn --out {{out}}/severed.nc --resume -q
    nnct trace --experiment subject-noctx --corruption substitute --data experiments/data/substitution_study.jsonl --max-examples {{n}} --components head,head_all_pos --window 1 --out {{out}}/heads-subject.nc --resume -q
    nnct trace --experiment object --corruption substitute --data experiments/data/substitution_study.jsonl --max-examples {{n}} --components head,head_all_pos --window 1 --out {{out}}/heads-object.nc --resume -q
    python analysis/heads_and_severing.py --severed {{out}}/severed.nc --heads {{out}}/heads-subject.nc --heads {{out}}/heads-object.nc -o {{out}}/figures

# Attribution patching against exact patching on the substitution study's 40 facts (noise and
# subject substitution; the exact cubes from `just substitution-study`, committed in
# analysis/results/substitution): AtP, AtP* (GradDrop), --verify-top 20 screens, then the
# agreement tables of analysis/results/atp/.
atp-study out=(runs + "/atp") exact="analysis/results/substitution":
    for c in noise substitute; do for e in "" --graddrop; do nnct attribute --experiment subject-noctx --corruption $c --data experiments/data/substitution_study.jsonl $e --out {{out}}/$c.atp${e:+star}.nc --resume -q; done; done
    for c in noise substitute; do nnct attribute --experiment subject-noctx --corruption $c --data experiments/data/substitution_study.jsonl --verify-top 20 --out {{out}}/$c.screened.nc --resume -q; done
    python analysis/atp_agreement.py --case noise {{exact}}/noise.nc {{out}}/noise.atp.nc --case noise {{exact}}/noise.nc {{out}}/noise.atpstar.nc --case substitute {{exact}}/substitute.nc {{out}}/substitute.atp.nc --case substitute {{exact}}/substitute.nc {{out}}/substitute.atpstar.nc --screened noise {{out}}/noise.screened.nc --screened substitute {{out}}/substitute.screened.nc -o {{out}}

# ROME's Figure 5 on the embedded model: n facts edited at layers 0, k, 2k, ... beside the MLP's
# traced effect, and one edited fact traced again (analysis/results/editing/; resumes by layer).
edit-sweep n="6" every="4" out="analysis/results/editing":
    python analysis/edit_by_layer.py --data {{data}} --cube analysis/results/memory/subject-noctx.nc -n {{n}} --every {{every}} -o {{out}}

# Memorisation circuits on the embedded model (analysis/results/memorization/). First what it
# memorises of the package corpus, in the contract's windows (P = N = 50); then the four short
# texts it reproduces best in short overlapping windows (P = 32, N = 8, stride 2), their
# divergence and dataset pairs, an EAP-IG circuit on the first `pairs` pairs of each (timed),
# verified on the rest (on the same pairs when none are left) against random circuits, their
# pictures (the divergence circuit whole; each circuit's 300 strongest edges), and the summary.
# Scoring resumes where a stopped run left off; finished circuits and verifications are kept.
memorization-study out="analysis/results/memorization" threshold="0.75" pairs="20":
    mkdir -p {{out}}
    nnct memorization score --texts experiments/data/memorization --out {{out}}/corpus-scores.jsonl -q
    nnct memorization score --texts experiments/data/memorization-short.jsonl --prefix 32 --continuation 8 --stride 2 --out {{out}}/scores.jsonl -q
    for m in divergence dataset; do test -f {{out}}/pairs-$m.jsonl || nnct memorization pairs --scores {{out}}/scores.jsonl --mode $m --threshold {{threshold}} --out {{out}}/pairs-$m.jsonl; done
    for m in divergence dataset; do head -n {{pairs}} {{out}}/pairs-$m.jsonl > {{out}}/$m.find.jsonl; tail -n +$(({{pairs}} + 1)) {{out}}/pairs-$m.jsonl > {{out}}/$m.heldout.jsonl; done
    for m in divergence dataset; do test -f {{out}}/circuit-$m.nc || /usr/bin/time -v nnct circuit find --pairs {{out}}/$m.find.jsonl --out {{out}}/circuit-$m.nc -q 2>&1 | grep -E "wrote|skipped|Elapsed|Maximum resident" | tee {{out}}/find-$m.txt; done
    for m in divergence dataset; do v={{out}}/$m.heldout.jsonl; test -s $v || v={{out}}/$m.find.jsonl; test -f {{out}}/verify-$m.json || nnct circuit verify {{out}}/circuit-$m.nc --pairs $v --json {{out}}/verify-$m.json; done
    nnct plot {{out}}/circuit-divergence.nc -o {{out}}/figures/divergence
    for m in divergence dataset; do nnct plot {{out}}/circuit-$m.nc --edges 300 -o {{out}}/figures/$m-top300; done
    python analysis/memorization_study.py {{out}} | tee {{out}}/summary.txt

# The test suite: tiny random models, the embedded model, a local NDIF server (set up first, once).
# Without arguments the NDIF tests (mostly waiting on their server) run in a second pytest
# process beside the others, one torch thread each; the embedded model is converted first, so
# that the two do not both write its cache. Fails when either fails.
test *args: ndif-setup
    #!/usr/bin/env bash
    set -uo pipefail
    if [ -n "{{args}}" ]; then exec python -m pytest -q {{args}}; fi
    python -c "from nnct.model.embedded import local_dir; local_dir()"
    log=$(mktemp)
    python -m pytest -q -p no:cacheprovider -m ndif > "$log" 2>&1 &
    ndif=$!
    python -m pytest -q -m "not ndif"
    rest=$?
    wait $ndif
    remote=$?
    echo "--- NDIF tests:"
    cat "$log"
    rm -f "$log"
    exit $(( rest != 0 || remote != 0 ))

# Only the fast tests (no embedded model, no NDIF server).
test-fast *args:
    python -m pytest -q -m "not embedded and not ndif" {{args}}

# The local NDIF server the remote tests start (tests/ndif/): its own venv with ndif 0.1.2, and
# a Postgres of API keys; about 2 minutes once, then nothing.
ndif-setup:
    #!/usr/bin/env bash
    set -euo pipefail
    done=${NDIF_WORK:-${TMPDIR:-/tmp}/local-ndif}/nnct-setup.done
    [ -f "$done" ] && exit 0
    bash tests/ndif/local-ndif.sh setup
    bash tests/ndif/auth-db.sh setup
    touch "$done"

# nnct's engine against one forward per cell, side by side (prints a table; --json FILE to keep it;
# --corruption prompt for a prompt pair).
bench *args:
    nnct bench {{args}}

lint:
    ruff check nnct tests experiments analysis

# Many edits at once (analysis/results/editing/scaling/): ROME one after another, MEMIT and
# AlphaEdit in one batch and in sequential batches of 10 (AlphaEdit also with a null space of
# at most 1% of C's trace), at each size; each arm one `nnct edit` process (time and peak
# memory recorded); resumes from scaling.csv and from each run's finished batches.
edit-scaling sizes="1,10,100,300,948" arms="rome-sequential,memit,alphaedit,memit-seq10,alphaedit-seq10,alphaedit-e01,alphaedit-e01-seq10":
    python analysis/edit_scaling.py --sizes {{sizes}} --arms {{arms}} -o analysis/results/editing/scaling

# Interactive pages of the committed studies (`nnct view`: one self-contained HTML file each,
# no server, no network) into analysis/results/<study>/view.html, each of its study's main
# file; then the screenshots of each page kind in analysis/results/views/. Opens the memory
# study's page where there is a display; elsewhere it only prints the paths.
view results="analysis/results":
    nnct view {{results}}/memory/subject.nc -o {{results}}/memory/view.html
    nnct view {{results}}/substitution/noise.nc {{results}}/substitution/substitute.nc -o {{results}}/substitution/view.html
    nnct view {{results}}/substitution/noise.nc {{results}}/atp/noise.screened.nc -o {{results}}/atp/view.html
    nnct view {{results}}/heads/heads-object.nc -o {{results}}/heads/view.html
    nnct view {{results}}/readouts/noise.nc -o {{results}}/readouts/view.html
    nnct view {{results}}/paths/direct.nc -o {{results}}/paths/view.html
    nnct view {{results}}/editing/edits-30-layer4.nc -o {{results}}/editing/view.html
    nnct view {{results}}/memorization/circuit-dataset.nc {{results}}/memorization/verify-dataset.json -o {{results}}/memorization/view.html
    python analysis/view_screenshots.py {{results}}
    if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && command -v xdg-open >/dev/null; then xdg-open {{results}}/memory/view.html; fi
