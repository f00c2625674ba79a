#!/bin/bash
# `nnct bench --examples 40` on the overhead-bound proxy (make.py's DIR and records): 40 copies of a pair
# of the bench's prompt, and 40 noise draws of it (hidden only, to keep the CPU's time down),
# each beside one example alone, with the cost model's numbers (one torch thread):
#   bash analysis/bench_many_examples/bench.sh /tmp/p26 > analysis/results/bench_many_examples_40.txt
dir=$1
export OMP_NUM_THREADS=1
root=$(cd "$(dirname "$0")/../.." && pwd)
for args in "--corruption prompt" "--corruption noise --components hidden"; do
  echo "== nnct bench --model DIR/model --tokens 12 $args --examples 40 --plain-cells 10"
  "$root/.venv/bin/nnct" bench --model "$dir/model" --data "$dir/records.jsonl" --tokens 12 \
    $args --examples 40 --plain-cells 10 2>&1 | grep -v "Loading weights"
done
