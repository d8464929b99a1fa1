"""Each layer's gradient norm, from whatever a stage holds its gradients in."""
from __future__ import annotations

import math

import numpy as np

from common.loaded import loaded_torch
from common.run.record import LAYERS


def layer_norms(gradients) -> list[float]:
    """The L2 norm of each layer's gradient, weight and bias together, in LAYERS order."""
    grads = named_gradients(gradients)
    squares = dict.fromkeys(LAYERS, 0.0)
    torch = loaded_torch()
    if torch is not None and grads and isinstance(next(iter(grads.values())), torch.Tensor):
        names = list(grads)
        norms = torch.stack(torch._foreach_norm([grads[n] for n in names])).tolist()  # one call, not ten
        values = dict(zip(names, norms))
    else:
        values = {n: float(np.sqrt(np.vdot(g, g))) for n, g in grads.items()}
    for name, norm in values.items():
        squares[name.split(".")[0]] += norm**2
    return [math.sqrt(squares[layer]) for layer in LAYERS]


def named_gradients(gradients) -> dict:
    """{canonical name: gradient} from a dict of gradients, a dict of parameters or a module."""
    torch = loaded_torch()
    if torch is not None and isinstance(gradients, torch.nn.Module):
        items = gradients.named_parameters()
    else:
        items = gradients.items()
    grads = {}
    for name, value in items:
        name = name.removeprefix("module.")  # DataParallel and DDP keep the network as .module
        if torch is not None and isinstance(value, torch.Tensor) and value.requires_grad:
            value = value.grad  # a parameter: its gradient lives in .grad
        if value is not None:
            grads[name] = value.detach() if hasattr(value, "detach") else value
    return grads
