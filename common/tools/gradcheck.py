"""Gradient check: finite differences of the loss against stage 1's hand-written gradients.

Only stage 1 is checked, so there is no --stage option: stage 1 writes every gradient by
hand, and the equivalence tests check every later stage against it. This module calls its
`forward_with_cache`, `cross_entropy` and `backward` directly.

A finite difference along one coordinate of a parameter,
  one-sided   (L(p + h) - L(p)) / h          truncation error ~ h
  central     (L(p + h) - L(p - h)) / (2h)   truncation error ~ h**2
also carries the loss's rounding error divided by the step, ~ eps * L / h. And relu and
max-pool have kinks, where a unit switches on or off or another input wins a pooling window.
Moved along one coordinate of one parameter, the logits are piecewise affine: affine between
two kinks. The loss, the softmax cross-entropy of those logits, is smooth and curved there
(hence the truncation error above); a step that crosses a kink mixes the slopes of two pieces.
So the step must stay below the distance to the nearest kink (every image in the batch
brings its own units, and so its own kinks). With the reference weights and the default batch
of 4, that is 2.9e-5 for conv1's largest-gradient weight. float64 can afford such a step.
float32 cannot: over 2.9e-5 that loss changes by about 1.5 of its own rounding units. And
float32's textbook step, cbrt(eps) = 5e-3, crosses kinks, where float64 is just as wrong
(~1e-1 on conv1.weight): the kink, not float32, spoils it.

The command prints errors at the textbook steps (and how many steps crossed a kink), draws
the error against h from 1e-1 down to 1e-10 with each curve's best step, and runs
torch.autograd.gradcheck on stage 1's gradients through a torch.autograd.Function.

Run: python -m common.tools.gradcheck [--coords 6] [--out runs/gradcheck/step-size.png]
"""
from __future__ import annotations

import inspect
import json
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.autograd.gradcheck import GradcheckError

from common import cli
from common.cli import HelpFormatter, OneLineParser, positive_int
from common.data import SYNTHETIC_NAME
from common.errors import BAD_INPUT
from common.harness import relative_error, sample_batches
from common.tools.figures import save_figure, write_whole
from common.tools.program import run_program
from common.weights import PARAM_NAMES, reference_params
from stages import stage01_numpy as stage1

NP_DTYPES = {"float64": np.float64, "float32": np.float32}  # float64 first: the order of the tables
KINDS = ("one-sided", "central")
# textbook steps, sqrt(eps) one-sided and cbrt(eps) central: the best for a smooth loss of unit scale
STEP = {("float64", "one-sided"): 1.5e-8, ("float64", "central"): 6e-6,
        ("float32", "one-sided"): 3.5e-4, ("float32", "central"): 5e-3}
FLOAT64_GOAL = 1e-7
FIGURE_PARAMS = ("conv1.weight", "fc1.weight", "fc3.bias")  # before all kinks, between them, after the last
GRADCHECK_DEFAULTS = {name: inspect.signature(torch.autograd.gradcheck).parameters[name].default
                      for name in ("eps", "atol", "rtol")}


# ---------------------------------------------------------------- the loss and its linear piece
@dataclass
class Point:
    """Parameters and a batch in one dtype, the loss there, and the linear piece it lies on."""
    params: dict
    x: np.ndarray
    y: np.ndarray
    loss: float
    piece: bytes


def linear_piece(cache: dict) -> bytes:
    """Which side of every kink the network is on: which pooled units are positive, which input
    won each of their windows, which fc units are positive. With these fixed, the logits are
    affine in any one parameter. Two points on the same piece give the same bytes."""
    pooled1, winner1 = stage1.max_pool2x2(cache["r1"])  # (N, 6, 14, 14)
    pooled2, winner2 = cache["flat"].reshape(cache["pooled_shape"]), cache["winner2"]  # (N, 16, 5, 5)
    sides = [pooled1 > 0, np.where(pooled1 > 0, winner1, -1), pooled2 > 0, np.where(pooled2 > 0, winner2, -1),
             cache["h1"] > 0, cache["h2"] > 0]
    return b"".join(np.asarray(side, dtype=np.int8).tobytes() for side in sides)


