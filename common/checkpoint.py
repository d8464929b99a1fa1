"""Checkpoints that survive interruption: what a run needs to continue bit for bit.

A checkpoint holds the model's and the optimizer's `state_dict()`, the epoch and the steps
already taken in it, the state of the random number generator that orders the data (taken
at the start of the epoch, so the same order can be drawn again), and torch's global RNG
state (dropout) at the moment of saving. It is written atomically: to a temporary file
first, then renamed over the old one, so an interruption while saving never leaves a
half-written checkpoint, and the previous one survives until the new one is complete.
Loading uses `torch.load(..., weights_only=True)`, which refuses to run code from a file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from common.errors import CourseError

FORMAT = 1


# torch is imported inside the functions: the numpy stage runs through common/run.py too, and
# should not have to load torch.


def order_state(order):
    """The state of what orders the data: a numpy Generator, a torch.Generator, or None."""
    if order is None:
        return None
    if isinstance(order, np.random.Generator):
        return order.bit_generator.state
    return order.get_state()


def set_order_state(order, state) -> None:
    if isinstance(order, np.random.Generator):
        order.bit_generator.state = state
    elif order is not None:
        order.set_state(state)


def torch_rng_state():
    """torch's global RNG state (what dropout draws from), to save with a checkpoint."""
    import torch

    return torch.get_rng_state()


def set_torch_rng_state(state) -> None:
    import torch

    torch.set_rng_state(state)


def save(path: Path, state: dict) -> None:
    """Write `state` to `path` atomically: a crash leaves either the old file or the new one."""
    import torch

    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(dict(state, format=FORMAT), temporary)
        os.replace(temporary, path)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        raise CourseError(f"cannot write the checkpoint {path}: {err.strerror or err}") from None


def load(path: Path, expected: dict) -> dict:
    """Read a checkpoint and check that it belongs to this run (`expected`: stage, dtype, ...)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CourseError(f"--resume {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load fails in many ways on a damaged file; all mean "unreadable"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CourseError(f"--resume {path}: not a readable checkpoint ({reason[:120]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CourseError(f"--resume {path}: not a checkpoint of this course")
    for key, value in expected.items():
        if state.get(key) != value:
            raise CourseError(f"--resume {path}: made with {key} {state.get(key)!r}, "
                              f"but this run has {value!r}")
    return state
