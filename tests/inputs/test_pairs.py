"""Prompt pairs: the pair file's checks, the cases a pair makes (its corrupted positions, its
segments, prompts of different lengths refused), and substitution's documented choices, each
against hand-made cases on the tiny word-level tokenizer (one word, one token)."""

from __future__ import annotations

import pytest

from conftest import RECORDS, make_tokenizer, write_jsonl
from nnct.errors import ConfigError, RecordError
from nnct.inputs.cases import from_pairs, from_records
from nnct.inputs.pairs import load_pairs, substitute
from nnct.inputs.prompts import examples_for, experiment
from nnct.inputs.records import load_objects

PAIR = {"id": "p1", "clean": "the Eiffel Tower is in the city of", "corrupt": "the Vinson Massif is in the city of",
        "target": "Paris", "alt": "Rome"}


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def test_pairs_load_with_ids_and_lines(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [PAIR, {k: v for k, v in PAIR.items() if k != "id"}])
    loaded = load_pairs(path)
    assert loaded.problems == []
    assert [(p.id, p.line) for p in loaded.items] == [("p1", 1), ("line2", 2)]
    assert loaded.items[0].corrupt == PAIR["corrupt"]


@pytest.mark.parametrize("line, field, reason", [
    ({**PAIR, "corrupt": None}, "corrupt", "missing"),
    ({k: v for k, v in PAIR.items() if k != "alt"}, "alt", "missing"),
    ({**PAIR, "target": "  "}, "target", "empty"),
    ({**PAIR, "clean": 3}, "clean", "expected a string"),
    ("{not json", "<json>", "not valid JSON"),
])
def test_a_bad_pair_is_reported_with_its_line_and_field(tmp_path, line, field, reason):
    path = write_jsonl(tmp_path / "pairs.jsonl", [PAIR, line])
    loaded = load_pairs(path)
    assert [p.id for p in loaded.items] == ["p1"]
    (problem,) = loaded.problems
    assert (problem.path, problem.line, problem.field) == (str(path), 2, field) and reason in problem.reason


def test_a_repeated_pair_id_is_reported(tmp_path):
    loaded = load_pairs(write_jsonl(tmp_path / "pairs.jsonl", [PAIR, PAIR]))
    assert len(loaded.items) == 1 and "repeats line 1" in str(loaded.problems[0])


def test_a_pair_case_marks_the_tokens_that_differ(tok):
    cases, problems, lines = from_pairs(load_pairs([PAIR]), tok)
    (case,) = cases
    assert problems == [] and lines == [1]
    # <s> the Eiffel Tower is in the city of  vs  <s> the Vinson Massif ...: positions 2 and 3 differ
    assert case.span == (2, 3) and case.corrupt_ids[2:4] == (29, 30) and case.ids[2:4] == (25, 26)
    assert case.example.id == "p1/pair" and case.example.variant == "pair"
    assert case.answers == ((23,), (27,))
    assert case.segments == ("bos", "prefix", "changed_first", "changed_last", "subsequent_first", "subsequent_further",
                             "subsequent_further", "subsequent_further", "last")


def test_pair_segments_between_and_alone(tok):
    pair = {**PAIR, "corrupt": "the Vinson Tower is on the city of"}  # positions 2 and 5 differ
    (case,), _, _ = from_pairs(load_pairs([pair]), tok)
    assert case.span == (2, 5)
    assert case.segments[2:7] == ("changed_first", "between", "between", "changed_last", "subsequent_first")
    one = {**PAIR, "corrupt": "the Eiffel Tower is in the city by"}  # the last token alone
    (case,), _, _ = from_pairs(load_pairs([one]), tok)
    assert case.span == (8,) and case.segments[-1] == "last" and case.segments[1] == "prefix"


def test_prompts_of_different_lengths_are_reported_with_both_counts(tok):
    short = {**PAIR, "id": "p2", "corrupt": "the Tower is in the city of"}
    same = {**PAIR, "id": "p3", "corrupt": PAIR["clean"]}
    cases, problems, _ = from_pairs(load_pairs([PAIR, short, same]), tok)
    assert [c.example.id for c in cases] == ["p1/pair"]
    assert [(p.line, p.field) for p in problems] == [(2, "corrupt"), (3, "corrupt")]
    assert "8 tokens vs 9 in the clean prompt" in problems[0].reason
    assert "nothing is corrupted" in problems[1].reason


def test_pair_answers_that_share_a_token_are_reported(tok):
    _, problems, _ = from_pairs(load_pairs([{**PAIR, "alt": "Paris city"}]), tok)
    assert problems[0].field == "alt" and "same token" in problems[0].reason
    cases, problems, _ = from_pairs(load_pairs([{**PAIR, "alt": "Paris city"}]), tok, full_answers=True)
    assert problems == [] and cases[0].answers == ((23,), (23, 20))


# -- substitution -----------------------------------------------------------------------------