def loss_and_piece(params: dict, x: np.ndarray, y: np.ndarray) -> tuple[float, bytes]:
    logits, cache = stage1.forward_with_cache(params, x)
    loss, _ = stage1.cross_entropy(logits, y)
    return float(loss), linear_piece(cache)


def reference_point(dtype: str, batch_size: int = 4, seed: int = 0) -> Point:
    """The reference weights and one batch of synthetic images, in `dtype`."""
    [(x, y)] = sample_batches(1, batch_size, seed)
    params = {name: value.astype(NP_DTYPES[dtype]) for name, value in reference_params(seed).items()}
    x = x.astype(NP_DTYPES[dtype])
    return Point(params, x, y, *loss_and_piece(params, x, y))


def analytic_gradients(point: Point) -> dict:
    logits, cache = stage1.forward_with_cache(point.params, point.x)
    _, dlogits = stage1.cross_entropy(logits, point.y)
    return stage1.backward(point.params, cache, dlogits)


def largest_gradient_indices(grad: np.ndarray, coords: int) -> list[tuple]:
    flat = np.argsort(-np.abs(grad), axis=None, kind="stable")[:coords]
    return [tuple(int(i) for i in np.unravel_index(f, grad.shape)) for f in flat]


# ---------------------------------------------------------------- finite differences
def moved_loss(point: Point, name: str, index: tuple, h: float) -> tuple[float, float, bool]:
    """The loss with one coordinate moved by h, the step as the dtype stores it, and whether the
    move crossed a kink."""
    params = dict(point.params)
    params[name] = point.params[name].copy()
    params[name][index] += h
    step = float(params[name][index]) - float(point.params[name][index])
    loss, piece = loss_and_piece(params, point.x, point.y)
    return loss, step, piece != point.piece


def finite_differences(point: Point, name: str, index: tuple, h: float) -> dict:
    """{kind: (finite difference, whether a step crossed a kink)}, both kinds from the same two
    moves, in the point's dtype. NaN where h is too small to change the parameter at all."""
    up, step_up, crossed_up = moved_loss(point, name, index, h)
    down, step_down, crossed_down = moved_loss(point, name, index, -h)
    return {"one-sided": ((up - point.loss) / step_up if step_up else math.nan, crossed_up),
            "central": ((up - down) / (step_up - step_down) if step_up != step_down else math.nan,
                        crossed_up or crossed_down)}


def nearest_kink(point: Point, name: str, index: tuple, sign: int) -> float:
    """How far the coordinate moves (up for sign +1, down for -1) before the piece changes:
    scanned decade by decade from 1e-10 to 1e-1, then bisected. inf: no kink within 1e-1."""
    def crosses(h: float) -> bool:
        return moved_loss(point, name, index, sign * h)[2]

    below = 0.0
    for h in np.logspace(-10, -1, 10):
        if crosses(h):
            above = h
            for _ in range(8):  # each halves the bracket's width on the log scale: 1% in the end
                middle = math.sqrt(below * above) if below else above / 10
                below, above = (middle, above) if not crosses(middle) else (below, middle)
            return math.sqrt(below * above) if below else above
        below = h
    return math.inf


# ---------------------------------------------------------------- the table: textbook steps
class Cell(NamedTuple):
    error: float  # max |finite difference - gradient| / max |gradient| over the coordinates
    crossed: int  # for how many coordinates a step crossed a kink
    coords: int


COLUMNS = {  # column: the dtype and kind of the finite difference, and its step
    "one-sided f64": ("float64", "one-sided", STEP["float64", "one-sided"]),
    "central f64": ("float64", "central", STEP["float64", "central"]),
    "f64 at f32's h": ("float64", "central", STEP["float32", "central"]),
    "one-sided f32": ("float32", "one-sided", STEP["float32", "one-sided"]),
    "central f32": ("float32", "central", STEP["float32", "central"]),
}


