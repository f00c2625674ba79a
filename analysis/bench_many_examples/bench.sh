#!/bin/bash
# `nnct bench --examples 40` on the overhead-bound proxy (make.py's DIR): 40 noise draws and
# 40 copies of a pair of the bench's prompt, beside one example alone, with the cost model's
# numbers (one torch thread):
#   bash analysis/bench_many_examples/bench.sh /tmp/p26 > analysis/results/bench_many_examples_40.txt
dir=$1
export OMP_NUM_THREADS=1
root=$(cd "$(dirname "$0")/../.." && pwd)
for corruption in noise prompt; do
  echo "== nnct bench --model $dir/model --corruption $corruption --examples 40 --plain-cells 10"
  "$root/.venv/bin/nnct" bench --model "$dir/model" --data "$root/experiments/data/known_smollm2.jsonl" \
    --corruption "$corruption" --examples 40 --plain-cells 10 2>/dev/null
done
