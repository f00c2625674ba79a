"""`nnct edit --method memit|alphaedit` on the tiny llama: the stored factors, applied by hand
to the original weights with plain torch and transformers, give the probabilities the file
reports and change only the range's down projections; a ROME file written before the batch
methods still reads; AlphaEdit and sequential batches run; bad combinations are refused."""

import json

import numpy as np
import pytest
import torch
import xarray as xr
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import invoke
from nnct.results import edits


pytestmark = pytest.mark.usefixtures("own_cache")


def test_memit_factors_applied_by_hand_give_the_reported_probabilities(tmp_path, tiny_model_dir, data_file):
    out = tmp_path / "memit.nc"
    done = invoke("edit", "--model", tiny_model_dir, "--data", data_file, "--method", "memit", "--layers", "1-2",
                  "--corpus-tokens", 300, "--out", out, "--save", tmp_path / "edited", "-q")
    assert done.exit_code == 0, done.output
    assert "by memit at layers 1-2 in 1 batch" in done.output
    made, attrs = edits.read(out)
    factors = edits.read_factors(out)
    assert attrs["method"] == "memit" and attrs["layers"] == "1-2"
    assert json.loads(attrs["batch_hparams"])["mom2_update_weight"] == 15000  # a llama: AlphaEdit's Llama3-8B lambda
    assert [e.record_id for e in made] == ["r1", "r2", "r3"] and {e.batch for e in made} == {0}
    assert [(f.batch, f.layer, f.left.shape[1]) for f in factors] == [(0, 1, 3), (0, 2, 3)]

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for f in factors:
            w = model.model.layers[f.layer].mlp.down_proj.weight
            w.copy_((w.double() + torch.from_numpy(f.left) @ torch.from_numpy(f.right).T).float())
        for e in made:
            ids = tok(e.prompt)["input_ids"]
            new = tok(" " + e.target_new, add_special_tokens=False)["input_ids"]
            logp = model(torch.tensor([ids + new])).logits[0].double().log_softmax(-1)
            by_hand = float(torch.stack([logp[len(ids) - 1 + j, t] for j, t in enumerate(new)]).mean().exp())
            assert e.metrics["p_new"] == pytest.approx(by_hand, abs=1e-4), e.record_id
    # --save: the same weights; only layers 1 and 2's down projections differ from the original
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "edited", torch_dtype=torch.float32).state_dict()
    changed = {k for k, v in saved.items() if not torch.equal(v, original[k])}
    assert changed == {f"model.layers.{i}.mlp.down_proj.weight" for i in (1, 2)}
    for k in changed:
        torch.testing.assert_close(saved[k], model.state_dict()[k], rtol=1e-5, atol=1e-6)
    assert len(edits.read_updates(out)) == 2


def test_a_rome_file_from_before_still_reads(tmp_path, tiny_model_dir, data_file):
    """A ROME file without the `method` attr (as files were written before it): method rome,
    per-edit vectors, no factors; its updates are the edits' vectors."""
    out, old = tmp_path / "rome.nc", tmp_path / "old.nc"
    done = invoke("edit", "--model", tiny_model_dir, "--data", data_file, "--layer", 1, "--no-covariance",
                  "--max-examples", 1, "--out", out, "-q")
    assert done.exit_code == 0, done.output
    with xr.open_dataset(out, engine="netcdf4") as ds:
        ds = ds.load()
    assert ds.attrs.pop("method") == "rome"
    ds.to_netcdf(old, engine="netcdf4")
    made, attrs = edits.read(old)
    assert attrs["method"] == "rome" and made[0].batch is None and made[0].left.shape == (ds.sizes["d_model"],)
    assert edits.read_factors(old) == []
    [(layer, left, right)] = edits.read_updates(old)
    assert layer == 1 and np.array_equal(left, made[0].left) and np.array_equal(right, made[0].right)


def test_alphaedit_and_sequential_batches_run(tmp_path, tiny_model_dir, data_file):
    out = tmp_path / "alpha.nc"
    done = invoke("edit", "--model", tiny_model_dir, "--data", data_file, "--method", "alphaedit", "--layer", 2,
                  "--corpus-tokens", 300, "--max-examples", 2, "--out", out, "-q")
    assert done.exit_code == 0, done.output
    made, attrs = edits.read(out)
    assert attrs["method"] == "alphaedit" and attrs["layers"] == "0-2"  # the 5 ending at 2, clipped at 0
    assert [f.layer for f in edits.read_factors(out)] == [0, 1, 2] and all(np.isfinite(e.metrics["p_new"]) for e in made)

    seq = tmp_path / "seq.nc"
    done = invoke("edit", "--model", tiny_model_dir, "--data", data_file, "--method", "alphaedit", "--layers", "1-2",
                  "--batch-size", 1, "--sequential", "--corpus-tokens", 300, "--out", seq, "-q")
    assert done.exit_code == 0, done.output
    made, attrs = edits.read(seq)
    factors = edits.read_factors(seq)
    assert attrs["batches"] == 3 and attrs["sequential"] == 1 and [e.batch for e in made] == [0, 1, 2]
    assert [(f.batch, f.layer, f.left.shape[1]) for f in factors] == [(b, layer, 1) for b in range(3) for layer in (1, 2)]

    energy = tmp_path / "energy.nc"
    done = invoke("edit", "--model", tiny_model_dir, "--data", data_file, "--method", "alphaedit", "--layers", "1-2",
                  "--null-space-energy", 0.2, "--corpus-tokens", 300, "--max-examples", 2, "--out", energy, "-q")
    assert done.exit_code == 0, done.output
    assert json.loads(edits.read(energy)[1]["batch_hparams"])["nullspace_energy"] == 0.2


