"""The course as a web page: written from the stage files, and checked in a real headless browser."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.tools.figures import plt
from common.tools.site import build, changed_characters, line_tokens, pair_lines, stage_files

STAGES = [p.stem for p in stage_files()]
FULL_RUN_FINISHED = "2026-01-01 12:10:00"


def png(path: Path, width_px: int, title: str) -> None:
    """A small figure of a known pixel width, so a page can be checked to show this one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(width_px / 100, 2), dpi=100)
    ax.plot([0, 1], [1, 0])
    ax.set_title(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


FULL_WIDTH, SMOKE_WIDTH = 400, 300  # curves.png of the full course run, and of a later smoke run


def course_summary(runs: Path, name: str, full: bool, stamp: str, steps: int, finished: str) -> None:
    """A course-summary JSON as common.tools.course writes it, over one record per stage."""
    summaries = []
    for stage in STAGES:
        record = runs / stage / stamp
        png(record / "curves.png", FULL_WIDTH if full else SMOKE_WIDTH, f"{stage} {name}")
        summaries.append({"stage": stage, "final_loss": 1.0, "test_accuracy": 0.5, "seconds": 1.0, "steps": steps,
                          "record": f"{stage}/{stamp}"})
    (runs / f"{name}.json").write_text(json.dumps({
        "full": full, "stages": list(range(1, len(STAGES) + 1)), "epochs": 1, "max_steps": None if full else 20,
        "argv": [], "started": finished, "finished": finished, "seconds": 60.0, "summaries": summaries}))
    png(runs / f"{name}.png", 600, name)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site after `make run`, then `make smoke` and `make gradcheck`: the smoke run is the
    latest record of every stage, and the pages must still show the full run's figures."""
    root = tmp_path_factory.mktemp("site")
    runs = root / "runs"
    course_summary(runs, "course-summary", True, "20260101-120000", 2000, FULL_RUN_FINISHED)
    course_summary(runs, "course-summary-smoke", False, "20260102-090000", 20, "2026-01-02 09:01:00")
    png(runs / "gradcheck" / "step-size.png", 500, "step size")
    build(root / "site", runs)
    return root / "site"


@pytest.fixture(scope="module")
def site_without_a_full_run(tmp_path_factory) -> Path:
    """The site after `make smoke` alone."""
    root = tmp_path_factory.mktemp("smoke-only")
    course_summary(root / "runs", "course-summary-smoke", False, "20260102-090000", 20, "2026-01-02 09:01:00")
    build(root / "site", root / "runs")
    return root / "site"


# ---------------------------------------------------------------- the pages as files
def test_every_stage_has_a_page_linked_from_the_index(site):
    index = (site / "index.html").read_text()
    pages = sorted(p.name for p in site.glob("stage*.html"))
    assert pages == [f"{name}.html" for name in STAGES]
    assert all(f'href="{name}"' in index for name in pages)


def test_the_diff_marks_what_a_stage_adds(site):
    page = (site / "stage06_optim.html").read_text()
    added = [cell for cell in page.split("<td") if cell.startswith(' class="code added"')]
    assert any("optim" in cell and "SGD" in cell for cell in added)
    removed = [cell for cell in page.split("<td") if cell.startswith(' class="code removed"')]
    assert any("sgd_momentum_update" in cell for cell in removed)


def test_the_index_says_how_to_run_the_course_and_what_each_page_holds(site):
    index = (site / "index.html").read_text()
    for command in ("make run", "make test", "make diff FROM=2 TO=3", "make compare", "make site", "make gradcheck"):
        assert f"<code>{command}</code>" in index, command
    assert "What each page holds" in index


def test_each_stage_page_shows_the_full_course_runs_figure_not_a_later_smoke_runs(site):
    runs = site.parent / "runs"
    for stage in STAGES:
        page = (site / f"{stage}.html").read_text()
        shown = site / "figures" / f"{stage}-curves.png"
        assert f'src="figures/{stage}-curves.png"' in page
        assert shown.read_bytes() == (runs / stage / "20260101-120000" / "curves.png").read_bytes(), stage
        assert f"finished {FULL_RUN_FINISHED}: 1 epoch, 2000 steps" in page, "which run the figure comes from"
    assert (site / "figures" / "course-summary.png").read_bytes() == (runs / "course-summary.png").read_bytes()


def test_without_a_full_run_the_pages_say_how_to_make_one(site_without_a_full_run):
    for path in site_without_a_full_run.glob("*.html"):
        page = path.read_text()
        assert "No full course run found" in page and "<code>make run</code>" in page, path.name
        assert "-curves.png" not in page and 'src="figures/course-summary.png"' not in page, path.name
    assert not (site_without_a_full_run / "figures").exists()


def test_the_gradcheck_figure_is_on_the_index_and_the_stage_1_page(site, site_without_a_full_run):
    tag = 'src="figures/gradcheck-step-size.png"'
    assert tag in (site / "index.html").read_text() and tag in (site / f"{STAGES[0]}.html").read_text()
    assert tag not in (site / f"{STAGES[1]}.html").read_text()
    assert tag not in (site_without_a_full_run / "index.html").read_text(), "only when make gradcheck has run"


# ---------------------------------------------------------------- the pieces
def test_highlighting_keeps_every_character_of_every_line():
    for path in stage_files():
        source = path.read_text()
        lines = ["".join(text for _, text in tokens) for tokens in line_tokens(source)]
        assert lines == source.split("\n"), path.name


def test_changed_characters_are_whole_words_not_shared_letters():
    old, new = "loss = F.cross_entropy(model(x), y)", "loss = criterion(model(x), y)"
    marked_old, marked_new = changed_characters(old, new)
    assert "".join(c for c, m in zip(old, marked_old) if m) == "F.cross_entropy"
    assert "".join(c for c, m in zip(new, marked_new) if m) == "criterion"
    _, marked = changed_characters("a = f(x, y)", "a = g(x,  y)")
    assert [i for i, m in enumerate(marked) if m] == [4, 8, 9], "f -> g and the widened space"


def test_changed_lines_face_their_most_alike_counterpart():
    old = ["x = 1", "def train_step(model, x, y):"]
    new = ["def train_step(model, x, y, run):", "z = 2"]
    assert pair_lines(old, new) == [(0, None), (1, 0), (None, 1)]


# ---------------------------------------------------------------- in a browser


def open_page(browser, path: Path, width: int = 1280):
    page = browser.new_page(viewport={"width": width, "height": 900})
    problems = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"failed to load {r.url}"))
    page.goto(path.resolve().as_uri(), wait_until="load")
    return page, problems


