# Acceptance checks on the embedded model, and committed results recomputed; one log.
cd /work/main
export HF_HUB_OFFLINE=1 PATH=/work/main/.venv/bin:$PATH
A=/tmp/acc
t() { echo "== $*"; /usr/bin/time -f "   (%e s, %M KB)" "$@" 2>&1 | grep -v "Loading\|Writing\|it/s" | tail -6; }
# 1. committed results recomputed
echo "== summaries of committed cubes vs committed text"
for e in subject-noctx; do nnct summarize analysis/results/memory/$e.nc > $A/$e.summary.txt; diff <(tail -n +2 $A/$e.summary.txt) <(tail -n +2 analysis/results/memory/$e.summary.txt) && echo "   $e: summary identical"; done
for e in subject object relation; do for v in fact cf; do nnct summarize analysis/results/memory/$e.nc --variant $v > $A/$e.$v.txt; diff <(tail -n +2 $A/$e.$v.txt) <(tail -n +2 analysis/results/memory/$e.$v.summary.txt) > /dev/null && echo "   $e.$v: identical" || echo "   $e.$v: DIFFERS"; done; done
python analysis/memory_study.py analysis/results/memory > $A/memory_study.txt 2>&1; diff $A/memory_study.txt analysis/results/memory/memory_study.txt > /dev/null && echo "   memory_study.txt identical" || echo "   memory_study.txt DIFFERS"
python analysis/memorization_study.py analysis/results/memorization > $A/mem_summary.txt 2>&1; diff $A/mem_summary.txt analysis/results/memorization/summary.txt > /dev/null && echo "   memorization summary identical" || echo "   memorization summary DIFFERS"
t nnct trace --experiment subject-noctx --data experiments/data/known_smollm2.jsonl --max-examples 3 --out $A/retrace.nc -q
python - <<'PY'
import xarray as xr, numpy as np
new = xr.open_dataset("/tmp/acc/retrace.nc").load()
old = xr.open_dataset("analysis/results/memory/subject-noctx.nc").load().isel(example=slice(0, 3))
n = new.sizes["token"]
worst = max(float(np.nanmax(np.abs(new[v].values - old[v].values[:, :n] if "token" in new[v].dims else new[v].values - old[v].values)))
            for v in ("p_restored", "p_clean", "p_corrupt", "logit_restored"))
print("   re-traced 3 committed examples: largest difference", worst)
PY
t nnct memorization pairs --scores analysis/results/memorization/scores.jsonl --model smollm2-135m --mode divergence --out $A/pairs-divergence.jsonl
cmp <(python -c "import json,sys;[print(json.dumps({k:v for k,v in json.loads(l).items()},sort_keys=True)) for l in open('$A/pairs-divergence.jsonl')]") <(python -c "import json,sys;[print(json.dumps({k:v for k,v in json.loads(l).items()},sort_keys=True)) for l in open('analysis/results/memorization/pairs-divergence.jsonl')]") && echo "   divergence pairs identical to the committed ones"
# 2. bf16 on the embedded model
t nnct edit --dtype bfloat16 --data experiments/data/known_smollm2.jsonl --layer 4 --max-examples 2 --corpus-tokens 20000 --out $A/edit-bf16.nc -q
t nnct circuit find --dtype bfloat16 --pairs analysis/results/memorization/divergence.find.jsonl --max-pairs 3 --out $A/c-bf16.nc -q
t nnct circuit verify $A/c-bf16.nc --pairs analysis/results/memorization/divergence.heldout.jsonl --max-pairs 3 --random 3 --dtype bfloat16 --json $A/v-bf16.json
t nnct circuit verify analysis/results/memorization/circuit-divergence.nc --model smollm2-135m --pairs analysis/results/memorization/divergence.heldout.jsonl --max-pairs 3 --random 3 --json $A/v-model.json
t nnct memorization score --dtype bfloat16 --texts experiments/data/memorization-short.jsonl --prefix 32 --continuation 8 --stride 16 --out $A/s-bf16.jsonl -q
echo done
