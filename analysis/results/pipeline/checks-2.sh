cd /work/main
export HF_HUB_OFFLINE=1 PATH=/work/main/.venv/bin:$PATH
A=/tmp/acc
t() { echo "== $*"; /usr/bin/time -f "   (%e s, %M KB)" "$@" 2>&1 | grep -v "Loading\|Writing\|it/s" | tail -4; }
t nnct circuit verify $A/c-bf16.nc --pairs analysis/results/memorization/divergence.find.jsonl --max-pairs 3 --random 3 --dtype bfloat16 --json $A/v-bf16.json
t nnct circuit verify analysis/results/memorization/circuit-divergence.nc --model smollm2-135m --pairs analysis/results/memorization/divergence.find.jsonl --json $A/v-model.json
python - <<'PY'
import json
a, b = json.load(open("/tmp/acc/v-model.json")), json.load(open("analysis/results/memorization/verify-divergence.json"))
for k in ("edges", "faithfulness", "m_clean", "m_corrupt", "random_faithfulness_mean"):
    print("  ", k, "now", a[k], "committed", b[k])
print("   curve max |diff|", max(abs(x["faithfulness"] - y["faithfulness"]) for x, y in zip(a["curve"], b["curve"])))
PY
t nnct trace --experiment subject-noctx --data experiments/data/known_smollm2.jsonl --max-examples 3 --samples 3 --noise-level 0.34816422258247254 --out $A/retrace2.nc -q
python - <<'PY'
import xarray as xr, numpy as np
new = xr.open_dataset("/tmp/acc/retrace2.nc").load()
old = xr.open_dataset("analysis/results/memory/subject-noctx.nc").load().isel(example=slice(0, 3))
n = new.sizes["token"]
for v in ("p_restored", "p_clean", "p_corrupt"):
    a, b = new[v].values, old[v].values
    if "token" in new[v].dims: b = b[:, :n]
    print("  ", v, "max |now - committed|", float(np.nanmax(np.abs(a - b))))
PY
echo done
