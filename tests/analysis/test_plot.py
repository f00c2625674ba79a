"""Figures: the right panels, labels and values (checked against the hand-made cube's
numbers), shared colour scales, and PNG + PDF files."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from cubes import make_cube, records
from nnct.cli import main
from nnct.results.cube import write
from nnct.errors import ConfigError
from nnct.analysis.plot import (average_figure, comparison_figure, draw, example_figure, heads_figure, lines_figure, scales,
                                severed_figure)
from nnct.analysis.summary import summarize


def panels(fig):
    """The heatmap/line axes, without the colour bars."""
    return [ax for ax in fig.axes if ax.get_title()]


def test_example_heatmap_layout_and_values():
    ds, rec = make_cube(), records()[2]
    fig = example_figure(ds, "r2/cf1")
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == ["restoring hidden state", "restoring MLP"]
    assert len(fig.axes) == 4  # two panels, two colour bars
    labels = [t.get_text() for t in axes[0].get_yticklabels()]
    assert labels == ["w0*", "w1*", "w2*", "w3*", "w4", "w5"]  # the subject's tokens are the corrupted ones
    assert axes[0].get_xlabel() == "layer"
    assert axes[1].get_xlabel() == "layer (centre of 3 restored layers)"
    expected = rec.values["p_restored"][:, :, 1, 0].astype(np.float64) - np.float32(rec.values["p_corrupt"][0])
    np.testing.assert_allclose(np.asarray(axes[1].images[0].get_array()), expected, atol=1e-6)
    assert "r2/cf1" in fig._suptitle.get_text() and "'T2'" in fig._suptitle.get_text()


def test_example_figures_share_a_scale_per_component():
    ds = make_cube()
    scale = scales(ds)
    a, b = example_figure(ds, "r0/fact", scale=scale), example_figure(ds, "r3/cf1", scale=scale)
    for k in range(2):
        assert panels(a)[k].images[0].get_clim() == panels(b)[k].images[0].get_clim()
    hidden_max = max(float(np.max(r.values["p_restored"][:, :, 0, 0] - np.float32(r.values["p_corrupt"][0]))) for r in records())
    assert scale["hidden"] == (0.0, pytest.approx(hidden_max, abs=1e-6))


def test_average_heatmap_rows_are_segments():
    s = summarize(make_cube())
    fig = average_figure(s)
    ax = panels(fig)[0]
    assert [t.get_text() for t in ax.get_yticklabels()][:2] == ["prefix (n=2)", "subject_first (n=3)"]
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), s.aie.sel(metric="prob", component="hidden").values)


def test_aie_lines_have_one_line_and_band_per_segment():
    s = summarize(make_cube())
    with pytest.raises(ConfigError, match="no segment no_such_segment"):
        lines_figure(s, ["subject_last", "no_such_segment"])
    fig = lines_figure(s, ["subject_last", "last"])
    ax = panels(fig)[0]
    assert [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")] == [
        "subject_last (n=5)", "last (n=5)"]
    assert len(ax.collections) == 2  # the confidence bands
    assert ax.get_ylabel().startswith("AIE")


def test_draw_writes_png_and_pdf(tmp_path):
    ds = make_cube()
    paths = draw(ds, summarize(ds), tmp_path, examples=2)
    names = sorted(p.relative_to(tmp_path).as_posix() for p in paths)
    assert names == sorted(["examples/r0_fact.png", "examples/r0_fact.pdf", "examples/r1_fact.png", "examples/r1_fact.pdf",
                            "average.png", "average.pdf", "aie_lines.png", "aie_lines.pdf"])
    for p in paths:
        head = p.read_bytes()[:4]
        assert head == (b"\x89PNG" if p.suffix == ".png" else b"%PDF")


def test_plot_cli_with_a_filter(tmp_path):
    cube = tmp_path / "c.nc"
    write(make_cube(), cube)
    out = tmp_path / "figs"
    result = CliRunner().invoke(main, ["plot", str(cube), "-o", str(out), "--variant", "cf", "--examples", "5"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "examples").iterdir()) == ["r2_cf1.pdf", "r2_cf1.png", "r3_cf1.pdf", "r3_cf1.png"]


def test_token_labels_show_where_words_start():
    ds = make_cube()
    labels = ds.token_str.values.copy()
    labels[0, :5] = ["<s>", " Com", "me", " j", "'ai"]
    ds = ds.assign_coords(token_str=(("example", "token"), labels))
    shown = [t.get_text() for t in panels(example_figure(ds, "r0/fact"))[0].get_yticklabels()]
    assert shown == ["<s>", "␣Com*", "me*", "␣j", "'ai"]  # r0's subject tokens (positions 1, 2) are corrupted


def test_heads_figure_panels_and_labels():
    comps = ("hidden", "head", "head_all_pos")
    s = summarize(make_cube(components=comps))
    fig = heads_figure(s, segments=["subject_last", "last"])
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == ["subject_last (n=5)", "last (n=5)", "all positions from the span on"]
    np.testing.assert_allclose(np.asarray(axes[1].images[0].get_array()), s.aie_head.sel(metric="prob", segment="last").values)
    np.testing.assert_allclose(np.asarray(axes[2].images[0].get_array()), s.aie_head_all_pos.sel(metric="prob").values)
    grid = s.aie_head.sel(metric="prob", segment="last").values
    layer, head = np.unravel_index(np.argmax(grid), grid.shape)
    listed = axes[1].texts[0].get_text().splitlines()
    assert listed[0].startswith(f"L{layer}H{head} ") and len(listed) == 3  # the strongest heads, strongest first
    assert len(axes[1].patches) == 3  # and outlined


def test_severed_figure_draws_the_three_lines_at_the_span_end(tmp_path):
    comps = ("hidden", "hidden-sever-mlp", "hidden-sever-attn")
    ds = make_cube(components=comps)
    s = summarize(ds)
    ax = panels(severed_figure(s))[0]
    lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert [line.get_label() for line in lines] == ["hidden state", "hidden state, MLP severed", "hidden state, attention severed"]
    np.testing.assert_allclose(lines[1].get_ydata(), s.aie.sel(metric="prob", segment="subject_last", component="hidden-sever-mlp"))
    assert ax.get_title() == "at subject_last (n=5)"
    names = {p.name for p in draw(ds, s, tmp_path, examples=1)}
    assert {"severed.png", "severed.pdf"} <= names and "heads.png" not in names
    with pytest.raises(ConfigError, match="severed-path figure needs"):
        severed_figure(summarize(make_cube()))


def test_comparison_figure_sets_atp_beside_exact_on_one_scale():
    exact, atp = summarize(make_cube(seed=0)), summarize(make_cube(seed=1))
    axes = panels(comparison_figure(atp, exact))
    assert [ax.get_title() for ax in axes] == ["hidden state: exact", "hidden state: AtP", "MLP: exact", "MLP: AtP"]
    np.testing.assert_allclose(np.asarray(axes[0].images[0].get_array()), exact.aie.sel(metric="prob", component="hidden").values)
    np.testing.assert_allclose(np.asarray(axes[1].images[0].get_array()), atp.aie.sel(metric="prob", component="hidden").values)
    assert axes[2].images[0].get_clim() == axes[3].images[0].get_clim()  # one scale per component
