"""nnct.inputs.prompts.examples_for + nnct.inputs.spans: which tokens are corrupted, and their segments.

Every expected position below is written out by hand from the tokenizer's words. The tiny
word-level tokenizer of conftest prepends a BOS `<s>` (empty offsets) and splits
punctuation, so "C: the Eiffel Tower ..." is `<s> C : the Eiffel Tower ...`.
"""

from __future__ import annotations

import dataclasses

import pytest
from conftest import RECORDS, make_tokenizer

from nnct.inputs.records import Record, parse_record
from nnct.errors import ConfigError, RecordError, SpanNotFound
from nnct.inputs.prompts import experiment, examples_for
from nnct.inputs.spans import Tokens, answer_token, overlapping, segments, span_positions, tokenize

DEFAULT = "C: {context} {prompt}"


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def record(i: int, line: int = 0) -> Record:
    import json

    return parse_record(json.dumps(RECORDS[i]), "facts.jsonl", line or i + 1)


def rec(**kw) -> Record:
    base = dict(id="x", line=7, subj="Eiffel Tower", obj="Paris",
                prompt_wo_ctx="the Eiffel Tower is located in the city of", obj_cf=("Rome",),
                passages=("the Eiffel Tower is in Paris .",))
    base.update(kw)
    return Record(**base)


def by_variant(examples):
    return {e.variant: e for e in examples}


# ------------------------------------------------------------------ r1 in the default format
#
#  prompt  "C: the Eiffel Tower is in Paris . the Eiffel Tower is located in the city of"
#  chars    C=0 :=1 the=3-6 Eiffel=7-13 Tower=14-19 is=20-22 in=23-25 Paris=26-31 .=32
#           the=34-37 Eiffel=38-44 Tower=45-50 is=51-53 located=54-61 in=62-64 the=65-68
#           city=69-73 of=74-76
#  tokens   0 <s> | 1 C | 2 : | 3 the | 4 Eiffel | 5 Tower | 6 is | 7 in | 8 Paris | 9 . |
#           10 the | 11 Eiffel | 12 Tower | 13 is | 14 located | 15 in | 16 the | 17 city | 18 of

R1_FACT = "C: the Eiffel Tower is in Paris . the Eiffel Tower is located in the city of"
R1_SEGMENTS = (
    ["bos", "context_before", "context_before", "relation", "subject_first", "subject_last",
     "relation", "relation", "object_last", "context_after"]
    + ["question"] * 8
    + ["last"]
)


def test_tokenize_tiny(tok):
    t = tokenize(tok, "the Eiffel Tower is located in the city of")
    # ids are the words' indices in conftest.WORDS; <s> = 0
    assert t.ids == (0, 8, 25, 26, 10, 22, 11, 8, 20, 9)
    assert t.offsets == ((0, 0), (0, 3), (4, 10), (11, 16), (17, 19), (20, 27), (28, 30), (31, 34), (35, 39), (40, 42))
    assert t.special == (True,) + (False,) * 9
    assert len(t) == 10


def test_context_example_fields():
    exs = examples_for(record(0), experiment("subject"), DEFAULT, max_cf=5)
    fact = by_variant(exs)["fact"]
    assert fact.id == "r1/fact"
    assert fact.record_id == "r1"
    assert fact.prompt == R1_FACT
    assert (fact.target, fact.alt) == ("Paris", "Rome")
    assert fact.context == (3, 33)
    assert fact.question == (34, 76)
    assert fact.subject == (7, 19)
    assert fact.object == (26, 31)
    assert fact.relation == ((3, 6), (20, 22), (23, 25))
    assert fact.span == ((7, 19),)


def test_subject_span_is_passage_mention_not_question(tok):
    fact = examples_for(record(0), experiment(1), DEFAULT, max_cf=0)[0]
    tokens = tokenize(tok, fact.prompt)
    assert len(tokens) == 19
    assert span_positions(tokens, fact) == [4, 5]  # not the repeat at 11, 12


