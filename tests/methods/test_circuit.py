"""`nnct memorization` and `nnct circuit` end to end on a tiny llama directory: scores to
pairs that `nnct patch` reads, a circuit found and verified, its picture. Checked against
what holds whatever the scores are: the graph's edge count by hand, faithfulness 1 for the
whole graph and 0 for none, the binary search's own record, random circuits of the size
asked for."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import WORDS, invoke, make_hf_model, make_tokenizer, write_jsonl
from nnct.model.graph import Graph
from nnct.results import circuit as circuit_file
from nnct.results.cube import open_cube

PAIRS = [
    {"id": "p1", "clean": "the Eiffel Tower is located in the city of", "corrupt": "the Vinson Massif is located in the city of",
     "target": "Paris", "alt": "Rome"},
    {"id": "p2", "clean": "Beats Music is owned by", "corrupt": "Vinson Massif is owned by", "target": "Apple", "alt": "Amazon"},
    {"id": "p3", "clean": "the capital of France is", "corrupt": "the capital of Italy is", "target": "Paris", "alt": "Rome"},
    {"id": "bad", "clean": "the capital of France is", "corrupt": "the big capital of Italy is", "target": "Paris", "alt": "Rome"},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-mem")
    hf = make_hf_model("llama")
    with torch.no_grad():
        hf.lm_head.weight[len(WORDS):] = 0
        hf.lm_head.weight[:3] = 0
    hf.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def found(model_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("circuit")
    pairs = write_jsonl(d / "pairs.jsonl", PAIRS)
    out = d / "circuit.nc"
    result = invoke("circuit", "find", "--model", model_dir, "--pairs", pairs, "--ig-steps", 3, "--target", 0.85,
                    "--out", out)
    return result, out, pairs, d


def test_find_writes_scores_and_the_minimal_circuit(found):
    result, out, _, _ = found
    assert result.exit_code == 0, result.output
    assert "skipped" in result.stderr and "bad" not in result.stdout  # the pair of unequal lengths
    ds = circuit_file.read(out)
    # 4 layers, 4 query and 2 key/value heads: each layer's 8 q/k/v destinations read the
    # embedding and 5 nodes per earlier layer, its MLP also its own 4 heads; the logits all 21.
    by_hand = sum(8 * (1 + 5 * layer) + (1 + 5 * layer + 4) for layer in range(4)) + 21
    assert ds.attrs["total_edges"] == by_hand == int(np.isfinite(ds.score.values).sum())
    assert ds.sizes == {"source": 21, "destination": 37, "step": len(ds.search_edges), "mib_point": 10}
    assert ds.attrs["n_pairs"] == 3 and ds.attrs["ig_steps"] == 3
    n, f = ds.attrs["minimal_edges_selected"], ds.attrs["faithfulness"]
    assert 1 <= n <= by_hand and f >= 0.85
    search = dict(zip(ds.search_edges.values.tolist(), ds.search_faithfulness.values.tolist()))
    assert all(v < 0.85 for k, v in search.items() if k < n) and all(v >= 0.85 for k, v in search.items() if k >= n)
    # sizes after pruning: the top-n edges less those off every path from the embedding to the logits
    g = Graph(4, 4, 2)
    pruned = dict(zip(ds.search_edges.values.tolist(), ds.search_edges_pruned.values.tolist()))
    assert pruned == {k: int(g.prune(circuit_file.top_edges(ds.score.values, k)).sum()) for k in pruned}
    assert ds.attrs["minimal_edges"] == pruned[n] <= n
    assert any(pruned[k] < k for k in pruned)  # the search's circuits lost edges to pruning
    # MIB's grid: int(fraction * 343) edges selected; 0 edges is the empty circuit, 343 the whole graph
    assert ds.mib_edges_selected.values.tolist() == [0, 0, 1, 3, 6, 17, 34, 68, 171, 343]
    assert (ds.mib_edges.values <= ds.mib_edges_selected.values).all() and ds.mib_edges.values[-1] == 343
    mib_f = ds.mib_faithfulness.values
    assert mib_f[0] == pytest.approx(0.0, abs=1e-5) and mib_f[-1] == pytest.approx(1.0, abs=1e-5)
    x = ds.mib_fractions.values
    assert x.tolist() == [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
    assert ds.attrs["cpr"] == pytest.approx(sum((x[i + 1] - x[i]) * (mib_f[i] + mib_f[i + 1]) / 2 for i in range(9)))
    assert ds.attrs["cmd"] == pytest.approx(sum((x[i + 1] - x[i]) * (abs(1 - mib_f[i]) + abs(1 - mib_f[i + 1])) / 2
                                                for i in range(9)))
    assert f"CPR {ds.attrs['cpr']:.3f}, CMD {ds.attrs['cmd']:.3f}" in result.stdout
    assert f"minimal circuit {pruned[n]} of 343 edges" in result.stdout and f"top {n} before pruning" in result.stdout


def test_verify_whole_graph_and_random_circuits(found, tmp_path):
    _, out, pairs, _ = found
    ds = circuit_file.read(out)
    total = ds.attrs["total_edges"]
    whole = tmp_path / "whole.json"
    result = invoke("circuit", "verify", out, "--pairs", pairs, "--edges", total, "--random", 2, "--json", whole)
    assert result.exit_code == 0, result.output
    r = json.loads(whole.read_text())
    assert r["faithfulness"] == pytest.approx(1.0, abs=1e-5)
    assert r["random_faithfulness"] == pytest.approx([1.0, 1.0], abs=1e-5)  # all edges, however drawn
    assert r["m_clean"] == pytest.approx(ds.attrs["m_clean"], abs=1e-5)
    small = tmp_path / "small.json"
    result = invoke("circuit", "verify", out, "--pairs", pairs, "--random", 3, "--json", small)
    assert result.exit_code == 0, result.output
    r = json.loads(small.read_text())
    assert r["edges_selected"] == ds.attrs["minimal_edges_selected"] and r["edges"] == ds.attrs["minimal_edges"]
    assert r["faithfulness"] == pytest.approx(ds.attrs["faithfulness"], abs=1e-5)
    assert len(r["random_faithfulness"]) == 3 and r["random_faithfulness_ci"][0] <= r["random_faithfulness_mean"]
    assert len(r["random_edges_pruned"]) == 3 and max(r["random_edges_pruned"]) <= r["edges"]
    counts = [c["edges_selected"] for c in r["curve"]]
    assert counts[0] == 1 and counts[-1] == total and r["edges_selected"] in counts
    assert all(c["edges"] <= c["edges_selected"] for c in r["curve"])
    assert r["curve"][-1]["faithfulness"] == pytest.approx(1.0, abs=1e-5)
    assert {"edges", "total_edges", "faithfulness", "random_faithfulness_mean", "random_faithfulness_ci", "m_clean",
            "m_corrupt"} <= set(r)
    # on the pairs it was found on, verify's MIB grid is find's
    assert [p["edges_selected"] for p in r["mib_curve"]] == ds.mib_edges_selected.values.tolist()
    assert [p["edges"] for p in r["mib_curve"]] == ds.mib_edges.values.tolist()
    np.testing.assert_allclose([p["faithfulness"] for p in r["mib_curve"]], ds.mib_faithfulness.values, atol=1e-5)
    assert r["cpr"] == pytest.approx(ds.attrs["cpr"], abs=1e-5) and r["cmd"] == pytest.approx(ds.attrs["cmd"], abs=1e-5)
    assert f"MIB CPR {r['cpr']:.3f}, CMD {r['cmd']:.3f}" in result.stdout


def test_verify_reads_a_circuit_file_written_before_pruning(found, tmp_path):
    """Such a file has `minimal_edges` (the top-n count then) and no `minimal_edges_selected`."""
    _, out, pairs, _ = found
    ds = circuit_file.read(out)
    n = ds.attrs["minimal_edges_selected"]
    old = ds.drop_vars(["search_edges_pruned", "mib_fractions", "mib_edges_selected", "mib_edges", "mib_faithfulness"])
    for key in ("minimal_edges_selected", "cpr", "cmd"):
        del old.attrs[key]
    old.attrs["minimal_edges"] = n
    circuit_file.write(old, tmp_path / "old.nc")
    result = invoke("circuit", "verify", tmp_path / "old.nc", "--pairs", pairs, "--random", 0, "--json", tmp_path / "v.json")
    assert result.exit_code == 0, result.output
    r = json.loads((tmp_path / "v.json").read_text())
    assert r["edges_selected"] == n and r["edges"] == ds.attrs["minimal_edges"]


def test_plot_draws_the_circuit(found, tmp_path):
    _, out, _, _ = found
    result = invoke("plot", out, "-o", tmp_path / "fig", "--edges", 12)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == ["circuit.pdf", "circuit.png", "circuit.svg"]
    from nnct.analysis.plot import circuit_figure

    ds = circuit_file.read(out)
    kept = int(Graph(4, 4, 2).prune(circuit_file.top_edges(ds.score.values, 12)).sum())
    ax = circuit_figure(ds, 12).axes[0]
    assert "the top 12 of 343 edges" in ax.get_title() and f"{kept} after pruning ({12 - kept} pruned:" in ax.get_title()
    drawn = [line for line in ax.get_lines() if len(line.get_xdata())]  # the legend's lines are empty
    assert len(drawn) == kept


def test_memorization_pairs_feed_patch(model_dir, tmp_path):
    from test_memorization import own_text, tiny

    adapter = tiny()  # the same weights as model_dir's
    texts = write_jsonl(tmp_path / "t.jsonl", [{"id": f"t{i}", "text": own_text(adapter, w, 24)} for i, w in enumerate(
        ["the Eiffel Tower is located in the city of Paris France", "Vinson Massif is part of Antarctica which is a continent",
         "Beats Music is owned by Apple and Amazon is big"])] + [{"id": "t3", "text": "a short text"}])
    scores = tmp_path / "scores.jsonl"
    result = invoke("memorization", "score", "--model", model_dir, "--texts", texts, "--prefix", 12, "--continuation", 12,
                    "--out", scores, "-q")
    assert result.exit_code == 0, result.output
    assert "'t3' has" in result.stderr and "3 windows" in result.stdout
    pairs = tmp_path / "pairs.jsonl"
    result = invoke("memorization", "pairs", "--scores", scores, "--threshold", 1.0, "--out", pairs)
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in pairs.read_text().splitlines()]
    assert lines and {"clean", "corrupt", "target", "alt", "target_token", "alt_token"} <= set(lines[0])
    cube = tmp_path / "patch.nc"
    result = invoke("patch", "--model", model_dir, "--pairs", pairs, "--components", "hidden", "--out", cube, "-q")
    assert result.exit_code == 0, result.output
    ds = open_cube(cube)
    assert ds.sizes["example"] == len(lines)
    # the cube's answers are the pairs' exact tokens: its clean p is the tokens' probability
    with torch.no_grad():
        hf = adapter.hf
        ids = adapter.tokenizer(lines[0]["clean"])["input_ids"]
        p = hf(torch.tensor([ids])).logits[0, -1].softmax(-1)[lines[0]["target_token"]]
    assert float(ds.p_clean.values[0, 0]) == pytest.approx(float(p), rel=1e-4)


def test_find_in_a_serialised_session_gives_the_same_scores(found, model_dir, tmp_path):
    """`--remote local`: every trace sent through nnsight's simulation of a request, as a
    server would run it; the scores and the search equal the run here."""
    _, here, pairs, _ = found
    out = tmp_path / "remote.nc"
    result = invoke("circuit", "find", "--model", model_dir, "--pairs", pairs, "--ig-steps", 3, "--remote", "local",
                    "--out", out, "-q")
    assert result.exit_code == 0, result.output
    a, b = circuit_file.read(here), circuit_file.read(out)
    np.testing.assert_allclose(b.score.values, a.score.values, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(b.score_eap.values, a.score_eap.values, rtol=1e-4, atol=1e-6)
    assert b.attrs["minimal_edges"] == a.attrs["minimal_edges"] and b.attrs["backend"] == "nnsight remote=local"


def test_the_python_api_gives_the_command_s_circuit(found, model_dir):
    import nnct

    _, out, pairs, _ = found
    with pytest.warns(UserWarning, match="skipped"):
        ds = nnct.circuit(str(model_dir), str(pairs), ig_steps=3)
    np.testing.assert_allclose(ds.score.values, circuit_file.read(out).score.values, rtol=1e-6)


def test_a_stored_model_that_moved_is_refused_and_model_overrides_it(found, model_dir, tmp_path):
    """`circuit verify` and `memorization pairs` load the model their input names; nnct 0.5 had
    no `--model` to name another (pairs refused it as an unknown option), and a name that no
    longer loads gave a bare loading error."""
    import shutil

    _, _, pairs, _ = found
    moved, there = tmp_path / "was-here", tmp_path / "now-here"
    shutil.copytree(model_dir, moved)
    circuit_out, scores = tmp_path / "c.nc", tmp_path / "s.jsonl"
    texts = tmp_path / "t.txt"
    texts.write_text("the Eiffel Tower is located in the city of Paris France and the capital of Italy is Rome")
    for args in (["circuit", "find", "--pairs", pairs, "--ig-steps", 2, "--out", circuit_out, "-q"],
                 ["memorization", "score", "--texts", texts, "--prefix", 4, "--continuation", 3, "--out", scores, "-q"]):
        done = invoke(*args, "--model", moved)
        assert done.exit_code == 0, done.output
    shutil.move(moved, there)
    verify = ["circuit", "verify", circuit_out, "--pairs", pairs, "--random", 1, "--edges", 5, "--json", tmp_path / "v.json"]
    make_pairs = ["memorization", "pairs", "--scores", scores, "--mode", "dataset", "--threshold", 0.0, "--low", 1.0,
                  "--out", tmp_path / "p.jsonl"]
    for args, made_from in ((verify, circuit_out), (make_pairs, scores)):
        done = invoke(*args)
        assert done.exit_code == 2 and "pass --model" in done.output and str(made_from) in done.output, done.output
        done = invoke(*args, "--model", there)
        assert done.exit_code == 0, done.output
    assert json.loads((tmp_path / "v.json").read_text())["model"] == str(there)
