"""Which kind of nnct output a file is, from its header alone.

`nnct plot` and `nnct view` read the same kinds, so both ask `kind_of`: one place decides.
A file that names its format (attr `nnct_format`: circuit, path-patching and steering files)
is that kind; otherwise its variables say it: an edits file has its edits' `target_new`,
a summary its `aie*` over a `metric` axis, and a cube is the rest (its restored cells over
an `example` axis). Only the header is read (netCDF4, no xarray), so detection stays cheap
on a cube of thousands of examples.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError

KINDS = ("cube", "summary", "circuit", "paths", "steering", "edits")
FORMATS = {"nnct-circuit-1": "circuit", "nnct-paths-1": "paths", "nnct-steering-1": "steering"}
SUMMARY_VARIABLES = ("aie", "aie_head", "aie_head_all_pos")


def kind_of(path: str | Path) -> str:
    """One of `KINDS`; DataError for a file that is not NetCDF or no nnct output."""
    import netCDF4

    try:
        with netCDF4.Dataset(path) as nc:
            named = FORMATS.get(getattr(nc, "nnct_format", ""))
            variables, dims = set(nc.variables), set(nc.dimensions)
    except OSError as exc:
        raise DataError(f"{path}: not a NetCDF file nnct wrote ({exc})") from None
    if named:
        return named
    if "target_new" in variables and ("left" in variables or "batch_left" in variables):
        return "edits"
    if "metric" in dims and variables & set(SUMMARY_VARIABLES):
        return "summary"
    if "example" in dims and "p_clean" in variables:
        return "cube"
    raise DataError(f"{path}: no nnct output (neither a cube, a summary, a circuit, path-patching, steering nor edits file)")
