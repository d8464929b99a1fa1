"""A run of two processes with dropout, stopped after an epoch and resumed, ends as the run that
never stopped, bit for bit: each process seeds with --seed + rank, and the checkpoint keeps each
process's own random-number state (common/run/resume.py)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import EVENT_TIMEOUT, ROOT, stages_where, tiny

PROCESS_STAGES = stages_where(lambda stage: hasattr(stage, "process_group"))


def torchrun(stage_name: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "common.tools.torchrun", "--nproc-per-node", "2", "-m", stage_name,
                           *argv], cwd=ROOT, capture_output=True, text=True, timeout=EVENT_TIMEOUT)


def final_params(out) -> dict:
    [record] = out.glob("*/*/params.npz")
    with np.load(record) as saved:
        return dict(saved)


@pytest.mark.slow
@pytest.mark.parametrize("stage_name", PROCESS_STAGES[:1])
def test_a_resumed_run_of_two_processes_with_dropout_ends_as_the_uninterrupted_one(stage_name, tiny_data, tmp_path):
    common = [*tiny(tiny_data), "--dropout", "0.3", "--device", "cpu"]
    whole = torchrun(stage_name, *common, "--epochs", "2", "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-500:]
    checkpoint = tmp_path / "ckpt.npz"
    first = torchrun(stage_name, *common, "--epochs", "1", "--checkpoint", str(checkpoint), "--out",
                     str(tmp_path / "first"))
    assert first.returncode == 0, first.stderr[-500:]
    resumed = torchrun(stage_name, *common, "--epochs", "2", "--resume", str(checkpoint), "--out",
                       str(tmp_path / "resumed"))
    assert resumed.returncode == 0, resumed.stderr[-500:]
    expected, got = final_params(tmp_path / "whole"), final_params(tmp_path / "resumed")
    assert all(np.array_equal(got[k], expected[k]) for k in expected)
