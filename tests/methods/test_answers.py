"""`nnct answers`: per record and condition, the clean probabilities of the target and alt
answers, checked against a plain forward of the same prompt (the hook reference, no
nnsight), and the winner and source derived from them as the module's docstring says."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from conftest import RECORDS, write_jsonl
from reference import Reference
from nnct.model import load
from nnct.inputs import spans
from nnct.methods.answers import compare, frame, table
from nnct.cli import main


@pytest.fixture(scope="module")
def adapter(tiny_model_dir):
    return load(str(tiny_model_dir))


def test_conditions_and_probabilities_match_a_plain_forward(adapter, data_file):
    result = compare(adapter, str(data_file))
    rows = result.rows
    # r1 has two counterfactuals, r2 two, r3 one: none + fact + cfs each
    assert [(r["record_id"], r["condition"]) for r in rows] == [
        ("r1", "none"), ("r1", "fact"), ("r1", "cf1"), ("r1", "cf2"),
        ("r2", "none"), ("r2", "fact"), ("r2", "cf1"), ("r2", "cf2"),
        ("r3", "none"), ("r3", "fact"), ("r3", "cf1"),
    ]
    ref = Reference(adapter)
    tok = adapter.tokenizer
    for r in rows:
        record = next(x for x in RECORDS if x["id"] == r["record_id"])
        if r["condition"] == "none":
            assert r["prompt"] == record["prompt_wo_ctx"] and (r["target"], r["alt"]) == (record["obj"], record["obj_cf"][0])
        elif r["condition"] == "fact":
            assert record["passages"][0]["text"] in r["prompt"] and r["target"] == record["obj"]
        else:
            cf = record["obj_cf"][int(r["condition"][2:]) - 1]
            passage = record["passages"][0]["text"].replace(record["obj"], cf)
            assert (r["target"], r["alt"]) == (cf, record["obj"]) and passage in r["prompt"]
        answers = (spans.answer_token(tok, r["target"]), spans.answer_token(tok, r["alt"]))
        probs, _ = ref.run(spans.tokenize(tok, r["prompt"]).ids, answers)
        assert r["p_target"] == pytest.approx(float(probs[0]), abs=1e-6)
        assert r["p_alt"] == pytest.approx(float(probs[1]), abs=1e-6)
        assert r["winner"] == ("target" if r["p_target"] > r["p_alt"] else "alt")
        expected_source = {("cf", True): "context", ("cf", False): "memory"}.get(
            (r["condition"][:2], r["winner"] == "target"), "fact" if r["winner"] == "target" else "other")
        assert r["source"] == expected_source


def test_max_cf_and_max_examples(adapter, data_file):
    rows = compare(adapter, str(data_file), max_cf=1, max_examples=2).rows
    assert [r["condition"] for r in rows] == ["none", "fact", "cf1"] * 2


def test_record_without_its_object_in_the_passage_is_skipped(adapter, tmp_path):
    bad = dict(RECORDS[0], passages=[{"text": "the Eiffel Tower is tall .", "title": ""}])
    path = write_jsonl(tmp_path / "d.jsonl", [bad, RECORDS[1]])
    result = compare(adapter, str(path))
    assert {r["record_id"] for r in result.rows} == {"r2"}
    assert len(result.skipped) == 1 and ":1: field 'obj'" in str(result.skipped[0])


def test_answers_sharing_a_first_token_are_reported(adapter, tmp_path):
    same = dict(RECORDS[0], obj_cf=["Paris"])  # the counterfactual's first token is the object's
    path = write_jsonl(tmp_path / "d.jsonl", [same, RECORDS[1]])
    result = compare(adapter, str(path))
    assert {r["record_id"] for r in result.rows} == {"r2"}
    assert "field 'obj_cf'" in str(result.skipped[0]) and "same token" in str(result.skipped[0])


def test_table_counts_context_wins(adapter, data_file):
    df = frame(compare(adapter, str(data_file)))
    text = table(df)
    cf = df[df.condition.str.startswith("cf")]
    assert f"the context wins {(cf.source == 'context').mean():.0%} of {len(cf)} prompts" in text


def test_cli_writes_the_csv(tiny_model_dir, data_file, tmp_path):
    out = tmp_path / "answers.csv"
    result = CliRunner().invoke(main, ["answers", "--model", str(tiny_model_dir), "--data", str(data_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines[0].startswith("record_id,line,condition,target,alt,p_target,p_alt,winner,source")
    assert len(lines) == 12
    assert lines[1].startswith("r1,1,none,Paris,Rome,")
