"""Small nnct files to view, built by hand (random values, chosen labels), for the view tests
with and without a browser; and the pages' embedded data read back independently."""

from __future__ import annotations

import base64
import json
import re

import numpy as np

from cubes import ATTRS, records
from nnct.model.graph import Graph
from nnct.results import circuit as circuit_file
from nnct.results import edits as edits_file
from nnct.results.cube import assemble, write

COMPONENTS3 = ("hidden", "mlp", "attn")


def layouts(n: int, tokens: int = 24) -> list:
    """n examples' segments: a prefix, a subject of 1-3 tokens, the rest, the last token."""
    out = []
    for i in range(n):
        subject = ["subject_first", "subject_middle", "subject_last"][-(1 + i % 3):]
        rest = tokens - len(subject) - 3
        out.append((["prefix", "prefix", *subject, *["subsequent_further"] * rest, "last"], "fact" if i % 2 == 0 else "cf1", True))
    return out


def big_cube(n: int = 60, n_layers: int = 30, tokens: int = 24):
    """A cube the size of the committed studies': n examples, 3 components."""
    rows = records(n_layers, COMPONENTS3, seed=1, layouts=layouts(n, tokens))
    return assemble(rows, n_layers, COMPONENTS3, {**ATTRS, "components": ",".join(COMPONENTS3)})


def small_cube(seed: int = 0, n: int = 8):
    rows = records(6, COMPONENTS3, seed=seed, layouts=layouts(n, 9))
    return assemble(rows, 6, COMPONENTS3, {**ATTRS, "components": ",".join(COMPONENTS3)})


def write_cube(ds, path):
    write(ds, path)
    return path


def circuit(path, n_layers: int = 3, n_heads: int = 4, n_kv: int = 2, seed: int = 0):
    """A circuit file of a small graph, with random scores on its edges."""
    graph = Graph(n_layers, n_heads, n_kv)
    rng = np.random.default_rng(seed)
    score = np.where(graph.edges, rng.normal(size=graph.edges.shape), np.nan)
    total = int(graph.edges.sum())
    search = [(n, int(circuit_file.circuit(graph, score, n).sum()), n / total) for n in (5, 20, 60)]
    mib = [(k, int(circuit_file.circuit(graph, score, max(k, 1)).sum()), f) for k, f in
           zip(circuit_file.mib_counts(total), np.linspace(0, 1, len(circuit_file.MIB_FRACTIONS)))]
    ds = circuit_file.to_dataset(graph, score, score * 0.9, search, mib,
                                 {"model": "hand", "total_edges": total, "target": 0.8, "minimal_edges_selected": 20,
                                  "minimal_edges": search[1][1], "faithfulness": 0.5, "n_pairs": 4, "cpr": 0.5, "cmd": 0.5})
    circuit_file.write(ds, path)
    return path, graph, score


def edits(path, n: int = 6):
    rng = np.random.default_rng(0)
    made = [edits_file.Edit(record_id=f"r{i}", subject=f"S{i}", prompt=f"S{i} is in", target_true=f"T{i}", target_new=f"N{i}",
                            layer=[1, 3][i % 2], left=rng.normal(size=4), right=rng.normal(size=8),
                            metrics={"efficacy": float(rng.uniform()), "paraphrase": float(rng.uniform())}) for i in range(n)]
    edits_file.write(made, path, {"model": "hand"})
    return path, made


def page_data(text: str) -> dict:
    """The data block of a page, read with a regular expression (not view.py's code)."""
    found = re.search(r'<script type="application/json" id="nnct-data">(.*?)</script>', text, re.S)
    return json.loads(found.group(1).replace("<\\/", "</"))


def unpacked(b64: str) -> np.ndarray:
    """A base64 float16 array as float64 (NaN kept)."""
    return np.frombuffer(base64.b64decode(b64), dtype="<f2").astype(np.float64)


def prob_effects(ds, answer: int = 0) -> np.ndarray:
    """IE of p(answer) [example, token, layer, component], by hand: p_restored - p_corrupt."""
    return ds.p_restored.values[..., answer].astype(np.float64) - ds.p_corrupt.values[:, None, None, None, answer]


def segment_aie(ds, segment: str, answer: int = 0) -> np.ndarray:
    """AIE of p(answer) at `segment` [layer, component], by hand: each example's mean over the
    segment's tokens, each record's mean over its examples, the mean over records."""
    ie = prob_effects(ds, answer)
    seg = ds.segment.values.astype(str)
    per_example, ids = [], []
    for i in range(ds.sizes["example"]):
        mask = seg[i] == segment
        if mask.any():
            per_example.append(ie[i, mask].mean(axis=0))
            ids.append(str(ds.record_id.values[i]))
    per_example = np.array(per_example)
    ids = np.array(ids)
    return np.mean([per_example[ids == r].mean(axis=0) for r in dict.fromkeys(ids)], axis=0)
