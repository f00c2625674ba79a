"""The `nnct` command: a thin click shell over `nnct.run` and `nnct.cube`.

It parses options (each also under the seed's spelling, e.g. `--model_name`,
`--replace 0/1`), calls the library, formats what comes back, and maps the library's
typed errors to one-line messages and exit codes: 2 for bad settings, data or models,
130 for an interruption (the run stays resumable). There is deliberately no `-v` /
`--verbose`: nnsight switches its debug mode on when it sees one in `sys.argv`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .cube import METRICS
from .errors import NnctError
from .summary import FILTERS

BOOL01 = click.Choice(["0", "1"])


def _fail(message: str, code: int = 2):
    click.echo(f"nnct: error: {message}", err=True)
    sys.exit(code)


def _rows(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        _fail(f"--batch-size {value!r}: a number of rows, or auto")


class _Bar:
    """tqdm over cells, with the example count in its postfix (implements run.Progress)."""

    def __init__(self, quiet: bool):
        self.quiet, self.bar = quiet, None

    def start(self, total_examples, total_cells, done_examples, done_cells):
        from tqdm import tqdm

        self.total, self.done = total_examples, done_examples
        self.bar = tqdm(total=total_cells, initial=done_cells, unit="cell", disable=self.quiet, file=sys.stderr, dynamic_ncols=True)
        self.bar.set_postfix_str(f"examples {self.done}/{self.total}")

    def example(self, example_id):
        self.bar.set_postfix_str(f"examples {self.done}/{self.total} ({example_id})")
        self.done += 1

    def cells(self, n):
        self.bar.update(n)

    def skipped(self, problems):
        for problem in problems:
            click.echo(f"skipped {problem}", err=True)

    def retry(self, attempt, error, delay):
        self._say(f"request failed (try {attempt}): {error}; trying again in {delay:.0f} s")

    def failed_job(self, job_id, error):
        self._say(f"job {job_id} failed on the server: {error}; its examples are submitted again")

    def _say(self, text):
        (self.bar.write if self.bar is not None else click.echo)(f"nnct: {text}", file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.set_postfix_str(f"examples {self.done}/{self.total}")
            self.bar.close()


@click.group()
@click.version_option(package_name="nnct")
def main():
    """Causal tracing of language models with nnsight, into NetCDF effect cubes."""


def _use_definition(ctx, param, value):
    """Eager: the definition's settings become the defaults of the options that follow."""
    from . import definition

    if value is None:
        return None
    try:
        d = definition.load(value)
    except NnctError as exc:
        _fail(str(exc))
    defaults = {k: ("1" if v else "0") if isinstance(v, bool) else v for k, v in d.trace.items()}
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return d.label


def _with_overrides(label: str, values: dict) -> str:
    """The definition's label, plus the settings of it that the command line changed: a cube
    traced with `--samples 3` must not pass for the definition's own."""
    from click.core import ParameterSource

    from .definition import TRACE_KEYS

    ctx = click.get_current_context()
    changed = [f"{k}={values[k]}" for k in TRACE_KEYS if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE]
    return f"{label} ({', '.join(changed)})" if changed else label


@main.command()
@click.option("--definition", type=click.Path(dir_okay=False), is_eager=True, callback=_use_definition,
              help="An experiment definition (experiments/*.toml): its settings become the defaults; options override them.")
@click.option("--model", "--model_name", "model", default="smollm2-135m", show_default=True,
              help="The embedded default (smollm2-135m), a local model directory, or a hub id.")
@click.option("--experiment", "--experiment-type", "--experiment_type", "experiment", default="subject", show_default=True,
              help="subject (1), object (2), relation (3) or subject-noctx (0).")
@click.option("--data", "--data_path", "data", required=True, type=click.Path(), help="JSONL data set (METHOD.md schema).")
@click.option("--out", "out", type=click.Path(), help="The cube to write (FILE.nc).")
@click.option("--output-dir", "--output_dir", "output_dir", type=click.Path(), help="Write DIR/effects.nc instead of --out.")
@click.option("--prompt-format", "--prompt_format", "prompt_format", default=None,
              help="Prompt template with {context}, {prompt}, {question} [default: the experiment's own].")
@click.option("--samples", default=10, show_default=True, type=int, help="Noise samples S per example.")
@click.option("--window", default=10, show_default=True, type=int, help="Layer window for mlp/attn restoration.")
@click.option("--noise-level", "--noise_level", "noise_level", default="s3", show_default=True,
              help="A float, or sK = K x std of the span tokens' input embeddings.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the noise.")
