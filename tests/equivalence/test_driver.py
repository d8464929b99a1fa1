"""The harness drives each stage faithfully: the driver (common/harness/driver.py) composes a
step from the stage's own pieces, the stage's own train_one_epoch takes exactly those steps, and
nothing the driver returns or is given is changed behind the test's back."""
from __future__ import annotations

import numpy as np
import pytest

from common.harness import driver, sample_batches, to_numpy
from tests.helpers import ALL_STAGES, LR, MOMENTUM, Computations, assert_close

DTYPES = ("float64", "float32")


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
def test_the_stages_own_loop_takes_the_steps_the_driver_takes(stage_name, dtype, params, computed):
    """The driver composes a step from the stage's pieces (the trajectory the reference tests
    compare, computed once); the stage's own train_one_epoch, the loop a learner reads, must take
    exactly those steps."""
    d = driver(stage_name)
    by_driver = computed.trajectory(stage_name, dtype)
    by_loop = d.build(params, dtype=dtype)
    loop_losses = d.train_one_epoch(by_loop, Computations.trajectory_batches(), LR, MOMENTUM)
    assert_close(loop_losses, by_driver["losses"], dtype, "losses of the stage's own loop")
    assert_close({k: to_numpy(v) for k, v in d.get_params(by_loop).items()}, by_driver["params"], dtype,
                 "parameters after its loop")


@pytest.mark.parametrize("stage_name", ALL_STAGES)
def test_the_stages_own_loop_stops_at_max_steps(stage_name, params):
    d = driver(stage_name)
    losses = d.train_one_epoch(d.build(params), sample_batches(5, 2, seed=9), LR, MOMENTUM, max_steps=3)
    assert len(losses) == 3
