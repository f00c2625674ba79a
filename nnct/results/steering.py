"""The two files of steering: the vectors file and the sweep, labelled xarray NetCDF.

**Vectors** (`nnct steer --contrast ... --save-vectors V.nc`, reused by `--vectors V.nc`):
`vector(layer, hidden)` float32 for every layer of the model (one forward per text gives
all of them), `norm(layer)`; attrs: the provenance of the run that made them (model, its
weights' digest, dtype, ...), `contrast` (the file), `n_pairs`. A sweep's output names the
vectors it used in its own attrs and keeps their norms.

**Sweep** (`--out OUT.nc`), over `prompt` (the prompts' ids), `layer` (the steered ones),
`alpha` and `answer` (target, alt):
- `p_steered(prompt, layer, alpha, answer)`: the answers' first-token probabilities at the
  last prompt position with alpha * v[layer] added; `p_clean(prompt, answer)` unsteered;
- `<R>_steered` and `<R>_clean` for every extra readout R (`interventions.readouts`), without
  the answer axis for an answer-free readout (kl: against the unsteered run);
- `continuation(prompt, layer, alpha)` and `continuation_clean(prompt)`: greedy text after
  the prompt (cut at the end-of-text token), when asked for;
- `prompt_text(prompt)`, `answer_text(prompt, answer)`, `answer_id(prompt, answer)`,
  `vector_norm(layer)`;
- attrs: provenance with the settings, `readouts`, `from_last`, `vectors` (where they came
  from), `n_pairs`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from .files import read_netcdf as read, write_netcdf as write  # noqa: F401  (this file kind's read and write)

VECTORS_FORMAT = "nnct-steering-vectors-1"
SWEEP_FORMAT = "nnct-steering-1"
ANSWERS = ("target", "alt")


def vectors_dataset(vectors: np.ndarray, attrs: dict):
    """The vectors file's Dataset of `vectors` [layer, d_model]."""
    import xarray as xr

    vectors = np.asarray(vectors, dtype=np.float32)
    layers = np.arange(vectors.shape[0])
    return xr.Dataset({"vector": (("layer", "hidden"), vectors), "norm": ("layer", np.linalg.norm(vectors, axis=1))},
                      coords={"layer": layers}, attrs={"nnct_format": VECTORS_FORMAT, **attrs})


def read_vectors(path: str | Path, d_model: int, revision: str = ""):
    """(vectors [layer, d_model] float32, the file's attrs) of a vectors file; ConfigError for a
    file of another model (another width, or other weights by digest)."""
    import xarray as xr

    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            ds = ds.load()
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a steering vectors file ({type(exc).__name__}: {exc})") from None
    if ds.attrs.get("nnct_format") != VECTORS_FORMAT or "vector" not in ds:
        raise DataError(f"{path}: not a steering vectors file (nnct steer --save-vectors writes one)")
    vectors = ds["vector"].values.astype(np.float32)
    if vectors.shape[1] != d_model:
        raise ConfigError(f"{path}: vectors of width {vectors.shape[1]} (model {ds.attrs.get('model')}), this model's is {d_model}")
    theirs = ds.attrs.get("model_revision", "")
    if revision and theirs and theirs != revision:
        raise ConfigError(f"{path}: vectors of model {ds.attrs.get('model')} (weights {theirs[:12]}), not of these weights"
                          f" ({revision[:12]})")
    return vectors, dict(ds.attrs)


def sweep_dataset(prompts: list, layers: list[int], alphas: list[float], clean: dict, steered: dict, norms: np.ndarray,
                  continuations=None, attrs: dict | None = None):
    """The sweep's Dataset. `prompts`: (id, text, (target, alt) texts, (target, alt) ids) each;
    `clean`: {readout: [prompt, answer] or [prompt]}; `steered`: {readout: [prompt, layer,
    alpha, answer] or [prompt, layer, alpha]}; `continuations`: (clean [prompt], steered
    [prompt, layer, alpha]) strings, or None."""
    import xarray as xr

    data = {}
    for name, values in clean.items():
        var = "p" if name == "prob" else name
        data[f"{var}_clean"] = (("prompt", "answer")[:np.ndim(values)], np.asarray(values, dtype=np.float32))
        data[f"{var}_steered"] = (("prompt", "layer", "alpha", "answer")[:np.ndim(steered[name])],
                                  np.asarray(steered[name], dtype=np.float32))
    if continuations is not None:
        data["continuation_clean"] = ("prompt", np.array(continuations[0], dtype=object))
        data["continuation"] = (("prompt", "layer", "alpha"), np.array(continuations[1], dtype=object))
    data["prompt_text"] = ("prompt", np.array([p[1] for p in prompts], dtype=object))
    data["answer_text"] = (("prompt", "answer"), np.array([list(p[2]) for p in prompts], dtype=object).reshape(len(prompts), 2))
    data["answer_id"] = (("prompt", "answer"), np.array([list(p[3]) for p in prompts], dtype=np.int64).reshape(len(prompts), 2))
    data["vector_norm"] = ("layer", np.asarray(norms, dtype=np.float32))
    coords = {"prompt": np.array([p[0] for p in prompts], dtype=object), "layer": np.asarray(layers, dtype=np.int64),
              "alpha": np.asarray(alphas, dtype=np.float64), "answer": np.array(ANSWERS, dtype=object)}
    return xr.Dataset(data, coords=coords, attrs={"nnct_format": SWEEP_FORMAT, **(attrs or {})})


