"""The commands that run a model: `trace` (records), `patch` (prompt pairs; `--path`: path
patching), `attribute` (attribution patching of either), `ablate` (zero or mean ablation of
either), `answers`.

The cube-filling commands share their options where they apply (what to restore, how, where
the model runs, where the cube goes); each builds a `RunConfig` and hands it to
`methods.run.execute`.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import NnctError
from .app import BOOL01, Bar, fail, guarded, main, open_cube, run_and_report
from .options import QUIET, RESUME, execution, settings

OUT_HELP = "The cube to write (FILE.nc). Required: this or --output-dir."


def _shared(f):
    """The options of every cube-filling command: the shared ones (`options`) and their own."""
    options = [
        execution(),
        click.option("--out", "out", type=click.Path(), help=OUT_HELP),
        click.option("--output-dir", "--output_dir", "output_dir", type=click.Path(),
                     help="Write DIR/effects.nc instead of --out."),
        click.option("--components", default="hidden,mlp,attn", show_default=True,
                     help="Comma list of hidden, mlp, attn, head, head_all_pos, hidden-sever-mlp, hidden-sever-attn."),
        click.option("--window", default=10, show_default=True, type=int, help="Layer window for mlp/attn/head restoration."),
        click.option("--reverse-patching", "--reverse_patching", "reverse", type=BOOL01, is_flag=False, flag_value="1",
                     default="0", show_default=True, help="Noising: write corrupted states into clean runs (flag, or 0/1)."),
        click.option("--answer", type=click.Choice(["first", "full"]), default="first", show_default=True,
                     help="An answer's first token, or all its tokens (teacher-forced product)."),
        click.option("--readout", "readout", default=None,
                     help="Extra readouts stored beside p and the logits, comma-separated: logprob, rank, kl, prob_any"
                          " (`--metric NAME` reads them)."),
        click.option("--max-examples", "--max-datapoints", "--max_datapoints", "max_examples", type=int, default=None,
                     help="Trace only the first N records (pairs) of the data set."),
        click.option("--shard", default=None, help="i/n: only records i, i+n, ... (0-based), for `nnct merge` to join."),
        click.option("--request-cells", default=10000, show_default=True, type=int,
                     help="Remote: cells per request (whole examples, at least one per request)."),
        click.option("--no-wait", "no_wait", is_flag=True, help="Remote: submit the requests and exit; `nnct remote collect` later."),
        RESUME,
        QUIET,
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _config(method: str, out, output_dir, reverse, no_wait, options, out_required=True):
    from ..methods import run

    if out and output_dir:
        fail("give one of --out FILE.nc and --output-dir DIR, not both")
    if out_required and not (out or output_dir):
        fail("give --out FILE.nc or --output-dir DIR: where the cube goes")
    out = out or (str(Path(output_dir) / "effects.nc") if output_dir else None)
    shared = settings(options)
    return run.RunConfig(out=out, method=method, reverse=reverse == "1", wait=not no_wait, **shared, **options)


def _use_definition(ctx, param, value):
    """Eager: the definition's settings become the defaults of the options that follow."""
    from ..methods import definition

    if value is None:
        return None
    try:
        d = definition.load(value)
    except NnctError as exc:
        fail(str(exc))
    defaults = {k: ("1" if v else "0") if isinstance(v, bool) else v for k, v in d.trace.items()}
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return d.label


def _with_overrides(label: str, values: dict) -> str:
    """The definition's label, plus the settings of it that the command line changed: a cube
    traced with `--samples 3` must not pass for the definition's own. Noise settings are left
    out under another corruption, which does not read them."""
    from click.core import ParameterSource

    from ..methods.definition import TRACE_KEYS
    from ..methods.run import NOISE_KEYS

    ctx = click.get_current_context()
    read = [k for k in TRACE_KEYS if values["corruption"] == "noise" or k not in NOISE_KEYS]
    changed = [f"{k}={values[k]}" for k in read if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE]
    return f"{label} ({', '.join(changed)})" if changed else label