def test_object_span(tok):
    fact = examples_for(record(0), experiment("object"), DEFAULT, max_cf=0)[0]
    assert fact.span == ((26, 31),)
    assert span_positions(tokenize(tok, fact.prompt), fact) == [8]


def test_relation_span_is_non_contiguous_and_excludes_punctuation(tok):
    fact = examples_for(record(0), experiment(3), DEFAULT, max_cf=0)[0]
    assert fact.span == ((3, 6), (20, 22), (23, 25))
    # the, is, in -- not C/:, not Eiffel Tower, not Paris, not the closing '.'
    assert span_positions(tokenize(tok, fact.prompt), fact) == [3, 6, 7]


def test_context_segments(tok):
    fact = examples_for(record(0), experiment("subject"), DEFAULT, max_cf=0)[0]
    assert segments(tokenize(tok, fact.prompt), fact) == R1_SEGMENTS


@pytest.mark.parametrize("name", ["subject", "object", "relation"])
def test_segments_do_not_depend_on_experiment(tok, name):
    fact = examples_for(record(0), experiment(name), DEFAULT, max_cf=0)[0]
    assert segments(tokenize(tok, fact.prompt), fact) == R1_SEGMENTS


def test_bos_never_in_a_span(tok):
    fact = examples_for(record(0), experiment("subject"), DEFAULT, max_cf=0)[0]
    tokens = tokenize(tok, fact.prompt)
    # a range covering the whole prompt, from char 0, still leaves the BOS out
    assert overlapping(tokens, [(0, len(fact.prompt))]) == list(range(1, 19))
    assert overlapping(tokens, [(0, 1)]) == [1]


def test_bos_not_in_span_when_subject_starts_the_prompt(tok):
    # "Vinson Massif is located in the continent of": <s> Vinson Massif is located in the continent of
    ex = examples_for(record(1), experiment("subject-noctx"), "{prompt}", max_cf=0)[0]
    assert ex.subject == (0, 13)
    tokens = tokenize(tok, ex.prompt)
    assert span_positions(tokens, ex) == [1, 2]
    assert segments(tokens, ex) == [
        "bos", "subject_first", "subject_last", "subsequent_first",
        "subsequent_further", "subsequent_further", "subsequent_further", "subsequent_further", "last",
    ]


# ------------------------------------------------------------------ counterfactual variants


def test_counterfactual_variants():
    exs = examples_for(record(0), experiment("subject"), DEFAULT, max_cf=5)
    assert [e.id for e in exs] == ["r1/fact", "r1/cf1", "r1/cf2"]
    assert [e.variant for e in exs] == ["fact", "cf1", "cf2"]
    assert [(e.target, e.alt) for e in exs] == [("Paris", "Rome"), ("Rome", "Paris"), ("Asia", "Paris")]
    v = by_variant(exs)
    assert v["cf1"].prompt == "C: the Eiffel Tower is in Rome . the Eiffel Tower is located in the city of"
    assert v["cf2"].prompt == "C: the Eiffel Tower is in Asia . the Eiffel Tower is located in the city of"
    # the object range is the counterfactual object now
    assert v["cf1"].object == (26, 30)
    assert v["cf1"].context == (3, 32)
    assert v["cf1"].question == (33, 75)
    assert v["cf1"].subject == (7, 19)


def test_counterfactual_token_positions(tok):
    exs = by_variant(examples_for(record(0), experiment("object"), DEFAULT, max_cf=2))
    for variant in ("cf1", "cf2"):
        ex = exs[variant]
        tokens = tokenize(tok, ex.prompt)
        assert span_positions(tokens, ex) == [8]
        assert segments(tokens, ex) == R1_SEGMENTS
    # cf1's prompt carries Rome (27) where the fact has Paris (23)
    assert tokenize(tok, exs["cf1"].prompt).ids[8] == 27
    assert tokenize(tok, exs["fact"].prompt).ids[8] == 23


@pytest.mark.parametrize("max_cf, variants", [(0, ["fact"]), (1, ["fact", "cf1"]), (2, ["fact", "cf1", "cf2"]),
                                              (9, ["fact", "cf1", "cf2"])])
