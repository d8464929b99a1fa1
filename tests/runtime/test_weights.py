"""Reference initial weights: canonical names and shapes, PyTorch's default distributions."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from common.weights import PARAM_SHAPES, fan_in, reference_params


def test_names_and_shapes_are_those_of_the_module_form():
    net = nn.Sequential()  # the tutorial's layers, named as in its Net
    layers = dict(conv1=nn.Conv2d(3, 6, 5), conv2=nn.Conv2d(6, 16, 5), fc1=nn.Linear(400, 120),
                  fc2=nn.Linear(120, 84), fc3=nn.Linear(84, 10))
    for name, layer in layers.items():
        net.add_module(name, layer)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    got = {k: v.shape for k, v in reference_params(0).items()}
    assert got == expected == PARAM_SHAPES


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = reference_params(5), reference_params(5), reference_params(6)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["fc1.weight"], c["fc1.weight"])
    assert all(v.dtype == np.float64 for v in a.values())


def test_weights_follow_pytorchs_default_init_bounds():
    """PyTorch draws U(-1/sqrt(fan_in), 1/sqrt(fan_in)); so must we, and so does torch itself."""
    torch.manual_seed(0)
    torch_layers = dict(conv1=nn.Conv2d(3, 6, 5), conv2=nn.Conv2d(6, 16, 5), fc1=nn.Linear(400, 120),
                        fc2=nn.Linear(120, 84), fc3=nn.Linear(84, 10))
    params = reference_params(0)
    for layer, module in torch_layers.items():
        bound = 1 / math.sqrt(fan_in(layer))
        for kind in ("weight", "bias"):
            ours, theirs = params[f"{layer}.{kind}"], getattr(module, kind).detach().numpy()
            assert np.abs(ours).max() <= bound and np.abs(theirs).max() <= bound
            if ours.size >= 1000:  # enough samples for the spread to be close to the bound
                assert np.abs(ours).max() > 0.99 * bound
                assert abs(ours.std() - bound / math.sqrt(3)) < 0.03 * bound