def test_every_page_loads_in_a_browser_without_errors(every_page):
    assert len(every_page) == len(STAGES) + 1, "every stage's page and the index"
    for name, seen in every_page.items():
        assert seen["title"], name
        assert seen["problems"] == [], f"{name}: {seen['problems']}"


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


# For every code cell: each run of non-space characters (a "word": `F.cross_entropy(logits,`) must lie
# on one visual line, i.e. the boxes the browser draws for it share one top. Returns the words that
# do not, and how many cells wrap at all (so that the check is not passed by a page with no wrapping).
WORDS_CUT = """cells => {
  const cut = []; let wrapped = 0;
  for (const cell of cells) {
    const nodes = []; let text = "";
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    while (walker.nextNode()) { nodes.push([walker.currentNode, text.length]); text += walker.currentNode.data; }
    const at = offset => {  // the text node holding a character of the cell's text, and the offset in it
      const [node, start] = nodes.findLast(([, start]) => start <= offset);
      return [node, offset - start];
    };
    const tops = range => [...range.getClientRects()].filter(r => r.width > 0).map(r => r.top);
    const whole = document.createRange(); whole.selectNodeContents(cell);
    const lineHeight = parseFloat(getComputedStyle(cell).lineHeight) || 15;
    const all = tops(whole);
    if (all.length && Math.max(...all) - Math.min(...all) > lineHeight / 2) wrapped++;
    for (const word of text.matchAll(/\\S+/g)) {
      const range = document.createRange();
      range.setStart(...at(word.index));
      const [endNode, endOffset] = at(word.index + word[0].length - 1);
      range.setEnd(endNode, endOffset + 1);
      const t = tops(range);
      if (Math.max(...t) - Math.min(...t) > lineHeight / 2) cut.push(word[0]);
    }
  }
  return {cut, wrapped};
}"""


