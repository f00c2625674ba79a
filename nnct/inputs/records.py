"""Fact records from a JSONL data set, validated line by line.

A data set is read whole before a run starts, so that a bad record is reported once, with
its file, line and field, and skipped, while the good ones go on. `load_records` returns
both lists; the caller decides whether a run with problems may go on (it always does, but
it says how many were skipped). `read_jsonl` is the line-by-line reader every data set
shares (`pairs` reads its files with it); `load_objects` takes records a notebook holds
(dicts), checked the same way, their "line" being their position from 1. The schema is
docs/method.md's; `id` is optional and defaults to the line number; `subj_cf` (optional)
names a subject for subject substitution.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError, RecordError


@dataclass(frozen=True)
class Record:
    id: str
    line: int
    subj: str
    obj: str
    prompt_wo_ctx: str
    obj_cf: tuple[str, ...]
    passages: tuple[str, ...] = ()
    question: str = ""
    answers: tuple[str, ...] = ()
    prop: str = ""
    subj_cf: str = ""  # optional: the subject that `--corruption substitute` puts in the subject's place

    @property
    def context(self) -> str:
        """The passages' texts joined by a space (docs/method.md's `{context}`)."""
        return " ".join(self.passages)


@dataclass
class Loaded:
    """What a data set gave: its items (records, or pairs) in file order, and the bad lines."""

    path: str
    items: list = field(default_factory=list)
    problems: list[RecordError] = field(default_factory=list)


def text_field(obj: dict, name: str, path: str, line: int, required: bool = True) -> str:
    value = obj.get(name)
    if value is None:
        if required:
            raise RecordError(path, line, name, "missing")
        return ""
    if not isinstance(value, str):
        raise RecordError(path, line, name, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        if required:
            raise RecordError(path, line, name, "empty")
        return ""  # an optional field left blank is absent
    return value


def _texts(obj: dict, name: str, path: str, line: int, required: bool) -> tuple[str, ...]:
    value = obj.get(name)
    if value is None:
        if required:
            raise RecordError(path, line, name, "missing")
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise RecordError(path, line, name, "expected a list of non-empty strings")
    if required and not value:
        raise RecordError(path, line, name, "empty list")
    return tuple(value)


def _object(text: str, path: str, line: int) -> dict:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(path, line, "<json>", f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise RecordError(path, line, "<json>", f"expected an object, got {type(obj).__name__}")
    return obj


def item_id(obj: dict, path: str, line: int) -> str:
    rid = obj.get("id", f"line{line}")
    if not isinstance(rid, (str, int)) or "/" in str(rid) or not str(rid).strip():
        raise RecordError(path, line, "id", "expected a non-empty string without '/'")
    return str(rid)


def record_from(obj: dict, path: str, line: int) -> Record:
    """A dict in docs/method.md's schema to a Record, or a RecordError naming the field at fault."""
    passages = obj.get("passages", [])
    if not isinstance(passages, list) or not all(
        isinstance(p, dict) and isinstance(p.get("text"), str) for p in passages
    ):
        raise RecordError(path, line, "passages", 'expected a list of {"text": ...} objects')
    return Record(
        id=item_id(obj, path, line),
        line=line,
        subj=text_field(obj, "subj", path, line),
        obj=text_field(obj, "obj", path, line),
        prompt_wo_ctx=text_field(obj, "prompt_wo_ctx", path, line),
        obj_cf=_texts(obj, "obj_cf", path, line, required=True),
        passages=tuple(p["text"] for p in passages),
        question=text_field(obj, "question", path, line, required=False),
        answers=_texts(obj, "answers", path, line, required=False),
        prop=str(obj.get("prop", "")),
        subj_cf=text_field(obj, "subj_cf", path, line, required=False),
    )


def parse_record(text: str, path: str, line: int) -> Record:
    """One JSONL line to a Record, or a RecordError naming the field at fault."""
    return record_from(_object(text, path, line), path, line)


def _add(loaded: Loaded, seen: dict[str, int], make, obj_or_text, line: int) -> None:
    try:
        obj = _object(obj_or_text, loaded.path, line) if isinstance(obj_or_text, str) else obj_or_text
        if not isinstance(obj, dict):
            raise RecordError(loaded.path, line, "<json>", f"expected an object, got {type(obj).__name__}")
        item = make(obj, loaded.path, line)
        if item.id in seen:
            raise RecordError(loaded.path, line, "id", f"'{item.id}' repeats line {seen[item.id]}")
    except RecordError as exc:
        loaded.problems.append(exc)
        return
    seen[item.id] = line
    loaded.items.append(item)


def read_jsonl(path: str | Path, make=record_from) -> Loaded:
    """Every item of a JSONL file, made by `make(obj, path, line)`; malformed ones go to
    `problems`, never raise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    loaded, seen = Loaded(path=str(path)), {}
    with path.open("rb") as f:
        for line, raw in enumerate(f, start=1):
            try:
                # Decoded line by line, so one bad byte costs one record, not the file.
                text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                loaded.problems.append(RecordError(str(path), line, "<json>", f"not UTF-8 (byte {exc.start})"))
                continue
            if text.strip():
                _add(loaded, seen, make, text, line)
    return loaded


def load_objects(objs, make=record_from, label: str = "<records>") -> Loaded:
    """Items a notebook holds (dicts), checked as a file's lines are; line = position from 1."""
    loaded, seen = Loaded(path=label), {}
    for line, obj in enumerate(objs, start=1):
        _add(loaded, seen, make, obj, line)
    return loaded


def load_records(path: str | Path) -> Loaded:
    """Every record of a JSONL file; malformed ones go to `problems`, never raise."""
    return read_jsonl(path, record_from)
