"""Files nnct writes: whole or not at all, readable as the user's other files, one writer each.

- `atomic(path)` gives a temporary name beside `path` and renames it over `path` once the
  block has written it (removing it if the block fails): a kill leaves the old file or the
  new one, never half of one. The temporary file is not created here but by whatever writes
  it (numpy, netCDF, pandas, matplotlib), so it gets the user's umask like any other file
  (0644 under the usual 0022): a colleague in a shared lab directory can read every cube.
- `locked(path)` makes one process the writer of `path` for the block. The lock is an
  `flock` on `<path>.lock`, which the operating system releases when its holder dies, so a
  crash or `kill -9` never leaves a stale lock and `--resume` works at once; a second writer
  fails at once with `OutputBusy`, naming the holder's pid. The lock file is removed on
  release; a process that locked a file its last holder had just removed locks the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path

from ..errors import OutputBusy


@contextlib.contextmanager
def atomic(path: str | Path):
    """Yield a temporary path to write (same folder, same suffix); it becomes `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_netcdf(ds, path: str | Path) -> None:
    """An xarray Dataset written atomically (`atomic`)."""
    with atomic(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4")


def read_netcdf(path: str | Path):
    """A NetCDF file read whole into memory (and closed)."""
    import xarray as xr

    with xr.open_dataset(path, engine="netcdf4") as ds:
        return ds.load()


def has_format(path: str | Path, name: str) -> bool:
    """Whether a NetCDF file's attr `nnct_format` is `name` (read from its attributes alone;
    False for anything else, a file that is not NetCDF included)."""
    try:
        import netCDF4

        with netCDF4.Dataset(path) as nc:
            return getattr(nc, "nnct_format", None) == name
    except OSError:
        return False


def write_json(path: str | Path, value) -> None:
    with atomic(path) as tmp:
        tmp.write_text(json.dumps(value, indent=1) + "\n")


def lock_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def locked(path: str | Path):
    """Hold the writer's lock of `path` for the block, or raise OutputBusy at once."""
    import fcntl

    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputBusy(f"another nnct process (pid {holder}) is writing {path}") from None
        try:
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)  # its holder removed it after we opened it: lock the file that is there now
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)
