"""The tools behind make end in one line and a documented exit code, never a traceback: make
variables that only look like numbers, and (below) OS and decoding errors."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import BAD_INPUT
from common.tools import make as make_py
from tests.helpers import ROOT, make


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
    assert result.returncode == BAD_INPUT and "Traceback" not in result.stderr, result.stderr[-800:]
    assert own_lines(result.stderr) == [line]
