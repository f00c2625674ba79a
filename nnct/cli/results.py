"""The commands that read cubes: `info`, `merge`, `summarize`, `plot`, `view`."""

from __future__ import annotations

import contextlib

import click

from ..analysis.summary import FILTERS
from ..errors import NnctError
from .app import fail, main, open_cube

VARIANT_HELP = "Only this variant: fact, cf (every counterfactual) or an exact name such as cf2."
CI = click.option("--ci", type=click.Choice(["t", "bootstrap"]), default="t", show_default=True,
                  help="95% intervals over records: Student t over record means, or a percentile bootstrap of the"
                       " records (10,000 resamples, --seed).")
SEED = click.option("--seed", type=int, default=0, show_default=True, help="The bootstrap's seed.")
FILTER_HELP = "known: the clean top-1 token is the target's (ROME); target-/alt-wins: by clean probability."
METRIC_HELP = ("prob (ROME), logit_diff, log_ratio, recovery (of p), recovery_logit_diff: fractions of the total effect"
               " (docs/method.md); or an extra readout the cube stores (logprob, rank, kl, prob_any).")


@main.command()
@click.argument("cube_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--examples", default=10, show_default=True, help="How many examples to list.")
def info(cube_path, examples):
    """Print what a cube holds: attrs, dims, examples, ATE."""
    from ..analysis import report

    ds = open_cube(cube_path)
    try:
        text = report.describe(ds, max_examples=examples)
    except (ValueError, KeyError, AttributeError) as exc:
        fail(f"{cube_path}: not an nnct effect cube ({type(exc).__name__}: {exc})")
    click.echo(text)


@main.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "-o", "out", required=True, type=click.Path(dir_okay=False), help="The merged cube (FILE.nc).")
def merge(shards, out):
    """Join the shard cubes of one run (`trace --shard i/n`) into one cube, in the data set's order."""
    from ..results import cube, files, merge as merge_lib

    try:
        with files.locked(out):
            merged = merge_lib.merge(shards)
            cube.write(merged, out)
    except NnctError as exc:
        fail(str(exc))
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        fail(f"cannot merge: {type(exc).__name__}: {exc}")
    click.echo(f"wrote {out}: {merged.sizes['example']} examples from {len(shards)} shards")


@main.command()
@click.argument("cube_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--metric", default="prob", show_default=True,
              help="The metric of the printed table (the files hold every metric the cube gives). " + METRIC_HELP)
@click.option("--variant", default=None, help=VARIANT_HELP)
@click.option("--filter", "filter_", type=click.Choice(FILTERS), default=None, help=FILTER_HELP)
@click.option("--out", type=click.Path(dir_okay=False), help="Write the summary as NetCDF (FILE.nc).")
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False), help="Write the AIE table in long form (FILE.csv).")
@click.option("--bands", default=6, show_default=True, type=click.IntRange(min=1), help="Layer bands of the printed table.")
@click.option("--strongest", type=click.IntRange(min=1), default=None, metavar="K",
              help="List the K strongest cells of each kind (in --metric), each also chosen on a random half of the"
                   " records (--seed) and estimated on the other half.")
@CI
@SEED
def summarize(cube_path, metric, variant, filter_, out, csv_out, bands, strongest, ci, seed):
    """ATE, AIE per segment x layer x component with 95% CIs, best layers: a table and files."""
    from ..analysis import strongest as strongest_lib, summary
    from ..results import cube, files

    ds = open_cube(cube_path, chunks={"example": 256})
    try:
        with contextlib.ExitStack() as writing:
            for path in filter(None, (out, csv_out)):
                writing.enter_context(files.locked(path))
            s = summary.summarize(ds, variant=variant, filter=filter_, ci=ci, seed=seed)
            text = summary.table(s, metric, bands)
            if strongest:
                found = strongest_lib.strongest(ds, strongest, metric, variant, filter_, seed)
                text += "\n\n" + strongest_lib.table(found)
                s = strongest_lib.into_summary(found, s)
            s.attrs["cube"] = str(cube_path)
            if out:
                cube.write(s, out)
            if csv_out:
                with files.atomic(csv_out) as tmp:
                    summary.to_frame(s).to_csv(tmp, index=False, float_format="%.6g")
    except NnctError as exc:
        fail(f"{cube_path}: {exc}")
    click.echo(f"{cube_path}: " + text)
    for path in filter(None, (out, csv_out)):
        click.echo(f"wrote {path}")


