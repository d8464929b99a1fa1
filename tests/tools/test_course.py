"""The course runner: progress and total time, a summary named after the kind of run (so a smoke or
partial run never replaces the full course's), and a summary figure that states its numbers."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from common.harness import stage_names
from common.tools.figures import plt
from common.tools import course
from tests.helpers import ONE_EPOCH

ALL = list(range(1, len(stage_names()) + 1))


def run_course(argv: list[str]) -> tuple[str, list[dict]]:
    """What the course prints on stdout (the progress bars go to stderr), and what it returns."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        summaries = course.main(argv)
    return out.getvalue(), summaries


def seconds(text: str) -> float:
    """Back from course.format_duration: "4.2s" or "3m 05s"."""
    minutes, _, rest = text.rpartition("m ")
    return 60 * int(minutes or 0) + float(rest.rstrip("s"))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- naming the summary
def test_only_a_full_run_gets_the_plain_summary_name():
    assert course.summary_name(ALL, ALL, None) == "course-summary"
    assert course.summary_name(ALL, ALL, 20) == "course-summary-smoke"
    assert course.summary_name([3], ALL, None) == "course-summary-stages-3"
    assert course.summary_name([3, 1], ALL, 20) == "course-summary-stages-1-3-smoke"
    assert course.summary_name(list(reversed(ALL)), ALL, None) == "course-summary", "every stage, in any order"


