"""The programs themselves compute the same thing: each stage's main(), with its own loss,
optimizer and loop, trained for a few dozen steps from one seed, writes the same params.npz.

The harness drives every stage through one contract (common/harness/), building the
optimizer and the loss itself where a stage builds them in main(); these tests cover what
main() builds. Stages 1-6 shuffle with the same numpy generator; stages 7-10 share a
DataLoader, whose order is another one, so they are compared among themselves.
"""
from __future__ import annotations

import numpy as np
import pytest
from tests.helpers import STAGES, stage_number

from common.harness import TOLERANCES, load_stage, worst_relative_error
from common.weights import reference_params

STEPS = 40
RUN = ["--data", "synthetic", "--dtype", "float64", "--seed", "5", "--batch-size", "8", "--lr", "0.01",
       "--epochs", "1", "--max-steps", str(STEPS)]
GROUPS = {
    "numpy order (stages 1-6)": [n for n in STAGES if stage_number(n) <= 6],
    "DataLoader order (stages 7-10)": [n for n in STAGES if 7 <= stage_number(n) <= 10],
}


def final_params(stage_name: str, out) -> dict:
    summary = load_stage(stage_name).main(RUN + ["--out", str(out)])
    assert summary["steps"] == STEPS
    with np.load(f"{summary['record']}/params.npz") as saved:
        return dict(saved)


@pytest.mark.slow
@pytest.mark.parametrize("group", GROUPS)
def test_every_program_in_a_group_writes_the_same_params(group, tmp_path):
    first, *others = GROUPS[group]
    expected = final_params(first, tmp_path)
    _, moved = worst_relative_error(expected, reference_params(5))
    assert moved > 1e3 * TOLERANCES["float64"].rtol, "training must move the weights for this to mean anything"
    for stage_name in others:
        name, error = worst_relative_error(final_params(stage_name, tmp_path), expected)
        assert error <= TOLERANCES["float64"].rtol, f"{stage_name}: {name} differs from {first} by {error:.2e}"
