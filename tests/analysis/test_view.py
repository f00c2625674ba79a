"""Pages of `nnct view` without a browser: self-contained (no outside src or href), small
enough, and holding the cube's numbers (checked against numpy computations by hand)."""

from __future__ import annotations

import time
from html.parser import HTMLParser

import numpy as np
import pytest
from click.testing import CliRunner

from nnct.analysis import view
from nnct.cli import main
from nnct.results.cube import open_cube
from view_files import big_cube, circuit, edits, page_data, prob_effects, segment_aie, small_cube, unpacked, write_cube


class Links(HTMLParser):
    """Every src and href of the page's elements (a script's text is not parsed as tags)."""

    def __init__(self):
        super().__init__()
        self.links, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [v for k, v in attrs if k in ("src", "href") and v]


def links(text: str) -> Links:
    parser = Links()
    parser.feed(text)
    return parser


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    ds = big_cube()
    path = write_cube(ds, tmp_path_factory.mktemp("big") / "big.nc")
    started = time.perf_counter()
    text = view.build(path)
    return ds, text, time.perf_counter() - started


def test_a_60_example_3_component_cube_page_is_small_and_self_contained(big):
    ds, text, seconds = big
    assert ds.sizes["example"] == 60 and ds.sizes["component"] == 3
    assert len(text.encode()) < 10_000_000
    assert seconds < 30  # building, on a slow shared machine
    found = links(text)
    assert not [u for u in found.links if u.startswith(("http:", "https:", "//"))]
    assert "script" in found.tags and "link" not in found.tags  # plotly.js inline, no stylesheet fetched
    assert "Plotly" in text and "cdn.plot.ly/plotly" not in text.split("<script>", 1)[0]


def test_the_embedded_effects_are_the_cubes(big):
    ds, text, _ = big
    data = page_data(text)
    shape = (ds.sizes["example"], ds.sizes["token"], ds.sizes["layer"], ds.sizes["component"])
    for answer, name in enumerate(("target", "alt")):
        got = unpacked(data["effects"][f"prob|{name}"]).reshape(shape)
        expected = prob_effects(ds, answer)
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=2e-4)
    assert data["components"] == ["hidden", "mlp", "attn"]
    tokens = data["examples"][0]["tokens"]
    assert [t.replace("\u200b", "") for t in tokens[:3]] == ["w0", "w1", "w2*"]  # the subject's token starred


def test_the_embedded_averages_are_the_segments_means(big):
    ds, text, _ = big
    data = page_data(text)
    segments = data["segments"]["all"]
    average = data["averages"]["all"]["target"]["prob"]
    grid = unpacked(average["aie"]).reshape(len(segments), ds.sizes["layer"], ds.sizes["component"])
    for g in ("subject_last", "last", "prefix"):
        np.testing.assert_allclose(grid[segments.index(g)], segment_aie(ds, g), rtol=1e-3, atol=2e-4)
    fact = ds.isel(example=np.flatnonzero(ds.variant.values == "fact"))
    grid = unpacked(data["averages"]["fact"]["alt"]["prob"]["aie"]).reshape(len(data["segments"]["fact"]), ds.sizes["layer"], 3)
    np.testing.assert_allclose(grid[data["segments"]["fact"].index("last")], segment_aie(fact, "last", answer=1), rtol=1e-3,
                               atol=2e-4)


def test_two_cubes_hold_both_averages(tmp_path):
    a, b = small_cube(0), small_cube(1)
    text = view.build(write_cube(a, tmp_path / "a.nc"), write_cube(b, tmp_path / "b.nc"))
    data = page_data(text)
    seg = data["segments"].index("last")
    for side, ds in enumerate((a, b)):
        grid = unpacked(data["values"]["prob"][side]).reshape(len(data["segments"]), ds.sizes["layer"], 3)
        np.testing.assert_allclose(grid[seg], segment_aie(ds, "last"), rtol=1e-3, atol=2e-4)


def test_circuit_page_stores_the_edges_by_score(tmp_path):
    path, graph, score = circuit(tmp_path / "c.nc")
    data = page_data(view.build(path))
    assert data["total"] == int(graph.edges.sum())
    stored = np.sort(np.abs(unpacked(data["score"])))[::-1]
    np.testing.assert_allclose(stored, np.sort(np.abs(score[graph.edges]))[::-1], rtol=1e-3, atol=1e-4)


def test_edits_and_summary_pages_via_the_cli(tmp_path):
    path, made = edits(tmp_path / "e.nc")
    cube = write_cube(small_cube(), tmp_path / "s.nc")
    runner = CliRunner()
    assert runner.invoke(main, ["summarize", str(cube), "--out", str(tmp_path / "sum.nc")]).exit_code == 0
    for source, out in ((path, "e.html"), (tmp_path / "sum.nc", "s.html"), (cube, "c.html")):
        result = runner.invoke(main, ["view", str(source), "-o", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
    rows = page_data((tmp_path / "e.html").read_text())["rows"]
    assert [r["efficacy"] for r in rows] == pytest.approx([e.metrics["efficacy"] for e in made], rel=1e-3)
    summary = page_data((tmp_path / "s.html").read_text())
    assert "ATE" in summary["tables"]["prob"]
    np.testing.assert_allclose(unpacked(summary["grids"]["prob"]["aie"]).reshape(len(summary["segments"]), 6, 3)
                               [summary["segments"].index("last")], segment_aie(open_cube(cube), "last"), rtol=1e-3, atol=2e-4)


def test_view_refuses_what_it_cannot_show(tmp_path):
    (tmp_path / "x.nc").write_text("not netcdf")
    result = CliRunner().invoke(main, ["view", str(tmp_path / "x.nc"), "-o", str(tmp_path / "x.html")])
    assert result.exit_code != 0 and "not a NetCDF file" in result.output
    assert not (tmp_path / "x.html").exists()
