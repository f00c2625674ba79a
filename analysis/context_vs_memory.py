"""The memory study's own figure: for each span of the context (subject, relation, object),
the AIE of the hidden state by layer at the span's last token and at the last token, for the
fact's passage and for counterfactual passages split by which answer won (the context's or
the memorised one), with 95% bands. Writes context_vs_memory.png and .pdf.

    python analysis/context_vs_memory.py runs/memory -o runs/memory/figures
"""

import argparse
from pathlib import Path

from matplotlib.figure import Figure

from nnct.results.cube import open_cube
from nnct.errors import ConfigError
from nnct.analysis.summary import summarize

SPANS = {"subject": "subject_last", "relation": "relation", "object": "object_last"}
GROUPS = {"fact passage": dict(variant="fact"), "cf passage, context wins": dict(variant="cf", filter="target-wins"),
          "cf passage, memory wins": dict(variant="cf", filter="alt-wins")}

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("study", type=Path, help="the memory study's directory (its cubes)")
parser.add_argument("-o", "--out", type=Path, required=True)
args = parser.parse_args()

spans = [name for name in SPANS if (args.study / f"{name}.nc").exists()]
fig = Figure(figsize=(4.2 * len(spans), 6.4), layout="constrained")
axes = fig.subplots(2, len(spans), squeeze=False, sharey="row")
for col, name in enumerate(spans):
    ds = open_cube(args.study / f"{name}.nc")
    for label, kw in GROUPS.items():
        try:
            s = summarize(ds, **kw).sel(metric="prob", component="hidden")
        except ConfigError:  # no example in this group
            continue
        for row, segment in enumerate((SPANS[name], "last")):
            c = s.sel(segment=segment)
            ax = axes[row, col]
            (line,) = ax.plot(s.layer, c.aie, label=f"{label} (n={s.attrs['examples']})")
            ax.fill_between(s.layer, c.aie_low, c.aie_high, color=line.get_color(), alpha=0.15, linewidth=0)
            ax.set_title(f"{name} corrupted: restoring {segment}", fontsize=9)
            ax.axhline(0, color="grey", linewidth=0.5)
            ax.set_xlabel("layer")
    axes[0, col].legend(fontsize=7)
axes[0, 0].set_ylabel("AIE (hidden state, p target)")
axes[1, 0].set_ylabel("AIE (hidden state, p target)")
fig.suptitle(f"{args.study}: where the answer is read from the context; bands: 95% CI", fontsize=9)
args.out.mkdir(parents=True, exist_ok=True)
for ext in ("png", "pdf"):
    fig.savefig(args.out / f"context_vs_memory.{ext}", dpi=150)
print(f"wrote {args.out}/context_vs_memory.png and .pdf")
