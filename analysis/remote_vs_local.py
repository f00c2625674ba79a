"""The same trace here and on an NDIF server, side by side in one run: wall time, requests and
bytes per example, and the largest |remote - local| difference of the cube's probabilities.

    NDIF_API_KEY=... python analysis/remote_vs_local.py http://127.0.0.1:8001 --max-examples 4

Each remote row is a fresh run (its noise level measured remotely too); `--request-cells`
values give one row each, `--threads` values one local row each (torch threads here: the
local NDIF of the tests runs its model on one); the first local row is the reference."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nnct.results.cube import open_cube
from nnct.methods.run import RunConfig, trace


def _diff(a, b) -> float:
    return max(float(np.nanmax(np.abs(a[v].values - b[v].values))) for v in ("p_restored", "p_clean", "p_corrupt"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("host")
    ap.add_argument("--data", default="experiments/data/known_smollm2.jsonl")
    ap.add_argument("--experiment", default="subject-noctx")
    ap.add_argument("--components", default="hidden")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--max-examples", type=int, default=4)
    ap.add_argument("--request-cells", type=int, nargs="+", default=[1, 10000])
    ap.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    args = ap.parse_args()
    common = dict(data=args.data, experiment=args.experiment, components=args.components, samples=args.samples,
                  max_examples=args.max_examples)
    with tempfile.TemporaryDirectory() as tmp:
        rows, local = [], None
        for threads in args.threads:
            torch.set_num_threads(threads)
            started = time.perf_counter()
            here = trace(RunConfig(out=str(Path(tmp) / f"local-{threads}.nc"), **common))
            cube = open_cube(here.out)
            local = cube if local is None else local
            rows.append((f"local, {threads} torch threads", time.perf_counter() - started, here, _diff(cube, local)))
        for cells in args.request_cells:
            out = str(Path(tmp) / f"remote-{cells}.nc")
            started = time.perf_counter()
            there = trace(RunConfig(out=out, remote=args.host, request_cells=cells, **common))
            rows.append((f"remote, --request-cells {cells}", time.perf_counter() - started, there, _diff(open_cube(out), local)))
    n = here.examples
    print(f"{args.experiment}, {args.components}, S={args.samples}, {n} examples; server {args.host}")
    head = ("wall s", "s/example", "requests", "req/example", "sent B/ex", "recv B/ex", "max|diff|")
    print(f"{'run':<32} " + " ".join(f"{h:>{w}}" for h, w in zip(head, (7, 9, 8, 11, 10, 10, 9))))
    for name, wall, s, diff in rows:
        print(f"{name:<32} {wall:7.1f} {wall / n:9.1f} {s.requests:8d} {s.requests / n:11.2f} {s.bytes_sent / n:10,.0f} "
              f"{s.bytes_received / n:10,.0f} {diff:9.1e}")
    print("requests include the one that measures the noise level; times include loading the model (meta for remote)")


if __name__ == "__main__":
    main()
