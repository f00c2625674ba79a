"""Examples: the prompt of one (record, variant), the characters to corrupt, the answers.

An `Example` is text: the prompt, the character ranges of its mentions and of the span to
corrupt, the two answers, and, for a prompt pair, the corrupted prompt (`pairs`).

An experiment names the span it corrupts (docs/method.md): `subject` (1), `object` (2) and
`relation` (3) corrupt a part of the context passage; `subject-noctx` (0) corrupts the
subject in `prompt_wo_ctx`, with no passage (ROME). Everything here is on characters;
`spans` maps characters to tokens. Choices the sources leave open, made here once:

- A mention is the first occurrence of its text inside its region (the passage for the
  context experiments, the prompt for subject-noctx), as ROME's `find_token_range` does.
- A counterfactual variant replaces every occurrence of `obj` in the passage, so that the
  passage states one object consistently.
- The relation is every non-space character of the passage that is in no occurrence of
  the subject or the object and is not a passage's closing punctuation.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, replace

from .records import Record
from ..errors import ConfigError, RecordError

CharRange = tuple[int, int]


@dataclass(frozen=True)
class Experiment:
    name: str
    number: int
    span: str  # subject | object | relation
    context: bool
    prompt_format: str


EXPERIMENTS = {
    e.name: e
    for e in (
        Experiment("subject-noctx", 0, "subject", False, "{prompt}"),
        Experiment("subject", 1, "subject", True, "C: {context} {prompt}"),
        Experiment("object", 2, "object", True, "C: {context} {prompt}"),
        Experiment("relation", 3, "relation", True, "C: {context} {prompt}"),
    )
}
EXPERIMENT_NUMBERS = {e.number: e.name for e in EXPERIMENTS.values()}


def experiment(name_or_number: str | int) -> Experiment:
    key = str(name_or_number)
    if key.isdigit() and int(key) in EXPERIMENT_NUMBERS:
        key = EXPERIMENT_NUMBERS[int(key)]
    if key not in EXPERIMENTS:
        known = ", ".join(f"{e.name} ({e.number})" for e in EXPERIMENTS.values())
        raise ConfigError(f"unknown experiment '{name_or_number}'; known: {known}")
    return EXPERIMENTS[key]


@dataclass(frozen=True)
class Example:
    """One traced prompt. Character ranges are half-open, in `prompt`."""

    id: str  # "<record id>/<variant>"
    record_id: str
    variant: str  # fact | cf1..cfK
    prompt: str
    target: str
    alt: str
    span: tuple[CharRange, ...]  # the characters whose tokens are corrupted
    subject: CharRange | None
    object: CharRange | None
    relation: tuple[CharRange, ...]
    context: CharRange | None  # the passage(s), when the prompt has one
    question: CharRange  # the `{prompt}` / `{question}` part
    corrupt_prompt: str | None = None  # a prompt pair's corrupted prompt; None: noise on `span`
    answer_tokens: tuple[int, int] | None = None  # a pair's exact (target, alt) token ids; None: spelled as ROME does


FIELDS = ("context", "prompt", "question")


def render(fmt: str, values: dict[str, str]) -> tuple[str, dict[str, CharRange]]:
    """Fill `fmt` and say where each field's text landed (its first use)."""
    out, where, pos = [], {}, 0
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError as exc:
        raise ConfigError(f"prompt format {fmt!r}: {exc}") from None
    for literal, name, spec, conv in parsed:
        out.append(literal)
        pos += len(literal)
        if name is None:
            continue
        if name not in FIELDS or spec or conv:
            raise ConfigError(f"prompt format {fmt!r}: unknown field {{{name}}}; use {{context}}, {{prompt}}, {{question}}")
        text = values[name]
        where.setdefault(name, (pos, pos + len(text)))
        out.append(text)
        pos += len(text)
    return "".join(out), where


def _find(text: str, needle: str, region: CharRange) -> CharRange | None:
    i = text.find(needle, region[0], region[1])
    return None if i < 0 else (i, i + len(needle))


def _occurrences(text: str, needle: str, region: CharRange) -> list[CharRange]:
    found, i = [], text.find(needle, region[0], region[1])
    while i >= 0:
        found.append((i, i + len(needle)))
        i = text.find(needle, i + len(needle), region[1])
    return found


