"""The same seed gives the same run, bit for bit, on the CPU: every stage, run twice."""
from __future__ import annotations

import numpy as np
import pytest
from tests.helpers import ALL_STAGES

from common.harness import load_stage

# A fixed thread count: the order in which a sum is split over threads changes its last bits, and
# --threads auto may choose differently from one run to the next.
RUN = ["--data", "synthetic", "--epochs", "2", "--max-steps", "30", "--batch-size", "8", "--threads", "1", "--seed", "11"]


def record(stage_name: str, out) -> tuple[str, dict]:
    summary = load_stage(stage_name).main(RUN + ["--out", str(out)])
    with open(f"{summary['record']}/losses.csv") as f:
        losses = f.read()
    return losses, dict(np.load(f"{summary['record']}/params.npz"))


@pytest.mark.parametrize("stage_name", ALL_STAGES)
def test_same_seed_same_losses_and_parameters_bit_for_bit(stage_name, tmp_path):
    first_losses, first_params = record(stage_name, tmp_path / "first")
    second_losses, second_params = record(stage_name, tmp_path / "second")
    assert len(first_losses.splitlines()) == 31  # a header and 30 steps, each loss in full precision
    assert first_losses == second_losses
    assert list(first_params) == list(second_params)
    for name in first_params:
        assert np.array_equal(first_params[name], second_params[name]), name


@pytest.mark.parametrize("stage_name", [ALL_STAGES[0], ALL_STAGES[-1]])
def test_another_seed_gives_another_run(stage_name, tmp_path):
    losses, _ = record(stage_name, tmp_path / "a")
    summary = load_stage(stage_name).main(RUN[:-1] + ["12", "--out", str(tmp_path / "b")])
    with open(f"{summary['record']}/losses.csv") as f:
        assert f.read() != losses
