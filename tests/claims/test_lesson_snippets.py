"""Every lesson page's "Try it" snippets print what the page says they print: each ```python block is
run here, as a learner would paste it, and its output compared with the ```text block after it
(`...` there stands for text that differs from run to run, such as a time). So a page never
drifts from the code it shows."""
from __future__ import annotations

import io
import re
from contextlib import redirect_stdout

import pytest
import torch

from common.harness import stage_files
from common.tools.lessons import read_lesson, snippets
from tests.helpers import stage_marks

CASES = [pytest.param(path.stem, i, code, output, id=f"{path.stem}-{i + 1}",
                      marks=stage_marks(f"stages.{path.stem}"))
         for path in stage_files() if (lesson := read_lesson(path.stem)) is not None
         for i, (code, output) in enumerate(snippets(lesson))]


def matches(printed: str, shown: str) -> bool:
    """The printed text is the shown one, `...` standing for any text within a line."""
    pattern = "\n".join(".*".join(re.escape(part) for part in line.split("...")) for line in shown.splitlines())
    return re.fullmatch(pattern, printed.rstrip("\n")) is not None


def test_every_lesson_page_has_a_snippet_to_try():
    assert {case.values[0] for case in CASES} == {path.stem for path in stage_files()}


@pytest.mark.parametrize("stage, index, code, output", CASES)
def test_a_snippet_prints_what_its_page_shows(stage, index, code, output):
    if "compile()" in code:
        from stages.stage13_compile import can_compile

        if not can_compile(torch.device("cpu")):
            pytest.skip("no C++ compiler: inductor cannot compile on this CPU")
        torch.compiler.reset()  # as in a new process (tests/helpers.py, run_main)
    printed = io.StringIO()
    with redirect_stdout(printed), torch.random.fork_rng():  # the snippet's seeds stay its own
        exec(compile(code, f"docs/stages/{stage}.md, snippet {index + 1}", "exec"), {"__name__": "__snippet__"})
    assert matches(printed.getvalue(), output), f"printed:\n{printed.getvalue()}\nthe page shows:\n{output}"


@pytest.mark.parametrize("printed, shown, same", [
    ("call 1: 0.123 s\nTrue\n", "call 1: ... s\nTrue", True),
    ("call 1: 0.123 s\nFalse\n", "call 1: ... s\nTrue", False),
    ("6\n", "6.0", False),
    ("tensor(6.)\nextra\n", "tensor(6.)", False),
])
def test_the_comparison_takes_dots_for_any_text_and_nothing_else(printed, shown, same):
    assert matches(printed, shown) is same
