"""Stage 5's claims (nn.Module), each shown by running it, in every stage with a Net where the
claim holds for all of them."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn, optim

from common.harness import load_stage
from common.weights import reference_params
from tests.helpers import a_batch, has_module_net, reference_net, stages_where


@pytest.mark.stage5
def test_zero_grad_sets_grad_to_none():
    """model.zero_grad() (stage 5) and optimizer.zero_grad() (from stage 6) alike."""
    model = reference_net(5)
    x, y = a_batch()
    for zero_grad in (model.zero_grad, optim.SGD(model.parameters(), lr=0.1).zero_grad):
        F.cross_entropy(model(x), y).backward()
        assert all(p.grad is not None for p in model.parameters())
        zero_grad()
        assert all(p.grad is None for p in model.parameters()), "set_to_none=True is the default since 2.0"


@pytest.mark.stage5
def test_nn_init_runs_without_grad():
    model = load_stage(5).Net()
    weight = model.conv1.weight
    assert nn.init.kaiming_normal_(weight) is weight  # in place, outside no_grad(), and no error
    assert weight.is_leaf and weight.grad_fn is None and weight.requires_grad
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        weight.normal_()
    with torch.no_grad():
        weight.normal_()
    weight.data.normal_()  # bypasses autograd's checks: no error either


@pytest.mark.stage5
def test_new_layers_start_uniform_within_one_over_sqrt_fan_in():
    torch.manual_seed(0)
    model = load_stage(5).Net()
    fan_ins = {"conv1": 3 * 5 * 5, "conv2": 6 * 5 * 5, "fc1": 400, "fc2": 120, "fc3": 84}
    for name, p in model.named_parameters():
        bound = 1 / math.sqrt(fan_ins[name.split(".")[0]])
        assert p.abs().max() <= bound, name
        if p.numel() > 100:  # enough draws to come near the bound
            assert p.abs().max() > 0.9 * bound, name


@pytest.mark.stage5
def test_load_state_dict_copies_into_the_existing_parameters_in_their_dtype():
    model = load_stage(5).Net()
    before = list(model.parameters())
    model.load_state_dict({k: torch.from_numpy(v) for k, v in reference_params(0).items()})  # float64 arrays
    assert all(p is q for p, q in zip(model.parameters(), before))
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.stage5
def test_calling_a_module_runs_its_hooks_but_forward_alone_does_not():
    model, calls = load_stage(5).Net(), []
    model.register_forward_hook(lambda module, inputs, output: calls.append(output.shape))
    x = torch.zeros(1, 3, 32, 32)
    model.forward(x)
    assert calls == []
    model(x)
    assert calls == [(1, 10)]


@pytest.mark.parametrize("stage_name", stages_where(has_module_net))
def test_parameters_are_weight_then_bias_of_each_layer(stage_name, params):
    model = load_stage(stage_name).Net()
    assert isinstance(model, nn.Module)
    parameters = list(model.parameters())
    assert len(parameters) == 10
    layers = [model.conv1, model.conv2, model.fc1, model.fc2, model.fc3]
    expected = [t for layer in layers for t in (layer.weight, layer.bias)]
    assert all(p is q for p, q in zip(parameters, expected))
    assert [name for name, _ in model.named_parameters()] == list(params)


