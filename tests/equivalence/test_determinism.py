"""The same seed gives the same run, bit for bit, on the CPU: every stage, run twice."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from common.harness import load_stage
from tests.helpers import ALL_STAGES, run_main, smoke_argv, stages_where, takes_option, tiny

# The runs fix the thread count (tests.helpers.tiny): the order in which a sum is split over
# threads changes its last bits, and --threads auto may choose differently from one run to the next.


@pytest.mark.parametrize("stage_name", ALL_STAGES)
def test_same_seed_same_losses_and_parameters_bit_for_bit(stage_name, smoke_run, tmp_path):
    first = smoke_run(stage_name)  # the run other tests read too; this one repeats it
    second = smoke_run(stage_name, tmp_path)
    assert len(first.text("losses.csv").splitlines()) == 21  # a header and 20 steps, each loss in full precision
    assert first.text("losses.csv") == second.text("losses.csv")
    first_params, second_params = first.params, second.params
    assert list(first_params) == list(second_params)
    for name in first_params:
        assert np.array_equal(first_params[name], second_params[name]), name


@pytest.mark.slow  # three compiled runs: of the test harness, so not in make test-quick
@pytest.mark.parametrize("stage_name", stages_where(takes_option("--compile")))
def test_a_compiled_stage_repeats_after_a_run_with_another_batch_size(stage_name, tiny_data, tmp_path):
    """A run at batch 8 in between makes the compiled graph's batch dimension dynamic; the next
    run must still compile its own static graph, as a new process does (tests.helpers.run_main)."""
    if not load_stage(stage_name).can_compile(torch.device("cpu")):
        pytest.skip("no C++ compiler here: the stage runs eager, and this test would prove nothing")
    first = run_main(stage_name, tmp_path / "first", *smoke_argv(stage_name), preset=tiny(tiny_data))
    run_main(stage_name, tmp_path / "between", *smoke_argv(stage_name), "--max-steps", "2",
             preset=[*tiny(tiny_data), "--batch-size", "8"])
    again = run_main(stage_name, tmp_path / "again", *smoke_argv(stage_name), preset=tiny(tiny_data))
    assert first.text("losses.csv") == again.text("losses.csv")


@pytest.mark.parametrize("stage_name", [ALL_STAGES[0], ALL_STAGES[-1]])
def test_another_seed_gives_another_run(stage_name, smoke_run, tiny_data, tmp_path):
    other = run_main(stage_name, tmp_path, *smoke_argv(stage_name), "--seed", "5", preset=tiny(tiny_data))
    assert other.text("losses.csv") != smoke_run(stage_name).text("losses.csv")
