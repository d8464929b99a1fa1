"""What the nn.Module and optim stages promise beyond equal numbers."""
from __future__ import annotations

import pytest
import torch
from tests.helpers import STAGES, stage_number, stage_param
from torch import nn

from common.harness import driver, load_stage, sample_batches, trajectory, worst_relative_error

MODULE_STAGES = [stage_param(n) for n in STAGES if stage_number(n) >= 5]
OPTIM_STAGES = [stage_param(n) for n in STAGES if stage_number(n) >= 6]
LONG_TRAJECTORY_STEPS = 20
LONG_TRAJECTORY_RTOL = 1e-9  # float64 over 20 steps: round-off compounds a little per step


@pytest.mark.parametrize("stage_name", MODULE_STAGES)
def test_parameters_are_weight_then_bias_of_each_layer(stage_name, params):
    model = load_stage(stage_name).Net()
    assert isinstance(model, nn.Module)
    parameters = list(model.parameters())
    assert len(parameters) == 10
    layers = [model.conv1, model.conv2, model.fc1, model.fc2, model.fc3]
    expected = [t for layer in layers for t in (layer.weight, layer.bias)]
    assert all(p is q for p, q in zip(parameters, expected))
    assert [name for name, _ in model.named_parameters()] == list(params)


@pytest.mark.parametrize("stage_name", OPTIM_STAGES)
def test_the_gradient_lives_on_its_parameter(stage_name, params):
    d = driver(stage_name)
    model = d.build(params, dtype="float64")
    _, grads = d.train_step(model, *sample_batches(1, 4)[0], 0.01, 0.9)
    # zero_grad() runs before the backward, so after a step .grad still holds its gradient
    assert torch.equal(model.module.conv1.bias.grad.cpu(), torch.as_tensor(grads["conv1.bias"]).cpu())


@pytest.mark.stage5
def test_model_zero_grad_sets_every_gradient_to_none(params):
    model = load_stage(5).Net()
    loss = torch.nn.functional.cross_entropy(model(torch.zeros(2, 3, 32, 32)), torch.tensor([0, 1]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters()), "set_to_none=True is the default since 2.0"


@pytest.mark.stage6
def test_idiomatic_pytorch_equals_the_hand_written_numpy_course(params):
    """Stage 6 (nn.Module + optim.SGD) and stage 1 (numpy by hand): one computation, 20 steps."""
    batches = sample_batches(LONG_TRAJECTORY_STEPS, 4, seed=3)
    numpy_run, torch_run = (trajectory(load_stage(n), params, batches, "float64", 0.01, 0.9) for n in (1, 6))
    assert abs(numpy_run["losses"] - torch_run["losses"]).max() <= LONG_TRAJECTORY_RTOL * numpy_run["losses"].max()
    name, error = worst_relative_error(torch_run["params"], numpy_run["params"])
    assert error <= LONG_TRAJECTORY_RTOL, f"{name} differs by {error:.2e}"
