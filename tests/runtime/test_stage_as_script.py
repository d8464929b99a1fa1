"""A stage run as a file, `python stages/stage06_optim.py` (an editor's Run button), from the course
folder or from anywhere else: it runs as `python -m stages.stage06_optim` does (stages/common.py)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from common.errors import INTERRUPTED
from common.harness import stage_file
from tests.helpers import EVENT_TIMEOUT, ROOT, SMOKE, Background, held_at


@pytest.mark.parametrize("stage", [1, 6], ids=["the numpy stage", "a torch stage"])
@pytest.mark.parametrize("where", ["course", "elsewhere"], ids=["from the course folder", "from another folder"])
def test_a_stage_run_as_a_file_runs(stage, where, tmp_path):
    path = stage_file(stage)
    result = subprocess.run([sys.executable, str(path.relative_to(ROOT) if where == "course" else path), *SMOKE,
                             "--out", str(tmp_path / "runs")], cwd=ROOT if where == "course" else tmp_path,
                            capture_output=True, text=True, timeout=EVENT_TIMEOUT)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-800:]
    [summary] = (tmp_path / "runs").glob(f"{path.stem}/*/summary.json")
    assert json.loads(summary.read_text())["complete"] is True
    assert f"{path.stem}: final training loss" in result.stdout


def test_a_stage_run_as_a_file_is_inside_the_signal_window(tmp_path):
    """Ctrl-C while it reads its data: the one line of `python -m`, not a traceback."""
    runs = tmp_path / "runs"
    run = Background([str(stage_file(6)), *SMOKE, "--out", str(runs)], tmp_path,
                     env=held_at("common.data:load_data", tmp_path))
    run.wait_for(lambda: (tmp_path / "held").exists(), "the stage to load its data")
    run.process.send_signal(signal.SIGINT)
    run.wait_for(lambda: (tmp_path / "noted-1").exists(), "the signal to be noted")
    (tmp_path / "release").touch()
    result = run.finish()
    assert result.returncode == INTERRUPTED and "Traceback" not in result.stderr, result.stderr[-800:]
    assert "stage06_optim: interrupted by SIGINT" in result.stderr
