"""Signals outside a stage's training loop: one guarded window per program, from its first line to
its last, for the stages, the course runner and the tools behind make.

Each signal is sent while the program is held at a known point (tests.helpers.held_at): while a
stage still imports torch, while a tool works, while the run's own clean-up runs after its one
line; never after a sleep. SIGHUP (the terminal closed) counts as an interruption like Ctrl-C
and SIGTERM.
"""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from common.errors import INTERRUPTED
from tests.helpers import ONE_EPOCH, SMOKE, Background, held_at

SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
IDS = [s.name for s in SIGNALS]


def held_program(argv: list[str], tmp_path: Path, where: str, caller: str | None = None, **env: str) -> Background:
    run = Background(argv, tmp_path, env=dict(held_at(where, tmp_path, caller), **env))
    run.wait_for(lambda: (tmp_path / "held").exists(), f"the program to reach {where}")
    return run


def send_and_wait_until_noted(run: Background, sig: int, n: int, tmp_path: Path) -> None:
    run.process.send_signal(sig)
    run.wait_for(lambda: (tmp_path / f"noted-{n}").exists(), f"signal {n} to be noted")


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and "step/s" not in line]


def losses_written(out: Path) -> int:
    files = list(out.glob("*/*/losses.csv"))
    return sum(1 for _ in open(files[0])) - 1 if files else 0


# ---------------------------------------------------------------- a stage, before its run
@pytest.mark.parametrize("sig", SIGNALS, ids=IDS)
def test_a_signal_while_a_stage_imports_torch_is_one_line_and_nothing_written(sig, tmp_path):
    runs = tmp_path / "runs"
    run = held_program(["-m", "stages.stage06_optim", *SMOKE, "--out", str(runs)], tmp_path, "import torch")
    send_and_wait_until_noted(run, sig, 1, tmp_path)
    (tmp_path / "release").touch()
    result = run.finish()
    assert result.returncode == INTERRUPTED and "Traceback" not in result.stderr, result.stderr[-800:]
    assert error_lines(result.stderr) == [f"stage06_optim: interrupted by {sig.name} while starting; "
                                          "nothing was written"]
    assert not runs.exists(), "no record of a run that never began"


def test_a_second_signal_while_a_stage_starts_ends_it_at_once(tmp_path):
    run = held_program(["-m", "stages.stage06_optim", *SMOKE, "--out", str(tmp_path / "runs")], tmp_path,
                       "import torch")
    send_and_wait_until_noted(run, signal.SIGINT, 1, tmp_path)
    run.process.send_signal(signal.SIGINT)  # no release: the import never finishes
    result = run.finish()
    assert result.returncode == INTERRUPTED and "Traceback" not in result.stderr, result.stderr[-800:]
    assert error_lines(result.stderr) == ["stage06_optim: interrupted by SIGINT while starting; nothing was written"]


# ---------------------------------------------------------------- a stage, during and after its run
def test_sighup_while_training_stops_between_steps_and_says_so_in_the_record(tmp_path):
    runs = tmp_path / "runs"
    run = Background(["-m", "stages.stage06_optim", *ONE_EPOCH, "--out", str(runs)], tmp_path)
    run.wait_for(lambda: losses_written(runs) >= 1, "the first rows of losses.csv")
    run.process.send_signal(signal.SIGHUP)
    result = run.finish()
    assert result.returncode == INTERRUPTED and "Traceback" not in result.stderr, result.stderr[-800:]
    [line] = [line for line in result.stderr.splitlines() if "interrupted" in line]
    assert line.startswith("stage06_optim: interrupted by SIGHUP at step ")
    steps = int(line.split(" at step ")[1].split(";")[0])
    [summary] = runs.glob("*/*/summary.json")
    ended = json.loads(summary.read_text())
    assert ended["complete"] is False and ended["ended"] == "interrupted" and ended["signal"] == "SIGHUP"
    assert ended["steps"] == steps
    assert losses_written(runs) == steps


def test_a_second_signal_during_the_clean_up_after_the_line_ends_at_once_without_a_traceback(tmp_path):
    """The thread settings are put back after the run's one line; a second Ctrl-C then used to
    raise KeyboardInterrupt inside that clean-up."""
    runs = tmp_path / "runs"
    run = Background(["-m", "stages.stage06_optim", *ONE_EPOCH, "--out", str(runs)], tmp_path,
                     env=held_at("common.run.threads:ThreadPolicy.restore", tmp_path))
    run.wait_for(lambda: losses_written(runs) >= 1, "the first rows of losses.csv")
    run.process.send_signal(signal.SIGINT)
    run.wait_for(lambda: (tmp_path / "held").exists(), "the clean-up after the run's line")
    run.process.send_signal(signal.SIGINT)
    (tmp_path / "release").touch()  # only a program that ignored the signal would go on
    result = run.finish()
    assert result.returncode == INTERRUPTED and "Traceback" not in result.stderr, result.stderr[-800:]
    assert not (tmp_path / "released").exists(), "it ended at once, in the clean-up"
    assert len([line for line in result.stderr.splitlines() if "interrupted by SIGINT" in line]) == 1
    [summary] = runs.glob("*/*/summary.json")
    ended = json.loads(summary.read_text())
    assert ended["ended"] == "interrupted" and ended["signal"] == "SIGINT"


# ---------------------------------------------------------------- the tools
@pytest.mark.parametrize("sig", SIGNALS, ids=IDS)
def test_a_signal_during_make_compare_is_one_line_and_exit_130(sig, tmp_path):
    run = held_program(["-m", "common.tools.make", "compare"], tmp_path, "common.harness.driver:driver",
                       ARGS=f"--out {tmp_path / 'compare'}")
    run.process.send_signal(sig)
    result = run.finish()
    assert result.returncode == INTERRUPTED and "Traceback" not in result.stderr, result.stderr[-800:]
    assert error_lines(result.stderr)[-1] == f"python -m common.tools.compare: interrupted by {sig.name}"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_the_course_runner_draws_its_summary_keeps_the_previous_one(sig, tmp_path):
    runs = tmp_path / "runs"
    previous = runs / "course-summary-stages-1-smoke.png"
    previous.parent.mkdir(parents=True)
    previous.write_bytes(b"the summary of an earlier run")
    run = held_program(["-m", "common.tools.course", "--stages", "1", *SMOKE, "--out", str(runs)], tmp_path,
                       "common.run.plots:smoothing_window", caller="draw_course")
    run.process.send_signal(sig)
    result = run.finish()
    assert result.returncode == INTERRUPTED and "Traceback" not in result.stderr, result.stderr[-800:]
    assert error_lines(result.stderr)[-1] == f"python -m common.tools.course: interrupted by {sig.name}"
    assert previous.read_bytes() == b"the summary of an earlier run"
