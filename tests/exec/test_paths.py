"""Path patching (`nnct.exec.paths`, `nnct patch --path`) against two independent computations.

- `edges.patched_metric` with exactly the edges sender -> receiver dropped (itself checked
  against plain autograd and hooks in test_edges.py): path patching is that, in one batched
  forward per group of senders, with the layers before the first receiver skipped.
- A plain-PyTorch reference for the direct effect, sharing no code with nnct: forward hooks on
  the output projection's input and on the MLP give a_u(clean) and a_u(corrupt), and a
  pre-hook on the final norm adds their difference to the final residual stream.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import invoke, make_adapter, make_hf_model, make_tokenizer, write_jsonl
from nnct.errors import ConfigError
from nnct.exec import edges, paths
from nnct.model.graph import graph_of

CLEAN = [0, 8, 25, 26, 7, 12, 30]
CORRUPT = [0, 8, 41, 26, 7, 12, 30]
TARGET, ALT = 5, 9
PAIR = (CLEAN, CORRUPT, TARGET, ALT)


def hook_reference(hf, family: str, ids: list[int], added=None):
    """(node outputs [node, token, d] in nnct's order: emb, per layer heads then the MLP;
    probabilities at the last position [vocab]) of a plain forward, with `added` [token, d]
    added to the final residual stream before the final norm."""
    gpt2 = family == "gpt2"
    body = hf.transformer if gpt2 else hf.model
    layers, final = (body.h, body.ln_f) if gpt2 else (body.layers, body.norm)
    H = hf.config.num_attention_heads
    dh = hf.config.hidden_size // H
    out, handles = [], []
    handles.append(layers[0].register_forward_pre_hook(lambda m, a: out.append(a[0][0])))
    for layer in layers:
        proj = layer.attn.c_proj if gpt2 else layer.self_attn.o_proj

        def heads(m, a, proj=proj):
            z = a[0][0]
            for h in range(H):
                cols = slice(h * dh, (h + 1) * dh)
                out.append(z[:, cols] @ proj.weight[cols] if gpt2 else F.linear(z[:, cols], proj.weight[:, cols]))
        handles.append(proj.register_forward_pre_hook(heads))
        handles.append(layer.mlp.register_forward_hook(lambda m, a, y: out.append(y[0])))
    if added is not None:
        handles.append(final.register_forward_pre_hook(lambda m, a: (a[0] + added,)))
    try:
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0, -1]
    finally:
        for h in handles:
            h.remove()
    return torch.stack(out), logits.float().softmax(-1)


def dropped(g, sender: int, dests: list[int]) -> torch.Tensor:
    out = torch.zeros(g.n_nodes, g.n_dests, dtype=torch.bool)
    for v in dests:
        out[sender, v] = bool(g.edges[sender, v])
    return out


def run_paths(adapter, spec: str, denoise: bool = False, rows: int = 3):
    g, acc = graph_of(adapter)
    dests = paths.destinations(g, paths.parse(spec))
    heads, mlps = paths.senders(g)
    sent = [u for u, f in zip(heads + mlps, paths.feeding(g, heads + mlps, dests)) if f]
    base, values = paths.pair_values(acc, g, PAIR, dests, paths.reading(()), denoise, sent, rows)
    return g, acc, dests, sent, base, values


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_the_direct_effect_is_the_edge_to_the_logits_and_the_hook_reference(family):
    adapter = make_adapter(family)
    g, acc, dests, sent, base, values = run_paths(adapter, "logits")
    assert len(sent) == g.n_layers * g.per_layer  # every head and MLP reaches the logits
    clean_nodes, p_clean = hook_reference(adapter.hf, family, CLEAN)
    corrupt_nodes, p_corrupt = hook_reference(adapter.hf, family, CORRUPT)
    torch.testing.assert_close(base[:, :2].float(), torch.stack([p_clean, p_corrupt])[:, [TARGET, ALT]], atol=1e-5, rtol=1e-4)
    nodes = edges.node_values(acc, g, CLEAN, CORRUPT, TARGET, ALT)
    spread = 0.0
    for i, u in enumerate(sent):
        want = edges.patched_metric(acc, g, CLEAN, nodes.outputs[1], dropped(g, u, dests), TARGET, ALT)
        assert float(values[i, 2] - values[i, 3]) == pytest.approx(want, abs=1e-4), g.nodes[u][0]
        _, p = hook_reference(adapter.hf, family, CLEAN, added=corrupt_nodes[u] - clean_nodes[u])
        torch.testing.assert_close(values[i, :2].float(), p[[TARGET, ALT]], atol=1e-5, rtol=1e-4)
        spread = max(spread, abs(want - float(nodes.metric[0])))
    assert spread > 0.1  # the senders' paths change something


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("denoise", [False, True])
def test_a_set_of_receivers_is_those_edges_patched(family, denoise):
    """Two heads' queries, one head's three inputs (a key/value head shared under grouped
    attention) and an MLP: each sender's row equals `patched_metric` with exactly its edges
    to them dropped; denoising runs the corrupt prompt with the clean outputs."""
    adapter = make_adapter(family)
    g, acc, dests, sent, base, values = run_paths(adapter, "L1H2.q, L2H0.q,L2H3,mlp3", denoise)
    assert [g.dests[v][0] for v in dests] == ["a1.h2.q", "a2.h0.q", "a2.h3.q", f"a2.g{3 // (4 // g.n_kv)}.k",
                                              f"a2.g{3 // (4 // g.n_kv)}.v", "m3"]
    assert sorted(sent) == list(range(1, g.node(3, None)))  # every head and MLP before the MLP of layer 3
    nodes = edges.node_values(acc, g, CLEAN, CORRUPT, TARGET, ALT)
    run, source = (CORRUPT, nodes.outputs[0]) if denoise else (CLEAN, nodes.outputs[1])
    m_base = float(nodes.metric[1 if denoise else 0])
    assert float(base[1 if denoise else 0, 2] - base[1 if denoise else 0, 3]) == pytest.approx(m_base, abs=1e-4)
    moved = 0.0
    for i, u in enumerate(sent):
        want = edges.patched_metric(acc, g, run, source, dropped(g, u, dests), TARGET, ALT)
        assert float(values[i, 2] - values[i, 3]) == pytest.approx(want, abs=1e-4), g.nodes[u][0]
        moved = max(moved, abs(want - m_base))
    assert moved > 1e-2


def test_batching_does_not_change_the_values():
    adapter = make_adapter("llama")
    *_, one = run_paths(adapter, "L2H1,logits", rows=1)
    *_, many = run_paths(adapter, "L2H1,logits", rows=64)
    torch.testing.assert_close(one, many, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("spec, says", [("L1X2", "receiver 'L1X2'"), ("", "receiver ''"), ("L1H2.o", "receiver 'L1H2.o'"),
                                        ("mlp", "receiver 'mlp'")])
def test_a_bad_spec_is_a_config_error(spec, says):
    with pytest.raises(ConfigError, match=says):
        paths.parse(spec)


def test_receivers_outside_the_model_are_config_errors():
    g, _ = graph_of(make_adapter("llama"))
    assert paths.parse("l3h1.K,MLP0,logits,L3H1.k") == (paths.Receiver("k", 3, 1), paths.Receiver("mlp", 0),
                                                       paths.Receiver("logits"))
    with pytest.raises(ConfigError, match="layers 0-3"):
        paths.destinations(g, paths.parse("L4H0"))
    with pytest.raises(ConfigError, match="heads 0-3"):
        paths.destinations(g, paths.parse("L1H4.q"))


# -- the method, the API and the command ---------------------------------------------------------

PAIRS = [
    {"id": "p1", "clean": "the Eiffel Tower is located in the city of", "corrupt": "the Vinson Massif is located in the city of",
     "target": "Paris", "alt": "Rome"},
    {"id": "p2", "clean": "the capital of France is", "corrupt": "the capital of Italy is", "target": "Paris", "alt": "Rome"},
    {"id": "bad", "clean": "the capital of France is", "corrupt": "the big capital of Italy is", "target": "Paris", "alt": "Rome"},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-paths")
    make_hf_model("llama").save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", PAIRS)


def test_the_api_returns_the_labelled_file(model_dir):
    import nnct
    from nnct.methods.circuit import token_pairs
    from nnct.model.loading import load

    with pytest.warns(UserWarning, match="<pairs>:3: field .corrupt."):
        ds = nnct.patch(str(model_dir), PAIRS, path=True, receivers="L2H1.q,mlp2", readout="kl,rank", batch_size=4)
    assert ds.p_path.dims == ("example", "sender_layer", "sender_head", "answer")
    assert ds.p_path_mlp.dims == ("example", "sender_layer", "answer") and ds.kl_path.dims == ds.p_path.dims[:3]
    assert list(ds.example.values) == ["p1", "p2"] and ds.attrs["receivers"] == "L2H1.q,mlp2"
    assert ds.attrs["direction"] == "noising" and ds.attrs["readouts"] == "kl,rank"
    # layer 2's heads feed only the MLP of their layer; layer 3 feeds nothing: NaN
    assert np.isnan(ds.p_path.sel(sender_layer=3)).all() and not np.isnan(ds.p_path.sel(sender_layer=2)).any()
    assert np.isnan(ds.p_path_mlp.sel(sender_layer=[2, 3])).all() and not np.isnan(ds.p_path_mlp.sel(sender_layer=1)).any()
    assert float(ds.kl_clean.max()) == pytest.approx(0.0, abs=1e-6) and float(ds.kl_corrupt.min()) > 0
    # the same numbers as the executor's, for the first pair
    adapter = load(str(model_dir))
    p = token_pairs(adapter, PAIRS[:1])[0][0]
    g, acc = graph_of(adapter)
    dests = paths.destinations(g, paths.parse("L2H1.q,mlp2"))
    heads, _ = paths.senders(g)
    _, values = paths.pair_values(acc, g, (p.clean, p.corrupt, p.target, p.alt), dests, paths.reading(()), False,
                                  heads[:4], 4)
    np.testing.assert_allclose(ds.p_path.sel(example="p1", sender_layer=0).values, values[:, :2].numpy(), atol=1e-6)


def test_the_command_writes_the_file_and_plots_it(model_dir, pairs_file, tmp_path):
    from nnct.results import paths as path_file

    out = tmp_path / "paths.nc"
    result = invoke("patch", "--model", model_dir, "--pairs", pairs_file, "--path", "--denoise", "--readout", "logprob",
                    "--out", out)
    assert result.exit_code == 0, result.output
    assert "skipped" in result.stderr and "denoising path patching to logits" in result.stdout
    ds = path_file.read(out)
    assert ds.attrs["base"] == "corrupt" and "logprob_path_mlp" in ds and "settings" in ds.attrs
    assert not np.isnan(ds.p_path).any()  # every sender reaches the logits
    assert path_file.is_path_file(out)
    figures = invoke("plot", out, "-o", tmp_path / "fig")
    assert figures.exit_code == 0, figures.output
    assert (tmp_path / "fig" / "paths.png").stat().st_size > 0


@pytest.mark.parametrize("args, says", [(["--receivers", "L1H9"], "receiver L1H9.q: the model has heads 0-3"),
                                        (["--receivers", "q1"], "receiver 'q1'"),
                                        (["--window", "3"], "--window: not used by --path"),
                                        (["--readout", "nope"], "unknown readout 'nope'")])
def test_bad_settings_are_one_line_and_exit_2(model_dir, pairs_file, tmp_path, args, says):
    result = invoke("patch", "--model", model_dir, "--pairs", pairs_file, "--path", *args, "--out", tmp_path / "x.nc")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("nnct: error:")]
    assert len(errors) == 1 and says in errors[0], result.stderr
    assert not (tmp_path / "x.nc").exists()


def test_without_path_the_path_options_are_refused(model_dir, pairs_file, tmp_path):
    result = invoke("patch", "--model", model_dir, "--pairs", pairs_file, "--denoise", "--out", tmp_path / "x.nc")
    assert result.exit_code == 2 and "belong to --path" in result.stderr


def test_nnsight_remote_simulation_gives_the_same_file(model_dir, pairs_file, tmp_path):
    """`--remote local`: the whole run sent as one nnsight session (the code travels as a
    request would), the same numbers as here."""
    from nnct.results import paths as path_file

    files = []
    for name, extra in (("here", []), ("there", ["--remote", "local"])):
        out = tmp_path / f"{name}.nc"
        result = invoke("patch", "--model", model_dir, "--pairs", pairs_file, "--path", "--receivers", "L3H0", "--readout",
                        "kl", "--batch-size", 5, "--out", out, *extra)
        assert result.exit_code == 0, result.output
        files.append(path_file.read(out))
    here, there = files
    assert there.attrs["backend"] == "nnsight remote=local"
    for name in ("p_path", "p_path_mlp", "logit_path", "kl_path", "p_clean", "p_corrupt"):
        np.testing.assert_allclose(there[name].values, here[name].values, atol=1e-6, equal_nan=True)
