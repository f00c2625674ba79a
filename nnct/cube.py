"""The effect cube: one labelled xarray Dataset per run, stored as NetCDF (METHOD.md).

This module owns the schema. A run keeps one `ExampleRecord` per finished example (written
as it goes, see `run`), and `assemble` builds the cube from them: the token dimension is
padded to the longest prompt (NaN in `p_restored`, "" in `token_str` and `segment`, -1 in
`token_id`), examples keep the order of the data set. Beyond METHOD.md's list the cube
holds `corrupted(example, token)` (1 where noise went in: the relation span need not be
contiguous, so `span_start`/`span_end` alone cannot say it), `token_id(example, token)`,
`answer_id(example, answer)` (the token whose probability is traced), `line(example)`
(the record's line in the data file: shards merge back into the data set's order) and `clean_top1`,
`clean_top1_str(example)` (the clean prompt's most probable next token: ROME's "known"
filter keeps the examples where it is the target's). IE and TE are derived by `effects`,
never stored.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError

ANSWERS = ("target", "alt")
ATTRS = (
    "model", "model_revision", "nnct_version", "experiment", "prompt_format", "samples", "window",
    "noise_rule", "noise_level", "seed", "replace", "reverse_patching", "dtype", "backend", "device", "created",
)


@dataclass
class ExampleRecord:
    """Everything the cube keeps of one example."""

    example: str
    record_id: str
    variant: str
    prompt: str
    target_str: str
    alt_str: str
    line: int  # the record's line in the data file
    token_ids: list[int]
    token_str: list[str]
    segment: list[str]
    span: list[int]  # corrupted positions
    p_clean: np.ndarray  # [answer]
    p_corrupt: np.ndarray  # [answer]
    p_restored: np.ndarray  # [token, layer, component, answer]
    answer_ids: list[int]  # [answer]: the traced token of each answer
    clean_top1: int  # the clean prompt's most probable next token
    clean_top1_str: str

    _STR = ("example", "record_id", "variant", "prompt", "target_str", "alt_str", "clean_top1_str")

    def save(self, path: Path) -> None:
        """Write atomically (temporary file, then rename): a kill leaves it whole or absent."""
        arrays = {k: np.array(getattr(self, k)) for k in self._STR}
        arrays.update(
            token_ids=np.array(self.token_ids, dtype=np.int64), token_str=np.array(self.token_str, dtype=str),
            segment=np.array(self.segment, dtype=str), span=np.array(self.span, dtype=np.int64),
            p_clean=self.p_clean, p_corrupt=self.p_corrupt, p_restored=self.p_restored,
            answer_ids=np.array(self.answer_ids, dtype=np.int64), clean_top1=np.array(self.clean_top1, dtype=np.int64),
            line=np.array(self.line, dtype=np.int64),
        )
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, example: str | None = None) -> "ExampleRecord":
        """Read one back; with `example`, check that it is that example's."""
        with np.load(path) as z:
            values = {k: str(z[k]) for k in cls._STR}
            values.update(
                token_ids=z["token_ids"].tolist(), token_str=z["token_str"].tolist(), segment=z["segment"].tolist(),
                span=z["span"].tolist(), p_clean=z["p_clean"], p_corrupt=z["p_corrupt"], p_restored=z["p_restored"],
                answer_ids=z["answer_ids"].tolist(), clean_top1=int(z["clean_top1"]), line=int(z["line"]),
            )
        if example is not None and values["example"] != example:
            raise ValueError(f"{path} holds {values['example']}, expected {example}")
        return cls(**values)


