"""Interactive pages of nnct outputs: one self-contained HTML file per view (`nnct view`).

The library is plotly: its Python side builds each figure (traces, axes, colour scales,
hover templates) and its JavaScript side, plotly.js, draws it in the browser with hover,
zoom and a toolbar. It is well kept, draws heatmaps, lines, bands and graphs alike, and its
whole runtime is one script that can be inlined (`include_plotlyjs=True`'s copy), so a
page opens offline, from a mail attachment, without a server: every script, style and
number is in the file and the page makes no network request.

A page is three parts: the figures as plotly JSON (built here, their data left empty), the
data of every selector state as one JSON block, and a short inline script that, when a
selector changes, puts the chosen state's numbers into the figures (`Plotly.react`). So no
state is ever computed in the browser from numbers the page lacks; it only picks them.

Thinning keeps pages small and quick (a 60-example, 3-component cube: a few MB, open in
well under 2 s): the large arrays (per-example token x layer effects, averages) are stored
as little-endian float16 in base64 (3 significant digits, invisible in a colour; 2.7
bytes a value against ~8 as JSON text) and small ones rounded to 4 significant digits.
Per-example heatmaps are kept for as many (metric, answer) pairs as fit in
`EXAMPLE_BUDGET` bytes, target answer first; the page says which were left out (their
averages stay). Circuits store their top edges (up to `MAX_EDGES`) with, per slider step,
which of them survive pruning as a bit mask.

Page kinds (`build` picks one from `results.kinds`): a cube (averages with 95% intervals
from `summary.summarize`, AIE lines, each example's heatmap, heads grids, severed paths),
two cubes side by side with their difference, a circuit file (graph with a top-n slider,
faithfulness curve, random-circuit band from `nnct circuit verify`'s JSON), an edits file
(sortable per-fact table, metrics by layer), a summary (its heatmaps and tables) and a
path-patching file (senders' mean effects).
"""

from __future__ import annotations

import base64
import html
import json
import warnings
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..interventions.components import COMPONENTS
from ..interventions.metrics import metric as metric_entry
from ..results.cube import ANSWERS, TITLES, cell_names, holds, metric_effects, metrics_of
from ..results.files import atomic
from .plot import SEVERED, SPAN_LAST, shown
from .summary import FOCUS, summarize
from .summary import table as summary_table

EXAMPLE_BUDGET = 4_000_000  # bytes of per-example heatmaps in a cube's page
MAX_EDGES = 40_000  # the most edges a circuit page stores
SLIDER_STEPS = 24
OPEN_EDGES = 3_000  # the most edges a circuit page draws when it opens
LINE_COLOURS = {"hidden": "#6a3d9a", "mlp": "#33a02c", "attn": "#e31a1c", "hidden-sever-mlp": "#33a02c",
                "hidden-sever-attn": "#e31a1c"}
KIND_COLOURS = {"q": "#1f77b4", "k": "#2ca02c", "v": "#9467bd", "mlp": "#ff7f0e", "logits": "#444444"}
ZWSP = "\u200b"  # appended to repeated token labels: plotly merges equal category names


def packed(values) -> str:
    """An array as base64 of little-endian float16 (NaN kept), the pages' compact numbers."""
    a = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return base64.b64encode(np.clip(a, -65504, 65504).astype("<f2").tobytes()).decode("ascii")


def rounded(values, digits: int = 4):
    """Nested lists of floats to `digits` significant digits, NaN as None (JSON's null)."""
    a = np.asarray(values, dtype=np.float64)
    flat = [None if not np.isfinite(v) else float(f"{v:.{digits}g}") for v in a.ravel()]
    return np.array(flat, dtype=object).reshape(a.shape).tolist() if a.ndim else flat[0]


def colourscale(cmap: str, steps: int = 9) -> list:
    """A matplotlib colour map (a component's, ROME's colours) as a plotly colour scale."""
    from matplotlib import colormaps

    colours = colormaps[cmap](np.linspace(0, 1, steps))
    return [[round(float(x), 3), f"rgb({int(r * 255)},{int(g * 255)},{int(b * 255)})"]
            for x, (r, g, b, _) in zip(np.linspace(0, 1, steps), colours)]