def _records(data_required: bool):
    """The options of the commands that read records (trace, attribute)."""
    options = [
        click.option("--definition", type=click.Path(dir_okay=False), is_eager=True, callback=_use_definition,
                     help="An experiment definition (experiments/*.toml): its settings become the defaults; options override"
                          " them."),
        click.option("--data", "--data_path", "data", required=data_required, type=click.Path(),
                     help="JSONL records (docs/method.md schema)."),
        click.option("--experiment", "--experiment-type", "--experiment_type", "experiment", default="subject",
                     show_default=True, help="subject (1), object (2), relation (3) or subject-noctx (0)."),
        click.option("--corruption", type=click.Choice(["noise", "substitute"]), default="noise", show_default=True,
                     help="Gaussian noise on the span (ROME), or another subject/object of the same length substituted."),
        click.option("--prompt-format", "--prompt_format", "prompt_format", default=None,
                     help="Prompt template with {context}, {prompt}, {question} [default: the experiment's own]."),
        click.option("--samples", default=10, show_default=True, type=int, help="Noise samples S per example."),
        click.option("--noise-level", "--noise_level", "noise_level", default="s3", show_default=True,
                     help="A float, or sK = K x std of the span tokens' input embeddings."),
        click.option("--seed", default=0, show_default=True, type=int, help="Seed of the noise."),
        click.option("--max-cf", "--max_cf", "max_cf", default=1, show_default=True, type=int,
                     help="Counterfactual variants per record."),
        click.option("--replace", type=BOOL01, is_flag=False, flag_value="1", default="0", show_default=True,
                     help="Replace the span's embeddings by the noise instead of adding it (flag, or 0/1)."),
    ]

    def decorate(f):
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


@main.command()
@_records(data_required=True)
@_shared
def trace(output_dir, out, replace, reverse, quiet, no_wait, **options):
    """Trace a data set of records and write its effect cube (--out FILE.nc or --output-dir
    DIR is required)."""
    from ..methods import run

    if options["definition"]:
        options["definition"] = _with_overrides(options["definition"], dict(options, replace=replace, reverse=reverse))
    cfg = _config("trace", out, output_dir, reverse, no_wait, dict(options, replace=replace == "1"))
    run_and_report(lambda bar: run.execute(cfg, progress=bar), cfg.out, quiet, "rerun with --resume")


@main.command()
@click.option("--pairs", "pairs", type=click.Path(), help="JSONL prompt pairs (as `patch` reads them), instead of --data.")
@click.option("--graddrop", is_flag=True,
              help="AtP*: average the estimates of L backward passes, each with one layer's residual contribution"
                   " dropped (L times the backward work; docs/method.md).")
