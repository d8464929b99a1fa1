"""A stage run as a file, `python stages/stage06_optim.py` (an editor's Run button), from the course
folder or from anywhere else: it runs as `python -m stages.stage06_optim` does, because `make
setup` installs the course into its environment (pip's editable install of pyproject.toml)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from common.harness import stage_file
from tests.helpers import EVENT_TIMEOUT, ROOT, SMOKE


@pytest.mark.parametrize("stage, where", [(1, "course"), (6, "elsewhere")],
                         ids=["the numpy stage from the course folder", "a torch stage from another folder"])
def test_a_stage_run_as_a_file_runs(stage, where, tmp_path):
    path = stage_file(stage)
    result = subprocess.run([sys.executable, str(path.relative_to(ROOT) if where == "course" else path), *SMOKE,
                             "--out", str(tmp_path / "runs")], cwd=ROOT if where == "course" else tmp_path,
                            capture_output=True, text=True, timeout=EVENT_TIMEOUT)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-800:]
    [summary] = (tmp_path / "runs").glob(f"{path.stem}/*/summary.json")
    assert json.loads(summary.read_text())["complete"] is True
    assert f"{path.stem}: final training loss" in result.stdout
