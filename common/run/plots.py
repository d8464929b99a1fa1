"""The figure of a run's record, curves.png: the training loss per step, each layer's gradient
norm per step when the record has grad_norms.csv, the test accuracy per epoch; its title and
the accuracy's name the data (summary.json's data.source): "synthetic shapes, not CIFAR-10" or
"CIFAR-10", since one epoch of the synthetic shapes reaches about 95 % and CIFAR-10 about 55 %.

A figure claims only what its data hold: a moving average is labelled with the window it was
taken over, accuracies and differences are written out as numbers, and legends sit outside
the axes, where they cannot hide a curve.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no window, works without a display
import matplotlib.pyplot as plt  # noqa: E402,F401  (the course runner and the tests draw with pyplot)
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from common.data import CHANCE, data_name, on_data  # noqa: E402
from common.errors import WRITE_FAILED, CourseError  # noqa: E402
from common.run import checkpoint  # noqa: E402

SMOOTHING_STEPS = 100  # the moving-average window of a long run
MAX_LABELLED_EPOCHS = 6  # more values than this would overlap: then only some are written
LOG_FLOOR = 1e-18  # a log axis has no 0: a deviation of exactly 0 is drawn on this bottom edge
OUTSIDE_RIGHT = dict(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, fontsize=8, frameon=False)


def recorded_data(record_dir: Path) -> str:
    """The name of the data the run trained on, from its summary.json (written before the figure)."""
    try:
        summary = json.loads((record_dir / "summary.json").read_text())
        return data_name(summary["data"]["source"])
    except (OSError, ValueError, KeyError, TypeError):  # no summary, or one without the data
        return data_name(None)


def read_csv(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = rows[0].keys() if rows else ()
    return {c: np.array([float(r[c]) for r in rows]) for c in columns}


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of every `window` consecutive values (a window longer than the values is cut to
    their length): len(values) - window + 1 means."""
    window = max(1, min(window, len(values)))
    return np.convolve(values, np.ones(window) / window, mode="valid")


