"""Every stage computes what an independent PyTorch autograd reference computes, and what the
stage before it computes: logits, loss, gradients, and parameters after several steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tests.helpers import ALL_STAGES, CONSECUTIVE_STAGES
from common.harness.reference import reference_step, reference_trajectory

from common.harness import (TOLERANCES, driver, load_stage, one_step, relative_error, sample_batches, to_numpy,
                            trajectory, worst_relative_error)

HAND_WRITTEN_POOL_STAGES = [p for p in ALL_STAGES if hasattr(load_stage(p.values[0]), "max_pool2x2")]
DTYPES = ("float64", "float32")
BATCH_SIZES = (1, 4, 7)  # a single image, the tutorial's batch, and an odd one
TRAJECTORY_STEPS = 5
LR, MOMENTUM = 0.01, 0.9  # a larger lr than the tutorial's, so that 5 steps move the weights visibly


def assert_close(actual, expected, dtype: str, what: str) -> None:
    error = relative_error(actual, expected)
    assert error <= TOLERANCES[dtype].rtol, f"{what}: relative error {error:.2e} > {TOLERANCES[dtype].rtol:.0e}"


def assert_dicts_close(actual: dict, expected: dict, dtype: str, what: str) -> None:
    name, error = worst_relative_error(actual, expected)
    assert error <= TOLERANCES[dtype].rtol, f"{what} of {name}: relative error {error:.2e}"


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stage_name", ALL_STAGES)
def test_one_step_matches_pytorch_autograd(stage_name, dtype, batch_size, params):
    [(x, y)] = sample_batches(1, batch_size, seed=batch_size)
    got = one_step(load_stage(stage_name), params, x, y, dtype, LR, MOMENTUM)
    logits, loss, grads = reference_step(params, x, y, dtype)
    assert_close(got["logits"], logits, dtype, "forward: logits")
    assert_close(got["loss"], loss, dtype, "forward: loss")
    assert_dicts_close(got["grads"], grads, dtype, "backward: gradient")


@pytest.mark.parametrize("stage_name", HAND_WRITTEN_POOL_STAGES)
def test_hand_written_max_pool_sends_the_gradient_where_pytorch_does(stage_name):
    """Ties are common (flat image regions, relu's zeros); the gradient must go to the first
    maximum of each window, the one PyTorch picks, or the weights drift apart."""
    stage = load_stage(stage_name)
    x = torch.randint(0, 3, (2, 3, 8, 8)).double()  # values 0, 1, 2: most windows hold ties
    dout = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    x_ref = x.clone().requires_grad_()
    F.max_pool2d(x_ref, 2).backward(dout)
    if hasattr(stage, "max_pool2x2_backward"):  # stages 1-2: the backward is written by hand
        out, winner = stage.max_pool2x2(x.numpy() if stage_name.endswith("numpy") else x)
        dx = stage.max_pool2x2_backward(dout.numpy() if stage_name.endswith("numpy") else dout, winner)
    else:  # stage 3: autograd differentiates the hand-written forward
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
def test_momentum_trajectory_matches_torch_optim(stage_name, dtype, params):
    batches = sample_batches(TRAJECTORY_STEPS, 4, seed=1)
    got = trajectory(load_stage(stage_name), params, batches, dtype, LR, MOMENTUM)
    losses, final = reference_trajectory(params, batches, LR, MOMENTUM, dtype)
    assert_close(got["losses"], losses, dtype, "losses along the way")
    assert_dicts_close(got["params"], final, dtype, f"parameters after {TRAJECTORY_STEPS} steps")
    moved = relative_error(final["fc1.weight"], params["fc1.weight"])
    assert moved > 100 * TOLERANCES[dtype].rtol, "the steps must move the weights for this test to mean anything"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("previous,current", CONSECUTIVE_STAGES)
def test_stage_matches_the_stage_before(previous, current, dtype, params):
    batches = sample_batches(TRAJECTORY_STEPS, 7, seed=2)
    x, y = batches[0]
    before, after = (one_step(load_stage(s), params, x, y, dtype, LR, MOMENTUM) for s in (previous, current))
    assert_close(after["logits"], before["logits"], dtype, "logits")
    assert_dicts_close(after["grads"], before["grads"], dtype, "gradient")
    before, after = (trajectory(load_stage(s), params, batches, dtype, LR, MOMENTUM) for s in (previous, current))
    assert_close(after["losses"], before["losses"], dtype, "losses")
    assert_dicts_close(after["params"], before["params"], dtype, "parameters")


@pytest.mark.parametrize("stage_name", ALL_STAGES)
def test_get_params_uses_the_canonical_names_and_shapes(stage_name, params):
    d = driver(stage_name)
    got = d.get_params(d.build(params, dtype="float64"))
    assert list(got) == list(params)
    for name, value in got.items():
        np.testing.assert_array_equal(to_numpy(value), params[name])


@pytest.mark.parametrize("stage_name", ALL_STAGES)
def test_build_does_not_change_the_callers_arrays(stage_name, params):
    d = driver(stage_name)
    original = {k: v.copy() for k, v in params.items()}
    model = d.build(params, dtype="float64")
    d.train_step(model, *sample_batches(1, 4)[0], LR, MOMENTUM)
    for name in params:
        np.testing.assert_array_equal(params[name], original[name])


def test_the_harness_notices_a_tiny_error(params):
    """The comparisons above could fail: a gradient off by one part in 1e9 is caught in float64."""
    [(x, y)] = sample_batches(1, 4)
    _, _, grads = reference_step(params, x, y, "float64")
    wrong = dict(grads, **{"conv1.bias": grads["conv1.bias"] * (1 + 1e-9)})
    name, error = worst_relative_error(wrong, grads)
    assert name == "conv1.bias" and error > TOLERANCES["float64"].rtol


@pytest.mark.parametrize("stage_name", ALL_STAGES)
def test_returned_gradients_survive_the_next_step(stage_name, params):
    """train_step's gradients are the step's own: a later step must not change them in place."""
    d = driver(stage_name)
    model = d.build(params, dtype="float64")
    (x1, y1), (x2, y2) = sample_batches(2, 4, seed=8)
    _, grads = d.train_step(model, x1, y1, LR, MOMENTUM)
    kept = {k: to_numpy(v) for k, v in grads.items()}
    d.train_step(model, x2, y2, LR, MOMENTUM)
    for name, value in grads.items():
        assert np.array_equal(to_numpy(value), kept[name]), name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stage_name", ALL_STAGES)
def test_the_stages_own_loop_takes_the_steps_the_driver_takes(stage_name, dtype, params):
    """The driver composes a step from the stage's pieces; the stage's own train_one_epoch, the
    loop a learner reads, must take exactly those steps."""
    d = driver(stage_name)
    batches = sample_batches(TRAJECTORY_STEPS, 4, seed=9)
    by_driver, by_loop = d.build(params, dtype=dtype), d.build(params, dtype=dtype)
    driver_losses = [d.train_step(by_driver, x, y, LR, MOMENTUM)[0] for x, y in batches]
    loop_losses = d.train_one_epoch(by_loop, batches, LR, MOMENTUM)
    assert_close(loop_losses, driver_losses, dtype, "losses of the stage's own loop")
    assert_dicts_close(d.get_params(by_loop), d.get_params(by_driver), dtype, "parameters after its loop")


@pytest.mark.parametrize("stage_name", ALL_STAGES)
def test_the_stages_own_loop_stops_at_max_steps(stage_name, params):
    d = driver(stage_name)
    losses = d.train_one_epoch(d.build(params), sample_batches(5, 2, seed=9), LR, MOMENTUM, max_steps=3)
    assert len(losses) == 3
