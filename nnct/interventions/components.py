"""Components: what one cell of the cube restores, one entry each.

A component names a model site (`model.sites`) and how a cell restores it:
- `hidden`, `mlp`, `attn`: the site's whole value at (token t, layer l) (mlp and attn in
  every layer of the window around l);
- `head`: one attention head's slice of the output projection's input at (t, l), with a
  window in every layer of it, as `attn`; one cell per (t, l, head);
- `head_all_pos`: one head restored at every prompt position from the first corrupted one
  on (TransformerLens' `_all_pos` patching; an answer's tokens appended for teacher forcing
  are not written), windowed as `head`; one cell per (l, head);
- `hidden-sever-mlp`, `hidden-sever-attn`: the hidden state at (t, l) restored while the MLP
  (attention) outputs at t in every later layer keep their values from the base run (ROME's
  severed paths; the same noise sample, so severing nothing is the plain hidden cell).

Each component stores its cells in one variable of the cube: the components of whole sites
share `p_restored(token, layer, component)`, a component of heads has its own
(`p_restored_head(token, layer, head)`, `p_restored_head_all_pos(layer, head)`), and the
logits likewise. `grid` gives a variable's cell dimensions, `slot` a cell's place in it.
Adding a component is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..model.sites import SITES


@dataclass(frozen=True)
class Component:
    name: str
    site: str  # the site restored
    title: str  # what figures call it
    cmap: str  # its colour map in figures (ROME's colours)
    sever: str | None = None  # a site frozen at the cell's token in every later layer
    all_positions: bool = False  # the cell writes every position from the first corrupted one on

    @property
    def windowed(self) -> bool:
        return SITES[self.site].windowed

    @property
    def heads(self) -> bool:
        return SITES[self.site].heads

    @property
    def variable(self) -> str:
        """The cube variable's suffix: p_<variable>, logit_<variable>."""
        return f"restored_{self.name}" if self.heads else "restored"

    @property
    def dims(self) -> tuple[str, ...]:
        """The cube dimensions of its cells (before `answer`)."""
        if not self.heads:
            return ("token", "layer", "component")
        return ("layer", "head") if self.all_positions else ("token", "layer", "head")


COMPONENTS: dict[str, Component] = {
    c.name: c
    for c in (
        Component("hidden", "hidden", "hidden state", "Purples"),
        Component("mlp", "mlp", "MLP", "Greens"),
        Component("attn", "attn", "attention", "Reds"),
        Component("hidden-sever-mlp", "hidden", "hidden state, MLP severed", "Purples", sever="mlp"),
        Component("hidden-sever-attn", "hidden", "hidden state, attention severed", "Purples", sever="attn"),
        Component("head", "head", "attention head", "Reds"),
        Component("head_all_pos", "head", "attention head, all positions", "Reds", all_positions=True),
    )
}
# The cube's `component` order (the components of whole sites).
ORDER = tuple(COMPONENTS)


def components(spec: str | list[str]) -> tuple[str, ...]:
    """A comma list (or list) of component names, checked, in the cube's order."""
    names = [c.strip() for c in spec.split(",")] if isinstance(spec, str) else list(spec)
    bad = [c for c in names if c not in COMPONENTS]
    if bad or not names:
        raise ConfigError(f"unknown component(s) {bad}: use a comma list of {', '.join(COMPONENTS)}")
    return tuple(c for c in ORDER if c in names)


def whole(comps) -> tuple[str, ...]:
    """The components among `comps` stored along the cube's `component` dimension."""
    return tuple(c for c in comps if not COMPONENTS[c].heads)


def variables(comps) -> dict[str, tuple[str, ...]]:
    """The cube variables (suffixes) `comps` fill -> their cell dimensions."""
    return {COMPONENTS[c].variable: COMPONENTS[c].dims for c in comps}


def grid(variable: str, comps, n_tokens: int, n_layers: int, n_heads: int) -> tuple[int, ...]:
    """The shape of a variable's cells."""
    size = {"token": n_tokens, "layer": n_layers, "component": len(whole(comps)), "head": n_heads}
    return tuple(size[d] for d in variables(comps)[variable])
