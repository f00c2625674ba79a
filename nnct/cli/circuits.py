"""`nnct memorization score|pairs` and `nnct circuit find|verify`."""

from __future__ import annotations

from pathlib import Path

import click

from .app import Bar, fail, guarded, main
from .options import QUIET, execution, settings

STORED_MODEL = "The model to load [default: the one the input file names]."


def _skipped(problems) -> None:
    for problem in problems:
        click.echo(f"skipped {problem}", err=True)


def _say(quiet: bool):
    return (lambda text: None) if quiet else click.echo


@main.group()
def memorization():
    """What a model reproduces verbatim, and prompt pairs where it stops."""


@memorization.command("score")
@execution()
@click.option("--texts", required=True, type=click.Path(exists=True), help="A .txt file, a directory of them, or JSONL with id and text.")
@click.option("--prefix", type=click.IntRange(min=1), default=50, show_default=True, help="P: the tokens given.")
@click.option("--continuation", type=click.IntRange(min=1), default=50, show_default=True, help="N: the tokens scored.")
@click.option("--stride", type=click.IntRange(min=1), default=None, help="Tokens between windows' starts [default: P + N].")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Scores (JSONL); a rerun resumes it.")
@QUIET
def score(texts, prefix, continuation, stride, out, quiet, **options):
    """Score every window of P + N tokens: the share of its last N tokens that greedy
    decoding reproduces after its first P (--batch-size windows at a time; auto: 16)."""
    from ..methods import memorization as mem

    cfg = mem.ScoreConfig(texts=texts, out=out, prefix=prefix, continuation=continuation, stride=stride, **settings(options))
    bar = Bar(True)
    with guarded(f"the windows scored are kept in {out}: run the same command again to go on"):
        run = mem.score(cfg, say=_say(quiet), on_retry=bar.retry)
    _skipped(run.problems)
    scores = [s.score for s in run.scores]
    if not scores:
        fail("no window to score")
    full = sum(s == 1.0 for s in scores)
    click.echo(f"wrote {out}: {len(scores)} windows ({run.resumed} from before), mean score {sum(scores) / len(scores):.3f},"
               f" {full} reproduced whole, {len(run.problems)} texts or lines skipped")


@memorization.command("pairs")
@execution(model=None, model_help=STORED_MODEL, remote=False)
@click.option("--scores", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--mode", type=click.Choice(["divergence", "dataset"]), default="divergence", show_default=True)
@click.option("--threshold", type=float, default=0.75, show_default=True, help="The score a memorised window has at least.")
@click.option("--low", type=float, default=0.0, show_default=True, help="dataset: the score an unmemorised window has at most.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Pairs (JSONL, the schema of nnct patch).")
def pairs(scores, mode, threshold, low, out, **options):
    """Prompt pairs from memorised windows: where greedy decoding leaves the text
    (divergence), or memorised against similar unmemorised windows (dataset)."""
    from ..methods import memorization as mem

    cfg = mem.PairsConfig(scores=scores, out=out, mode=mode, threshold=threshold, low=low, **settings(options))
    with guarded():
        made = mem.pairs(cfg)
    _skipped(made.skipped)
    click.echo(f"wrote {out}: {len(made.pairs)} pairs from {made.windows} windows scoring >= {threshold}"
               f" ({len(made.skipped)} pairs or lines skipped)")


@main.group()
def circuit():
    """Edge attribution (EAP-IG) circuits: find one, verify it."""


@circuit.command("find")
@execution(batch=False)
@click.option("--pairs", required=True, type=click.Path(exists=True, dir_okay=False), help="Prompt pairs (JSONL).")
@click.option("--ig-steps", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--target", type=float, default=0.85, show_default=True, help="The faithfulness the minimal circuit reaches.")
@click.option("--max-pairs", type=click.IntRange(min=1), default=None)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The circuit file (FILE.nc).")
@click.option("--readout", default="logit_diff", show_default=True,
              help="M, the readout scored and kept: logit_diff, prob, logprob, logit, kl, prob_any (docs/method.md).")
@QUIET
def find(pairs, ig_steps, target, max_pairs, out, readout, quiet, **options):
    """Score every edge by EAP and EAP-IG over the pairs, then find the smallest top-n
    circuit whose faithfulness reaches the target (pruned to the edges on a path from the
    embedding to the logits), and MIB's CPR and CMD over its circuit sizes."""
    from ..methods import circuit as lib

    if Path(out).suffix != ".nc":
        fail(f"--out {out}: the circuit file is NetCDF, name it *.nc")
    cfg = lib.FindConfig(pairs=pairs, out=out, ig_steps=ig_steps, target=target, max_pairs=max_pairs, readout=readout,
                         **settings(options))
    with guarded("nothing was written: run the same command again"):
        found = lib.find(cfg, say=_say(quiet), on_retry=Bar(True).retry)
    _skipped(found.skipped)
    a = found.dataset.attrs
    size = (f"minimal circuit {a['minimal_edges']} of {a['total_edges']} edges"
            f" ({100 * a['minimal_edges'] / a['total_edges']:.1f}%; top {a['minimal_edges_selected']} before pruning),"
            f" faithfulness {a['faithfulness']:.3f}"
            if a["minimal_edges_selected"] else f"no circuit reached faithfulness {target}")
    click.echo(f"wrote {out}: {a['n_pairs']} pairs, M clean {a['m_clean']:.3f}, corrupt {a['m_corrupt']:.3f}; {size};"
               f" MIB CPR {a['cpr']:.3f}, CMD {a['cmd']:.3f}")


@circuit.command("verify")
@click.argument("circuit_path", metavar="CIRCUIT", type=click.Path(exists=True, dir_okay=False))
@execution(model=None, model_help=STORED_MODEL, batch=False)
@click.option("--pairs", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--edges", "n_edges", type=click.IntRange(min=1), default=None,
              help="The circuit's top N edges, before pruning [default: the file's minimal circuit].")
@click.option("--random", "n_random", type=click.IntRange(min=0), default=20, show_default=True,
              help="Random circuits of the circuit's size after pruning.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-pairs", type=click.IntRange(min=1), default=None)
@click.option("--json", "json_out", required=True, type=click.Path(dir_okay=False))
@click.option("--readout", default=None, help="M [default: the circuit file's readout].")
def verify(circuit_path, pairs, n_edges, n_random, seed, max_pairs, json_out, readout, **options):
    """Faithfulness of CIRCUIT's top edges (pruned) on these pairs, beside random circuits of
    the same size, over a grid of sizes, and MIB's CPR and CMD (the model is the circuit
    file's unless --model says)."""
    from ..methods import circuit as lib

    cfg = lib.VerifyConfig(circuit=circuit_path, pairs=pairs, json_out=json_out, edges=n_edges, random=n_random, seed=seed,
                           max_pairs=max_pairs, readout=readout, **settings(options))
    with guarded("nothing was written: run the same command again"):
        result = lib.verify(cfg, say=click.echo, on_retry=Bar(True).retry)
    _skipped(result["skipped"])
    ci = result["random_faithfulness_ci"]
    rand = f"; random circuits {result['random_faithfulness_mean']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    click.echo(f"wrote {json_out}: {result['edges']} of {result['total_edges']} edges (top {result['edges_selected']}"
               f" before pruning), faithfulness {result['faithfulness']:.3f}{rand}; MIB CPR {result['cpr']:.3f},"
               f" CMD {result['cmd']:.3f}")
