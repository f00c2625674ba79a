"""`nnct bench`: the engine against one forward per cell, side by side on one prompt."""

from __future__ import annotations

import click

from ..errors import NnctError
from .app import fail, main, rows


@main.command()
@click.option("--model", default="smollm2-135m", show_default=True)
@click.option("--data", default="experiments/data/known_smollm2.jsonl", show_default=True, type=click.Path(exists=True),
              help="Records whose passages build the prompt.")
@click.option("--tokens", default=25, show_default=True, help="Prompt length (the first record's passage plus others).")
@click.option("--corruption", type=click.Choice(["noise", "prompt"]), default="noise", show_default=True,
              help="noise: ROME's S noise samples, against ROME's loop; prompt: the subject substituted (a pair), against"
                   " one forward per cell as TransformerLens patches.")
@click.option("--components", default="hidden,mlp,attn", show_default=True)
@click.option("--samples", default=10, show_default=True, help="Noise samples (noise only).")
@click.option("--window", default=10, show_default=True)
@click.option("--batch-size", "batch_rows", default="auto", show_default=True)
@click.option("--plain-cells", default=30, show_default=True, help="Cells the plain loop is timed on.")
@click.option("--passage", type=click.Choice(["first", "last"]), default="first", show_default=True,
              help="Where the traced fact's passage sits among the others (its subject is the span).")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
@click.option("--method", type=click.Choice(["exact", "atp", "atp*"]), default="exact", show_default=True,
              help="exact: nnct's engine against one forward per cell; atp (atp*: with GradDrop): attribution patching"
                   " against nnct's engine, with the agreement of its estimates.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Also write the measurements as JSON.")
def bench(model, data, tokens, corruption, components, samples, window, batch_rows, plain_cells, passage, device, dtype,
          method, json_out):
    """Time nnct's engine against one forward per cell on one prompt, side by side (--method
    atp or atp*: attribution patching against the engine)."""
    from ..methods import bench as bench_lib
    from ..interventions.components import components as parse_components
    from ..model import load
    from ..results import files

    try:
        adapter = load(model, device=device, dtype=dtype)
        if method != "exact":
            result = bench_lib.run_atp(adapter, data, tokens, parse_components(components), samples, window,
                                       passage=passage, corruption=corruption, estimate=method)
        else:
            result = bench_lib.run(adapter, data, tokens, parse_components(components), samples, window, rows(batch_rows),
                                   plain_cells, passage=passage, corruption=corruption)
    except NnctError as exc:
        fail(str(exc))
    click.echo(bench_lib.table(result) if method == "exact" else bench_lib.atp_table(result))
    if json_out:
        files.write_json(json_out, result)
