"""What a stage imports stays short enough for a learner to open and read: the recorder in one
module of at most 400 lines, and the whole runtime (common/*.py) at most 1,200, and nothing of it
runs when the course is imported."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT

RECORDER_LINES, RUNTIME_LINES = 400, 1_200


def lines(path) -> int:
    return len(path.read_text().splitlines())


def test_the_recorder_is_one_module_of_at_most_400_lines():
    assert not (ROOT / "common" / "run").exists(), "one module, not a package"
    assert lines(ROOT / "common" / "run.py") <= RECORDER_LINES


def test_everything_a_stage_imports_is_at_most_1200_lines():
    assert sum(lines(path) for path in (ROOT / "common").glob("*.py")) <= RUNTIME_LINES


@pytest.mark.slow  # a process of its own, or compiling: seconds
def test_importing_every_stage_changes_no_signal_handler():
    code = ("import signal; before = {s: signal.getsignal(s) for s in signal.Signals}\n"
            "import importlib, pathlib\n"
            "for p in sorted(pathlib.Path('stages').glob('stage*.py')): importlib.import_module('stages.' + p.stem)\n"
            "print([s.name for s in signal.Signals if signal.getsignal(s) != before[s]])")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip() == "[]"
