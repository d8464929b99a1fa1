"""The figures say what the record holds: read from the matplotlib objects, not from pixels.

Each test writes a fake record (the CSVs a run leaves) and inspects the Figure drawn from it:
its titles, texts, legend entries, axis limits and where the legends sit against the data.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.text import Text

from common.tools.compare import plot as plot_comparison
from common.run.plots import SMOOTHING_STEPS, draw_run, moving_average, plot_run

LAYERS = ("conv1", "conv2", "fc1", "fc2", "fc3")


# ---------------------------------------------------------------- fake records
def write_rows(path: Path, header: tuple, rows) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def fake_record(root: Path, steps: int, accuracies: list[float], grad_norms: bool = False, seed: int = 0) -> Path:
    """runs/stage06_optim/<timestamp>/ as a run leaves it; the loss is noise over its whole
    range, so that any legend drawn inside the axes lands on data."""
    record = root / "stage06_optim" / "20260101-000000"
    record.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    epochs = max(1, len(accuracies))
    per_epoch = max(1, steps // epochs)
    epoch_of = [min(epochs, 1 + (s - 1) // per_epoch) for s in range(1, steps + 1)]
    write_rows(record / "losses.csv", ("step", "epoch", "loss"),
               [(s, e, repr(float(x))) for s, e, x in zip(range(1, steps + 1), epoch_of, rng.uniform(0, 2.5, steps))])
    write_rows(record / "accuracy.csv", ("epoch", "step", "test_accuracy", "seconds"),
               [(e, min(e * per_epoch, steps), f"{a:.6f}", f"{e:.2f}") for e, a in enumerate(accuracies, 1)])
    if grad_norms:
        norms = 10.0 ** rng.uniform(-2, 1, (steps, len(LAYERS)))
        write_rows(record / "grad_norms.csv", ("step", *LAYERS),
                   [(s, *(repr(float(v)) for v in row)) for s, row in zip(range(1, steps + 1), norms)])
    return record


def column(record: Path, name: str, column: str) -> np.ndarray:
    with open(record / name, newline="") as f:
        return np.array([float(row[column]) for row in csv.DictReader(f)])


def fake_comparison(stages: int = 11, steps: int = 20, loss_gap: float = 0.0) -> dict:
    """Curves as common.tools.compare.compare returns them: stage 1 is the reference (deviation 0),
    the others differ at round-off, the last stage by `loss_gap` in its loss."""
    rng = np.random.default_rng(1)
    base = 2.3 + 0.05 * rng.standard_normal(steps)
    by_dtype = {}
    for dtype, noise in (("float64", 1e-16), ("float32", 1e-7)):
        curves = {}
        for i in range(stages):
            loss = base + (noise * rng.standard_normal(steps) if i else 0) + (loss_gap if i == stages - 1 else 0)
            deviation = np.zeros(steps) if i == 0 else noise * (0.5 + rng.random(steps))  # as make compare finds
            curves[f"stage{i + 1:02d}_x"] = {"loss": loss.tolist(), "deviation": deviation.tolist()}
        by_dtype[dtype] = curves
    return by_dtype


# ---------------------------------------------------------------- reading a figure
def texts(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def legend_labels(fig: Figure) -> list[str]:
    return [t.get_text() for legend in all_legends(fig) for t in legend.get_texts()]


def all_legends(fig: Figure) -> list:
    return [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + fig.legends


def line_labelled(ax, pattern: str):
    [line] = [line for line in ax.get_lines() if re.search(pattern, line.get_label())]
    return line


def window_claimed(label: str) -> int:
    return int(re.search(r"moving average\s+of (\d+) steps", label).group(1))


def loss_axes(fig: Figure):
    return fig.axes[0]


def accuracy_axes(fig: Figure):
    return fig.axes[-1]


# ---------------------------------------------------------------- accuracy
def test_one_epoch_writes_its_accuracy_large_with_chance_for_scale(tmp_path):
    fig = draw_run(fake_record(tmp_path, 300, [0.9560]))
    ax = accuracy_axes(fig)
    [value] = [t for t in ax.texts if t.get_text() == "95.60%"]
    assert value.get_fontsize() >= 1.5 * ax.yaxis.get_ticklabels()[0].get_fontsize()
    bottom, top = ax.get_ylim()
    assert bottom == 0 and top >= 100  # the whole scale, so 95.6% looks like what it is
    left, right = ax.get_xlim()
    assert right - left >= 1  # not a hair-thin axis around a single epoch
    assert any(np.allclose(line.get_ydata(), 10) for line in ax.get_lines())
    assert any("chance" in t.get_text() and "10%" in t.get_text() for t in ax.texts)


def test_several_epochs_write_each_accuracy_on_its_point(tmp_path):
    accuracies = [0.4123, 0.5577, 0.6011]
    fig = draw_run(fake_record(tmp_path, 300, accuracies))
    ax = accuracy_axes(fig)
    written = {t.get_text(): tuple(t.xy) for t in ax.texts if hasattr(t, "xy")}
    for epoch, a in enumerate(accuracies, 1):
        assert written[f"{100 * a:.1f}%"] == pytest.approx((epoch, 100 * a))
    assert list(ax.get_xticks()) == [1, 2, 3]  # whole epochs only, no 1.25
    assert "60.11%" in ax.get_title()


def test_many_epochs_write_the_last_value_and_no_two_overlap(tmp_path):
    accuracies = list(np.linspace(0.5, 0.9, 20))
    fig = draw_run(fake_record(tmp_path, 400, accuracies))
    fig.draw_without_rendering()
    boxes = [t.get_bbox_patch().get_window_extent() for t in accuracy_axes(fig).texts if t.get_bbox_patch()]
    assert f"{100 * accuracies[-1]:.1f}%" in texts(fig)
    assert len(boxes) >= 2
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


# ---------------------------------------------------------------- loss and its moving average
@pytest.mark.parametrize("steps", [20, 150, 2000])
def test_the_moving_average_is_labelled_with_the_window_it_used(tmp_path, steps):
    record = fake_record(tmp_path, steps, [0.5])
    loss = column(record, "losses.csv", "loss")
    ax = loss_axes(draw_run(record))
    average = line_labelled(ax, "moving average")
    window = window_claimed(average.get_label())
    assert window <= min(steps, SMOOTHING_STEPS)
    x, y = average.get_data()
    assert len(x) >= 2  # a line one can see, not a single point
    assert x[0] == window and x[-1] == steps  # each point averages the steps up to it, none after
    assert y[0] == pytest.approx(loss[:window].mean()) and y[-1] == pytest.approx(loss[-window:].mean())


def test_a_run_of_a_few_steps_draws_each_step_and_no_average(tmp_path):
    ax = loss_axes(draw_run(fake_record(tmp_path, 5, [0.1])))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["per step"]
    assert line_labelled(ax, "per step").get_marker() not in (None, "None", "")  # one step is a dot, not a line


@pytest.mark.parametrize("steps", [20, 150])
def test_no_text_claims_more_steps_than_the_run_had(tmp_path, steps):
    fig = draw_run(fake_record(tmp_path, steps, [0.5], grad_norms=True))
    claimed = [int(n) for text in texts(fig) for n in re.findall(r"(\d+)\s+(?:training\s+)?steps", text)]
    assert claimed and max(claimed) <= steps


# ---------------------------------------------------------------- gradient norms
def test_gradient_norms_get_a_log_panel_with_one_average_per_layer(tmp_path):
    record = fake_record(tmp_path, 400, [0.5, 0.6], grad_norms=True)
    fig = draw_run(record)
    assert len(fig.axes) == 3
    ax = fig.axes[1]
    assert ax.get_yscale() == "log"
    window = window_claimed(next(label for label in legend_labels(fig) if "moving average" in label))
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= set(LAYERS)
    for layer in LAYERS:
        x, y = line_labelled(ax, f"^{layer}$").get_data()
        assert x[0] == window
        np.testing.assert_allclose(y, moving_average(column(record, "grad_norms.csv", layer), window))
    assert window_claimed(line_labelled(loss_axes(fig), "moving average").get_label()) == window


def test_without_grad_norms_csv_there_is_no_gradient_panel(tmp_path):
    fig = draw_run(fake_record(tmp_path, 400, [0.5]))
    assert len(fig.axes) == 2
    assert all(ax.get_yscale() == "linear" for ax in fig.axes)


# ---------------------------------------------------------------- legends and data
def run_figure(tmp_path, **record):
    return draw_run(fake_record(tmp_path, **record))


FIGURES = {
    "one epoch": lambda tmp: run_figure(tmp, steps=300, accuracies=[0.96]),
    "three epochs near 100%": lambda tmp: run_figure(tmp, steps=300, accuracies=[0.97, 0.99, 0.995]),
    "20 steps with gradient norms": lambda tmp: run_figure(tmp, steps=20, accuracies=[0.12], grad_norms=True),
    "2000 steps with gradient norms": lambda tmp: run_figure(tmp, steps=2000, accuracies=[0.9], grad_norms=True),
    "compare": lambda tmp: plot_comparison(fake_comparison(), tmp / "compare-both.png"),
}


@pytest.mark.parametrize("make_figure", FIGURES.values(), ids=FIGURES.keys())
def test_every_legend_sits_outside_the_axes_so_it_never_covers_data(tmp_path, make_figure):
    fig = make_figure(tmp_path)
    fig.draw_without_rendering()  # lays the figure out as savefig does
    assert all_legends(fig)
    for legend in all_legends(fig):
        box = legend.get_window_extent()
        for ax in fig.axes:
            # inside an axes, a legend that misses these data could cover the next run's
            assert not box.overlaps(ax.get_window_extent()), f"a legend lies on {ax.get_title()!r}"
            for line in ax.get_lines():
                points = line.get_transform().transform(line.get_xydata())
                assert box.count_contains(points) == 0, f"a legend covers {line.get_label()!r}"


# ---------------------------------------------------------------- an interrupted run
def test_a_run_stopped_before_its_first_step_still_gets_a_figure(tmp_path):
    record = tmp_path / "stage06_optim" / "20260101-000000"
    record.mkdir(parents=True)
    write_rows(record / "losses.csv", ("step", "epoch", "loss"), [])
    write_rows(record / "accuracy.csv", ("epoch", "step", "test_accuracy", "seconds"), [])
    path = plot_run(record)
    assert path == record / "curves.png" and path.stat().st_size > 0
    written = texts(draw_run(record))
    assert "no training step recorded" in written
    assert any(text.startswith("no test accuracy") for text in written)


# ---------------------------------------------------------------- compare-both.png
def test_compare_says_the_stages_coincide_instead_of_a_legend_entry_per_stage(tmp_path):
    curves = fake_comparison(stages=11)
    fig = plot_comparison(curves, tmp_path / "compare-both.png")
    assert (tmp_path / "compare-both.png").stat().st_size > 0
    ax_loss = fig.axes[0]
    assert len(ax_loss.get_lines()) == 11 and ax_loss.get_legend() is None
    assert all(len(legend.get_texts()) < 11 for legend in all_legends(fig))
    losses = np.array([c["loss"] for c in curves["float64"].values()])
    spread = (losses.max(axis=0) - losses.min(axis=0)).max()
    title = ax_loss.get_title()
    assert "11 stages" in title and "coincide" in title and f"{spread:.1e}" in title


def test_compare_does_not_call_visibly_different_curves_coinciding(tmp_path):
    fig = plot_comparison(fake_comparison(stages=3, loss_gap=0.05), tmp_path / "compare-both.png")
    title = fig.axes[0].get_title()
    assert "coincide" not in title and "5.0e-02" in title


def test_compare_legend_gives_each_dtypes_largest_deviation_and_its_stage(tmp_path):
    curves = fake_comparison(stages=4)
    curves["float64"]["stage02_x"]["deviation"] = [0.0] * 20  # bit-identical to the reference
    fig = plot_comparison(curves, tmp_path / "compare-both.png")
    labels = legend_labels(fig)
    for dtype, by_stage in curves.items():
        others = {stage: max(c["deviation"]) for stage, c in list(by_stage.items())[1:]}
        worst = max(others, key=others.get)
        [label] = [label for label in labels if label.startswith(dtype) and "tolerance" not in label]
        assert f"{others[worst]:.1e} ({worst})" in label
    assert any("0 drawn at 1e-18" in label for label in labels if label.startswith("float64"))
    assert not any("0 drawn at" in label for label in labels if label.startswith("float32"))
    assert "stage01_x" in fig.axes[1].get_title()
