"""`nnct view` pages in a real headless Chromium (Debian's chromium and chromium-driver,
driven by Selenium, never its selenium-manager): no console error, no network request, a
selector or the top-n slider changes what is drawn, and a hovered cell shows the cube's
value. The expected numbers come from the files, computed here, not from the pages."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from unittest import mock

import pytest

from nnct.analysis import view
from nnct.results import circuit as circuit_file
from view_files import big_cube, circuit, edits, prob_effects, small_cube, write_cube

pytestmark = pytest.mark.browser
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    missing = [p for p, f in (("chromium", CHROMIUM), ("chromium-driver", CHROMEDRIVER)) if not f.exists()]
    if missing:
        pytest.skip(f"no {' and '.join(missing)}: apt-get install {' '.join(missing)} (bash setup.sh does)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.selenium_manager import SeleniumManager

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1400"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    # nothing is downloaded: the driver and browser are given, so selenium-manager must never run
    with mock.patch.object(SeleniumManager, "binary_paths", side_effect=AssertionError("selenium-manager invoked")):
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pages")
    cube = small_cube(0)
    out = {"cube": (tmp / "cube.html", cube), "two": (tmp / "two.html", None), "edits": (tmp / "edits.html", None)}
    view.write(write_cube(cube, tmp / "cube.nc"), out["cube"][0])
    view.write(tmp / "cube.nc", out["two"][0], write_cube(small_cube(1), tmp / "other.nc"))
    view.write(edits(tmp / "edits.nc")[0], out["edits"][0])
    path, graph, score = circuit(tmp / "circuit.nc")
    view.write(path, tmp / "circuit.html")
    out["circuit"] = (tmp / "circuit.html", (graph, score))
    out["big"] = (view.write(write_cube(big_cube(), tmp / "big.nc"), tmp / "big.html"), None)
    return out


def load(driver, path: Path):
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get_log("performance")
    driver.get(path.as_uri())
    return driver


def test_pages_load_without_errors_or_network(browser, pages):
    for name, (path, _) in pages.items():
        load(browser, path)
        errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, (name, errors)
        resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert not [r for r in resources if not r.startswith(("file:", "data:", "blob:"))], (name, resources)
        requested = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
        urls = [m["params"]["request"]["url"] for m in requested if m["method"] == "Network.requestWillBeSent"]
        assert all(u.startswith(("file:", "data:", "blob:")) for u in urls), (name, urls)
        assert browser.execute_script("return document.querySelectorAll('.js-plotly-plot').length") >= 1


def figure_data(driver, div: str):
    return driver.execute_script(f"return JSON.stringify(document.getElementById('{div}').data.map(t => [t.z, t.y]))")


def test_changing_a_selector_changes_the_plot(browser, pages):
    from selenium.webdriver.support.ui import Select

    load(browser, pages["cube"][0])
    for control, div in (("component", "fig-average"), ("metric", "fig-average"), ("answer", "fig-example"),
                         ("example", "fig-example"), ("segment", "fig-lines")):
        before = figure_data(browser, div)
        Select(browser.find_element("id", control)).select_by_index(1)
        assert figure_data(browser, div) != before, control
    load(browser, pages["edits"][0])
    before = figure_data(browser, "fig-bylayer")
    select = Select(browser.find_element("id", "metric"))
    select.select_by_visible_text("paraphrase" if select.first_selected_option.text == "efficacy" else "efficacy")
    assert figure_data(browser, "fig-bylayer") != before


def test_a_hovered_cell_shows_the_cubes_value(browser, pages):
    from selenium.webdriver.support.ui import Select

    path, cube = pages["cube"]
    load(browser, path)
    Select(browser.find_element("id", "metric")).select_by_value("prob")
    Select(browser.find_element("id", "answer")).select_by_value("target")
    Select(browser.find_element("id", "example")).select_by_index(2)
    Select(browser.find_element("id", "component")).select_by_value("mlp")
    example = Select(browser.find_element("id", "example")).first_selected_option.text
    i = list(cube.example.values).index(example)
    ie = prob_effects(cube)[i, :, :, 1]  # the MLP, target answer, prob
    for token, layer in ((1, 2), (int(cube.n_tokens.values[i]) - 1, 5)):
        time.sleep(0.2)  # plotly throttles hover events (50 ms apart)
        text = browser.execute_script(
            "const g = document.getElementById('fig-example');"
            f"Plotly.Fx.hover(g, {{xval: {layer}, yval: {token}}}, 'xy');"
            "const h = g.querySelector('.hovertext'); return h ? h.textContent : '';")
        shown = float(re.search(r"value\s*(-?[\d.e+-]+)", text.replace("\u2212", "-")).group(1))
        assert shown == pytest.approx(ie[token, layer], rel=2e-3, abs=2e-4), text
        assert str(cube.token_str.values[i][token]) in text and f"layer {layer}" in text


def drawn_edges(driver) -> int:
    return driver.execute_script("return document.getElementById('fig-graph').data.filter(t => t.meta === 'edge')"
                                 ".reduce((n, t) => n + t.x.filter(v => v === null).length, 0)")


def test_the_top_n_slider_redraws_the_edges(browser, pages):
    from selenium.webdriver.common.keys import Keys

    path, (graph, score) = pages["circuit"]
    load(browser, path)
    slider = browser.find_element("id", "topn")
    counts = []
    for key in (Keys.END, Keys.HOME, Keys.END):
        slider.send_keys(key)
        label = browser.find_element("id", "topn-label").text
        n = int(re.search(r"top (\d+)", label).group(1))
        drawn = drawn_edges(browser)
        assert drawn == int(circuit_file.circuit(graph, score, n).sum()), label
        counts.append(drawn)
    assert counts[0] == int(circuit_file.circuit(graph, score, int(graph.edges.sum())).sum())
    assert counts[0] != counts[1] and counts[0] == counts[2]


def test_a_60_example_cube_opens(browser, pages):
    """The 60-example, 3-component page draws its example heatmap (its load time is measured
    by analysis/view_screenshots.py, not asserted: speed is a benchmark's, not a test's)."""
    load(browser, pages["big"][0])
    assert browser.execute_script("return document.getElementById('fig-example').data[0].z.length") == 24