@click.option("--components", default="hidden,mlp,attn", show_default=True, help="Comma list of hidden, mlp, attn.")
@click.option("--max-cf", "--max_cf", "max_cf", default=1, show_default=True, type=int, help="Counterfactual variants per record.")
@click.option("--max-examples", "--max-datapoints", "--max_datapoints", "max_examples", type=int, default=None,
              help="Trace only the first N records of the data set.")
@click.option("--replace", type=BOOL01, is_flag=False, flag_value="1", default="0", show_default=True,
              help="Replace the span's embeddings by the noise instead of adding it (flag, or 0/1).")
@click.option("--reverse-patching", "--reverse_patching", "reverse", type=BOOL01, is_flag=False, flag_value="1", default="0",
              show_default=True, help="Noising: write corrupted states into clean runs (flag, or 0/1).")
@click.option("--batch-size", "--batch_size", "batch_rows", default="auto", show_default=True,
              help="Rows per forward pass, or auto (from the memory available).")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
@click.option("--shard", default=None, help="i/n: trace only records i, i+n, ... (0-based), for `nnct merge` to join.")
@click.option("--remote", "remote_", is_flag=False, flag_value="ndif", default=None,
              help="Run on an NDIF server (--ndif-host, NDIF_HOST or nnsight's config); --remote local: nnsight's local simulation.")
@click.option("--ndif-host", "ndif_host", default=None, help="The NDIF server's URL (implies --remote) [default: NDIF_HOST, or NDIF's].")
@click.option("--request-cells", default=10000, show_default=True, type=int,
              help="Remote: cells per request (whole examples, at least one per request).")
@click.option("--retries", default=3, show_default=True, type=int, help="Remote: tries again after a failed request, with backoff.")
@click.option("--request-timeout", default=3600.0, show_default=True, type=float,
              help="Remote: seconds to wait for a request's result before trying again (0: no limit).")
@click.option("--no-wait", "no_wait", is_flag=True, help="Remote: submit the requests and exit; `nnct remote collect` later.")
@click.option("--resume", is_flag=True, help="Complete the unfinished run of the same settings at --out.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, no per-example summary.")
def trace(output_dir, out, replace, reverse, quiet, remote_, ndif_host, no_wait, **options):
    """Trace a data set and write its effect cube."""
    from . import run

    if bool(out) == bool(output_dir):
        _fail("give exactly one of --out FILE.nc and --output-dir DIR")
    out = out or str(Path(output_dir) / "effects.nc")
    options["batch_rows"] = _rows(options["batch_rows"])
    if options["definition"]:
        options["definition"] = _with_overrides(options["definition"], dict(options, replace=replace, reverse=reverse))
    cfg = run.RunConfig(out=out, replace=replace == "1", reverse=reverse == "1", remote=_remote(remote_, ndif_host),
                        wait=not no_wait, **options)
    _run(lambda bar: run.trace(cfg, progress=bar), out, quiet, "rerun with --resume")


def _remote(value: str | None, host: str | None) -> str | None:
    """--remote / --ndif-host as RunConfig.remote: None, "local", or the server's URL."""
    from . import remote

    if value == remote.LOCAL:
        if host:
            _fail("--remote local runs here: it takes no --ndif-host")
        return remote.LOCAL
    if value is None and host is None:
        return None
    if value not in (None, "ndif") and not value.startswith(("http://", "https://")):
        _fail(f"--remote {value}: use --remote alone, --remote local, or --remote URL")
    try:
        return remote.server(host or (value if value != "ndif" else None)).host
    except NnctError as exc:
        _fail(str(exc))


def _run(call, out: str, quiet: bool, again: str):
    """Run a trace (or a collection) with a progress bar, and report what it wrote; `again`
    says how to go on after a failed request or an interruption."""
    from . import cube, report, run
    from .errors import RemoteFailed

    bar = _Bar(quiet)
    try:
        summary = call(bar)
    except RemoteFailed as exc:
        bar.close()
        _fail(f"{exc}; finished examples are kept: {again}")
    except NnctError as exc:
        bar.close()
        _fail(str(exc))
    except KeyboardInterrupt:
        bar.close()
        _fail(f"interrupted; finished examples are kept in {run.partial_dir(out)}: {again}", 130)
    bar.close()
    if summary.requests:
        click.echo(f"{summary.requests} requests, {summary.bytes_sent:,} bytes sent, {summary.bytes_received:,} received")
    if summary.pending:
        click.echo(f"{summary.pending} requests running on the server; collect them with: nnct remote collect {out}")
        return
    click.echo(
        f"wrote {summary.out}: {summary.examples} examples from {summary.records} records"
        f" ({len(summary.skipped)} skipped, {summary.resumed} resumed), noise level {summary.noise_level:.4f}"
    )
    if not quiet:
        click.echo(report.describe(cube.open_cube(summary.out)))


