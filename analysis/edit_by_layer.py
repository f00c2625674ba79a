"""Locate and edit agree? ROME's Figure 5 on one model: each fact edited at every k-th layer,
efficacy and specificity by layer beside the MLP's average indirect effect at the last
subject token of the same facts; and one edited fact traced again.

    python analysis/edit_by_layer.py --data experiments/data/known_smollm2.jsonl \
        --cube analysis/results/memory/subject-noctx.nc -n 10 --every 3 -o analysis/results/editing

ROME finds on GPT-2 XL that edits succeed best where causal tracing puts the MLP's effect
(the middle layers at the last subject token) and generalise worse elsewhere. This edits the
first n records at layers 0, k, 2k, ... (`nnct.methods.edit`, C over CPython's docs, the
second moments of every layer from one pass), writes each layer's edits file
(`edits-L<layer>.nc`; a rerun keeps those of the same n and C, so an interrupted sweep
resumes), a table of mean efficacy, magnitude, paraphrase, specificity and
fluency per layer with the MLP AIE (prob) of the cube's same records, the figure
(`figure.png`/`.pdf`), and, for the first fact edited at the layer of best efficacy
magnitude, the edited model's causal trace of the new object (`retrace.nc`, `retrace.png`).
"""

from __future__ import annotations

from pathlib import Path

import click
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nnct.analysis.plot import example_figure, save  # noqa: E402
from nnct.analysis.summary import summarize  # noqa: E402
from nnct.exec import rome  # noqa: E402
from nnct.inputs.records import load_records  # noqa: E402
from nnct.methods import edit as edit_lib  # noqa: E402
from nnct.model import load  # noqa: E402
from nnct.results import edits as edits_file  # noqa: E402
from nnct.results.cube import open_cube, write  # noqa: E402
from nnct.results.files import atomic  # noqa: E402

METRICS = ("efficacy", "efficacy_magnitude", "paraphrase", "specificity", "fluency")


def mlp_aie(cube_path: str, record_ids: list[str]) -> np.ndarray:
    """The MLP's AIE (prob) at the last subject token per layer, over the cube's examples of `record_ids`."""
    ds = open_cube(cube_path)
    keep = [e for e, r in zip(ds.example.values, ds.record_id.values) if str(r) in set(record_ids)]
    s = summarize(ds.sel(example=keep), metrics=("prob",))
    return s.aie.sel(metric="prob", segment="subject_last", component="mlp").values, len(keep)


@click.command()
@click.option("--data", required=True, type=click.Path(exists=True))
@click.option("--cube", required=True, type=click.Path(exists=True), help="A subject-noctx cube with mlp of these records.")
@click.option("-n", "n", type=int, default=10, show_default=True, help="Records edited (the data's first).")
@click.option("--every", type=int, default=3, show_default=True, help="Edit at layers 0, k, 2k, ...")
@click.option("--corpus-tokens", type=int, default=100_000, show_default=True)
@click.option("-o", "out", required=True, type=click.Path(file_okay=False))
def main(data, cube, n, every, corpus_tokens, out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    adapter = load("smollm2-135m")
    layers = list(range(0, adapter.parts.n_layers, every))
    edit_lib.covariances(adapter, layers, corpus_tokens)  # every layer's C in one pass, cached
    rows = {}
    for layer in layers:
        path = out / f"edits-L{layer}.nc"
        made, attrs = edits_file.read(path) if path.is_file() else ([], {})
        if len(made) != n or attrs.get("covariance", "").split(",")[-1].strip() != f"{corpus_tokens} tokens":
            cfg = edit_lib.EditConfig(data=data, out=str(path), layer=layer, max_examples=n, corpus_tokens=corpus_tokens)
            made = edit_lib.run(cfg, adapter).edits  # an interrupted sweep resumes at the layer it was on
        rows[layer] = {m: float(np.nanmean([e.metrics[m] for e in made])) for m in METRICS}
        click.echo(f"layer {layer}: " + ", ".join(f"{m} {v:.3f}" for m, v in rows[layer].items()))
    ids = [e.record_id for e in made]
    aie, n_cube = mlp_aie(cube, ids)
    lines = [f"{len(ids)} facts (the data's first {n}), ROME edits at each layer (C: {corpus_tokens} tokens of CPython's docs);"
             f" MLP AIE (prob) at the last subject token over the cube's {n_cube} examples of the same facts",
             f"{'layer':>6s}" + "".join(f"{m:>20s}" for m in METRICS) + f"{'MLP AIE':>10s}"]
    for layer, r in rows.items():
        lines.append(f"{layer:6d}" + "".join(f"{r[m]:20.3f}" for m in METRICS) + f"{aie[layer]:10.3f}")
    best = max(rows, key=lambda k: rows[k]["efficacy_magnitude"])
    lines.append(f"best efficacy magnitude at layer {best}; the MLP's AIE peaks at layer {int(np.nanargmax(aie))}")
    with atomic(out / "table.txt") as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines))

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for m, style in (("efficacy", "o-"), ("specificity", "s--"), ("efficacy_magnitude", "^:")):
        ax.plot(list(rows), [rows[k][m] for k in rows], style, label=m.replace("_", " "))
    ax.set_xlabel("edited layer")
    ax.set_ylabel("share of edits (magnitude: P(o*) - P(o))")
    twin = ax.twinx()
    twin.plot(range(len(aie)), aie, color="tab:red", alpha=0.6, label="MLP AIE at last subject token")
    twin.set_ylabel("MLP AIE (prob)", color="tab:red")
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title(f"smollm2-135m: ROME edits by layer ({len(ids)} facts) and where tracing puts the MLP's effect", fontsize=8)
    fig.tight_layout()  # the twin axis's label stays inside the figure
    save(fig, out / "figure")
    plt.close(fig)

    # The first fact edited at `best`, traced again with the new object as the answer.
    import nnct

    record = next(r for r in load_records(data).items if r.id == ids[0])
    edited, _ = edits_file.read(out / f"edits-L{best}.nc")
    first = next(e for e in edited if e.record_id == record.id)
    new_fact = {"id": record.id + "-edited", "subj": record.subj, "obj": first.target_new, "obj_cf": [record.obj],
                "prompt_wo_ctx": record.prompt_wo_ctx}
    with rome.edited_weights(adapter, [(first.layer, first.left, first.right)]):
        traced = nnct.trace(adapter, [new_fact], experiment="subject-noctx", components="hidden,mlp,attn")
    write(traced, out / "retrace.nc")
    fig = example_figure(traced, str(traced.example.values[0]))
    save(fig, out / "retrace")
    plt.close(fig)


if __name__ == "__main__":
    main()
