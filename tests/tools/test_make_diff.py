"""`make diff FROM=a TO=b`: the later stage's docstring once, then the diff of the code below the two
docstrings, numbered as in the files; `ARGS=--full` the plain diff of the files."""
from __future__ import annotations

import re

import pytest

from common.harness import stage_file
from common.tools.stage_diff import docstring_and_end
from tests.helpers import ROOT, make

PAIRS = [(1, 2), (5, 6), (10, 11)]


def docstring_lines(number: int) -> list[str]:
    source = stage_file(number).read_text()
    return source.splitlines()[:docstring_and_end(source)[1]]


def diff_part(printed: str) -> list[str]:
    """The lines from the diff's first `---` header on."""
    lines = printed.splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith("--- a/")):]


@pytest.fixture(scope="module")
def printed() -> dict:
    """What `make diff` prints for a few pairs, both ways."""
    out = {}
    for old, new in PAIRS:
        for args in ([], ["ARGS=--full"]):
            done = make(ROOT, "diff", f"FROM={old}", f"TO={new}", *args)
            assert done.returncode == 0, done.stderr
            out[old, new, bool(args)] = done.stdout
    return out


@pytest.mark.parametrize("old, new", PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_the_later_docstring_is_printed_once_before_the_diff(printed, old, new):
    text = printed[old, new, False]
    before_diff = text.split("\n--- a/")[0]
    docstring = "\n".join(line for line in docstring_lines(new) if line.strip() and '"""' not in line)
    assert docstring.splitlines()[0] in before_diff
    for line in docstring.splitlines():
        assert text.count(line) >= 1
        assert not any(diff_line[1:] == line for diff_line in diff_part(text)), f"a docstring line in the diff: {line}"


@pytest.mark.parametrize("old, new", PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_the_diff_holds_no_line_of_either_docstring(printed, old, new):
    changed = {line[1:] for line in diff_part(printed[old, new, False])
               if line[:1] in "+- " and not line.startswith(("+++", "---"))}
    stale = [line for line in docstring_lines(old) + docstring_lines(new) if line.strip() and line in changed]
    assert stale == [], f"docstring lines in the diff: {stale[:3]}"


@pytest.mark.parametrize("old, new", PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_the_hunks_are_numbered_as_in_the_files(printed, old, new):
    files = {"-": stage_file(old).read_text().splitlines(), "+": stage_file(new).read_text().splitlines()}
    hunks = 0
    for line in diff_part(printed[old, new, False]):
        header = re.match(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@", line)
        if header:
            hunks += 1
            at = {"-": int(header[1]), "+": int(header[2])}
            continue
        if line.startswith(("---", "+++")) or not hunks:
            continue
        for side in ("-", "+"):
            if line[:1] in (side, " "):
                assert files[side][at[side] - 1] == line[1:], f"line {at[side]} of the {side} file"
                at[side] += 1
    assert hunks >= 2


def test_the_full_diff_is_the_plain_diff_of_the_files_docstrings_included(printed):
    full = printed[5, 6, True]
    assert full.startswith("--- a/stages/stage05_module.py\n+++ b/stages/stage06_optim.py\n")
    removed = {line[1:] for line in full.splitlines() if line.startswith("-") and not line.startswith("---")}
    assert docstring_lines(5)[0] in removed, "the old docstring's first line is diffed away"
    assert len(full.splitlines()) > len(diff_part(printed[5, 6, False]))


def test_any_other_args_get_one_line_and_exit_code_2():
    done = make(ROOT, "diff", "FROM=5", "TO=6", "ARGS=--fulll")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    [message] = [line for line in done.stderr.splitlines() if line.startswith("make: ARGS=")]
    assert "--full" in message