def test_memit_sequential_from_python(tiny_model_dir, data_file):
    import nnct

    result = nnct.edit(str(tiny_model_dir), data_file, method="memit", layers=(1, 2), batch_size=2, sequential=True,
                       covariance=False)
    assert [e.batch for e in result.edits] == [0, 0, 1] and result.attrs["layers"] == "1-2"
    assert [(f.batch, f.left.shape[1]) for f in result.factors] == [(0, 2), (0, 2), (1, 1), (1, 1)]


@pytest.mark.parametrize("extra, named", [
    (["--layers", "1-2"], "--layers"),
    (["--sequential", "--remote", "local"], "--sequential"),
    (["--batch-size", 2], "--batch-size"),
    (["--method", "memit", "--layers", "2-1"], "--layers"),
    (["--method", "memit", "--layers", "x"], "--layers"),
    (["--method", "memit", "--batch-size", 0], "--batch-size"),
    (["--method", "memit", "--layers", "1-2", "--layer", 2], "--layer"),
    (["--method", "memit", "--remote", "local"], "--remote"),
    (["--method", "alphaedit", "--no-covariance"], "--no-covariance"),
    (["--method", "memit", "--evaluate", 0], "--evaluate"),
    (["--method", "memit", "--layers", "2-9"], "layers 0..3"),
    (["--method", "memit", "--null-space-energy", 0.01], "--null-space-energy"),
    (["--method", "alphaedit", "--null-space-energy", 1.5], "--null-space-energy"),
])
def test_bad_combinations(tmp_path, tiny_model_dir, data_file, extra, named):
    done = invoke("edit", "--model", tiny_model_dir, "--data", data_file, "--out", tmp_path / "e.nc", *extra)
    assert done.exit_code == 2 and named in done.output, done.output
    assert not (tmp_path / "e.nc").exists()


def _by_hand(model, tok, factors):
    """The tiny llama with `factors` ((layer, left, right) each) added to its down projections."""
    with torch.no_grad():
        for layer, left, right in factors:
            w = model.model.layers[layer].mlp.down_proj.weight
            w.copy_((w.double() + torch.as_tensor(left).reshape(w.shape[0], -1)
                     @ torch.as_tensor(right).reshape(w.shape[1], -1).T).float())
    return model


def _p(model, tok, prompt, answer):
    ids, new = tok(prompt)["input_ids"], tok(" " + answer, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = model(torch.tensor([ids + new])).logits[0].double().log_softmax(-1)
    return float(torch.stack([logp[len(ids) - 1 + j, t] for j, t in enumerate(new)]).mean().exp())


def test_edits_together_score_unedited_neighbours_and_retention(tmp_path, tiny_model_dir):
    """A batch of two facts of one relation, with --unedited holding all three facts and a
    few probes: specificity reads only the third (an edited fact is no neighbour) and equals
    a comparison made by hand on the weights with the factors added; retention counts, by
    hand, the unedited facts whose object's first token was the top token before and still
    is (the probes' objects are set to their top token, so they are known)."""
    import json

    from nnct.analysis import editing
    from tests.conftest import RECORDS

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    facts = [{**r, "prop": "P1", "obj_cf": ["Amazon"]} for r in RECORDS]
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in facts))

    def top(p):
        with torch.no_grad():
            return int(model(torch.tensor([tok(p)["input_ids"]])).logits[0, -1].argmax())

    def first(obj):
        return tok(" " + obj, add_special_tokens=False)["input_ids"][0]

    probes = [{"id": f"k{i}", "subj": p.split()[1], "obj": tok.decode(top(p)).strip(), "obj_cf": ["x"], "prompt_wo_ctx": p}
              for i, p in enumerate(["the weather today is", "my favourite colour is", "the capital of France is"])]
    probes = [r for r in probes if r["obj"] and first(r["obj"]) == top(r["prompt_wo_ctx"])]
    assert probes
    unedited = tmp_path / "unedited.jsonl"
    unedited.write_text("".join(json.dumps(r) + "\n" for r in facts + probes))
    read = [facts[2], *probes]  # what retention reads: the unedited file less the edited facts
    known = [r for r in read if top(r["prompt_wo_ctx"]) == first(r["obj"])]
    out = tmp_path / "memit.nc"
    done = invoke("edit", "--model", tiny_model_dir, "--data", data, "--method", "memit", "--layers", "1-2",
                  "--no-covariance", "--max-examples", 2, "--unedited", unedited, "--out", out, "-q")
    assert done.exit_code == 0, done.output
    made, attrs = edits.read(out)
    _by_hand(model, tok, edits.read_updates(out))
    third = facts[2]
    for e in made:
        by_hand = float(_p(model, tok, third["prompt_wo_ctx"], third["obj"]) > _p(model, tok, third["prompt_wo_ctx"], e.target_new))
        assert e.metrics["specificity"] == by_hand
    kept = sum(top(r["prompt_wo_ctx"]) == first(r["obj"]) for r in known)
    assert (attrs["retention_known"], attrs["retention_kept"]) == (len(known), kept)
    assert editing.pooled(made, attrs)["retention"][0] == pytest.approx(kept / len(known))
    assert "retention" in editing.table(made, attrs)