def assemble(records: list[ExampleRecord], n_layers: int, components: tuple[str, ...], attrs: dict):
    """The cube of a run from its examples, in the given order."""
    import xarray as xr

    n_ex, n_tok = len(records), max((len(r.token_ids) for r in records), default=0)
    p_restored = np.full((n_ex, n_tok, n_layers, len(components), len(ANSWERS)), np.nan, dtype=np.float32)
    token_str = np.full((n_ex, n_tok), "", dtype=object)
    segment = np.full((n_ex, n_tok), "", dtype=object)
    token_id = np.full((n_ex, n_tok), -1, dtype=np.int32)
    corrupted = np.zeros((n_ex, n_tok), dtype=np.int8)
    for i, r in enumerate(records):
        n = len(r.token_ids)
        p_restored[i, :n] = r.p_restored
        token_str[i, :n], segment[i, :n], token_id[i, :n] = r.token_str, r.segment, r.token_ids
        corrupted[i, r.span] = 1

    def per_example(name, dtype=object):
        return ("example", np.array([getattr(r, name) for r in records], dtype=dtype))

    ex, ex_tok = ("example",), ("example", "token")
    ds = xr.Dataset(
        data_vars={
            "p_restored": (("example", "token", "layer", "component", "answer"), p_restored),
            "p_clean": (("example", "answer"), np.array([r.p_clean for r in records], dtype=np.float32).reshape(n_ex, 2)),
            "p_corrupt": (("example", "answer"), np.array([r.p_corrupt for r in records], dtype=np.float32).reshape(n_ex, 2)),
            "span_start": (ex, np.array([min(r.span) for r in records], dtype=np.int32)),
            "span_end": (ex, np.array([max(r.span) + 1 for r in records], dtype=np.int32)),
            "corrupted": (ex_tok, corrupted),
            "token_id": (ex_tok, token_id),
            "answer_id": (("example", "answer"), np.array([r.answer_ids for r in records], dtype=np.int32).reshape(n_ex, 2)),
            "clean_top1": per_example("clean_top1", np.int32),
            "line": per_example("line", np.int32),
            **{k: per_example(k) for k in ("target_str", "alt_str", "record_id", "variant", "prompt", "clean_top1_str")},
        },
        coords={
            "example": np.array([r.example for r in records], dtype=object),
            "token": np.arange(n_tok, dtype=np.int32),
            "layer": np.arange(n_layers, dtype=np.int32),
            "component": np.array(list(components), dtype=object),
            "answer": np.array(list(ANSWERS), dtype=object),
            "token_str": (ex_tok, token_str),
            "segment": (ex_tok, segment),
            "n_tokens": (ex, np.array([len(r.token_ids) for r in records], dtype=np.int32)),
        },
        attrs=dict(attrs),
    )
    return ds


def write(ds, path: str | Path) -> None:
    """Write the cube atomically: to a temporary file beside it, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        ds.to_netcdf(tmp, engine="netcdf4")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def open_cube(path: str | Path, chunks: dict | None = None):
    """The cube in memory, or, with `chunks` (e.g. {"example": 256}), opened lazily with
    dask: a merged cube of thousands of examples is then read a chunk at a time."""
    import xarray as xr

    if chunks is not None:
        return xr.open_dataset(path, engine="netcdf4", chunks=chunks)
    with xr.open_dataset(path, engine="netcdf4") as ds:
        return ds.load()


def effects(ds):
    """(IE[example, token, layer, component, answer], TE[example, answer]) per METHOD.md.

    Forward: IE = p_restored - p_corrupt. Reverse patching: IE = p_clean - p_patched, where
    the cube's `p_restored` holds p_patched. TE = p_clean - p_corrupt in both.
    """
    te = ds.p_clean - ds.p_corrupt
    if int(ds.attrs.get("reverse_patching", 0)):
        return (ds.p_clean - ds.p_restored).transpose(*ds.p_restored.dims), te
    return ds.p_restored - ds.p_corrupt, te


def log_ratio(p):
    """METHOD.md's log-ratio metric, log(p_target / p_alt), over the `answer` dimension."""
    return np.log(p.sel(answer="target")) - np.log(p.sel(answer="alt"))


METRICS = ("prob", "log_ratio")


def metric_effects(ds, metric: str):
    """(IE[example, token, layer, component], TE[example]) of the target answer in one metric:
    `prob` is the probability difference (ROME), `log_ratio` the same difference taken in
    log(p_target / p_alt), from the same runs (METHOD.md): of the probabilities averaged over
    the noise samples, as the cube stores them."""
    if metric == "prob":
        ie, te = effects(ds)
        return ie.sel(answer="target", drop=True), te.sel(answer="target", drop=True)
    if metric != "log_ratio":
        raise ConfigError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    with np.errstate(divide="ignore"):
        clean, corrupt, restored = log_ratio(ds.p_clean), log_ratio(ds.p_corrupt), log_ratio(ds.p_restored)
    ie = clean - restored if int(ds.attrs.get("reverse_patching", 0)) else restored - corrupt
    te = clean - corrupt
    # A probability that underflowed to 0 has no log-ratio: NaN, so that averages leave it out.
    return ie.where(np.isfinite(ie)).transpose("example", "token", "layer", "component"), te.where(np.isfinite(te))
