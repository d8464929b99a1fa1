"""Stage 6's claims (a loss module and torch.optim, the optimizer built last), each shown by
running it. `Module.to()` treats a dtype and a device alike (both go through `Module._apply`), so
a dtype stands in for the device here; stage 9's claims show the same on a GPU."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim

from common.harness import driver, load_stage, sample_batches
from common.weights import reference_params
from tests.helpers import a_batch, has_optimizer, reference_net, stages_where, train_a_few_steps


def assert_same_parameters(a: nn.Module, b: nn.Module) -> None:
    """Bit for bit: on the CPU the same steps give the same numbers."""
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("stage_name", stages_where(has_optimizer))
def test_module_to_keeps_the_same_parameter_objects(stage_name):
    """Module.to() changes the model in place, each Parameter object kept; Tensor.to() returns a
    new tensor and leaves the old one as it was."""
    model = load_stage(stage_name).Net()
    before = list(model.parameters())
    assert model.to(torch.float64) is model
    assert all(p is q and p.dtype == torch.float64 for p, q in zip(model.parameters(), before))
    x = torch.zeros(2, 3, 32, 32)
    x64 = x.to(torch.float64)
    assert x64 is not x and x.dtype == torch.float32 and x64.dtype == torch.float64


@pytest.mark.stage6
def test_optimizer_built_before_load_state_dict_still_trains():
    early = load_stage(6).Net().to(torch.float64)
    early_optimizer = optim.SGD(early.parameters(), lr=0.01, momentum=0.9)
    early.load_state_dict({k: torch.from_numpy(v) for k, v in reference_params(0).items()})
    late = reference_net(6)
    train_a_few_steps(early, early_optimizer)
    train_a_few_steps(late, optim.SGD(late.parameters(), lr=0.01, momentum=0.9))
    assert not torch.equal(late.fc3.bias, torch.from_numpy(reference_params(0)["fc3.bias"])), "training moved it"
    assert_same_parameters(early, late)


@pytest.mark.stage6
def test_optimizer_built_before_module_to_still_trains():
    early = load_stage(6).Net()  # float32
    early_optimizer = optim.SGD(early.parameters(), lr=0.01, momentum=0.9)
    early.to(torch.float64).load_state_dict({k: torch.from_numpy(v) for k, v in reference_params(0).items()})
    late = reference_net(6)
    train_a_few_steps(early, early_optimizer)
    train_a_few_steps(late, optim.SGD(late.parameters(), lr=0.01, momentum=0.9))
    assert_same_parameters(early, late)


@pytest.mark.stage6
def test_load_state_dict_with_assign_leaves_an_earlier_optimizer_behind():
    model = load_stage(6).Net().to(torch.float64)
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in reference_params(0).items()}, assign=True)
    train_a_few_steps(model, optimizer)  # steps the old Parameter objects; the model computes with the new ones
    for name, value in reference_params(0).items():
        assert np.array_equal(dict(model.named_parameters())[name].detach().numpy(), value), name


@pytest.mark.stage6
def test_overwriting_conversion_leaves_an_earlier_optimizer_behind():
    model = reference_net(6, "float32")
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        model.to(torch.float64)  # now makes new Parameter objects
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(False)
    before = [p.clone() for p in model.parameters()]
    train_a_few_steps(model, optimizer)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before)), "the model's parameters never moved"


@pytest.mark.stage6
def test_optimizer_state_does_not_follow_a_later_move():
    model = reference_net(6, "float32")
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train_a_few_steps(model, optimizer, steps=1)  # makes the momentum buffers, float32 like the parameters
    model.to(torch.float64)
    assert model.conv1.weight.dtype == torch.float64
    assert optimizer.state[model.conv1.weight]["momentum_buffer"].dtype == torch.float32


@pytest.mark.stage6
def test_optimizer_load_state_dict_puts_the_state_on_each_parameters_dtype():
    saved = reference_net(6, "float32")
    saved_optimizer = optim.SGD(saved.parameters(), lr=0.01, momentum=0.9)
    train_a_few_steps(saved, saved_optimizer, steps=1)
    model = reference_net(6, "float64")
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    optimizer.load_state_dict(saved_optimizer.state_dict())
    assert optimizer.state[model.conv1.weight]["momentum_buffer"].dtype == torch.float64


@pytest.mark.stage6
def test_cross_entropy_loss_module_computes_f_cross_entropy():
    logits, y = torch.randn(4, 10, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 3, 9, 3])
    assert torch.equal(nn.CrossEntropyLoss()(logits, y), F.cross_entropy(logits, y))
    assert torch.equal(nn.CrossEntropyLoss(reduction="none")(logits, y), F.cross_entropy(logits, y, reduction="none"))


@pytest.mark.stage6
def test_the_loss_before_any_update_is_near_ln_10_because_the_logits_are_small():
    x, y = a_batch(256, seed=3)
    with torch.no_grad():
        logits = reference_net(6)(x)
    assert logits.abs().max() < 0.5, "small random weights: ten nearly equal logits"
    assert abs(F.cross_entropy(logits, y).item() - math.log(10)) < 0.05  # 'near': 2% of ln 10


@pytest.mark.parametrize("stage_name", stages_where(has_optimizer))
def test_the_gradient_lives_on_its_parameter(stage_name, params):
    d = driver(stage_name)
    model = d.build(params, dtype="float64")
    _, grads = d.train_step(model, *sample_batches(1, 4)[0], 0.01, 0.9)
    # zero_grad() runs before the backward, so after a step .grad still holds its gradient
    assert torch.equal(model.module.conv1.bias.grad.cpu(), torch.as_tensor(grads["conv1.bias"]).cpu())