@main.command()
@click.argument("cube_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "-o", "out", required=True, type=click.Path(file_okay=False), help="Directory of the figures.")
@click.option("--examples", default=6, show_default=True, help="Per-example heatmaps of the first N examples selected.")
@click.option("--segments", default=None, help="Comma list of the segments of the AIE line plot [default: subject_last,"
              " object_last, relation and last, where present].")
@click.option("--metric", default="prob", show_default=True, help=METRIC_HELP)
@click.option("--variant", default=None, help=VARIANT_HELP)
@click.option("--filter", "filter_", type=click.Choice(FILTERS), default=None, help=FILTER_HELP)
@click.option("--compare", "compare_with", type=click.Path(exists=True, dir_okay=False),
              help="With an AtP cube: an exact cube of the same examples, drawn beside it (compare.png).")
@click.option("--edges", type=click.IntRange(min=1), default=None,
              help="With a circuit file: the circuit's top N edges, drawn after pruning [default: its minimal faithful"
                   " one].")
@CI
@SEED
def plot(cube_path, out, examples, segments, metric, variant, filter_, compare_with, edges, ci, seed):
    """ROME-style heatmaps per example, the average heatmap over segments and AIE lines (PNG +
    PDF); for a circuit file (`nnct circuit find`), the circuit as a graph (PNG, PDF, SVG); for
    a path-patching file (`nnct patch --path`), the senders' mean effects as a heatmap."""
    from pathlib import Path

    from ..analysis import plot as plot_lib, summary
    from ..results import circuit as circuit_file
    from ..results import files

    kind = _kind(cube_path)
    if kind == "circuit":
        try:
            with files.locked(out):
                paths = plot_lib.save_circuit(plot_lib.circuit_figure(circuit_file.read(cube_path), edges), Path(out) / "circuit")
        except NnctError as exc:
            fail(f"{cube_path}: {exc}")
        click.echo(f"wrote {len(paths)} files into {out}")
        return
    if kind == "paths":  # `nnct patch --path`: the sender x receiver heatmap
        from ..analysis import paths as path_view
        from ..results import paths as path_file

        with files.locked(out):
            written = path_view.draw(path_file.read(cube_path), out)
        click.echo(f"wrote {len(written)} files into {out}")
        return
    if kind == "summary":  # a summary alone: its averages, lines and heads (no example heatmaps)
        try:
            with files.locked(out):
                paths = plot_lib.draw(None, files.read_netcdf(cube_path), out, 0, segments.split(",") if segments else None, metric)
        except NnctError as exc:
            fail(f"{cube_path}: {exc}")
        click.echo(f"wrote {len(paths)} files into {out}")
        return
    if kind != "cube":
        fail(f"{cube_path}: nnct plot draws cubes, summaries, circuit and path files, not {kind} files: see nnct view")
    ds = open_cube(cube_path, chunks={"example": 256})
    try:
        with files.locked(out):
            chosen = summary.select(ds, variant, filter_)
            s = summary.summarize(ds, variant=variant, filter=filter_, metrics=(metric,), ci=ci, seed=seed)
            paths = plot_lib.draw(chosen, s, out, examples, segments.split(",") if segments else None, metric)
            if compare_with:
                exact = summary.summarize(open_cube(compare_with, chunks={"example": 256}), variant=variant, filter=filter_,
                                          metrics=(metric,), ci=ci, seed=seed)
                paths += plot_lib.save(plot_lib.comparison_figure(s, exact, metric), Path(out) / "compare")
    except NnctError as exc:
        fail(f"{cube_path}: {exc}")
    click.echo(f"wrote {len(paths)} files into {out}")


def _kind(path) -> str:
    """Which kind of nnct output `path` is (`results.kinds`), or a one-line failure."""
    from ..results.kinds import kind_of

    try:
        return kind_of(path)
    except NnctError as exc:
        fail(str(exc))


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.argument("second", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "-o", "out", required=True, type=click.Path(dir_okay=False), help="The page (FILE.html).")
def view(path, second, out):
    """One self-contained interactive HTML page (plotly, no network) of a cube, a summary, a
    circuit file, an edits file or a path-patching file; with SECOND, two cubes side by side
    with their difference, a circuit file with its `nnct circuit verify` JSON (the
    random-circuit band), or two edits files joined."""
    from ..analysis import view as view_lib
    from ..results import files

    _kind(path)
    try:
        with files.locked(out):
            written = view_lib.write(path, out, second)
    except NnctError as exc:
        fail(f"{path}: {exc}")
    click.echo(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB)")
