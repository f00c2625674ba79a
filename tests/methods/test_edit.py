"""`nnct edit` end to end on the tiny llama: edits written and read back, their evaluation
against a probability computed here by hand, the layer found from a cube, bad input."""

import numpy as np
import pytest
import torch

from conftest import invoke, write_jsonl
from nnct.errors import ConfigError
from nnct.exec import rome
from nnct.model import load
from nnct.results import edits
from nnct.results.cube import open_cube


pytestmark = pytest.mark.usefixtures("own_cache")


def test_edit_writes_evaluated_edits(tmp_path, tiny_model_dir, data_file):
    out = tmp_path / "edits.nc"
    done = invoke("edit", "--model", tiny_model_dir, "--data", data_file, "--layer", 1, "--corpus-tokens", 300, "--out", out,
                  "--save", tmp_path / "edited")
    assert done.exit_code == 0, done.output
    assert "efficacy" in done.output and "specificity" in done.output
    made, attrs = edits.read(out)
    assert len(made) == 3 and attrs["layer"] == 1 and attrs["covariance"].endswith("tokens")
    first = made[0]
    assert (first.record_id, first.target_true, first.target_new) == ("r1", "Paris", "Rome")
    assert first.hparams["steps"] == 20 and first.hparams["covariance"]
    # p_new by hand: the edit in the weights, the first token of " Rome" after the prompt
    adapter = load(str(tiny_model_dir))
    tok = adapter.tokenizer
    ids = tok(first.prompt)["input_ids"]
    new = tok(" Rome", add_special_tokens=False)["input_ids"]
    with rome.edited_weights(adapter, [(first.layer, first.left, first.right)]), torch.no_grad():
        logp = adapter.hf(torch.tensor([ids + new])).logits[0].log_softmax(-1)
    by_hand = float(torch.stack([logp[len(ids) - 1 + j, t] for j, t in enumerate(new)]).mean().exp())
    assert first.metrics["p_new"] == np.float64(by_hand) or abs(first.metrics["p_new"] - by_hand) < 1e-6
    # --save: the saved model is the original with all three edits in its weights
    saved = load(str(tmp_path / "edited"))
    with rome.edited_weights(adapter, [(e.layer, e.left, e.right) for e in made]), torch.no_grad():
        want = adapter.hf(torch.tensor([ids])).logits
    with torch.no_grad():
        torch.testing.assert_close(saved.hf(torch.tensor([ids])).logits, want, rtol=1e-4, atol=1e-5)
    assert 0 <= first.metrics["fluency"] and first.metrics["efficacy"] in (0.0, 1.0)


def test_layer_auto_from_a_cube(tmp_path, tiny_model_dir, data_file):
    """--from-cube: the layer of the largest mean mlp effect at the last subject token, found
    here with numpy from the cube's own numbers."""
    cube = tmp_path / "c.nc"
    traced = invoke("trace", "--model", tiny_model_dir, "--data", data_file, "--experiment", "subject-noctx",
                    "--components", "mlp", "--samples", 2, "--out", cube, "-q")
    assert traced.exit_code == 0, traced.output
    ds = open_cube(cube)
    last = [int(np.flatnonzero(ds.segment.values[i] == "subject_last")[0]) for i in range(ds.sizes["example"])]
    ie = np.stack([ds.p_restored.values[i, t, :, 0, 0] - ds.p_corrupt.values[i, 0] for i, t in enumerate(last)])
    out = tmp_path / "e.nc"
    done = invoke("edit", "--model", tiny_model_dir, "--data", data_file, "--from-cube", cube, "--no-covariance",
                  "--max-examples", 1, "--out", out, "-q")
    assert done.exit_code == 0, done.output
    assert edits.read(out)[1]["layer"] == int(np.argmax(ie.mean(0))) and edits.read(out)[1]["covariance"] == "identity"


def test_edit_bad_input(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", [
        {"id": "ok", "subj": "Eiffel Tower", "obj": "Paris", "prompt_wo_ctx": "the Eiffel Tower is in", "obj_cf": ["Rome"]},
        {"id": "bad", "subj": "Louvre", "obj": "Paris", "prompt_wo_ctx": "the Eiffel Tower is in", "obj_cf": ["Rome"]}])
    out = tmp_path / "e.nc"
    done = invoke("edit", "--model", tiny_model_dir, "--data", data, "--layer", 1, "--no-covariance", "--out", out, "-q")
    assert done.exit_code == 0, done.output
    assert "d.jsonl:2: field 'subj'" in done.output and "Louvre" in done.output
    assert [e.record_id for e in edits.read(out)[0]] == ["ok"]
    wrong = invoke("edit", "--model", tiny_model_dir, "--data", data, "--layer", 9, "--out", out)
    assert wrong.exit_code == 2 and "layers 0..3" in wrong.output


def test_edit_from_python(tiny_model_dir, data_file):
    import nnct

    result = nnct.edit(str(tiny_model_dir), data_file, layer=2, covariance=False, max_examples=1)
    assert [e.record_id for e in result.edits] == ["r1"] and result.attrs["layer"] == 2
    with pytest.raises(ConfigError, match="unknown setting"):
        nnct.edit(str(tiny_model_dir), data_file, layer_range=2)


def test_an_edit_found_through_requests_equals_the_one_found_here(tmp_path, tiny_model_dir, data_file):
    """`--remote local`: every computation of an edit (prefixes, C, keys, each Adam step's
    gradient, the evaluation with the edit as an intervention) sent as nnsight serialises a
    request to a server, where the weights never leave: the edit and its metrics are the
    ones found with the weights here (nnct 0.5 could not run `edit` on a server at all)."""
    here, there = tmp_path / "here.nc", tmp_path / "there.nc"
    common = ["edit", "--model", tiny_model_dir, "--data", data_file, "--layer", 1, "--corpus-tokens", 300,
              "--max-examples", 2, "-q"]
    for out, extra in ((here, []), (there, ["--remote", "local"])):
        done = invoke(*common, "--out", out, *extra)
        assert done.exit_code == 0, done.output
    (a, _), (b, attrs_b) = edits.read(here), edits.read(there)
    assert attrs_b["backend"] == "nnsight remote=local" and len(a) == len(b) == 2
    for x, y in zip(a, b):
        # here each step runs the rows after their lookup over a cache, there whole rows: float32 rounding apart
        np.testing.assert_allclose(y.left, x.left, rtol=1e-5, atol=1e-5 * np.abs(x.left).max())
        np.testing.assert_allclose(y.right, x.right, rtol=1e-5, atol=1e-5 * np.abs(x.right).max())
        for name in ("p_new", "p_true", "efficacy", "paraphrase", "fluency", "p_new_before"):
            assert y.metrics[name] == pytest.approx(x.metrics[name], rel=1e-4, abs=1e-9), name
