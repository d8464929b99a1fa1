"""One place that seeds every random number generator a stage may use."""
from __future__ import annotations

import random

import numpy as np

from common.loaded import loaded_torch


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, numpy's global generator and, if the stage uses it, torch."""
    random.seed(seed)
    np.random.seed(seed)
    # Seed torch only where it is loaded: the numpy stage loads it only when torchvision does
    # (--data auto trying ./data).
    torch = loaded_torch()
    if torch is not None:
        torch.manual_seed(seed)
