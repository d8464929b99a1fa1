"""Every stage computes what an independent PyTorch autograd reference (common/harness/reference.py)
computes: logits, loss and gradients of one step, and the parameters after several momentum steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.harness import driver, load_stage, sample_batches, to_numpy, worst_relative_error
from common.harness.reference import reference_step, reference_trajectory
from tests.helpers import (ALL_STAGES, BATCH_SIZES, LR, MOMENTUM, TRAJECTORY_STEPS, Computations, assert_close,
                           assert_differs, has_hand_written_gradients, has_hand_written_pool, loads_torch, stages_where)

DTYPES = ("float64", "float32")


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stage_name", ALL_STAGES)
def test_one_step_matches_pytorch_autograd(stage_name, dtype, batch_size, params, computed):
    got = computed.one_step(stage_name, dtype, batch_size)
    logits, loss, grads = reference_step(params, *Computations.step_batch(batch_size), dtype)
    assert_close(got["logits"], logits, dtype, "forward: logits")
    assert_close(got["loss"], loss, dtype, "forward: loss")
    assert_close(got["grads"], grads, dtype, "backward: gradient")


@pytest.mark.parametrize("stage_name", stages_where(has_hand_written_pool))
def test_hand_written_max_pool_sends_the_gradient_where_pytorch_does(stage_name):
    """Ties are common (flat image regions, relu's zeros); the gradient must go to the first
    maximum of each window, the one PyTorch picks, or the weights drift apart."""
    stage = load_stage(stage_name)
    x = torch.randint(0, 3, (2, 3, 8, 8)).double()  # values 0, 1, 2: most windows hold ties
    dout = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    x_ref = x.clone().requires_grad_()
    F.max_pool2d(x_ref, 2).backward(dout)
    if has_hand_written_gradients(stage):  # the backward is written by hand too
        own = (lambda t: t) if loads_torch(stage) else (lambda t: t.numpy())
        out, winner = stage.max_pool2x2(own(x))
        dx = stage.max_pool2x2_backward(own(dout), winner)
    else:  # autograd differentiates the hand-written forward
        x_own = x.clone().requires_grad_()
        out = stage.max_pool2x2(x_own)
        out.backward(dout)
        dx = x_own.grad
    np.testing.assert_array_equal(to_numpy(out), F.max_pool2d(x, 2).numpy())
    np.testing.assert_array_equal(to_numpy(dx), x_ref.grad.numpy())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stage_name", ALL_STAGES)
def test_computes_in_the_requested_dtype(stage_name, dtype, params):
    d = driver(stage_name)
    [(x, _)] = sample_batches(1, 2)
    logits = d.forward(d.build(params, dtype=dtype), x)
    assert str(logits.dtype).endswith(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stage_name", ALL_STAGES)
def test_momentum_trajectory_matches_torch_optim(stage_name, dtype, params, computed):
    got = computed.trajectory(stage_name, dtype)
    losses, final = reference_trajectory(params, Computations.trajectory_batches(), LR, MOMENTUM, dtype)
    assert_close(got["losses"], losses, dtype, "losses along the way")
    assert_close(got["params"], final, dtype, f"parameters after {TRAJECTORY_STEPS} steps")
    assert_differs(final["fc1.weight"], params["fc1.weight"], dtype, "the steps must move the weights for this "
                   "test to mean anything", times=100)


def test_the_harness_notices_a_tiny_error(params):
    """The comparisons above could fail: a gradient off by one part in 1e9 is caught in float64."""
    [(x, y)] = sample_batches(1, 4)
    _, _, grads = reference_step(params, x, y, "float64")
    wrong = dict(grads, **{"conv1.bias": grads["conv1.bias"] * (1 + 1e-9)})
    assert worst_relative_error(wrong, grads)[0] == "conv1.bias"
    with pytest.raises(AssertionError, match=r"gradient \(worst: conv1.bias\): relative error \S+ > 1e-10"):
        assert_close(wrong, grads, "float64", "gradient")