def check(coords: int = 6, batch_size: int = 4, seed: int = 0, names=PARAM_NAMES) -> dict:
    """{param: {column: Cell}} over the `coords` largest-gradient coordinates of each param;
    the last column compares the whole float32 analytic gradient with the float64 one."""
    points = {dtype: reference_point(dtype, batch_size, seed) for dtype in NP_DTYPES}
    analytic = {dtype: analytic_gradients(point) for dtype, point in points.items()}
    table = {}
    for name in names:
        indices = largest_gradient_indices(analytic["float64"][name], coords)
        row = {}
        for column, (dtype, kind, h) in COLUMNS.items():
            exact = np.array([analytic[dtype][name][i] for i in indices])
            fds, crossed = zip(*(finite_differences(points[dtype], name, i, h)[kind] for i in indices))
            row[column] = Cell(relative_error(np.array(fds), exact), sum(crossed), len(indices))
        row["f32 vs f64 grad"] = Cell(relative_error(analytic["float32"][name], analytic["float64"][name]), 0, 0)
        table[name] = row
    return table


def worst(table: dict, column: str) -> Cell:
    cells = [row[column] for row in table.values()]
    return Cell(max(c.error for c in cells), sum(c.crossed for c in cells), sum(c.coords for c in cells))


def verdicts(table: dict) -> list[str]:
    f64, f64_at_f32_step = worst(table, "central f64"), worst(table, "f64 at f32's h")
    f32, analytic = worst(table, "central f32"), worst(table, "f32 vs f64 grad")
    checked = "check" if f64.error <= FLOAT64_GOAL and not f64.crossed else "DO NOT check"
    return [
        f"float64, central, h = {STEP['float64', 'central']:.0e}: agrees with the analytic gradients to "
        f"{f64.error:.1e} (goal {FLOAT64_GOAL:.0e}); {f64.crossed} of {f64.coords} steps crossed a kink: "
        f"the gradients {checked}.",
        f"h = {STEP['float32', 'central']:.0e}, float32's textbook central step: float32 is off by up to "
        f"{f32.error:.1e}, and float64 too, by up to {f64_at_f32_step.error:.1e}: {f64_at_f32_step.crossed} of "
        f"{f64_at_f32_step.coords} such steps cross a relu or max-pool kink and mix the slopes of two pieces.",
        f"The float32 analytic gradients match float64's to {analytic.error:.1e}: in float32 it is the finite "
        "difference that fails, not the gradient. Below, why no float32 step does well.",
    ]


def format_table(table: dict) -> str:
    columns = list(next(iter(table.values())))
    steps = [f"h={COLUMNS[c][2]:.1e}" if c in COLUMNS else "(whole tensor)" for c in columns]
    lines = [f"{'parameter':<14}" + "".join(f"{c:>17}" for c in columns),
             f"{'':<14}" + "".join(f"{s:>17}" for s in steps)]
    for name, row in table.items():
        cells = [f"{c.error:.1e}" + (f" [{c.crossed}]" if c.crossed else "    ") for c in row.values()]
        lines.append(f"{name:<14}" + "".join(f"{c:>17}" for c in cells))
    return "\n".join(lines)


# ---------------------------------------------------------------- the error against the step h
@dataclass
class Scan:
    """One coordinate's finite-difference errors over a range of steps, both kinds, both dtypes."""
    name: str
    index: tuple
    gradient: float  # the float64 analytic gradient there
    loss: float
    steps: np.ndarray  # (S,), from 1e-1 down to 1e-10
    errors: dict  # (dtype, kind) -> (S,) relative errors; NaN where h does not move the parameter
    kink_up: float  # how far up the nearest kink is; inf if none within 1e-1
    kink_down: float

    def best(self, dtype: str, kind: str) -> tuple[float, float]:
        """The step with the smallest error, and that error."""
        i = int(np.nanargmin(self.errors[dtype, kind]))
        return float(self.steps[i]), float(self.errors[dtype, kind][i])

    def rounding_estimate(self, dtype: str, h):
        """eps * L / (h * |g|): the order of the relative error that rounding the loss causes."""
        return np.finfo(NP_DTYPES[dtype]).eps * self.loss / (h * abs(self.gradient))


