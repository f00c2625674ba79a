"""Contrast pairs and test prompts of steering: good lines read, bad ones reported (file,
line, field) and skipped."""

from __future__ import annotations

from conftest import write_jsonl
from nnct.inputs.steering import load_contrast, load_prompts


def test_contrast_pairs_and_bad_lines(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [
        {"positive": "a good day", "negative": "a bad day"},
        {"positive": "fine"},
        "{not json",
        {"id": "x", "positive": "yes", "negative": 3},
        {"id": "y", "positive": "yes", "negative": "no"},
    ])
    loaded = load_contrast(path)
    assert [(c.id, c.line, c.positive, c.negative) for c in loaded.items] == [
        ("line1", 1, "a good day", "a bad day"), ("y", 5, "yes", "no")]
    assert [(p.line, p.field) for p in loaded.problems] == [(2, "negative"), (3, "<json>"), (4, "negative")]
    assert all(p.path == str(path) for p in loaded.problems)


def test_prompts_from_dicts_and_bad_lines():
    loaded = load_prompts([{"prompt": "It was", "target": "good", "alt": "bad"}, {"prompt": "It was", "target": "good"},
                           {"prompt": "", "target": "good", "alt": "bad"}])
    assert [(p.prompt, p.target, p.alt) for p in loaded.items] == [("It was", "good", "bad")]
    assert [(p.line, p.field) for p in loaded.problems] == [(2, "alt"), (3, "prompt")]
