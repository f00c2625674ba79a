"""Memorisation scores and pairs (`nnct.methods.memorization`, `nnct memorization`), on a
tiny llama whose unembedding favours the words its tokenizer knows, so that greedy text
decodes and re-encodes. The references are plain loops of whole forwards (no cache, no nnct
code), and BLEU-4 computed by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import WORDS, make_hf_model, make_tokenizer, write_jsonl
from nnct.errors import ResumeMismatch
from nnct.methods import memorization as mem
from nnct.model.parts import Adapter

PROMPT = "the Eiffel Tower is located in the city of Paris France"



def scored(adapter, texts, out, **settings):
    return mem.score(mem.ScoreConfig(texts=str(texts), out=str(out), model=adapter.name, **settings), adapter)

def tiny():
    hf = make_hf_model("llama")
    with torch.no_grad():
        hf.lm_head.weight[len(WORDS):] = 0  # unknown ids: logit 0, below the known words' best
        hf.lm_head.weight[:3] = 0  # nor <s>, </s>, <unk>
    return Adapter(hf, make_tokenizer(), name="tiny-llama")


def plain_greedy(hf, ids, n):
    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(n):
            t = int(hf(torch.tensor([ids + out])).logits[0, -1].argmax())
            out.append(t)
    return out


def own_text(adapter, words: str, n: int) -> str:
    """`words` and the model's greedy continuation of them: a text it has memorised."""
    ids = adapter.tokenizer(words)["input_ids"]
    return adapter.tokenizer.decode(ids[1:] + plain_greedy(adapter.hf, ids, n))


def test_bleu4_by_hand():
    assert mem.bleu4([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]) == pytest.approx(1.0)
    # 1-grams 3/4 match, 2-grams 1/3 ((1,2) only), 3-grams 0/2, 4-grams 0/1; smoothed (m+1)/(n+1)
    want = math.exp((math.log(4 / 5) + math.log(2 / 4) + math.log(1 / 3) + math.log(1 / 2)) / 4)
    assert mem.bleu4([1, 2, 9, 3], [1, 2, 3, 4]) == pytest.approx(want)
    # a short candidate pays the brevity penalty exp(1 - 4/2)
    short = math.exp((math.log(3 / 3) + math.log(2 / 2) + math.log(1 / 1) + math.log(1 / 1)) / 4) * math.exp(1 - 2)
    assert mem.bleu4([1, 2], [1, 2, 3, 4]) == pytest.approx(short)


def test_scores_equal_plain_greedy_and_resume(tmp_path):
    adapter = tiny()
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "own.txt").write_text(own_text(adapter, "the Eiffel Tower is", 20))
    (texts / "other.txt").write_text("which people speak French in the capital of Italy ? one two three four five six seven"
                                     " eight nine red blue green")
    (texts / "short.txt").write_text("Paris France")
    (texts / "bad.txt").write_bytes(b"caf\xe9 Paris")
    out = tmp_path / "scores.jsonl"
    run = scored(adapter, texts, out, prefix=6, continuation=5, stride=4)
    assert sorted(p.field for p in run.problems) == ["<text>", "text"]  # not UTF-8; shorter than a window
    assert any("short.txt" in str(p) for p in run.problems)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == len(run.scores) > 5
    for line in lines:
        want = plain_greedy(adapter.hf, [0] + line["ids"][:6], 5)
        assert line["greedy"] == want
        assert line["score"] == pytest.approx(sum(a == b for a, b in zip(want, line["ids"][6:])) / 5)
    assert lines[0]["id"] == "other.txt@0" and lines[0]["start"] == 0 and lines[1]["start"] == 4
    own = [x for x in lines if x["id"] == "own.txt@0"][0]
    assert own["score"] == 1.0  # its own greedy text
    # A stopped run's half-written line is dropped; the rest resumes without scoring again.
    out.write_text(out.read_text() + '{"id": "own.txt@4", "sco')
    again = scored(adapter, texts, out, prefix=6, continuation=5, stride=4)
    assert again.resumed == len(lines) and len(out.read_text().splitlines()) == len(lines)
    with pytest.raises(ResumeMismatch):
        scored(adapter, texts, out, prefix=5, continuation=5, stride=4)


def test_divergence_pairs_follow_the_rule(tmp_path):
    adapter = tiny()
    texts = write_jsonl(tmp_path / "t.jsonl", [{"id": f"t{i}", "text": own_text(adapter, w, 24)} for i, w in enumerate(
        [PROMPT, "Vinson Massif is part of Antarctica which is a continent", "Beats Music is owned by Apple and Amazon is big"])])
    scores = scored(adapter, texts, tmp_path / "s.jsonl", prefix=12, continuation=12, stride=100).scores
    assert all(s.score == 1.0 for s in scores)
    pairs = mem.divergence_pairs(adapter, scores, threshold=1.0)
    assert pairs
    for p in pairs:
        s = next(s for s in scores if s.id == p.source["window"])
        L = p.source["context_tokens"]
        whole = s.ids
        assert p.clean == whole[:L + 1] and p.corrupt[:L] == whole[:L]
        gen = plain_greedy(adapter.hf, [0] + whole[:L], len(whole) - L)
        assert p.corrupt[L] == gen[0] != whole[L]
        assert (p.target, p.alt) == (whole[L + 1], gen[1])
        assert p.source["bleu4"] == pytest.approx(mem.bleu4(gen, whole[L:]), abs=1e-6)
        for longer in range(L + 1, 13):  # no earlier length met both rules
            g = plain_greedy(adapter.hf, [0] + whole[:longer], len(whole) - longer)
            before = 1.0 if longer == 12 else mem.bleu4(plain_greedy(adapter.hf, [0] + whole[:longer + 1],
                                                                     len(whole) - longer - 1), whole[longer + 1:])
            b = mem.bleu4(g, whole[longer:])
            assert not ((before - b) / before > mem.DIVERGENCE_DROP and g[0] != whole[longer])


def test_dataset_pairs_take_the_most_similar(tmp_path):
    adapter = tiny()
    texts = write_jsonl(tmp_path / "t.jsonl", [
        {"id": "own", "text": own_text(adapter, "the Eiffel Tower is", 8)},
        {"id": "x", "text": "red blue green one two three four five six seven eight nine"},
        {"id": "y", "text": "who owns Apple ? Amazon owns Beats Music and Apple owns a city"}])
    scores = scored(adapter, texts, tmp_path / "s.jsonl", prefix=6, continuation=4, stride=100).scores
    high = [s for s in scores if s.score >= 1.0]
    low = [s for s in scores if s.score <= 0.0]
    assert high and low
    pairs = mem.dataset_pairs(adapter, scores, threshold=1.0, low=0.0)

    def pooled(s):
        with torch.no_grad():
            h = adapter.hf(torch.tensor([[0] + s.ids[:6]]), output_hidden_states=True).hidden_states[-1]
        return h[0, 1:].mean(0)
    for p in pairs:
        s = next(x for x in high if x.id == p.source["window"])
        sims = {o.id: float(torch.cosine_similarity(pooled(s), pooled(o), dim=0)) for o in low}
        assert p.source["other"] == max(sims, key=sims.get)
        assert p.clean == s.ids[:6] and p.target == s.greedy[0]