@main.group("remote")
def remote_group():
    """NDIF servers: their models, whether a model runs, and runs submitted without waiting."""


HOST_OPTION = click.option("--ndif-host", "ndif_host", default=None, help="The server's URL [default: NDIF_HOST, or NDIF's].")


@remote_group.command("status")
@HOST_OPTION
def remote_status(ndif_host):
    """The server's models and their state."""
    from . import remote

    try:
        srv = remote.server(ndif_host)
        models = remote.deployments(srv)
    except NnctError as exc:
        _fail(str(exc))
    click.echo(f"{srv.host}: {len(models)} models")
    for key, m in sorted(models.items(), key=lambda kv: (kv[1]["repo_id"], kv[0])):
        click.echo(f"  {m['repo_id']:<50} {m['level']:<6} {m['state']:<12} {key}")


@remote_group.command("check")
@click.argument("model")
@HOST_OPTION
def remote_check(model, ndif_host):
    """Whether MODEL runs on the server: one tiny request (which deploys it where the server
    deploys on demand)."""
    from . import models, remote

    try:
        srv = remote.server(ndif_host)
        click.echo(remote.check(srv, models.load(model, weights=False)))
    except NnctError as exc:
        _fail(str(exc))


@remote_group.command("collect")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--wait", is_flag=True, help="Wait until every request has finished, then write the cube.")
@click.option("--request-cells", type=int, default=None, help="For requests sent again [default: the run's].")
@click.option("--retries", type=int, default=None, help="Tries again after a failed request [default: the run's].")
@click.option("--request-timeout", type=float, default=None, help="Seconds to wait for a result [default: the run's].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, no per-example summary.")
def remote_collect(out, wait, quiet, **requesting):
    """Collect a run submitted with --no-wait (OUT: its --out): write what finished, send
    again what failed, and write the cube once all is in."""
    from . import run

    _run(lambda bar: run.collect(out, wait=wait, progress=bar, **requesting), out, quiet,
         f"run `nnct remote collect {out}` again")


@main.command()
@click.argument("cube_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--examples", default=10, show_default=True, help="How many examples to list.")
def info(cube_path, examples):
    """Print what a cube holds: attrs, dims, examples, ATE."""
    from . import report

    ds = _open(cube_path)
    try:
        text = report.describe(ds, max_examples=examples)
    except (ValueError, KeyError, AttributeError) as exc:
        _fail(f"{cube_path}: not an nnct effect cube ({type(exc).__name__}: {exc})")
    click.echo(text)


def _open(cube_path, chunks=None):
    from . import cube

    try:
        return cube.open_cube(cube_path, chunks=chunks)
    except (OSError, ValueError, KeyError) as exc:
        _fail(f"{cube_path}: not an nnct effect cube ({type(exc).__name__}: {exc})")


VARIANT_HELP = "Only this variant: fact, cf (every counterfactual) or an exact name such as cf2."
FILTER_HELP = "known: the clean top-1 token is the target's (ROME); target-/alt-wins: by clean probability."


@main.command()
@click.option("--model", "--model_name", "model", default="smollm2-135m", show_default=True)
@click.option("--data", "--data_path", "data", required=True, type=click.Path(), help="JSONL data set (METHOD.md schema).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="The table to write (FILE.csv).")
@click.option("--prompt-format", "--prompt_format", "prompt_format", default="C: {context} {prompt}", show_default=True,
              help="The prompt of the context conditions.")
@click.option("--max-cf", "--max_cf", "max_cf", type=int, default=None, help="Counterfactual passages per record [default: all].")
@click.option("--max-examples", "--max-datapoints", "--max_datapoints", "max_examples", type=int, default=None,
              help="Only the first N records of the data set.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
def answers(model, data, out, prompt_format, max_cf, max_examples, device, dtype):
    """Which answer wins per record with no passage, the fact's passage and each counterfactual one."""
    from . import answers as answers_lib, models

    try:
        adapter = models.load(model, device=device, dtype=dtype)
        result = answers_lib.compare(adapter, data, prompt_format, max_cf, max_examples)
    except NnctError as exc:
        _fail(str(exc))
    for problem in result.skipped:
        click.echo(f"skipped {problem}", err=True)
    df = answers_lib.frame(result)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False, float_format="%.6g")
    click.echo(answers_lib.table(df))
    click.echo(f"wrote {out}: {len(df)} prompts from {df.record_id.nunique()} records ({len(result.skipped)} skipped)")


@main.command()
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "-o", "out", required=True, type=click.Path(dir_okay=False), help="The merged cube (FILE.nc).")
def merge(shards, out):
    """Join the shard cubes of one run (`trace --shard i/n`) into one cube, in the data set's order."""
    from . import cube, merge as merge_lib

    try:
        merged = merge_lib.merge(shards)
        cube.write(merged, out)
    except NnctError as exc:
        _fail(str(exc))
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        _fail(f"cannot merge: {type(exc).__name__}: {exc}")
    click.echo(f"wrote {out}: {merged.sizes['example']} examples from {len(shards)} shards")


