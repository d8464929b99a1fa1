"""Each layer's gradient norm, from whatever a stage holds its gradients in, computed where the
gradients are (on the GPU for a GPU run) and read back later with the losses."""
from __future__ import annotations

import math

import numpy as np

from common.loaded import loaded_torch
from common.run.record import LAYERS


def parameter_norms(gradients):
    """The L2 norm of every parameter's gradient, in the order `named_gradients` gives: a tensor
    on the gradients' device for torch (nothing waits for it), a list of floats for numpy."""
    grads = named_gradients(gradients)
    torch = loaded_torch()
    if torch is not None and grads and isinstance(next(iter(grads.values())), torch.Tensor):
        return list(grads), torch.stack([torch.linalg.vector_norm(g) for g in grads.values()])
    return list(grads), [float(np.sqrt(np.vdot(g, g))) for g in grads.values()]


def layer_norms(names: list[str], norms: list[float]) -> list[float]:
    """Per-parameter norms folded into one per layer, weight and bias together, in LAYERS order."""
    squares = dict.fromkeys(LAYERS, 0.0)
    for name, norm in zip(names, norms):
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
        name = name.removeprefix("module.").replace("_orig_mod.", "")  # DataParallel, DDP, torch.compile wrap
        if torch is not None and isinstance(value, torch.Tensor) and value.requires_grad:
            value = value.grad  # a parameter: its gradient lives in .grad
        if value is not None:
            grads[name] = value.detach() if hasattr(value, "detach") else value
    return grads
