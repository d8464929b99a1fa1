"""Each stage diff is only its idea: a stage prints what it computes (step 1's loss and gradient,
the epoch's line) with the one printer every stage shares; a demonstration lives in its lesson
page's "Try it" (tests/claims/test_lesson_snippets.py), never in a function the next stage would
delete; and the twelve diffs stay small enough to read."""
from __future__ import annotations

import ast
import difflib
from collections import defaultdict

from common.harness import stage_files

IN_EVERY_STAGE = "show_first_step"
DIFF_LINES = 800  # the 12 diffs together, whitespace ignored (issue 27's target; 1,101 before it)
COLUMNS = 100


def printers() -> dict[str, dict[str, str]]:
    """{printer name: {stage file name: its source}} for every top-level `def show_...`."""
    found = defaultdict(dict)
    for path in stage_files():
        source = path.read_text()
        for node in ast.parse(source).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("show_"):
                found[node.name][path.name] = ast.get_source_segment(source, node)
    return found


def changed_lines(old: str, new: str) -> int:
    """Lines removed plus lines added, whitespace ignored (as `git diff -w` counts them, near enough)."""
    a, b = (["".join(line.split()) for line in text.splitlines()] for text in (old, new))
    kept = sum(block.size for block in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks())
    return len(a) + len(b) - 2 * kept


def test_every_stage_prints_its_first_step_with_the_same_printer():
    first = printers()[IN_EVERY_STAGE]
    assert sorted(first) == [p.name for p in stage_files()]
    assert len(set(first.values())) == 1, "one text in every stage: a diff never shows it"


def test_no_diff_deletes_a_printer_that_the_stage_before_has():
    files = [p.name for p in stage_files()]
    deleted = [(name, earlier) for name, stages in printers().items()
               for earlier, later in zip(files, files[1:]) if earlier in stages and later not in stages]
    assert deleted == []


def test_the_twelve_diffs_together_change_at_most_800_lines():
    texts = [p.read_text() for p in stage_files()]
    sizes = [changed_lines(old, new) for old, new in zip(texts, texts[1:])]
    assert sum(sizes) <= DIFF_LINES, f"{sum(sizes)} lines: {sizes}"


def test_the_count_sees_a_changed_line_twice_and_whitespace_not_at_all():
    assert changed_lines("a\nb\nc\n", "a\nB\nc\n") == 2
    assert changed_lines("f(x,  y)\n", "f(x, y)\n") == 0


def test_every_stage_line_fits_in_100_columns():
    wide = [f"{p.name}:{n}" for p in stage_files() for n, line in enumerate(p.read_text().splitlines(), 1)
            if len(line) > COLUMNS]
    assert wide == []
