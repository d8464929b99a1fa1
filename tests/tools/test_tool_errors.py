"""The tools behind make end in one line and a documented exit code, never a traceback: make
variables that only look like numbers, an --out or work/ folder that cannot be used, a learner's
file that is not UTF-8."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import BAD_INPUT
from common.tools import make as make_py
from tests.helpers import EVENT_TIMEOUT, ROOT, copy_of_the_course, make


def tool_code(result) -> int | None:
    """The exit code of the tool under make (make's own is 2 for any failing target)."""
    found = re.search(r"^make: \*\*\* \[.*\] Error (\d+)$", result.stderr, re.MULTILINE)
    return int(found[1]) if found else result.returncode


def own_lines(stderr: str) -> list[str]:
    """stderr without make's own "make: *** [Makefile:64: diff] Error 2"."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("make: ***")]


# ---------------------------------------------------------------- make variables, by int()'s rule
ANY_TEXT = st.characters(exclude_characters="\x00", exclude_categories=("Cs",))  # what an environment holds
DIGIT_LIKE = st.characters(categories=("Nd", "No", "Nl"), include_characters=" +-_.")  # "3", "٣", "²", "①", "Ⅻ"


@given(st.text(ANY_TEXT, max_size=6) | st.text(DIGIT_LIKE, min_size=1, max_size=4))
def test_a_make_variable_is_a_number_exactly_when_int_takes_it(text):
    """str.isdigit() takes "²" and "①", which int() refuses: the check must be int()'s own."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("COURSE_TEST_NUMBER", text)
        try:
            expected = int(text.strip())
        except ValueError:
            expected = None
        try:
            got = make_py.number("COURSE_TEST_NUMBER", "a number", "COURSE_TEST_NUMBER=3")
        except SystemExit as refused:
            assert refused.code == BAD_INPUT
            got = None
        assert got == expected


LOOK_LIKE_NUMBERS = {  # the make command line, the one line
    "FROM superscript": (["diff", "FROM=²", "TO=3"], "make: FROM='²' is not a stage number (try FROM=2 TO=3)"),
    "TO with a point": (["diff", "FROM=2", "TO=3.0"], "make: TO='3.0' is not a stage number (try FROM=2 TO=3)"),
    "NPROC superscript": (["ddp", "NPROC=²"], "make: NPROC='²' is not a number of processes (try NPROC=2)"),
    "STAGE circled": (["exercise", "STAGE=①"], "make: STAGE='①' is not a stage number (try STAGE=3)"),
}


@pytest.mark.parametrize("command,line", LOOK_LIKE_NUMBERS.values(), ids=LOOK_LIKE_NUMBERS.keys())
def test_a_make_variable_that_only_looks_like_a_number_is_one_line(command, line):
    result = make(ROOT, *command)
    assert tool_code(result) == BAD_INPUT and "Traceback" not in result.stderr, result.stderr[-800:]
    assert own_lines(result.stderr) == [line]


# ---------------------------------------------------------------- OS errors: a folder that cannot be used
TOOLS_WITH_OUT = {  # the tool, its arguments besides --out, what --out names under a file
    "compare": ("common.tools.compare", ["--steps", "2"], "x"),
    "gradcheck": ("common.tools.gradcheck", [], "x.png"),
    "site": ("common.tools.site", [], "x"),
    "notebooks": ("common.tools.notebooks", [], "x"),
    "batch-experiment": ("common.tools.batch_experiment", ["--batch-sizes", "4", "--epochs", "1"], "x"),
    "bench": ("benchmarks.bench", ["--quick"], "x"),
    "mistakes": ("common.tools.mistakes", [], "x"),
}


@pytest.mark.parametrize("tool", TOOLS_WITH_OUT)
def test_a_tool_given_an_out_folder_it_cannot_make_says_so_in_one_line_at_once(tool, tmp_path):
    """--out under a file (Not a directory): refused before any work is done, in one line."""
    module, argv, name = TOOLS_WITH_OUT[tool]
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    out = a_file / name
    result = subprocess.run([sys.executable, "-m", module, *argv, "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=EVENT_TIMEOUT)
    assert result.returncode == BAD_INPUT and "Traceback" not in result.stderr, result.stderr[-800:]
    [line] = [line for line in result.stderr.splitlines() if str(a_file) in line]
    assert ("Not a directory" in line or "a file, not a folder" in line)
    assert "step/s" not in result.stderr and result.stdout == "", "refused before any work, nothing printed"


def test_a_work_folder_that_is_a_file_is_one_line(tmp_path):
    course = copy_of_the_course(tmp_path)
    (course / "work").write_text("")
    result = make(course, "exercise", "STAGE=3")
    assert tool_code(result) == BAD_INPUT and "Traceback" not in result.stderr, result.stderr[-800:]
    [line] = own_lines(result.stderr)
    assert "work/stage03_autograd.py" in line


# ---------------------------------------------------------------- a learner's file that is not UTF-8
@pytest.mark.parametrize("target,code", [("solution", BAD_INPUT), ("check", 1)])
def test_a_learner_file_that_is_not_utf8_is_refused_in_one_line(target, code, tmp_path):
    course = copy_of_the_course(tmp_path)
    assert make(course, "exercise", "STAGE=3").returncode == 0
    learner = course / "work" / "stage03_autograd.py"
    learner.write_bytes(learner.read_bytes() + "# caf\xe9, saved as Latin-1\n".encode("latin-1"))
    result = make(course, target, "STAGE=3")
    assert tool_code(result) == code and "Traceback" not in result.stdout + result.stderr, result.stderr[-800:]
    assert "work/stage03_autograd.py is not UTF-8 text (byte 0xe9" in result.stdout + result.stderr


