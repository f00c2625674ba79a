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

from .errors import NnctError

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

    def close(self):
        if self.bar is not None:
            self.bar.set_postfix_str(f"examples {self.done}/{self.total}")
            self.bar.close()


@click.group()
@click.version_option(package_name="nnct")
def main():
    """Causal tracing of language models with nnsight, into NetCDF effect cubes."""


@main.command()
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
@click.option("--noise-level", "--noise_level", "noise", default="s3", show_default=True,
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
@click.option("--resume", is_flag=True, help="Complete the unfinished run of the same settings at --out.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, no per-example summary.")
def trace(output_dir, out, replace, reverse, quiet, **options):
    """Trace a data set and write its effect cube."""
    from . import cube, report, run

    if bool(out) == bool(output_dir):
        _fail("give exactly one of --out FILE.nc and --output-dir DIR")
    out = out or str(Path(output_dir) / "effects.nc")
    options["batch_rows"] = _rows(options["batch_rows"])
    cfg = run.RunConfig(out=out, replace=replace == "1", reverse=reverse == "1", **options)
    bar = _Bar(quiet)
    try:
        summary = run.trace(cfg, progress=bar)
    except NnctError as exc:
        bar.close()
        _fail(str(exc))
    except KeyboardInterrupt:
        bar.close()
        _fail(f"interrupted; finished examples are kept in {run.partial_dir(out)}: rerun with --resume", 130)
    bar.close()
    click.echo(
        f"wrote {summary.out}: {summary.examples} examples from {summary.records} records"
        f" ({len(summary.skipped)} skipped, {summary.resumed} resumed), noise level {summary.noise_level:.4f}"
    )
    if not quiet:
        click.echo(report.describe(cube.open_cube(summary.out)))


@main.command()
@click.argument("cube_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--examples", default=10, show_default=True, help="How many examples to list.")
def info(cube_path, examples):
    """Print what a cube holds: attrs, dims, examples, ATE."""
    from . import cube, report

    try:
        ds = cube.open_cube(cube_path)
        text = report.describe(ds, max_examples=examples)
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        _fail(f"{cube_path}: not an nnct effect cube ({type(exc).__name__}: {exc})")
    click.echo(text)


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
