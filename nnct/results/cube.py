"""The effect cube: one labelled xarray Dataset per run, stored as NetCDF (docs/method.md).

This module owns the schema. A run keeps one `Row` per finished example (written as it
goes, see `methods.run`), and `assemble` builds the cube from them: the token dimension is
padded to the longest prompt (NaN in `p_restored`, "" in `token_str` and `segment`, -1 in
`token_id`), examples keep the order of the data set (docs/method.md lists every variable).
Besides ROME's probabilities the cube holds the answers' logits (`logit_clean`,
`logit_corrupt`, `logit_restored`: the first tokens' logits, means over the corrupted rows),
so that every metric of `interventions.metrics` is derived without another run;
components of heads fill variables of their own (`p_restored_head(example, token, layer,
head, answer)`, `p_restored_head_all_pos(example, layer, head, answer)`, with their logits;
`interventions.components` says which variable each component fills);
`corrupted(example, token)` (1 where the input was corrupted: the relation span need not be
contiguous, and a prompt pair marks the positions that differ); `corrupt_prompt(example)`
(a pair's corrupted prompt, "" under noise); `line(example)` (the record's line in the data
file: shards merge back into the data set's order) and `clean_top1(example)` (the clean
prompt's most probable next token: ROME's "known" filter keeps the examples where it is the
target's). IE and TE are derived (`effects`, `metric_effects`), never
stored. A cube written before the logits existed still answers every metric made of
probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..interventions import metrics
from ..interventions.components import COMPONENTS, grid, variables, whole
from .files import atomic

ANSWERS = ("target", "alt")
ATTRS = (
    "model", "model_revision", "nnct_version", "experiment", "prompt_format", "samples", "window",
    "noise_rule", "noise_level", "seed", "replace", "reverse_patching", "dtype", "backend", "device", "created",
)


# The measured variables of an example besides its restored cells (the engine's `Measures`).
MEASURED = ("p_clean", "p_corrupt", "logit_clean", "logit_corrupt")
# Every measured variable is p_<x>, logit_<x> or, estimated by attribution patching,
# ie_atp<x>: the restored cells are `cell_names` of each variable v the components fill.
VALUE_PREFIXES = ("p_", "logit_", "ie_atp")
ESTIMATES = ("exact", "atp", "atp*")  # how a cube's cells were found: its attr `method`
TITLES = {"exact": "exact patching", "atp": "AtP", "atp*": "AtP*"}  # as tables and figures name them


def cell_names(variable: str, estimate: str = "exact") -> tuple[str, str]:
    """The cube's names of a restored variable's cells (`components`), of p and of the logits:
    p_<v> and logit_<v> measured exactly, `exec.attribution.names` (ie_atp...) as attribution
    patching's estimates of the indirect effect."""
    from ..exec.attribution import names

    return ("p_" + variable, "logit_" + variable) if estimate == "exact" else names(variable)

_TEXT = ("example", "record_id", "variant", "prompt", "corrupt_prompt", "target_str", "alt_str", "clean_top1_str")
_INTS = ("token_ids", "span", "answer_ids")


@dataclass
class Row:
    """Everything the cube keeps of one example: where it came from, its tokens, and what
    the engine measured (`values`: MEASURED's arrays, [answer], and the restored cells of
    each cube variable, e.g. p_restored [token, layer, component, answer])."""

    example: str
    record_id: str
    variant: str
    prompt: str
    corrupt_prompt: str  # "" when noise corrupted the prompt
    target_str: str
    alt_str: str
    line: int  # the record's line in the data file
    token_ids: list[int]
    token_str: list[str]
    segment: list[str]
    span: list[int]  # corrupted positions
    answer_ids: list[int]  # [answer]: the first token of each answer
    clean_top1: int  # the clean prompt's most probable next token
    clean_top1_str: str
    values: dict[str, np.ndarray]

    def save(self, path: Path) -> None:
        """Write atomically (temporary file, then rename): a kill leaves it whole or absent."""
        arrays = {k: np.array(getattr(self, k)) for k in _TEXT}
        arrays.update({k: np.array(getattr(self, k), dtype=np.int64) for k in (*_INTS, "clean_top1", "line")})
        arrays.update(token_str=np.array(self.token_str, dtype=str), segment=np.array(self.segment, dtype=str))
        arrays.update({k: np.asarray(v) for k, v in self.values.items()})
        with atomic(path) as tmp:
            np.savez(tmp, **arrays)

    @classmethod
    def load(cls, path: Path, example: str | None = None) -> "Row":
        """Read one back; with `example`, check that it is that example's."""
        with np.load(path) as z:
            fields = {k: str(z[k]) for k in _TEXT}
            fields.update({k: z[k].tolist() for k in (*_INTS, "token_str", "segment")})
            values = {k: z[k] for k in z.files if k.startswith(VALUE_PREFIXES)}
            fields.update(clean_top1=int(z["clean_top1"]), line=int(z["line"]), values=values)
        if example is not None and fields["example"] != example:
            raise ValueError(f"{path} holds {fields['example']}, expected {example}")
        return cls(**fields)


