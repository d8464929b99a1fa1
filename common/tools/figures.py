"""What the tools' figures share: pyplot drawing into files only, a figure saved whole or not at
all, and the moving average of a curve."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no window, works without a display
import matplotlib.pyplot as plt  # noqa: E402,F401  (the tools draw with pyplot)
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from common.run import RUNNING_LOSS_STEPS, moving_average, read_csv, write_whole  # noqa: E402,F401

LOG_FLOOR = 1e-18  # a log axis has no 0: a deviation of exactly 0 is drawn on this bottom edge


def save_figure(fig, path: Path, dpi: int) -> None:
    """The figure as a PNG, written to a temporary name and renamed: never a partial figure."""
    write_whole(path, lambda f: fig.savefig(f, format="png", dpi=dpi))


def smoothing_window(n_steps: int) -> int:
    """RUNNING_LOSS_STEPS, or a quarter of a run too short for it; 1 for fewer than 8 steps."""
    return max(1, min(RUNNING_LOSS_STEPS, n_steps // 4))


def trailing_mean(steps: np.ndarray, values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Each point the mean of the `window` steps up to and including it, drawn at the last of them."""
    return steps[window - 1:], moving_average(values, window)


def whole_steps(ax: Axes) -> None:
    """Ticks on whole training steps, at round numbers."""
    ax.xaxis.set_major_locator(MaxNLocator("auto", integer=True, steps=[1, 2, 5, 10]))
