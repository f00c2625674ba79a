"""Screenshots of each `nnct view` page kind, taken in headless Chromium (`just view`).

The pages of the committed studies (analysis/results/<study>/view.html, written first by
`just view`) are opened from disk in Debian's chromium through its chromedriver (nothing
downloaded), and each page kind is saved as a PNG into analysis/results/views/, with its
load time (navigation start to the load event, the figures drawn) printed. The summary
and severed-path kinds have no study page of their own: their pages are written to
temporary files first (the memory study's summary, the heads study's severed.nc).

    python analysis/view_screenshots.py [analysis/results]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from nnct.analysis import view

# page kind -> (page, what to show before the shot: a JavaScript statement or None)
SHOTS = {
    "cube": ("memory/view.html", None),
    "two-cubes": ("atp/view.html", None),
    "circuit": ("memorization/view.html", None),
    "edits": ("editing/view.html", None),
    "heads": ("heads/view.html", "document.getElementById('fig-heads').scrollIntoView()"),
    "paths": ("paths/view.html", None),
}


def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1300"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def shoot(browser, page: Path, png: Path, before: str | None) -> float:
    """Open `page`, save it as `png`; the load time in seconds."""
    browser.get(page.resolve().as_uri())
    seconds = browser.execute_script("const n = performance.getEntriesByType('navigation')[0]; return n.loadEventEnd / 1000;")
    if before:
        browser.execute_script(before)
    png.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(png))
    return seconds


def main(results: Path) -> None:
    out = results / "views"
    browser = driver()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            summary = view.write(results / "memory/subject.fact.summary.nc", Path(tmp) / "summary.html")
            severed = view.write(results / "heads/severed.nc", Path(tmp) / "severed.html")
            pages = {**{k: (results / p, js) for k, (p, js) in SHOTS.items()}, "summary": (summary, None),
                     "severed": (severed, "document.getElementById('fig-lines').scrollIntoView()")}
            for kind, (page, before) in pages.items():
                seconds = shoot(browser, page, out / f"{kind}.png", before)
                print(f"{out / (kind + '.png')}: {page} ({page.stat().st_size / 1e6:.1f} MB, loaded in {seconds:.2f} s)")
    finally:
        browser.quit()


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "analysis/results"))
