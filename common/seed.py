"""One place that seeds every random number generator a stage may use."""
from __future__ import annotations

import random
import sys

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed Python's `random`, numpy's global generator and, if the stage uses it, torch (the
    numpy stage never imports torch, so torch is seeded only where it is loaded)."""
    random.seed(seed)
    np.random.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)