# ---------------------------------------------------------------- three runs into one folder
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A full run, then a smoke run, then a partial run, into one --out folder, as a learner
    would do `make run`, `make smoke`, `make run STAGE=4`. So that a full run takes seconds,
    the course is made of two stages here and the batches are large."""
    out = tmp_path_factory.mktemp("runs")
    two_stages = ["stages.stage04_functional", "stages.stage05_module"]
    printed = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(course, "stage_names", lambda: two_stages)
        printed["full"] = run_course(ONE_EPOCH + ["--batch-size", "500", "--out", str(out)])
        full_png = digest(out / "course-summary.png")
        printed["smoke"] = run_course(ONE_EPOCH + ["--max-steps", "3", "--out", str(out)])
    printed["partial"] = run_course(ONE_EPOCH + ["--stages", "4", "--max-steps", "3", "--out", str(out)])
    return out, printed, full_png


def test_progress_says_stage_k_of_n_with_the_time_so_far(runs):
    _, printed, _ = runs
    stdout, summaries = printed["full"]
    lines = stdout.splitlines()
    progress = [re.fullmatch(r"=== stage (\d+) of (\d+): (\w+) \((.+) so far\) ===", line) for line in lines]
    progress = [m.groups() for m in progress if m]
    assert [(k, n, name) for k, n, name, _ in progress] == [
        ("1", "2", "stage04_functional"), ("2", "2", "stage05_module")]
    assert seconds(progress[0][3]) < 1.0, "the clock starts with the course"
    assert seconds(progress[1][3]) >= summaries[0]["seconds"] - 0.05, "stage 2 starts after stage 1's time"


def test_the_course_ends_with_the_summary_table_the_total_time_and_what_to_do_next(runs):
    _, printed, _ = runs
    stdout, summaries = printed["full"]
    lines = stdout.strip().splitlines()
    assert any(line.startswith("stage ") and "final loss" in line and "test accuracy" in line for line in lines)
    after = next(i for i, line in enumerate(lines) if line.startswith("total time: "))
    total = re.fullmatch(r"total time: (.+) for 2 stages", lines[after])
    assert total, lines[after]
    assert lines[after + 1].startswith("next: make site"), lines[after + 1:]
    assert seconds(total.group(1)) >= sum(s["seconds"] for s in summaries) - 0.05


def test_a_full_run_writes_the_full_summary_with_each_stages_record(runs):
    out, _, _ = runs
    summary = json.loads((out / "course-summary.json").read_text())
    assert summary["full"] is True and summary["max_steps"] is None and summary["epochs"] == 1
    assert [s["stage"] for s in summary["summaries"]] == ["stage04_functional", "stage05_module"]
    for s in summary["summaries"]:
        assert s["steps"] == 16  # 8000 synthetic training images in batches of 500
        record = out / s["record"]  # relative to the summary's folder
        assert record.parent.name == s["stage"] and (record / "curves.png").exists()


def test_smoke_and_partial_runs_write_their_own_summaries_and_keep_the_full_one(runs):
    out, _, full_png = runs
    assert digest(out / "course-summary.png") == full_png, "the full course's figure is untouched"
    full = json.loads((out / "course-summary.json").read_text())
    smoke = json.loads((out / "course-summary-smoke.json").read_text())
    partial = json.loads((out / "course-summary-stages-4-smoke.json").read_text())
    assert full["full"] and not smoke["full"] and not partial["full"]
    assert smoke["max_steps"] == 3 and [s["steps"] for s in smoke["summaries"]] == [3, 3]
    assert partial["stages"] == [4] and (out / "course-summary-stages-4-smoke.png").exists()
    assert {s["record"] for s in full["summaries"]}.isdisjoint(s["record"] for s in smoke["summaries"])


def test_an_unknown_stage_is_one_line_and_exit_code_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        course.main(["--stages", "99"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.count("\n") == 1 and "no stage 99" in err and "Traceback" not in err


# ---------------------------------------------------------------- the summary figure
def fake_record(root: Path, stage: str, losses: np.ndarray, accuracy: float) -> dict:
    record = root / stage / "20260101-000000"
    record.mkdir(parents=True)
    rows = "".join(f"{i + 1},1,{float(v)!r}\n" for i, v in enumerate(losses))
    (record / "losses.csv").write_text("step,epoch,loss\n" + rows)
    return {"stage": stage, "final_loss": float(losses[-1]), "test_accuracy": accuracy, "seconds": 1.0,
            "steps": len(losses), "record": str(record)}


@pytest.fixture
def figure_of(tmp_path):
    """draw_course over fake records: {stage: (losses, accuracy)} -> the Figure, drawn."""
    figures = []

    def draw(stages: dict) -> plt.Figure:
        summaries = [fake_record(tmp_path, name, *values) for name, values in stages.items()]
        fig = course.draw_course(summaries, "a test")
        fig.canvas.draw()  # lays out the legend and texts, so their places can be measured
        figures.append(fig)
        return fig

    yield draw
    for fig in figures:
        plt.close(fig)


def descending(steps: int, seed: int, noise: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 2.3 * np.exp(-np.arange(steps) / (steps / 3)) + 0.2 + noise * rng.random(steps)


def texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_the_accuracy_bars_carry_their_values(figure_of):
    fig = figure_of({"stage06_optim": (descending(2000, 0), 0.957),
                     "stage07_dataloader": (descending(2000, 1), 0.9095)})
    ax_acc = fig.axes[1]
    assert "95.70%" in texts(ax_acc) and "90.95%" in texts(ax_acc)


def test_the_legend_covers_no_curve_and_no_label(figure_of):
    fig = figure_of({f"stage0{k}_x": (descending(2000, k), 0.5) for k in range(1, 6)})
    [legend] = fig.legends
    box = legend.get_window_extent()
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent()), "the legend lies on an axes, over its data"
        assert not box.overlaps(ax.xaxis.label.get_window_extent()), "the legend hides an axis label"
    assert len(legend.get_texts()) == 5


def test_coinciding_curves_are_named_as_coinciding_in_the_figure(figure_of):
    same, other = descending(2000, 0), descending(2000, 7)
    fig = figure_of({"stage01_numpy": (same, 0.5), "stage02_tensors": (same + 1e-7, 0.5),
                     "stage03_autograd": (same + 1e-7, 0.5), "stage07_dataloader": (other, 0.5),
                     "stage08_train_eval": (other, 0.5), "stage11_distributed": (descending(2000, 11), 0.5)})
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["stages 1–3: curves coincide (largest gap 1e-07)", "stages 7–8: identical curves", "stage 11"]


def test_different_curves_are_not_called_coinciding(figure_of):
    fig = figure_of({"stage01_numpy": (descending(2000, 0), 0.5), "stage02_tensors": (descending(2000, 0) + 0.2, 0.5)})
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["stage 1", "stage 2"]


@pytest.mark.parametrize("steps, window", [(2000, 100), (20, 5), (5, 1)])
def test_the_loss_panel_claims_only_the_window_it_used(figure_of, steps, window):
    fig = figure_of({"stage01_numpy": (descending(steps, 0), 0.5)})
    ax_loss = fig.axes[0]
    claim = "loss per step" if window == 1 else f"trailing mean of {window} steps"
    assert claim in ax_loss.get_ylabel()
    [line] = ax_loss.get_lines()
    assert len(line.get_xdata()) == steps - window + 1, "one point per window of that many steps"


def test_the_summary_title_says_which_kind_of_run_it_was():
    run = {"all_stages": True, "stages": ALL, "epochs": 1, "finished": "2026-01-01 12:00:00"}
    assert course.describe(dict(run, full=True, max_steps=None)) == \
        f"the full course: all {len(ALL)} stages, 1 epoch each (finished 2026-01-01 12:00)"
    assert course.describe(dict(run, full=False, max_steps=20)).startswith(
        f"a smoke run: all {len(ALL)} stages, 1 epoch each, stopped at --max-steps 20")
    assert course.describe(dict(run, full=False, all_stages=False, stages=[3], max_steps=None)).startswith(
        "stage 3, 1 epoch (")
