"""Write the subject-substitution pairs of the heads study as prompt pairs (`nnct patch`'s
schema), for commands that read pairs (`patch --path`, `circuit find`).

    python experiments/substitution_pairs.py experiments/data/substitution_study.jsonl \\
        experiments/data/substitution_pairs.jsonl --limit 30

Per record with a `subj_cf` (`add_substitutes.py`): clean = `prompt_wo_ctx`, corrupt = the
same prompt with the subject's first occurrence replaced by `subj_cf` (as `trace
--corruption substitute` replaces it), target = `obj`, alt = `obj_cf[0]` (the answers the
heads study traced). Substitutes were chosen for an equal token count under SmolLM2's
tokenizer; the command that reads the pairs checks it again.
"""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@click.argument("dest", type=click.Path(dir_okay=False))
@click.option("--limit", default=30, show_default=True, help="The first N records with a substitute.")
def main(source, dest, limit):
    kept = 0
    with open(source, encoding="utf-8") as src, open(dest, "w", encoding="utf-8") as out:
        for text in src:
            record = json.loads(text)
            if kept >= limit or not record.get("subj_cf") or not record.get("obj_cf"):
                continue
            prompt = record["prompt_wo_ctx"]
            start = prompt.index(record["subj"])
            corrupt = prompt[:start] + record["subj_cf"] + prompt[start + len(record["subj"]):]
            pair = {"id": record["id"], "clean": prompt, "corrupt": corrupt, "target": record["obj"],
                    "alt": record["obj_cf"][0]}
            out.write(json.dumps(pair, ensure_ascii=False) + "\n")
            kept += 1
    click.echo(f"wrote {kept} pairs to {dest}")


if __name__ == "__main__":
    main()
