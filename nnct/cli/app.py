"""The `nnct` group and what its commands share: failing with one line, the progress bar,
running a cube-filling method and reporting what it wrote.

Errors: the library raises typed errors; only here are they turned into one-line messages
and exit codes (2 for bad settings, data or models; 130 for an interruption, after which a
run on disk stays resumable).
"""

from __future__ import annotations

import sys

import click

from ..errors import NnctError

BOOL01 = click.Choice(["0", "1"])


def fail(message: str, code: int = 2):
    click.echo(f"nnct: error: {message}", err=True)
    sys.exit(code)


# --remote and --ndif-host, as every command that can run on a server spells them
REMOTE_OPTIONS = (
    click.option("--remote", "remote_", is_flag=False, flag_value="ndif", default=None,
                 help="Run on an NDIF server (--ndif-host, NDIF_HOST or nnsight's config); --remote local: nnsight's"
                      " local simulation."),
    click.option("--ndif-host", "ndif_host", default=None,
                 help="The NDIF server's URL (implies --remote) [default: NDIF_HOST, or NDIF's]."),
)


def remote_setting(value: str | None, host: str | None) -> str | None:
    """--remote / --ndif-host as a run's remote setting: None, "local", or the server's URL."""
    from ..exec import remote

    if value == remote.LOCAL:
        if host:
            fail("--remote local runs here: it takes no --ndif-host")
        return remote.LOCAL
    if value is None and host is None:
        return None
    if value not in (None, "ndif") and not value.startswith(("http://", "https://")):
        fail(f"--remote {value}: use --remote alone, --remote local, or --remote URL")
    try:
        return remote.server(host or (value if value != "ndif" else None)).host
    except NnctError as exc:
        fail(str(exc))


def rows(value: str) -> int | None:
    """--batch-size: a number of rows, or auto (None)."""
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        fail(f"--batch-size {value!r}: a number of rows, or auto")


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
    from ..errors import RemoteFailed
    from ..methods import run

    bar = Bar(quiet)
    try:
        summary = call(bar)
    except RemoteFailed as exc:
        bar.close()
        fail(f"{exc}; finished examples are kept: {again}")
    except NnctError as exc:
        bar.close()
        fail(str(exc))
    except KeyboardInterrupt:
        bar.close()
        if out is None:
            fail("interrupted", 130)
        fail(f"interrupted; finished examples are kept in {run.partial_dir(out)}: {again}", 130)
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
