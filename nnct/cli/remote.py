"""`nnct remote`: an NDIF server's models, whether a model runs there, and runs submitted
without waiting."""

from __future__ import annotations

import click

from ..errors import NnctError
from .app import fail, main, run_and_report


@main.group("remote")
def remote_group():
    """NDIF servers: their models, whether a model runs, and runs submitted without waiting."""


HOST_OPTION = click.option("--ndif-host", "ndif_host", default=None, help="The server's URL [default: NDIF_HOST, or NDIF's].")


@remote_group.command("status")
@HOST_OPTION
def remote_status(ndif_host):
    """The server's models and their state."""
    from ..exec import remote

    try:
        srv = remote.server(ndif_host)
        models = remote.deployments(srv)
    except NnctError as exc:
        fail(str(exc))
    click.echo(f"{srv.host}: {len(models)} models")
    for key, m in sorted(models.items(), key=lambda kv: (kv[1]["repo_id"], kv[0])):
        click.echo(f"  {m['repo_id']:<50} {m['level']:<6} {m['state']:<12} {key}")


@remote_group.command("check")
@click.argument("model")
@HOST_OPTION
def remote_check(model, ndif_host):
    """Whether MODEL runs on the server: one tiny request (which deploys it where the server
    deploys on demand)."""
    from ..exec import remote
    from ..model import load

    try:
        srv = remote.server(ndif_host)
        click.echo(remote.check(srv, load(model, weights=False)))
    except NnctError as exc:
        fail(str(exc))


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
    from ..methods import run

    run_and_report(lambda bar: run.collect(out, wait=wait, progress=bar, **requesting), out, quiet,
                   f"run `nnct remote collect {out}` again")
