"""The skeleton every method runs through.

    settings -> check (before the model loads) -> lock the output -> load the model
    -> the method: inputs -> plan -> execute here or over the session's Channel -> result
    -> write (atomic, the user's umask, `results.provenance`)

A method is a module that declares its settings (an `Execution` with fields of its own),
what it reads, what it computes and what it leaves; it never opens a lock, picks a device,
loads a model or talks to a server. It gets a `Session`: the model (`adapter`, on the
device and in the dtype asked for, or without weights when a server runs it), the
`channel` to that server (`exec.remote.Channel`: deadlines, retries with backoff, typed
errors; None here), and the output's provenance. `run(cfg, body)` is the whole skeleton:
`body(session)` is the method.

`Execution` is the one set of options every method shares, spelled the same everywhere
(the command line's shared options are `cli.options`): the model, device, dtype, batch
size, server, and how requests are retried and waited for.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Callable, TypeVar

from ..errors import ConfigError
from ..exec import remote
from ..model import embedded
from ..model.loading import DTYPES
from ..results import files
from ..results.provenance import provenance

T = TypeVar("T")

DEVICES = ("cpu", "cuda", "auto")


@dataclass(frozen=True, kw_only=True)
class Execution:
    """Where and how a method runs (see the module's docstring)."""

    model: str = embedded.NAME  # the embedded default, a local directory, or a hub id
    device: str = "cpu"  # cpu, cuda or auto
    dtype: str = "float32"
    batch_rows: int | None = None  # rows per forward pass; None: the method's automatic choice
    remote: str | None = None  # None: here; a host URL; "local": nnsight's simulation of a request
    retries: int = 3  # remote: tries after a failed request, with exponential backoff
    retry_delay: float = 2.0  # remote: seconds before the first retry
    request_timeout: float = 3600.0  # remote: seconds a request may take before it is retried (0: no limit)


def check(cfg: Execution) -> None:
    """ConfigError for execution options no run could use (before any model loads)."""
    if cfg.device not in DEVICES:
        raise ConfigError(f"--device {cfg.device}: use {', '.join(DEVICES)}")
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"--dtype {cfg.dtype}: use {', '.join(DTYPES)}")
    if cfg.batch_rows is not None and cfg.batch_rows < 1:
        raise ConfigError(f"--batch-size {cfg.batch_rows}: need at least 1 row")
    if cfg.remote is not None:
        if cfg.remote != remote.LOCAL:
            remote.server(cfg.remote)
        if cfg.retries < 0:
            raise ConfigError(f"--retries {cfg.retries}: cannot be negative")
        if cfg.request_timeout < 0:
            raise ConfigError(f"--request-timeout {cfg.request_timeout}: cannot be negative (0: no limit)")


def on_server(cfg: Execution) -> bool:
    """Whether a server holds the weights (nnsight's local simulation uses ours)."""
    return cfg.remote not in (None, remote.LOCAL)


@dataclass
class Session:
    """What a method runs with: the model, the channel to a server (None: here), the settings."""

    adapter: object
    channel: remote.Channel | None
    cfg: Execution

    @property
    def backend(self) -> str:
        return remote.kind(self.cfg.remote)

    def provenance(self, settings: dict | None = None, when: str | None = None) -> dict:
        return provenance(self.adapter, self.backend, settings, when)

    def batch_rows(self, automatic: int) -> int:
        return self.cfg.batch_rows or automatic

    def execute(self, fn: Callable[[object], T]) -> T:
        """fn(backend): here (backend None), or as one request over the channel (a fresh
        backend per try, with the channel's deadline, retries and typed errors)."""
        return fn(None) if self.channel is None else self.channel.value(fn)


def open_session(cfg: Execution, adapter=None, on_retry=None, stored: tuple[str | None, str] | None = None) -> Session:
    """The model as `cfg` asks (or `adapter`, as a notebook holds it) and its channel.
    `stored`: (the model an input file names, the file), used when `cfg.model` is None."""
    from ..errors import ModelNotFound
    from ..model.loading import load

    if adapter is None:
        name = cfg.model if cfg.model is not None or stored is None else stored[0]
        if not name:
            raise ConfigError(f"{stored[1] if stored else 'the input'} names no model: pass --model")
        try:
            adapter = load(name, device=cfg.device, dtype=cfg.dtype, weights=not on_server(cfg))
        except ModelNotFound as exc:
            if cfg.model is not None:
                raise
            raise ModelNotFound(f"{stored[1]} was made with model '{name}', which cannot be loaded here ({exc}):"
                                " pass --model to name it") from None
    return Session(adapter, remote.channel(cfg.remote, adapter, cfg.retries, cfg.retry_delay, cfg.request_timeout, on_retry),
                   cfg)


def writing(*outputs) -> contextlib.ExitStack:
    """The writer's lock of each output given (None: none), held for the block."""
    stack = contextlib.ExitStack()
    try:
        for out in outputs:
            if out is not None:
                stack.enter_context(files.locked(out))
    except BaseException:
        stack.close()  # the locks taken before the one that failed
        raise
    return stack


def run(cfg: Execution, body: Callable[[Session], T], outputs=(), adapter=None, on_retry=None,
        stored: tuple[str | None, str] | None = None) -> T:
    """The skeleton: check `cfg`, lock `outputs`, open the session (`open_session`), run the
    method."""
    check(cfg)
    with writing(*outputs):
        return body(open_session(cfg, adapter, on_retry, stored))


def settings_of(cfg, *leave_out: str) -> dict:
    """A method's settings as its output records them (without what changes no number)."""
    keep = {k: v for k, v in asdict(cfg).items() if k not in leave_out}
    for k in ("retries", "retry_delay", "request_timeout"):
        keep.pop(k, None)
    return keep
