"""From characters to token positions: the corrupted span and the segment of each token.

The one place that maps a mention to tokens (docs/method.md): a token belongs to a mention if
its characters overlap the mention's. Special tokens (BOS) have empty offsets and never
belong to a span, whatever the tokenizer prepends; byte-level tokenizers put the leading
space inside a token (" Paris"), which still overlaps "Paris". Segment labels name the
region a token is in, for ROME's averaged figure (no context), the context layout, or a
free prompt pair (`pair_segments`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import RecordError, SpanNotFound
from .prompts import CharRange, Example


@dataclass(frozen=True)
class Tokens:
    ids: tuple[int, ...]
    offsets: tuple[CharRange, ...]
    special: tuple[bool, ...]

    def __len__(self) -> int:
        return len(self.ids)


def tokenize(tokenizer, text: str) -> Tokens:
    """Token ids of `text` as the model sees it (special tokens included), with offsets."""
    enc = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True, add_special_tokens=True)
    return Tokens(
        ids=tuple(enc["input_ids"]),
        offsets=tuple((int(a), int(b)) for a, b in enc["offset_mapping"]),
        special=tuple(bool(s) for s in enc["special_tokens_mask"]),
    )


def answer_ids(tokenizer, answer: str) -> tuple[int, ...]:
    """The tokens of " " + answer, without special tokens (ROME's spelling of an answer)."""
    ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    if not ids:
        raise SpanNotFound(f"answer {answer!r} has no tokens")
    return tuple(int(i) for i in ids)


def answer_token(tokenizer, answer: str) -> int:
    """The first token of " " + answer, without special tokens (ROME's choice)."""
    return answer_ids(tokenizer, answer)[0]


def spellings(tokenizer, answer: str) -> tuple[int, ...]:
    """The first tokens of an answer's spellings, for the `prob_any` readout: " " + the answer
    as written, in lower case and capitalised, without repeats, ROME's own first."""
    out: list[int] = []
    for text in (answer, answer.lower(), answer[:1].upper() + answer[1:]):
        ids = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
        if ids and int(ids[0]) not in out:
            out.append(int(ids[0]))
    return tuple(out)


def answer_tokens(tokenizer, example: Example, path: str, line: int, full: bool = False,
                  fields: tuple[str, str] = ("obj", "obj_cf")) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The (target, alt) tokens of an example: the first token of each (`full`: all of them).
    Answers whose traced tokens are the same cannot be told apart (p_target would equal
    p_alt): such an example is reported, not traced. `fields` name the two answers' fields."""
    if example.answer_tokens is not None:  # exact ids (a memorisation pair's): one token each
        target, alt = ((example.answer_tokens[0],), (example.answer_tokens[1],))
        for name, (token,) in (("target_token", target), ("alt_token", alt)):
            if token >= len(tokenizer):
                raise RecordError(path, line, name, f"token id {token} is outside the tokenizer's {len(tokenizer)}")
    else:
        try:
            target, alt = answer_ids(tokenizer, example.target), answer_ids(tokenizer, example.alt)
        except SpanNotFound as exc:
            raise RecordError(path, line, fields[0], str(exc)) from None
    if not full:
        target, alt = target[:1], alt[:1]
    if target == alt:
        what = "are the same tokens" if full else f"start with the same token {tokenizer.decode(list(target))!r}"
        raise RecordError(path, line, fields[1], f"{example.target!r} and {example.alt!r} {what}:"
                          f" their {'probabilities' if full else 'first-token probabilities'} are one number")
    return target, alt


def overlapping(tokens: Tokens, ranges) -> list[int]:
    """Positions of the non-special tokens whose characters overlap any of `ranges`."""
    return [
        i
        for i, ((a, b), special) in enumerate(zip(tokens.offsets, tokens.special))
        if not special and b > a and any(a < e and s < b for s, e in ranges)
    ]


def span_positions(tokens: Tokens, example: Example) -> list[int]:
    positions = overlapping(tokens, example.span)
    if not positions:
        raise SpanNotFound(f"{example.id}: the span {example.span} covers no token of {example.prompt!r}")
    if positions[-1] == len(tokens) - 1:
        raise SpanNotFound(f"{example.id}: the span reaches the last token, which must stay clean to read the answer")
    return positions


# Every segment label, in prompt order (the rows of ROME's averaged figure and of nnct's tables).
SEGMENT_ORDER = (
    "bos", "prefix", "context_before", "subject_first", "subject_middle", "subject_last", "changed_first", "changed_middle",
    "changed_last", "between", "subsequent_first", "subsequent_further", "relation", "object_first", "object_middle",
    "object_last", "context_after", "question", "last",
)


def _part(name: str, index: int, count: int) -> str:
    if index == count - 1:
        return f"{name}_last"
    return f"{name}_first" if index == 0 else f"{name}_middle"


def segments(tokens: Tokens, example: Example) -> list[str]:
    """A label for each token (docs/method.md's segments). A one-token mention is `_last`."""
    subj = overlapping(tokens, [example.subject]) if example.subject else []
    obj = overlapping(tokens, [example.object]) if example.object else []
    rel = set(overlapping(tokens, example.relation))
    question = set(overlapping(tokens, [example.question]))
    marked = sorted(set(subj) | set(obj) | rel)
    labels = []
    for i in range(len(tokens)):
        if i == len(tokens) - 1:
            labels.append("last")
        elif tokens.special[i]:
            labels.append("bos")
        elif example.context is None:
            labels.append(_around(i, subj, "subject"))
        elif i in subj:
            labels.append(_part("subject", subj.index(i), len(subj)))
        elif i in obj:
            labels.append(_part("object", obj.index(i), len(obj)))
        elif i in rel:
            labels.append("relation")
        elif i in question:
            labels.append("question")
        elif not marked or i < marked[0]:
            labels.append("context_before")
        else:
            labels.append("context_after")
    return labels


def _around(i: int, mention: list[int], name: str) -> str:
    """ROME's label of position i (neither BOS nor the last) around one mention: `prefix`
    before it, `name_first/middle/last` on it, `between` on equal tokens among its
    positions, `subsequent_first/further` after it."""
    if i in mention:
        return _part(name, mention.index(i), len(mention))
    if not mention or i < mention[0]:
        return "prefix"
    if i < mention[-1]:
        return "between"
    return "subsequent_first" if i == mention[-1] + 1 else "subsequent_further"


def pair_segments(tokens: Tokens, changed: list[int]) -> list[str]:
    """Labels of a free prompt pair's tokens: ROME's layout with the tokens that differ in
    the subject's place (`changed_first/middle/last`, by order among them)."""
    return ["last" if i == len(tokens) - 1 else "bos" if tokens.special[i] else _around(i, changed, "changed")
            for i in range(len(tokens))]
