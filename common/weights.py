"""Reference initial weights, drawn with numpy, so that every stage starts from the same numbers.

PyTorch initialises `nn.Conv2d` and `nn.Linear` with `kaiming_uniform_(a=sqrt(5))` for the
weight and a uniform bias; both work out to U(-1/sqrt(fan_in), 1/sqrt(fan_in)), where fan_in is
in_channels * kernel_height * kernel_width for a convolution and in_features for a linear layer.
"""
from __future__ import annotations

import math

import numpy as np

# Canonical names and shapes: those of the nn.Module form of the network (stage 5 onward).
PARAM_SHAPES: dict[str, tuple[int, ...]] = {
    "conv1.weight": (6, 3, 5, 5),
    "conv1.bias": (6,),
    "conv2.weight": (16, 6, 5, 5),
    "conv2.bias": (16,),
    "fc1.weight": (120, 400),
    "fc1.bias": (120,),
    "fc2.weight": (84, 120),
    "fc2.bias": (84,),
    "fc3.weight": (10, 84),
    "fc3.bias": (10,),
}
PARAM_NAMES: tuple[str, ...] = tuple(PARAM_SHAPES)


def fan_in(layer: str) -> int:
    """Inputs feeding one output unit of `layer` (e.g. "conv1" -> 3 * 5 * 5 = 75)."""
    weight_shape = PARAM_SHAPES[f"{layer}.weight"]
    return math.prod(weight_shape[1:])


def reference_params(seed: int = 0) -> dict[str, np.ndarray]:
    """Float64 weights from PyTorch's default initialisation distributions, canonical names."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in PARAM_SHAPES.items():
        bound = 1.0 / math.sqrt(fan_in(name.split(".")[0]))
        params[name] = rng.uniform(-bound, bound, size=shape)
    return params
