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

Extra readouts (`interventions.readouts`, the attr `readouts` lists them) add
`<R>_clean(example[, answer])`, `<R>_corrupt` and `<R>_<restored variable>` (or, estimated,
`ie_atp_<R><suffix>`), with an answer axis where the readout has one; `--metric R` reads
them. An ablation's cube (`nnct ablate`, attr `operation` zero or mean) names its cells
`*_ablated*` instead of `*_restored*` and has no corrupted run: its effects are
m(ablated) - m(clean) (`cells_of`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..exec.measures import MEAN_BY_POSITION
from ..interventions import metrics
from ..interventions.components import COMPONENTS, grid, variables, whole
from ..interventions.operations import ABLATIONS
from .files import atomic, write_netcdf as write  # noqa: F401  (the cube's writer: atomic)

ANSWERS = ("target", "alt")
ATTRS = (
    "model", "model_revision", "nnct_version", "experiment", "prompt_format", "samples", "window",
    "noise_rule", "noise_level", "seed", "replace", "reverse_patching", "dtype", "backend", "device", "created",
)


# The measured variables of an example besides its restored cells (the engine's `Measures`).
MEASURED = ("p_clean", "p_corrupt", "logit_clean", "logit_corrupt")
# The restored cells are `cell_names` of each variable v the components fill (p_<v>,
# logit_<v>, or estimated by attribution patching ie_atp<v>), and `readout_cell_name` of
# each extra readout.
ESTIMATES = ("exact", "atp", "atp*")  # how a cube's cells were found: its attr `method`
TITLES = {"exact": "exact patching", "atp": "AtP", "atp*": "AtP*"}  # as tables and figures name them


def cell_names(variable: str, estimate: str = "exact") -> tuple[str, str]:
    """The cube's names of a restored variable's cells (`components`), of p and of the logits:
    p_<v> and logit_<v> measured exactly, `exec.attribution.names` (ie_atp...) as attribution
    patching's estimates of the indirect effect."""
    from ..exec.attribution import names

    return ("p_" + variable, "logit_" + variable) if estimate == "exact" else names(variable)


def readout_cell_name(readout: str, variable: str, estimate: str = "exact") -> str:
    """The cube's name of an extra readout's cells in a restored variable."""
    from ..exec.attribution import readout_name

    return f"{readout}_{variable}" if estimate == "exact" else readout_name(readout, variable)


def extra_readouts(ds) -> list[str]:
    """The extra readouts a cube stores (its attr `readouts`)."""
    return [r for r in str(ds.attrs.get("readouts", "")).split(",") if r]


def cells_of(ds, of: str = "restored") -> str:
    """The name a cube gives restored variable `of`: `*_ablated*` in an ablation's cube."""
    return of.replace("restored", "ablated") if ds.attrs.get("operation") in ABLATIONS else of

_TEXT = ("example", "record_id", "variant", "prompt", "corrupt_prompt", "target_str", "alt_str", "clean_top1_str")
_INTS = ("token_ids", "span", "answer_ids")
_FIELDS = {*_TEXT, *_INTS, "token_str", "segment", "clean_top1", "line"}  # a saved row's keys besides its values


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
            values = {k: z[k] for k in z.files if k not in _FIELDS}
            fields.update(clean_top1=int(z["clean_top1"]), line=int(z["line"]), values=values)
        if example is not None and fields["example"] != example:
            raise ValueError(f"{path} holds {fields['example']}, expected {example}")
        return cls(**fields)


def _cells(rows: list[Row], n_tok: int, n_layers: int, components, n_heads: int, estimate: str, verified: bool,
           readouts: tuple) -> dict:
    """The restored cells' variables: name -> (dims, values), NaN where an example has none
    (`readouts`: the extra ones, (name, per_answer) each)."""
    cells = {}
    estimates = (estimate, "exact") if verified and estimate != "exact" else (estimate,)
    for variable, dims in variables(components).items():
        shape = grid(variable, components, n_tok, n_layers, n_heads)
        kept = [(k, True) for how in estimates for k in cell_names(variable, how)]
        kept += [(readout_cell_name(r, variable, how), per) for how in estimates for r, per in readouts]
        for k, per_answer in kept:
            answer = ("answer",) if per_answer else ()
            cells[k] = (("example", *dims, *answer),
                        np.full((len(rows), *shape, *((len(ANSWERS),) if per_answer else ())), np.nan, dtype=np.float32))
    for i, r in enumerate(rows):
        n = len(r.token_ids)
        for k, (dims, held) in cells.items():
            if dims[1] == "token":
                held[i, :n] = r.values[k]
            else:
                held[i] = r.values[k]
    return cells


def assemble(rows: list[Row], n_layers: int, components: tuple[str, ...], attrs: dict, n_heads: int = 0,
             estimate: str = "exact", verified: bool = False, readouts: tuple = ()):
    """The cube of a run from its examples, in the given order (`n_heads`: the model's query
    heads, for components of heads; `estimate`: how the restored cells were found;
    `verified`: an estimate's cube that also holds some cells patched exactly, NaN elsewhere;
    `readouts`: the extra readouts, (name, per_answer) each)."""
    import xarray as xr

    n_ex, n_tok = len(rows), max((len(r.token_ids) for r in rows), default=0)
    cells = _cells(rows, n_tok, n_layers, components, n_heads, estimate, verified, tuple(readouts))
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
            **_readout_runs(rows, readouts),
            **({MEAN_BY_POSITION: ("example", np.array([r.values[MEAN_BY_POSITION] for r in rows], dtype=np.int8))}
               if rows and MEAN_BY_POSITION in rows[0].values else {}),
            **{k: per_answer([r.values[k] for r in rows]) for k in MEASURED},
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
        attrs={**attrs, **({"readouts": ",".join(name for name, _ in readouts)} if readouts else {})},
    )
    if attrs.get("operation") in ABLATIONS:  # no corrupted run; the cells hold the ablated values
        ds = ds.drop_vars([k for k in ds.data_vars if k.endswith("_corrupt")])
        ds = ds.rename({k: k.replace("restored", "ablated") for k in ds.data_vars if "restored" in k})
    return ds


