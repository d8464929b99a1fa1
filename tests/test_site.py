"""The course as a web page: written from the stage files, and checked in a real headless browser."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from common.plots import plt
from common.site import build

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built with one figure from a run record, as `make run` would leave it."""
    root = tmp_path_factory.mktemp("site")
    record = root / "runs" / "stage06_optim" / "20260101-000000"
    record.mkdir(parents=True)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    fig.savefig(record / "curves.png")
    plt.close(fig)
    build(root / "site", root / "runs")
    return root / "site"


def test_every_stage_has_a_page_linked_from_the_index(site):
    index = (site / "index.html").read_text()
    pages = sorted(p.name for p in site.glob("stage*.html"))
    assert len(pages) == len(list((Path(__file__).parent.parent / "stages").glob("stage[0-9][0-9]_*.py")))
    assert all(f'href="{name}"' in index for name in pages)


def test_the_diff_marks_what_a_stage_adds(site):
    page = (site / "stage06_optim.html").read_text()
    added = [cell for cell in page.split("<td") if cell.startswith(' class="added"')]
    assert any("optim" in cell and "SGD" in cell for cell in added)
    removed = [cell for cell in page.split("<td") if cell.startswith(' class="removed"')]
    assert any("sgd_momentum_update" in cell for cell in removed)
    assert 'src="figures/stage06_optim-curves.png"' in page and (site / "figures" / "stage06_optim-curves.png").exists()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        yield browser
        browser.close()


def open_page(browser, path: Path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed to load {r.url}"))
    page.goto(path.resolve().as_uri(), wait_until="load")
    return page, problems


def test_every_page_loads_in_a_browser_without_errors(browser, site):
    for path in sorted(site.glob("*.html")):
        page, problems = open_page(browser, path)
        assert page.title(), path.name
        assert problems == [], f"{path.name}: {problems}"
        page.close()


def test_the_browser_shows_optim_sgd_as_added_in_the_5_to_6_diff(browser, site):
    page, _ = open_page(browser, site / "stage06_optim.html")
    added = page.locator("td.added", has_text="optim.SGD")
    assert added.count() >= 1 and added.first.is_visible()
    background = added.first.evaluate("cell => getComputedStyle(cell).backgroundColor")
    assert background == "rgb(230, 255, 236)", "added lines are shaded green"
    page.close()


def test_a_screenshot_of_the_index_is_not_blank(browser, site, tmp_path):
    page, _ = open_page(browser, site / "index.html")
    page.screenshot(path=str(tmp_path / "index.png"), full_page=True)
    pixels = plt.imread(tmp_path / "index.png")[..., :3]
    assert pixels.std() > 0.05, "the page shows something besides one colour"
    assert (pixels.mean(axis=2) < 0.5).mean() > 0.005, "some dark text is drawn"
    page.close()