def _label(metric: str) -> str:
    return metric_entry(metric).label


def _figure(**layout) -> dict:
    """An empty plotly figure (layout only) as JSON-ready dict: the script fills its traces."""
    import plotly.graph_objects as go

    fig = go.Figure(layout={"margin": {"l": 60, "r": 20, "t": 40, "b": 50}, "template": "plotly_white", **layout})
    return json.loads(fig.to_json())


def _script(name: str) -> str:
    """A page script of view_js/ (the browser's side: picks the chosen state's numbers)."""
    from importlib.resources import files

    return files(__package__).joinpath("view_js", name + ".js").read_text(encoding="utf-8")


def _plotlyjs() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


STYLE = """
body{font-family:system-ui,sans-serif;margin:16px;color:#222}
h1{font-size:18px;margin:0 0 4px}
.meta{color:#555;font-size:13px;margin-bottom:8px}
.controls{display:flex;flex-wrap:wrap;gap:12px;margin:8px 0;font-size:13px;align-items:center}
.fig{width:100%;min-height:360px}
.row{display:flex;flex-wrap:wrap;gap:8px}.row>div{flex:1 1 420px}
.note{color:#a33;font-size:12px}
table.sortable{border-collapse:collapse;font-size:12px}
table.sortable th,table.sortable td{border:1px solid #ddd;padding:2px 6px;text-align:right}
table.sortable th{cursor:pointer;background:#f4f4f4}
pre{font-size:11px;background:#fafafa;padding:8px;overflow-x:auto}
"""



def page(title: str, subtitle: str, body: str, data: dict, figures: dict, script: str) -> str:
    """The whole HTML page: plotly.js, the style, the data and figures as JSON, the script."""
    def block(name, value):  # JSON inside <script>: "</" must not close the element early
        text = json.dumps(value, separators=(",", ":")).replace("</", "<\\/")
        return f'<script type="application/json" id="{name}">{text}</script>'

    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style><script>{_plotlyjs()}</script></head><body>"
            f"<h1>{html.escape(title)}</h1><div class=\"meta\">{html.escape(subtitle)}</div>{body}"
            f"{block('nnct-data', data)}{block('nnct-figures', figures)}"
            f"<script>{_script('common')}{script}</script></body></html>\n")


def _select(name: str, label: str) -> str:
    return f'<label>{html.escape(label)} <select id="{name}" autocomplete="off"></select></label>'


def _caption(attrs) -> str:
    parts = [str(attrs.get(k)) for k in ("model", "experiment") if attrs.get(k)]
    method = attrs.get("method", "exact")
    if method != "exact":
        parts.append(TITLES.get(method, method) + " estimates")
    return " ".join(parts)


# ---------------------------------------------------------------- a cube


def variants_of(ds) -> list[str]:
    """The variant selector's choices: all, each variant, and cf when there are several cfK."""
    names = list(dict.fromkeys(str(v) for v in ds.variant.values)) if "variant" in ds else []
    cfs = [v for v in names if v.startswith("cf")]
    return ["all", *names, *(["cf"] if len(cfs) > 1 else [])]


def swapped(ds):
    """`ds` with its answers' roles exchanged: every metric of the target is then the alt's."""
    return ds.isel(answer=[1, 0]).assign_coords(answer=list(ANSWERS))


def _tokens(ds, i: int) -> list[str]:
    """An example's token labels: `shown`, corrupted ones starred, repeats made distinct."""
    n = int(ds.n_tokens.values[i])
    seen: dict[str, int] = {}
    out = []
    for t, c in zip(ds.token_str.values[i][:n], ds.corrupted.values[i][:n]):
        label = shown(str(t)) + ("*" if c else "")
        seen[label] = seen.get(label, 0) + 1
        out.append(label + ZWSP * (seen[label] - 1))
    return out