def test_max_cf_limits_variants(max_cf, variants):
    exs = examples_for(record(0), experiment("object"), DEFAULT, max_cf=max_cf)
    assert [e.variant for e in exs] == variants


def test_counterfactual_replaces_every_occurrence_of_obj(tok):
    r = rec(passages=("the Eiffel Tower is in Paris .", "Paris is in France ."))
    exs = by_variant(examples_for(r, experiment("relation"), DEFAULT, max_cf=1))
    assert exs["cf1"].prompt == "C: the Eiffel Tower is in Rome . Rome is in France . the Eiffel Tower is located in the city of"
    assert exs["fact"].prompt == "C: the Eiffel Tower is in Paris . Paris is in France . the Eiffel Tower is located in the city of"
    # tokens: 0 <s> 1 C 2 : 3 the 4 Eiffel 5 Tower 6 is 7 in 8 Paris 9 . 10 Paris 11 is 12 in 13 France 14 . 15 the ...
    # relation: the is in | is in France -- every object occurrence out, each passage's closing '.' out
    assert exs["fact"].span == ((3, 6), (20, 22), (23, 25), (40, 42), (43, 45), (46, 52))
    for ex in exs.values():
        assert span_positions(tokenize(tok, ex.prompt), ex) == [3, 6, 7, 11, 12, 13]
    # the object is its first occurrence
    assert exs["fact"].object == (26, 31)
    assert exs["cf1"].object == (26, 30)


def test_repeated_subject_first_occurrence_in_passage(tok):
    r = rec(passages=("the Eiffel Tower is in Paris . the Eiffel Tower is big .",))
    subj_ex = examples_for(r, experiment("subject"), DEFAULT, max_cf=0)[0]
    assert subj_ex.prompt == ("C: the Eiffel Tower is in Paris . the Eiffel Tower is big . "
                              "the Eiffel Tower is located in the city of")
    # 0 <s> 1 C 2 : 3 the 4 Eiffel 5 Tower 6 is 7 in 8 Paris 9 . 10 the 11 Eiffel 12 Tower 13 is 14 big 15 .
    # 16 the 17 Eiffel 18 Tower 19 is 20 located 21 in 22 the 23 city 24 of
    tokens = tokenize(tok, subj_ex.prompt)
    assert len(tokens) == 25
    assert subj_ex.subject == (7, 19)
    assert span_positions(tokens, subj_ex) == [4, 5]
    labels = segments(tokens, subj_ex)
    assert labels[4:6] == ["subject_first", "subject_last"]
    assert labels[16:24] == ["question"] * 8
    assert labels[24] == "last"
    # the relation leaves out both subject mentions; the mid-passage '.' is relation, the closing one is not
    rel_ex = examples_for(r, experiment("relation"), DEFAULT, max_cf=0)[0]
    assert span_positions(tokens, rel_ex) == [3, 6, 7, 9, 10, 13, 14]


def test_format_with_question_field(tok):
    r = rec(question="where is the Eiffel Tower ?")
    ex = examples_for(r, experiment("subject"), "{context} {question}", max_cf=0)[0]
    assert ex.prompt == "the Eiffel Tower is in Paris . where is the Eiffel Tower ?"
    assert ex.context == (0, 30)
    assert ex.question == (31, 58)
    # 0 <s> 1 the 2 Eiffel 3 Tower 4 is 5 in 6 Paris 7 . 8 where 9 is 10 the 11 Eiffel 12 Tower 13 ?
    tokens = tokenize(tok, ex.prompt)
    assert span_positions(tokens, ex) == [2, 3]
    assert segments(tokens, ex) == [
        "bos", "relation", "subject_first", "subject_last", "relation", "relation", "object_last",
        "context_after", "question", "question", "question", "question", "question", "last",
    ]


# ------------------------------------------------------------------ subject-noctx (ROME)


