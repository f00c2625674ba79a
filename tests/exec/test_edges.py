"""Edge attribution and edge patching (`nnct.exec.edges`) against plain PyTorch.

The reference below shares no code with nnct. It splits the residual stream per destination
with forward hooks: each destination's input gets its own zero leaf e_v, added before the
model's own norm module. For a query, that is ln(r + e_v) through that head's rows of the
projection. Autograd then gives dM/d in_v, and the node outputs come from hooks on the
modules. Patching one edge u -> v is the same hook with e_v = a_u(corrupt) - a_u(clean).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import make_adapter
from nnct.exec import edges
from nnct.model.graph import graph_of

CLEAN = [0, 8, 25, 26, 7, 12, 30]
CORRUPT = [0, 8, 41, 26, 7, 12, 30]
TARGET, ALT = 5, 9


def metric(logits):
    return logits[:, -1, TARGET].float() - logits[:, -1, ALT].float()


class Reference:
    """Plain hooks on a transformers model of family llama or gpt2."""

    def __init__(self, hf, family, metric=metric):
        self.hf, self.gpt2, self.metric = hf, family == "gpt2", metric
        cfg = hf.config
        self.L, self.H = cfg.num_hidden_layers, cfg.num_attention_heads
        self.dh = cfg.hidden_size // self.H
        self.K = getattr(cfg, "num_key_value_heads", None) or self.H
        body = hf.transformer if self.gpt2 else hf.model
        self.layers = list(body.h if self.gpt2 else body.layers)
        self.final = body.ln_f if self.gpt2 else body.norm
        self.embed = body.wte if self.gpt2 else body.embed_tokens

    def _attn(self, layer):
        return layer.attn if self.gpt2 else layer.self_attn

    def nodes(self, ids, extra=None):
        """Node outputs [node, token, d] (emb, per layer heads then mlp) and M, batch row 0,
        of a run with `extra` added at destinations (`run`)."""
        out = []
        with torch.no_grad():
            m = self.run(ids, extra or {}, record=out)
        return torch.stack(out).double(), float(m[0])

    def _recorders(self, out):
        handles = []
        for i, layer in enumerate(self.layers):
            if i == 0:
                handles.append(layer.register_forward_pre_hook(lambda m, a: out.append(a[0][0])))
            o = self._attn(layer).c_proj if self.gpt2 else self._attn(layer).o_proj

            def heads(m, a, o=o):
                z = a[0][0]
                for h in range(self.H):
                    cols = slice(h * self.dh, (h + 1) * self.dh)
                    out.append(z[:, cols] @ o.weight[cols] if self.gpt2 else F.linear(z[:, cols], o.weight[:, cols]))
            handles.append(o.register_forward_pre_hook(heads))
            handles.append(layer.mlp.register_forward_hook(lambda m, a, y: out.append(y[0])))
        return handles

    def run(self, ids, extra, embeddings=None, record=None):
        """M with extra[(layer, kind, index)] (kind q/k/v/mlp, or ("logits",)) added to that
        destination's input; `embeddings` [rows, token, d] replace the input embeddings;
        `record` (a list) receives the node outputs."""
        handles, rows = [], 1 if embeddings is None else embeddings.shape[0]
        if record is not None:
            handles += self._recorders(record)
        if embeddings is not None:
            handles.append(self.embed.register_forward_hook(lambda m, a, y: embeddings))
        for i, layer in enumerate(self.layers):
            keep = {}
            handles.append(layer.register_forward_pre_hook(lambda m, a, keep=keep: keep.update(r=a[0])))
            ln1, ln2 = (layer.ln_1, layer.ln_2) if self.gpt2 else (layer.input_layernorm, layer.post_attention_layernorm)
            handles.append(ln2.register_forward_pre_hook(lambda m, a, keep=keep: keep.update(mid=a[0])))
            handles += self._split_qkv(i, layer, ln1, keep, extra)
            if (i, "mlp", 0) in extra:
                handles.append(layer.mlp.register_forward_pre_hook(
                    lambda m, a, ln2=ln2, keep=keep, e=extra[(i, "mlp", 0)]: (ln2(keep["mid"] + e),)))
        if ("logits",) in extra:
            handles.append(self.final.register_forward_pre_hook(lambda m, a: (a[0] + extra[("logits",)],)))
        try:
            return self.metric(self.hf(torch.tensor([ids]).expand(rows, -1)).logits)
        finally:
            for h in handles:
                h.remove()

    def _split_qkv(self, i, layer, ln1, keep, extra):
        H, K, dh, d = self.H, self.K, self.dh, self.hf.config.hidden_size
        attn = self._attn(layer)
        if self.gpt2:
            mods = [(attn.c_attn, [("q", H, 0), ("k", K, d), ("v", K, 2 * d)])]
        else:
            mods = [(attn.q_proj, [("q", H, 0)]), (attn.k_proj, [("k", K, 0)]), (attn.v_proj, [("v", K, 0)])]
        handles = []
        for mod, groups in mods:
            def hook(m, a, y, groups=groups):
                y = y.clone()
                for kind, n, offset in groups:
                    for h in range(n):
                        e = extra.get((i, kind, h))
                        if e is None:
                            continue
                        cols = slice(offset + h * dh, offset + (h + 1) * dh)
                        x = ln1(keep["r"] + e)
                        y[..., cols] = (x @ m.weight[:, cols] + m.bias[cols]) if self.gpt2 else F.linear(
                            x, m.weight[cols], None if m.bias is None else m.bias[cols])
                return y
            handles.append(mod.register_forward_hook(hook))
        return handles

    def dest_keys(self):
        keys = []
        for i in range(self.L):
            keys += [(i, "q", h) for h in range(self.H)] + [(i, "k", g) for g in range(self.K)]
            keys += [(i, "v", g) for g in range(self.K)] + [(i, "mlp", 0)]
        return keys + [("logits",)]

    def gradients(self, ids, embeddings):
        """dM/d in_v per destination (nnct's order) [dest, row, token, d]."""
        T, d = len(ids), self.hf.config.hidden_size
        leaves = {k: torch.zeros(embeddings.shape[0], T, d, requires_grad=True) for k in self.dest_keys()}
        self.run(ids, leaves, embeddings).sum().backward()
        return torch.stack([leaves[k].grad for k in self.dest_keys()]).double()


def embeddings(hf, ids):
    with torch.no_grad():
        return hf.get_input_embeddings()(torch.tensor(ids))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_eap_and_eap_ig_equal_plain_autograd(family):
    adapter = make_adapter(family)
    g, acc = graph_of(adapter)
    ref = Reference(adapter.hf, family)
    clean_nodes, _ = ref.nodes(CLEAN)
    corrupt_nodes, _ = ref.nodes(CORRUPT)
    delta = corrupt_nodes - clean_nodes
    e_clean, e_corrupt = embeddings(adapter.hf, CLEAN), embeddings(adapter.hf, CORRUPT)
    steps = 3
    alphas = torch.arange(steps).float() / steps
    ig = ref.gradients(CLEAN, e_corrupt[None] + alphas[:, None, None] * (e_clean - e_corrupt)[None]).mean(1)
    eap = ref.gradients(CLEAN, e_clean[None])[:, 0]
    edges_ = torch.as_tensor(g.edges)
    want_ig = torch.einsum("utd,vtd->uv", delta, ig) * edges_
    want_eap = torch.einsum("utd,vtd->uv", delta, eap) * edges_

    nodes = edges.node_values(acc, g, CLEAN, CORRUPT, TARGET, ALT)
    torch.testing.assert_close(nodes.outputs[0].double(), clean_nodes, rtol=1e-5, atol=1e-5)
    got_eap, got_ig = edges.edge_scores(acc, g, CLEAN, nodes, TARGET, ALT, steps)
    assert want_ig.abs().max() > 0.1  # the test has something to compare
    torch.testing.assert_close(got_eap, want_eap, rtol=1e-4, atol=1e-4 * float(want_eap.abs().max()))
    torch.testing.assert_close(got_ig, want_ig, rtol=1e-4, atol=1e-4 * float(want_ig.abs().max()))
    assert not got_ig[~edges_].any()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_edge_patching(family):
    """No edge dropped gives M(clean), every edge dropped M(corrupt); one dropped edge
    gives what the reference's hook gives with a_u(corrupt) - a_u(clean) added at v."""
    adapter = make_adapter(family)
    g, acc = graph_of(adapter)
    ref = Reference(adapter.hf, family)
    clean_nodes, m_clean = ref.nodes(CLEAN)
    corrupt_nodes, m_corrupt = ref.nodes(CORRUPT)
    nodes = edges.node_values(acc, g, CLEAN, CORRUPT, TARGET, ALT)
    none = torch.zeros(g.n_nodes, g.n_dests, dtype=torch.bool)
    every = torch.as_tensor(g.edges)
    patched = lambda dropped: edges.patched_metric(acc, g, CLEAN, nodes.outputs[1], dropped, TARGET, ALT)  # noqa: E731
    assert patched(none) == pytest.approx(m_clean, abs=1e-4)
    assert patched(every) == pytest.approx(m_corrupt, abs=1e-4)
    assert abs(m_clean - m_corrupt) > 0.1
    keys = ref.dest_keys()
    for u, v in [(0, g.dest(1, "q", 2)), (g.node(0, 1), g.dest(2, "k", 1)), (g.node(1, None), g.dest(3, "v", 0)),
                 (g.node(2, 3), g.dest(2, "mlp")), (g.node(3, None), g.n_dests - 1)]:
        one = none.clone()
        one[u, v] = True
        with torch.no_grad():
            want = float(ref.run(CLEAN, {keys[v]: (corrupt_nodes[u] - clean_nodes[u]).float()[None]})[0])
        assert patched(one) == pytest.approx(want, abs=1e-4), (u, v)


def test_eap_ig_approaches_exact_edge_patching_for_nearly_equal_inputs():
    """The corrupt token's embedding is the clean one's plus 1e-3 noise: every edge's
    EAP-IG score equals the exact effect of patching it alone, to first order."""
    adapter = make_adapter("llama")
    with torch.no_grad():
        emb = adapter.hf.get_input_embeddings().weight
        emb[CORRUPT[2]] = emb[CLEAN[2]] + 1e-3 * torch.randn(emb.shape[1], generator=torch.Generator().manual_seed(0))
    g, acc = graph_of(adapter)
    nodes = edges.node_values(acc, g, CLEAN, CORRUPT, TARGET, ALT)
    _, ig = edges.edge_scores(acc, g, CLEAN, nodes, TARGET, ALT, 20)
    m_clean = float(nodes.metric[0])
    flat = ig.abs().flatten().argsort(descending=True)[:12]
    for i in flat.tolist():
        u, v = divmod(i, g.n_dests)
        one = torch.zeros(g.n_nodes, g.n_dests, dtype=torch.bool)
        one[u, v] = True
        exact = edges.patched_metric(acc, g, CLEAN, nodes.outputs[1], one, TARGET, ALT) - m_clean
        assert float(ig[u, v]) == pytest.approx(exact, rel=0.02, abs=1e-6), (g.nodes[u][0], g.dests[v][0])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_dropped_edge_sees_the_patched_run_upstream(family):
    """Two dropped edges in a chain: emb -> head (1, 2)'s query, and that head -> the MLP of
    layer 3. The second carries a_u(corrupt) - a_u(this run), where this run's head output
    already differs from the clean run's because of the first."""
    adapter = make_adapter(family)
    g, acc = graph_of(adapter)
    ref = Reference(adapter.hf, family)
    keys = ref.dest_keys()
    clean_nodes, _ = ref.nodes(CLEAN)
    corrupt_nodes, _ = ref.nodes(CORRUPT)
    first_dest, u2, second_dest = g.dest(1, "q", 2), g.node(1, 2), g.dest(3, "mlp")
    step1 = {keys[first_dest]: (corrupt_nodes[0] - clean_nodes[0]).float()[None]}
    after_first, _ = ref.nodes(CLEAN, step1)
    assert not torch.allclose(after_first[u2], clean_nodes[u2])
    with torch.no_grad():
        want = float(ref.run(CLEAN, {**step1, keys[second_dest]: (corrupt_nodes[u2] - after_first[u2]).float()[None]})[0])
    nodes = edges.node_values(acc, g, CLEAN, CORRUPT, TARGET, ALT)
    dropped = torch.zeros(g.n_nodes, g.n_dests, dtype=torch.bool)
    dropped[0, first_dest] = dropped[u2, second_dest] = True
    assert edges.patched_metric(acc, g, CLEAN, nodes.outputs[1], dropped, TARGET, ALT) == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("name", ["kl", "prob", "logprob"])
def test_circuits_take_any_readout(family, name):
    """EAP-IG scores and edge patching with M another readout: KL(clean || run) over the whole
    vocabulary, p or log p of the target, each written out here by hand for the reference."""
    from nnct.interventions.readouts import READOUTS

    adapter = make_adapter(family)
    with torch.no_grad():
        clean_logp = F.log_softmax(adapter.hf(torch.tensor([CLEAN])).logits[0, -1].double(), -1)
    by_hand = {
        "kl": lambda logits: (clean_logp.exp() * (clean_logp - F.log_softmax(logits[:, -1].double(), -1))).sum(-1),
        "prob": lambda logits: F.softmax(logits[:, -1].float(), -1)[:, TARGET],
        "logprob": lambda logits: F.log_softmax(logits[:, -1].float(), -1)[:, TARGET],
    }[name]
    ref = Reference(adapter.hf, family, by_hand)
    g, acc = graph_of(adapter)
    readout = READOUTS[name]
    clean_nodes, m_clean = ref.nodes(CLEAN)
    corrupt_nodes, m_corrupt = ref.nodes(CORRUPT)
    nodes = edges.node_values(acc, g, CLEAN, CORRUPT, TARGET, ALT, readout)
    assert float(nodes.metric[0]) == pytest.approx(m_clean, abs=1e-5)
    assert float(nodes.metric[1]) == pytest.approx(m_corrupt, abs=1e-5)
    steps = 2
    e_clean, e_corrupt = embeddings(adapter.hf, CLEAN), embeddings(adapter.hf, CORRUPT)
    alphas = torch.arange(steps).float() / steps
    ig = ref.gradients(CLEAN, e_corrupt[None] + alphas[:, None, None] * (e_clean - e_corrupt)[None]).mean(1)
    want_ig = torch.einsum("utd,vtd->uv", corrupt_nodes - clean_nodes, ig) * torch.as_tensor(g.edges)
    _, got_ig = edges.edge_scores(acc, g, CLEAN, nodes, TARGET, ALT, steps, readout)
    assert want_ig.abs().max() > 1e-9  # p of a tiny random model's token is small, but not zero
    torch.testing.assert_close(got_ig, want_ig, rtol=1e-3, atol=1e-3 * float(want_ig.abs().max()))
    none = torch.zeros(g.n_nodes, g.n_dests, dtype=torch.bool)
    one = none.clone()
    u, v = g.node(1, 0), g.n_dests - 1
    one[u, v] = True
    with torch.no_grad():
        want = float(ref.run(CLEAN, {("logits",): (corrupt_nodes[u] - clean_nodes[u]).float()[None]})[0])
    patched = edges.patched_metric(acc, g, CLEAN, nodes.outputs[1], one, TARGET, ALT, readout, nodes.reference)
    assert patched == pytest.approx(want, abs=1e-5)
    every = edges.patched_metric(acc, g, CLEAN, nodes.outputs[1], torch.as_tensor(g.edges), TARGET, ALT, readout,
                                 nodes.reference)
    assert every == pytest.approx(m_corrupt, abs=1e-4)
