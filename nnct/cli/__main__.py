"""`python -m nnct.cli`: the `nnct` command."""

from . import main

main()
