"""`nnct bench`: the engine against one forward per cell, side by side on one prompt."""

from __future__ import annotations

import click

from .app import guarded, main
from .options import execution, settings


@main.command()
@execution(remote=False)
@click.option("--data", default="experiments/data/known_smollm2.jsonl", show_default=True, type=click.Path(exists=True),
              help="Records whose passages build the prompt.")
@click.option("--tokens", default=25, show_default=True, help="Prompt length (the first record's passage plus others).")
@click.option("--corruption", type=click.Choice(["noise", "prompt"]), default="noise", show_default=True,
              help="noise: ROME's S noise samples, against ROME's loop; prompt: the subject substituted (a pair), against"
                   " one forward per cell as TransformerLens patches.")
@click.option("--op", "operation", type=click.Choice(["copy", "zero", "mean"]), default="copy", show_default=True,
              help="copy: patching under --corruption; zero, mean: `nnct ablate`'s ablation of the clean prompt (mean over"
                   " the prompts of --reference records after the first), against one forward of it per cell.")
@click.option("--reference", default=8, show_default=True, help="With --op mean: records whose prompts make the mean.")
@click.option("--components", default="hidden,mlp,attn", show_default=True)
@click.option("--samples", default=10, show_default=True, help="Noise samples (noise only).")
@click.option("--window", default=10, show_default=True)
@click.option("--plain-cells", default=30, show_default=True, help="Cells the plain loop is timed on.")
@click.option("--passage", type=click.Choice(["first", "last"]), default="first", show_default=True,
              help="Where the traced fact's passage sits among the others (its subject is the span).")
@click.option("--method", type=click.Choice(["exact", "atp", "atp*"]), default="exact", show_default=True,
              help="exact: nnct's engine against one forward per cell; atp (atp*: with GradDrop): attribution patching"
                   " against nnct's engine, with the agreement of its estimates.")
@click.option("--examples", default=1, show_default=True, type=click.IntRange(min=1),
              help="Also trace this many examples of the bench's prompt at once (noise: as many noise draws; prompt: the"
                   " pair that many times), beside one alone (--method exact).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the measurements as JSON.")
def bench(data, tokens, corruption, operation, reference, components, samples, window, plain_cells, passage, method, examples,
          json_out, **options):
    """Time nnct's engine against one forward per cell on one prompt, side by side (--method
    atp or atp*: attribution patching against the engine)."""
    from ..interventions.components import components as parse_components
    from ..methods import bench as bench_lib
    from ..methods import pipeline
    from ..results import files

    cfg = pipeline.Execution(**settings(options))
    if operation != "copy" and method != "exact":
        raise click.UsageError("--op zero|mean: only with --method exact")

    def measure(session):
        if method != "exact":
            result = bench_lib.run_atp(session.adapter, data, tokens, parse_components(components), samples, window,
                                       passage=passage, corruption=corruption, estimate=method)
        else:
            result = bench_lib.run(session.adapter, data, tokens, parse_components(components), samples, window,
                                   cfg.batch_rows, plain_cells, passage=passage, corruption=corruption, op=operation,
                                   reference=reference, examples=examples)
        if json_out:
            files.write_json(json_out, result)
        return result

    with guarded():
        result = pipeline.run(cfg, measure, outputs=(json_out,))
    click.echo(bench_lib.table(result) if method == "exact" else bench_lib.atp_table(result))
