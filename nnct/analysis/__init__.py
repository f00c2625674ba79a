"""Analysis of cubes: `summary` (ATE, AIE per segment with confidence intervals, best
layers, in every metric), `plot` (ROME-style figures), `report` (a cube described in text).
"""