def test_sequential_rome_edits_each_on_the_model_the_earlier_left(tmp_path, tiny_model_dir, data_file):
    """ROME --sequential: the first edit is the independent run's, the second is not (it was
    computed with the first in the weights); every edit's p_new is measured with all edits
    in the weights, as applying them by hand gives it."""
    alone, seq = tmp_path / "alone.nc", tmp_path / "seq.nc"
    for out, extra in ((alone, []), (seq, ["--sequential"])):
        done = invoke("edit", "--model", tiny_model_dir, "--data", data_file, "--layer", 1, "--no-covariance",
                      "--max-examples", 2, "--out", out, "-q", *extra)
        assert done.exit_code == 0, done.output
    a, _ = edits.read(alone)
    s, attrs = edits.read(seq)
    assert attrs["sequential"] == 1 and "retention_known" in attrs
    np.testing.assert_allclose(s[0].left, a[0].left, rtol=1e-5, atol=1e-7)
    assert not np.allclose(s[1].left, a[1].left, rtol=1e-4, atol=1e-6)  # its key, read before the edited layer, is not
    model = _by_hand(AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32),
                     None, edits.read_updates(seq))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for e in s:
        assert e.metrics["p_new"] == pytest.approx(_p(model, tok, e.prompt, e.target_new), abs=1e-4)


def test_wilson_interval_of_twenty_of_twenty():
    """Wilson's 95% interval for 20/20 is [0.839, 1] (a textbook case); 0 of 10: [0, 0.278]."""
    from nnct.analysis.editing import wilson

    share, low, high = wilson(20, 20)
    assert share == 1 and low == pytest.approx(0.8389, abs=1e-4) and high == pytest.approx(1.0)
    share, low, high = wilson(0, 10)
    assert share == 0 and low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.2775, abs=1e-4)


def test_batch_methods_use_memits_context_prefixes(monkeypatch):
    """MEMIT's and AlphaEdit's prefixes (memit_main.get_context_templates): the bare prompt,
    then one text sampled from each of "The", "Therefore", "Because", "I", "You" (their own
    tokens, 10 tokens in all), each followed by ". "; ROME's stay 20, from the BOS token."""
    from conftest import make_adapter
    from nnct.methods import edit as edit_lib

    where = edit_lib.Where(make_adapter("llama"))
    tok = where.adapter.tokenizer
    seen = []
    sampled = edit_lib._sampled

    def recording(where, ids, n, generator):
        seen.append((ids.tolist(), n))
        return sampled(where, ids, n, generator)

    monkeypatch.setattr(edit_lib, "_sampled", recording)
    memit = edit_lib.context_prefixes(where, 0, batch=True)
    assert len(memit) == 6 and memit[0] == "" and all(p.endswith(". ") for p in memit[1:])
    words = [tok(w, add_special_tokens=False)["input_ids"] for w in ("The", "Therefore", "Because", "I", "You")]
    assert seen == [([w], 10 - len(w)) for w in words]
    assert len(edit_lib.context_prefixes(where, 0)) == 21


def test_targets_found_on_the_unedited_weights_are_cached_and_evaluation_sampled(tmp_path, tiny_model_dir, data_file):
    """A second batch run (AlphaEdit after MEMIT, same layers) reads the targets the first
    found on the unedited weights from the cache (so its targets' logs are the first's); with
    --evaluate 1 only one of the three edits has metrics."""
    from nnct.model.embedded import cache_root

    runs = {}
    for name, extra in (("memit", ["--method", "memit"]), ("alpha", ["--method", "alphaedit", "--evaluate", 1])):
        out = tmp_path / f"{name}.nc"
        done = invoke("edit", "--model", tiny_model_dir, "--data", data_file, *extra, "--layers", "1-2",
                      "--corpus-tokens", 300, "--out", out, "-q")
        assert done.exit_code == 0, done.output
        runs[name] = edits.read(out)[0]
    assert len(list((cache_root() / "targets").rglob("*.pt"))) == 3
    assert [e.metrics["v_p_new"] for e in runs["alpha"]] == [e.metrics["v_p_new"] for e in runs["memit"]]
    evaluated = [e for e in runs["alpha"] if np.isfinite(e.metrics.get("p_new", np.nan))]
    assert len(evaluated) == 1 and len(runs["alpha"]) == 3
