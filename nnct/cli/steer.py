"""`nnct steer`: steering vectors from contrast pairs (CAA), swept over layers and alphas."""

from __future__ import annotations

from pathlib import Path

import click

from .app import fail, guarded, main
from .options import QUIET, execution, settings


@main.command()
@execution()
@click.option("--contrast", type=click.Path(exists=True, dir_okay=False),
              help='Contrast pairs (JSONL: {"positive": ..., "negative": ...}); or --vectors.')
@click.option("--vectors", type=click.Path(exists=True, dir_okay=False), help="Reuse a vectors file (--save-vectors).")
@click.option("--prompts", type=click.Path(exists=True, dir_okay=False),
              help='Test prompts (JSONL: {"prompt": ..., "target": ..., "alt": ...}); without: only the vectors.')
@click.option("--layers", default="all", show_default=True, help="Layers to steer: all, 0,3,6 or 0-29:3 (inclusive).")
@click.option("--alphas", default="-8,-4,-2,0,2,4,8", show_default=True, help="Scales of the vector (comma-separated).")
@click.option("--readout", default=None, help="Extra readouts, comma-separated (logprob, rank, kl, prob_any, logit, logit_diff).")
@click.option("--from-last", is_flag=True, help="Steer from the prompt's last token on, not at every position.")
@click.option("--new-tokens", type=click.IntRange(min=0), default=12, show_default=True,
              help="Greedy continuation tokens per prompt and row (0: none).")
@click.option("--out", type=click.Path(dir_okay=False), help="The sweep (OUT.nc).")
@click.option("--save-vectors", type=click.Path(dir_okay=False), help="Write the vectors file (V.nc) [default: with --contrast,"
              " OUT's name with .vectors.nc].")
@click.option("--figure", type=click.Path(dir_okay=False), help="Also draw the effect by layer and alpha (PNG, PDF or SVG).")
@click.option("--figure-readout", default="prob", show_default=True,
              help="The readout the figure and the summary show (prob: p(target) - p(alt); or an extra readout).")
@QUIET
def steer(contrast, vectors, prompts, layers, alphas, readout, from_last, new_tokens, out, save_vectors, figure, figure_readout,
          quiet, **options):
    """Steering (CAA): v[l] = mean over contrast pairs of the residual stream's difference at
    each text's last token; each (layer, alpha) adds alpha * v[l] after layer l and reads the
    test prompts' answers, batched --batch-size rows (layer x alpha) to a forward."""
    from ..methods import steer as lib

    for path, what in ((out, "--out"), (save_vectors, "--save-vectors")):
        if path and Path(path).suffix != ".nc":
            fail(f"{what} {path}: the file is NetCDF, name it *.nc")
    if prompts and not out and not figure:
        fail("--prompts: name where the sweep goes (--out OUT.nc, or --figure)")
    if save_vectors is None and contrast and out:
        save_vectors = str(Path(out).with_suffix(".vectors.nc"))
    if not prompts and not save_vectors:
        fail("without --prompts there is only the vectors file: name it (--save-vectors V.nc)")
    with guarded("nothing was written: run the same command again"):
        cfg = lib.SteerConfig(contrast=contrast, vectors=vectors, prompts=prompts, layers=lib.parse_layers(layers),
                              alphas=lib.parse_alphas(alphas), readout=readout, from_last=from_last, new_tokens=new_tokens,
                              out=out, save_vectors=save_vectors, **settings(options))
        made = lib.steer(cfg, say=(lambda text: None) if quiet else click.echo)
    for problem in made.problems:
        click.echo(f"skipped {problem}", err=True)
    if made.dataset is None:
        click.echo(f"wrote {save_vectors}: vectors of {made.vectors.sizes['layer']} layers from"
                   f" {made.vectors.attrs.get('n_pairs', 0)} pairs")
        return
    _report(made.dataset, out, figure, figure_readout)


def _report(ds, out, figure, readout: str) -> None:
    from ..analysis import steering

    with guarded():
        if figure:
            steering.save_figure(steering.effect_figure(ds, readout), figure)
        top, label = steering.best(ds, readout), steering.label(ds, readout)
    where = f"wrote {out}" if out else "swept"
    click.echo(f"{where}: {ds.sizes['prompt']} prompts x {ds.sizes['layer']} layers x {ds.sizes['alpha']} alphas"
               + (f"; figure {figure}" if figure else ""))
    for key, (layer, alpha, value) in top.items():
        click.echo(f"  largest {key}: layer {layer}, alpha {alpha:g}: mean {label} {value:+.3f}")
