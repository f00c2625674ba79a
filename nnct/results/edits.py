"""The edits file: ROME edits as labelled xarray NetCDF (docs/method.md, "ROME editing").

One `Edit` per rewritten fact: the rank-one update's `left` (d_model) and `right` (d_ff)
vectors, such that the edited down projection of layer `layer` is W + outer(left, right),
with what it rewrote (record, subject, prompt, the true and the new object), the
hyperparameters its value was found with, and its own metrics. On disk: dimensions edit,
d_model, d_ff; `left(edit, d_model)`, `right(edit, d_ff)`, `layer(edit)`, the texts per
edit, each metric as `metric_<name>(edit)`, the hyperparameters as JSON in `hparams(edit)`,
and the run's attrs (model, covariance, nnct version, `method`).

A batch method's file (attr `method` "memit" or "alphaedit"; MEMIT, AlphaEdit) has no
per-edit vectors: each batch's update of each layer of its range is stored as factors,
`batch_left(batch, batch_layer, d_model, rank)` and `batch_right(batch, batch_layer, d_ff,
rank)`, the edited down projection of layer `batch_layer` being W + the sum over batches of
left @ right.T; rank is the largest batch's size and a smaller batch's factors are padded
with zero columns (which add nothing). Each edit's batch is `batch(edit)`, its `layer` the
range's last layer; attrs `layers` ("A-B") and `batch_hparams` (JSON). A file without the
attr `method` (written before it existed) is ROME's. `updates` reads the (layer, left,
right) terms of either kind, as `rome.edited_weights` applies them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .files import atomic

TEXTS = ("record_id", "subject", "prompt", "target_true", "target_new")


@dataclass
class Edit:
    record_id: str
    subject: str
    prompt: str
    target_true: str
    target_new: str
    layer: int
    left: np.ndarray | None  # [d_model]; None for a batch method's edit (its batch's `Factors`)
    right: np.ndarray | None  # [d_ff]
    hparams: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # name -> float
    batch: int | None = None  # a batch method's: the batch the edit was written in


@dataclass
class Factors:
    """One batch's update of one layer: W + left @ right.T."""

    batch: int
    layer: int
    left: np.ndarray  # [d_model, rank]
    right: np.ndarray  # [d_ff, rank]


def updates(edits: list[Edit], factors: list[Factors] = ()) -> list[tuple]:
    """[(layer, left, right)]: every term the edits add to the weights (`rome.edited_weights`)."""
    return [(f.layer, f.left, f.right) for f in factors] or [(e.layer, e.left, e.right) for e in edits]


def _factor_vars(factors: list[Factors]) -> tuple[dict, dict]:
    batches = sorted({f.batch for f in factors})
    layers = sorted({f.layer for f in factors})
    rank = max(f.left.shape[1] for f in factors)
    left = np.zeros((len(batches), len(layers), factors[0].left.shape[0], rank))
    right = np.zeros((len(batches), len(layers), factors[0].right.shape[0], rank))
    for f in factors:
        b, i, r = batches.index(f.batch), layers.index(f.layer), f.left.shape[1]
        left[b, i, :, :r], right[b, i, :, :r] = f.left, f.right
    dims = ("batch", "batch_layer")
    return ({"batch_left": ((*dims, "d_model", "rank"), left), "batch_right": ((*dims, "d_ff", "rank"), right)},
            {"batch": np.array(batches, dtype=np.int32), "batch_layer": np.array(layers, dtype=np.int32)})


def to_dataset(edits: list[Edit], attrs: dict, factors: list[Factors] = ()):
    import xarray as xr

    names = sorted({k for e in edits for k in e.metrics})
    vectors, coords = _factor_vars(list(factors)) if factors else ({}, {})
    if not factors:
        vectors = {"left": (("edit", "d_model"), np.stack([e.left for e in edits]).astype(np.float64)),
                   "right": (("edit", "d_ff"), np.stack([e.right for e in edits]).astype(np.float64))}
    else:
        vectors["edit_batch"] = ("edit", np.array([e.batch for e in edits], dtype=np.int32))
    data = {
        **vectors,
        "layer": ("edit", np.array([e.layer for e in edits], dtype=np.int32)),
        "hparams": ("edit", np.array([json.dumps(e.hparams, sort_keys=True) for e in edits], dtype=object)),
        **{k: ("edit", np.array([getattr(e, k) for e in edits], dtype=object)) for k in TEXTS},
        **{f"metric_{m}": ("edit", np.array([e.metrics.get(m, np.nan) for e in edits], dtype=np.float64)) for m in names},
    }
    return xr.Dataset(data, coords={"edit": np.arange(len(edits), dtype=np.int32), **coords}, attrs=dict(attrs))


def write(edits: list[Edit], path: str | Path, attrs: dict, factors: list[Factors] = ()) -> None:
    """Write the edits (and a batch method's `factors`) atomically (`files.atomic`)."""
    with atomic(path) as tmp:
        to_dataset(edits, attrs, factors).to_netcdf(tmp, engine="netcdf4")


def _load(path):
    import xarray as xr

    with xr.open_dataset(path, engine="netcdf4") as ds:
        return ds.load()


def read(path: str | Path) -> tuple[list[Edit], dict]:
    """(edits, attrs) of an edits file; attrs["method"] is "rome" for a file without it."""
    ds = _load(path)
    metrics = [k for k in ds.data_vars if k.startswith("metric_")]
    per_edit = "left" in ds.data_vars
    edits = [Edit(**{k: str(ds[k].values[i]) for k in TEXTS}, layer=int(ds.layer.values[i]),
                  left=ds.left.values[i].astype(np.float64) if per_edit else None,
                  right=ds.right.values[i].astype(np.float64) if per_edit else None,
                  hparams=json.loads(str(ds.hparams.values[i])),
                  metrics={k.removeprefix("metric_"): float(ds[k].values[i]) for k in metrics},
                  batch=None if per_edit else int(ds.edit_batch.values[i]))
             for i in range(ds.sizes["edit"])]
    return edits, {"method": "rome", **dict(ds.attrs)}


def read_factors(path: str | Path) -> list[Factors]:
    """A batch method's factors (zero padding included; [] for a ROME file)."""
    ds = _load(path)
    if "batch_left" not in ds.data_vars:
        return []
    return [Factors(int(b), int(layer), ds.batch_left.values[i, j].astype(np.float64),
                    ds.batch_right.values[i, j].astype(np.float64))
            for i, b in enumerate(ds.batch.values) for j, layer in enumerate(ds.batch_layer.values)]


def read_updates(path: str | Path) -> list[tuple]:
    """[(layer, left, right)] of an edits file of either kind, for `rome.edited_weights`."""
    return updates(read(path)[0], read_factors(path))