def scan_steps(name: str, steps_per_decade: int = 6, batch_size: int = 4, seed: int = 0) -> Scan:
    """Both kinds in both dtypes at the largest-gradient coordinate of `name`. One coordinate has
    one nearest kink, which the figure can mark; and as rounding's relative error goes as
    1 / |gradient|, the largest gradient is float32's best case."""
    points = {dtype: reference_point(dtype, batch_size, seed) for dtype in NP_DTYPES}
    analytic = {dtype: analytic_gradients(point)[name] for dtype, point in points.items()}
    [index] = largest_gradient_indices(analytic["float64"], 1)
    steps = np.logspace(-1, -10, 9 * steps_per_decade + 1)
    errors = {}
    for dtype, point in points.items():
        exact = float(analytic[dtype][index])
        differences = [finite_differences(point, name, index, h) for h in steps]
        for kind in KINDS:
            fds = np.array([d[kind][0] for d in differences])
            errors[dtype, kind] = np.abs(fds - exact) / abs(exact)
    point = points["float64"]
    return Scan(name, index, float(analytic["float64"][index]), point.loss, steps, errors,
                nearest_kink(point, name, index, +1), nearest_kink(point, name, index, -1))


def format_scans(scans: list[Scan]) -> str:
    def distance(kink: float) -> str:
        return f"{kink:.1e}" if math.isfinite(kink) else "none"

    lines = [f"{'parameter':<14}{'nearest kink up, down':>24}" + "".join(f"{f'{d} {k}':>21}" for d in NP_DTYPES
                                                                       for k in KINDS)]
    for scan in scans:
        best = [scan.best(d, k) for d in NP_DTYPES for k in KINDS]
        lines.append(f"{scan.name:<14}{f'{distance(scan.kink_up)}, {distance(scan.kink_down)}':>24}"
                     + "".join(f"{f'h={h:.0e}: {e:.1e}':>21}" for h, e in best))
    return "\n".join(lines)


def step_verdicts(scans: list[Scan]) -> list[str]:
    lines = []
    for scan in scans:
        kink = min(scan.kink_up, scan.kink_down)
        where = (f"nearest kink {kink:.1e} away, where float32's rounding estimate eps*L/(h*|g|) is already "
                 f"{scan.rounding_estimate('float32', kink):.1e}" if math.isfinite(kink) else "no kink")
        lines.append(f"{scan.name}: {where}; best central error: float64 {scan.best('float64', 'central')[1]:.1e}, "
                     f"float32 {scan.best('float32', 'central')[1]:.1e}.")
    return lines


# ---------------------------------------------------------------- the figure
COLORS, LINESTYLES = {"float64": "C0", "float32": "C1"}, {"one-sided": "--", "central": "-"}
# The README shows the figure about 900 px wide: one panel per row at that width, and no text
# under 9 points (12 px there), so that every label can be read where the figure is shown.
FIGURE_WIDTH_INCHES, PANEL_HEIGHT_INCHES, DPI = 9, 5.2, 100
SMALL, NORMAL = 9, 10.5  # points: the notes inside the panels, and the axis labels and legend


def truncation_guide(scan: Scan, kind: str) -> tuple[np.ndarray, np.ndarray] | None:
    """A line of slope 1 (one-sided) or 2 (central), a factor 10 under the float64 errors, from
    the first step below the nearest kink whose error is ten times the rounding estimate, down
    to where rounding takes over. None where no step is that clean."""
    power = 1 if kind == "one-sided" else 2
    kink = scan.kink_up if kind == "one-sided" else min(scan.kink_up, scan.kink_down)
    errors, rounding = scan.errors["float64", kind], scan.rounding_estimate("float64", scan.steps)
    clean = np.flatnonzero((scan.steps < kink) & (errors > 10 * rounding))
    if len(clean) == 0:
        return None
    anchor = clean[0]
    line = errors[anchor] * (scan.steps / scan.steps[anchor]) ** power
    shown = (scan.steps <= scan.steps[anchor]) & (line > rounding)
    return scan.steps[shown], line[shown] / 10


