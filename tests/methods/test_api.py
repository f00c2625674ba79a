"""Prompt-pair runs end to end on the tiny llama: `nnct patch` (a pairs file, one pair inline),
`nnct trace --corruption substitute`, `--answer full`, and the notebook API (`nnct.trace`,
`nnct.patch`) with a model in every form; each cube checked against the hook reference or a
hand-made pair, its attrs against docs/method.md."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

import nnct
from conftest import RECORDS, make_tokenizer, write_jsonl
from reference import Reference
from nnct.cli import main
from nnct.errors import ConfigError, DataError
from nnct.methods.run import RunConfig, execute
from nnct.model import load
from nnct.results.cube import open_cube

PAIRS = [
    {"id": "p1", "clean": "the Eiffel Tower is in the city of", "corrupt": "the Vinson Massif is in the city of",
     "target": "Paris", "alt": "Rome"},
    {"id": "p2", "clean": "Beats Music is owned by", "corrupt": "Beats Music was owned by", "target": "Apple", "alt": "Amazon"},
    {"id": "p3", "clean": "Apple is in Paris", "corrupt": "Apple is in", "target": "Paris", "alt": "Rome"},
]
SMALL = dict(components="hidden,mlp,attn", window=3, batch_rows=4)


@pytest.fixture(scope="module")
def adapter(tiny_model_dir):
    return load(str(tiny_model_dir))


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", PAIRS)


@pytest.fixture(scope="module")
def pair_cube(tiny_model_dir, pairs_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("patch") / "pairs.nc"
    summary = execute(RunConfig(data=str(pairs_file), out=str(out), method="patch", model=str(tiny_model_dir), **SMALL))
    assert [str(p) for p in summary.skipped] == [f"{pairs_file}:3: field 'corrupt': 4 tokens vs 5 in the clean prompt:"
                                                 " position-wise patching needs prompts of the same length"]
    return open_cube(out)


def test_pair_cube_attrs_and_marks(pair_cube):
    a = pair_cube.attrs
    assert (a["corruption"], a["experiment"], a["samples"], a["noise_rule"], a["noise_level"]) == ("prompt", "pairs", 1, "none", 0.0)
    assert list(pair_cube.example.values) == ["p1/pair", "p2/pair"]
    assert pair_cube.corrupted.values[0].tolist()[:5] == [0, 0, 1, 1, 0]
    assert pair_cube.corrupted.values[1].tolist()[:5] == [0, 0, 0, 1, 0]  # "is" -> "was"
    assert str(pair_cube.corrupt_prompt.values[1]) == PAIRS[1]["corrupt"]
    assert list(pair_cube.segment.values[1][:6]) == ["bos", "prefix", "prefix", "changed_last", "subsequent_first", "last"]


def test_pair_cells_equal_the_reference(pair_cube, adapter):
    tok, ref = adapter.tokenizer, Reference(adapter)
    for i, pair in enumerate(PAIRS[:2]):
        clean, corrupt = tok(pair["clean"])["input_ids"], tok(pair["corrupt"])["input_ids"]
        answers = [tok(" " + pair[k], add_special_tokens=False)["input_ids"][0] for k in ("target", "alt")]
        p_clean, l_clean = ref.measure(clean, answers)
        np.testing.assert_allclose(pair_cube.p_clean.values[i], p_clean.numpy(), atol=2e-6)
        np.testing.assert_allclose(pair_cube.logit_clean.values[i], l_clean.numpy(), atol=5e-5)
        for token, layer, comp in [(3, 0, "hidden"), (4, 1, "mlp"), (len(clean) - 1, 2, "attn")]:
            p, logit = ref.pair_cell(clean, corrupt, answers, token, layer, comp, window=3)
            cell = pair_cube.sel(example=f"{pair['id']}/pair", token=token, layer=layer, component=comp)
            np.testing.assert_allclose(cell.p_restored.values, p.numpy(), atol=2e-6)
            np.testing.assert_allclose(cell.logit_restored.values, logit.numpy(), atol=5e-5)


def test_api_patches_heads_as_the_reference(adapter):
    """`nnct.patch` with the finer components: a head, a head at all positions and a severed
    path, each equal to the hook reference."""
    tok, ref, pair = adapter.tokenizer, Reference(adapter), PAIRS[0]
    ds = nnct.patch(adapter, clean=pair["clean"], corrupt=pair["corrupt"], target=pair["target"], alt=pair["alt"],
                    components="head,head_all_pos,hidden-sever-attn", window=1)
    clean, corrupt = tok(pair["clean"])["input_ids"], tok(pair["corrupt"])["input_ids"]
    answers = [tok(" " + pair[k], add_special_tokens=False)["input_ids"][0] for k in ("target", "alt")]
    first = next(i for i, (a, b) in enumerate(zip(clean, corrupt)) if a != b)
    for variable, at, cell in [("p_restored_head", dict(token=5, layer=2, head=1), (5, 2, "head", 1)),
                               ("p_restored_head_all_pos", dict(layer=1, head=3), (first, 1, "head_all_pos", 3)),
                               ("p_restored", dict(token=4, layer=0, component="hidden-sever-attn"),
                                (4, 0, "hidden-sever-attn", None))]:
        p, _ = ref.pair_cell(clean, corrupt, answers, *cell[:3], window=1, head=cell[3])
        np.testing.assert_allclose(ds[variable].sel(at).values[0], p.numpy(), atol=2e-6, err_msg=variable)


def test_api_attribute_of_a_pair(adapter):
    """`nnct.attribute` on one pair: an AtP cube, and refused with both records and pairs."""
    pair = PAIRS[0]
    ds = nnct.attribute(adapter, clean=pair["clean"], corrupt=pair["corrupt"], target=pair["target"], alt=pair["alt"],
                        components="hidden", window=1)
    assert ds.attrs["method"] == "atp" and ds.ie_atp.sizes["component"] == 1 and "p_restored" not in ds
    with pytest.raises(ConfigError, match="not both"):
        nnct.attribute(adapter, [RECORDS[0]], pairs=PAIRS[:1])


def test_patch_cli_pairs_and_inline(tiny_model_dir, pairs_file, pair_cube, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli.nc"
    result = runner.invoke(main, ["patch", "--model", str(tiny_model_dir), "--pairs", str(pairs_file), "--out", str(out),
                                  "--components", "hidden,mlp,attn", "--window", "3", "--batch-size", "4", "-q"])
    assert result.exit_code == 0, result.output
    assert "skipped" in result.output and "4 tokens vs 5" in result.output
    xr.testing.assert_allclose(open_cube(out).drop_attrs(), pair_cube.drop_attrs())
    inline = tmp_path / "inline.nc"
    result = runner.invoke(main, ["patch", "--model", str(tiny_model_dir), "--clean", PAIRS[0]["clean"],
                                  "--corrupt", PAIRS[0]["corrupt"], "--target", "Paris", "--alt", "Rome", "--out", str(inline),
                                  "--components", "hidden,mlp,attn", "--window", "3"])
    assert result.exit_code == 0, result.output
    assert "inline/pair" in result.output  # the cube described
    np.testing.assert_allclose(open_cube(inline).p_restored.values[0], pair_cube.p_restored.values[0], atol=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--out", "x.nc"], "give --pairs FILE.jsonl, or all of --clean"),
    (["--pairs", "p.jsonl", "--clean", "a"], "not both"),
    (["--pairs", "p.jsonl"], "give --out FILE.nc or --output-dir DIR"),
])
def test_patch_cli_refuses_incomplete_forms(tiny_model_dir, args, message):
    result = CliRunner().invoke(main, ["patch", "--model", str(tiny_model_dir), *args])
    assert result.exit_code == 2 and message in result.output


def test_substitution_is_the_hand_made_pair(tiny_model_dir, tmp_path):
    """`trace --corruption substitute` equals `patch` of the pair it should have built."""
    facts = [{**RECORDS[0], "subj_cf": "Vinson Massif"}]
    data = write_jsonl(tmp_path / "facts.jsonl", facts)
    runner = CliRunner()
    out = tmp_path / "sub.nc"
    result = runner.invoke(main, ["trace", "--model", str(tiny_model_dir), "--data", str(data), "--experiment", "subject-noctx",
                                  "--corruption", "substitute", "--out", str(out), "--components", "hidden,mlp,attn",
                                  "--window", "3", "--samples", "5", "-q"])
    assert result.exit_code == 0, result.output
    sub = open_cube(out)
    assert (sub.attrs["corruption"], sub.attrs["samples"], sub.attrs["experiment"]) == ("prompt", 1, "subject-noctx")
    assert str(sub.corrupt_prompt.values[0]) == "the Vinson Massif is located in the city of"
    assert list(sub.segment.values[0][2:4]) == ["subject_first", "subject_last"]
    pair = {"id": "r1", "clean": RECORDS[0]["prompt_wo_ctx"], "corrupt": "the Vinson Massif is located in the city of",
            "target": "Paris", "alt": "Rome"}
    by_hand = nnct.patch(str(tiny_model_dir), [pair], components="hidden,mlp,attn", window=3)
    np.testing.assert_array_equal(sub.p_restored.values, by_hand.p_restored.values)
    np.testing.assert_array_equal(sub.logit_restored.values, by_hand.logit_restored.values)


def test_full_answers_are_teacher_forced(adapter, tiny_model_dir):
    pair = {**PAIRS[0], "target": "Paris city", "alt": "Rome"}
    ds = nnct.patch(adapter, [pair], components="hidden", window=3, answer="full")
    assert ds.attrs["answer_token"] == "all tokens of ' ' + answer, teacher-forced"
    tok, ref = adapter.tokenizer, Reference(adapter)
    clean, corrupt = tok(pair["clean"])["input_ids"], tok(pair["corrupt"])["input_ids"]
    answers = ((23, 20), (27,))
    np.testing.assert_allclose(ds.p_clean.values[0], ref.measure(clean, answers)[0].numpy(), rtol=1e-5)
    p, _ = ref.pair_cell(clean, corrupt, answers, 3, 1, "hidden", window=3)
    np.testing.assert_allclose(ds.p_restored.sel(token=3, layer=1, component="hidden").values[0], p.numpy(), rtol=1e-5)


def test_the_api_takes_a_model_in_every_form(adapter, tiny_model_dir, pairs_file, pair_cube, tmp_path):
    from nnsight import TransformersModel

    forms = [str(tiny_model_dir), adapter, TransformersModel(adapter.hf, tokenizer=adapter.tokenizer)]
    for model in forms:
        with pytest.warns(UserWarning, match="4 tokens vs 5"):
            ds = nnct.patch(model, pairs_file, **SMALL)
        np.testing.assert_array_equal(ds.p_restored.values, pair_cube.p_restored.values)
    ds = nnct.patch(adapter.hf, PAIRS[:2], tokenizer=adapter.tokenizer, **SMALL)
    np.testing.assert_array_equal(ds.p_restored.values, pair_cube.p_restored.values)
    with pytest.warns(UserWarning, match="4 tokens vs 5") as caught:
        nnct.patch(adapter, PAIRS, **SMALL)
    assert caught[0].filename == __file__  # the warning points at the caller's line


def test_the_api_trace_in_memory_equals_the_file_run(adapter, tiny_model_dir, data_file, tmp_path):
    # a fixed level: `s3` measures the data set, and the one-prompt form has one record
    settings = dict(experiment="subject-noctx", samples=2, window=3, components="hidden", batch_size=8, noise_level="0.5")
    out = tmp_path / "file.nc"
    from_file = nnct.trace(str(tiny_model_dir), data_file, out=out, **settings)
    assert out.exists() and from_file.attrs["data"] == str(data_file.resolve())
    in_memory = nnct.trace(adapter, RECORDS, **settings)
    np.testing.assert_array_equal(in_memory.p_restored.values, from_file.p_restored.values)
    one = nnct.trace(adapter, prompt=RECORDS[0]["prompt_wo_ctx"], subject="Eiffel Tower", target="Paris", alt="Rome",
                     samples=2, window=3, components="hidden", batch_size=8, noise_level="0.5")
    np.testing.assert_array_equal(one.p_restored.values[0], from_file.p_restored.values[0])
    with pytest.raises(ConfigError, match="unknown setting"):
        nnct.trace(adapter, RECORDS, sample=3)


def test_a_data_set_without_passages_says_which_experiment_fits(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "bare.jsonl", [{k: v for k, v in r.items() if k != "passages"} for r in RECORDS])
    with pytest.raises(DataError, match="records without passages fit --experiment subject-noctx"):
        execute(RunConfig(data=str(data), out=str(tmp_path / "x.nc"), model=str(tiny_model_dir), experiment="subject"))


def test_trace_help_says_the_output_is_required():
    text = CliRunner().invoke(main, ["trace", "--help"]).output
    assert "--out FILE.nc or --output-dir DIR is required" in " ".join(text.split())
    assert "this or --output-dir." in " ".join(text.split())


def test_the_tokenizer_of_this_file_is_the_tiny_one():
    assert make_tokenizer()("the Vinson Massif")["input_ids"] == [0, 8, 29, 30]


def test_normalised_resets_what_a_prompt_corruption_does_not_read():
    from nnct.methods.run import normalised

    noisy = RunConfig(data="d", samples=5, seed=3, replace=True, noise_level="0.5")
    assert normalised(noisy) == noisy
    sub = normalised(RunConfig(data="d", corruption="substitute", samples=5, seed=3, replace=True, noise_level="0.5"))
    assert (sub.samples, sub.seed, sub.replace, sub.noise_level, sub.experiment) == (1, 0, False, "none", "subject")
    pairs = normalised(RunConfig(data="d", method="patch", samples=7, prompt_format="{prompt}"))
    assert (pairs.corruption, pairs.samples, pairs.experiment, pairs.prompt_format) == ("prompt", 1, "pairs", "")


def test_a_patch_run_resumes_into_the_uninterrupted_cube(tiny_model_dir, pairs_file, pair_cube, tmp_path):
    from nnct.methods.run import Progress, partial_dir

    class StopAfterOne(Progress):
        started = 0

        def example(self, example_id):
            self.started += 1
            if self.started == 2:
                raise KeyboardInterrupt

    out = tmp_path / "resumed.nc"
    cfg = RunConfig(data=str(pairs_file), out=str(out), method="patch", model=str(tiny_model_dir), **SMALL)
    with pytest.raises(KeyboardInterrupt):
        execute(cfg, progress=StopAfterOne())
    assert [p.name for p in partial_dir(out).glob("*.npz")] == ["000000.npz"]
    # --samples means nothing to a prompt pair: it does not block the resume
    summary = execute(RunConfig(**{**cfg.__dict__, "resume": True, "samples": 7}))
    assert summary.resumed == 1
    xr.testing.assert_identical(open_cube(out).drop_attrs(), pair_cube.drop_attrs())


def test_substitution_searches_the_whole_data_set(tiny_model_dir, tmp_path):
    """A run of the first record takes the substitute the whole run takes (the next subject
    of the prop in the data set, though that record is not traced), and a record without
    prop or subj_cf is reported."""
    facts = [{**r, "prop": "P"} for r in RECORDS] + [{k: v for k, v in RECORDS[0].items() if k != "prop"} | {"id": "r4"}]
    data = write_jsonl(tmp_path / "facts.jsonl", facts)
    settings = dict(experiment="subject-noctx", corruption="substitute", components="hidden")
    first = nnct.trace(str(tiny_model_dir), data, max_examples=1, **settings)
    assert str(first.corrupt_prompt.values[0]) == "the Vinson Massif is located in the city of"
    with pytest.warns(UserWarning, match="facts.jsonl:4: field 'prop': missing"):
        every = nnct.trace(str(tiny_model_dir), data, **settings)
    assert list(every.example.values) == ["r1/fact", "r2/fact", "r3/fact"]
    assert list(every.corrupt_prompt.values) == ["the Vinson Massif is located in the city of",
                                                 "Beats Music is located in the continent of", "Eiffel Tower is owned by"]


def test_a_relation_substitution_and_an_in_memory_no_wait_fail_before_the_model_loads(tmp_path, data_file):
    import time

    start = time.perf_counter()
    with pytest.raises(ConfigError, match="use --corruption noise"):
        execute(RunConfig(data=str(data_file), out=str(tmp_path / "x.nc"), model="no/such/model", experiment="relation",
                          corruption="substitute"))
    with pytest.raises(ConfigError, match="--no-wait needs a data file"):
        execute(RunConfig(data=None, out=str(tmp_path / "x.nc"), model="no/such/model", remote="http://h:1", wait=False),
                items=RECORDS)
    assert time.perf_counter() - start < 5  # a model name that does not exist was never looked up


@pytest.mark.parametrize("metric", ["logit_diff", "recovery"])
def test_summarize_and_plot_take_a_metric(pair_cube, tmp_path, metric):
    from nnct.results.cube import write

    path = tmp_path / "pairs.nc"
    write(pair_cube, path)
    runner = CliRunner()
    result = runner.invoke(main, ["summarize", str(path), "--metric", metric])
    assert result.exit_code == 0, result.output
    assert f"metric {metric}" in result.output
    result = runner.invoke(main, ["plot", str(path), "--metric", metric, "-o", str(tmp_path / "fig")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "fig" / "aie_lines.png").is_file()