@main.command()
@click.argument("cube_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--metric", type=click.Choice(METRICS), default="prob", show_default=True,
              help="The metric of the printed table (the files hold both).")
@click.option("--variant", default=None, help=VARIANT_HELP)
@click.option("--filter", "filter_", type=click.Choice(FILTERS), default=None, help=FILTER_HELP)
@click.option("--out", type=click.Path(dir_okay=False), help="Write the summary as NetCDF (FILE.nc).")
@click.option("--csv", "csv_out", type=click.Path(dir_okay=False), help="Write the AIE table in long form (FILE.csv).")
@click.option("--bands", default=6, show_default=True, type=click.IntRange(min=1), help="Layer bands of the printed table.")
def summarize(cube_path, metric, variant, filter_, out, csv_out, bands):
    """ATE, AIE per segment x layer x component with 95% CIs, best layers: a table and files."""
    from . import cube, summary

    ds = _open(cube_path, chunks={"example": 256})
    try:
        s = summary.summarize(ds, variant=variant, filter=filter_)
    except NnctError as exc:
        _fail(f"{cube_path}: {exc}")
    s.attrs["cube"] = str(cube_path)
    click.echo(f"{cube_path}: " + summary.table(s, metric, bands))
    if out:
        cube.write(s, out)
        click.echo(f"wrote {out}")
    if csv_out:
        Path(csv_out).parent.mkdir(parents=True, exist_ok=True)
        summary.to_frame(s).to_csv(csv_out, index=False, float_format="%.6g")
        click.echo(f"wrote {csv_out}")


@main.command()
@click.argument("cube_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "-o", "out", required=True, type=click.Path(file_okay=False), help="Directory of the figures.")
@click.option("--examples", default=6, show_default=True, help="Per-example heatmaps of the first N examples selected.")
@click.option("--segments", default=None, help="Comma list of the segments of the AIE line plot [default: subject_last,"
              " object_last, relation and last, where present].")
@click.option("--metric", type=click.Choice(METRICS), default="prob", show_default=True)
@click.option("--variant", default=None, help=VARIANT_HELP)
@click.option("--filter", "filter_", type=click.Choice(FILTERS), default=None, help=FILTER_HELP)
def plot(cube_path, out, examples, segments, metric, variant, filter_):
    """ROME-style heatmaps per example, the average heatmap over segments and AIE lines (PNG + PDF)."""
    from . import plot as plot_lib, summary

    ds = _open(cube_path, chunks={"example": 256})
    try:
        chosen = summary.select(ds, variant, filter_)
        s = summary.summarize(ds, variant=variant, filter=filter_)
        paths = plot_lib.draw(chosen, s, out, examples, segments.split(",") if segments else None, metric)
    except NnctError as exc:
        _fail(f"{cube_path}: {exc}")
    click.echo(f"wrote {len(paths)} files into {out}")


@main.command()
@click.option("--model", default="smollm2-135m", show_default=True)
@click.option("--data", default="experiments/data/known_smollm2.jsonl", show_default=True, type=click.Path(exists=True),
              help="Records whose passages build the prompt.")
@click.option("--tokens", default=25, show_default=True, help="Prompt length (the first record's passage plus others).")
@click.option("--components", default="hidden,mlp,attn", show_default=True)
@click.option("--samples", default=10, show_default=True)
@click.option("--window", default=10, show_default=True)
@click.option("--batch-size", "batch_rows", default="auto", show_default=True)
@click.option("--plain-cells", default=30, show_default=True, help="Cells the plain ROME loop is timed on.")
@click.option("--passage", type=click.Choice(["first", "last"]), default="first", show_default=True,
              help="Where the traced fact's passage sits among the others (its subject is the span).")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the measurements as JSON.")
def bench(model, data, tokens, components, samples, window, batch_rows, plain_cells, passage, device, dtype, json_out):
    """Time nnct's engine against the plain ROME loop on one prompt, side by side."""
    import json

    from . import bench as bench_lib, models
    from .plan import components as parse_components

    try:
        adapter = models.load(model, device=device, dtype=dtype)
        result = bench_lib.run(adapter, data, tokens, parse_components(components), samples, window, _rows(batch_rows),
                               plain_cells, passage=passage)
    except NnctError as exc:
        _fail(str(exc))
    click.echo(bench_lib.table(result))
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
