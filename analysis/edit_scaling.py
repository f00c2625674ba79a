"""Many edits at once: ROME one edit after another, MEMIT and AlphaEdit in one batch and in
sequential batches of 10, at 1, 10, 100, 300 and all 948 edits (MEMIT's Figure 5 and
AlphaEdit's tables on one small model); and AlphaEdit again with a null space holding at most
1% of C's trace (`--null-space-energy 0.01`), since AlphaEdit's threshold leaves most of this
model's key energy inside its null space (`analysis/edit_disturbance.py`).

    python analysis/edit_scaling.py --sizes 1,10,100,300,948 -o analysis/results/editing/scaling

The facts edited are the first N of experiments/data/edit_scaling.jsonl: the 117 facts the
embedded model knows that are not in experiments/data/known_smollm2.jsonl, then the other
831 of ROME's known facts (GPT-2 XL's; this model does not know them); each new object is
the record's first counterfactual. known_smollm2.jsonl's 60 facts are never edited: they
are specificity's neighbours and retention's facts (`nnct edit --unedited`). Every arm at
every size is one `nnct edit` process (`--evaluate 100`: at most 100 of the edits evaluated,
all of them in the weights), its wall time and peak resident memory read by wait4; its
pooled metrics (`nnct.analysis.editing`) with their 95% intervals are one row of
`scaling.csv`. A row already there is not run again, and a run stopped midway completes from
the edits or batches it had finished (`nnct edit --resume`), so an interrupted study resumes;
the edits files stay in `--runs`. A sequential arm's run of n edits starts from a copy of
the units of its unfinished longer run that hold only the first n facts: they are this
run's (`nnct edit --resume` matches units by their records), so what is left may be only
its evaluation, and then its seconds are that evaluation's. Studies of other arms may run
side by side (one thread each): each adds its row to the file under a lock. Then
`scaling.txt` and `scaling.png` (metrics against the number of edits, one line per arm,
with the intervals).
"""

from __future__ import annotations

import csv
import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nnct.analysis.editing import pooled  # noqa: E402
from nnct.inputs.records import load_records  # noqa: E402
from nnct.results import edits as edits_file  # noqa: E402
from nnct.results.partial import partial_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "experiments" / "data" / "edit_scaling.jsonl"
UNEDITED = ROOT / "experiments" / "data" / "known_smollm2.jsonl"
ARMS = {  # name: nnct edit's options
    "rome-sequential": ["--method", "rome", "--layer", "4", "--sequential"],
    "memit": ["--method", "memit", "--layers", "0-4"],
    "alphaedit": ["--method", "alphaedit", "--layers", "0-4"],
    "memit-seq10": ["--method", "memit", "--layers", "0-4", "--batch-size", "10", "--sequential"],
    "alphaedit-seq10": ["--method", "alphaedit", "--layers", "0-4", "--batch-size", "10", "--sequential"],
    # AlphaEdit with a null space that is null on this model: at most 1% of C's trace (docs/method.md)
    "alphaedit-e01": ["--method", "alphaedit", "--layers", "0-4", "--null-space-energy", "0.01"],
    "alphaedit-e01-seq10": ["--method", "alphaedit", "--layers", "0-4", "--null-space-energy", "0.01",
                            "--batch-size", "10", "--sequential"],
}
METRICS = ("efficacy", "efficacy_magnitude", "paraphrase", "specificity", "fluency", "retention")
FIELDS = ["arm", "edits", "seconds", "peak_mib"] + [f"{m}{s}" for m in METRICS for s in ("", "_low", "_high", "_n")]


def run_arm(arm: str, n: int, runs: Path, evaluate: int) -> dict:
    """One `nnct edit` process of `arm` over the first n facts: its row (time, peak memory,
    pooled metrics)."""
    out = runs / f"{arm}-{n}.nc"
    if "--sequential" in ARMS[arm] and not partial_dir(out).exists():
        share_longer_run(arm, n, runs, out)
    command = [sys.executable, "-m", "nnct.cli", "edit", "--data", str(DATA), "--unedited", str(UNEDITED),
               "--max-examples", str(n), "--evaluate", str(evaluate), "--out", str(out), "--resume", "-q", *ARMS[arm]]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise click.ClickException(f"{arm} at {n} edits failed:\n{output[-3000:]}")
    made, attrs = edits_file.read(out)
    row = {"arm": arm, "edits": len(made), "seconds": round(seconds, 1), "peak_mib": round(usage.ru_maxrss / 1024, 1)}
    for name, (mean, low, high, count) in pooled(made, attrs).items():
        row.update({name: mean, f"{name}_low": low, f"{name}_high": high, f"{name}_n": count})
    return row


