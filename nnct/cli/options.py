"""The options every command shares, each defined once and spelled the same everywhere.

`execution(...)` decorates a command with the options of `methods.pipeline.Execution`
(--model, --device, --dtype, --batch-size, --remote, --ndif-host, --request-timeout,
--retries) that apply to it; `settings(options)` takes them back out of the command's
keyword arguments as `Execution`'s fields. RESUME and QUIET are the other two shared flags.
"""

from __future__ import annotations

import click

from .app import fail

MODEL_HELP = "The embedded default (smollm2-135m), a local model directory, or a hub id."


def _batch(ctx, param, value):
    """--batch-size: a number of rows, or auto (None)."""
    if value is None or value == "auto":
        return None
    try:
        rows = int(value)
    except ValueError:
        fail(f"--batch-size {value!r}: a number of rows, or auto")
    if rows < 1:
        fail(f"--batch-size {value}: need at least 1 row")
    return rows


def model_option(default: str | None = "smollm2-135m", help: str = MODEL_HELP):
    return click.option("--model", "--model_name", "model", default=default, show_default=default is not None, help=help)


DEVICE = click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True,
                      help="Where the model runs (auto: cuda when there is one).")
DTYPE = click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
BATCH = click.option("--batch-size", "--batch_size", "batch_rows", default="auto", show_default=True, callback=_batch,
                     help="Rows per forward pass, or auto (from the device's total memory, the model and the settings).")
REMOTE = (
    click.option("--remote", "remote_", is_flag=False, flag_value="ndif", default=None,
                 help="Run on an NDIF server (--ndif-host, NDIF_HOST or nnsight's config); --remote local: nnsight's"
                      " local simulation."),
    click.option("--ndif-host", "ndif_host", default=None,
                 help="The NDIF server's URL (implies --remote) [default: NDIF_HOST, or NDIF's]."),
    click.option("--retries", default=3, show_default=True, type=click.IntRange(min=0),
                 help="Remote: tries again after a failed request, with backoff."),
    click.option("--request-timeout", default=3600.0, show_default=True, type=click.FloatRange(min=0),
                 help="Remote: seconds to wait for a request's result before trying again (0: no limit)."),
)
RESUME = click.option("--resume", is_flag=True, help="Complete the unfinished run of the same settings at the output.")
QUIET = click.option("--quiet", "-q", is_flag=True, help="No progress, no per-item lines.")


def execution(model: str | None = "smollm2-135m", model_help: str = MODEL_HELP, batch: bool = True, remote: bool = True):
    """The Execution options that apply to a command."""
    options = [model_option(model, model_help), DEVICE, DTYPE, *([BATCH] if batch else []), *(REMOTE if remote else ())]

    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


def remote_setting(value: str | None, host: str | None) -> str | None:
    """--remote / --ndif-host as a run's remote setting: None, "local", or the server's URL."""
    from ..errors import NnctError
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


def settings(options: dict) -> dict:
    """Pop the Execution options out of a command's keyword arguments, as Execution's fields."""
    out = {k: options.pop(k) for k in ("model", "device", "dtype", "batch_rows", "retries", "request_timeout") if k in options}
    if "remote_" in options:
        out["remote"] = remote_setting(options.pop("remote_"), options.pop("ndif_host"))
    return out