def _examples(ds) -> list[dict]:
    p_corrupt = ds.p_corrupt.values if "p_corrupt" in ds else np.full(ds.p_clean.shape, np.nan)
    return [{"id": str(ex), "variant": str(ds.variant.values[i]) if "variant" in ds else "",
             "tokens": _tokens(ds, i), "corrupted": [int(c) for c in ds.corrupted.values[i][:int(ds.n_tokens.values[i])]],
             "answers": [str(ds.target_str.values[i]), str(ds.alt_str.values[i])],
             "p_clean": rounded(ds.p_clean.values[i]), "p_corrupt": rounded(p_corrupt[i])}
            for i, ex in enumerate(ds.example.values)]


def _averages(ds, variants, metrics, heads: bool) -> dict:
    """{variant: {answer: {metric: packed AIE, low, high [segment, layer, X]; n}}} and the
    segments per variant, from `summary.summarize` (intervals over records)."""
    out, segments = {}, {}
    for variant in variants:
        chosen = variant if variant != "all" else None
        per_answer = {}
        for answer in ANSWERS:
            base = ds if answer == "target" else swapped(ds)
            s = summarize(base, variant=chosen, metrics=metrics)
            segments[variant] = [str(g) for g in s.segment.values]
            per_answer[answer] = {}
            for m in metrics:
                one = s.sel(metric=m)
                entry = {"n": [int(v) for v in one.n.values]}
                for name in ("aie", "aie_head", "aie_head_all_pos"):
                    if name in s and (heads or name == "aie"):
                        for suffix in ("", "_low", "_high"):
                            entry[name + suffix] = packed(one[name + suffix].values)
                per_answer[answer][m] = entry
        out[variant] = per_answer
    return {"averages": out, "segments": segments}


def _example_effects(ds, metrics) -> tuple[dict, dict, list[str]]:
    """Per-example IE [example, token, layer, component] per "metric|answer" that fits in
    `EXAMPLE_BUDGET`, packed; the colour range (0 to the largest) per key and component;
    the keys left out."""
    effects, zmax, left_out, used = {}, {}, [], 0
    for answer in ANSWERS:
        base = ds if answer == "target" else swapped(ds)
        for m in metrics:
            key = f"{m}|{answer}"
            ie = metric_effects(base, m)[0].transpose("example", "token", "layer", "component").values
            size = ie.size * 8 // 3
            if used + size > EXAMPLE_BUDGET:
                left_out.append(key)
                continue
            used += size
            effects[key] = packed(ie)
            with np.errstate(invalid="ignore"):
                zmax[key] = [rounded(max(float(np.nanmax(ie[..., c], initial=0.0)), 1e-6)) for c in range(ie.shape[-1])]
    return effects, zmax, left_out


def _start_segment(ds) -> str | None:
    """The segment a page opens on: the corrupted span's last token, else a FOCUS one."""
    seg = ds.segment.values.astype(str)
    corrupted = set(seg[ds.corrupted.values.astype(bool)])
    present = set(seg.ravel())
    return next((g for g in SPAN_LAST if g in corrupted), next((g for g in FOCUS if g in present), None))


def cube_data(ds) -> dict:
    """Everything a cube's page shows, for every selector state."""
    whole = holds(ds, "restored") and "component" in ds.coords
    heads = holds(ds, "restored_head") or holds(ds, "restored_head_all_pos")
    if not whole and not heads:
        raise ConfigError("this cube has no restored cells to show")
    metrics = list(metrics_of(ds))
    variants = variants_of(ds)
    data = {"kind": "cube", "metrics": metrics, "metric_labels": [_label(m) for m in metrics],
            "answers": list(ANSWERS), "variants": variants, "layers": [int(v) for v in ds.layer.values],
            "components": [str(c) for c in ds.component.values] if whole else [],
            "component_titles": [COMPONENTS[str(c)].title for c in ds.component.values] if whole else [],
            "colourscales": {str(c): colourscale(COMPONENTS[str(c)].cmap) for c in ds.component.values} if whole else {},
            "head_colourscale": colourscale(COMPONENTS["head"].cmap),
            "line_colours": LINE_COLOURS, "focus": list(FOCUS), "severed": list(SEVERED),
            "heads": [int(h) for h in ds.coords["head"].values] if heads and "head" in ds.coords else [],
            "window": int(ds.attrs.get("window", 1)), "examples": _examples(ds), "start_segment": _start_segment(ds),
            **_averages(ds, variants, metrics, heads)}
    if whole:
        data["tokens"] = int(ds.sizes["token"])
        data["effects"], data["zmax"], data["left_out"] = _example_effects(ds, metrics)
    return data




