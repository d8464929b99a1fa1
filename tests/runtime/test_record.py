"""What a run leaves: a record folder with its options, losses, accuracy and figure, and last lines
that say what it did (and, for a run too short to learn, that it was too short)."""
from __future__ import annotations

import csv
import json

import pytest

from tests.helpers import ALL_STAGES, LEARNS, STAGES, run_main


@pytest.mark.parametrize("stage_name", ALL_STAGES)
def test_stage_trains_end_to_end_and_leaves_a_record(stage_name, smoke_run):
    run = smoke_run(stage_name)  # 20 steps, two epochs
    assert "final training loss" in run.out and "test accuracy" in run.out and "time" in run.out
    assert run.summary["steps"] == 20 and 0.0 <= run.summary["test_accuracy"] <= 1.0
    assert run.record.parent.name == stage_name.split(".")[1] and len(list(run.record.parent.iterdir())) == 1
    assert json.loads(run.text("options.json"))["max_steps"] == 20
    with open(run.record / "losses.csv") as f:
        assert len(list(csv.DictReader(f))) == 20
    assert (run.record / "accuracy.csv").exists() and (run.record / "curves.png").stat().st_size > 10_000


def test_a_run_too_short_to_learn_says_so_in_one_line(tmp_path):
    run = run_main(STAGES[0], tmp_path, "--max-steps", "20")  # SMOKE: the synthetic set, which can be learnt
    assert run.summary["test_accuracy"] < 0.2, "20 steps at lr 0.001 stay near chance"
    lines = [line for line in run.out.splitlines() if "too few to learn" in line]
    assert len(lines) == 1 and "--max-steps" in lines[0]


def test_a_run_that_learned_does_not_say_it_was_too_short(shared_run):
    run = shared_run(STAGES[0], preset=LEARNS)  # shared with runtime/test_data.py's learnable synthetic set
    assert run.summary["test_accuracy"] > 0.5
    assert "too few to learn" not in run.out