CLOSING = ".!?;:,"


def _relation(prompt: str, context: CharRange, passages: list[CharRange], excluded: list[CharRange]) -> tuple[CharRange, ...]:
    keep = [False] * len(prompt)
    for i in range(*context):
        keep[i] = not prompt[i].isspace()
    for a, b in excluded:
        for i in range(a, b):
            keep[i] = False
    for a, b in passages:
        end = b
        while end > a and (prompt[end - 1] in CLOSING or prompt[end - 1].isspace()):
            keep[end - 1] = False
            end -= 1
    ranges, start = [], None
    for i, k in enumerate(keep + [False]):
        if k and start is None:
            start = i
        elif not k and start is not None:
            ranges.append((start, i))
            start = None
    return tuple(ranges)


def _in_passage(prompt: str, region, passages, subj: str, target: str, span: str, fail):
    """(subject, object, relation) character spans inside the passage `region` of `prompt`;
    a RecordError (`fail`) when the experiment's span is not there."""
    starts, pos = [], region[0]
    for p in passages:
        starts.append((pos, pos + len(p)))
        pos += len(p) + 1
    subject = _find(prompt, subj, region)
    obj = _find(prompt, target, region)
    if subject is None and span in ("subject", "relation"):
        raise fail("subj", f"'{subj}' not found in the passage")
    if obj is None and span in ("object", "relation"):
        raise fail("obj", f"'{target}' not found in the passage")
    excluded = _occurrences(prompt, subj, region) + _occurrences(prompt, target, region)
    relation = _relation(prompt, region, starts, excluded)
    if span == "relation" and not relation:
        raise fail("passages", "no relation tokens: the passage is only subject and object")
    return subject, obj, relation


def examples_for(record: Record, exp: Experiment, prompt_format: str, max_cf: int, path: str = "") -> list[Example]:
    """The examples of one record: `fact`, then `cf1..cfK` for the context experiments."""

    def fail(field: str, why: str) -> RecordError:
        return RecordError(path, record.line, field, why)

    if exp.context and "{context}" not in prompt_format:
        raise ConfigError(f"experiment '{exp.name}' corrupts the passage, but prompt format {prompt_format!r} has no {{context}}")
    if not exp.context and "{context}" in prompt_format:
        raise ConfigError(f"experiment '{exp.name}' has no passage; drop {{context}} from prompt format {prompt_format!r}")
    if exp.context and not record.passages:
        raise fail("passages", "missing or empty, and the experiment corrupts the passage")

    variants = [("fact", record.obj, record.obj_cf[0])]
    if exp.context:
        variants += [(f"cf{i + 1}", cf, record.obj) for i, cf in enumerate(record.obj_cf[:max_cf])]

    out = []
    for variant, target, alt in variants:
        variant_record = record
        if variant != "fact":
            if not any(record.obj in p for p in record.passages):
                raise fail("obj", f"'{record.obj}' not found in the passage, so no counterfactual passage can be made")
            variant_record = replace(record, passages=tuple(p.replace(record.obj, target) for p in record.passages))
        passages = variant_record.passages
        prompt, where = render(prompt_format, {"context": variant_record.context, "prompt": record.prompt_wo_ctx,
                                               "question": record.question})
        question = where.get("prompt") or where.get("question")
        if question is None:
            raise ConfigError(f"prompt format {prompt_format!r} has neither {{prompt}} nor {{question}}")
        if exp.context:
            region = where["context"]
            subject, obj, relation = _in_passage(prompt, region, passages, record.subj, target, exp.span, fail)
        else:
            region = None
            subject = _find(prompt, record.subj, question)
            obj, relation = None, ()
            if subject is None:
                raise fail("subj", f"'{record.subj}' not found in prompt_wo_ctx {record.prompt_wo_ctx!r}")
        span = {"subject": (subject,), "object": (obj,), "relation": relation}[exp.span]
        out.append(
            Example(
                id=f"{record.id}/{variant}", record_id=record.id, variant=variant, prompt=prompt,
                target=target, alt=alt, span=span, subject=subject, object=obj, relation=relation,
                context=region, question=question,
            )
        )
    return out