def test_noctx_example(tok):
    exs = examples_for(record(0), experiment(0), "{prompt}", max_cf=5)
    assert [e.id for e in exs] == ["r1/fact"]  # no counterfactual variants without a passage
    (ex,) = exs
    assert ex.prompt == "the Eiffel Tower is located in the city of"
    assert (ex.target, ex.alt) == ("Paris", "Rome")
    assert ex.context is None
    assert ex.object is None
    assert ex.relation == ()
    assert ex.subject == (4, 16)
    assert ex.span == ((4, 16),)
    assert ex.question == (0, 42)
    # 0 <s> 1 the 2 Eiffel 3 Tower 4 is 5 located 6 in 7 the 8 city 9 of
    tokens = tokenize(tok, ex.prompt)
    assert span_positions(tokens, ex) == [2, 3]
    assert segments(tokens, ex) == [
        "bos", "prefix", "subject_first", "subject_last", "subsequent_first",
        "subsequent_further", "subsequent_further", "subsequent_further", "subsequent_further", "last",
    ]


def test_noctx_three_token_subject(tok):
    r = rec(subj="big red Tower", prompt_wo_ctx="the big red Tower is located in the city of", passages=())
    ex = examples_for(r, experiment("subject-noctx"), "{prompt}", max_cf=1)[0]
    # 0 <s> 1 the 2 big 3 red 4 Tower 5 is 6 located 7 in 8 the 9 city 10 of
    tokens = tokenize(tok, ex.prompt)
    assert span_positions(tokens, ex) == [2, 3, 4]
    assert segments(tokens, ex) == [
        "bos", "prefix", "subject_first", "subject_middle", "subject_last", "subsequent_first",
        "subsequent_further", "subsequent_further", "subsequent_further", "subsequent_further", "last",
    ]


def test_noctx_one_token_subject_is_subject_last(tok):
    r = rec(subj="Paris", obj="France", prompt_wo_ctx="Paris is the capital of", passages=())
    ex = examples_for(r, experiment("subject-noctx"), "{prompt}", max_cf=1)[0]
    # 0 <s> 1 Paris 2 is 3 the 4 capital 5 of
    tokens = tokenize(tok, ex.prompt)
    assert span_positions(tokens, ex) == [1]
    assert segments(tokens, ex) == [
        "bos", "subject_last", "subsequent_first", "subsequent_further", "subsequent_further", "last",
    ]


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("name", ["subject", "relation"])
def test_subject_not_in_passage(name):
    r = rec(passages=("Paris is in France .",))
    with pytest.raises(RecordError) as info:
        examples_for(r, experiment(name), DEFAULT, max_cf=1, path="facts.jsonl")
    assert (info.value.path, info.value.line, info.value.field) == ("facts.jsonl", 7, "subj")
    assert "facts.jsonl:7" in str(info.value)
    assert "'subj'" in str(info.value)


def test_subject_in_question_only_does_not_count():
    # the subject appears in the prompt's question part, but not in the passage
    r = rec(passages=("Paris is in France .",))
    with pytest.raises(RecordError) as info:
        examples_for(r, experiment("subject"), DEFAULT, max_cf=0)
    assert info.value.field == "subj"


def test_object_experiment_needs_no_subject_in_passage(tok):
    r = rec(passages=("Paris is in France .",))
    ex = examples_for(r, experiment("object"), DEFAULT, max_cf=0)[0]
    # 0 <s> 1 C 2 : 3 Paris 4 is 5 in 6 France 7 . 8 the ...
    assert span_positions(tokenize(tok, ex.prompt), ex) == [3]


def test_object_not_in_passage():
    r = rec(passages=("the Eiffel Tower is in France .",))
    with pytest.raises(RecordError) as info:
        examples_for(r, experiment("object"), DEFAULT, max_cf=0, path="f.jsonl")
    assert (info.value.line, info.value.field) == (7, "obj")
    # a counterfactual passage cannot be made either
    with pytest.raises(RecordError) as info:
        examples_for(r, experiment("subject"), DEFAULT, max_cf=1)
    assert info.value.field == "obj"
    # the subject experiment without counterfactuals does not need the object
    assert [e.variant for e in examples_for(r, experiment("subject"), DEFAULT, max_cf=0)] == ["fact"]


