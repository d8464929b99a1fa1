"""`make compare`'s figure: every stage's loss, and its deviation from the first stage, on the
harness's batches (common/harness/batches.py), which are always the synthetic shapes."""
from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from common.data import SYNTHETIC_NAME
from common.tools.figures import LOG_FLOOR, whole_steps


def draw_comparison(curves_by_dtype: dict, tolerances: dict) -> Figure:
    """`make compare`'s figure from {dtype: {stage: {"loss": [...], "deviation": [...]}}}, the
    first stage being the reference, and {dtype: relative tolerance}."""
    fig = Figure(figsize=(13, 6.5), layout="constrained")
    ax_loss, ax_dev = fig.subplots(1, 2)
    draw_stage_losses(ax_loss, curves_by_dtype)
    handles = draw_deviations(ax_dev, curves_by_dtype, tolerances)
    fig.legend(handles=handles, loc="outside lower right", ncols=2, fontsize=8)  # below the axes, off the data
    steps = len(next(iter(next(iter(curves_by_dtype.values())).values()))["loss"])
    fig.suptitle(f"make compare: every stage from the same weights on the same {steps} batches of {SYNTHETIC_NAME}")
    return fig


def draw_stage_losses(ax: Axes, curves_by_dtype: dict) -> None:
    """Every stage's loss per step in the first dtype, one colour for all: they coincide, so
    the title gives the largest difference between two stages instead of a legend entry for
    each of the lines that cannot be told apart."""
    losses_by_dtype = {dtype: np.array([c["loss"] for c in curves.values()])  # (stages, steps)
                       for dtype, curves in curves_by_dtype.items()}
    spreads = {dtype: (losses.max(axis=0) - losses.min(axis=0)).max() for dtype, losses in losses_by_dtype.items()}
    shown, losses = next(iter(losses_by_dtype.items()))
    ax.plot(np.arange(1, losses.shape[1] + 1), losses.T, color="C0", lw=1.2)
    # a gap under a thousandth of the curves' height is thinner than the line drawing them
    coincide = spreads[shown] < 1e-3 * (losses.max() - losses.min())
    ax.set(xlabel="training step", ylabel="cross-entropy loss",
           title=f"loss per step of all {len(losses)} stages ({shown})" + (": the curves coincide" if coincide else "")
           + "\nlargest difference between two stages at any step:\n"
           + ", ".join(f"{spread:.1e} in {dtype}" for dtype, spread in spreads.items()))
    whole_steps(ax)


def draw_deviations(ax: Axes, curves_by_dtype: dict, tolerances: dict) -> list[Line2D]:
    """Each stage's deviation from the first, float64 solid and float32 dashed, and each dtype's
    tolerance; returns the legend entries, which name each dtype's largest deviation."""
    styles, colors = {"float64": "-", "float32": "--"}, {"float64": "C0", "float32": "C1"}
    handles = []
    for dtype, curves in curves_by_dtype.items():
        reference, *others = curves
        style, tolerance = dict(ls=styles[dtype], color=colors[dtype]), dict(ls=styles[dtype], color="red")
        largest = {stage: max(curves[stage]["deviation"]) for stage in others}
        for stage in others:
            deviation = curves[stage]["deviation"]
            ax.semilogy(np.arange(1, len(deviation) + 1), np.maximum(deviation, LOG_FLOOR), lw=1, **style)
        if others:
            worst = max(largest, key=largest.get)
            zero = f" (0 drawn at {LOG_FLOOR:.0e})" if any(min(curves[s]["deviation"]) == 0 for s in others) else ""
            handles.append(Line2D([], [], **style, label=f"{dtype}, {len(others)} stages, one line each{zero}: "
                                                         f"largest {largest[worst]:.1e} ({worst})"))
        ax.axhline(tolerances[dtype], lw=1, **tolerance)
        handles.append(Line2D([], [], **tolerance, label=f"{dtype} tolerance ({tolerances[dtype]:.0e})"))
    ax.set(xlabel="training step", ylabel=f"max relative parameter difference from {reference}",
           title=f"deviation from {reference} (log scale)", ylim=(LOG_FLOOR, 1))
    whole_steps(ax)
    return handles
