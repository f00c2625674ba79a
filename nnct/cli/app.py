"""The `nnct` group and what its commands share: failing with one line, the progress bar,
running a cube-filling method and reporting what it wrote.

Errors: the library raises typed errors; only here are they turned into one-line messages
and exit codes (2 for bad settings, data or models; 130 for an interruption, after which a
run on disk stays resumable).
"""

from __future__ import annotations

import contextlib
import sys

import click

from ..errors import NnctError

BOOL01 = click.Choice(["0", "1"])


def fail(message: str, code: int = 2):
    click.echo(f"nnct: error: {message}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def guarded(again: str = "", bar=None):
    """The one place a command's typed errors become one line and an exit code: 2 for
    settings, data, models and servers (a server's failure names its host), 130 for an
    interruption. `again` says how to go on (a run on disk stays resumable); `bar` is closed
    first, so that the line is not lost under it."""
    from ..errors import RemoteFailed

    def close():
        if bar is not None:
            bar.close()

    try:
        yield
    except RemoteFailed as exc:
        close()
        fail(f"{exc}" + (f"; {again}" if again else ""))
    except NnctError as exc:
        close()
        fail(str(exc))
    except KeyboardInterrupt:
        close()
        fail("interrupted" + (f"; {again}" if again else ""), 130)


class Bar:
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


def run_and_report(call, out: str | None, quiet: bool, again: str):
    """Run a method (or a collection) with a progress bar, and report what it wrote; `again`
    says how to go on after a failed request or an interruption. Returns the run's Summary
    (None while requests are still running on the server)."""
    from ..analysis import report
    from ..methods import run

    bar = Bar(quiet)
    with guarded(f"finished examples are kept in {run.partial_dir(out)}: {again}" if out else "", bar):
        summary = call(bar)
    bar.close()
    if summary.requests:
        click.echo(f"{summary.requests} requests, {summary.bytes_sent:,} bytes sent, {summary.bytes_received:,} received")
    if summary.pending:
        click.echo(f"{summary.pending} requests running on the server; collect them with: nnct remote collect {out}")
        return
    where = f"wrote {summary.out}" if summary.out else "traced"
    level = f", noise level {summary.noise_level:.4f}" if summary.noise_level else ""
    click.echo(f"{where}: {summary.examples} examples from {summary.records} records"
               f" ({len(summary.skipped)} skipped, {summary.resumed} resumed){level}")
    if not quiet:
        click.echo(report.describe(summary.cube))
    return summary


def open_cube(cube_path, chunks=None):
    from ..results import cube

    try:
        return cube.open_cube(cube_path, chunks=chunks)
    except (OSError, ValueError, KeyError) as exc:
        fail(f"{cube_path}: not an nnct effect cube ({type(exc).__name__}: {exc})")


@click.group()
@click.version_option(package_name="nnct")
def main():
    """Causal tracing and activation patching of language models with nnsight, into NetCDF
    effect cubes."""