def draw_kinks(ax, scan: Scan) -> None:
    """Shade the steps that cross a kink (a central difference crosses the nearer one)."""
    kink = min(scan.kink_up, scan.kink_down)
    if math.isfinite(kink):
        ax.axvspan(kink, 1, color="red", alpha=0.08, lw=0)
        text = (f"kink region: the step crosses\na relu or max-pool kink\n"
                f"(nearest {scan.kink_up:.1e} up, {scan.kink_down:.1e} down)")
    else:
        text = f"no kink within 1e-1:\n{scan.name} acts after the last relu"
    ax.text(0.98, 0.97, text, transform=ax.transAxes, ha="right", va="top", fontsize=SMALL, color="darkred")


def draw_errors(ax, scan: Scan) -> None:
    """The four error curves, each dtype's rounding estimate, and each curve's best step."""
    for dtype, color in COLORS.items():
        ax.loglog(scan.steps, scan.rounding_estimate(dtype, scan.steps), ":", color=color, lw=1)
        for kind, style in LINESTYLES.items():
            ax.loglog(scan.steps, scan.errors[dtype, kind], style, color=color, lw=1.3, marker=".", ms=4)
            ax.plot(*scan.best(dtype, kind), "*", color=color, ms=14, mec="black", mew=0.6)
    ax.text(0.02, 0.97, "rounding region: error ~ ε·L / (h·|g|)\n(dotted, ε of each dtype)", transform=ax.transAxes,
            va="top", fontsize=SMALL, color="0.25")
    unchanged = np.flatnonzero(scan.errors["float32", "central"] == 1.0)
    if len(unchanged):
        ax.text(scan.steps[unchanged[0]], 0.4, "float32: the loss does\nnot change, error 1", fontsize=SMALL,
                color=COLORS["float32"], ha="right", va="top")
    best = [f"best {dtype} {kind:>9}: h = {scan.best(dtype, kind)[0]:.0e}, error {scan.best(dtype, kind)[1]:.1e}"
            for dtype in COLORS for kind in LINESTYLES]
    ax.text(0.02, 0.02, "\n".join(best), transform=ax.transAxes, fontsize=SMALL, family="monospace",
            va="bottom", bbox=dict(facecolor="white", edgecolor="0.8", alpha=0.9))


def draw_truncation_guides(ax, scan: Scan) -> None:
    for kind, label in (("one-sided", "∝ h"), ("central", "∝ h²")):
        guide = truncation_guide(scan, kind)
        if guide is not None:
            steps, errors = guide
            ax.loglog(steps, errors, color="black", lw=1, ls="-.")
            middle = len(steps) // 2
            ax.text(steps[middle], errors[middle] / 4, f"truncation {label}", fontsize=SMALL, ha="left", va="top")