def test_long_code_lines_wrap_between_words_never_inside_one(every_page):
    for stage in STAGES:
        cut = every_page[stage]["words"]["cut"]
        assert cut == [], f"{stage}: words cut across two lines: {cut[:5]}"
    assert sum(every_page[stage]["words"]["wrapped"] for stage in STAGES) > 20, "lines do wrap"


@pytest.fixture(scope="module")
def every_page(browser, site) -> dict[str, dict]:
    """Each page of the site, visited once at 900 px (narrow: many code lines must wrap): its
    problems while loading, its title, the words its diff cuts across two lines, and its text with
    the lesson page's prose hidden (which may quote the docstring)."""
    seen = {}
    for path in sorted(site.glob("*.html")):
        page, problems = open_page(browser, path, width=900)
        title = page.title()
        words = page.locator("table.diff td:not(.num)").evaluate_all(WORDS_CUT)
        page.add_style_tag(content=".prose { display: none; }")
        seen[path.stem] = {"problems": problems, "title": title, "words": words,
                           "text": page.locator("body").inner_text()}
        page.close()
    return seen


def test_each_page_shows_its_docstring_once(every_page):
    for stage in STAGES:
        docstring = stage_files()[STAGES.index(stage)].read_text().split('"""')[1]
        lines = [line.strip() for line in docstring.splitlines() if len(line.strip()) >= 30]
        text = every_page[stage]["text"]
        twice = [line for line in lines if text.count(line) != docstring.count(line)]  # most lines: once
        assert lines and twice == [], f"{stage}: shown more often than the docstring has it: {twice[:3]}"
        if stage != STAGES[0]:
            assert text.count("Changes from stage") == 1, stage


# Each character of a cell's text, and whether the page marks it (inside a <mark>).
MARKED = """cell => {
  const out = [];
  const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const marked = walker.currentNode.parentElement.closest("mark") !== null;
    for (const ch of walker.currentNode.data) out.push([ch, marked]);
  }
  return out;
}"""


def test_the_changed_words_of_a_changed_line_are_marked_exactly(browser, site):
    """Stage 6 calls its `criterion` where stage 5 called `F.cross_entropy`: in the loop's line of
    the 5->6 diff, exactly those two names are marked, each on its side, darker than the line."""
    page, _ = open_page(browser, site / "stage06_optim.html")
    row = page.locator("tr", has=page.locator("td.removed", has_text="loss = F.cross_entropy(")).filter(
        has=page.locator("td.added", has_text="loss = criterion("))
    assert row.count() == 1
    old = row.locator("td.removed").evaluate(MARKED)
    new = row.locator("td.added").evaluate(MARKED)
    old_text, new_text = "".join(c for c, _ in old), "".join(c for c, _ in new)
    assert old_text.replace("F.cross_entropy", "criterion") == new_text, "the line differs only in that name"
    assert "".join(c for c, m in old if m) == "F.cross_entropy"
    assert [m for _, m in old] == [old_text.index("F.") <= i < old_text.index("F.") + 15 for i in range(len(old))]
    assert [m for _, m in new] == [new_text.index("criterion") <= i < new_text.index("criterion") + 9
                                   for i in range(len(new))]
    line, word = row.locator("td.added"), row.locator("td.added mark")
    colours = [x.evaluate("e => getComputedStyle(e).backgroundColor") for x in (line, word.first)]
    assert colours[0] != colours[1], "the changed word stands out from its changed line"
    page.close()


def test_the_browser_shows_each_stage_the_full_runs_figure(browser, site):
    for stage in (STAGES[0], "stage06_optim"):
        page, _ = open_page(browser, site / f"{stage}.html")
        image = page.locator(f'img[src="figures/{stage}-curves.png"]')
        assert image.evaluate("img => img.naturalWidth") == FULL_WIDTH, "the full run's figure, not the smoke run's"
        assert "the full course run (make run)" in page.locator("figcaption").first.inner_text()
        page.close()
