"""Stage 1's claims (numpy by hand), each shown by running it; and what every stage prints from it on.

A claim that later stages keep making is tested here over every stage that has what it needs:
the first step's printout and the end of a run too short to learn. The gradient check (make gradcheck) checks stage 1's
hand-written gradients, so its claims are here too.
"""
from __future__ import annotations

import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.data import CHANCE
from common.harness import TOLERANCES, load_stage
from common.tools import gradcheck
from common.weights import reference_params
from tests.helpers import (ALL_STAGES, EVENT_TIMEOUT, ROOT, SMOKE, a_batch, has_hand_written_pool, loads_torch,
                           stages_where)

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
    [line] = [line for line in out.splitlines() if line.startswith("step 1: loss ")]
    assert "near ln 10 = 2.3026" in line
    loss = float(re.match(r"step 1: loss ([0-9.]+),", line)[1])
    assert abs(loss - math.log(10)) < 0.2, "small random weights: ten nearly equal logits"
    assert len(line.split("conv1.bias gradient: ")[1].split()) == 6, "conv1's six biases"


@pytest.mark.stage1
def test_a_run_too_short_to_learn_says_how_far_from_chance_it_is(smoke_run):
    """Said below twice chance (20%), so the line gives the accuracy and that bound, not 'near chance'."""
    run = smoke_run("stages.stage01_numpy")
    assert run.summary["test_accuracy"] < 2 * CHANCE, "20 steps at lr 0.001 learn nothing yet"
    [line] = [line for line in run.out.splitlines() if "too few to learn" in line]
    assert f"the test accuracy, {100 * run.summary['test_accuracy']:.2f}%, is below twice chance (20%)" in line


@pytest.mark.stage1
def test_conv1s_weight_gradient_sums_over_batch_times_28_times_28_positions():
    """What the float32 tolerance's reason says: thousands of terms, not hundreds."""
    stage = load_stage(1)
    x, _ = a_batch(4, seed=0)
    params = reference_params(0)
    _, cols = stage.conv2d(x.numpy(), params["conv1.weight"], params["conv1.bias"])
    assert cols.shape == (3 * 5 * 5, 4 * 28 * 28), "dweight = dout_rows @ cols.T sums over the 3,136 columns"
    assert "batch x 28 x 28" in TOLERANCES["float32"].reason


# ---------------------------------------------------------------- the gradient check of stage 1's gradients
@pytest.mark.stage1
def test_one_random_projection_per_tensor_can_miss_a_wrong_element(monkeypatch):
    """gradcheck along one random direction u per tensor checks <g, u>, one number: zeroing the
    gradient's 1000th largest element of fc1.weight (48,000 numbers) still passes, where a finite
    difference along that element's own coordinate finds it."""
    point = gradcheck.reference_point("float64")
    true = gradcheck.analytic_gradients(point)["fc1.weight"]
    index = np.unravel_index(np.argsort(-np.abs(true), axis=None)[1000], true.shape)
    assert abs(true[index]) > 0.2 * np.abs(true).max(), "a large element, a fifth of the largest or more"
    stage1, backward = load_stage(1), load_stage(1).backward

    def wrong_backward(params, cache, dlogits):
        grads = backward(params, cache, dlogits)
        grads["fc1.weight"] = grads["fc1.weight"].copy()
        grads["fc1.weight"][index] = 0.0
        return grads

    monkeypatch.setattr(stage1, "backward", wrong_backward)
    assert gradcheck.gradcheck_directions("float64").passed, "one projection per tensor: the wrong element passes"
    difference = gradcheck.finite_differences(point, "fc1.weight", index, 6e-6)["central"][0]
    assert abs(difference - true[index]) < 1e-6 * abs(true[index]), "along its own coordinate it is found"


@pytest.mark.slow  # a process of its own: seconds
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


@pytest.mark.stage1
def test_along_one_coordinate_the_logits_are_affine_between_kinks_and_the_loss_is_curved():
    """Why a finite difference has a truncation error even where no kink is crossed: moved along
    conv1's largest-gradient weight by -h, 0, +h (one linear piece, float64), the logits' second
    difference is round-off, the loss's is not."""
    stage1, point = load_stage(1), gradcheck.reference_point("float64")
    gradient = gradcheck.analytic_gradients(point)["conv1.weight"]
    [index] = gradcheck.largest_gradient_indices(gradient, 1)
    h, eps = 2.5e-5, np.finfo(np.float64).eps  # below the nearest kink, 2.9e-5 away

    def at(step):
        params = dict(point.params, **{"conv1.weight": point.params["conv1.weight"].copy()})
        params["conv1.weight"][index] += step
        logits, cache = stage1.forward_with_cache(params, point.x)
        return logits, float(stage1.cross_entropy(logits, point.y)[0]), gradcheck.linear_piece(cache)

    (below, loss_below, piece_below), (here, loss, piece), (above, loss_above, piece_above) = at(-h), at(0), at(h)
    assert piece_below == piece == piece_above, "one linear piece: no kink between the three points"
    assert np.abs(above - 2 * here + below).max() <= 8 * eps * np.abs(here).max(), "the logits: affine"
    rounding = eps * max(abs(loss), np.abs(here).sum())  # the loss's round-off, at most this order
    assert abs(loss_above - 2 * loss + loss_below) > 20 * rounding, "the loss: curved"
