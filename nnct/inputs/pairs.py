"""Prompt pairs: a clean prompt and a corrupted one that differs in a few tokens.

A pair comes from a JSONL file, one per line, `{"id"?, "clean", "corrupt", "target", "alt",
"target_token"?, "alt_token"?}` (checked line by line as records are, `id` defaulting to the
line; the two token ids, given together, are the answers exactly, for answers that ROME's
spelling, " " + answer, cannot name, such as a memorised text's next subword or
punctuation), from a notebook, or is
made from a seed record by **substitution** (`nnct trace --corruption substitute`): the
experiment's mention in the clean prompt is replaced by another text, and the first
candidate whose prompt tokenises to as many tokens as the clean one is taken (position-wise
patching needs equal lengths; the whole prompt is counted, since a tokenizer may merge
across the mention's edges):

- a **subject** (experiments `subject-noctx` and `subject`) becomes the record's `subj_cf`
  when it has one, else the subject of another record of the same `prop` (a record without
  `prop` is reported) whose object differs (a substitute that shares the answer would
  corrupt nothing), searched in the whole data set's order (whatever `--max-examples`
  traces) from the record after this one, wrapping around, so that substitutes spread over
  the data set;
- an **object** (experiment `object`) becomes the first of the record's other objects (`obj`
  and `obj_cf` in order, the mention's own text left out, whatever `--max-cf`) whose prompt
  has the clean prompt's length: for the fact variant that is the first counterfactual of
  that length (the alt answer when `obj_cf[0]` fits);
- the relation words are no single mention: substituting them is refused.

Only the span's characters are replaced (the mention's first occurrence, as noise corrupts
only that one). A record without a fitting substitute is reported (file, line, field) and
skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import ConfigError, RecordError
from .prompts import Example, Experiment
from .records import Loaded, Record, item_id, load_objects, read_jsonl, text_field
from .spans import tokenize

VARIANT = "pair"  # the variant name of an example made from a pair: its id is "<pair id>/pair"


@dataclass(frozen=True)
class Pair:
    id: str
    line: int
    clean: str
    corrupt: str
    target: str
    alt: str
    tokens: tuple[int, int] | None = None  # the answers' exact token ids (`target_token`, `alt_token`), if given


def _token(obj: dict, name: str, path: str, line: int) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RecordError(path, line, name, f"expected a token id (an integer >= 0), got {value!r}")
    return value


def pair_from(obj: dict, path: str, line: int) -> Pair:
    target, alt = _token(obj, "target_token", path, line), _token(obj, "alt_token", path, line)
    if (target is None) != (alt is None):
        raise RecordError(path, line, "alt_token" if alt is None else "target_token", "give both answers' tokens or neither")
    values = {name: text_field(obj, name, path, line) for name in ("clean", "corrupt")}
    for name in ("target", "alt"):
        if target is not None and isinstance(obj.get(name), str):
            values[name] = obj[name]  # named by its token id: its text may be blank (a newline, a space)
        else:
            values[name] = text_field(obj, name, path, line)
    return Pair(item_id(obj, path, line), line, **values, tokens=None if target is None else (target, alt))


def load_pairs(source) -> Loaded:
    """Pairs from a JSONL file (a path) or from dicts a notebook holds; bad lines reported."""
    if isinstance(source, (str, Path)):
        return read_jsonl(source, pair_from)
    return load_objects(source, pair_from, "<pairs>")


def example(pair: Pair) -> Example:
    """The example of a pair: the clean prompt, the corrupted one, the answers; the positions
    to corrupt are found on tokens (where the two differ)."""
    whole = (0, len(pair.clean))
    return Example(id=f"{pair.id}/{VARIANT}", record_id=pair.id, variant=VARIANT, prompt=pair.clean, target=pair.target,
                   alt=pair.alt, span=(), subject=None, object=None, relation=(), context=None, question=whole,
                   corrupt_prompt=pair.corrupt, answer_tokens=pair.tokens)


def check_substitutable(exp: Experiment) -> None:
    if exp.span not in ("subject", "object"):
        raise ConfigError(f"--corruption substitute replaces a subject or an object mention; experiment '{exp.name}'"
                          f" corrupts the {exp.span} words, which have no single substitute: use --corruption noise")


def _subjects(record: Record, records: list[Record]) -> list[str]:
    if record.subj_cf:
        return [record.subj_cf]
    at = next((i for i, r in enumerate(records) if r.id == record.id), -1)
    after = records[at + 1:] + records[:max(at, 0)]
    return list(dict.fromkeys(r.subj for r in after if r.prop == record.prop and r.obj != record.obj and r.subj != record.subj))


def substitute(ex: Example, exp: Experiment, record: Record, records: list[Record], tokenizer, path: str) -> Example:
    """`ex` with its corrupted prompt: the experiment's mention replaced (see the module's docstring)."""
    check_substitutable(exp)
    (start, end), text = ex.span[0], ex.prompt
    mention = text[start:end]
    if exp.span == "subject" and not (record.prop or record.subj_cf):
        raise RecordError(path, record.line, "prop", "missing: a substitute subject is another record's of the same prop"
                          " (or give subj_cf)")
    if exp.span == "subject":
        candidates, field = _subjects(record, records), "subj_cf" if record.subj_cf else "subj"
    else:
        candidates, field = [o for o in (record.obj, *record.obj_cf) if o != mention], "obj_cf"
    n = len(tokenize(tokenizer, text))
    for candidate in candidates:
        corrupt = text[:start] + candidate + text[end:]
        if len(tokenize(tokenizer, corrupt)) == n:
            return replace(ex, corrupt_prompt=corrupt)
    tried = (f"{len(candidates)} candidate(s) ({', '.join(repr(c) for c in candidates[:3])}{', ...' if len(candidates) > 3 else ''})"
             if candidates else f"no other record of prop {record.prop!r} with another object")
    raise RecordError(path, record.line, field, f"no substitute for {mention!r} keeps the prompt at {n} tokens: tried {tried}")