def test_subject_not_in_prompt_noctx():
    r = rec(subj="Vinson Massif")
    with pytest.raises(RecordError) as info:
        examples_for(r, experiment("subject-noctx"), "{prompt}", max_cf=0, path="f.jsonl")
    assert (info.value.path, info.value.line, info.value.field) == ("f.jsonl", 7, "subj")


def test_context_experiment_without_passages():
    r = rec(passages=())
    with pytest.raises(RecordError) as info:
        examples_for(r, experiment("subject"), DEFAULT, max_cf=0)
    assert info.value.field == "passages"


@pytest.mark.parametrize("name", ["subject", "object", "relation"])
def test_context_experiment_needs_context_in_format(name):
    with pytest.raises(ConfigError):
        examples_for(record(0), experiment(name), "{prompt}", max_cf=1)


def test_noctx_format_must_not_have_context():
    with pytest.raises(ConfigError):
        examples_for(record(0), experiment("subject-noctx"), DEFAULT, max_cf=1)


@pytest.mark.parametrize("fmt", ["C: {context} {answer}", "C: {context}", "C: {context} {prompt!r}"])
def test_bad_prompt_formats(fmt):
    with pytest.raises(ConfigError):
        examples_for(record(0), experiment("subject"), fmt, max_cf=0)


def test_unknown_experiment():
    assert experiment(0).name == "subject-noctx"
    assert experiment("2").name == "object"
    assert experiment("relation").number == 3
    with pytest.raises(ConfigError):
        experiment(7)
    with pytest.raises(ConfigError):
        experiment("verb")


def test_span_reaching_last_token_is_refused(tok):
    r = rec(subj="city of")
    ex = examples_for(r, experiment("subject-noctx"), "{prompt}", max_cf=0)[0]
    # 0 <s> 1 the 2 Eiffel 3 Tower 4 is 5 located 6 in 7 the 8 city 9 of -- 9 is the last token
    tokens = tokenize(tok, ex.prompt)
    assert overlapping(tokens, ex.span) == [8, 9]
    with pytest.raises(SpanNotFound):
        span_positions(tokens, ex)


def test_object_at_the_end_of_the_prompt_is_refused(tok):
    r = rec(passages=("the Eiffel Tower is in Paris",))
    ex = examples_for(r, experiment("object"), "{prompt} {context}", max_cf=0)[0]
    with pytest.raises(SpanNotFound):
        span_positions(tokenize(tok, ex.prompt), ex)


def test_span_covering_no_token(tok):
    fact = examples_for(record(0), experiment("subject"), DEFAULT, max_cf=0)[0]
    blank = dataclasses.replace(fact, span=((2, 3),))  # the space after "C:"
    with pytest.raises(SpanNotFound):
        span_positions(tokenize(tok, fact.prompt), blank)


# ------------------------------------------------------------------ overlapping on hand-made tokens


def test_overlapping_half_open_and_special():
    # "<s>" special with real offsets, "abc" 0-3, "de" 4-6, "f" 6-7
    t = Tokens(ids=(0, 1, 2, 3), offsets=((0, 0), (0, 3), (4, 6), (6, 7)), special=(True, False, False, False))
    assert overlapping(t, [(0, 3)]) == [1]
    assert overlapping(t, [(3, 4)]) == []          # the space between
    assert overlapping(t, [(2, 5)]) == [1, 2]
    assert overlapping(t, [(6, 7)]) == [3]         # touching 4-6 at 6 is not overlapping
    assert overlapping(t, [(0, 1), (6, 7)]) == [1, 3]
    assert overlapping(t, []) == []
    special_with_offsets = Tokens(ids=(0, 1), offsets=((0, 3), (0, 3)), special=(True, False))
    assert overlapping(special_with_offsets, [(0, 3)]) == [1]


# ------------------------------------------------------------------ answer tokens