def _readout_runs(rows: list[Row], readouts) -> dict:
    """<R>_clean and <R>_corrupt of each extra readout ((name, per_answer) each): name -> (dims, values)."""
    out = {}
    for name, per_answer in readouts:
        for kind in ("clean", "corrupt"):
            values = np.array([r.values[f"{name}_{kind}"] for r in rows], dtype=np.float32)
            shape = (len(rows), len(ANSWERS)) if per_answer else (len(rows),)
            out[f"{name}_{kind}"] = (("example", "answer")[:len(shape)], values.reshape(shape))
    return out




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
    patching (AtP or AtP*) stores its estimates of the IE (`ie_atp`). An ablation's: IE =
    p_ablated - p_clean, TE 0."""
    estimate = ds.attrs.get("method", "exact")
    if estimate != "exact":
        return ds[cell_names(of, estimate)[0]], ds.p_clean - ds.p_corrupt
    restored = ds["p_" + cells_of(ds, of)]
    if cells_of(ds) != "restored":
        return restored - ds.p_clean, ds.p_clean - ds.p_clean
    te = ds.p_clean - ds.p_corrupt
    if int(ds.attrs.get("reverse_patching", 0)):
        return (ds.p_clean - restored).transpose(*restored.dims), te
    return restored - ds.p_corrupt, te


def holds(ds, of: str) -> bool:
    """Whether the cube has the cells of restored variable `of` (measured or estimated)."""
    return cell_names(cells_of(ds, of), ds.attrs.get("method", "exact"))[0] in ds


def metrics_of(ds) -> tuple[str, ...]:
    """The metrics this cube can give (the logit ones need a cube that stores logits), then
    its extra readouts."""
    made = tuple(n for n, m in metrics.METRICS.items() if not m.uses_logits or "logit_clean" in ds)
    return made + tuple(extra_readouts(ds))


def metric_effects(ds, name: str, of: str = "restored", exact: bool = False):
    """(IE[example, <cells of p_<of>>], TE[example]) of the target answer in one metric of
    `interventions.metrics`, from the values the cube stores (means over the corrupted
    rows); `of` names the restored variable (default `p_restored`'s cells [token, layer,
    component]; "restored_head" for heads). A value that cannot be taken (a probability of 0
    has no log-ratio; a recovery whose total effect is too small) is NaN, so that averages
    leave it out. `exact`: in an estimate's cube, the cells it also patched exactly
    (`--verify-top`; NaN where it did not) rather than the estimates."""
    stored = name in extra_readouts(ds)
    m = metrics.stored(name) if stored else metrics.base(name)
    if m.uses_logits and "logit_clean" not in ds:
        raise ConfigError(f"metric {name} needs the answers' logits, which this cube lacks: trace it again with nnct >= 0.4")
    reverse = bool(int(ds.attrs.get("reverse_patching", 0)))
    ablated = cells_of(ds) != "restored"
    estimate = "exact" if exact else ds.attrs.get("method", "exact")
    p_name, logit_name = cell_names(cells_of(ds, of), estimate)
    if p_name not in ds:
        raise ConfigError(f"this cube has no {p_name}: trace the component(s) that fill it")

    def restored(kind, name):
        """The restored (patched) values; attribution's estimates of the IE make them from the
        base run's, in float64 so that the linear metrics give the estimates back unrounded."""
        if estimate == "exact":
            return ds[name]
        ie = ds[name].astype(np.float64)
        return ds[kind + "_clean"].astype(np.float64) - ie if reverse else ds[kind + "_corrupt"].astype(np.float64) + ie

    def target(values):
        return values.sel(answer=ANSWERS[0], drop=True) if "answer" in values.dims else values

    def value(kind):
        kind = "clean" if ablated and kind == "corrupt" else kind  # an ablation's base is the clean run
        if stored:
            return target(restored(name, readout_cell_name(name, cells_of(ds, of), estimate)) if kind == "restored"
                          else ds[f"{name}_{kind}"])
        if kind == "restored":
            p, logit = restored("p", p_name), restored("logit", logit_name) if m.uses_logits else None
        else:
            p, logit = ds[f"p_{kind}"], ds[f"logit_{kind}"] if m.uses_logits else None
        pt, pa = (p.sel(answer=a, drop=True) for a in ANSWERS)
        lt, la = ((logit.sel(answer=a, drop=True) for a in ANSWERS) if m.uses_logits else (None, None))
        return m.value(pt, pa, lt, la)

    with np.errstate(divide="ignore", invalid="ignore"):
        ie, te = metrics.effects(m if stored else name, value("clean"), value("corrupt"), value("restored"),
                                  reverse and not ablated)
    cells = [d for d in ds[p_name].dims if d != "answer"]
    return ie.where(np.isfinite(ie)).transpose(*cells), te.where(np.isfinite(te))
