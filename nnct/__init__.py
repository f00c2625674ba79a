"""nnct: causal tracing (activation patching) of language models with nnsight.

The data path reads top to bottom, one module a step: `data` (JSONL records) ->
`prompts` (examples: prompt text, span, answers) and `spans` (characters to tokens,
segments) -> `models` (one standard naming of a model's parts) -> `noise` and `plan`
(what is corrupted, which cells, which rows) -> `engine` (nnsight interventions) ->
`cube` (the NetCDF effect cube) -> `run` (a resumable run over a data set). `cli` is a
thin click shell over `run` and `cube`. Heavy imports (torch, transformers, nnsight)
happen inside the modules that need them, so `nnct --help` stays fast.
"""

__version__ = "0.1.0"
