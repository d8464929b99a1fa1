"""An independent PyTorch autograd reference for the network, written once: what the tests and
`make check` compare every stage with."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def reference_logits(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = F.max_pool2d(F.relu(F.conv2d(x, params["conv1.weight"], params["conv1.bias"])), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, params["conv2.weight"], params["conv2.bias"])), 2)
    h = F.relu(F.linear(h.flatten(1), params["fc1.weight"], params["fc1.bias"]))
    h = F.relu(F.linear(h, params["fc2.weight"], params["fc2.bias"]))
    return F.linear(h, params["fc3.weight"], params["fc3.bias"])


def as_leaves(params: dict[str, np.ndarray], dtype: str) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=TORCH_DTYPES[dtype], requires_grad=True) for k, v in params.items()}


def reference_step(params: dict[str, np.ndarray], x, y, dtype: str):
    """Logits, loss and gradients of one batch, as numpy, in `dtype`."""
    leaves = as_leaves(params, dtype)
    logits = reference_logits(leaves, torch.as_tensor(np.asarray(x), dtype=TORCH_DTYPES[dtype]))
    loss = F.cross_entropy(logits, torch.as_tensor(np.asarray(y), dtype=torch.long))
    loss.backward()
    grads = {k: v.grad.numpy() for k, v in leaves.items()}
    return logits.detach().numpy(), loss.item(), grads


def reference_trajectory(params: dict[str, np.ndarray], batches, lr: float, momentum: float, dtype: str):
    """Parameters after one torch.optim.SGD step per batch, and the losses on the way."""
    leaves = as_leaves(params, dtype)
    opt = torch.optim.SGD(leaves.values(), lr=lr, momentum=momentum)
    losses = []
    for x, y in batches:
        opt.zero_grad()
        logits = reference_logits(leaves, torch.as_tensor(np.asarray(x), dtype=TORCH_DTYPES[dtype]))
        loss = F.cross_entropy(logits, torch.as_tensor(np.asarray(y), dtype=torch.long))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, {k: v.detach().numpy().copy() for k, v in leaves.items()}