def draw_scans(scans: list[Scan], batch_size: int):
    """One panel per parameter, one above the other: the error against h in both dtypes and
    kinds, with the kink, truncation and rounding regions labelled and each curve's best step starred."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    # a Figure made without pyplot is freed with its last reference: nothing to close
    fig = Figure(figsize=(FIGURE_WIDTH_INCHES, PANEL_HEIGHT_INCHES * len(scans) + 1.4), layout="constrained")
    axes = fig.subplots(len(scans), 1, sharex=True, squeeze=False)[:, 0]
    for ax, scan in zip(axes, scans):
        draw_kinks(ax, scan)
        draw_errors(ax, scan)
        draw_truncation_guides(ax, scan)
        ax.set(xlim=(scan.steps.min(), scan.steps.max()), ylim=(1e-13, 1e2),
               ylabel="|finite difference − gradient|\n/ |gradient|")
        ax.set_title(f"{scan.name}{list(scan.index)}: gradient {scan.gradient:.3g}", fontsize=NORMAL + 1)
        ax.grid(True, which="major", alpha=0.3)
        ax.xaxis.set_tick_params(labelbottom=True)  # every panel keeps its step axis, read without scrolling
    axes[-1].set_xlabel("step h")
    handles = [Line2D([], [], color=color, ls=style, marker=".", label=f"{dtype} {kind}")
               for dtype, color in COLORS.items() for kind, style in LINESTYLES.items()]
    handles += [Line2D([], [], color="0.4", ls=":", label="rounding estimate ε·L / (h·|g|)"),
                Line2D([], [], color="black", ls="-.", label="truncation slope (×0.1)"),
                Line2D([], [], color="0.6", marker="*", ms=12, mec="black", ls="", label="best step")]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=NORMAL, frameon=False)
    fig.suptitle(f"Finite-difference error against the step h: stage 1's loss L on a batch of {batch_size} "
                 f"images\n({SYNTHETIC_NAME}), at each parameter's largest-gradient coordinate",
                 fontsize=NORMAL + 1.5)
    return fig


def plot_scans(scans: list[Scan], path: Path, batch_size: int) -> None:
    """The figure of draw_scans, written to `path`, DPI pixels per inch: 900 px wide."""
    save_figure(draw_scans(scans, batch_size), path, dpi=DPI)  # to a temporary name, renamed: never a partial figure


# ---------------------------------------------------------------- torch.autograd.gradcheck
class Stage1Loss(torch.autograd.Function):
    """Stage 1's loss as one autograd op whose forward and backward are the hand-written numpy
    ones. x and y are constants (numpy arrays); the parameters are the inputs."""

    @staticmethod
    def forward(ctx, x, y, *params):
        # copies: gradcheck perturbs its inputs in place, and backward needs these values
        ctx.params = {name: p.detach().numpy().copy() for name, p in zip(PARAM_NAMES, params)}
        logits, ctx.cache = stage1.forward_with_cache(ctx.params, x)
        loss, ctx.dlogits = stage1.cross_entropy(logits, y)
        return torch.tensor(float(loss), dtype=params[0].dtype)

    @staticmethod
    def backward(ctx, grad_output):
        grads = stage1.backward(ctx.params, ctx.cache, ctx.dlogits)
        return None, None, *(grad_output * torch.from_numpy(grads[name]) for name in PARAM_NAMES)


class TorchCheck(NamedTuple):
    passed: bool
    message: str  # gradcheck's report when it fails
    pieces: int  # how many linear pieces the points it evaluated lie on: 1, no kink was crossed


def run_gradcheck(point: Point, inputs: tuple, params_at) -> TorchCheck:
    """torch.autograd.gradcheck, every default, of the loss at params_at(*inputs), noting the
    linear piece of every point it evaluates."""
    pieces = set()

    def loss(*inputs):
        params = params_at(*inputs)
        pieces.add(loss_and_piece({n: p.detach().numpy() for n, p in zip(PARAM_NAMES, params)}, point.x, point.y)[1])
        return Stage1Loss.apply(point.x, point.y, *params)

    with warnings.catch_warnings():  # it warns that inputs not in float64 will likely fail: they do, as shown
        warnings.filterwarnings("ignore", "Input #", UserWarning)
        try:
            torch.autograd.gradcheck(loss, inputs)
            return TorchCheck(True, "", len(pieces))
        except GradcheckError as err:
            return TorchCheck(False, str(err), len(pieces))


def gradcheck_parameter(dtype: str, name: str, batch_size: int = 4, seed: int = 0) -> TorchCheck:
    """gradcheck on one parameter tensor, every element (the others constant)."""
    point = reference_point(dtype, batch_size, seed)
    params = tuple(torch.tensor(point.params[n], requires_grad=n == name) for n in PARAM_NAMES)
    return run_gradcheck(point, params, lambda *params: params)


def gradcheck_directions(dtype: str, batch_size: int = 4, seed: int = 0) -> TorchCheck:
    """gradcheck on t -> L(p_1 + t_1 u_1, ..., p_10 + t_10 u_10) at t = 0, with a random unit
    direction u_k in every parameter tensor. It perturbs 10 numbers (each twice), not 62,006,
    and checks one projection of every tensor's gradient g_k: autograd's chain rule makes
    dL/dt_k = <g_k, u_k>. One number per tensor: a wrong element of a large tensor can pass
    (zeroing one large element of fc1.weight's gradient does; tests/claims/test_stage01_numpy.py).
    (gradcheck's fast_mode draws random directions too, but when it fails it recomputes the
    numerical Jacobian one number at a time for its error message: 124,012 losses here.)"""
    point = reference_point(dtype, batch_size, seed)
    params = [torch.tensor(point.params[n]) for n in PARAM_NAMES]
    generator = torch.Generator().manual_seed(seed)
    directions = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    directions = [u / u.norm() for u in directions]
    t = torch.zeros(len(params), dtype=params[0].dtype, requires_grad=True)
    return run_gradcheck(point, (t,), lambda t: [p + t[k] * u for k, (p, u) in enumerate(zip(params, directions))])


def rounding_units_moved(dtype: str, name: str, h: float, batch_size: int = 4,
                         seed: int = 0) -> tuple[np.ndarray, float]:
    """L(p + h) - L(p - h) for every coordinate of `name`, counted in the loss's rounding unit
    (np.spacing: the gap to the next number the dtype holds), and that unit."""
    point = reference_point(dtype, batch_size, seed)
    unit = float(np.spacing(NP_DTYPES[dtype](point.loss)))
    moves = [moved_loss(point, name, i, h)[0] - moved_loss(point, name, i, -h)[0]
             for i in np.ndindex(point.params[name].shape)]
    return np.array(moves) / unit, unit


def reported_numbers(message: str) -> list[list[str]]:
    """The numerical and the analytical numbers in gradcheck's mismatch report, as printed."""
    parts = re.split(r"numerical:|analytical:", message)[1:3]
    return [re.findall(r"-?\d+\.\d+(?:e[-+]?\d+)?", part) for part in parts]


def short_report(message: str) -> str:
    """gradcheck's mismatch report on one line: its first line, then the two columns of numbers."""
    numbers = reported_numbers(message)
    if len(numbers) < 2:
        return " ".join(message.split())
    return (message.splitlines()[0].rstrip(",") + f"; numerical [{' '.join(numbers[0])}], "
            f"analytical [{' '.join(numbers[1])}]")


def torch_checks(batch_size: int = 4, seed: int = 0) -> dict:
    """gradcheck in float64 on every parameter tensor along a random direction and on every
    element of fc3.bias, in float32 on fc3.bias; and how far its eps moves the loss there."""
    eps, size = GRADCHECK_DEFAULTS["eps"], dict(batch_size=batch_size, seed=seed)
    return {
        "float64, every tensor along a direction": gradcheck_directions("float64", **size),
        "float64, fc3.bias": gradcheck_parameter("float64", "fc3.bias", **size),
        "float32, fc3.bias": gradcheck_parameter("float32", "fc3.bias", **size),
        "float64 units moved": rounding_units_moved("float64", "fc3.bias", eps, **size),
        "float32 units moved": rounding_units_moved("float32", "fc3.bias", eps, **size),
    }


def torch_verdicts(checks: dict) -> list[str]:
    eps = GRADCHECK_DEFAULTS["eps"]
    outcome = {True: "passes", False: "FAILS"}
    every, bias64 = checks["float64, every tensor along a direction"], checks["float64, fc3.bias"]
    bias32 = checks["float32, fc3.bias"]
    (units64, _), (units32, unit32) = checks["float64 units moved"], checks["float32 units moved"]
    return [
        f"float64, every parameter tensor along a random unit direction: {outcome[every.passed]}"
        + ("" if every.passed else ": " + short_report(every.message))
        + f"; the points it evaluated lie on {every.pieces} linear piece(s): "
        + ("eps crossed no kink." if every.pieces == 1 else "eps CROSSED A KINK."),
        f"float64, fc3.bias, every element: {outcome[bias64.passed]}.",
        f"float32, fc3.bias, every element: {outcome[bias32.passed]}"
        + ("." if bias32.passed else ": " + short_report(bias32.message)),
        f"  why: a step of eps = {eps:.0e} moves the float32 loss by {np.round(units32).astype(int).tolist()} "
        f"rounding units ({unit32:.1e} each; in float64, by {np.abs(units64).min():.1e} units or more of its own), "
        f"so every numerical derivative is a whole number times {unit32:.1e} / (2 eps) = {unit32 / (2 * eps):.3f}. "
        "fc3.bias has the largest gradients and no kink: float32's best case. gradcheck's defaults are designed "
        "for float64 inputs.",
    ]


# ---------------------------------------------------------------- the command
def writable_figure(parser: OneLineParser, out: str) -> Path:
    """--out as a path whose folder exists, or one line and exit code 2."""
    path = Path(out)
    try:
        if path.suffix.lower() not in (".png", ".pdf", ".svg"):
            raise ValueError("the figure's name must end in .png, .pdf or .svg")
        if path.is_dir():
            raise ValueError("that is a folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK):
            raise ValueError("its folder is not writable")
    except (OSError, ValueError) as err:
        why = "a file, not a folder" if isinstance(err, (FileExistsError, NotADirectoryError)) else \
            err.strerror if isinstance(err, OSError) else err
        parser.exit(BAD_INPUT, f"{parser.prog}: error: cannot write --out {out}: {why}\n")
    return path


def as_record(table: dict, scans: list[Scan], checks: dict, args) -> dict:
    """Everything the command printed and drew, as JSON-ready numbers."""
    return {
        "batch_size": args.batch_size, "seed": args.seed, "coords": args.coords,
        "table": {name: {column: cell._asdict() for column, cell in row.items()} for name, row in table.items()},
        "scans": {scan.name: {
            "index": scan.index, "gradient": scan.gradient, "loss": scan.loss,
            "kink_up": scan.kink_up, "kink_down": scan.kink_down, "steps": scan.steps.tolist(),
            "errors": {f"{dtype} {kind}": scan.errors[dtype, kind].tolist() for dtype in NP_DTYPES for kind in KINDS},
            "best": {f"{dtype} {kind}": scan.best(dtype, kind) for dtype in NP_DTYPES for kind in KINDS},
        } for scan in scans},
        "torch": {what: ({"units": result[0].tolist(), "unit": result[1]} if "units" in what else result._asdict())
                  for what, result in checks.items()},
    }


def main(argv=None) -> dict:
    parser = OneLineParser(prog="python -m common.tools.gradcheck", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--coords", type=positive_int, default=6, help="largest-gradient coordinates per parameter")
    parser.add_argument("--batch-size", type=cli.batch_size, default=4, help="images in the batch")
    parser.add_argument("--seed", type=cli.seed, default=0, help="seed for weights and images")
    parser.add_argument("--steps-per-decade", type=positive_int, default=6, help="steps h per factor of 10 (figure)")
    parser.add_argument("--out", default="runs/gradcheck/step-size.png",
                        help="the figure (.png, .pdf or .svg); the numbers go beside it, as .json")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    out = writable_figure(parser, args.out)

    table = check(args.coords, args.batch_size, args.seed)
    print(f"Relative error of finite differences against stage 1's analytic gradients, max over the {args.coords} "
          "largest-gradient coordinates of each parameter ([n]: for n of them a step crossed a kink):")
    print(format_table(table))
    print("\n".join(verdicts(table)))

    scans = [scan_steps(name, args.steps_per_decade, args.batch_size, args.seed) for name in FIGURE_PARAMS]
    plot_scans(scans, out, args.batch_size)
    print("\nThe best step h and its error, at each parameter's largest-gradient coordinate:")
    print(format_scans(scans))
    print("\n".join(step_verdicts(scans)))

    print("\ntorch.autograd.gradcheck on stage 1's hand-written gradients, through a torch.autograd.Function "
          "(defaults: " + ", ".join(f"{k}={v:.0e}" for k, v in GRADCHECK_DEFAULTS.items()) + "):")
    checks = torch_checks(args.batch_size, args.seed)
    print("\n".join(torch_verdicts(checks)))

    record = as_record(table, scans, checks, args)
    write_whole(out.with_suffix(".json"), lambda f: f.write((json.dumps(record, indent=1) + "\n").encode()))
    print(f"\nwritten: {out}, {out.with_suffix('.json')}")
    return record


if __name__ == "__main__":
    run_program(main)  # one line and an exit code for every ending (common/tools/program.py)
