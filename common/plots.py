"""Figures of a run's record: the training loss per step and the test accuracy per epoch."""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no window, works without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SMOOTHING_STEPS = 100


def read_csv(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = rows[0].keys() if rows else ()
    return {c: np.array([float(r[c]) for r in rows]) for c in columns}


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    window = max(1, min(window, len(values)))
    return np.convolve(values, np.ones(window) / window, mode="valid")


def plot_run(record_dir: Path) -> Path:
    """curves.png beside the CSVs: loss (raw and smoothed) on the left, accuracy on the right."""
    losses = read_csv(record_dir / "losses.csv")
    accuracy = read_csv(record_dir / "accuracy.csv")
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    if losses:
        ax_loss.plot(losses["step"], losses["loss"], color="0.8", lw=0.5, label="per step")
        smooth = moving_average(losses["loss"], SMOOTHING_STEPS)
        ax_loss.plot(losses["step"][len(losses["step"]) - len(smooth):], smooth, color="C0",
                     label=f"mean of {min(SMOOTHING_STEPS, len(losses['loss']))} steps")
        ax_loss.legend()
    ax_loss.set(xlabel="training step", ylabel="cross-entropy loss", title="training loss")
    if accuracy:
        ax_acc.plot(accuracy["epoch"], 100 * accuracy["test_accuracy"], "o-", color="C1")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy", ylim=(0, 100))
    ax_acc.axhline(10, color="0.6", ls="--", lw=1, label="chance (10%)")
    ax_acc.legend()
    fig.suptitle(record_dir.parent.name)
    fig.tight_layout()
    path = record_dir / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
