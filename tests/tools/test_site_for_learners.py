"""The site as a learner meets it, in headless Chromium at 1280 and 400 px: no page wider than the
screen, the diff stacked old above new where two columns no longer fit, figures that open at full
size, each stage's lesson page rendered from markdown, and a way on from every stage page to its
lesson page, its exercise and the next stage. Every result names its data.

The lesson pages here are written by the test (tmp_path), in the layout of docs/stages/."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from common.data import make_synthetic
from common.tools.figures import plt
from common.tools.exercises.catalog import EXERCISES
from common.tools.site import NARROW, build, stage_files

STAGES = [p.stem for p in stage_files()]
WIDTHS = {"desktop": 1280, "phone": 400}
FIGURE_WIDTH = 1500  # wider than a phone, and than the desktop page's column: it must open at full size


def lesson_text(k: int, stem: str) -> str:
    """A lesson page as docs/stages/ has them: title, a paragraph, the six sections."""
    after = f"[the next stage]({STAGES[k + 1]}.md)" if k + 1 < len(STAGES) else "the end of the course"
    return f"""# Stage {k + 1}: the lesson of {stem}

The first paragraph of {stem}'s lesson, with `inline code` and a [link to the tools](../tools.md#make-diff).

## What changes

The old lines, then the new:

```python
## this is a comment inside code, not a heading
loss = F.cross_entropy(model(x), y)
```

| what | before | after |
|---|---|---|
| the loss | `F.cross_entropy` | `criterion` |

## Why

Because **{stem}** says so; see [its claims](../../tests/claims/test_{stem}.py).

## Run it

```sh
make run STAGE={k + 1}
```

## What to look at

- `step 1: loss 2.3284, near ln 10 = 2.3026` the first line.

## Fine print

- A claim, with its test.

## Next

Go on to {after}.
"""


def png(path: Path, width_px: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(width_px / 100, 3), dpi=100)
    ax.plot([0, 1], [1, 0])
    fig.savefig(path, dpi=100)
    plt.close(fig)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site after a full synthetic `make run`, with a lesson page for every stage."""
    root = tmp_path_factory.mktemp("learner")
    docs, runs = root / "docs", root / "runs"
    (docs / "stages").mkdir(parents=True)
    (docs / "tools.md").write_text("# Tools\n\n## make diff\n")
    for k, stem in enumerate(STAGES):
        (docs / "stages" / f"{stem}.md").write_text(lesson_text(k, stem))
    source = make_synthetic(0, n_train=10, n_test=10).source
    summaries = []
    for stem in STAGES:
        png(runs / stem / "20260101-120000" / "curves.png", FIGURE_WIDTH)
        summaries.append({"stage": stem, "final_loss": 0.2, "test_accuracy": 0.956, "seconds": 7.0, "steps": 2000,
                          "record": f"{stem}/20260101-120000", "data": {"source": source, "details": None}})
    (runs / "course-summary.json").write_text(json.dumps({
        "full": True, "stages": list(range(1, len(STAGES) + 1)), "epochs": 1, "max_steps": None, "argv": [],
        "started": "2026-01-01 12:00:00", "finished": "2026-01-01 12:10:00", "seconds": 600.0,
        "summaries": summaries}))
    png(runs / "course-summary.png", FIGURE_WIDTH)
    build(root / "site", runs, docs / "stages")
    return root / "site"




def opened(browser, path: Path, width: int):
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.goto(path.resolve().as_uri(), wait_until="load")
    return page


# ---------------------------------------------------------------- every page, once at each width
# What the tests below read of every page, gathered in one visit per page and width (a page of
# diffs takes a browser most of a second to lay out). `cut`: elements whose content is wider than
# their box, what a reader would have to scroll sideways to see.
PROBE = """() => {
  const shown = e => !!e && e.checkVisibility();
  const lesson = document.querySelector('a.lesson-page'), next = document.querySelector('nav.pager a.next');
  const exercise = document.querySelector('#exercise'), pager = document.querySelector('nav.pager');
  return {
    scrollWidth: document.documentElement.scrollWidth,
    cut: [...document.querySelectorAll('body *')]
      .filter(e => e.getClientRects().length && e.scrollWidth > e.clientWidth + 1 && e.clientWidth > 0
                   && getComputedStyle(e).overflowX !== 'visible')
      .map(e => `${e.tagName.toLowerCase()}.${e.className}: ${e.scrollWidth} in ${e.clientWidth}`),
    captions: [...document.querySelectorAll('figcaption')].map(e => e.innerText),
    text: document.body.innerText,
    lesson: lesson && {href: lesson.getAttribute('href'), shown: shown(lesson)},
    exercise: exercise && exercise.innerText,
    exerciseLink: shown(document.querySelector('a[href="#exercise"]')),
    next: next && {href: next.getAttribute('href'), shown: shown(next)},
    pager: pager ? pager.innerText : '',
  };
}"""


