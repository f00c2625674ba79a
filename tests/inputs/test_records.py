"""nnct.inputs.records.load_records: good records load, each bad one is reported (file, line, field)
and skipped while the good ones around it still load."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import RECORDS

from nnct.inputs.records import Record, load_records
from nnct.errors import DataError, RecordError


def _line(obj) -> str:
    return json.dumps(obj) + "\n"


def _rec(**changes) -> dict:
    """A copy of the second good record (id r2) with some fields changed; None drops one."""
    r = copy.deepcopy(RECORDS[1])
    for k, v in changes.items():
        if v is None:
            r.pop(k, None)
        else:
            r[k] = v
    return r


# --------------------------------------------------------------------------- good records


def test_good_records_load_with_ids_and_lines(tiny_data):
    loaded = load_records(tiny_data)
    assert loaded.problems == []
    assert loaded.path == str(tiny_data)
    assert [r.id for r in loaded.items] == ["r1", "r2", "r3"]
    assert [r.line for r in loaded.items] == [1, 2, 3]


def test_good_record_fields(tiny_data):
    r1 = load_records(tiny_data).items[0]
    assert isinstance(r1, Record)
    assert r1.subj == "Eiffel Tower"
    assert r1.obj == "Paris"
    assert r1.prompt_wo_ctx == "the Eiffel Tower is located in the city of"
    assert r1.obj_cf == ("Rome", "Asia")
    assert r1.passages == ("the Eiffel Tower is in Paris .",)
    assert r1.context == "the Eiffel Tower is in Paris ."
    assert r1.question == "where is the Eiffel Tower ?"
    assert r1.answers == ("Paris",)
    assert r1.prop == "P1"


def test_context_joins_passages_with_a_space(tmp_path):
    path = tmp_path / "d.jsonl"
    rec = _rec(passages=[{"text": "Vinson Massif is part of Antarctica .", "title": "a"},
                         {"text": "Antarctica is a continent .", "title": "b"}])
    path.write_text(_line(rec))
    (r,) = load_records(path).items
    assert r.passages == ("Vinson Massif is part of Antarctica .", "Antarctica is a continent .")
    assert r.context == "Vinson Massif is part of Antarctica . Antarctica is a continent ."


def test_passages_are_optional(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(_line(_rec(passages=None)))
    loaded = load_records(path)
    assert loaded.problems == []
    (r,) = loaded.items
    assert r.passages == ()
    assert r.context == ""


def test_id_defaults_to_line_number(tmp_path):
    path = tmp_path / "d.jsonl"
    no_id_a = _rec(id=None)
    no_id_b = _rec(id=None, subj="Beats Music")
    path.write_text(_line(RECORDS[0]) + _line(no_id_a) + _line(no_id_b))
    loaded = load_records(path)
    assert loaded.problems == []
    assert [r.id for r in loaded.items] == ["r1", "line2", "line3"]
    assert [r.line for r in loaded.items] == [1, 2, 3]


def test_blank_lines_are_skipped_but_counted(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(_line(RECORDS[0]) + "\n   \n" + _line(_rec(id=None)))
    loaded = load_records(path)
    assert loaded.problems == []
    assert [(r.id, r.line) for r in loaded.items] == [("r1", 1), ("line4", 4)]


def test_integer_id_becomes_a_string(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(_line(_rec(id=7)))
    (r,) = load_records(path).items
    assert r.id == "7"


def test_load_accepts_str_path(tiny_data):
    assert [r.id for r in load_records(str(tiny_data)).items] == ["r1", "r2", "r3"]


def test_missing_file_raises_data_error(tmp_path):
    with pytest.raises(DataError) as info:
        load_records(tmp_path / "nope.jsonl")
    assert "nope.jsonl" in str(info.value)


def test_directory_is_not_a_data_file(tmp_path):
    with pytest.raises(DataError):
        load_records(tmp_path)


# --------------------------------------------------------------------------- bad records

BAD = {
    "invalid-json": ('{"id": "bad", "subj": "Vinson Massif",\n', "<json>"),
    "truncated-json": ('{"id": "bad"\n', "<json>"),
    "array-not-object": ('["Vinson Massif", "Antarctica"]\n', "<json>"),
    "string-not-object": ('"Vinson Massif"\n', "<json>"),
    "missing-subj": (_line(_rec(subj=None)), "subj"),
    "empty-subj": (_line(_rec(subj="  ")), "subj"),
    "subj-not-string": (_line(_rec(subj=5)), "subj"),
    "missing-obj": (_line(_rec(obj=None)), "obj"),
    "empty-obj": (_line(_rec(obj="")), "obj"),
    "missing-prompt": (_line(_rec(prompt_wo_ctx=None)), "prompt_wo_ctx"),
    "missing-obj_cf": (_line(_rec(obj_cf=None)), "obj_cf"),
    "obj_cf-a-string": (_line(_rec(obj_cf="Africa")), "obj_cf"),
    "obj_cf-empty-list": (_line(_rec(obj_cf=[])), "obj_cf"),
    "obj_cf-empty-item": (_line(_rec(obj_cf=["Africa", ""])), "obj_cf"),
    "obj_cf-non-string-item": (_line(_rec(obj_cf=["Africa", 3])), "obj_cf"),
    "passages-a-string": (_line(_rec(passages="Vinson Massif is part of Antarctica .")), "passages"),
    "passages-list-of-strings": (_line(_rec(passages=["Vinson Massif is part of Antarctica ."])), "passages"),
    "passages-without-text": (_line(_rec(passages=[{"title": "x"}])), "passages"),
    "passages-text-not-string": (_line(_rec(passages=[{"text": 3, "title": "x"}])), "passages"),
    "answers-not-list": (_line(_rec(answers="Antarctica")), "answers"),
    "id-with-slash": (_line(_rec(id="a/b")), "id"),
    "id-empty": (_line(_rec(id="")), "id"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_record_is_reported_and_skipped(tmp_path, case):
    text, field = BAD[case]
    path = tmp_path / "facts.jsonl"
    path.write_text(_line(RECORDS[0]) + text + _line(RECORDS[2]))
    loaded = load_records(path)
    # the good records around the bad one still load, with their own line numbers
    assert [(r.id, r.line) for r in loaded.items] == [("r1", 1), ("r3", 3)]
    assert len(loaded.problems) == 1
    problem = loaded.problems[0]
    assert isinstance(problem, RecordError)
    assert problem.path == str(path)
    assert problem.line == 2
    assert problem.field == field
    message = str(problem)
    assert f"{path}:2" in message
    assert f"'{field}'" in message


def test_duplicate_id_is_reported_on_the_repeat(tmp_path):
    path = tmp_path / "facts.jsonl"
    dup = _rec(id="r1", subj="Beats Music")
    path.write_text(_line(RECORDS[0]) + _line(RECORDS[1]) + _line(dup) + _line(RECORDS[2]))
    loaded = load_records(path)
    assert [(r.id, r.line) for r in loaded.items] == [("r1", 1), ("r2", 2), ("r3", 4)]
    # the first r1 is the one kept
    assert loaded.items[0].subj == "Eiffel Tower"
    (problem,) = loaded.problems
    assert (problem.path, problem.line, problem.field) == (str(path), 3, "id")
    assert f"{path}:3" in str(problem)
    assert "'id'" in str(problem)
    assert "line 1" in str(problem)  # it says which line the id repeats


def test_default_id_clashing_with_explicit_id(tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text(_line(_rec(id="line2")) + _line(_rec(id=None, subj="Beats Music")))
    loaded = load_records(path)
    assert [(r.id, r.line) for r in loaded.items] == [("line2", 1)]
    (problem,) = loaded.problems
    assert (problem.line, problem.field) == (2, "id")


def test_several_bad_records_each_reported_once(tmp_path):
    path = tmp_path / "facts.jsonl"
    lines = [
        "not json at all\n",              # 1
        _line(RECORDS[0]),                # 2
        _line(_rec(obj="")),              # 3
        _line(RECORDS[1]),                # 4
        "[]\n",                           # 5
        _line(_rec(id="x", obj_cf=[])),   # 6
        _line(RECORDS[2]),                # 7
        _line(_rec(id="r3")),             # 8 duplicate of line 7
    ]
    path.write_text("".join(lines))
    loaded = load_records(path)
    assert [(r.id, r.line) for r in loaded.items] == [("r1", 2), ("r2", 4), ("r3", 7)]
    assert [(p.line, p.field) for p in loaded.problems] == [
        (1, "<json>"), (3, "obj"), (5, "<json>"), (6, "obj_cf"), (8, "id"),
    ]
    for p in loaded.problems:
        assert p.path == str(path)
        assert f"{path}:{p.line}" in str(p)
        assert f"'{p.field}'" in str(p)


def test_file_of_only_bad_records_loads_nothing_without_raising(tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text("{\n" + _line(_rec(subj=None)))
    loaded = load_records(path)
    assert loaded.items == []
    assert [(p.line, p.field) for p in loaded.problems] == [(1, "<json>"), (2, "subj")]


def test_a_line_that_is_not_utf8_is_skipped(tmp_path):
    path = tmp_path / "bytes.jsonl"
    good = json.dumps(RECORDS[0]).encode()
    path.write_bytes(b"\xef\xbb\xbf" + good + b"\n" + b'{"subj": "\xff"}\n' + json.dumps(RECORDS[1]).encode() + b"\n")
    loaded = load_records(path)
    assert [r.line for r in loaded.items] == [1, 3]  # a BOM on line 1 is not an error
    assert [(p.line, p.field) for p in loaded.problems] == [(2, "<json>")]
    assert "UTF-8" in str(loaded.problems[0])
