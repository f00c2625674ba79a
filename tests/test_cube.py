"""nnct.cube: the effect cube's schema, its NetCDF round trip, atomic writes, and the
effects derived from it -- all checked against hand-made numbers."""

from __future__ import annotations

import os

import numpy as np
import pytest

from nnct.cube import ATTRS, ExampleRecord, assemble, effects, log_ratio, open_cube, write

COMPONENTS = ("hidden", "attn")
N_LAYERS = 2

# Binary fractions, exact in float32, so every comparison below can be exact.
A_RESTORED = (np.arange(3 * 2 * 2 * 2, dtype=np.float64).reshape(3, 2, 2, 2) + 1) / 64  # [token, layer, comp, answer]
B_RESTORED = (np.arange(5 * 2 * 2 * 2, dtype=np.float64).reshape(5, 2, 2, 2) + 1) / 128
A_CLEAN, A_CORRUPT = np.array([0.5, 0.25]), np.array([0.125, 0.0625])
B_CLEAN, B_CORRUPT = np.array([0.75, 0.125]), np.array([0.25, 0.5])

ATTRS_IN = {
    "model": "tiny-llama", "model_revision": "rev-1", "nnct_version": "0.0.test", "experiment": "subject",
    "prompt_format": "C: {context} {prompt}", "samples": 10, "window": 10, "noise_rule": "s3",
    "noise_level": 0.375, "seed": 0, "replace": 0, "reverse_patching": 0, "dtype": "float32",
    "backend": "local", "device": "cpu", "created": "2024-05-01T12:00:00+00:00",
}


def rec_a() -> ExampleRecord:
    return ExampleRecord(
        example="r1/fact", record_id="r1", variant="fact", prompt="C: Paris of",
        target_str="Paris", alt_str="Rome", line=1,
        token_ids=[0, 23, 9], token_str=["<s>", "Paris", "of"], segment=["bos", "subject_last", "last"],
        span=[1], p_clean=A_CLEAN.copy(), p_corrupt=A_CORRUPT.copy(), p_restored=A_RESTORED.copy(),
        answer_ids=[23, 31], clean_top1=23, clean_top1_str="Paris",
    )


def rec_b() -> ExampleRecord:
    return ExampleRecord(
        example="r1/cf1", record_id="r1", variant="cf1", prompt="C: the Eiffel Tower of",
        target_str="Rome", alt_str="Paris", line=1,
        token_ids=[0, 3, 8, 25, 9], token_str=["<s>", "C", "the", "Eiffel", "of"],
        segment=["bos", "context_before", "relation", "subject_last", "last"],
        span=[1, 3], p_clean=B_CLEAN.copy(), p_corrupt=B_CORRUPT.copy(), p_restored=B_RESTORED.copy(),
        answer_ids=[31, 23], clean_top1=23, clean_top1_str="Paris",
    )


@pytest.fixture
def cube(tmp_path):
    ds = assemble([rec_a(), rec_b()], N_LAYERS, COMPONENTS, ATTRS_IN)
    path = tmp_path / "effects.nc"
    write(ds, path)
    return open_cube(path)


def hand_restored() -> np.ndarray:
    """p_restored as the cube should hold it: [example, token(5), layer, comp, answer], NaN padding."""
    out = np.full((2, 5, 2, 2, 2), np.nan)
    out[0, :3] = A_RESTORED
    out[1] = B_RESTORED
    return out


def test_ATTRS_is_the_method_list():
    assert set(ATTRS) == set(ATTRS_IN)


def test_dims(cube):
    assert dict(cube.sizes) == {"example": 2, "token": 5, "layer": 2, "component": 2, "answer": 2}
    assert cube.p_restored.dims == ("example", "token", "layer", "component", "answer")
    assert cube.p_clean.dims == ("example", "answer")
    assert cube.p_corrupt.dims == ("example", "answer")
    assert cube.token_str.dims == ("example", "token")
    assert cube.segment.dims == ("example", "token")


