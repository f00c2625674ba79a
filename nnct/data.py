"""Fact records from a JSONL data set, validated line by line.

A data set is read whole before a run starts, so that a bad record is reported once, with
its file, line and field, and skipped, while the good ones go on. `load_records` returns
both lists; the caller decides whether a run with problems may go on (it always does, but
it says how many were skipped). The schema is METHOD.md's; `id` is optional and defaults
to the line number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError, RecordError


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

    @property
    def context(self) -> str:
        """The passages' texts joined by a space (METHOD.md's `{context}`)."""
        return " ".join(self.passages)


@dataclass
class Loaded:
    path: str
    records: list[Record] = field(default_factory=list)
    problems: list[RecordError] = field(default_factory=list)


def _text(obj: dict, name: str, path: str, line: int, required: bool = True) -> str:
    value = obj.get(name)
    if value is None:
        if required:
            raise RecordError(path, line, name, "missing")
        return ""
    if not isinstance(value, str):
        raise RecordError(path, line, name, f"expected a string, got {type(value).__name__}")
    if required and not value.strip():
        raise RecordError(path, line, name, "empty")
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


def parse_record(text: str, path: str, line: int) -> Record:
    """One JSONL line to a Record, or a RecordError naming the field at fault."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(path, line, "<json>", f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise RecordError(path, line, "<json>", f"expected an object, got {type(obj).__name__}")
    passages = obj.get("passages", [])
    if not isinstance(passages, list) or not all(
        isinstance(p, dict) and isinstance(p.get("text"), str) for p in passages
    ):
        raise RecordError(path, line, "passages", 'expected a list of {"text": ...} objects')
    rid = obj.get("id", f"line{line}")
    if not isinstance(rid, (str, int)) or "/" in str(rid) or not str(rid).strip():
        raise RecordError(path, line, "id", "expected a non-empty string without '/'")
    return Record(
        id=str(rid),
        line=line,
        subj=_text(obj, "subj", path, line),
        obj=_text(obj, "obj", path, line),
        prompt_wo_ctx=_text(obj, "prompt_wo_ctx", path, line),
        obj_cf=_texts(obj, "obj_cf", path, line, required=True),
        passages=tuple(p["text"] for p in passages),
        question=_text(obj, "question", path, line, required=False),
        answers=_texts(obj, "answers", path, line, required=False),
        prop=str(obj.get("prop", "")),
    )


def load_records(path: str | Path) -> Loaded:
    """Every record of a JSONL file; malformed ones go to `problems`, never raise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    loaded = Loaded(path=str(path))
    seen: dict[str, int] = {}
    with path.open("rb") as f:
        for line, raw in enumerate(f, start=1):
            try:
                # Decoded line by line, so one bad byte costs one record, not the file.
                text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                loaded.problems.append(RecordError(str(path), line, "<json>", f"not UTF-8 (byte {exc.start})"))
                continue
            if not text.strip():
                continue
            try:
                record = parse_record(text, str(path), line)
                if record.id in seen:
                    raise RecordError(str(path), line, "id", f"'{record.id}' repeats line {seen[record.id]}")
            except RecordError as exc:
                loaded.problems.append(exc)
                continue
            seen[record.id] = line
            loaded.records.append(record)
    return loaded
