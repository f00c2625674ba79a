"""nnct.results.cube: the effect cube's schema, its NetCDF round trip, atomic writes, and
the effects of every metric derived from it -- all checked against hand-made numbers."""

from __future__ import annotations

import os

import numpy as np
import pytest

from nnct.results.cube import ATTRS, Row, assemble, effects, metric_effects, metrics_of, open_cube, write

COMPONENTS = ("hidden", "attn")
N_LAYERS = 2

# Binary fractions, exact in float32, so every comparison below can be exact.
A_RESTORED = (np.arange(3 * 2 * 2 * 2, dtype=np.float64).reshape(3, 2, 2, 2) + 1) / 64  # [token, layer, comp, answer]
B_RESTORED = (np.arange(5 * 2 * 2 * 2, dtype=np.float64).reshape(5, 2, 2, 2) + 1) / 128
A_CLEAN, A_CORRUPT = np.array([0.5, 0.25]), np.array([0.125, 0.0625])
B_CLEAN, B_CORRUPT = np.array([0.75, 0.125]), np.array([0.25, 0.5])
# Logits: other binary fractions, so that no metric can pass by reading probabilities.
A_LOGITS = (np.array([2.0, -1.0]), np.array([0.5, 0.25]), A_RESTORED * 8 - 1)  # clean, corrupt, restored
B_LOGITS = (np.array([4.0, 1.0]), np.array([1.5, 2.5]), B_RESTORED * 16 - 2)


def values(clean, corrupt, restored, logits):
    return {"p_clean": clean.copy(), "p_corrupt": corrupt.copy(), "p_restored": restored.copy(),
            "logit_clean": logits[0], "logit_corrupt": logits[1], "logit_restored": logits[2]}

ATTRS_IN = {
    "model": "tiny-llama", "model_revision": "rev-1", "nnct_version": "0.0.test", "experiment": "subject",
    "prompt_format": "C: {context} {prompt}", "samples": 10, "window": 10, "noise_rule": "s3",
    "noise_level": 0.375, "seed": 0, "replace": 0, "reverse_patching": 0, "dtype": "float32",
    "backend": "local", "device": "cpu", "created": "2024-05-01T12:00:00+00:00",
}


def rec_a() -> Row:
    return Row(
        example="r1/fact", record_id="r1", variant="fact", prompt="C: Paris of", corrupt_prompt="",
        target_str="Paris", alt_str="Rome", line=1,
        token_ids=[0, 23, 9], token_str=["<s>", "Paris", "of"], segment=["bos", "subject_last", "last"],
        span=[1], answer_ids=[23, 31], clean_top1=23, clean_top1_str="Paris",
        values=values(A_CLEAN, A_CORRUPT, A_RESTORED, A_LOGITS),
    )