def _cells(rows: list[Row], n_tok: int, n_layers: int, components, n_heads: int, estimate: str, verified: bool) -> dict:
    """The restored cells' variables: name -> (dims, values), NaN where an example has none."""
    cells = {}
    for variable, dims in variables(components).items():
        shape = grid(variable, components, n_tok, n_layers, n_heads)
        kept = cell_names(variable, estimate) + (cell_names(variable) if verified and estimate != "exact" else ())
        for k in kept:
            cells[k] = (("example", *dims, "answer"), np.full((len(rows), *shape, len(ANSWERS)), np.nan, dtype=np.float32))
    for i, r in enumerate(rows):
        n = len(r.token_ids)
        for k, (dims, held) in cells.items():
            if dims[1] == "token":
                held[i, :n] = r.values[k]
            else:
                held[i] = r.values[k]
    return cells


def assemble(rows: list[Row], n_layers: int, components: tuple[str, ...], attrs: dict, n_heads: int = 0,
             estimate: str = "exact", verified: bool = False):
    """The cube of a run from its examples, in the given order (`n_heads`: the model's query
    heads, for components of heads; `estimate`: how the restored cells were found;
    `verified`: an estimate's cube that also holds some cells patched exactly, NaN elsewhere)."""
    import xarray as xr

    n_ex, n_tok = len(rows), max((len(r.token_ids) for r in rows), default=0)
    cells = _cells(rows, n_tok, n_layers, components, n_heads, estimate, verified)
    token_str = np.full((n_ex, n_tok), "", dtype=object)
    segment = np.full((n_ex, n_tok), "", dtype=object)
    token_id = np.full((n_ex, n_tok), -1, dtype=np.int32)
    corrupted = np.zeros((n_ex, n_tok), dtype=np.int8)
    for i, r in enumerate(rows):
        n = len(r.token_ids)
        token_str[i, :n], segment[i, :n], token_id[i, :n] = r.token_str, r.segment, r.token_ids
        corrupted[i, r.span] = 1

    def per_example(name, dtype=object):
        return ("example", np.array([getattr(r, name) for r in rows], dtype=dtype))

    def per_answer(values):
        return (("example", "answer"), np.array(values, dtype=np.float32).reshape(n_ex, len(ANSWERS)))

    ex, ex_tok = ("example",), ("example", "token")
    ds = xr.Dataset(
        data_vars={
            **cells,
            "p_clean": per_answer([r.values["p_clean"] for r in rows]),
            "p_corrupt": per_answer([r.values["p_corrupt"] for r in rows]),
            "logit_clean": per_answer([r.values["logit_clean"] for r in rows]),
            "logit_corrupt": per_answer([r.values["logit_corrupt"] for r in rows]),
            "span_start": (ex, np.array([min(r.span) for r in rows], dtype=np.int32)),
            "span_end": (ex, np.array([max(r.span) + 1 for r in rows], dtype=np.int32)),
            "corrupted": (ex_tok, corrupted),
            "token_id": (ex_tok, token_id),
            "answer_id": (("example", "answer"), np.array([r.answer_ids for r in rows], dtype=np.int32).reshape(n_ex, 2)),
            "clean_top1": per_example("clean_top1", np.int32),
            "line": per_example("line", np.int32),
            **{k: per_example(k) for k in ("target_str", "alt_str", "record_id", "variant", "prompt", "corrupt_prompt",
                                           "clean_top1_str")},
        },
        coords={
            "example": np.array([r.example for r in rows], dtype=object),
            "token": np.arange(n_tok, dtype=np.int32),
            "layer": np.arange(n_layers, dtype=np.int32),
            **({"component": np.array(list(whole(components)), dtype=object)} if whole(components) else {}),
            **({"head": np.arange(n_heads, dtype=np.int32)} if any(COMPONENTS[c].heads for c in components) else {}),
            "answer": np.array(list(ANSWERS), dtype=object),
            "token_str": (ex_tok, token_str),
            "segment": (ex_tok, segment),
            "n_tokens": (ex, np.array([len(r.token_ids) for r in rows], dtype=np.int32)),
        },
        attrs=dict(attrs),
    )
    return ds


