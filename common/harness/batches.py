"""Sample batches, and one step or a trajectory of any stage, as float64 numpy."""
from __future__ import annotations

import numpy as np

from common.data import make_synthetic
from common.harness.driver import driver
from common.harness.tolerances import to_numpy


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 32, 32, 3) -> float64 (N, 3, 32, 32) in [-1, 1], as stages 1-6 normalise (stages
    7-11 normalise in float32, then widen)."""
    return (images.transpose(0, 3, 1, 2) / 255.0 - 0.5) / 0.5


def sample_batches(n_batches: int, batch_size: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Distinct normalised batches of synthetic images with their labels, as float64 numpy."""
    data = make_synthetic(seed, n_train=n_batches * batch_size, n_test=1)
    return [(normalise(data.train_x[i:i + batch_size]), data.train_y[i:i + batch_size])
            for i in range(0, n_batches * batch_size, batch_size)]


def one_step(stage, params: dict, x, y, dtype: str, lr: float = 0.01, momentum: float = 0.9, **options) -> dict:
    """Logits, then loss and gradients of one step, from fresh weights, as numpy."""
    d = driver(stage)
    model = d.build(params, dtype=dtype, **options)
    logits = to_numpy(d.forward(model, x))
    loss, grads = d.train_step(model, x, y, lr, momentum)
    return {"logits": logits, "loss": float(loss), "grads": {k: to_numpy(v) for k, v in grads.items()}}


def trajectory(stage, params: dict, batches, dtype: str, lr: float = 0.01, momentum: float = 0.9,
               **options) -> dict:
    """Losses of one step per batch, and the parameters after the last."""
    d = driver(stage)
    model = d.build(params, dtype=dtype, **options)
    losses = [float(d.train_step(model, x, y, lr, momentum)[0]) for x, y in batches]
    return {"losses": np.array(losses), "params": {k: to_numpy(v) for k, v in d.get_params(model).items()}}
