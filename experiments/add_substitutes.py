"""Write the records that have a substitute subject, with it as `subj_cf`, so that a small
sample keeps the substitutes the whole data set offered (substitution searches the data set
it is given: a sample alone would offer fewer).

    python experiments/add_substitutes.py experiments/data/known_smollm2_all.jsonl \\
        experiments/data/substitution_study.jsonl --limit 40

The substitute is `trace --corruption substitute`'s choice for experiment subject-noctx (a
subject of the same `prop` with another object whose prompt has as many tokens). Lines are
copied with `subj_cf` added, so the sample keeps the source's schema and ids.
"""

from __future__ import annotations

import json

import click

from nnct.errors import RecordError
from nnct.inputs.pairs import substitute
from nnct.inputs.prompts import examples_for, experiment
from nnct.inputs.records import load_records
from nnct.model import load


@click.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@click.argument("dest", type=click.Path(dir_okay=False))
@click.option("--model", default="smollm2-135m", show_default=True)
@click.option("--limit", default=40, show_default=True, help="Stop after this many records with a substitute.")
def main(source, dest, model, limit):
    tokenizer = load(model).tokenizer
    records = load_records(source).items
    exp = experiment("subject-noctx")
    kept = 0
    with open(source, encoding="utf-8") as src, open(dest, "w", encoding="utf-8") as out:
        lines = src.read().splitlines()
        for record in records:
            if kept >= limit:
                break
            ex = examples_for(record, exp, exp.prompt_format, 0, source)[0]
            try:
                corrupt = substitute(ex, exp, record, records, tokenizer, source).corrupt_prompt
            except RecordError:
                continue
            start, end = ex.span[0]
            obj = json.loads(lines[record.line - 1])
            obj["subj_cf"] = corrupt[start:len(corrupt) - (len(ex.prompt) - end)]
            out.write(json.dumps(obj, ensure_ascii=False) + "\n")
            kept += 1
    click.echo(f"{dest}: {kept} records with a substitute subject")


if __name__ == "__main__":
    main()