def test_coordinates(cube):
    assert list(cube.example.values) == ["r1/fact", "r1/cf1"]
    assert list(cube.token.values) == [0, 1, 2, 3, 4]
    assert list(cube.layer.values) == [0, 1]
    assert list(cube.component.values) == ["hidden", "attn"]
    assert list(cube.answer.values) == ["target", "alt"]
    assert list(cube.n_tokens.values) == [3, 5]


def test_p_restored_values_and_padding(cube):
    assert cube.p_restored.dtype == np.float32
    np.testing.assert_array_equal(cube.p_restored.values, hand_restored())
    # a few cells by hand: A[t=2, l=1, attn, alt] = (2*8 + 1*4 + 1*2 + 1 + 1)/64
    assert float(cube.p_restored.sel(example="r1/fact", token=2, layer=1, component="attn", answer="alt")) == 24 / 64
    # B[t=0, l=0, hidden, target] = 1/128; B[t=4, l=1, attn, alt] = 40/128
    assert float(cube.p_restored.sel(example="r1/cf1", token=0, layer=0, component="hidden", answer="target")) == 1 / 128
    assert float(cube.p_restored.sel(example="r1/cf1", token=4, layer=1, component="attn", answer="alt")) == 40 / 128
    pad = cube.p_restored.sel(example="r1/fact", token=[3, 4]).values
    assert pad.shape == (2, 2, 2, 2)
    assert np.isnan(pad).all()
    assert not np.isnan(cube.p_restored.sel(example="r1/cf1").values).any()


def test_p_clean_and_corrupt(cube):
    assert cube.p_clean.dtype == np.float32
    np.testing.assert_array_equal(cube.p_clean.values, [[0.5, 0.25], [0.75, 0.125]])
    np.testing.assert_array_equal(cube.p_corrupt.values, [[0.125, 0.0625], [0.25, 0.5]])
    assert float(cube.p_clean.sel(example="r1/cf1", answer="alt")) == 0.125


def test_token_labels_and_padding(cube):
    assert [str(s) for s in cube.token_str.values[0]] == ["<s>", "Paris", "of", "", ""]
    assert [str(s) for s in cube.token_str.values[1]] == ["<s>", "C", "the", "Eiffel", "of"]
    assert [str(s) for s in cube.segment.values[0]] == ["bos", "subject_last", "last", "", ""]
    assert [str(s) for s in cube.segment.values[1]] == ["bos", "context_before", "relation", "subject_last", "last"]
    assert cube.token_id.values.tolist() == [[0, 23, 9, -1, -1], [0, 3, 8, 25, 9]]


def test_span_and_corrupted(cube):
    assert cube.span_start.values.tolist() == [1, 1]
    assert cube.span_end.values.tolist() == [2, 4]
    # B's span {1, 3} is not contiguous: `corrupted` says which tokens got noise
    assert cube.corrupted.values.tolist() == [[0, 1, 0, 0, 0], [0, 1, 0, 1, 0]]


def test_string_vars(cube):
    assert [str(s) for s in cube.target_str.values] == ["Paris", "Rome"]
    assert [str(s) for s in cube.alt_str.values] == ["Rome", "Paris"]
    assert [str(s) for s in cube.record_id.values] == ["r1", "r1"]
    assert [str(s) for s in cube.variant.values] == ["fact", "cf1"]
    assert [str(s) for s in cube.prompt.values] == ["C: Paris of", "C: the Eiffel Tower of"]
    assert str(cube.target_str.sel(example="r1/cf1").item()) == "Rome"


def test_answer_ids_and_clean_top1(cube):
    assert cube.answer_id.dims == ("example", "answer")
    assert cube.answer_id.values.tolist() == [[23, 31], [31, 23]]
    assert cube.clean_top1.values.tolist() == [23, 23]
    assert [str(s) for s in cube.clean_top1_str.values] == ["Paris", "Paris"]


