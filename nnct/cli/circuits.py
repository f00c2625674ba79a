"""`nnct memorization score|pairs` and `nnct circuit find|verify`."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import NnctError
from .app import REMOTE_OPTIONS, fail, main, remote_setting


def _skipped(problems) -> None:
    for problem in problems:
        click.echo(f"skipped {problem}", err=True)


@main.group()
def memorization():
    """What a model reproduces verbatim, and prompt pairs where it stops."""


@memorization.command("score")
@click.option("--model", default="smollm2-135m", show_default=True)
@click.option("--texts", required=True, type=click.Path(exists=True), help="A .txt file, a directory of them, or JSONL with id and text.")
@click.option("--prefix", type=click.IntRange(min=1), default=50, show_default=True, help="P: the tokens given.")
@click.option("--continuation", type=click.IntRange(min=1), default=50, show_default=True, help="N: the tokens scored.")
@click.option("--stride", type=click.IntRange(min=1), default=None, help="Tokens between windows' starts [default: P + N].")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Scores (JSONL); a rerun resumes it.")
@click.option("-q", "--quiet", is_flag=True)
def score(model, texts, prefix, continuation, stride, batch_size, out, quiet):
    """Score every window of P + N tokens: the share of its last N tokens that greedy
    decoding reproduces after its first P."""
    from ..methods import memorization as mem
    from ..model import load
    from ..results import files

    try:
        with files.locked(out):
            run = mem.score(load(model), texts, out, prefix, continuation, stride, batch_size,
                            say=(lambda text: None) if quiet else click.echo)
    except NnctError as exc:
        fail(str(exc))
    _skipped(run.problems)
    scores = [s.score for s in run.scores]
    if not scores:
        fail("no window to score")
    full = sum(s == 1.0 for s in scores)
    click.echo(f"wrote {out}: {len(scores)} windows ({run.resumed} from before), mean score {sum(scores) / len(scores):.3f},"
               f" {full} reproduced whole, {len(run.problems)} texts or lines skipped")


@memorization.command("pairs")
@click.option("--scores", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--mode", type=click.Choice(["divergence", "dataset"]), default="divergence", show_default=True)
@click.option("--threshold", type=float, default=0.75, show_default=True, help="The score a memorised window has at least.")
@click.option("--low", type=float, default=0.0, show_default=True, help="dataset: the score an unmemorised window has at most.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Pairs (JSONL, the schema of nnct patch).")
def pairs(scores, mode, threshold, low, out):
    """Prompt pairs from memorised windows: where greedy decoding leaves the text
    (divergence), or memorised against similar unmemorised windows (dataset)."""
    from ..methods import memorization as mem
    from ..model import load

    try:
        read, problems = mem.read_scores(scores)
        if not read:
            fail(f"{scores}: no scored window")
        models = {s.model for s in read}
        if len(models) > 1:
            fail(f"{scores}: windows of several models ({', '.join(sorted(models))})")
        mem.one_shape(read, scores)
        adapter = load(models.pop())
        made = (mem.divergence_pairs(adapter, read, threshold) if mode == "divergence"
                else mem.dataset_pairs(adapter, read, threshold, low))
        good, bad = mem.checked(adapter, made, scores)
        mem.write_pairs(good, out, adapter.tokenizer)
    except NnctError as exc:
        fail(str(exc))
    _skipped(problems + bad)
    chosen = sum(s.score >= threshold for s in read)
    click.echo(f"wrote {out}: {len(good)} pairs from {chosen} windows scoring >= {threshold} ({len(bad)} pairs skipped)")


@main.group()
def circuit():
    """Edge attribution (EAP-IG) circuits: find one, verify it."""


@circuit.command("find")
@click.option("--model", default="smollm2-135m", show_default=True)
@click.option("--pairs", required=True, type=click.Path(exists=True, dir_okay=False), help="Prompt pairs (JSONL).")
@click.option("--ig-steps", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--target", type=float, default=0.85, show_default=True, help="The faithfulness the minimal circuit reaches.")
@click.option("--max-pairs", type=click.IntRange(min=1), default=None)
@REMOTE_OPTIONS[0]
@REMOTE_OPTIONS[1]
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The circuit file (FILE.nc).")
@click.option("-q", "--quiet", is_flag=True)
def find(model, pairs, ig_steps, target, max_pairs, remote_, ndif_host, out, quiet):
    """Score every edge by EAP and EAP-IG over the pairs, then find the smallest top-n
    circuit whose faithfulness reaches the target."""
    from ..methods import circuit as lib
    from ..model import load
    from ..results import circuit as circuit_file
    from ..exec import remote
    from ..results import files

    if Path(out).suffix != ".nc":
        fail(f"--out {out}: the circuit file is NetCDF, name it *.nc")
    where = remote_setting(remote_, ndif_host)
    try:
        target_ = where if where in (None, remote.LOCAL) else remote.server(where)
        with files.locked(out):
            found = lib.find(load(model, weights=target_ is None or target_ == remote.LOCAL), pairs, ig_steps, target,
                             max_pairs, remote=target_, say=(lambda text: None) if quiet else click.echo)
            circuit_file.write(found.dataset, out)
    except NnctError as exc:
        fail(str(exc))
    _skipped(found.skipped)
    a = found.dataset.attrs
    size = (f"minimal circuit {a['minimal_edges']} of {a['total_edges']} edges"
            f" ({100 * a['minimal_edges'] / a['total_edges']:.1f}%), faithfulness {a['faithfulness']:.3f}"
            if a["minimal_edges"] else f"no circuit reached faithfulness {target}")
    click.echo(f"wrote {out}: {a['n_pairs']} pairs, M clean {a['m_clean']:.3f}, corrupt {a['m_corrupt']:.3f}; {size}")


@circuit.command("verify")
@click.argument("circuit_path", metavar="CIRCUIT", type=click.Path(exists=True, dir_okay=False))
@click.option("--pairs", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--edges", "n_edges", type=click.IntRange(min=1), default=None, help="Circuit size [default: the file's minimal one].")
@click.option("--random", "n_random", type=click.IntRange(min=0), default=20, show_default=True, help="Random circuits of that size.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-pairs", type=click.IntRange(min=1), default=None)
@click.option("--json", "json_out", required=True, type=click.Path(dir_okay=False))
def verify(circuit_path, pairs, n_edges, n_random, seed, max_pairs, json_out):
    """Faithfulness of CIRCUIT's top edges on these pairs, beside random circuits of the same
    size and over a grid of sizes (the model is the circuit file's)."""
    from ..methods import circuit as lib
    from ..model import load
    from ..results import circuit as circuit_file
    from ..results import files

    if not circuit_file.is_circuit_file(circuit_path):
        fail(f"{circuit_path}: not a circuit file (nnct circuit find writes one)")
    try:
        ds = circuit_file.read(circuit_path)
        result = lib.verify(load(ds.attrs["model"]), ds, pairs, n_edges, n_random, seed, max_pairs, say=click.echo)
        files.write_json(json_out, result)
    except NnctError as exc:
        fail(str(exc))
    _skipped(result["skipped"])
    ci = result["random_faithfulness_ci"]
    rand = f"; random circuits {result['random_faithfulness_mean']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    click.echo(f"wrote {json_out}: {result['edges']} of {result['total_edges']} edges, faithfulness"
               f" {result['faithfulness']:.3f}{rand}")