def cube_page(ds, title: str) -> str:
    data = cube_data(ds)
    whole, heads = bool(data["components"]), bool(data["heads"])
    controls = "".join(_select(n, label) for n, label in (
        ("component", "component"), ("answer", "answer"), ("metric", "readout / metric"), ("variant", "variant"),
        ("segment", "segment"), ("example", "example")))
    figs = {}
    body = f'<div class="controls">{controls}</div>'
    if whole:
        layer = "layer" + (f" (centre of {data['window']} restored layers)" if data["window"] > 1 else "")
        figs["average"] = _figure(xaxis={"title": {"text": layer}}, yaxis={"autorange": "reversed"})
        figs["lines"] = _figure(xaxis={"title": {"text": layer}}, yaxis={"title": {"text": "AIE"}})
        figs["example"] = _figure(xaxis={"title": {"text": layer}}, yaxis={"autorange": "reversed", "type": "category"})
        body += ('<div class="row"><div id="fig-average" class="fig"></div><div id="fig-lines" class="fig"></div></div>'
                 '<div class="note" id="example-note"></div><div id="fig-example" class="fig"></div>')
        if data["left_out"]:
            body += f'<div class="note">left out (size): per-example heatmaps of {", ".join(data["left_out"])}</div>'
    else:
        body += '<div class="note" id="example-note"></div>'
    if heads:
        figs["heads"] = _figure(xaxis={"domain": [0, 0.45], "title": {"text": "head"}}, yaxis={"title": {"text": "layer"}},
                                xaxis2={"domain": [0.55, 1], "title": {"text": "head"}},
                                yaxis2={"anchor": "x2", "title": {"text": "layer"}}, height=520)
        body += '<div id="fig-heads" class="fig"></div>'
    n = ds.sizes["example"]
    return page(title, f"{_caption(ds.attrs)}: {n} examples; averages with 95% intervals over records (summary.summarize)",
                body, data, figs, _script("cube"))


# ---------------------------------------------------------------- two cubes


def _verified_cells(ds, metric: str, segments: list[str]) -> np.ndarray | None:
    """[segment, layer, component]: the share of the examples with that segment whose cell
    there was patched exactly as well (an estimate's cube made with --verify-top); None
    without such cells."""
    if ds.attrs.get("method", "exact") == "exact" or cell_names("restored")[0] not in ds:
        return None
    ie = metric_effects(ds, metric, exact=True)[0].transpose("example", "token", "layer", "component").values
    seg = ds.segment.values.astype(str)
    shares = []
    for g in segments:  # per example: any of the segment's tokens verified; then the share of examples
        has = (seg == g).any(axis=1)
        verified = np.stack([np.isfinite(ie[i, seg[i] == g]).any(axis=0) for i in np.flatnonzero(has)])
        shares.append(verified.mean(axis=0))
    return np.stack(shares)


def two_cubes_data(a, b, names: tuple[str, str]) -> dict:
    if not (holds(a, "restored") and holds(b, "restored")):
        raise ConfigError("two cubes are compared by their whole components (hidden, mlp, attn): one of them has none")
    metrics = [m for m in metrics_of(a) if m in set(metrics_of(b))]
    comps = [str(c) for c in a.component.values if c in set(b.component.values)]
    if not comps or not metrics:
        raise ConfigError("the two cubes share no component or metric to compare")
    sa, sb = summarize(a, metrics=metrics), summarize(b, metrics=metrics)
    segments = [str(g) for g in sa.segment.values if g in set(sb.segment.values)]
    same_layers = list(sa.layer.values) == list(sb.layer.values)
    out = {"kind": "two", "names": list(names), "metrics": metrics, "components": comps,
           "component_titles": [COMPONENTS[c].title for c in comps], "colourscales": {c: colourscale(COMPONENTS[c].cmap) for c in comps},
           "segments": segments, "layers": [[int(v) for v in s.layer.values] for s in (sa, sb)], "same_layers": same_layers,
           "captions": [_caption(x.attrs) or n for x, n in zip((a, b), names)], "values": {}, "verified": {}}
    for m in metrics:
        grids = [s.aie.sel(metric=m, segment=segments, component=comps).values for s in (sa, sb)]
        out["values"][m] = [packed(g) for g in grids]
        for side, ds in enumerate((a, b)):
            marks = _verified_cells(ds, m, segments)
            if marks is not None:
                comp_index = [list(map(str, ds.component.values)).index(c) for c in comps]
                out["verified"].setdefault(m, {})[side] = rounded(marks[:, :, comp_index], 2)
    return out




