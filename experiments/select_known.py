"""Pick the records a model knows: its clean top-1 token after `prompt_wo_ctx` is the
answer's first token (ROME's "known" filter), and write them as a smaller JSONL data set.

    python experiments/select_known.py ../shared/data/known_facts.jsonl experiments/data/known_smollm2.jsonl --limit 60

Lines are copied verbatim, so the sample keeps the source's schema and ids.
"""

from __future__ import annotations

import click
import torch

from nnct.model import load
from nnct.inputs import spans
from nnct.inputs.records import parse_record


@click.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@click.argument("dest", type=click.Path(dir_okay=False))
@click.option("--model", default="smollm2-135m", show_default=True)
@click.option("--limit", default=60, show_default=True, help="Stop after this many known records.")
def main(source, dest, model, limit):
    adapter = load(model)
    kept = seen = 0
    with open(source, encoding="utf-8") as src, open(dest, "w", encoding="utf-8") as out:
        for line, text in enumerate(src, start=1):
            if kept >= limit:
                break
            record = parse_record(text, source, line)
            seen += 1
            ids = torch.tensor([spans.tokenize(adapter.tokenizer, record.prompt_wo_ctx).ids])
            with torch.no_grad():
                top = int(adapter.hf(ids, logits_to_keep=1).logits[0, -1].argmax())
            if top == spans.answer_token(adapter.tokenizer, record.obj):
                out.write(text if text.endswith("\n") else text + "\n")
                kept += 1
    click.echo(f"{dest}: {kept} known records of the first {seen}")


if __name__ == "__main__":
    main()
