"""Sites: the places in a model an intervention reads and writes, each named once.

A site is one entry of `SITES`. It says which module holds the value (a `Layout` field
naming a module inside a decoder layer, or the layer itself), which value of it (its
output, or its input), where it comes in a layer's forward pass (nnsight requires modules to be read in
the order the model runs them within one invoke), whether restoring it at layer l writes
that layer only or every layer of a window around l. What a cell of the cube restores (a
site, perhaps one head of it, perhaps with another site frozen) is an
`interventions.components` entry, which also says how figures draw it. `read` and
`write` are the only code that touches a site's value in a trace, and `hook` the only one
outside nnsight (the plain-PyTorch loop of the bench); the plan, the engine, the bench's
plain loop and the figures ask the entry and switch on nothing. Adding a site (the MLP's
input) is one more entry, as TransformerLens adds a patch setter (`down`, the down
projection's input, was one). A site
of heads (`head`: the attention output projection's input, [.., head * d_head]) is written
one head's slice at a time; with grouped-query attention these are the query heads.

Writing the residual stream (`hidden`) is special in one way the plan relies on: the layer's
output *is* the written value, so a restored run can start at the next layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .parts import Layout, Parts, first, resolve


@dataclass(frozen=True)
class Site:
    name: str
    part: str | None  # the Layout field of the module inside a decoder layer; None: the layer itself
    order: int  # its place in a layer's forward pass (nnsight reads in this order)
    windowed: bool  # restoring it at layer l writes every layer of the window around l
    value: str = "output"  # which value of the module: its output, or its (first) input
    heads: bool = False  # the value's last dimension is [head, d_head]: a write sets one head's slice

    @property
    def residual(self) -> bool:
        """The residual stream: a layer's output is the written value itself."""
        return self.part is None

    def module(self, layer: Any, layout: Layout) -> Any:
        """The module of this site in `layer` (an nnsight envoy or a torch module of a decoder layer)."""
        return layer if self.part is None else resolve(layer, getattr(layout, self.part))

    def read(self, parts: Parts, layer: int) -> Any:
        """The site's value at `layer` inside a trace: [row, token, d_model] ([row, token,
        head * d_head] for a site of heads). Read each site once per forward, in `order`:
        the value read is also what `write` writes into."""
        module = self.module(parts.layers[layer], parts.layout)
        return module.input if self.value == "input" else first(module.output)

    def hook(self, module, fn):
        """A plain PyTorch hook on the site's module (`module` gives it) calling fn(value) on
        the value `read` gives, to change it in place; returns the handle."""
        if self.value == "input":
            return module.register_forward_pre_hook(lambda mod, args: fn(args[0]))
        return module.register_forward_hook(lambda mod, inp, out: fn(first(out)))

    def write(self, value: Any, rows, tokens, values, heads=None, d_head: int = 0, add: bool = False) -> None:
        """Set rows `rows` at positions `tokens` of a value `read` gave to `values` ([n, d]),
        or with `add` add `values` to it; for a site of heads, only head `heads[i]`'s slice of
        element i (`values`: [n, d_head])."""
        at = (rows, tokens) if heads is None else (rows[:, None], tokens[:, None], _columns(heads, d_head))
        value[at] = value[at] + values if add else values

    @staticmethod
    def slice(values, heads, d_head: int):
        """[n, d_head]: head `heads[i]`'s slice of element i of `values` [n, head * d_head]."""
        return values.gather(1, _columns(heads, d_head))


def _columns(heads, d_head: int):
    """[n, d_head]: the columns of head `heads[i]` in a value of [.., head * d_head]."""
    import torch  # here: commands that only read cubes start without torch

    return heads[:, None] * d_head + torch.arange(d_head, device=heads.device)


SITES: dict[str, Site] = {
    s.name: s
    for s in (
        Site("hidden", None, order=4, windowed=False),
        Site("mlp", "mlp", order=3, windowed=True),
        # The down projection's input: the MLP's hidden activation [.., d_ff] (ROME's key).
        Site("down", "mlp_down", order=2, windowed=True, value="input"),
        Site("attn", "attn", order=1, windowed=True),
        # The output projection's input: the heads' outputs before the projection mixes them.
        Site("head", "attn_out", order=0, windowed=True, value="input", heads=True),
    )
}


# The sites whose values a decoder layer adds to the residual stream (sequential or parallel
# blocks alike): all a layer contributes beyond its input.
CONTRIBUTIONS = ("attn", "mlp")


def in_forward_order(names) -> list[Site]:
    return sorted((SITES[n] for n in names), key=lambda s: s.order)