def share_longer_run(arm: str, n: int, runs: Path, out: Path) -> None:
    """`out`'s partial directory made of the finished units of an unfinished longer run of
    the sequential `arm` that hold only the first n facts: they are this run's (`nnct edit
    --resume` matches units by their records). Copied whole or not at all, and not at all
    when that run finishes meanwhile."""
    first = {record.id for record in load_records(DATA).items[:n]}
    for path in runs.glob(f"{arm}-*.nc.partial"):
        m = re.fullmatch(rf"{re.escape(arm)}-(\d+)\.nc\.partial", path.name)
        if not (m and int(m[1]) > n):
            continue
        copy = partial_dir(out).with_name(f".{partial_dir(out).name}.copying")
        shutil.rmtree(copy, ignore_errors=True)
        try:
            units = [u for u in sorted(path.glob("0*.nc")) if {e.record_id for e in edits_file.read(u)[0]} <= first]
            if not units:
                continue
            copy.mkdir()
            for f in [path / "run.json", *units]:
                shutil.copy2(f, copy)
        except OSError:
            shutil.rmtree(copy, ignore_errors=True)
            continue
        copy.rename(partial_dir(out))
        return


def read(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open())) if path.is_file() else []


def add(path: Path, row: dict) -> None:
    """`row` added to the csv at `path`, under a lock on it: studies of other arms side by
    side each keep the rows the others wrote."""
    with path.open("a+", newline="") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        rows = list(csv.DictReader(f)) + [row]
        f.seek(0)
        f.truncate()
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def figure(rows: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    for ax, metric in zip(axes.flat, METRICS):
        for arm in ARMS:
            mine = sorted((r for r in rows if r["arm"] == arm), key=lambda r: int(r["edits"]))
            if not mine:
                continue
            x = [int(r["edits"]) for r in mine]
            y = [float(r[metric]) for r in mine]
            # no bar where the interval is undefined (one edit); Wilson's upper end can fall a rounding below 1
            err = np.nan_to_num(np.clip([[y_ - float(r[f"{metric}_low"]) for y_, r in zip(y, mine)],
                                         [float(r[f"{metric}_high"]) - y_ for y_, r in zip(y, mine)]], 0, None))
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=arm)
        ax.set_xscale("log")
        ax.set_xlabel("edits")
        ax.set_title(metric)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("SmolLM2-135M: edits at once against their number (95% intervals; at most 100 edits evaluated)")
    fig.savefig(path.with_suffix(".png"), dpi=120)
    fig.savefig(path.with_suffix(".pdf"))


def table(rows: list[dict]) -> str:
    lines = [f"{'arm':18s}{'edits':>6s}{'seconds':>9s}{'MiB':>7s}" + "".join(f"{m[:12]:>22s}" for m in METRICS)]
    for r in sorted(rows, key=lambda r: (int(r["edits"]), list(ARMS).index(r["arm"]))):
        cells = "".join(f"{float(r[m]):8.3f} [{float(r[m + '_low']):5.2f},{float(r[m + '_high']):5.2f}]" for m in METRICS)
        lines.append(f"{r['arm']:18s}{int(r['edits']):6d}{float(r['seconds']):9.0f}{float(r['peak_mib']):7.0f}{cells}")
    return "\n".join(lines)


@click.command()
@click.option("--sizes", default="1,10,100,300,948", show_default=True, help="Numbers of edits, in the order run.")
@click.option("--arms", default=",".join(ARMS), show_default=True)
@click.option("--evaluate", default=100, show_default=True, help="Edits evaluated per run (all stay in the weights).")
@click.option("--runs", default="runs/edit-scaling", show_default=True, type=click.Path(file_okay=False),
              help="Where the edits files go.")
@click.option("-o", "out", required=True, type=click.Path(file_okay=False), help="scaling.csv, .txt, .png go here.")
def main(sizes, arms, evaluate, runs, out):
    out, runs = Path(out), Path(runs)
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    path = out / "scaling.csv"
    for n in (int(s) for s in sizes.split(",")):
        for arm in arms.split(","):
            if (arm, n) in {(r["arm"], int(r["edits"])) for r in read(path)}:
                continue
            row = run_arm(arm, n, runs, evaluate)
            add(path, row)  # after every run: an interrupted study keeps what finished
            click.echo(f"{arm} at {n}: {row['seconds']} s, efficacy {float(row['efficacy']):.3f}", err=True)
    rows = read(path)
    (out / "scaling.txt").write_text(table(rows) + "\n")
    figure(rows, out / "scaling")
    click.echo(table(rows))


if __name__ == "__main__":
    main()
