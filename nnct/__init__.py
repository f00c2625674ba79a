"""nnct: causal tracing (activation patching) of language models with nnsight.

The data path reads top to bottom, one module a step: `data` (JSONL records) ->
`prompts` (examples: prompt text, span, answers) and `spans` (characters to tokens,
segments) -> `models` (one standard naming of a model's parts) -> `noise` and `plan`
(what is corrupted, which cells, which rows) -> `engine` (nnsight interventions) ->
`cube` (the NetCDF effect cube) -> `run` (a resumable run over a data set, or one shard
of it, here or on a server: `remote` holds the server, its backends and errors) ->
`merge` (shards into one cube), `summary` (ATE, AIE, CIs), `answers` (which answer wins,
per context) and `plot` (figures). `definition` reads the experiment
definitions of `experiments/`. `cli` is a thin click shell over all of them. Heavy
imports (torch, transformers, nnsight) happen inside the modules that need them, so
`nnct --help` stays fast.
"""

__version__ = "0.3.0"
