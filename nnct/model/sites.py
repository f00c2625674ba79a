"""Sites: the places in a model an intervention reads and writes, each named once.

A site is one entry of `SITES`. It says which module holds the value (a `Layout` field
naming a module inside a decoder layer, or the layer itself), which value of it (its
output), where it comes in a layer's forward pass (nnsight requires modules to be read in
the order the model runs them within one invoke), whether restoring it at layer l writes
that layer only or every layer of a window around l, and how figures draw it. `read` and
`write` are the only code that touches a site's value (the plain-PyTorch loop of the bench
finds the same module through `module`); the plan, the engine, the bench's
plain loop and the figures ask the entry and switch on nothing. Adding a site (a head, the
MLP's input, the down projection) is one more entry, as TransformerLens adds a patch setter.

Writing the residual stream (`hidden`) is special in one way the plan relies on: the layer's
output *is* the written value, so a restored run can start at the next layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .parts import Layout, Parts, first


@dataclass(frozen=True)
class Site:
    name: str
    part: str | None  # the Layout field of the module inside a decoder layer; None: the layer itself
    order: int  # its place in a layer's forward pass (nnsight reads in this order)
    windowed: bool  # restoring it at layer l writes every layer of the window around l
    title: str  # what figures call it
    cmap: str  # its colour map in figures (ROME's colours)

    @property
    def residual(self) -> bool:
        """The residual stream: a layer's output is the written value itself."""
        return self.part is None

    def module(self, layer: Any, layout: Layout) -> Any:
        """The module of this site in `layer` (an nnsight envoy or a torch module of a decoder layer)."""
        return layer if self.part is None else getattr(layer, getattr(layout, self.part))

    def read(self, parts: Parts, layer: int) -> Any:
        """The site's value at `layer` inside a trace: [row, token, d_model]. Read each site
        once per forward, in `order`: the value read is also what `write` writes into."""
        return first(self.module(parts.layers[layer], parts.layout).output)

    def write(self, value: Any, rows, tokens, values) -> None:
        """Set rows `rows` at positions `tokens` of a value `read` gave to `values`."""
        value[rows, tokens] = values


SITES: dict[str, Site] = {
    s.name: s
    for s in (
        Site("hidden", None, order=2, windowed=False, title="hidden state", cmap="Purples"),
        Site("mlp", "mlp", order=1, windowed=True, title="MLP", cmap="Greens"),
        Site("attn", "attn", order=0, windowed=True, title="attention", cmap="Reds"),
    )
}
# The cube's `component` order.
COMPONENTS = tuple(SITES)


def components(spec: str | list[str]) -> tuple[str, ...]:
    """A comma list (or list) of site names, checked, in the cube's order."""
    names = [c.strip() for c in spec.split(",")] if isinstance(spec, str) else list(spec)
    bad = [c for c in names if c not in SITES]
    if bad or not names:
        raise ConfigError(f"unknown component(s) {bad}: use a comma list of {', '.join(SITES)}")
    return tuple(c for c in COMPONENTS if c in names)


def in_forward_order(names) -> list[Site]:
    return sorted((SITES[n] for n in names), key=lambda s: s.order)
