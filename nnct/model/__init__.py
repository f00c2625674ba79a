"""The model: how one is loaded, its parts under one naming, and the sites interventions touch.

`load` builds an `Adapter` (the embedded default, a local directory, a hub id, or without
weights for a server); `wrap` takes a model a notebook has already. `parts` maps every
supported family's module paths once and checks them at load; `sites` names the values an
intervention reads and writes (hidden, mlp, attn, head), one entry each.
"""

from .loading import DTYPES, REMOTE, load, wrap
from .parts import Adapter, Parts, first
from .sites import SITES, Site

__all__ = ["DTYPES", "REMOTE", "load", "wrap", "Adapter", "Parts", "first", "SITES", "Site"]
