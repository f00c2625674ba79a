"""Results: `cube` owns the effect cube's schema (the rows a run keeps, the NetCDF layout,
the effects derived from it), and `merge` joins the shards of one run back into one cube.
"""
