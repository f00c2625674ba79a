"""Texts for memorisation: a .txt file, a directory of them, or JSONL with `id` and `text`;
and prompts (JSONL with `prompt`, as records have it), e.g. mean ablation's reference set.

A directory's .txt files are read in sorted order, searched recursively, each id being its
path relative to the directory. A single file's id is its name. JSONL lines are checked as
records are (`records.read_jsonl`): a line without a usable `text` is reported with its
file, line and field, and skipped. A file that is not UTF-8 is reported and skipped the same
way (line 0: the whole file).

`windows` cuts a tokenised text into the windows that memorisation scores. A text too short
for one window is reported and skipped, never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, RecordError
from .records import Loaded, item_id, read_jsonl, text_field


@dataclass(frozen=True)
class Text:
    id: str
    line: int
    text: str


def text_from(obj: dict, path: str, line: int) -> Text:
    return Text(item_id(obj, path, line), line, text_field(obj, "text", path, line))


def prompt_from(obj: dict, path: str, line: int) -> Text:
    return Text(item_id(obj, path, line), line, text_field(obj, "prompt", path, line))


def load_prompts(path: str | Path) -> Loaded:
    """A JSONL file's prompts (field `prompt`; records and steering prompts have one)."""
    return read_jsonl(path, prompt_from)


def load_texts(path: str | Path) -> Loaded:
    path = Path(path)
    if path.is_file() and path.suffix == ".jsonl":
        return read_jsonl(path, text_from)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"{path}: no .txt files in this directory")
        ids = [str(p.relative_to(path)) for p in files]
    elif path.is_file():
        files, ids = [path], [path.name]
    else:
        raise DataError(f"{path}: no such file or directory")
    loaded = Loaded(path=str(path))
    for file, name in zip(files, ids):
        try:
            loaded.items.append(Text(name, 0, file.read_text(encoding="utf-8")))
        except UnicodeDecodeError as exc:
            loaded.problems.append(RecordError(str(file), 0, "<text>", f"not UTF-8 (byte {exc.start})"))
    return loaded


@dataclass(frozen=True)
class Window:
    text_id: str
    start: int  # the first token's index in the text
    ids: tuple[int, ...]  # prefix + continuation

    @property
    def id(self) -> str:
        return f"{self.text_id}@{self.start}"


def windows(text: Text, ids: list[int], size: int, stride: int, path: str) -> list[Window]:
    """Every window of `size` token ids starting at 0, stride, 2 stride...; RecordError when
    the text has fewer tokens than one window."""
    if len(ids) < size:
        raise RecordError(path, text.line, "text", f"'{text.id}' has {len(ids)} tokens, fewer than one window ({size})")
    return [Window(text.id, s, tuple(ids[s:s + size])) for s in range(0, len(ids) - size + 1, stride)]
