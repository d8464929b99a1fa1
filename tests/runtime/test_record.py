"""What a run leaves: a record folder with its options, losses, accuracy and figure, last lines that
say what it did (and, for a run too short to learn, that it was too short), and a figure that
names its data: the synthetic shapes reach about 95 % in one epoch where CIFAR-10 reaches about
55 %, so a synthetic result must never read as a CIFAR-10 one."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from matplotlib.text import Text

from common.data import SYNTHETIC_NAME, data_name, make_synthetic
from common.errors import DIVERGED, CourseError
from common.harness import stage_options
from common.run import READ_EVERY, StageRun, draw_curves
from tests.helpers import ALL_STAGES, LEARNS, STAGES, run_main


@pytest.mark.parametrize("stage_name", ALL_STAGES)
def test_stage_trains_end_to_end_and_leaves_a_record(stage_name, smoke_run):
    run = smoke_run(stage_name)  # 20 steps, two epochs
    assert "final training loss" in run.out and "test accuracy" in run.out and "time" in run.out
    assert run.summary["steps"] == 20 and 0.0 <= run.summary["test_accuracy"] <= 1.0
    assert run.record.parent.name == stage_name.split(".")[1] and len(list(run.record.parent.iterdir())) == 1
    assert json.loads(run.text("options.json"))["max_steps"] == 20
    with open(run.record / "losses.csv") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == list(range(1, 21))
    assert (run.record / "accuracy.csv").exists() and (run.record / "curves.png").stat().st_size > 10_000
    assert not list(run.record.glob(".*.tmp")), "no temporary file left behind"


def test_a_run_too_short_to_learn_says_so_in_one_line(tmp_path):
    run = run_main(STAGES[0], tmp_path, "--max-steps", "20")  # SMOKE: the synthetic set, which can be learnt
    assert run.summary["test_accuracy"] < 0.2, "20 steps at lr 0.001 stay near chance"
    lines = [line for line in run.out.splitlines() if "too few to learn" in line]
    assert len(lines) == 1 and "--max-steps" in lines[0]


def test_a_run_that_learned_does_not_say_it_was_too_short(shared_run):
    run = shared_run(STAGES[0], preset=LEARNS)  # shared with runtime/test_data.py's learnable synthetic set
    assert run.summary["test_accuracy"] > 0.5
    assert "too few to learn" not in run.out


# ---------------------------------------------------------------- the losses, read back READ_EVERY steps at a time
def logged(tmp_path, losses):
    """A run of the recorder alone, its steps' losses given as tensors, as a stage logs them."""
    args = stage_options(6, ["--out", str(tmp_path), "--epochs", "1"])
    run = StageRun("stage06_optim.py", args)
    with run:
        run.start_epoch(1, steps=len(losses))
        for loss in losses:
            run.log_step(torch.tensor(loss))
            yield run


def rows(run) -> list[dict]:
    with open(run.folder / "losses.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_the_losses_are_read_back_and_written_every_read_every_steps(tmp_path):
    """A GPU waits for the host only when a loss is read back: once per READ_EVERY steps."""
    written = [len(rows(run)) for run in logged(tmp_path, [2.0 + i / 1000 for i in range(2 * READ_EVERY + 5)])]
    assert written[READ_EVERY - 2] == 0 and written[READ_EVERY - 1] == READ_EVERY
    assert written[-1] == 2 * READ_EVERY, "the last 5 wait for the epoch's end"


def test_a_divergence_is_named_at_its_step_though_it_was_read_later(tmp_path, capsys):
    losses = [2.3] * 6 + [math.nan] + [math.nan] * 10
    with pytest.raises(SystemExit) as ended:
        for _ in logged(tmp_path, losses + [2.3] * (READ_EVERY - len(losses))):
            pass
    assert ended.value.code == DIVERGED
    [line] = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert "the loss became nan at step 7: training diverged; try a smaller --lr than 0.001" in line
    [summary] = tmp_path.glob("*/*/summary.json")
    [record] = tmp_path.glob("*/*/")
    assert json.loads(summary.read_text())["complete"] is False
    with open(record / "losses.csv", newline="") as f:
        assert [row["step"] for row in csv.DictReader(f)] == [str(s) for s in range(1, 8)], "up to the NaN"
    assert CourseError.__name__  # the line came from the recorder's one ending, not a traceback


# ---------------------------------------------------------------- the figure names its data
SOURCES = {  # data.source as load_data() gives it -> what the figure must call it
    "synthetic": (make_synthetic(0, n_train=10, n_test=10).source, SYNTHETIC_NAME),
    "cifar10 via torchvision": ("CIFAR-10 via torchvision from data", "CIFAR-10"),
    "cifar10 from .npy": ("CIFAR-10 from the .npy files in /data/cifar", "CIFAR-10"),
}


def record_of(tmp_path):
    record = tmp_path / "stage06_optim" / "20260101-000000"
    record.mkdir(parents=True)
    (record / "losses.csv").write_text("step,epoch,loss\n" + "".join(f"{s},1,{2.3 - s / 100}\n" for s in range(1, 101)))
    (record / "accuracy.csv").write_text("epoch,step,test_accuracy,seconds\n1,100,0.957000,7.00\n")
    return record


@pytest.mark.parametrize("source, name", SOURCES.values(), ids=SOURCES.keys())
def test_the_figure_title_names_the_data(tmp_path, source, name):
    figure = draw_curves(record_of(tmp_path), source)
    assert f"on {name}" in figure.get_suptitle()
    written = " ".join(t.get_text() for t in figure.findobj(Text))
    assert "95.7%" in written, "the accuracy is written on its point"
    if name == "CIFAR-10":
        assert "synthetic" not in written


def test_a_record_that_names_no_data_says_so_rather_than_guess(tmp_path):
    figure = draw_curves(record_of(tmp_path), None)
    written = " ".join(t.get_text() for t in figure.findobj(Text))
    assert "the record names no data" in figure.get_suptitle()
    assert "CIFAR-10" not in written and "synthetic" not in written


def test_the_synthetic_set_is_named_as_not_cifar10_wherever_its_source_says_so():
    assert data_name(make_synthetic(3, n_train=10, n_test=10).source) == "synthetic shapes, not CIFAR-10"
    assert data_name("CIFAR-10 via torchvision from data") == "CIFAR-10"
