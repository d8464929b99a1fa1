"""How close is close: the tolerances, named by dtype, and the one measure of difference they bound."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    rtol: float  # on relative_error(): max |actual - expected| / max |expected|
    reason: str


# The one place where tolerances are set.
TOLERANCES = {
    "float64": Tolerance(1e-10, "float64 keeps ~16 significant digits; summing the same products "
                                "in another order (im2col vs. a library kernel) loses at most a few"),
    "float32": Tolerance(1e-4, "float32 keeps ~7 significant digits; another summation order over "
                               "thousands of terms (conv1's weight gradient sums over batch x 28 x 28 "
                               "positions: 3,136 at batch 4), compounded over a few momentum steps, may "
                               "cost ~3 of them"),
}



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