def two_cubes_page(a, b, names: tuple[str, str]) -> str:
    data = two_cubes_data(a, b, names)
    figs = {"compare": _figure(
        xaxis={"domain": [0, 0.3], "title": {"text": "A: " + names[0]}}, yaxis={"autorange": "reversed"},
        xaxis2={"domain": [0.34, 0.64], "title": {"text": "B: " + names[1]}}, yaxis2={"anchor": "x2", "autorange": "reversed",
                                                                                     "showticklabels": False},
        xaxis3={"domain": [0.72, 0.97], "title": {"text": "B - A"}}, yaxis3={"anchor": "x3", "autorange": "reversed",
                                                                           "showticklabels": False},
        height=max(380, 26 * len(data["segments"]) + 160), showlegend=False)}
    body = (f'<div class="controls">{_select("metric", "metric")}{_select("component", "component")}</div>'
            '<div id="fig-compare" class="fig"></div>'
            + ("" if data["same_layers"] else '<div class="note">the cubes\' layers differ: no difference panel</div>'))
    subtitle = f"A = {names[0]}, B = {names[1]}: AIE over every example (summary.summarize), one colour scale; B - A"
    return page("two cubes", subtitle, body, data, figs, _script("two"))


# ---------------------------------------------------------------- a circuit file


def _positions(kinds, layers, heads, n_heads: int, n_layers: int, n_kv: int) -> list[list[float]]:
    """Each node's (x, y) as `plot.circuit_figure` places it."""
    out = []
    for kind, layer, head in zip(kinds, layers, heads):
        kind, layer, head = str(kind), int(layer), int(head)
        if kind in ("emb", "logits"):
            out.append([n_heads / 2, -1.0 if kind == "emb" else float(n_layers)])
        elif kind == "mlp":
            out.append([n_heads + 0.5, layer + 0.45])
        elif kind in ("k", "v"):
            group = n_heads // n_kv
            out.append([head * group + (group - 1) / 2 + (0.15 if kind == "v" else -0.15), float(layer)])
        else:
            out.append([float(head), float(layer)])
    return out


def slider_counts(total: int, minimal: int, steps: int = SLIDER_STEPS) -> list[int]:
    """Top-n counts of the slider: log-spaced from 1 to the stored edges, the minimal circuit's among them."""
    counts = np.unique(np.round(np.geomspace(1, total, steps)).astype(int))
    return sorted({int(c) for c in counts} | ({minimal} if 1 <= minimal <= total else set()))


