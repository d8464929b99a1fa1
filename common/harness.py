"""The equivalence harness: run any stage through its contract and compare it with another.

Every stage exposes `build(params, dtype)`, `forward(model, x)`,
`train_step(model, x, y, lr, momentum) -> (loss, grads)` and `get_params(model)`; inputs may
be numpy arrays or tensors and outputs numpy arrays, floats or tensors. This module turns
outputs into float64 numpy arrays, measures differences, and names the tolerances.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from common.data import make_synthetic

STAGES_DIR = Path(__file__).resolve().parent.parent / "stages"


@dataclass(frozen=True)
class Tolerance:
    rtol: float  # on relative_error(): max |actual - expected| / max |expected|
    reason: str


# The one place where tolerances are set.
TOLERANCES = {
    "float64": Tolerance(1e-10, "float64 keeps ~16 significant digits; summing the same products "
                                "in another order (im2col vs. a library kernel) loses at most a few"),
    "float32": Tolerance(1e-4, "float32 keeps ~7 significant digits; another summation order over "
                               "up to 400 terms, compounded over a few momentum steps, costs ~3"),
}


def stage_names() -> list[str]:
    """Module names of the stages, in course order: ["stages.stage01_numpy", ...]."""
    return [f"stages.{p.stem}" for p in sorted(STAGES_DIR.glob("stage[0-9][0-9]_*.py"))]


def load_stage(which: int | str) -> ModuleType:
    """A stage by number (3) or module name ("stages.stage03_autograd")."""
    if isinstance(which, int) or str(which).isdigit():
        matches = [n for n in stage_names() if n.startswith(f"stages.stage{int(which):02d}_")]
        if not matches:
            raise ValueError(f"no stage {which}; stages are {', '.join(stage_names())}")
        which = matches[0]
    return importlib.import_module(str(which))


def to_numpy(value) -> np.ndarray:
    """A float64 numpy copy of an array, tensor (on any device, with or without grad) or float."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().double().numpy()
    return np.array(value, dtype=np.float64)


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected|: one number per array, scale-free."""
    actual, expected = to_numpy(actual), to_numpy(expected)
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {actual.shape} vs {expected.shape}")
    scale = np.abs(expected).max()
    return float(np.abs(actual - expected).max() / scale) if scale > 0 else float(np.abs(actual).max())


def worst_relative_error(actual: dict, expected: dict) -> tuple[str, float]:
    """The name and error of the entry that differs most; the keys must match exactly."""
    if set(actual) != set(expected):
        raise ValueError(f"names differ: {sorted(set(actual) ^ set(expected))}")
    errors = {name: relative_error(actual[name], expected[name]) for name in expected}
    name = max(errors, key=errors.get)
    return name, errors[name]


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 32, 32, 3) -> float64 (N, 3, 32, 32) in [-1, 1], as every stage normalises."""
    return (images.transpose(0, 3, 1, 2) / 255.0 - 0.5) / 0.5


def sample_batches(n_batches: int, batch_size: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Distinct normalised batches of synthetic images with their labels, as float64 numpy."""
    data = make_synthetic(seed, n_train=n_batches * batch_size, n_test=1)
    return [(normalise(data.train_x[i:i + batch_size]), data.train_y[i:i + batch_size])
            for i in range(0, n_batches * batch_size, batch_size)]


def one_step(stage: ModuleType, params: dict, x, y, dtype: str, lr: float = 0.01, momentum: float = 0.9) -> dict:
    """Logits, then loss and gradients of one train_step, from fresh weights, as numpy."""
    model = stage.build(params, dtype=dtype)
    logits = to_numpy(stage.forward(model, x))
    loss, grads = stage.train_step(model, x, y, lr, momentum)
    return {"logits": logits, "loss": float(loss), "grads": {k: to_numpy(v) for k, v in grads.items()}}


def trajectory(stage: ModuleType, params: dict, batches, dtype: str, lr: float = 0.01,
               momentum: float = 0.9) -> dict:
    """Losses of one train_step per batch, and the parameters after the last."""
    model = stage.build(params, dtype=dtype)
    losses = [float(stage.train_step(model, x, y, lr, momentum)[0]) for x, y in batches]
    return {"losses": np.array(losses), "params": {k: to_numpy(v) for k, v in stage.get_params(model).items()}}
