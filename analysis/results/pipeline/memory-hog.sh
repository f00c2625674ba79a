set -e
cd /work/main
export HF_HUB_OFFLINE=1
.venv/bin/nnct trace --experiment subject-noctx --data experiments/data/known_smollm2.jsonl --max-examples 3 --components hidden --out /tmp/mem/a.nc -q
# a process that holds about 20 GiB of the 24 while the second run goes
.venv/bin/python -c "
import numpy as np, time, os
a = np.ones((20 << 30) // 8); print('holding', a.nbytes >> 30, 'GiB', flush=True); time.sleep(600)" &
hog=$!
sleep 25
grep MemAvailable /proc/meminfo
.venv/bin/nnct trace --experiment subject-noctx --data experiments/data/known_smollm2.jsonl --max-examples 3 --components hidden --out /tmp/mem/b.nc -q
kill $hog
.venv/bin/python - <<'PY'
import xarray as xr, numpy as np
a, b = xr.open_dataset("/tmp/mem/a.nc").load(), xr.open_dataset("/tmp/mem/b.nc").load()
same = all(np.array_equal(a[v].values, b[v].values, equal_nan=a[v].dtype.kind == "f") for v in a.data_vars if a[v].dtype.kind in "fiu")
attrs = {k for k in a.attrs if a.attrs[k] != b.attrs.get(k)}
print("identical numbers:", same, "| attrs that differ:", attrs, "| batch_budget", a.attrs["batch_budget"], b.attrs["batch_budget"])
PY