@pytest.fixture(scope="module")
def every_page(browser, site) -> dict[int, dict[str, dict]]:
    """every_page[width][page name]: what PROBE read of it."""
    seen = {}
    for width in WIDTHS.values():
        seen[width] = {}
        for path in sorted(site.glob("*.html")):
            page = opened(browser, path, width)
            seen[width][path.stem] = page.evaluate(PROBE)
            page.close()
    return seen


@pytest.mark.parametrize("width", WIDTHS.values(), ids=WIDTHS.keys())
def test_no_page_scrolls_sideways_and_nothing_is_hidden_in_a_box_that_would(every_page, width):
    assert len(every_page[width]) == len(STAGES) + 1, "every stage's page and the index"
    for name, seen in every_page[width].items():
        assert seen["scrollWidth"] <= width, f"{name} is wider than {width} px"
        assert seen["cut"] == [], f"{name} at {width} px: {seen['cut'][:4]}"


# ---------------------------------------------------------------- the diff, side by side or stacked
ROW_BOXES = """row => [...row.querySelectorAll('td.code')].filter(td => td.getClientRects().length)
  .map(td => { const r = td.getBoundingClientRect(); return {cls: td.className, top: r.top, bottom: r.bottom,
                                                           left: r.left, right: r.right}; })"""


def changed_row(page):
    """The 5->6 row where `loss = F.cross_entropy(` became `loss = criterion(`."""
    return page.locator("tr", has=page.locator("td.removed", has_text="loss = F.cross_entropy(")).filter(
        has=page.locator("td.added", has_text="loss = criterion("))


def test_on_a_wide_screen_the_old_and_the_new_line_stand_side_by_side(browser, site):
    page = opened(browser, site / "stage06_optim.html", NARROW + 121)
    old, new = changed_row(page).evaluate(ROW_BOXES)
    page.close()
    assert "removed" in old["cls"] and "added" in new["cls"]
    assert old["top"] == new["top"] and old["right"] <= new["left"]


def test_on_a_phone_the_old_line_stands_above_the_new_one_and_an_unchanged_line_once(browser, site):
    page = opened(browser, site / "stage06_optim.html", WIDTHS["phone"])
    old, new = changed_row(page).evaluate(ROW_BOXES)
    assert "removed" in old["cls"] and "added" in new["cls"]
    assert old["bottom"] <= new["top"] + 1 and abs(old["left"] - new["left"]) < 1, "stacked, old above new"
    assert new["right"] - new["left"] > 250, "the code gets the screen's width, not half of it"
    unchanged = page.locator("tr.same", has_text="import torch").first.evaluate(ROW_BOXES)
    assert len(unchanged) == 1, "an unchanged line is shown once"
    page.close()


def test_on_a_phone_no_word_of_thirty_characters_or_fewer_is_cut(browser, site):
    """A short word (`F.cross_entropy(model(x),`) still never breaks; only one too long for the
    phone's column may (`torch.accelerator.current_accelerator(check_available=True)`)."""
    page = opened(browser, site / "stage09_device.html", WIDTHS["phone"])
    tops = page.locator("td.code .word:not(.long)").evaluate_all(
        "words => words.map(w => [...w.getClientRects()].map(r => r.top)).filter(t => new Set(t).size > 1).length")
    long_words = page.locator("td.code .word.long").count()
    page.close()
    assert tops == 0 and long_words > 0


# ---------------------------------------------------------------- figures
@pytest.mark.parametrize("width", WIDTHS.values(), ids=WIDTHS.keys())
def test_every_figure_is_a_link_to_itself_at_full_size(browser, site, width):
    for name in ("index", "stage01_numpy", "stage06_optim"):
        page = opened(browser, site / f"{name}.html", width)
        images = page.locator("figure img")
        assert images.count() >= 1, name
        for i in range(images.count()):
            image = images.nth(i)
            link = image.locator("xpath=ancestor::a[1]")
            assert link.get_attribute("href") == image.get_attribute("src"), name
            shown, natural = image.evaluate("img => [img.clientWidth, img.naturalWidth]")
            assert natural == FIGURE_WIDTH and shown < natural, "shrunk to the page, so the link matters"
        href = images.first.locator("xpath=ancestor::a[1]").get_attribute("href")
        page.close()
        assert (site / href).is_file()
    page = opened(browser, site / "stage06_optim.html", WIDTHS["phone"])
    page.locator("figure a.full-size").first.click()
    page.wait_for_url(re.compile(r"figures/stage06_optim-curves\.png$"))
    assert page.evaluate("document.images[0].naturalWidth") == FIGURE_WIDTH
    page.close()


