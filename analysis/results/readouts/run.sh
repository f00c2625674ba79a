set -e
cd /work/main
export PATH=/work/main/.venv/bin:$PATH HF_HUB_OFFLINE=1
D=experiments/data/known_smollm2.jsonl
O=${1:-runs/readouts}
test -f $O/noise.nc || nnct trace --definition experiments/subject-noctx.toml --data $D --max-examples 30 --samples 3 --readout kl,logprob,rank --out $O/noise.nc --resume -q
test -f $O/zero.nc || nnct ablate --op zero --data $D --experiment subject-noctx --prompt-format "{prompt}" --max-examples 30 --readout kl,logprob,rank --out $O/zero.nc --resume -q
test -f $O/mean.nc || nnct ablate --op mean --reference experiments/data/reference_prompts.jsonl --data $D --experiment subject-noctx --prompt-format "{prompt}" --max-examples 30 --readout kl,logprob,rank --out $O/mean.nc --resume -q
echo ALLDONE
