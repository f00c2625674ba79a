"""Which answer wins: the memory study's first question, from clean runs alone.

For each record, one clean forward per condition: `none` (`prompt_wo_ctx`, no passage: the
answer can only come from the weights), `fact` (the record's own passage, which agrees with
memory) and `cf1..cfK` (the passage with the object replaced by `obj_cf[i-1]`: context and
memory disagree). Target and alt answers are docs/method.md's: for `none` and `fact` the target
is `obj` and the alt `obj_cf[0]`; for `cfi` the target is the context's `obj_cf[i-1]` and
the alt the memorised `obj`. The winner is the answer with the higher probability (of its
first token, as everywhere in nnct); `source` says what the winner is: `context` or
`memory` for a counterfactual, `fact` for the fact's passage and for no passage, `other`
when the alt (a counterfactual nobody stated) wins those.

The context conditions are the `object` experiment's examples, so a record whose passage
does not state its object is reported and skipped, as `nnct trace` does.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DataError, RecordError
from ..inputs import spans
from ..inputs.prompts import examples_for, experiment
from ..inputs.records import load_records

COLUMNS = ("record_id", "line", "condition", "target", "alt", "p_target", "p_alt", "winner", "source", "top1", "top1_is",
           "prompt")


@dataclass
class Winners:
    rows: list[dict]
    skipped: list[RecordError]


def _conditions(record, prompt_format: str, max_cf: int | None, path: str):
    bare = examples_for(record, experiment("subject-noctx"), "{prompt}", 0, path)
    with_context = examples_for(record, experiment("object"), prompt_format, len(record.obj_cf) if max_cf is None else max_cf, path)
    return [("none", bare[0])] + [(ex.variant, ex) for ex in with_context]


def _source(condition: str, target_wins: bool) -> str:
    if condition.startswith("cf"):
        return "context" if target_wins else "memory"
    return "fact" if target_wins else "other"


def compare(adapter, data: str, prompt_format: str = "C: {context} {prompt}", max_cf: int | None = None,
            max_examples: int | None = None) -> Winners:
    """The answers table of a data set: a row per (record, condition); `max_cf` None: every counterfactual."""
    from ..exec.engine import Engine, Settings

    engine = Engine(adapter, Settings())
    loaded = load_records(data)
    records = loaded.items[:max_examples] if max_examples is not None else loaded.items
    rows, skipped = [], list(loaded.problems)
    for record in records:
        try:
            made = []
            for condition, ex in _conditions(record, prompt_format, max_cf, loaded.path):
                made.append((condition, ex, spans.answer_tokens(adapter.tokenizer, ex, loaded.path, record.line)))
        except RecordError as exc:
            skipped.append(exc)
            continue
        for condition, ex, ids in made:
            tokens = spans.tokenize(adapter.tokenizer, ex.prompt)
            (p_target, p_alt), top1 = engine.clean(tokens.ids, ids)
            rows.append({
                "record_id": record.id, "line": record.line, "condition": condition, "target": ex.target, "alt": ex.alt,
                "p_target": float(p_target), "p_alt": float(p_alt), "winner": "target" if p_target > p_alt else "alt",
                "source": _source(condition, p_target > p_alt), "top1": adapter.tokenizer.decode([top1]),
                "top1_is": "target" if top1 == ids[0][0] else "alt" if top1 == ids[1][0] else "other", "prompt": ex.prompt,
            })
    if not rows:
        raise DataError(f"{data}: no record could be compared ({len(skipped)} skipped)")
    skipped.sort(key=lambda p: p.line)
    return Winners(rows, skipped)


def frame(answers: Winners):
    import pandas as pd

    return pd.DataFrame(answers.rows, columns=list(COLUMNS))


def table(df) -> str:
    """Per condition group (none, fact, cf): how often the target wins and is the top-1 token."""
    groups = df.assign(group=df.condition.str.replace(r"cf\d+", "cf", regex=True))
    lines = [f"{'condition':10s}{'n':>5s}{'target wins':>13s}{'top-1 target':>14s}{'top-1 alt':>11s}{'mean p_target':>15s}"
             f"{'mean p_alt':>12s}   target is"]
    meaning = {"none": "the memorised object", "fact": "the passage's object (= memory)", "cf": "the counterfactual passage's object"}
    for name in ("none", "fact", "cf"):
        g = groups[groups.group == name]
        if len(g):
            lines.append(f"{name:10s}{len(g):5d}{(g.winner == 'target').mean():13.0%}{(g.top1_is == 'target').mean():14.0%}"
                         f"{(g.top1_is == 'alt').mean():11.0%}{g.p_target.mean():15.3f}{g.p_alt.mean():12.3f}   {meaning[name]}")
    cf = groups[groups.group == "cf"]
    if len(cf):
        lines.append(f"with a counterfactual passage the context wins {(cf.source == 'context').mean():.0%} of {len(cf)} prompts,"
                     f" memory {(cf.source == 'memory').mean():.0%}")
    return "\n".join(lines)