def smoothing_window(n_steps: int) -> int:
    """SMOOTHING_STEPS, or a quarter of a run too short for it, so that the averaged curve
    still spans most of the run; 1 (no averaging) for a run of fewer than 8 steps."""
    return max(1, min(SMOOTHING_STEPS, n_steps // 4))


def trailing_mean(steps: np.ndarray, values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Each point the mean of the `window` steps up to and including it, drawn at the last of
    them: no step is averaged with steps that came after it."""
    return steps[window - 1:], moving_average(values, window)


def plot_smoothed(ax: Axes, steps: np.ndarray, values: np.ndarray, window: int, **style) -> None:
    ax.plot(*trailing_mean(steps, values, window), **style)


def whole_steps(ax: Axes) -> None:
    """Ticks on whole training steps, at round numbers."""
    ax.xaxis.set_major_locator(MaxNLocator("auto", integer=True, steps=[1, 2, 5, 10]))


def say_empty(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", color="0.4")
    ax.set(xticks=[], yticks=[])


# ---------------------------------------------------------------- the panels
def draw_loss(ax: Axes, losses: dict, window: int) -> None:
    ax.set(xlabel="training step", ylabel="cross-entropy loss", title="training loss")
    if not losses:
        return say_empty(ax, "no training step recorded")
    short = len(losses["step"]) < 100  # few enough steps that each one can carry a marker
    ax.plot(losses["step"], losses["loss"], color="0.75", lw=0.6, marker="." if short else None, label="per step")
    if window > 1:
        plot_smoothed(ax, losses["step"], losses["loss"], window, color="C0", lw=1.5,
                      label=f"moving average\nof {window} steps")
    whole_steps(ax)
    ax.legend(**OUTSIDE_RIGHT)


def draw_grad_norms(ax: Axes, norms: dict, window: int) -> None:
    """One colour per layer: faint per step, solid as the moving average of `window` steps."""
    ax.set(xlabel="training step", ylabel="L2 norm of the layer's gradient\n(weight and bias together)",
           yscale="log", title="gradient norm per layer (log scale)")
    if not norms:
        return say_empty(ax, "no training step recorded")
    layers = [column for column in norms if column != "step"]
    alpha = 0.15 if len(norms["step"]) >= 100 else 0.4  # many steps of five layers pile up: fainter
    for i, layer in enumerate(layers):
        faint = dict(alpha=alpha, lw=0.4) if window > 1 else dict(lw=1, label=layer)
        ax.plot(norms["step"], norms[layer], color=f"C{i}", **faint)
        if window > 1:
            plot_smoothed(ax, norms["step"], norms[layer], window, color=f"C{i}", lw=1.5, label=layer)
    if window > 1:  # two grey entries say what faint and solid mean
        ax.plot([], [], color="0.5", alpha=alpha, lw=0.4, label="per step")
        ax.plot([], [], color="0.5", lw=1.5, label=f"moving average\nof {window} steps")
    whole_steps(ax)
    ax.legend(**OUTSIDE_RIGHT)


def draw_accuracy(ax: Axes, accuracy: dict, data: str) -> None:
    """One epoch: a bar with its value written large. Several: a line with the values on it."""
    # a little room above 100% for a value written on a point near the top
    ax.set(ylim=(0, 104), yticks=range(0, 101, 20), ylabel="test accuracy (%)")
    if not accuracy:
        ax.set_title("test accuracy")
        return say_empty(ax, "no test accuracy:\nno epoch finished")
    epochs, steps = accuracy["epoch"].astype(int), accuracy["step"].astype(int)
    percent = 100 * accuracy["test_accuracy"]
    if len(epochs) == 1:
        draw_one_accuracy(ax, epochs[0], percent[0])
    else:
        draw_accuracies(ax, epochs, percent)
    if len(epochs) <= MAX_LABELLED_EPOCHS:
        # the step says when the test ran: before the epoch's end in a --max-steps run
        ax.set_xticks(epochs, [f"epoch {e}\nstep {s}" for e, s in zip(epochs, steps)])
    else:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator("auto", integer=True))
    ax.set_title(f"test accuracy after epoch {epochs[-1]}: {percent[-1]:.2f}%\n{on_data(data)}")
    ax.axhline(100 * CHANCE, color="0.5", ls="--", lw=1)
    ax.annotate(f"chance\n{100 * CHANCE:.0f}%", xy=(1, 100 * CHANCE), xycoords=("axes fraction", "data"), xytext=(4, 0),
                textcoords="offset points", va="center", fontsize=8, color="0.4")  # beside the axes, off the data


def draw_one_accuracy(ax: Axes, epoch: int, percent: float) -> None:
    ax.bar(epoch, percent, width=1.2, color="C1")  # wide enough to hold its value
    ax.set_xlim(epoch - 1, epoch + 1)
    tall = percent > 30  # room for the number inside the bar; a short bar gets it on top
    ax.text(epoch, percent / 2 if tall else percent + 2, f"{percent:.2f}%", ha="center",
            va="center" if tall else "bottom", fontsize=20, fontweight="bold", color="white" if tall else "C1")


def draw_accuracies(ax: Axes, epochs: np.ndarray, percent: np.ndarray) -> None:
    ax.plot(epochs, percent, "o-", color="C1")
    every = -(-len(epochs) // MAX_LABELLED_EPOCHS)  # ceil: the last epoch is always written
    for e, p in list(zip(epochs, percent))[::-1][::every]:
        ax.annotate(f"{p:.1f}%", (e, p), ha="center", va="center", fontsize=8,
                    bbox=dict(boxstyle="round", fc="white", ec="C1"))  # written on the point itself
    ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)


# ---------------------------------------------------------------- the figures
def draw_run(record_dir: Path) -> Figure:
    """The figure of a run: loss, gradient norms (only if the record has them), accuracy."""
    losses = read_csv(record_dir / "losses.csv")
    accuracy = read_csv(record_dir / "accuracy.csv")
    grad_norms_csv = record_dir / "grad_norms.csv"
    norms = read_csv(grad_norms_csv) if grad_norms_csv.exists() else None
    window = smoothing_window(len(losses.get("step", ())))
    widths = [3, 3, 2] if norms is not None else [3, 2]
    # a Figure made without pyplot is freed with its last reference: nothing to close
    fig = Figure(figsize=(4.5 * len(widths) + 1.5, 4.5), layout="constrained")
    axes = fig.subplots(1, len(widths), width_ratios=widths)
    draw_loss(axes[0], losses, window)
    if norms is not None:
        draw_grad_norms(axes[1], norms, smoothing_window(len(norms.get("step", ()))))
    data = recorded_data(record_dir)
    draw_accuracy(axes[-1], accuracy, data)
    steps = f"{int(losses['step'][-1])} training steps" if losses else "no training step"
    fig.suptitle(f"{record_dir.parent.name}: {steps} {on_data(data)}")
    return fig


def plot_run(record_dir: Path) -> Path:
    """curves.png beside the CSVs (see draw_run)."""
    path = record_dir / "curves.png"
    checkpoint.save_figure(draw_run(record_dir), path, dpi=100)
    return path


def plot_run_or_say_why(record_dir: Path) -> None:
    """plot_run(), and a failed write as one line, with no partial curves.png left behind."""
    try:
        plot_run(record_dir)
    except OSError as err:
        (record_dir / "curves.png").unlink(missing_ok=True)
        raise CourseError(f"cannot write {record_dir / 'curves.png'}: {err.strerror}"
                          f"{checkpoint.free_space_note(record_dir)}", WRITE_FAILED) from None