@click.option("--verify-top", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also patch exactly the K cells per component the estimate ranks highest (plus --verify-sample"
                   " more at random), into the same cube: p_restored holds them, NaN elsewhere.")
@click.option("--verify-sample", type=click.IntRange(min=0), default=None,
              help="Cells per component drawn at random from the rest for exact patching, to measure what the"
                   " screen misses  [default: as many as --verify-top]")
@click.option("--compare", "compare_with", type=click.Path(exists=True, dir_okay=False),
              help="An exact cube of the same examples: print the agreement and write it to OUT.agreement.json.")
@_records(data_required=False)
@_shared
def attribute(pairs, graddrop, verify_top, verify_sample, compare_with, output_dir, out, replace, reverse, quiet, no_wait,
              **options):
    """Attribution patching (AtP): every cell's indirect effect estimated from one forward and
    one backward pass, for records (--data, as `trace`) or prompt pairs (--pairs, as
    `patch`); the cube holds ie_atp (and ie_atp_logit) beside p_clean and p_corrupt."""
    from ..methods import run

    if compare_with and not (out or output_dir):
        fail("--compare writes OUT.agreement.json beside the cube: give --out")
    if compare_with and no_wait:
        fail("--compare needs the cube now: run without --no-wait, or compare after `nnct remote collect`")
    if bool(pairs) == bool(options["data"]):
        fail("give --data FILE.jsonl (records, as trace) or --pairs FILE.jsonl (prompt pairs, as patch)")
    if options["definition"]:
        options["definition"] = _with_overrides(options["definition"], dict(options, replace=replace, reverse=reverse))
    options = dict(options, replace=replace == "1", estimate="atp*" if graddrop else "atp", data=pairs or options["data"],
                   verify_top=verify_top, verify_sample=verify_sample)
    cfg = _config("patch" if pairs else "trace", out, output_dir, reverse, no_wait, options)
    summary = run_and_report(lambda bar: run.execute(cfg, progress=bar), cfg.out, quiet, "rerun with --resume")
    if (verify_top or verify_sample) and summary is not None:
        from ..analysis import agreement

        click.echo(agreement.verified_table(agreement.verified(summary.cube)))
    if compare_with:
        _agreement(cfg.out, compare_with)


@main.command()
@click.option("--pairs", "pairs", type=click.Path(), help="JSONL prompt pairs (their clean prompts), instead of --data.")
@click.option("--op", "operation", type=click.Choice(["zero", "mean"]), default="zero", show_default=True,
              help="Zero ablation, or the site's mean over --reference prompts.")
@click.option("--reference", type=click.Path(dir_okay=False),
              help="With --op mean: JSONL reference prompts (field `prompt`); the mean is taken at each position when"
                   " they all have the prompt's length, else over all their positions.")
@_records(data_required=False)
@_shared
def ablate(pairs, operation, reference, output_dir, out, replace, reverse, quiet, no_wait, **options):
    """Ablation: every (token, layer, component) cell of the clean prompt set to zero or to a
    reference mean, one at a time, exactly; the cube holds p_ablated beside p_clean (effect:
    m(ablated) - m(clean)), for records (--data) or prompt pairs (--pairs)."""
    from ..methods import run

    if bool(pairs) == bool(options["data"]):
        fail("give --data FILE.jsonl (records, as trace) or --pairs FILE.jsonl (prompt pairs, as patch)")
    if reverse == "1":
        fail("--reverse-patching: an ablation always writes into the clean run")
    options = dict(options, replace=False, data=pairs or options["data"], operation=operation, reference=reference)
    cfg = _config("patch" if pairs else "trace", out, output_dir, reverse, no_wait, options)
    run_and_report(lambda bar: run.execute(cfg, progress=bar), cfg.out, quiet, "rerun with --resume")


def _agreement(atp_path: str, exact_path: str) -> None:
    from ..analysis import agreement
    from ..results import files

    try:
        found = agreement.compare(open_cube(atp_path), open_cube(exact_path))
    except NnctError as exc:
        fail(f"--compare {exact_path}: {exc}")
    path = str(Path(atp_path).with_suffix("")) + ".agreement.json"
    files.write_json(path, {"atp": str(atp_path), "exact": str(exact_path), **found})
    click.echo(agreement.table(found))
    click.echo(f"wrote {path}")


@main.command()
@click.option("--pairs", "pairs", type=click.Path(), help="JSONL prompt pairs: id (optional), clean, corrupt, target, alt.")
@click.option("--clean", help="The clean prompt of one pair (with --corrupt, --target, --alt).")
@click.option("--corrupt", help="The corrupted prompt: the clean one with a few tokens changed.")
@click.option("--target", help="The answer whose value is traced (its first token of ' ' + answer).")
@click.option("--alt", help="The competing answer.")
@click.option("--path", "path", is_flag=True,
              help="Path patching instead: each head's and MLP's effect only through --receivers (docs/method.md).")
@click.option("--receivers", default="logits", show_default=True,
              help="With --path: logits, or comma-separated L<layer>H<head>[.q|.k|.v] and mlp<layer>, e.g. L23H4,mlp12.")
@click.option("--denoise", is_flag=True, help="With --path: patch the clean contributions into the corrupt run.")
@_shared
def patch(pairs, clean, corrupt, target, alt, path, receivers, denoise, output_dir, out, reverse, quiet, no_wait, **options):
    """Activation patching between two prompts: the clean value of every cell written into
    the corrupted run (--reverse-patching: the corrupted value into the clean run). With
    --pairs, --out FILE.nc or --output-dir DIR is required; one pair given inline is
    printed, and written where --out says. --path: path patching (--receivers, --denoise)."""
    from ..methods import run

    inline = [clean, corrupt, target, alt]
    if pairs and any(v is not None for v in inline):
        fail("give --pairs FILE or --clean/--corrupt/--target/--alt, not both")
    if not pairs and None in inline:
        fail("give --pairs FILE.jsonl, or all of --clean, --corrupt, --target and --alt")
    items = None if pairs else [{"id": "inline", "clean": clean, "corrupt": corrupt, "target": target, "alt": alt}]
    if path:
        return _path(pairs, items, out, output_dir, dict(receivers=receivers, denoise=denoise,
                                                         readouts=options.pop("readout")), quiet, options)
    if receivers != "logits" or denoise:
        fail("--receivers and --denoise belong to --path")
    cfg = _config("patch", out, output_dir, reverse, no_wait, dict(options, data=pairs), out_required=bool(pairs))
    run_and_report(lambda bar: run.execute(cfg, progress=bar, items=items), cfg.out, quiet, "rerun with --resume")


def _path(pairs, items, out, output_dir, chosen: dict, quiet: bool, options: dict) -> None:
    """`patch --path`: path patching (`methods.path`), its strongest senders printed."""
    from click.core import ParameterSource

    from ..analysis import paths as view
    from ..methods import path as lib
    from .circuits import _say, _skipped

    ctx = click.get_current_context()
    unused = {"components": "--components", "window": "--window", "reverse": "--reverse-patching", "answer": "--answer",
              "shard": "--shard", "request_cells": "--request-cells", "no_wait": "--no-wait", "resume": "--resume"}
    given = [flag for k, flag in unused.items() if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE]
    if given:
        fail(f"{', '.join(given)}: not used by --path (noising the clean run; --denoise for the corrupt one)")
    if out and output_dir:
        fail("give one of --out FILE.nc and --output-dir DIR, not both")
    out = out or (str(Path(output_dir) / "paths.nc") if output_dir else None)
    if pairs and not out:
        fail("give --out FILE.nc or --output-dir DIR: where the path-patching file goes")
    cfg = lib.PathConfig(pairs=pairs, out=out, max_pairs=options.pop("max_examples"), **chosen,
                         **settings(options))
    with guarded("nothing was written: run the same command again"):
        found = lib.run(cfg, items=items, say=_say(quiet), on_retry=Bar(True).retry)
    _skipped(found.skipped)
    click.echo(view.table(found.dataset))
    if out:
        click.echo(f"wrote {out}")


@main.command()
@execution(batch=False, remote=False)
@click.option("--data", "--data_path", "data", required=True, type=click.Path(), help="JSONL records (docs/method.md schema).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="The table to write (FILE.csv).")
@click.option("--prompt-format", "--prompt_format", "prompt_format", default="C: {context} {prompt}", show_default=True,
              help="The prompt of the context conditions.")
@click.option("--max-cf", "--max_cf", "max_cf", type=int, default=None, help="Counterfactual passages per record [default: all].")
@click.option("--max-examples", "--max-datapoints", "--max_datapoints", "max_examples", type=int, default=None,
              help="Only the first N records of the data set.")
def answers(data, out, prompt_format, max_cf, max_examples, **options):
    """Which answer wins per record with no passage, the fact's passage and each counterfactual one."""
    from ..methods import answers as answers_lib
    from ..methods import pipeline
    from ..results import files

    cfg = pipeline.Execution(**settings(options))

    def table(session):
        result = answers_lib.compare(session.adapter, data, prompt_format, max_cf, max_examples)
        df = answers_lib.frame(result)
        with files.atomic(out) as tmp:
            df.to_csv(tmp, index=False, float_format="%.6g")
        return result, df

    with guarded():
        result, df = pipeline.run(cfg, table, outputs=(out,))
    for problem in result.skipped:
        click.echo(f"skipped {problem}", err=True)
    click.echo(answers_lib.table(df))
    click.echo(f"wrote {out}: {len(df)} prompts from {df.record_id.nunique()} records ({len(result.skipped)} skipped)")


@main.command()
@execution(batch=False)
@click.option("--data", "--data_path", "data", required=True, type=click.Path(), help="JSONL records (docs/method.md schema).")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="The edits file to write (FILE.nc).")
@click.option("--new-object", default="cf1", show_default=True,
              help="cf1: each record's first counterfactual object; or the name of a text field of the records.")
@click.option("--layer", default="auto", show_default=True,
              help="The layer whose MLP is edited, or auto: the MLP's peak AIE at the last subject token"
                   " (of --from-cube, else of a trace of these records made first).")
@click.option("--from-cube", type=click.Path(exists=True, dir_okay=False), help="A cube of these facts for --layer auto.")
@click.option("--no-covariance", is_flag=True, help="C = identity instead of the keys' second moment over a corpus.")
@click.option("--corpus-tokens", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Tokens of CPython's documentation C is estimated from (cached per model and layer).")
@click.option("--seed", type=int, default=0, show_default=True, help="Of the context prefixes the model writes.")
@click.option("--max-examples", "--max-datapoints", "max_examples", type=int, default=None, help="Only the first N records.")
@click.option("--save", "save_dir", type=click.Path(file_okay=False),
              help="Also save the model with every edit in its weights (each computed on the unedited model,"
                   " but for --sequential batches) here.")
@click.option("--method", type=click.Choice(["rome", "memit", "alphaedit"]), default="rome", show_default=True,
              help="rome: one rank-one update per fact at --layer; memit, alphaedit: all facts at once over --layers"
                   " (local models only).")
@click.option("--layers", "layer_range", default=None,
              help="memit/alphaedit: the layers A-B written [default: the 5 ending at --layer (or auto), from 0].")
@click.option("--batch-size", "batch_size", type=int, default=None,
              help="memit/alphaedit: facts per batch [default: all in one].")
@click.option("--sequential", is_flag=True,
              help="Each batch (rome: each edit) computed on the model as the earlier ones left it (else on the original);"
                   " rome's edits are then evaluated together, as the batch methods' are.")
@click.option("--unedited", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSONL records of facts not to edit: specificity's neighbours (same relation), and when edits are"
                   " evaluated together retention's facts (the share of those the model knew that it still knows)"
                   " [default: the records of --data not edited].")
@click.option("--update-weight", "update_weight", type=float, default=None,
              help="memit/alphaedit: lambda, the weight of C against the new keys [default: 5000 for the embedded model"
                   " (chosen on its development facts), 15000 for other Llama-like models (AlphaEdit's Llama3-8B), else"
                   " 20000 (GPT-2 XL's)].")
@click.option("--null-space-energy", "null_space_energy", type=float, default=None,
              help="alphaedit: the null space is the directions of least variance holding at most this share of C's"
                   " trace (e.g. 0.01), instead of AlphaEdit's eigenvalue threshold 2e-2, whose scale is its models'.")
@click.option("--evaluate", "evaluate", type=int, default=None,
              help="Edits evaluated together (batch methods, rome --sequential): only N of them, drawn with --seed; every"
                   " edit stays in the weights [default: all].")
@RESUME
@QUIET
def edit(data, out, new_object, layer, from_cube, no_covariance, corpus_tokens, seed, max_examples, save_dir, method,
         layer_range, batch_size, sequential, unedited, update_weight, null_space_energy, evaluate, resume, quiet,
         **options):
    """ROME: rewrite each record's fact (obj -> the new object) with a rank-one update of one
    layer's MLP, evaluate each edit (efficacy, paraphrase, specificity, fluency) and write
    the edits (left/right vectors, layer, metrics) to OUT. MEMIT and AlphaEdit (--method):
    the facts in batches over a range of layers, evaluated with every batch applied."""
    from ..analysis import editing
    from ..methods import edit as edit_lib

    if layer != "auto" and not layer.isdigit():
        fail(f"--layer {layer}: a layer number or auto")
    if Path(out).suffix != ".nc":
        fail(f"--out {out}: the edits file is NetCDF, name it *.nc")
    cfg = edit_lib.EditConfig(data=data, out=out, new_object=new_object, layer=None if layer == "auto" else int(layer),
                              from_cube=from_cube, covariance=not no_covariance, corpus_tokens=corpus_tokens, seed=seed,
                              max_examples=max_examples, save=save_dir, method=method, layers=layer_range,
                              batch_size=batch_size, sequential=sequential, unedited=unedited, evaluate=evaluate,
                              update_weight=update_weight, null_space_energy=null_space_energy, resume=resume,
                              **settings(options))
    with guarded(f"finished edits are kept in {out}.partial: add --resume to complete the run"):
        result = edit_lib.run(cfg, say=(lambda text: None) if quiet else click.echo, on_retry=Bar(True).retry)
    for problem in result.skipped:
        click.echo(f"skipped {problem}", err=True)
    if not result.edits:
        fail("no record could be edited")
    click.echo(editing.table(result.edits, result.attrs))
    click.echo(f"wrote {out}" + (f" and the edited model to {save_dir}" if save_dir else ""))
