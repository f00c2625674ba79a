"""Cases: an example as the model sees it, ready to be traced.

A `Case` is the one object that goes from the inputs to the cube: the prompt's token ids
and their text, each token's segment, the positions to corrupt (the noised span, or the
positions where a prompt pair's two prompts differ), the answers' token ids, the corrupted
prompt's ids for a pair, and where the example came from (its record's position and line).
Noise is not drawn here: its level depends on the whole data set (`methods.run`).
`from_records` and `from_pairs` make the cases of a whole data set, each bad record or
pair reported with its file, line and field and skipped.

A pair whose prompts tokenise to different lengths is reported with both counts and
skipped: position-wise patching cannot align them, and nnct never aligns them silently.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import RecordError, SpanNotFound
from . import pairs, spans
from .pairs import VARIANT
from .prompts import Example, Experiment, examples_for
from .records import Loaded


@dataclass(frozen=True)
class Case:
    example: Example
    ids: tuple[int, ...]
    token_str: tuple[str, ...]
    segments: tuple[str, ...]
    span: tuple[int, ...]  # the corrupted positions, ascending
    answers: tuple[tuple[int, ...], tuple[int, ...]]  # (target, alt) token ids
    corrupt_ids: tuple[int, ...] | None  # a pair's corrupted prompt; None: noise on `span`
    index: int  # the record's position among the data set's records
    line: int  # the record's line in the data file
    spellings: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())  # each answer's spellings' first tokens (`prob_any`)


def make(ex: Example, tokenizer, path: str, line: int, index: int, span_field: str, full_answers: bool = False) -> Case:
    """The case of an example, or a RecordError naming what is wrong with it."""
    tokens = spans.tokenize(tokenizer, ex.prompt)
    fields = ("target", "alt") if ex.variant == VARIANT else ("obj", "obj_cf")
    answers = spans.answer_tokens(tokenizer, ex, path, line, full_answers, fields)
    corrupt_ids = None
    if ex.corrupt_prompt is None:
        try:
            span = spans.span_positions(tokens, ex)
        except SpanNotFound as exc:
            raise RecordError(path, line, span_field, str(exc)) from None
    else:
        corrupt_ids = spans.tokenize(tokenizer, ex.corrupt_prompt).ids
        if len(corrupt_ids) != len(tokens):
            raise RecordError(path, line, "corrupt", f"{len(corrupt_ids)} tokens vs {len(tokens)} in the clean prompt:"
                                                     " position-wise patching needs prompts of the same length")
        span = [i for i, (a, b) in enumerate(zip(tokens.ids, corrupt_ids)) if a != b]
        if not span:
            raise RecordError(path, line, "corrupt", "tokenises exactly as the clean prompt: nothing is corrupted")
    labels = spans.pair_segments(tokens, span) if ex.variant == VARIANT else spans.segments(tokens, ex)
    spelt = ((answers[0][:1], answers[1][:1]) if ex.answer_tokens is not None
             else (spans.spellings(tokenizer, ex.target), spans.spellings(tokenizer, ex.alt)))
    return Case(ex, tokens.ids, tuple(tokenizer.decode([t]) for t in tokens.ids), tuple(labels), tuple(span), answers,
                corrupt_ids, index, line, spelt)


def from_records(loaded: Loaded, exp: Experiment, prompt_format: str, max_cf: int, tokenizer, substitute: bool = False,
                 full_answers: bool = False, max_records: int | None = None) -> tuple[list[Case], list[RecordError], list[int]]:
    """The cases of every record (the first `max_records`), the records skipped with their
    reasons, and each record's line (by position). With `substitute`, each example's
    corrupted prompt is made by substitution (`pairs`, which searches the whole data set,
    so that a shorter run is a prefix of a longer one), else noise goes on its span."""
    records = loaded.items[:max_records] if max_records is not None else loaded.items
    problems, out = list(loaded.problems), []
    for index, record in enumerate(records):
        try:
            made = []
            for ex in examples_for(record, exp, prompt_format, max_cf, loaded.path):
                if substitute:
                    ex = pairs.substitute(ex, exp, record, loaded.items, tokenizer, loaded.path)
                made.append(make(ex, tokenizer, loaded.path, record.line, index, exp.span, full_answers))
        except RecordError as exc:
            problems.append(exc)
            continue
        out.extend(made)
    problems.sort(key=lambda p: p.line)
    return out, problems, [r.line for r in records]


def from_pairs(loaded: Loaded, tokenizer, full_answers: bool = False,
               max_records: int | None = None) -> tuple[list[Case], list[RecordError], list[int]]:
    """The cases of every pair, as `from_records` gives those of records."""
    chosen = loaded.items[:max_records] if max_records is not None else loaded.items
    problems, out = list(loaded.problems), []
    for index, pair in enumerate(chosen):
        try:
            out.append(make(pairs.example(pair), tokenizer, loaded.path, pair.line, index, "corrupt", full_answers))
        except RecordError as exc:
            problems.append(exc)
    problems.sort(key=lambda p: p.line)
    return out, problems, [p.line for p in chosen]