def circuit_data(ds, verify: dict | None) -> dict:
    from ..results import circuit as circuit_file

    score = ds.score.values
    total = int(np.isfinite(score).sum())
    minimal = circuit_file.minimal_selected(ds.attrs)
    stored = min(total, MAX_EDGES)
    flat = np.nan_to_num(np.abs(score), nan=-1.0).ravel()
    order = np.argsort(-flat, kind="stable")[:stored]  # `top_edges`'s order
    src, dst = np.unravel_index(order, score.shape)
    graph = circuit_file.graph_of(ds)
    counts = slider_counts(stored, minimal if minimal <= stored else 0)
    masks = []
    for n in counts:
        keep = circuit_file.circuit(graph, score, n)
        masks.append(base64.b64encode(np.packbits(keep[src, dst], bitorder="little").tobytes()).decode("ascii"))
    H, L, K = int(ds.attrs["n_heads"]), int(ds.attrs["n_layers"]), int(ds.attrs["n_kv_heads"])
    sources = _positions(ds.source_kind.values, ds.source_layer.values, ds.source_head.values, H, L, K)
    dests = _positions(ds.destination_kind.values, ds.destination_layer.values, ds.destination_head.values, H, L, K)
    curve = {"search": [[int(n), int(k), rounded(f)] for n, k, f in zip(ds.search_edges.values, ds.search_edges_pruned.values,
                                                                       ds.search_faithfulness.values)],
             "mib": [[int(n), int(k), rounded(f)] for n, k, f in zip(ds.mib_edges_selected.values, ds.mib_edges.values,
                                                                    ds.mib_faithfulness.values)]}
    if verify:
        curve["verify"] = [[int(p["edges_selected"]), int(p["edges"]), rounded(p["faithfulness"])] for p in verify.get("curve", [])]
        if verify.get("random_faithfulness_ci"):
            curve["random"] = {"edges": int(verify["edges"]), "mean": rounded(verify["random_faithfulness_mean"]),
                               "low": rounded(verify["random_faithfulness_ci"][0]), "high": rounded(verify["random_faithfulness_ci"][1]),
                               "count": int(verify.get("random_circuits", 0)), "faithfulness": rounded(verify["faithfulness"])}
    # the page opens on the minimal circuit, or on a smaller one where that is a hairball slow to draw
    fits = [i for i, n in enumerate(counts) if n <= OPEN_EDGES]
    start = counts.index(minimal) if minimal in counts and minimal <= OPEN_EDGES else (fits[-1] if fits else 0)
    return {"kind": "circuit", "start": start, "total": total, "stored": stored, "minimal": minimal, "counts": counts, "masks": masks,
            "source": base64.b64encode(src.astype("<u2").tobytes()).decode(),
            "destination": base64.b64encode(dst.astype("<u2").tobytes()).decode(), "score": packed(score[src, dst]),
            "dest_kind": [str(k) for k in ds.destination_kind.values], "source_names": [str(s) for s in ds.source.values],
            "dest_names": [str(d) for d in ds.destination.values], "source_xy": rounded(sources), "dest_xy": rounded(dests),
            "n_heads": H, "n_layers": L, "kind_colours": KIND_COLOURS, "target": rounded(float(ds.attrs.get("target", np.nan))),
            "curve": curve}




def circuit_page(ds, verify: dict | None = None) -> str:
    data = circuit_data(ds, verify)
    H, L = data["n_heads"], data["n_layers"]
    figs = {"graph": _figure(height=max(520, 22 * (L + 2)), showlegend=True,
                             xaxis={"tickvals": [*range(H), H + 0.5], "ticktext": [*[f"h{h}" for h in range(H)], "MLP"],
                                    "showgrid": False, "zeroline": False},
                             yaxis={"tickvals": list(range(-1, L + 1)), "ticktext": ["emb", *map(str, range(L)), "logits"],
                                    "title": {"text": "layer"}, "zeroline": False}),
            "curve": _figure(xaxis={"type": "log", "title": {"text": "edges selected (top n by |score|)"}},
                             yaxis={"title": {"text": "faithfulness F"}},
                             title={"text": "faithfulness by circuit size" + ("; band: random circuits, 95%" if verify else
                                                                              " (give the verify JSON for the random band)")})}
    a = ds.attrs
    body = ('<div class="controls"><label>top n <input type="range" id="topn" min="0" step="1" style="width:320px"></label>'
            '<span id="topn-label"></span></div><div id="fig-graph" class="fig"></div><div id="fig-curve" class="fig"></div>')
    if data["stored"] < data["total"]:
        body += f'<div class="note">the slider reaches the top {data["stored"]} of {data["total"]} edges (size)</div>'
    subtitle = (f"{a.get('model', '')}: EAP-IG on {a.get('n_pairs', '?')} pairs, {data['total']} edges; minimal faithful"
                f" circuit: top {data['minimal']} (F {float(a.get('faithfulness', np.nan)):.3f}, target {a.get('target', '?')});"
                f" MIB CPR {float(a.get('cpr', np.nan)):.3f}, CMD {float(a.get('cmd', np.nan)):.3f}")
    return page("circuit", subtitle, body, data, figs, _script("circuit"))