FACTS = [
    # the word tokenizer makes every word one token, so substitutes of one word fit one-word subjects
    {"id": "a", "subj": "Rome", "obj": "Italy", "prop": "P17", "prompt_wo_ctx": "Rome is in", "obj_cf": ["France", "Asia"],
     "passages": [{"text": "Rome is in Italy ."}]},
    {"id": "b", "subj": "Vinson Massif", "obj": "Antarctica", "prop": "P17", "prompt_wo_ctx": "Vinson Massif is in",
     "obj_cf": ["Asia"], "passages": [{"text": "Vinson Massif is in Antarctica ."}]},
    {"id": "c", "subj": "Paris", "obj": "Italy", "prop": "P17", "prompt_wo_ctx": "Paris is in", "obj_cf": ["Asia"]},
    {"id": "d", "subj": "France", "obj": "Europe", "prop": "P17", "prompt_wo_ctx": "France is in", "obj_cf": ["Asia"]},
    {"id": "e", "subj": "Apple", "obj": "Europe", "prop": "P99", "prompt_wo_ctx": "Apple is in", "obj_cf": ["Asia"]},
]


def subst(tok, record_id, exp_name="subject-noctx", facts=FACTS):
    loaded = load_objects(facts)
    record = next(r for r in loaded.items if r.id == record_id)
    exp = experiment(exp_name)
    return [substitute(ex, exp, record, loaded.items, tok, "f.jsonl")
            for ex in examples_for(record, exp, exp.prompt_format, 1, "f.jsonl")]


def test_a_subject_becomes_the_next_subject_of_its_prop_with_another_object(tok):
    # a: b's subject is two words (no fit), c shares a's object (no use), d fits
    assert subst(tok, "a")[0].corrupt_prompt == "France is in"
    # d: the search starts after d and wraps: e is another prop, then a fits
    assert subst(tok, "d")[0].corrupt_prompt == "Rome is in"


def test_subj_cf_wins_and_must_fit(tok):
    facts = [{**FACTS[0], "subj_cf": "Apple"}, *FACTS[1:]]
    assert subst(tok, "a", facts=facts)[0].corrupt_prompt == "Apple is in"
    facts = [{**FACTS[0], "subj_cf": "Vinson Massif"}, *FACTS[1:]]
    with pytest.raises(RecordError) as info:
        subst(tok, "a", facts=facts)
    assert info.value.field == "subj_cf" and "keeps the prompt at 4 tokens" in info.value.reason


def test_a_subject_without_a_substitute_is_reported(tok):
    with pytest.raises(RecordError) as info:
        subst(tok, "e")
    assert info.value.field == "subj" and "no other record of prop 'P99'" in info.value.reason


def test_an_object_becomes_the_first_other_object_of_the_same_length(tok):
    fact, cf1 = subst(tok, "a", "object")
    assert fact.prompt == "C: Rome is in Italy . Rome is in" and fact.corrupt_prompt == "C: Rome is in France . Rome is in"
    # cf1 states France: its substitute is the first other object, obj itself
    assert cf1.corrupt_prompt == "C: Rome is in Italy . Rome is in"


def test_subject_substitution_in_context_replaces_the_passage_mention_only(tok):
    (fact, _) = subst(tok, "a", "subject")
    assert fact.corrupt_prompt == "C: France is in Italy . Rome is in"


def test_relation_substitution_is_refused(tok):
    with pytest.raises(ConfigError, match="use --corruption noise"):
        from_records(load_objects(FACTS), experiment("relation"), "C: {context} {prompt}", 1, tok, substitute=True)


def test_substituted_cases_keep_their_experiment_segments(tok):
    cases, problems, _ = from_records(load_objects(RECORDS), experiment("subject-noctx"), "{prompt}", 0, tok, substitute=True)
    # r1, r2, r3 have different props: no record has a substitute
    assert cases == [] and {p.field for p in problems} == {"subj"}
    facts = [{**r, "subj_cf": sub} for r, sub in zip(RECORDS, ["Vinson Massif", "Eiffel Tower", "Apple"])]
    cases, problems, _ = from_records(load_objects(facts), experiment("subject-noctx"), "{prompt}", 0, tok, substitute=True)
    assert [c.example.id for c in cases] == ["r1/fact", "r2/fact"] and problems[0].line == 3  # "Beats Music" is one word more
    assert cases[0].segments[2:4] == ("subject_first", "subject_last") and cases[0].span == (2, 3)


def test_answers_given_by_token_id(tmp_path):
    """Token ids name the answers exactly; their texts may then be blank (a newline), and
    bad ids are reported with their line and field."""
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "a", "clean": "x y", "corrupt": "x z", "target": "\n", "alt": " ", "target_token": 5, "alt_token": 7},
        {"id": "b", "clean": "x y", "corrupt": "x z", "target": "\n", "alt": "w"},
        {"id": "c", "clean": "x y", "corrupt": "x z", "target": "v", "alt": "w", "target_token": 5},
        {"id": "d", "clean": "x y", "corrupt": "x z", "target": "v", "alt": "w", "target_token": -1, "alt_token": 2},
    ])
    loaded = load_pairs(path)
    assert [p.id for p in loaded.items] == ["a"] and loaded.items[0].tokens == (5, 7)
    assert [(e.line, e.field) for e in loaded.problems] == [(2, "target"), (3, "alt_token"), (4, "target_token")]
