"""Stage 1's claims (numpy by hand), each shown by running it; and what every stage prints from it on.

A claim that later stages keep making is tested here over every stage that has what it needs.
"""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from common.harness import load_stage
from tests.helpers import ALL_STAGES, EVENT_TIMEOUT, ROOT, SMOKE, has_hand_written_pool, loads_torch, stages_where

NAN = float("nan")


@pytest.mark.parametrize("stage_name", stages_where(has_hand_written_pool))
def test_hand_written_max_pool_differs_from_f_max_pool2d_on_nan(stage_name):
    stage = load_stage(stage_name)

    def own(window):
        x = torch.tensor(window, dtype=torch.float64).reshape(1, 1, 2, 2)
        out = stage.max_pool2x2(x if loads_torch(stage) else x.numpy())
        return float((out[0] if isinstance(out, tuple) else out).reshape(-1)[0])

    def library(window):
        return float(F.max_pool2d(torch.tensor(window, dtype=torch.float64).reshape(1, 1, 2, 2), 2))

    assert math.isnan(library([1.0, NAN, 0.0, 0.0])), "F.max_pool2d: a NaN anywhere in the window wins"
    assert own([1.0, NAN, 0.0, 0.0]) == 1.0, "by hand: a NaN after the first input is skipped (NaN > x is False)"
    assert math.isnan(own([NAN, 1.0, 0.0, 0.0])) and math.isnan(library([NAN, 1.0, 0.0, 0.0]))


@pytest.mark.parametrize("stage_name", ALL_STAGES)
def test_every_stage_prints_the_loss_before_any_update_and_the_first_gradient(stage_name, smoke_run):
    out = smoke_run(stage_name).out
    assert "loss before any update" in out and "ln 10" in out
    assert "conv1.bias" in out and "after step 1" in out


@pytest.mark.parametrize("stage_name", stages_where(lambda stage: not loads_torch(stage)))
def test_the_numpy_stage_runs_without_loading_torch(stage_name, tmp_path):
    """In a process of its own: this test process has torch loaded already."""
    argv = SMOKE + ["--max-steps", "5", "--out", str(tmp_path)]
    code = (f"import importlib, sys; importlib.import_module({stage_name!r}).main({argv!r}); "
            "print('torch loaded:', 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=EVENT_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert "torch loaded: False" in result.stdout
