"""The edits file: ROME edits as labelled xarray NetCDF (docs/method.md, "ROME editing").

One `Edit` per rewritten fact: the rank-one update's `left` (d_model) and `right` (d_ff)
vectors, such that the edited down projection of layer `layer` is W + outer(left, right),
with what it rewrote (record, subject, prompt, the true and the new object), the
hyperparameters its value was found with, and its own metrics. On disk: dimensions edit,
d_model, d_ff; `left(edit, d_model)`, `right(edit, d_ff)`, `layer(edit)`, the texts per
edit, each metric as `metric_<name>(edit)`, the hyperparameters as JSON in `hparams(edit)`,
and the run's attrs (model, covariance, nnct version).
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
    left: np.ndarray  # [d_model]
    right: np.ndarray  # [d_ff]
    hparams: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # name -> float


def to_dataset(edits: list[Edit], attrs: dict):
    import xarray as xr

    names = sorted({k for e in edits for k in e.metrics})
    data = {
        "left": (("edit", "d_model"), np.stack([e.left for e in edits]).astype(np.float64)),
        "right": (("edit", "d_ff"), np.stack([e.right for e in edits]).astype(np.float64)),
        "layer": ("edit", np.array([e.layer for e in edits], dtype=np.int32)),
        "hparams": ("edit", np.array([json.dumps(e.hparams, sort_keys=True) for e in edits], dtype=object)),
        **{k: ("edit", np.array([getattr(e, k) for e in edits], dtype=object)) for k in TEXTS},
        **{f"metric_{m}": ("edit", np.array([e.metrics.get(m, np.nan) for e in edits], dtype=np.float64)) for m in names},
    }
    return xr.Dataset(data, coords={"edit": np.arange(len(edits), dtype=np.int32)}, attrs=dict(attrs))


def write(edits: list[Edit], path: str | Path, attrs: dict) -> None:
    """Write the edits atomically (`files.atomic`)."""
    with atomic(path) as tmp:
        to_dataset(edits, attrs).to_netcdf(tmp, engine="netcdf4")


def read(path: str | Path) -> tuple[list[Edit], dict]:
    """(edits, attrs) of an edits file."""
    import xarray as xr

    with xr.open_dataset(path, engine="netcdf4") as ds:
        ds = ds.load()
    metrics = [k for k in ds.data_vars if k.startswith("metric_")]
    edits = [Edit(**{k: str(ds[k].values[i]) for k in TEXTS}, layer=int(ds.layer.values[i]),
                  left=ds.left.values[i].astype(np.float64), right=ds.right.values[i].astype(np.float64),
                  hparams=json.loads(str(ds.hparams.values[i])),
                  metrics={k.removeprefix("metric_"): float(ds[k].values[i]) for k in metrics})
             for i in range(ds.sizes["edit"])]
    return edits, dict(ds.attrs)
