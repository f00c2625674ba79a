"""Summaries of a cube: the numbers a paper reports, with their uncertainty.

`summarize` turns an effect cube into a small Dataset over (metric, segment, layer,
component): the average indirect effect (AIE) per segment, its 95% confidence interval over
examples, the best layer per segment and component, the ATE, and the share of examples
whose clean prompt ranks the target first; for a cube of heads the same over (metric,
segment, layer, head) (`aie_head`) and, for heads restored at all positions, over (metric,
layer, head) (`aie_head_all_pos`), and `strongest_heads` lists the largest (in-sample;
`analysis.strongest` adds held-out estimates). Choices
(docs/method.md, "Summaries"):

- A segment's effect in one example is the mean over its tokens (ROME averages the middle
  subject tokens the same way); the AIE is the mean over the examples that have the
  segment, so `n(segment)` can be smaller than the number of examples.
- Examples of one record (its fact and cf variants) are not independent: every mean is the
  mean of record means (each record's examples averaged first), and its 95% interval is over
  records, the unit of sampling: Student t over the record means, mean +- t(0.975, R-1) *
  sd / sqrt(R) (sd with R-1 degrees of freedom; NaN where R < 2), or with `ci="bootstrap"`
  the 2.5th and 97.5th percentiles of the mean over 10,000 resamples of the records (seeded).
  A cube with one example per record gives the old intervals over examples.
- Every mean says how many examples it used (`n`), over how many records (`n_records`), and
  how many of the selected examples it left out (`n_left_out`: the segment is absent from the
  prompt, or the metric is undefined there, e.g. a recovery whose total effect is below 0.001).
- Metrics: every metric of `interventions.metrics` the cube gives (`prob`, ROME's p
  difference; `log_ratio`; `logit_diff`; the recoveries, fractions of the total effect
  averaged over the examples where that is defined), all of the target answer.
- Filters select examples before anything is averaged: `known` (the clean top-1 token is the
  target's: ROME's filter), `target-wins` / `alt-wins` (by clean probability: for a
  counterfactual variant, the context's answer or the memorised one wins).

The cube is read `chunk` examples at a time, so a merged cube opened lazily never has to fit
in memory.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np

from ..errors import ConfigError
from ..inputs.spans import SEGMENT_ORDER
from ..results.cube import cell_names, cells_of, holds, metric_effects, metrics_of

FILTERS = ("known", "target-wins", "alt-wins")
CI_METHODS = ("t", "bootstrap")
RESAMPLES = 10_000
# The segments reported first (figures' lines, the strongest heads), where present.
FOCUS = ("subject_last", "changed_last", "object_last", "relation", "last")


def select(ds, variant: str | None = None, filter: str | None = None):
    """The examples of `ds` of one variant (`fact`, `cf` for every cfK, or an exact name)
    that pass `filter`."""
    keep = np.ones(ds.sizes["example"], dtype=bool)
    if variant:
        names = ds.variant.values.astype(str)
        keep &= np.char.startswith(names, "cf") if variant == "cf" else names == variant
    if filter == "known":
        if "clean_top1" not in ds:
            raise ConfigError("--filter known needs the clean top-1 token, which this cube lacks: trace it again with nnct >= 0.2")
        keep &= ds.clean_top1.values == ds.answer_id.sel(answer="target").values
    elif filter in ("target-wins", "alt-wins"):
        p = ds.p_clean.values
        keep &= (p[:, 0] > p[:, 1]) if filter == "target-wins" else (p[:, 0] <= p[:, 1])
    elif filter is not None:
        raise ConfigError(f"unknown filter {filter!r}; known: {', '.join(FILTERS)}")
    return ds.isel(example=np.flatnonzero(keep))


def segments_of(ds) -> list[str]:
    present = set(np.unique(ds.segment.values.astype(str))) - {""}
    return [s for s in SEGMENT_ORDER if s in present] + sorted(present - set(SEGMENT_ORDER))


def segment_effects(ds, metrics, segments: list[str], chunk: int = 256, of: str = "restored") -> tuple[np.ndarray, np.ndarray]:
    """(IE[metric, example, segment, layer, X], TE[metric, example]): per example, the mean IE
    over the tokens of each segment (NaN where the example has none), of the restored
    variable `of` (X: component, or head for "restored_head"). One pass over the cube,
    `chunk` examples at a time."""
    n = ds.sizes["example"]
    cells = ds[cell_names(cells_of(ds, of), ds.attrs.get("method", "exact"))[0]]
    rest = [ds.sizes[d] for d in cells.dims[2:-1]]  # after example and token, before answer
    out = np.full((len(metrics), n, len(segments), *rest), np.nan)
    te = np.full((len(metrics), n), np.nan)
    for lo in range(0, n, chunk):
        part = ds.isel(example=slice(lo, lo + chunk)).load()
        seg = part.segment.values.astype(str)
        masks = [(seg == s)[:, :, None, None] for s in segments]
        for m, metric in enumerate(metrics):
            ie, total = metric_effects(part, metric, of)
            ie = ie.values.astype(np.float64)  # [example, token, layer, X]
            for k, mask in enumerate(masks):
                count = mask.sum(axis=1)
                summed = np.where(mask, ie, 0.0).sum(axis=1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[m, lo:lo + chunk, k] = np.where(count > 0, summed / np.maximum(count, 1), np.nan)
            te[m, lo:lo + chunk] = total.values
    return out, te


def record_means(values: np.ndarray, records, axis: int = 0) -> np.ndarray:
    """`values` with `axis` (one entry per example) replaced by one per record: the mean of
    that record's examples, NaN ignored (NaN where all of them are)."""
    records = np.asarray(records).astype(str)
    moved = np.moveaxis(values, axis, 0)
    with _quiet():
        out = np.stack([np.nanmean(moved[records == r], axis=0) for r in dict.fromkeys(records)])
    return np.moveaxis(out, 0, axis)


