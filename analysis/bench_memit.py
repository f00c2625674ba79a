"""How long MEMIT takes to compute a batch of facts on this machine, once the key statistics
are cached (issue 23's benchmark: 100 facts in under 10 minutes on 2 CPU cores).

    python analysis/bench_memit.py -n 100 --layers 0-4 > analysis/results/editing/bench_memit.txt

Times the parts of `nnct edit --method memit` that compute the edit, on the embedded model:
the context prefixes, each fact's target z (the value optimisation; none read from the
target cache: this runs with a fresh cache holding only the covariances; `--batch` facts'
targets optimised together in the same passes, `exec.memit.targets`, as `nnct edit` does with
`exec.memit.TARGET_BATCH`; 1: one fact at a time), and the per-layer
keys and solves (`exec.memit.batch_edit`). Evaluation is not timed (it is `nnct edit`'s, and
depends on how many edits one evaluates). The facts are the first n of
experiments/data/edit_scaling.jsonl.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import click
import torch


@click.command()
@click.option("-n", "n", default=100, show_default=True)
@click.option("--layers", default="0-4", show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--batch", default=None, type=int, help="facts whose targets are optimised together [memit.TARGET_BATCH]")
def main(n, layers, threads, batch):
    from nnct.model.embedded import cache_root

    kept = cache_root()
    fresh = Path(tempfile.mkdtemp())
    for sub in ("covariance", "digests", "smollm2-135m"):  # everything but the targets
        if (kept / sub).exists():
            os.symlink(kept / sub, fresh / sub)
    os.environ["NNCT_CACHE"] = str(fresh)
    torch.set_num_threads(threads)

    from nnct.exec import memit
    from nnct.inputs.records import load_records
    from nnct.methods import edit as edit_lib
    from nnct.model import load

    first, last = (int(x) for x in layers.split("-"))
    span = list(range(first, last + 1))
    adapter = load()
    where = edit_lib.Where(adapter)
    records = load_records(Path(__file__).resolve().parents[1] / "experiments" / "data" / "edit_scaling.jsonl").items[:n]
    hp = memit.hparams_for(adapter.model_type, adapter.name)
    t0 = time.perf_counter()
    prefixes = edit_lib.context_prefixes(where, 0, batch=True)
    t1 = time.perf_counter()
    cov, _ = edit_lib.covariances(adapter, span, 100_000)
    t2 = time.perf_counter()
    facts = [edit_lib._fact(adapter.tokenizer, r, r.obj_cf[0], prefixes) for r in records]
    pad = edit_lib._pad(adapter.tokenizer)
    batch = batch or memit.TARGET_BATCH
    zs = torch.stack([z for z, _ in memit.targets(adapter.parts, facts, span[-1], hp.value, pad=pad, batch=batch)], 1)
    t3 = time.perf_counter()
    memit.batch_edit(adapter, facts, span, memit.memit_solver(cov, hp), zs)
    t4 = time.perf_counter()
    shutil.rmtree(fresh)
    click.echo(f"MEMIT, {n} facts, layers {layers}, embedded model, {threads} torch threads, C cached\n"
               f"  prefixes       {t1 - t0:8.1f} s\n  covariances    {t2 - t1:8.1f} s (read from the cache)\n"
               f"  targets        {t3 - t2:8.1f} s ({(t3 - t2) / n:.2f} s per fact, {batch} at a time)\n"
               f"  keys + solves  {t4 - t3:8.1f} s\n  total          {t4 - t0:8.1f} s")


if __name__ == "__main__":
    main()
