"""The path-patching file (`nnct patch --path`): every sender's path-patched readouts over
prompt pairs, as labelled xarray NetCDF.

Dimensions are `example` (the pairs, by id), `sender_layer`, `sender_head` and `answer`
(target, alt: their first tokens, at the last position).
- `p_path(example, sender_layer, sender_head, answer)` and `logit_path(...)`: the base run
  (clean prompt; corrupt when denoising) with one head's path to the receivers patched.
- `p_path_mlp(example, sender_layer, answer)` and `logit_path_mlp(...)`: the same, one MLP.
- `p_clean`, `p_corrupt`, `logit_clean`, `logit_corrupt` (example, answer): the two runs.
- per extra readout R (`interventions.readouts`): `R_path`, `R_path_mlp`, `R_clean` and
  `R_corrupt`, with an `answer` axis when R has one.
- NaN: a sender that feeds none of the receivers (it comes after all of them).
- coordinates per example: `clean`, `corrupt` (the prompts), `target`, `alt` (the answers'
  texts), `target_token`, `alt_token` (their ids).
- attrs: provenance (`results.provenance`), `receivers` (as given, normalised),
  `receiver_destinations` (the graph's labels), `direction` (noising or denoising),
  `base` (the run patched: clean or corrupt), `pairs`, `n_pairs`, `readouts`, the graph's
  sizes.

`effect(ds, name)` is the effect of each sender: R_path - R_<base>, per head and per MLP.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .files import has_format, read_netcdf as read, write_netcdf as write  # noqa: F401  (this file kind's read and write)

FORMAT = "nnct-paths-1"
ANSWERS = ("target", "alt")


def variable(readout) -> str:
    """A readout's prefix in the file: `p` for prob (as the cube spells it), else its name."""
    return "p" if readout.name == "prob" else readout.name


def to_dataset(graph, pairs: list, texts: list[tuple[str, str, str, str]], base: np.ndarray, path: np.ndarray,
               readouts, attrs: dict):
    """`pairs`: (id, target token, alt token) per example; `texts`: (clean, corrupt, target,
    alt); `base` [example, 2 (clean, corrupt), column] and `path` [example, sender, column]
    (senders: every head in (layer, head) order, then every MLP; NaN where none) of the
    readouts' columns (`interventions.readouts.split`)."""
    import xarray as xr

    from ..interventions import readouts as readouts_lib

    L, H = graph.n_layers, graph.n_heads
    heads, mlps = path[:, :L * H], path[:, L * H:]
    data = {}
    for name, values in readouts_lib.split(readouts, heads).items():
        data[name] = values.reshape(values.shape[0], L, H, *values.shape[2:])
    parts = {"path": data, "path_mlp": readouts_lib.split(readouts, mlps),
             "clean": readouts_lib.split(readouts, base[:, 0]), "corrupt": readouts_lib.split(readouts, base[:, 1])}
    dims = {"path": ("example", "sender_layer", "sender_head"), "path_mlp": ("example", "sender_layer"),
            "clean": ("example",), "corrupt": ("example",)}
    out = {}
    for r in readouts:
        for part, values in parts.items():
            out[f"{variable(r)}_{part}"] = (dims[part] + (("answer",) if r.per_answer else ()), values[r.name])
    coords = {"example": [p[0] for p in pairs], "sender_layer": np.arange(L), "sender_head": np.arange(H),
              "answer": list(ANSWERS), "target_token": ("example", [p[1] for p in pairs]),
              "alt_token": ("example", [p[2] for p in pairs])}
    for k, name in enumerate(("clean", "corrupt", "target", "alt")):
        coords[name] = ("example", [t[k] for t in texts])
    return xr.Dataset(out, coords=coords, attrs={"nnct_format": FORMAT, "n_layers": L, "n_heads": H,
                                                 "n_kv_heads": graph.n_kv, **attrs})


def effect(ds, name: str = "p"):
    """(per head [example, sender_layer, sender_head, ...], per MLP [example, sender_layer,
    ...]): `name`_path - `name`_<base>, the change a sender's path makes to the run patched."""
    base = ds[f"{name}_{ds.attrs['base']}"]
    return ds[f"{name}_path"] - base, ds[f"{name}_path_mlp"] - base




def is_path_file(path: str | Path) -> bool:
    """Whether `path` is a path-patching file (read from its attributes alone)."""
    return has_format(path, FORMAT)
