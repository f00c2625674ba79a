"""The circuit file: edge scores and the minimal circuit as labelled xarray NetCDF.

Dimensions are `source` (the graph's nodes: emb, a<l>.h<h>, m<l>) and `destination` (its
destinations: a<l>.h<h>.q, a<l>.g<g>.k, a<l>.g<g>.v, m<l>, logits), labelled, each with its
`*_kind`, `*_layer` (-1: the embedding; n_layers: the logits) and `*_head` (-1 where none).
- `score(source, destination)` is the EAP-IG score averaged over the pairs, NaN where no edge
  exists. `score_eap` is the same for plain EAP.
- `search_edges(step)`, `search_edges_pruned(step)` and `search_faithfulness(step)` are the
  circuit search's evaluations, in the order they were made: the top-n count, the circuit's
  size after pruning, its F.
- `mib_fractions(mib_point)`, `mib_edges_selected`, `mib_edges` and `mib_faithfulness`: the
  circuits of MIB's size grid (`MIB_FRACTIONS` of all edges), their top-n count, their size
  after pruning, their F.
- attrs: model and revision, `ig_steps`, `pairs` (the file), `n_pairs`, `m_clean` and
  `m_corrupt` (the mean logit difference target - alt), `total_edges`, `target`,
  `minimal_edges_selected` (the minimal circuit's top-n count; 0 when no evaluated size
  reached the target), `minimal_edges` (its size after pruning), its `faithfulness`, and
  MIB's `cpr` and `cmd` (`mib_scores`). Files written before pruning have no
  `minimal_edges_selected`: their `minimal_edges` is the top-n count.

The circuit of n edges is made in two steps. First the n edges of largest |score|
(`top_edges`); ties break by position in the flattened (source, destination) order, so one n
names one circuit. Then the edges that lie on no path from the embedding to the logits
within them are dropped (`model.graph.Graph.prune`, EAP-IG's prune). Sizes are counted after
pruning, beside the n selected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .files import has_format, read_netcdf as read, write_netcdf as write  # noqa: F401  (this file kind's read and write)

FORMAT = "nnct-circuit-1"


def to_dataset(graph, score: np.ndarray, score_eap: np.ndarray, search: list[tuple[int, int, float]], mib: list[tuple[int, int, float]],
               attrs: dict):
    """The circuit file's dataset: `search` and `mib` are (n selected, edges after pruning, F)
    per evaluation, `mib` one per `MIB_FRACTIONS`."""
    import xarray as xr

    exists = graph.edges
    nodes, dests = graph.nodes, graph.dests
    coords = {"source": [n[0] for n in nodes], "destination": [d[0] for d in dests],
              "source_kind": ("source", [n[1] for n in nodes]), "source_layer": ("source", [n[2] for n in nodes]),
              "source_head": ("source", [n[3] for n in nodes]),
              "destination_kind": ("destination", [d[1] for d in dests]),
              "destination_layer": ("destination", [d[2] for d in dests]),
              "destination_head": ("destination", [d[3] for d in dests])}
    data = {"score": (("source", "destination"), np.where(exists, score, np.nan)),
            "score_eap": (("source", "destination"), np.where(exists, score_eap, np.nan)),
            "search_edges": ("step", np.array([n for n, _, _ in search], dtype=np.int64)),
            "search_edges_pruned": ("step", np.array([k for _, k, _ in search], dtype=np.int64)),
            "search_faithfulness": ("step", np.array([f for _, _, f in search], dtype=np.float64)),
            "mib_fractions": ("mib_point", np.array(MIB_FRACTIONS, dtype=np.float64)),
            "mib_edges_selected": ("mib_point", np.array([n for n, _, _ in mib], dtype=np.int64)),
            "mib_edges": ("mib_point", np.array([k for _, k, _ in mib], dtype=np.int64)),
            "mib_faithfulness": ("mib_point", np.array([f for _, _, f in mib], dtype=np.float64))}
    return xr.Dataset(data, coords=coords, attrs={"nnct_format": FORMAT, "n_layers": graph.n_layers, "n_heads": graph.n_heads,
                                                  "n_kv_heads": graph.n_kv, **attrs})


def is_circuit_file(path: str | Path) -> bool:
    """Whether `path` is a circuit file (read from its attributes alone; False for anything else)."""
    return has_format(path, FORMAT)


def graph_of(ds):
    """The `model.graph.Graph` a circuit file was scored on (imported here: it brings torch)."""
    from ..model.graph import Graph

    return Graph(int(ds.attrs["n_layers"]), int(ds.attrs["n_heads"]), int(ds.attrs["n_kv_heads"]))


def circuit(graph, score: np.ndarray, n: int) -> np.ndarray:
    """[source, destination] bool: the circuit of n edges, `top_edges` then `graph.prune`."""
    return graph.prune(top_edges(score, n))


def minimal_selected(attrs) -> int:
    """The minimal circuit's top-n count (0: none); a file written before pruning has only
    `minimal_edges`, which was that count."""
    return int(attrs.get("minimal_edges_selected", attrs.get("minimal_edges", 0)) or 0)


# MIB's circuit sizes (Mueller et al. 2025, `evaluate_area_under_curve`): fractions of all edges.
MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def mib_counts(total: int, fractions=MIB_FRACTIONS) -> list[int]:
    """The top-n counts of MIB's grid: int(fraction * total), as MIB rounds (down)."""
    return [int(f * total) for f in fractions]


def mib_scores(fractions, faithfulness) -> tuple[float, float]:
    """MIB's CPR and CMD of a faithfulness curve over edge fractions: the trapezoid areas,
    on a linear axis from the first fraction to the last (no point at 0), under F (CPR,
    higher is better) and between F and 1 (CMD: |1 - F|, lower is better)."""
    x, f = np.asarray(fractions, dtype=np.float64), np.asarray(faithfulness, dtype=np.float64)
    if x.shape != f.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError("mib_scores takes one F per fraction, at least two")
    width = np.diff(x)
    cpr = float(np.sum(width * (f[:-1] + f[1:]) / 2))
    gap = np.abs(1.0 - f)
    cmd = float(np.sum(width * (gap[:-1] + gap[1:]) / 2))
    return cpr, cmd


def top_edges(score: np.ndarray, n: int) -> np.ndarray:
    """[source, destination] bool: the n existing edges of largest |score| (NaN: no edge)."""
    flat = np.nan_to_num(np.abs(score), nan=-1.0).ravel()
    order = np.argsort(-flat, kind="stable")[:n]
    keep = np.zeros(flat.shape, dtype=bool)
    keep[order[flat[order] >= 0]] = True
    return keep.reshape(score.shape)
