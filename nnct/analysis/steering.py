"""Reading a steering sweep (`results.steering`): the effect by layer and alpha, as a table
and a heatmap.

The effect of a row (layer, alpha) on a prompt is the change its steering makes, against
the unsteered run of the same prompt, in
- p(target) - p(alt) for `prob` (the default), and likewise target - alt for any readout
  with an answer axis (logprob, rank, ...);
- the readout itself for an answer-free one (kl, logit_diff).
`effect` averages it over prompts, [layer, alpha]; `effect_figure` draws that as a heatmap
(layers bottom to top, alphas left to right, a diverging scale centred on 0, each cell
written); `best` names the rows that move it most either way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..results.files import atomic


def _variable(ds, readout: str) -> str:
    var = "p" if readout == "prob" else readout
    if f"{var}_steered" not in ds:
        known = sorted(("prob" if v == "p_steered" else v[:-len("_steered")]) for v in ds.data_vars if v.endswith("_steered"))
        raise ConfigError(f"readout {readout!r} is not in this sweep; it has {', '.join(known)}")
    return var


def change(ds, readout: str = "prob"):
    """[prompt, layer, alpha]: each row's change against the unsteered run (see the module's docstring)."""
    var = _variable(ds, readout)
    steered, clean = ds[f"{var}_steered"], ds[f"{var}_clean"]
    if "answer" in steered.dims:
        steered = steered.sel(answer="target") - steered.sel(answer="alt")
        clean = clean.sel(answer="target") - clean.sel(answer="alt")
    return steered - clean


def effect(ds, readout: str = "prob"):
    """[layer, alpha]: the mean change over prompts."""
    return change(ds, readout).mean("prompt")


def label(ds, readout: str = "prob") -> str:
    var = _variable(ds, readout)
    what = "p(target) - p(alt)" if readout == "prob" else (
        f"{readout}(target) - {readout}(alt)" if "answer" in ds[f"{var}_steered"].dims else readout)
    return f"change in {what}"


def best(ds, readout: str = "prob") -> dict:
    """The rows of largest and smallest mean effect: {"up": (layer, alpha, value), "down": ...}."""
    mean = effect(ds, readout)
    values = mean.values
    out = {}
    for key, at in (("up", np.nanargmax(values)), ("down", np.nanargmin(values))):
        i, j = np.unravel_index(at, values.shape)
        out[key] = (int(mean.layer[i]), float(mean.alpha[j]), float(values[i, j]))
    return out


def effect_figure(ds, readout: str = "prob"):
    """The mean effect as a heatmap, layers x alphas (a matplotlib Figure, no pyplot state)."""
    from matplotlib.figure import Figure

    mean = effect(ds, readout)
    values = mean.values
    bound = float(np.nanmax(np.abs(values))) or 1.0
    fig = Figure(figsize=(1.0 + 0.7 * values.shape[1], 1.2 + 0.35 * values.shape[0]))
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound, origin="lower", aspect="auto")
    ax.set_xticks(range(values.shape[1]), [f"{a:g}" for a in mean.alpha.values])
    ax.set_yticks(range(values.shape[0]), [str(layer) for layer in mean.layer.values])
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ax.text(j, i, f"{values[i, j]:+.2f}", ha="center", va="center", fontsize=6)
    ax.set_xlabel("alpha (scale of the steering vector)")
    ax.set_ylabel("layer steered")
    where = "from the last prompt token" if ds.attrs.get("from_last") else "at every position"
    ax.set_title(f"{ds.attrs.get('model', '')}: steering {where}\nmean over {ds.sizes['prompt']} prompts", fontsize=9)
    fig.colorbar(image, ax=ax, label=label(ds, readout))
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Write `fig` to `path` (its suffix names the format: png, pdf, svg), atomically."""
    path = Path(path)
    with atomic(path) as tmp:
        fig.savefig(tmp, dpi=150, format=path.suffix.lstrip(".") or "png")
    return path