def test_every_caption_and_the_stage_table_name_the_data(browser, site, every_page):
    page = opened(browser, site / "index.html", WIDTHS["desktop"])
    header = page.locator("table.stages th").last.inner_text()
    rows = page.locator("table.stages td.accuracy").all_inner_texts()
    notes = page.locator("p.note").all_inner_texts()
    page.close()
    assert "synthetic shapes, not CIFAR-10" in header and rows == ["95.60 %"] * len(STAGES)
    assert any("53-56 %" in note for note in notes) and any("DistributedSampler" in note for note in notes)
    for name, seen in every_page[WIDTHS["desktop"]].items():
        captions = seen["captions"]
        assert captions and all("synthetic shapes, not CIFAR-10" in c for c in captions), (name, captions)


# ---------------------------------------------------------------- the lesson page, rendered
def test_the_lesson_page_is_rendered_as_markdown_around_the_diff(browser, site):
    page = opened(browser, site / "stage06_optim.html", WIDTHS["desktop"])
    headings = page.locator("h2").all_inner_texts()
    assert headings[headings.index("What changes"):] == [
        "What changes", "Why", "The code: stage05_module → stage06_optim", "Run it", "What to look at",
        "Fine print", "Next"]
    assert page.locator("h1").inner_text() == "Stage 6: the lesson of stage06_optim"
    block = page.locator(".prose pre.highlight", has_text="this is a comment inside code")
    assert block.count() == 1, "a ## inside a fenced block is code"
    assert block.locator("span").count() > 3, "coloured as the diff is"
    assert page.locator(".prose table td code", has_text="criterion").count() == 1
    assert page.locator(".prose strong", has_text="stage06_optim").count() == 1
    assert page.locator("pre", has_text="## What changes").count() == 0, "no page shown as its raw text"
    assert page.locator("figure + figure, h2#what-to-look-at ~ h3").count() >= 1, "the figure where to look"
    page.close()


def test_the_lesson_pages_links_point_from_the_site(browser, site):
    page = opened(browser, site / "stage06_optim.html", WIDTHS["desktop"])
    hrefs = page.locator(".prose a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    page.close()
    assert "stage07_dataloader.html" in hrefs, "another lesson page: that stage's page"
    tools = next(h for h in hrefs if h.endswith("tools.md#make-diff"))
    claims = next(h for h in hrefs if "tests/claims/" in h)
    assert (site / tools.partition("#")[0]).resolve() == (site.parent / "docs" / "tools.md").resolve()
    assert (site / claims).resolve() == (site.parent / "tests" / "claims" / "test_stage06_optim.py").resolve()


# ---------------------------------------------------------------- the way on from every stage page
@pytest.mark.parametrize("width", WIDTHS.values(), ids=WIDTHS.keys())
def test_every_stage_page_leads_to_its_lesson_page_its_exercise_and_the_next_stage(every_page, site, width):
    for k, stage in enumerate(STAGES):
        number, seen = k + 1, every_page[width][stage]
        lesson = seen["lesson"]
        assert lesson["shown"] and (site / lesson["href"]).resolve() == \
            (site.parent / "docs" / "stages" / f"{stage}.md").resolve()
        if number in EXERCISES:
            assert f"Do it yourself: make exercise STAGE={number}" in seen["text"], stage
            assert f"make check STAGE={number}" in seen["text"] and seen["exerciseLink"]
            assert all(name in seen["exercise"] for name in EXERCISES[number].blanks)
        else:
            assert "no exercise yet" in seen["exercise"]
        following = seen["next"]
        if k + 1 < len(STAGES):
            assert following["href"] == f"{STAGES[k + 1]}.html" and following["shown"]
        else:
            assert following is None and "last stage" in seen["pager"]


def test_the_index_calls_the_learner_to_the_first_stage_and_its_exercise(browser, site):
    page = opened(browser, site / "index.html", WIDTHS["phone"])
    start = page.locator(".todo a", has_text="stage 1")
    assert start.is_visible() and start.get_attribute("href") == f"{STAGES[0]}.html"
    assert "make exercise STAGE=N" in page.locator(".todo").inner_text()
    page.close()


def test_screenshots_at_both_widths_show_the_page(browser, site, tmp_path):
    for name in ("index", "stage06_optim"):
        for width in WIDTHS.values():
            page = opened(browser, site / f"{name}.html", width)
            shot = tmp_path / f"{name}-{width}.png"
            page.screenshot(path=str(shot), full_page=True)
            page.close()
            pixels = plt.imread(shot)[..., :3]
            assert pixels.shape[1] == width, "the full-page screenshot is no wider than the screen"
            assert pixels.std() > 0.05 and (pixels.mean(axis=2) < 0.5).mean() > 0.005
