"""Reading a lesson page: split at its level-2 headings (never inside code), its links pointed from
elsewhere (never inside code, never an address or an anchor of its own)."""
from __future__ import annotations

from pathlib import Path

from common.tools.lessons import SECTIONS, read_lesson, relative_to, relink

PAGE = """# Stage 3: autograd

One paragraph, [the tools](../tools.md#make-diff).

## What changes

~~~python
## not a heading: code
```
still code, under a longer fence of another character
~~~

## Why

See `[not a link](../x.md)` in code, [an address](https://pytorch.org/docs), [above](#what-changes),
![a figure](../figures/compare.png "the compare figure") and [stage 4](stage04_functional.md).

## Try it

## Run it

## What to look at

## Fine print

## Do it yourself

## Next
"""


def lesson(tmp_path: Path):
    (tmp_path / "docs" / "stages").mkdir(parents=True)
    (tmp_path / "docs" / "stages" / "stage03_autograd.md").write_text(PAGE)
    return read_lesson("stage03_autograd", tmp_path / "docs" / "stages")


def test_a_page_splits_into_its_title_its_paragraph_and_its_sections(tmp_path):
    page = lesson(tmp_path)
    assert page.title == "Stage 3: autograd"
    assert page.intro == "One paragraph, [the tools](../tools.md#make-diff)."
    assert tuple(page.sections) == SECTIONS
    assert "## not a heading: code" in page.sections["What changes"]
    assert page.sections["What changes"].endswith("~~~")


def test_a_stage_without_a_page_has_none(tmp_path):
    assert read_lesson("stage03_autograd", tmp_path) is None


def test_relative_links_point_from_elsewhere_and_nothing_else_moves(tmp_path):
    page = lesson(tmp_path)
    moved = relink(page.sections["Why"], page, relative_to(tmp_path / "site"))
    assert "`[not a link](../x.md)`" in moved
    assert "(https://pytorch.org/docs)" in moved and "(#what-changes)" in moved
    assert '(../docs/figures/compare.png "the compare figure")' in moved
    assert "(../docs/stages/stage04_functional.md)" in moved
    assert relink(page.intro, page, relative_to(tmp_path / "site")).endswith("(../docs/tools.md#make-diff).")


def test_a_link_can_be_sent_anywhere(tmp_path):
    page = lesson(tmp_path)
    to_notebooks = relink(page.sections["Why"], page, lambda file, anchor: f"{file.stem}.ipynb{anchor}"
                          if file.name.startswith("stage") else None)
    assert "(stage04_functional.ipynb)" in to_notebooks and "(../figures/compare.png" in to_notebooks