def test_attrs_round_trip(cube):
    assert set(cube.attrs) == set(ATTRS_IN)
    for k, v in ATTRS_IN.items():
        got = cube.attrs[k]
        assert got == v, k
        assert isinstance(got, str) == isinstance(v, str), k


def test_examples_keep_the_given_order(tmp_path):
    ds = assemble([rec_b(), rec_a()], N_LAYERS, COMPONENTS, ATTRS_IN)
    write(ds, tmp_path / "c.nc")
    back = open_cube(tmp_path / "c.nc")
    assert list(back.example.values) == ["r1/cf1", "r1/fact"]
    assert list(back.n_tokens.values) == [5, 3]
    np.testing.assert_array_equal(back.p_restored.values[1, :3], A_RESTORED)


# ------------------------------------------------------------------ ExampleRecord save / load


def test_example_record_round_trip(tmp_path):
    a = rec_b()
    path = tmp_path / "r1__cf1.npz"
    a.save(path)
    assert os.listdir(tmp_path) == ["r1__cf1.npz"]  # no temporary file left
    b = ExampleRecord.load(path)
    assert (b.example, b.record_id, b.variant, b.prompt, b.target_str, b.alt_str) == (
        "r1/cf1", "r1", "cf1", "C: the Eiffel Tower of", "Rome", "Paris")
    assert all(type(getattr(b, k)) is str for k in ("example", "record_id", "variant", "prompt", "target_str", "alt_str"))
    assert b.token_ids == [0, 3, 8, 25, 9]
    assert b.token_str == ["<s>", "C", "the", "Eiffel", "of"]
    assert b.segment == ["bos", "context_before", "relation", "subject_last", "last"]
    assert b.span == [1, 3]
    np.testing.assert_array_equal(b.p_clean, [0.75, 0.125])
    np.testing.assert_array_equal(b.p_corrupt, [0.25, 0.5])
    np.testing.assert_array_equal(b.p_restored, B_RESTORED)
    assert b.p_restored.shape == (5, 2, 2, 2)


def test_example_record_save_replaces(tmp_path):
    path = tmp_path / "x.npz"
    rec_b().save(path)
    rec_a().save(path)
    assert os.listdir(tmp_path) == ["x.npz"]
    assert ExampleRecord.load(path).example == "r1/fact"


def test_loaded_records_assemble_like_the_originals(tmp_path):
    for name, r in (("a.npz", rec_a()), ("b.npz", rec_b())):
        r.save(tmp_path / name)
    loaded = [ExampleRecord.load(tmp_path / n) for n in ("a.npz", "b.npz")]
    ds = assemble(loaded, N_LAYERS, COMPONENTS, ATTRS_IN)
    np.testing.assert_array_equal(ds.p_restored.values, hand_restored())
    assert list(ds.example.values) == ["r1/fact", "r1/cf1"]


# ------------------------------------------------------------------ atomic write


def test_write_leaves_no_temporary_file(tmp_path):
    ds = assemble([rec_a(), rec_b()], N_LAYERS, COMPONENTS, ATTRS_IN)
    write(ds, tmp_path / "effects.nc")
    assert os.listdir(tmp_path) == ["effects.nc"]


def test_write_creates_parent_directories(tmp_path):
    ds = assemble([rec_a()], N_LAYERS, COMPONENTS, ATTRS_IN)
    path = tmp_path / "deep" / "er" / "effects.nc"
    write(ds, str(path))
    assert os.listdir(path.parent) == ["effects.nc"]
    assert list(open_cube(path).example.values) == ["r1/fact"]


