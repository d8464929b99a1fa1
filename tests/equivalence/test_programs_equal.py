"""The programs themselves compute the same thing: each stage's main(), with its own loss,
optimizer and loop, trained for a few dozen steps from one seed, writes the same params.npz.

The harness drives every stage through one contract (common/harness/), building the
optimizer and the loss itself where a stage builds them in main(); these tests cover what
main() builds. The stages before the DataLoader shuffle with the same numpy generator; the
stages with a DataLoader share its order, another one, so they are compared among themselves;
stage 11's DistributedSampler orders the data otherwise again.
"""
from __future__ import annotations

import pytest

from common.harness import load_stage
from common.tools import course
from common.weights import reference_params
from tests.helpers import (STAGES, assert_close, assert_differs, has_module_net, is_distributed,
                           run_main, stage_number, tiny, uses_dataloader)

STEPS = 40  # four epochs of the tiny data folder: the epochs' reshuffles are compared too
RUN = ["--epochs", "4", "--dtype", "float64", "--seed", "5", "--lr", "0.01", "--max-steps", str(STEPS)]  # after tiny()
GROUPS = {
    "numpy order": [n for n in STAGES if not uses_dataloader(load_stage(n))],
    "DataLoader order": [n for n in STAGES if uses_dataloader(load_stage(n)) and not is_distributed(load_stage(n))],
}


def final_params(stage_name: str, out, data_dir) -> dict:
    result = run_main(stage_name, out, *RUN, preset=tiny(data_dir))
    assert result.summary["steps"] == STEPS
    return result.params


@pytest.mark.slow
@pytest.mark.parametrize("group", GROUPS, ids=lambda group: f"{group} (stages {', '.join(str(stage_number(n)) for n in GROUPS[group])})")
def test_every_program_in_a_group_writes_the_same_params(group, tmp_path, tiny_data):
    first, *others = GROUPS[group]
    expected = final_params(first, tmp_path, tiny_data)
    assert_differs(expected, reference_params(5), "float64", "training must move the weights for this to mean "
                   "anything", times=1e3)
    for stage_name in others:
        assert_close(final_params(stage_name, tmp_path, tiny_data), expected, "float64", f"{stage_name} against {first}")


BEFORE_NN_MODULE = [n for n in STAGES if not has_module_net(load_stage(n))]


@pytest.mark.slow  # a process of its own, or compiling: seconds
def test_the_course_runner_gives_every_stage_before_nn_module_the_same_float32_losses(tmp_path, tiny_data):
    """With one seed, the numpy stage and the torch stages after it see the same weights and batches,
    so in float32 too, run one after the other by the course runner, they end at the same loss."""
    numbers = [str(stage_number(n)) for n in BEFORE_NN_MODULE]
    stage_argv = tiny(tiny_data) + ["--epochs", "2", "--max-steps", "20"]
    summaries = course.main(["--stages", *numbers, "--out", str(tmp_path)] + stage_argv)
    assert [s["stage"] for s in summaries] == [n.split(".")[1] for n in BEFORE_NN_MODULE]
    losses = [s["final_loss"] for s in summaries]
    assert_close(losses, [losses[0]] * len(losses), "float32", f"final losses of stages {', '.join(numbers)}")
    assert (tmp_path / f"course-summary-stages-{'-'.join(numbers)}-smoke.json").exists()
