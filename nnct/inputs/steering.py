"""The two inputs of steering (`nnct steer`): contrast pairs and test prompts, JSONL.

- A **contrast pair** is `{"id"?, "positive", "negative"}`: two texts that differ in the
  behaviour to steer (a positive and a negative sentence; a question answered in two
  languages). The steering vector is the mean, over pairs, of the difference of their
  residual streams at each text's own last token; the two texts need not have one length.
- A **test prompt** is `{"id"?, "prompt", "target", "alt"}`: a prompt whose next word
  shows the behaviour, and its two answers (target: the behaviour's, alt: the opposite's),
  each spelled as ROME spells an answer (" " + answer; its first token is read).

Both are read line by line with `records.read_jsonl` (or from dicts a notebook holds): a bad
line is a `RecordError` naming the file, the line and the field, reported and skipped; `id`
defaults to the line. Token-level checks (two answers with one first token) need the
tokenizer and are the method's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .records import Loaded, item_id, load_objects, read_jsonl, text_field


@dataclass(frozen=True)
class Contrast:
    id: str
    line: int
    positive: str
    negative: str


@dataclass(frozen=True)
class SteerPrompt:
    id: str
    line: int
    prompt: str
    target: str
    alt: str


def contrast_from(obj: dict, path: str, line: int) -> Contrast:
    return Contrast(item_id(obj, path, line), line, text_field(obj, "positive", path, line),
                    text_field(obj, "negative", path, line))


def prompt_from(obj: dict, path: str, line: int) -> SteerPrompt:
    return SteerPrompt(item_id(obj, path, line), line, *(text_field(obj, name, path, line) for name in ("prompt", "target", "alt")))


def _load(source, make, label: str) -> Loaded:
    if isinstance(source, (str, Path)):
        return read_jsonl(source, make)
    return load_objects(source, make, label)


def load_contrast(source) -> Loaded:
    """Contrast pairs from a JSONL file (a path) or dicts; bad lines reported in `problems`."""
    return _load(source, contrast_from, "<contrast>")


def load_prompts(source) -> Loaded:
    """Test prompts from a JSONL file (a path) or dicts; bad lines reported in `problems`."""
    return _load(source, prompt_from, "<prompts>")
