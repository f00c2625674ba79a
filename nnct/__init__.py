"""nnct: causal tracing and activation patching of language models with nnsight.

The package is split by role, and the data path reads one way through it:

- `inputs`: records, prompt pairs and the prompts made of them; characters to token
  positions; `Case`, an example as the model sees it.
- `model`: loading a model, one naming of its parts over many architectures, and the
  `sites` interventions read and write (hidden, mlp, attn, head, down), one entry each, and
  the `graph` of edge attribution (nodes, destinations, edges).
- `interventions`: corruptions (noise, a counterfactual prompt), readouts (what a run
  reports), operations (what a cell writes), metrics and components (what a cell restores)
  as data, and the `plan` of cells and batches.
- `exec`: the engine that runs plans as nnsight interventions, `attribution` (AtP's
  estimates from one backward pass), `edges` (EAP/EAP-IG edge scores and exact edge
  patching), `rome` (an edit's key, value and key statistics, and an edit applied),
  `decode` (greedy decoding), and `remote`, everything that talks to an NDIF server.
- `results`: the effect cube's schema, its files, shards merged back, the edits file and
  the circuit file.
- `analysis`: summaries with confidence intervals, figures, descriptions of a cube, AtP's
  agreement with exact patching.
- `methods`: what a researcher runs (`trace`, `patch`, `attribute`, `answers`, `bench`,
  `edit`, `memorization`, `circuit`, `steer`), in memory or as resumable runs on disk; `nnct.trace`,
  `nnct.patch`, `nnct.attribute`, `nnct.ablate`, `nnct.edit`, `nnct.memorization_scores`,
  `nnct.circuit` and `nnct.steer` are the notebook API.
- `cli`: the `nnct` command, a thin shell over all of them.

Heavy imports (torch, transformers, nnsight) happen inside the modules that need them, so
`import nnct` and `nnct --help` stay fast.
"""

__version__ = "0.9.0"
__all__ = ["trace", "patch", "attribute", "ablate", "edit", "memorization_scores", "circuit", "steer", "__version__"]


def __getattr__(name: str):
    if name in ("trace", "patch", "attribute", "ablate", "edit", "memorization_scores", "circuit", "steer"):
        from .methods import api

        return getattr(api, name)
    raise AttributeError(f"module 'nnct' has no attribute {name!r}")
