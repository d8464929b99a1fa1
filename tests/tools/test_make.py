"""The make targets themselves: `make diff` shows the lesson, no target runs the learner's text as a
command, and `make test-quick` picks its tests by folder and marker."""
from __future__ import annotations

import pytest

from common.tools import make as make_py
from tests.helpers import ROOT, copy_of_the_course, make


def test_make_diff_shows_the_lesson():
    result = make(ROOT, "diff", "FROM=2", "TO=3")
    assert result.returncode == 0, result.stderr
    assert "+        loss.backward()" in result.stdout
    assert "-def conv2d_backward(dout, cols, weight):" in result.stdout
    assert "--- a/stages/stage02_tensors.py" in result.stdout


@pytest.mark.parametrize("arguments", [
    ["diff", "FROM=2; touch {marker}", "TO=3"],
    ["diff", "FROM=2", "TO=$(touch {marker})"],
    ["diff", "FROM=2", "TO=3", "ARGS=--full; touch {marker}"],
    ["diff", "FROM=2", "TO=3", "ARGS=--full `touch {marker}`"],
], ids=["FROM with ;", "TO with $()", "ARGS with ;", "ARGS with backquotes"])
def test_make_targets_never_run_user_text_as_a_command(arguments, tmp_path):
    marker = tmp_path / "ran"
    result = make(ROOT, *(a.format(marker=marker) for a in arguments))
    assert not marker.exists(), "the learner's text was run as a shell command"
    assert result.returncode != 0 and "Traceback" not in result.stderr


def test_make_test_quick_names_folders_that_hold_tests():
    folders = [ROOT / arg for arg in make_py.QUICK if arg.startswith("tests/")]
    assert folders and all(folder.is_dir() and list(folder.glob("test_*.py")) for folder in folders)


def test_a_make_the_tests_start_sees_none_of_the_outer_makes_variables(tmp_path, monkeypatch):
    """`make test ARGS='-x'` hands ARGS down (in the environment and in MAKEFLAGS) to every make
    under it: the tests' own `make exercise` must not get `-x` as the exercise's arguments."""
    monkeypatch.setenv("ARGS", "--no-such-option")
    monkeypatch.setenv("MAKEFLAGS", " -- ARGS=--no-such-option")
    course = copy_of_the_course(tmp_path)
    done = make(course, "exercise", "STAGE=3")
    assert done.returncode == 0, done.stderr