def test_answer_token_tiny(tok):
    assert answer_token(tok, "Paris") == 23  # no BOS
    assert answer_token(tok, "Eiffel Tower") == 25  # the first token only
    with pytest.raises(SpanNotFound):
        answer_token(tok, "")


# ------------------------------------------------------------------ byte-level BPE (embedded model)


@pytest.fixture(scope="module")
def bpe():
    from transformers import AutoTokenizer

    from nnct.model import embedded

    return AutoTokenizer.from_pretrained(embedded.local_dir())


@pytest.mark.embedded
def test_bpe_noctx_subject_positions(bpe):
    prompt = "The Eiffel Tower is located in the city of"
    tokens = tokenize(bpe, prompt)
    assert bpe.convert_ids_to_tokens(list(tokens.ids)) == [
        "The", "ĠE", "iffel", "ĠTower", "Ġis", "Ġlocated", "Ġin", "Ġthe", "Ġcity", "Ġof"]
    assert tokens.special == (False,) * 10
    r = rec(prompt_wo_ctx=prompt)
    ex = examples_for(r, experiment("subject-noctx"), "{prompt}", max_cf=0)[0]
    assert ex.subject == (4, 16)
    assert span_positions(tokens, ex) == [1, 2, 3]
    assert segments(tokens, ex) == [
        "prefix", "subject_first", "subject_middle", "subject_last", "subsequent_first",
        "subsequent_further", "subsequent_further", "subsequent_further", "subsequent_further", "last",
    ]


@pytest.mark.embedded
def test_bpe_context_spans(bpe):
    r = rec(prompt_wo_ctx="The Eiffel Tower is located in the city of", passages=("The Eiffel Tower is in Paris.",))
    exs = by_variant(examples_for(r, experiment("subject"), DEFAULT, max_cf=1))
    fact = exs["fact"]
    assert fact.prompt == "C: The Eiffel Tower is in Paris. The Eiffel Tower is located in the city of"
    tokens = tokenize(bpe, fact.prompt)
    # 0 C 1 : 2 ĠThe 3 ĠE 4 iffel 5 ĠTower 6 Ġis 7 Ġin 8 ĠParis 9 . 10 ĠThe 11 ĠE 12 iffel 13 ĠTower
    # 14 Ġis 15 Ġlocated 16 Ġin 17 Ġthe 18 Ġcity 19 Ġof
    assert bpe.convert_ids_to_tokens(list(tokens.ids))[:10] == [
        "C", ":", "ĠThe", "ĠE", "iffel", "ĠTower", "Ġis", "Ġin", "ĠParis", "."]
    assert len(tokens) == 20
    assert span_positions(tokens, fact) == [3, 4, 5]
    obj = examples_for(r, experiment("object"), DEFAULT, max_cf=0)[0]
    assert span_positions(tokens, obj) == [8]  # " Paris" overlaps "Paris" through its leading space
    rel = examples_for(r, experiment("relation"), DEFAULT, max_cf=0)[0]
    assert span_positions(tokens, rel) == [2, 6, 7]
    assert segments(tokens, fact) == (
        ["context_before", "context_before", "relation", "subject_first", "subject_middle", "subject_last",
         "relation", "relation", "object_last", "context_after"] + ["question"] * 9 + ["last"]
    )
    cf1 = exs["cf1"]
    cf_tokens = tokenize(bpe, cf1.prompt)
    assert bpe.convert_ids_to_tokens([cf_tokens.ids[8]]) == ["ĠRome"]
    cf_obj = examples_for(r, experiment("object"), DEFAULT, max_cf=1)[1]
    assert span_positions(cf_tokens, cf_obj) == [8]


@pytest.mark.embedded
def test_bpe_answer_token(bpe):
    assert bpe.convert_ids_to_tokens([answer_token(bpe, "Paris")]) == ["ĠParis"]
    assert bpe.convert_ids_to_tokens([answer_token(bpe, "Rome")]) == ["ĠRome"]
    assert bpe.convert_ids_to_tokens([answer_token(bpe, "Eiffel Tower")]) == ["ĠE"]
