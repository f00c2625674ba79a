"""The circuit file: edge scores and the minimal circuit as labelled xarray NetCDF.

Dimensions are `source` (the graph's nodes: emb, a<l>.h<h>, m<l>) and `destination` (its
destinations: a<l>.h<h>.q, a<l>.g<g>.k, a<l>.g<g>.v, m<l>, logits), labelled, each with its
`*_kind`, `*_layer` (-1: the embedding; n_layers: the logits) and `*_head` (-1 where none).
- `score(source, destination)` is the EAP-IG score averaged over the pairs, NaN where no edge
  exists. `score_eap` is the same for plain EAP.
- `search_edges(step)` and `search_faithfulness(step)` are the circuit search's evaluations,
  in the order they were made.
- attrs: model and revision, `ig_steps`, `pairs` (the file), `n_pairs`, `m_clean` and
  `m_corrupt` (the mean logit difference target - alt), `total_edges`, `target`,
  `minimal_edges` (0 when no evaluated size reached the target) and its `faithfulness`.

The circuit of n edges is the n edges of largest |score| (`top_edges`); ties break by
position in the flattened (source, destination) order, so one n names one circuit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .files import has_format, read_netcdf as read, write_netcdf as write  # noqa: F401  (this file kind's read and write)

FORMAT = "nnct-circuit-1"


def to_dataset(graph, score: np.ndarray, score_eap: np.ndarray, search: list[tuple[int, float]], attrs: dict):
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
            "search_edges": ("step", np.array([n for n, _ in search], dtype=np.int64)),
            "search_faithfulness": ("step", np.array([f for _, f in search], dtype=np.float64))}
    return xr.Dataset(data, coords=coords, attrs={"nnct_format": FORMAT, "n_layers": graph.n_layers, "n_heads": graph.n_heads,
                                                  "n_kv_heads": graph.n_kv, **attrs})




def is_circuit_file(path: str | Path) -> bool:
    """Whether `path` is a circuit file (read from its attributes alone; False for anything else)."""
    return has_format(path, FORMAT)


def top_edges(score: np.ndarray, n: int) -> np.ndarray:
    """[source, destination] bool: the n existing edges of largest |score| (NaN: no edge)."""
    flat = np.nan_to_num(np.abs(score), nan=-1.0).ravel()
    order = np.argsort(-flat, kind="stable")[:n]
    keep = np.zeros(flat.shape, dtype=bool)
    keep[order[flat[order] >= 0]] = True
    return keep.reshape(score.shape)
