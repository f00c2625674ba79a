"""Shards back into one cube.

`nnct trace --shard i/n` traces records i, i+n, ... of a data set with the noise level of the
whole data set (see `run`), so the shards of one run are pieces of the cube the whole run
would have written. `merge` checks that they are (every attr that decides a number is equal;
the shards are 0..n-1 of one n, each once; no example twice), pads their token dimension to
the longest prompt, and restores the data set's order by record line. It works on lazily
opened (dask) cubes, so writing the merged cube reads the shards a chunk at a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .cube import open_cube

# Where a shard ran and when: these may differ between the shards of one run.
PROVENANCE = ("created", "device", "backend", "shard", "batch_budget")
# Padding of the token dimension (cube.assemble's); the restored variables of heads
# (p_restored_head, ...) are floats, padded with xarray's default, NaN, as p_restored is.
TOKEN_FILL = {"p_restored": np.nan, "logit_restored": np.nan, "token_id": -1, "corrupted": 0, "token_str": "", "segment": ""}


def _strings_in_memory(ds):
    """Text variables are read now: dask would guess a fixed width from one chunk and cut
    longer strings when writing. They are small beside `p_restored`."""
    text = [k for k, v in ds.variables.items() if v.dtype.kind in "OUS" and k not in ds.dims]
    return ds.assign({k: ds[k].load() for k in text if k in ds.data_vars}).assign_coords(
        {k: ds[k].load() for k in text if k in ds.coords})


def _pad_tokens(ds, n_tokens: int):
    if ds.sizes["token"] == n_tokens:
        return ds
    labels = ["token_str", "segment"]
    ds = ds.reset_coords(labels).reindex(token=np.arange(n_tokens, dtype=ds.token.dtype), fill_value=TOKEN_FILL)
    return ds.set_coords(labels)


def _check(paths: list[Path], cubes: list) -> int:
    """The shard count, after checking that the cubes are the shards of one run."""
    first = cubes[0].attrs
    for path, ds in zip(paths, cubes):
        keys = (set(first) | set(ds.attrs)) - set(PROVENANCE)
        diff = [k for k in sorted(keys) if str(first.get(k)) != str(ds.attrs.get(k))]
        if diff:
            k = diff[0]
            raise ConfigError(f"{path} is not a shard of the same run as {paths[0]}: {k} = {ds.attrs.get(k)}, "
                              f"not {first.get(k)}" + (f" (and {', '.join(diff[1:])} differ too)" if diff[1:] else ""))
        if not ds.attrs.get("shard"):
            raise ConfigError(f"{path} is not a shard (traced without --shard): nothing to merge it with")
    shards = [tuple(int(x) for x in ds.attrs["shard"].split("/")) for ds in cubes]
    counts = {n for _, n in shards}
    if len(counts) > 1:
        raise ConfigError(f"shards of different splits: {', '.join(f'{p} is {i}/{n}' for p, (i, n) in zip(paths, shards))}")
    (n,) = counts
    seen: dict[int, Path] = {}
    for path, (i, _) in zip(paths, shards):
        if i in seen:
            raise ConfigError(f"shard {i}/{n} given twice: {seen[i]} and {path}")
        seen[i] = path
    missing = sorted(set(range(n)) - set(seen))
    if missing:
        raise ConfigError(f"shard(s) {', '.join(f'{i}/{n}' for i in missing)} missing: a merged cube holds the whole run")
    return n


def merge(paths, chunks: int = 256):
    """The merged cube (lazy: dask arrays) of the shard cubes at `paths`."""
    import xarray as xr

    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise ConfigError("merge needs at least two shards")
    cubes = [open_cube(p, chunks={"example": chunks}) for p in paths]
    n = _check(paths, cubes)
    examples = np.concatenate([ds.example.values for ds in cubes])
    names, counts = np.unique(examples, return_counts=True)
    if (counts > 1).any():
        raise ConfigError(f"example {names[counts > 1][0]} is in more than one shard")
    n_tokens = max(ds.sizes["token"] for ds in cubes)
    merged = xr.concat([_pad_tokens(_strings_in_memory(ds), n_tokens) for ds in cubes], dim="example", combine_attrs="drop")
    order = np.argsort(merged.line.values, kind="stable")  # a record's variants stay in their order
    merged = merged.isel(example=order)
    attrs = {k: v for k, v in cubes[0].attrs.items() if k != "shard"}
    attrs["created"] = min(str(ds.attrs["created"]) for ds in cubes)
    for k in ("device", "backend"):
        attrs[k] = ",".join(sorted({str(ds.attrs[k]) for ds in cubes}))
    attrs["merged_shards"] = n
    merged.attrs = attrs
    # The first shard's on-disk encodings (string widths among them) must not shape the result.
    return merged.drop_encoding().chunk({"example": chunks})