def rec_b() -> Row:
    return Row(
        example="r1/cf1", record_id="r1", variant="cf1", prompt="C: the Eiffel Tower of", corrupt_prompt="C: the Vinson Tower of",
        target_str="Rome", alt_str="Paris", line=1,
        token_ids=[0, 3, 8, 25, 9], token_str=["<s>", "C", "the", "Eiffel", "of"],
        segment=["bos", "context_before", "relation", "subject_last", "last"],
        span=[1, 3], answer_ids=[31, 23], clean_top1=23, clean_top1_str="Paris",
        values=values(B_CLEAN, B_CORRUPT, B_RESTORED, B_LOGITS),
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
    assert [str(s) for s in cube.corrupt_prompt.values] == ["", "C: the Vinson Tower of"]
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


# ------------------------------------------------------------------ Row save / load


def test_example_record_round_trip(tmp_path):
    a = rec_b()
    path = tmp_path / "r1__cf1.npz"
    a.save(path)
    assert os.listdir(tmp_path) == ["r1__cf1.npz"]  # no temporary file left
    b = Row.load(path)
    assert (b.example, b.record_id, b.variant, b.prompt, b.corrupt_prompt, b.target_str, b.alt_str) == (
        "r1/cf1", "r1", "cf1", "C: the Eiffel Tower of", "C: the Vinson Tower of", "Rome", "Paris")
    assert all(type(getattr(b, k)) is str for k in ("example", "record_id", "variant", "prompt", "target_str", "alt_str"))
    assert b.token_ids == [0, 3, 8, 25, 9]
    assert b.token_str == ["<s>", "C", "the", "Eiffel", "of"]
    assert b.segment == ["bos", "context_before", "relation", "subject_last", "last"]
    assert b.span == [1, 3]
    np.testing.assert_array_equal(b.values["p_clean"], [0.75, 0.125])
    np.testing.assert_array_equal(b.values["p_corrupt"], [0.25, 0.5])
    np.testing.assert_array_equal(b.values["p_restored"], B_RESTORED)
    np.testing.assert_array_equal(b.values["logit_restored"], B_RESTORED * 16 - 2)
    np.testing.assert_array_equal(b.values["logit_corrupt"], [1.5, 2.5])
    assert b.values["p_restored"].shape == (5, 2, 2, 2)


def test_example_record_save_replaces(tmp_path):
    path = tmp_path / "x.npz"
    rec_b().save(path)
    rec_a().save(path)
    assert os.listdir(tmp_path) == ["x.npz"]
    assert Row.load(path).example == "r1/fact"


def test_loaded_records_assemble_like_the_originals(tmp_path):
    for name, r in (("a.npz", rec_a()), ("b.npz", rec_b())):
        r.save(tmp_path / name)
    loaded = [Row.load(tmp_path / n) for n in ("a.npz", "b.npz")]
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


def hand_logits() -> np.ndarray:
    out = np.full((2, 5, 2, 2, 2), np.nan)
    out[0, :3], out[1] = A_LOGITS[2], B_LOGITS[2]
    return out


def test_logits_are_stored_beside_the_probabilities(cube):
    assert cube.logit_restored.dims == cube.p_restored.dims
    np.testing.assert_array_equal(cube.logit_restored.values, hand_logits())
    np.testing.assert_array_equal(cube.logit_clean.values, [A_LOGITS[0], B_LOGITS[0]])
    np.testing.assert_array_equal(cube.logit_corrupt.values, [A_LOGITS[1], B_LOGITS[1]])


@pytest.mark.parametrize("reverse", [0, 1])
def test_every_metric_by_hand(cube, reverse):
    """Each metric's IE and TE of the target answer, computed here from the hand-made values."""
    cube.attrs["reverse_patching"] = reverse
    clean, corrupt, restored = np.array([A_CLEAN, B_CLEAN]), np.array([A_CORRUPT, B_CORRUPT]), hand_restored()
    l_clean, l_corrupt, l_restored = np.array([A_LOGITS[0], B_LOGITS[0]]), np.array([A_LOGITS[1], B_LOGITS[1]]), hand_logits()

    def per_cell(c):  # [example] -> [example, token, layer, component]
        return c[:, None, None, None]

    base = {
        "prob": (clean[:, 0], corrupt[:, 0], restored[..., 0]),
        "log_ratio": tuple(np.log(x[..., 0]) - np.log(x[..., 1]) for x in (clean, corrupt, restored)),
        "logit_diff": tuple(x[..., 0] - x[..., 1] for x in (l_clean, l_corrupt, l_restored)),
    }
    for name, (m_clean, m_corrupt, m_restored) in base.items():
        ie, te = metric_effects(cube, name)
        want = per_cell(m_clean) - m_restored if reverse else m_restored - per_cell(m_corrupt)
        np.testing.assert_allclose(ie.values, want, rtol=1e-6, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(te.values, m_clean - m_corrupt, rtol=1e-6, atol=1e-6, err_msg=name)
        if name == "log_ratio":
            continue
        rec, rec_te = metric_effects(cube, "recovery" if name == "prob" else "recovery_logit_diff")
        np.testing.assert_allclose(rec.values, want / per_cell(m_clean - m_corrupt), rtol=1e-6, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(rec_te.values, [1.0, 1.0])
    # one cell by hand: A[t=2, l=1, attn] logit diff (23/64*8-1) - (24/64*8-1) = -1/8; clean 3, corrupt 1/4
    ie, _ = metric_effects(cube, "logit_diff")
    got = float(ie.sel(example="r1/fact", token=2, layer=1, component="attn"))
    assert got == (3.125 if reverse else -0.375)


def test_recovery_is_undefined_without_a_total_effect(cube):
    cube["p_corrupt"].loc[{"example": "r1/fact", "answer": "target"}] = 0.5 - 1e-4  # TE 1e-4 < MIN_TOTAL
    rec, te = metric_effects(cube, "recovery")
    assert np.isnan(rec.sel(example="r1/fact").values).all() and np.isnan(float(te.sel(example="r1/fact")))
    assert not np.isnan(rec.sel(example="r1/cf1").values).any()


def test_a_cube_without_logits_gives_the_probability_metrics_only(cube):
    old = cube.drop_vars(["logit_clean", "logit_corrupt", "logit_restored"])
    assert metrics_of(old) == ("prob", "log_ratio", "recovery")
    assert set(metrics_of(cube)) == {"prob", "log_ratio", "logit_diff", "recovery", "recovery_logit_diff"}
    with pytest.raises(Exception, match="needs the answers' logits"):
        metric_effects(old, "logit_diff")


def test_heads_get_variables_of_their_own(tmp_path):
    """Components of heads are stored beside (not padded into) `component`; a cube of heads
    alone has no p_restored; the values survive the NetCDF round trip; effects follow."""
    comps = ("hidden", "head", "head_all_pos")
    a_head = (np.arange(3 * 2 * 3 * 2, dtype=np.float64).reshape(3, 2, 3, 2) + 1) / 256  # [token, layer, head, answer]
    b_head = (np.arange(5 * 2 * 3 * 2, dtype=np.float64).reshape(5, 2, 3, 2) + 1) / 512
    all_pos = (np.arange(2 * 3 * 2, dtype=np.float64).reshape(2, 3, 2) + 1) / 32  # [layer, head, answer]
    rows = [rec_a(), rec_b()]
    for r, head in zip(rows, (a_head, b_head)):
        r.values["p_restored"] = r.values["p_restored"][:, :, :1]
        r.values["logit_restored"] = r.values["logit_restored"][:, :, :1]
        r.values.update(p_restored_head=head, logit_restored_head=head * 4, p_restored_head_all_pos=all_pos,
                        logit_restored_head_all_pos=all_pos - 1)
    path = tmp_path / "heads.nc"
    write(assemble(rows, N_LAYERS, comps, ATTRS_IN, n_heads=3), path)
    ds = open_cube(path)
    assert ds.p_restored_head.dims == ("example", "token", "layer", "head", "answer")
    assert ds.p_restored_head_all_pos.dims == ("example", "layer", "head", "answer")
    assert list(ds.component.values) == ["hidden"] and list(ds["head"].values) == [0, 1, 2]
    np.testing.assert_array_equal(ds.p_restored_head.values[0, :3], a_head.astype(np.float32))
    assert np.isnan(ds.p_restored_head.values[0, 3:]).all()  # padding after the shorter prompt
    np.testing.assert_array_equal(ds.logit_restored_head_all_pos.values[1], (all_pos - 1).astype(np.float32))
    ie, _ = effects(ds, "restored_head")
    np.testing.assert_array_equal(ie.sel(answer="target").values[1, :5, 1, 2],
                                  (b_head[:, 1, 2, 0] - B_CORRUPT[0]).astype(np.float32))
    ld, _ = metric_effects(ds, "logit_diff", "restored_head_all_pos")
    assert ld.dims == ("example", "layer", "head")
    np.testing.assert_allclose(ld.values[0, 1, 0], (all_pos[1, 0, 0] - all_pos[1, 0, 1]) - (A_LOGITS[1][0] - A_LOGITS[1][1]))
    rows[0].values = {k: v for k, v in rows[0].values.items() if "restored_head" in k or k in ("p_clean", "p_corrupt",
                                                                                                 "logit_clean", "logit_corrupt")}
    heads_only = assemble(rows[:1], N_LAYERS, ("head", "head_all_pos"), ATTRS_IN, n_heads=3)
    assert "p_restored" not in heads_only and "component" not in heads_only.coords
    saved = tmp_path / "row.npz"
    rows[1].save(saved)
    back = Row.load(saved)
    assert set(back.values) == set(rows[1].values)
    np.testing.assert_array_equal(back.values["p_restored_head"], b_head)