def mean_ci(values: np.ndarray, axis: int = 0, records=None, ci: str = "t",
            seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high, n) over `axis`, ignoring NaN: the mean of record means and its 95%
    interval over records (`records`: each entry's record along `axis`; None: each its own),
    Student t or a seeded percentile bootstrap (`ci`); n counts the entries used."""
    from scipy import stats

    _check_ci(ci)
    n = np.sum(~np.isnan(values), axis=axis)
    per = values if records is None else record_means(values, records, axis)
    r = np.sum(~np.isnan(per), axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"), _quiet():
        mean = np.nanmean(per, axis=axis)
        if ci == "bootstrap":
            low, high = _bootstrap(np.moveaxis(per, axis, 0), seed)
        else:
            sd = np.nanstd(per, axis=axis, ddof=1)
            half = stats.t.ppf(0.975, np.maximum(r - 1, 1)) * sd / np.sqrt(r)
            low, high = mean - half, mean + half
    undefined = r < 2
    return mean, np.where(undefined, np.nan, low), np.where(undefined, np.nan, high), n


def paired_difference(a: np.ndarray, b: np.ndarray, records_a, records_b, ci: str = "t",
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high, n) of b - a paired by record, over axis 0 of each (one entry per
    example): each record's mean in `a` and in `b` (records in both only, NaN ignored), their
    difference per record, and its mean and 95% interval over records (`ci`); n counts the
    records whose difference is defined."""
    records_a, records_b = np.asarray(records_a).astype(str), np.asarray(records_b).astype(str)
    shared = [r for r in dict.fromkeys(records_a) if r in set(records_b)]
    if not shared:
        raise ConfigError("the two sets of examples share no record: nothing to pair")
    keep_a, keep_b = np.isin(records_a, shared), np.isin(records_b, shared)
    per_a = record_means(a[keep_a], records_a[keep_a])  # rows: `shared`, in a's order
    per_b = record_means(b[keep_b], records_b[keep_b])
    order_b = list(dict.fromkeys(records_b[keep_b]))
    per_b = per_b[[order_b.index(r) for r in shared]]
    return mean_ci(per_b - per_a, axis=0, ci=ci, seed=seed)


def _check_ci(ci: str) -> None:
    if ci not in CI_METHODS:
        raise ConfigError(f"--ci {ci}: use {' or '.join(CI_METHODS)}")


def _bootstrap(per: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The 2.5th and 97.5th percentiles of the mean of `per`'s rows (records) over RESAMPLES
    resamples of the rows with replacement (numpy's generator, `seed`), in chunks."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, per.shape[0], size=(RESAMPLES, per.shape[0]))
    flat = per.reshape(per.shape[0], -1)
    means = np.empty((RESAMPLES, flat.shape[1]))
    for lo in range(0, RESAMPLES, 500):
        means[lo:lo + 500] = np.nanmean(flat[picks[lo:lo + 500]], axis=1)
    low, high = np.nanpercentile(means, [2.5, 97.5], axis=0)
    return low.reshape(per.shape[1:]), high.reshape(per.shape[1:])


@contextlib.contextmanager
def _quiet():
    """numpy warns on the mean of an all-NaN slice: absent segments are expected here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def summarize(ds, variant: str | None = None, filter: str | None = None, metrics=None, ci: str = "t", seed: int = 0):
    """The summary Dataset of a cube (see the module's docstring), in `metrics` (default:
    every metric the cube gives), intervals over records by `ci` (t or bootstrap, `seed`)."""
    import xarray as xr

    metrics = tuple(metrics or metrics_of(ds))
    _check_ci(ci)
    chosen = select(ds, variant, filter)
    if chosen.sizes["example"] == 0:
        raise ConfigError(f"no example is left after --variant {variant or 'all'} --filter {filter or 'none'}")
    segments = segments_of(chosen)
    records = chosen.record_id.values if "record_id" in chosen else None
    data, te, n, n_records = _aie(chosen, metrics, segments, records, ci, seed)
    ate = np.stack(mean_ci(te, axis=1, records=records, ci=ci, seed=seed)[:3], axis=1)  # [metric, (mean, low, high)]
    target = chosen.answer_id.sel(answer="target").values if "answer_id" in chosen else None
    share = float(np.mean(chosen.clean_top1.values == target)) if target is not None else np.nan
    coords = {"metric": list(metrics), "segment": segments, "layer": chosen.layer.values,
              **{d: chosen[d].values for d in ("component", "head") if d in chosen.coords}}
    return xr.Dataset(
        {
            **data,
            # examples counted where the metric is finite (a probability of 0 has no log-ratio)
            "n": (("metric", "segment"), n.astype(np.int32)),
            "n_records": (("metric", "segment"), n_records.astype(np.int32)),
            # the selected examples a mean leaves out: segment absent, or the metric undefined
            "n_left_out": (("metric", "segment"), (chosen.sizes["example"] - n).astype(np.int32)),
            "ate": (("metric",), ate[:, 0]), "ate_low": (("metric",), ate[:, 1]), "ate_high": (("metric",), ate[:, 2]),
            "p_clean": ((), float(chosen.p_clean.sel(answer="target").mean())),
            "p_corrupt": ((), float(chosen.get("p_corrupt", chosen.p_clean).sel(answer="target").mean())),  # ablation: none
            "share_target_first": ((), share),
        },
        coords=coords,
        attrs={
            **{k: ds.attrs[k] for k in ("model", "experiment", "definition", "samples", "window", "noise_level",
                                        "reverse_patching", "method") if k in ds.attrs},
            "variant": variant or "all", "filter": filter or "none",
            "examples": int(chosen.sizes["example"]), "examples_in_cube": int(ds.sizes["example"]),
            "ci": ("Student t 95% over record means" if ci == "t" else
                   f"percentile bootstrap 95% over records, {RESAMPLES} resamples, seed {seed}"),
            "records": int(len(set(records))) if records is not None else int(chosen.sizes["example"]),
        },
    )


def _aie(chosen, metrics, segments: list[str], records, ci: str, seed: int):
    """(the AIE variables {name: (dims, values)}, TE [metric, example], n and n_records
    [metric, segment]) of every restored variable the cube holds."""
    data, te, n, n_records = {}, None, None, None
    for of, name, x in (("restored", "aie", "component"), ("restored_head", "aie_head", "head")):
        if not holds(chosen, of):
            continue
        dims = ("metric", "segment", "layer", x)
        per_example, te = segment_effects(chosen, metrics, segments, of=of)
        aie, low, high, count = mean_ci(per_example, axis=1, records=records, ci=ci, seed=seed)  # [metric, segment, layer, X]
        data.update({name: (dims, aie), name + "_low": (dims, low), name + "_high": (dims, high)})
        n = count.max(axis=(2, 3)) if n is None else np.maximum(n, count.max(axis=(2, 3)))
        used = _records_used(per_example, records)
        n_records = used if n_records is None else np.maximum(n_records, used)
        if x == "component":
            best = np.argmax(np.where(np.isnan(aie), -np.inf, aie), axis=2)  # [metric, segment, component]
            data["best_layer"] = (("metric", "segment", "component"), chosen.layer.values[best].astype(np.int32))
            data["best_aie"] = (("metric", "segment", "component"), np.take_along_axis(aie, best[:, :, None, :], axis=2)[:, :, 0, :])
    if holds(chosen, "restored_head_all_pos"):
        dims = ("metric", "layer", "head")
        per_example, te = all_positions(chosen, metrics)
        aie, low, high, count = mean_ci(per_example, axis=1, records=records, ci=ci, seed=seed)
        if n is None:  # heads at all positions alone: every segment counts the examples
            n = np.repeat(count.max(axis=(1, 2))[:, None], len(segments), axis=1)
            n_records = np.repeat(_records_used(per_example[:, :, None], records).max(axis=1)[:, None], len(segments), axis=1)
        data.update({"aie_head_all_pos": (dims, aie), "aie_head_all_pos_low": (dims, low), "aie_head_all_pos_high": (dims, high)})
    return data, te, n, n_records


def _records_used(per_example: np.ndarray, records) -> np.ndarray:
    """[metric, segment]: the records with a finite value for some cell (per_example:
    [metric, example, segment, ...])."""
    finite = np.isfinite(per_example).reshape(*per_example.shape[:3], -1).any(axis=-1)  # [metric, example, segment]
    if records is None:
        return finite.sum(axis=1)
    records = np.asarray(records).astype(str)
    return np.stack([finite[:, records == r].any(axis=1) for r in dict.fromkeys(records)], axis=1).sum(axis=1)


def all_positions(ds, metrics, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(IE[metric, example, layer, head], TE[metric, example]) of heads restored at every position."""
    n = ds.sizes["example"]
    out = np.full((len(metrics), n, ds.sizes["layer"], ds.sizes["head"]), np.nan)
    te = np.full((len(metrics), n), np.nan)
    for lo in range(0, n, chunk):
        part = ds.isel(example=slice(lo, lo + chunk)).load()
        for m, metric in enumerate(metrics):
            ie, total = metric_effects(part, metric, "restored_head_all_pos")
            out[m, lo:lo + chunk], te[m, lo:lo + chunk] = ie.values, total.values
    return out, te


def strongest_heads(summary, metric: str = "prob", k: int = 5, segments: list[str] | None = None) -> list[dict]:
    """The `k` heads of largest positive AIE per segment (per-token heads; default: the FOCUS
    segments present) and over all positions, each with its 95% interval: dicts of segment
    ("all positions" for the latter), layer, head, aie, low, high."""
    found = []
    present = [str(g) for g in summary.segment.values]
    focus = segments or [g for g in FOCUS if g in present] or present
    for name, where in (("aie_head", focus if "aie_head" in summary else []),
                        ("aie_head_all_pos", ["all positions"] if "aie_head_all_pos" in summary else [])):
        for seg in where:
            pick = {"metric": metric} if name == "aie_head_all_pos" else {"metric": metric, "segment": seg}
            grid = summary[name].sel(pick).values  # [layer, head]
            flat = np.where(np.isnan(grid), -np.inf, grid).ravel()
            for i in np.argsort(-flat)[:k]:
                if not flat[i] > 0:  # no effect is no head to report
                    break
                layer, head = np.unravel_index(i, grid.shape)
                found.append({"segment": str(seg), "layer": int(summary.layer.values[layer]), "head": int(head),
                              "aie": float(grid[layer, head]),
                              "low": float(summary[name + "_low"].sel(pick).values[layer, head]),
                              "high": float(summary[name + "_high"].sel(pick).values[layer, head])})
    return found


def to_frame(summary):
    """The AIE table in long form (one row per metric, segment, layer, component; for a cube
    of heads only, per head, and per layer and head for heads at all positions), for CSV."""
    name = next(k for k in ("aie", "aie_head", "aie_head_all_pos") if k in summary)
    df = summary[[name, name + "_low", name + "_high"]].to_dataframe().reset_index()
    if "segment" not in df:
        return df
    counts = [k for k in ("n", "n_records", "n_left_out") if k in summary]
    return df.merge(summary[counts].to_dataframe().reset_index(), on=["metric", "segment"])


def _share(share: float) -> str:
    return "? (a cube without clean_top1)" if np.isnan(share) else f"{share:.0%}"


def _band(first: int, last: int) -> str:
    return f"L{first}" if first == last else f"L{first}-{last}"


def table(summary, metric: str = "prob", bands: int = 6) -> str:
    """A plain-text table per component: AIE by segment over layer bands, and the peak with its CI."""
    if metric not in summary.metric.values:
        raise ConfigError(f"metric {metric} is not in this summary (it has {', '.join(summary.metric.values)}): a cube without"
                          " logits gives no logit metric; trace it again with nnct >= 0.4")
    s = summary.sel(metric=metric)
    layers = summary.layer.values
    groups = np.array_split(np.arange(len(layers)), min(bands, len(layers)))
    a = summary.attrs
    lines = [
        f"{a.get('experiment', '?')} ({a.get('definition') or 'no definition'}): {a['examples']} of {a['examples_in_cube']} examples"
        f" from {a.get('records', a['examples'])} records (variant {a['variant']}, filter {a['filter']}); metric {metric};"
        f" intervals: {a.get('ci', 'Student t 95% over examples')}",
        f"ATE {float(s.ate):.4f} [{float(s.ate_low):.4f}, {float(s.ate_high):.4f}]; mean p_clean {float(summary.p_clean):.4f},"
        f" p_corrupt {float(summary.p_corrupt):.4f}; clean top-1 = target in {_share(float(summary.share_target_first))}",
    ]
    for comp in summary.component.values if "aie" in summary else ():
        c = s.sel(component=comp)
        lines.append(f"\n{comp}: AIE by segment and layer band; peak with 95% CI")
        lines.append(f"{'segment':20s}{'n':>4s}{'left':>5s}" + "".join(f"{_band(layers[g[0]], layers[g[-1]]):>9s}" for g in groups)
                     + f"{'peak':>9s}{'95% CI':>19s}{'layer':>7s}")
        for seg in summary.segment.values:
            row = c.aie.sel(segment=seg).values
            best = int(c.best_layer.sel(segment=seg))
            peak = c.sel(segment=seg, layer=best)
            with np.errstate(invalid="ignore"), _quiet():
                bands_txt = "".join(f"{np.nanmean(row[g]):9.3f}" for g in groups)
            left = int(s.n_left_out.sel(segment=seg)) if "n_left_out" in s else 0
            lines.append(f"{seg:20s}{int(s.n.sel(segment=seg)):4d}{left:5d}{bands_txt}{float(peak.aie):9.3f}"
                         f"   [{float(peak.aie_low):6.3f}, {float(peak.aie_high):6.3f}]{best:7d}")
    heads = strongest_heads(summary, metric)
    if heads:
        lines.append("\nstrongest heads, in-sample (chosen and estimated on the same records; --strongest K adds held-out values)")
        for h in heads:
            lines.append(f"{h['segment']:20s} L{h['layer']:<3d} H{h['head']:<3d}{h['aie']:9.3f}   [{h['low']:6.3f}, {h['high']:6.3f}]")
    return "\n".join(lines)
