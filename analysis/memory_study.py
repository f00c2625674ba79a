"""The memory study's tables, from the directory `just memory-study` fills (answers.csv and
the cubes subject-noctx.nc, subject.nc, object.nc, relation.nc):

1. which answer wins with no passage, the fact's passage and a counterfactual one, and
   whether the context wins more often where the model knows the fact less well;
2. MLP against attention at the last subject token and at the last token (ROME's contrast),
   without and with a context passage;
3. where the answer is read from the context: for each span, the effect at the span's last
   token and at the last token, for the fact's passage and for counterfactual passages
   split by which answer won.

    python analysis/memory_study.py runs/memory
"""

import sys
from pathlib import Path

import pandas as pd

from nnct.methods.answers import table as answers_table
from nnct.results.cube import open_cube
from nnct.errors import ConfigError
from nnct.analysis.strongest import strongest
from nnct.analysis.summary import summarize

d = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/memory")
answers = pd.read_csv(d / "answers.csv")

print("1. Which answer wins (by clean probability of its first token)")
print(answers_table(answers))
none = answers[answers.condition == "none"].set_index("record_id").p_target  # p(obj) with no passage
cf = answers[answers.condition.str.startswith("cf")].copy()
cf["p_obj_without_context"] = cf.record_id.map(none)
if none.nunique() >= 3:  # terciles of the records (not of the prompts: records have 2-5 counterfactuals)
    knows = pd.qcut(none, 3, labels=["weakly", "moderately", "strongly"])
    cf["knows"] = cf.record_id.map(knows)
    by = cf.groupby("knows", observed=True).agg(
        records=("record_id", "nunique"), prompts=("source", "size"), p_obj_without_context=("p_obj_without_context", "mean"),
        context_wins=("source", lambda s: (s == "context").mean()),
    )
    print("\ncounterfactual passages, by how strongly the model knows the fact without one (terciles of the records'"
          " p(obj | no passage)):")
    print(by.to_string(float_format=lambda x: f"{x:.3f}"))
first_cf = cf[cf.condition == "cf1"]
print(f"cf1 only (the passage the traces use): context wins {(first_cf.source == 'context').mean():.0%} of {len(first_cf)}")


def peak(s, ds, select, segment, component, metric="prob"):
    """The peak over layers with its interval and layer, and the held-out peak: the layer
    chosen on one half of the records, estimated on the other (both ways; seed 0)."""
    c = s.sel(metric=metric, segment=segment, component=component)
    layer = int(c.best_layer)
    at = c.sel(layer=layer)
    try:
        held = f"{float(strongest(ds, 1, metric, segments=[segment], components=[component], **select).held_out[0, 0]):6.3f}"
    except (ConfigError, IndexError):  # too few records for halves, or no positive effect
        held = "     -"
    return f"{float(at.aie):6.3f} [{float(at.aie_low):6.3f}, {float(at.aie_high):6.3f}] at L{layer:<2d} {held}"


HELD = ("AIE peak over layers with its 95% CI over records and its layer, then the held-out peak (the layer chosen on"
        " a random half of the records, estimated on the other half, both ways)")
print(f"\n2. MLP against attention (target's probability; fact variant). {HELD}")
print(f"{'experiment':15s}{'segment':14s}{'n':>4s}   {'mlp':39s}{'attn':39s}{'hidden':39s}")
for name in ("subject-noctx", "subject"):
    path = d / f"{name}.nc"
    if not path.exists():
        continue
    ds = open_cube(path)
    s = summarize(ds, variant="fact")
    if not {"mlp", "attn"} <= set(s.component.values):
        continue
    for segment in ("subject_last", "last"):
        print(f"{name:15s}{segment:14s}{int(s.n.sel(metric='prob', segment=segment)):4d}   "
              + "".join(f"{peak(s, ds, dict(variant='fact'), segment, comp):39s}" for comp in ("mlp", "attn", "hidden")))

print(f"\n3. Where the context is read (hidden state). {HELD}")
span_segment = {"subject": "subject_last", "object": "object_last", "relation": "relation"}
print(f"{'span':10s}{'examples':28s}{'n':>4s}{'ATE':>8s}   {'span token':39s}{'last token':39s}")
for name, segment in span_segment.items():
    path = d / f"{name}.nc"
    if not path.exists():
        continue
    ds = open_cube(path)
    for label, kw in [("fact passage", dict(variant="fact")),
                      ("cf passage, context wins", dict(variant="cf", filter="target-wins")),
                      ("cf passage, memory wins", dict(variant="cf", filter="alt-wins"))]:
        try:
            s = summarize(ds, **kw)
        except ConfigError as exc:  # no example in this group
            print(f"{name:10s}{label:28s}   0   ({exc})")
            continue
        print(f"{name:10s}{label:28s}{s.attrs['examples']:4d}{float(s.ate.sel(metric='prob')):8.3f}   "
              f"{peak(s, ds, kw, segment, 'hidden'):39s}{peak(s, ds, kw, 'last', 'hidden'):39s}")
