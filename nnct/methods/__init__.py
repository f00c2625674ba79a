"""Methods: what a researcher runs, each a Python function and a subcommand over the same
data, models and cubes.

`run` executes any cube-filling method (`trace`: records, corrupted by noise or by
substitution; `patch`: prompt pairs) in memory or resumable on disk, here or on a server;
`api` is the notebook face of it (`nnct.trace`, `nnct.patch`); `definition` reads the
named experiment definitions of `experiments/`; `answers` asks which answer wins per
context; `bench` times the engine against one forward per cell.
"""
