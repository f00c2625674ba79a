"""nnct: causal tracing and activation patching of language models with nnsight.

The package is split by role, and the data path reads one way through it:

- `inputs`: records, prompt pairs and the prompts made of them; characters to token
  positions; `Case`, an example as the model sees it.
- `model`: loading a model, one naming of its parts over many architectures, and the
  `sites` interventions read and write (hidden, mlp, attn), one entry each.
- `interventions`: corruptions (noise, a counterfactual prompt) and metrics as data, and
  the `plan` of cells and batches.
- `exec`: the engine that runs plans as nnsight interventions, and `remote`, everything
  that talks to an NDIF server.
- `results`: the effect cube's schema, its files, and shards merged back.
- `analysis`: summaries with confidence intervals, figures, descriptions of a cube.
- `methods`: what a researcher runs (`trace`, `patch`, `answers`, `bench`), in memory or as
  resumable runs on disk; `nnct.trace` and `nnct.patch` are the notebook API.
- `cli`: the `nnct` command, a thin shell over all of them.

Heavy imports (torch, transformers, nnsight) happen inside the modules that need them, so
`import nnct` and `nnct --help` stay fast.
"""

__version__ = "0.4.0"
__all__ = ["trace", "patch", "__version__"]


def __getattr__(name: str):
    if name in ("trace", "patch"):
        from .methods import api

        return getattr(api, name)
    raise AttributeError(f"module 'nnct' has no attribute {name!r}")
