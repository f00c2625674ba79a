#!/bin/bash
# Whole-process timings of `nnct patch --pairs` on the proxy (make.py's DIR), for each code
# tree given (e.g. a clean clone of the commit before and this one), alternating:
#   bash analysis/bench_many_examples/proxy.sh /tmp/p26 /tmp/old26 /tmp/new26
dir=$1; shift
export OMP_NUM_THREADS=1
python=$(cd "$(dirname "$0")/../.." && pwd)/.venv/bin/python
cd "$dir"  # not the repository: `python -c` puts the working directory's nnct before PYTHONPATH's
for rep in 1 2; do
  for code in "$@"; do
    for n in 1 20; do
      rm -f "$dir/t.nc"
      s=$(date +%s.%N)
      PYTHONPATH=$code $python -c "import sys; from nnct.cli import main; sys.exit(main())" \
        patch --pairs "$dir/pairs$n.jsonl" --model "$dir/model" --out "$dir/t.nc" >/dev/null 2>&1 || echo FAIL
      e=$(date +%s.%N)
      echo "$code $n pairs rep$rep: $(echo "$e - $s" | bc) s"
    done
  done
done
