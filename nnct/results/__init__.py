"""Results: `cube` owns the effect cube's schema (the rows a run keeps, the NetCDF layout,
the effects derived from it), `merge` joins the shards of one run back into one cube, and
`files` writes every output whole, with the user's umask, one writer at a time.
"""