def test_write_over_existing_file_replaces_it(tmp_path):
    path = tmp_path / "effects.nc"
    write(assemble([rec_a(), rec_b()], N_LAYERS, COMPONENTS, ATTRS_IN), path)
    assert open_cube(path).sizes["example"] == 2
    write(assemble([rec_b()], N_LAYERS, COMPONENTS, {**ATTRS_IN, "seed": 5}), path)
    back = open_cube(path)
    assert os.listdir(tmp_path) == ["effects.nc"]
    assert list(back.example.values) == ["r1/cf1"]
    assert back.attrs["seed"] == 5
    assert dict(back.sizes) == {"example": 1, "token": 5, "layer": 2, "component": 2, "answer": 2}


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "effects.nc"
    write(assemble([rec_a()], N_LAYERS, COMPONENTS, ATTRS_IN), path)
    bad = assemble([rec_b()], N_LAYERS, COMPONENTS, {**ATTRS_IN, "model": {"not": "serialisable"}})
    with pytest.raises(TypeError):
        write(bad, path)
    assert os.listdir(tmp_path) == ["effects.nc"]
    assert list(open_cube(path).example.values) == ["r1/fact"]


# ------------------------------------------------------------------ effects / log_ratio


def test_effects_forward(cube):
    ie, te = effects(cube)
    want_ie = hand_restored() - np.array([A_CORRUPT, B_CORRUPT])[:, None, None, None, :]
    np.testing.assert_array_equal(ie.transpose("example", "token", "layer", "component", "answer").values, want_ie)
    np.testing.assert_array_equal(te.transpose("example", "answer").values, [[0.375, 0.1875], [0.5, -0.375]])
    # one cell by hand: A[t=2, l=1, attn, alt] = 24/64 - 0.0625
    assert float(ie.sel(example="r1/fact", token=2, layer=1, component="attn", answer="alt")) == 0.3125
    assert np.isnan(ie.sel(example="r1/fact", token=4).values).all()


def test_effects_reverse_patching(tmp_path):
    ds = assemble([rec_a(), rec_b()], N_LAYERS, COMPONENTS, {**ATTRS_IN, "reverse_patching": 1})
    write(ds, tmp_path / "rev.nc")
    cube = open_cube(tmp_path / "rev.nc")
    ie, te = effects(cube)
    want_ie = np.array([A_CLEAN, B_CLEAN])[:, None, None, None, :] - hand_restored()
    np.testing.assert_array_equal(ie.transpose("example", "token", "layer", "component", "answer").values, want_ie)
    np.testing.assert_array_equal(te.transpose("example", "answer").values, [[0.375, 0.1875], [0.5, -0.375]])
    # A[t=2, l=1, attn, alt]: p_clean(alt) 0.25 - p_patched 24/64
    assert float(ie.sel(example="r1/fact", token=2, layer=1, component="attn", answer="alt")) == -0.125


@pytest.mark.parametrize("reverse", [0, 1])
def test_effects_dims_order(cube, reverse):
    """effects' docstring: IE[example, token, layer, component, answer], TE[example, answer]."""
    cube.attrs["reverse_patching"] = reverse
    ie, te = effects(cube)
    assert te.dims == ("example", "answer")
    assert ie.dims == ("example", "token", "layer", "component", "answer")


def test_log_ratio(cube):
    lr = log_ratio(cube.p_clean)
    assert lr.dims == ("example",)
    np.testing.assert_allclose(lr.values, [np.log(2.0), np.log(6.0)], rtol=1e-6)
    lr_c = log_ratio(cube.p_corrupt)
    np.testing.assert_allclose(lr_c.values, [np.log(2.0), np.log(0.5)], rtol=1e-6)
    lr_r = log_ratio(cube.p_restored)
    assert lr_r.dims == ("example", "token", "layer", "component")
    want = np.log(hand_restored()[..., 0]) - np.log(hand_restored()[..., 1])
    # float32 logs of nearby numbers: compare with an absolute tolerance
    np.testing.assert_allclose(lr_r.values, want, rtol=0, atol=1e-6)
    # A[t=0, l=0, hidden]: log((1/64) / (2/64)) = -log 2
    assert float(lr_r.sel(example="r1/fact", token=0, layer=0, component="hidden")) == pytest.approx(-np.log(2.0))
    assert np.isnan(lr_r.sel(example="r1/fact", token=3).values).all()
