"""Why the scaling study's arms keep what they keep: how far each run's updates move the edited
MLPs' outputs, on general text and on the facts retention reads, and how much of those keys
AlphaEdit's null space holds.

    python analysis/edit_disturbance.py --runs runs/edit-scaling > analysis/results/editing/scaling/disturbance.txt

On the embedded model, over the study's layers (0-4), with `analysis.editing.energy`:
- per layer, AlphaEdit's null space (the eigenvectors of C, the keys' second moment over
  CPython's docs, with eigenvalues under its threshold): its dimension, and the share of the
  energy inside it of the corpus's keys (trace(P C) / trace(C)), of the 60 unedited facts'
  keys (known_smollm2.jsonl: specificity's and retention's) and of the first 100 edited
  facts' keys. An AlphaEdit update acts only through that share of a key.
- per edits file of `--runs` (every arm and size run so far): ||Delta||_F / ||W||_F summed
  over the layers, and the update's output change relative to the layers' own,
  sqrt(sum_l E||Delta_l k||^2 / sum_l E||W_l k||^2), over the corpus's keys (from C) and over
  the unedited facts' keys; beside it the run's retention.
The keys are MEMIT's (the last subject token, the bare prompt's key averaged with the mean of
the prefixed prompts') read on the unedited model: to first order, what an update changes.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
LAYERS = list(range(5))


def _keys(adapter, where, edit_lib, memit, path: Path, n: int | None) -> dict[int, np.ndarray]:
    """Per layer, [d_ff, facts] keys of the records of `path` (the first n)."""
    from nnct.inputs.records import load_records

    prefixes = edit_lib.context_prefixes(where, 0, batch=True)
    records = load_records(path).items[:n]
    facts = [edit_lib._fact(adapter.tokenizer, r, r.obj, prefixes) for r in records]
    return {layer: memit.fact_keys(adapter.parts, facts, layer).cpu().numpy() for layer in LAYERS}


def _delta(updates: list[tuple], layer: int, shape) -> np.ndarray:
    """The sum of the updates' left @ right.T at `layer` (zero where none)."""
    out = np.zeros(shape)
    for at, left, right in updates:
        if int(at) == layer:
            out += left.reshape(len(left), -1) @ right.reshape(len(right), -1).T
    return out


@click.command()
@click.option("--runs", default="runs/edit-scaling", show_default=True, type=click.Path(exists=True, file_okay=False))
@click.option("--threads", default=1, show_default=True)
def main(runs, threads):
    torch.set_num_threads(threads)
    from nnct.analysis.editing import energy
    from nnct.exec import memit
    from nnct.interventions.batch_update import null_space
    from nnct.methods import edit as edit_lib
    from nnct.model import load
    from nnct.results import edits as edits_file

    adapter = load()
    where = edit_lib.Where(adapter)
    hp = memit.hparams_for(adapter.model_type, adapter.name)
    cov, tokens = edit_lib.covariances(adapter, LAYERS, 100_000)
    c = {layer: cov[layer].double().numpy() for layer in LAYERS}
    w = {layer: adapter.layer_modules()[layer].get_submodule(adapter.layout.mlp_down).weight.detach().double().numpy()
         for layer in LAYERS}
    known = _keys(adapter, where, edit_lib, memit, ROOT / "experiments" / "data" / "known_smollm2.jsonl", None)
    edited = _keys(adapter, where, edit_lib, memit, ROOT / "experiments" / "data" / "edit_scaling.jsonl", 100)

    click.echo(f"AlphaEdit's null space per layer (C over {tokens} tokens; eigenvalues under {hp.nullspace_threshold}):"
               " the share of each kind of key's energy inside it")
    click.echo(f"{'layer':>5s}{'d_ff':>6s}{'null dims':>11s}{'corpus':>9s}{'unedited facts':>16s}{'edited facts':>14s}")
    for layer in LAYERS:
        p = null_space(torch.from_numpy(c[layer]), hp.nullspace_threshold).numpy()
        eye = np.eye(len(p))
        shares = [energy(p, second_moment=c[layer]) / energy(eye, second_moment=c[layer]),
                  energy(p, known[layer]) / energy(eye, known[layer]),
                  energy(p, edited[layer]) / energy(eye, edited[layer])]
        click.echo(f"{layer:5d}{len(p):6d}{int(round(np.trace(p))):11d}" + "".join(f"{s:>{n}.4f}" for s, n in
                                                                                      zip(shares, (9, 16, 14))))

    click.echo("\nEach run's updates over layers 0-4: their size, and the output change they make relative to the"
               " layers' own outputs (keys of the unedited model)")
    click.echo(f"{'run':28s}{'|D|/|W|':>9s}{'corpus':>9s}{'unedited facts':>16s}{'retention':>11s}")
    rows = []
    for path in Path(runs).glob("*.nc"):
        made, attrs = edits_file.read(path)
        updates = edits_file.read_updates(path)
        deltas = {layer: _delta(updates, layer, w[layer].shape) for layer in LAYERS}
        size = np.sqrt(sum(np.square(d).sum() for d in deltas.values()) / sum(np.square(x).sum() for x in w.values()))
        corpus = np.sqrt(sum(energy(deltas[i], second_moment=c[i]) for i in LAYERS)
                         / sum(energy(w[i], second_moment=c[i]) for i in LAYERS))
        facts = np.sqrt(sum(energy(deltas[i], known[i]) for i in LAYERS) / sum(energy(w[i], known[i]) for i in LAYERS))
        kept = int(attrs.get("retention_kept", -1)) / max(int(attrs.get("retention_known", 1)), 1)
        arm = path.stem.rsplit("-", 1)[0]
        rows.append((len(made), arm, size, corpus, facts, kept))
    for n, arm, size, corpus, facts, kept in sorted(rows):
        click.echo(f"{f'{arm} at {n}':28s}{size:9.4f}{corpus:9.4f}{facts:16.4f}{kept:11.3f}")


if __name__ == "__main__":
    main()
