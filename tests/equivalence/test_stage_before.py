"""Each stage computes what the stage before it computes, on the same inputs, step by step: the
lesson between two stages changes how the network is written, never what it computes."""
from __future__ import annotations

import pytest

from common.harness import load_stage, sample_batches, trajectory
from tests.helpers import CONSECUTIVE_STAGES, LR, MOMENTUM, STAGES, TRAJECTORY_BATCH, assert_close, has_optimizer

DTYPES = ("float64", "float32")
LONG_TRAJECTORY_STEPS = 20


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("previous,current", CONSECUTIVE_STAGES)
def test_stage_matches_the_stage_before(previous, current, dtype, computed):
    """On the inputs of the reference tests (tests/equivalence/test_reference.py), computed once:
    one step on an odd batch, then the momentum trajectory."""
    before, after = (computed.one_step(s, dtype, TRAJECTORY_BATCH) for s in (previous, current))
    assert_close(after["logits"], before["logits"], dtype, "logits")
    assert_close(after["grads"], before["grads"], dtype, "gradient")
    before, after = (computed.trajectory(s, dtype) for s in (previous, current))
    assert_close(after["losses"], before["losses"], dtype, "losses")
    assert_close(after["params"], before["params"], dtype, "parameters")


FIRST, FIRST_WITH_OPTIMIZER = STAGES[0], next(name for name in STAGES if has_optimizer(load_stage(name)))


@pytest.mark.parametrize("stage_name", [FIRST_WITH_OPTIMIZER])  # a parameter, for its stage marker
def test_idiomatic_pytorch_equals_the_hand_written_numpy_course(stage_name, params):
    """The first stage with nn.Module and optim.SGD and stage 1 (numpy by hand): one computation,
    over 20 momentum steps in float64, where a small difference would have time to grow."""
    batches = sample_batches(LONG_TRAJECTORY_STEPS, 4, seed=3)
    numpy_run, torch_run = (trajectory(load_stage(n), params, batches, "float64", LR, MOMENTUM)
                            for n in (FIRST, stage_name))
    assert_close(torch_run["losses"], numpy_run["losses"], "float64", f"losses over {LONG_TRAJECTORY_STEPS} steps")
    assert_close(torch_run["params"], numpy_run["params"], "float64", f"parameters after {LONG_TRAJECTORY_STEPS} steps")