def write(ds, path: str | Path) -> None:
    """Write the cube atomically, readable as the user's other files (`files.atomic`)."""
    with atomic(path) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4")


def open_cube(path: str | Path, chunks: dict | None = None):
    """The cube in memory, or, with `chunks` (e.g. {"example": 256}), opened lazily with
    dask: a merged cube of thousands of examples is then read a chunk at a time."""
    import xarray as xr

    if chunks is not None:
        return xr.open_dataset(path, engine="netcdf4", chunks=chunks)
    with xr.open_dataset(path, engine="netcdf4") as ds:
        return ds.load()


def effects(ds, of: str = "restored"):
    """(IE[example, <cells of p_<of>>, answer], TE[example, answer]) of the probabilities,
    per docs/method.md (`of`: a restored variable, e.g. "restored_head"). Forward: IE =
    p_restored - p_corrupt. Reverse patching: IE = p_clean - p_patched, where the cube's
    `p_restored` holds p_patched. TE = p_clean - p_corrupt in both. A cube of attribution
    patching (AtP or AtP*) stores its estimates of the IE (`ie_atp`)."""
    te = ds.p_clean - ds.p_corrupt
    estimate = ds.attrs.get("method", "exact")
    if estimate != "exact":
        return ds[cell_names(of, estimate)[0]], te
    restored = ds["p_" + of]
    if int(ds.attrs.get("reverse_patching", 0)):
        return (ds.p_clean - restored).transpose(*restored.dims), te
    return restored - ds.p_corrupt, te


def holds(ds, of: str) -> bool:
    """Whether the cube has the cells of restored variable `of` (measured or estimated)."""
    return cell_names(of, ds.attrs.get("method", "exact"))[0] in ds


def metrics_of(ds) -> tuple[str, ...]:
    """The metrics this cube can give (the logit ones need a cube that stores logits)."""
    return tuple(n for n, m in metrics.METRICS.items() if not m.uses_logits or "logit_clean" in ds)


def metric_effects(ds, name: str, of: str = "restored", exact: bool = False):
    """(IE[example, <cells of p_<of>>], TE[example]) of the target answer in one metric of
    `interventions.metrics`, from the values the cube stores (means over the corrupted
    rows); `of` names the restored variable (default `p_restored`'s cells [token, layer,
    component]; "restored_head" for heads). A value that cannot be taken (a probability of 0
    has no log-ratio; a recovery whose total effect is too small) is NaN, so that averages
    leave it out. `exact`: in an estimate's cube, the cells it also patched exactly
    (`--verify-top`; NaN where it did not) rather than the estimates."""
    m = metrics.base(name)
    if m.uses_logits and "logit_clean" not in ds:
        raise ConfigError(f"metric {name} needs the answers' logits, which this cube lacks: trace it again with nnct >= 0.4")
    reverse = bool(int(ds.attrs.get("reverse_patching", 0)))
    estimate = "exact" if exact else ds.attrs.get("method", "exact")
    p_name, logit_name = cell_names(of, estimate)
    if p_name not in ds:
        raise ConfigError(f"this cube has no {p_name}: trace the component(s) that fill it")

    def restored(kind, name):
        """The restored (patched) values; attribution's estimates of the IE make them from the
        base run's, in float64 so that the linear metrics give the estimates back unrounded."""
        if estimate == "exact":
            return ds[name]
        ie = ds[name].astype(np.float64)
        return ds[kind + "_clean"].astype(np.float64) - ie if reverse else ds[kind + "_corrupt"].astype(np.float64) + ie

    def value(kind):
        if kind == "restored":
            p, logit = restored("p", p_name), restored("logit", logit_name) if m.uses_logits else None
        else:
            p, logit = ds[f"p_{kind}"], ds[f"logit_{kind}"] if m.uses_logits else None
        pt, pa = (p.sel(answer=a, drop=True) for a in ANSWERS)
        lt, la = ((logit.sel(answer=a, drop=True) for a in ANSWERS) if m.uses_logits else (None, None))
        return m.value(pt, pa, lt, la)

    with np.errstate(divide="ignore", invalid="ignore"):
        ie, te = metrics.effects(name, value("clean"), value("corrupt"), value("restored"), reverse)
    cells = [d for d in ds[p_name].dims if d != "answer"]
    return ie.where(np.isfinite(ie)).transpose(*cells), te.where(np.isfinite(te))
