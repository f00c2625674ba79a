"""The `nnct` command: a thin click shell over the library.

It parses options (each also under the seed's spelling, e.g. `--model_name`,
`--replace 0/1`), calls the library, formats what comes back, and maps the library's
typed errors to one-line messages and exit codes (`app`). Commands live by what they do:
`runs` (trace, patch, answers: they run a model into a cube or a table), `remote` (NDIF
servers), `results` (info, merge, summarize, plot: they read cubes), `bench`,
`circuits` (memorization score and pairs, circuit find and verify), `steer` (steering). There is
deliberately no `-v` / `--verbose`: nnsight switches its debug mode on when it sees one in
`sys.argv`.
"""

from . import bench, circuits, remote, results, runs, steer  # noqa: F401  (each registers its commands)
from .app import main

__all__ = ["main"]