# ---------------------------------------------------------------- an edits file


def edits_data(ds) -> dict:
    from .summary import mean_ci

    metrics = sorted(k.removeprefix("metric_") for k in ds.data_vars if k.startswith("metric_"))
    layers = sorted({int(v) for v in ds.layer.values})
    rows = [{"record": str(ds.record_id.values[i]), "subject": str(ds.subject.values[i]), "true": str(ds.target_true.values[i]),
             "new": str(ds.target_new.values[i]), "layer": int(ds.layer.values[i]),
             **{m: rounded(float(ds["metric_" + m].values[i])) for m in metrics}} for i in range(ds.sizes["edit"])]
    by_layer = {}
    for m in metrics:
        values = ds["metric_" + m].values.astype(np.float64)
        stats = [mean_ci(values[ds.layer.values == layer]) for layer in layers]
        by_layer[m] = [[rounded(float(x)) for x in (mean, low, high)] + [int(n)] for mean, low, high, n in stats]
    return {"kind": "edits", "metrics": metrics, "layers": layers, "rows": rows, "by_layer": by_layer}




def _edits_table(data: dict) -> str:
    head = ["record", "subject", "true", "new", "layer", *data["metrics"]]
    out = ['<table class="sortable"><thead><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for row in data["rows"]:
        cells = []
        for h in head:
            v = row[h]
            if isinstance(v, (int, float)) or v is None:
                cells.append(f'<td data-value="{"NaN" if v is None else v}">{"" if v is None else f"{v:.4g}"}</td>')
            else:
                cells.append(f'<td style="text-align:left">{html.escape(v)}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</tbody></table>"


def edits_page(ds) -> str:
    data = edits_data(ds)
    figs = {"bylayer": _figure(xaxis={"title": {"text": "edited layer"}, "tickvals": data["layers"]})}
    body = (f'<div class="controls">{_select("metric", "metric")}</div><div id="fig-bylayer" class="fig"></div>'
            f'<p class="meta">per fact (click a column to sort)</p>{_edits_table(data)}')
    a = ds.attrs
    subtitle = (f"{a.get('model', '')}: {ds.sizes['edit']} edits ({a.get('method', 'rome')}), layers"
                f" {', '.join(map(str, data['layers']))}; covariance {a.get('covariance', '?')}")
    return page("edits", subtitle, body, data, figs, _script("edits"))


# ---------------------------------------------------------------- a summary


def summary_data(s) -> dict:
    metrics = [str(m) for m in s.metric.values]
    data = {"kind": "summary", "metrics": metrics, "segments": [str(g) for g in s.segment.values],
            "layers": [int(v) for v in s.layer.values], "tables": {m: summary_table(s, m) for m in metrics}, "grids": {}}
    if "aie" in s:
        data["components"] = [str(c) for c in s.component.values]
        data["colourscales"] = {c: colourscale(COMPONENTS[c].cmap) for c in data["components"]}
        for m in metrics:
            one = s.sel(metric=m)
            data["grids"][m] = {k: packed(one[k].transpose("segment", "layer", "component").values) for k in ("aie", "aie_low", "aie_high")}
            data["grids"][m]["n"] = [int(v) for v in one.n.values]
    elif "aie_head" in s:  # heads: the segments' layer x head grids
        data["components"] = [str(g) for g in s.segment.values]
        data["colourscales"] = {g: colourscale(COMPONENTS["head"].cmap) for g in data["components"]}
        data["heads"] = [int(h) for h in s.coords["head"].values]
        for m in metrics:
            one = s.sel(metric=m)
            data["grids"][m] = {k: packed(one[k].values) for k in ("aie_head", "aie_head_low", "aie_head_high")}
    return data




def summary_page(s, title: str) -> str:
    data = summary_data(s)
    heads = "heads" in data
    figs = {"grid": _figure(xaxis={"title": {"text": "head" if heads else "layer"}},
                            yaxis={"title": {"text": "layer"}} if heads else {"autorange": "reversed"})}
    body = (f'<div class="controls">{_select("metric", "metric")}{_select("component", "segment" if heads else "component")}</div>'
            '<div id="fig-grid" class="fig"></div><pre id="table"></pre>')
    a = s.attrs
    subtitle = (f"{_caption(a)}: {a.get('examples', '?')} of {a.get('examples_in_cube', '?')} examples (variant"
                f" {a.get('variant', '?')}, filter {a.get('filter', '?')}); {a.get('ci', '')}")
    return page(title, subtitle, body, data, figs, _script("summary"))


# ---------------------------------------------------------------- a path-patching file


def paths_data(ds) -> dict:
    from .paths import _effects

    out = {"kind": "paths", "metrics": [], "grids": {}, "layers": list(range(int(ds.attrs["n_layers"]))),
           "heads": list(range(int(ds.attrs["n_heads"])))}
    for name, (heads, mlps) in _effects(ds).items():
        with warnings.catch_warnings():  # senders with no path to the receivers are all NaN: expected
            warnings.simplefilter("ignore", RuntimeWarning)
            grid = np.concatenate([np.nanmean(heads, axis=0), np.nanmean(mlps, axis=0)[:, None]], axis=1)
        out["metrics"].append(name)
        out["grids"][name] = rounded(grid)
    return out




def paths_page(ds) -> str:
    data = paths_data(ds)
    figs = {"grid": _figure(yaxis={"title": {"text": "sender layer"}}, height=560)}
    a = ds.attrs
    subtitle = (f"{a.get('model', '')}: path patching ({a.get('direction', '?')}) to {a.get('receivers', '?')} on"
                f" {a.get('n_pairs', '?')} pairs")
    body = f'<div class="controls">{_select("metric", "metric")}</div><div id="fig-grid" class="fig"></div>'
    return page("path patching", subtitle, body, data, figs, _script("paths"))


# ---------------------------------------------------------------- files


def build(path: str | Path, second: str | Path | None = None) -> str:
    """The page of one file (with `second`: a second cube to compare with, a second edits
    file to join, or a circuit file's verify JSON)."""
    from ..results import circuit as circuit_file
    from ..results import cube as cube_file
    from ..results import paths as path_file
    from ..results.files import read_netcdf
    from ..results.kinds import kind_of

    kind = kind_of(path)
    if kind == "circuit":
        verify = json.loads(Path(second).read_text()) if second else None
        return circuit_page(circuit_file.read(path), verify)
    if kind == "edits":
        ds = read_netcdf(path)
        if second:
            import xarray as xr

            if kind_of(second) != "edits":
                raise ConfigError(f"{second}: an edits file is joined only with another edits file")
            other = read_netcdf(second)
            keep = [k for k in ds.data_vars if k in other.data_vars and ds[k].dims == ("edit",)]  # the per-edit texts and metrics
            ds = xr.concat([ds[keep], other[keep].assign_coords(edit=other.edit.values + ds.sizes["edit"])], dim="edit")
        return edits_page(ds)
    if second is not None:
        if kind != "cube" or kind_of(second) != "cube":
            raise ConfigError("two files are compared only as two cubes (or a circuit file with its verify JSON)")
        return two_cubes_page(cube_file.open_cube(path), cube_file.open_cube(second), (Path(path).name, Path(second).name))
    if kind == "summary":
        return summary_page(read_netcdf(path), Path(path).name)
    if kind == "paths":
        return paths_page(path_file.read(path))
    if kind == "cube":
        return cube_page(cube_file.open_cube(path), Path(path).name)
    raise ConfigError(f"a {kind} file has no page yet (nnct view shows cubes, summaries, circuits, edits and path files)")


def write(path: str | Path, out: str | Path, second: str | Path | None = None) -> Path:
    """Build the page of `path` (and `second`) and write it to `out` atomically."""
    text = build(path, second)
    out = Path(out)
    with atomic(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out
