"""Small effect cubes built by hand (random values, chosen labels) for the analysis tests."""

from __future__ import annotations

import numpy as np

from nnct.interventions.components import grid, variables
from nnct.results.cube import Row, assemble

N_HEADS = 3

ATTRS = {
    "model": "hand", "model_revision": "r", "nnct_version": "0.0.test", "experiment": "subject-noctx",
    "prompt_format": "{prompt}", "samples": 3, "window": 3, "noise_rule": "s3", "noise_level": 0.5, "seed": 0,
    "replace": 0, "reverse_patching": 0, "dtype": "float32", "backend": "local", "device": "cpu",
    "created": "2026-01-01T00:00:00+00:00", "components": "hidden,mlp", "max_cf": 0, "definition": "",
}

# (segments, variant, target answer is the clean top-1)
LAYOUTS = [
    (["prefix", "subject_first", "subject_last", "subsequent_first", "last"], "fact", True),
    (["subject_last", "subsequent_first", "subsequent_further", "subsequent_further", "last"], "fact", False),
    (["subject_first", "subject_middle", "subject_middle", "subject_last", "subsequent_first", "last"], "cf1", True),
    (["prefix", "prefix", "subject_last", "last"], "cf1", True),
    (["subject_first", "subject_last", "subsequent_first", "subsequent_further", "last"], "fact", True),
]


def records(n_layers: int = 4, components=("hidden", "mlp"), seed: int = 0, layouts=LAYOUTS, id_prefix="r"):
    rng = np.random.default_rng(seed)
    out = []
    for i, (seg, variant, known) in enumerate(layouts):
        n = len(seg)
        p_clean = rng.uniform(0.05, 0.9, size=2)
        p_corrupt = rng.uniform(0.01, 0.5, size=2)
        answer_ids = [100 + i, 200 + i]
        span = [k for k, s in enumerate(seg) if s.startswith("subject")]
        shapes = {v: (*grid(v, components, n, n_layers, N_HEADS), 2) for v in variables(components)}
        first, *more = shapes  # drawn in the order the cubes of the first components had
        values = {"p_clean": p_clean, "p_corrupt": p_corrupt,
                  "p_" + first: rng.uniform(0.01, 0.99, size=shapes[first]).astype(np.float32),
                  "logit_clean": rng.normal(size=2), "logit_corrupt": rng.normal(size=2),
                  "logit_" + first: rng.normal(size=shapes[first]).astype(np.float32)}
        for v in more:
            values["p_" + v] = rng.uniform(0.01, 0.99, size=shapes[v]).astype(np.float32)
            values["logit_" + v] = rng.normal(size=shapes[v]).astype(np.float32)
        out.append(Row(
            example=f"{id_prefix}{i}/{variant}", record_id=f"{id_prefix}{i}", variant=variant, prompt=" ".join(f"w{k}" for k in range(n)),
            corrupt_prompt="", target_str=f"T{i}", alt_str=f"A{i}", line=i + 1, token_ids=list(range(10, 10 + n)),
            token_str=[f"w{k}" for k in range(n)], segment=seg, span=span, answer_ids=answer_ids,
            clean_top1=answer_ids[0] if known else 999, clean_top1_str="x", values=values,
        ))
    return out


def make_cube(n_layers: int = 4, components=("hidden", "mlp"), seed: int = 0, reverse: bool = False, **attrs):
    return assemble(records(n_layers, components, seed), n_layers, components,
                    {**ATTRS, "reverse_patching": int(reverse), **attrs}, N_HEADS)
