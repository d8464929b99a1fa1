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
    # Mixed precision (stages 12-13, --amp on) against float32: not round-off but a coarser format.
    "bfloat16": Tolerance(1e-2, "bfloat16 keeps 8 significant bits (round-off 2**-8 = 3.9e-3); autocast "
                                "rounds each layer's inputs and weights to it and accumulates in float32: one "
                                "step's logits differ from float32's by 3.0-3.6e-3, its loss by ~1e-5 "
                                "(measured, batches of 4 and 64)"),
}
# A step's gradients under autocast, measured by relative_norm_error: the backward runs in bfloat16 too,
# and conv1's and conv2's gradients, sums over thousands of positions whose terms mostly cancel, differ
# from float32's by up to 14 % of their norm (fc3's by 0.2 %; measured, batches of 4 and 64): this
# bounds it at about twice that. A check of direction and scale, not of digits.
BFLOAT16_GRADIENTS = Tolerance(0.3, "bfloat16 gradients: up to 14 % of the norm measured, twice allowed")



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


def relative_norm_error(actual, expected) -> float:
    """||actual - expected|| / ||expected||: how far off a whole tensor is, for the loose
    agreements (mixed precision) where single elements may be far off."""
    actual, expected = to_numpy(actual), to_numpy(expected)
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {actual.shape} vs {expected.shape}")
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def worst_relative_error(actual: dict, expected: dict) -> tuple[str, float]:
    """The name and error of the entry that differs most; the keys must match exactly."""
    if set(actual) != set(expected):
        raise ValueError(f"names differ: {sorted(set(actual) ^ set(expected))}")
    errors = {name: relative_error(actual[name], expected[name]) for name in expected}
    name = max(errors, key=errors.get)
    return name, errors[name]

