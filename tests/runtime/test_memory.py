"""Out of memory: a batch too large for the memory there is, and a DataLoader worker killed (what
the system's out-of-memory killer does). One line naming what to make smaller, exit code 5
(common/errors.py), and a record that says it is incomplete.

Too little memory is played by RLIMIT_AS on the numpy stage (whose memory is numpy's arrays
alone: torch reserves address space of its own at import); the killer by SIGKILL to a worker
process, sent while the run is held after its first step (tests.helpers.held_at).
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import OUT_OF_MEMORY
from common.harness import stage_options
from common.run import StageRun
from common.run.guard import quiet_hand_over
from common.run.progress import Progress
from tests.helpers import EVENT_TIMEOUT, ROOT, Background, held_at

ADDRESS_SPACE = 1500 * 2**20  # enough to start the numpy stage, not for its im2col of 8000 images (1.75 GiB)


def said(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and "step/s" not in line]


def incomplete(out: Path, why: str) -> dict:
    [path] = out.glob("*/*/summary.json")
    summary = json.loads(path.read_text())
    assert summary["complete"] is False and summary["ended"] == why, summary
    return summary


def test_a_batch_too_large_for_the_memory_is_one_line_naming_the_batch_size(tmp_path):
    def little_memory():
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    result = subprocess.run([sys.executable, "-m", "stages.stage01_numpy", "--data", "synthetic", "--epochs", "1",
                             "--batch-size", "8000", "--out", str(tmp_path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=EVENT_TIMEOUT, preexec_fn=little_memory)
    assert result.returncode == OUT_OF_MEMORY and "Traceback" not in result.stderr, result.stderr[-800:]
    [line] = said(result.stderr)
    assert line.startswith("stage01_numpy: error: out of memory with --batch-size 8000: "
                           "try a smaller --batch-size than 8000")
    incomplete(tmp_path, "out of memory")


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def test_a_dataloader_worker_killed_is_one_line_naming_the_workers(tmp_path):
    out = tmp_path / "runs"
    run = Background(["-m", "stages.stage07_dataloader", "--data", "synthetic", "--epochs", "1", "--batch-size", "8",
                      "--max-steps", "30", "--workers", "2", "--out", str(out)], tmp_path,
                     env=held_at("common.run:StageRun.log_step", tmp_path))
    run.wait_for(lambda: (tmp_path / "held").exists(), "the first step, its workers running")
    workers = children(run.process.pid)
    assert len(workers) == 2, f"the DataLoader's two workers: {workers}"
    os.kill(workers[0], signal.SIGKILL)
    (tmp_path / "release").touch()
    result = run.finish()
    assert result.returncode == OUT_OF_MEMORY and "Traceback" not in result.stderr, result.stderr[-800:]
    [line] = said(result.stderr)
    # which of torch's checks sees it first: "DataLoader worker (pid N) is killed by signal: Killed", "(pid(s) N)
    # exited unexpectedly", or the batch it was handing over, cut off ("Connection reset by peer")
    assert line.startswith(("stage07_dataloader: error: DataLoader worker (pid",
                            "stage07_dataloader: error: a DataLoader worker ended while handing over a batch"))
    assert "try fewer --workers than 2" in line
    summary = incomplete(out, "out of memory")
    [losses] = out.glob("*/*/losses.csv")  # the other worker may have handed over a batch or more meanwhile
    assert len(losses.read_text().splitlines()) - 1 == summary["steps"], "every step taken is in the record"


def test_a_child_ending_during_the_clean_up_adds_no_traceback(tmp_path, monkeypatch, capsys):
    """Once a worker died, torch's SIGCHLD handler reports it (once) at the next child process
    that ends, which can be in the middle of the run's clean-up. Played here: such a handler, and a
    child that ends in Progress.close (the first thing StageRun.__exit__ does). The run still ends
    in one line, and the handler is back for the next run in this process."""
    reported = []

    def like_torchs_handler(signum, frame):
        if not reported:
            reported.append(signum)
            raise RuntimeError("DataLoader worker (pid 2) is killed by signal: Killed.")

    args = stage_options(7, ["--out", str(tmp_path)])
    close = Progress.close
    monkeypatch.setattr(Progress, "close", lambda self: (subprocess.run(["true"]), close(self)))
    previous = signal.signal(signal.SIGCHLD, like_torchs_handler)
    try:
        with pytest.raises(SystemExit) as ended, StageRun("stage07_dataloader.py", args):
            raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Killed.")
        assert signal.getsignal(signal.SIGCHLD) is like_torchs_handler, "the next run is watched again"
    finally:
        signal.signal(signal.SIGCHLD, previous)
    assert ended.value.code == OUT_OF_MEMORY
    assert said(capsys.readouterr().err)[0].startswith("stage07_dataloader: error: DataLoader worker (pid 1)")


def raised_in(filename: str, error: BaseException):
    """The (type, value, traceback) of `error` raised by code that says it is in `filename`."""
    try:
        exec(compile("raise error", filename, "exec"), {"error": error})
    except BaseException:
        return sys.exc_info()


def test_a_hand_over_cut_off_in_the_resource_sharer_thread_prints_nothing(capsys):
    """multiprocessing's resource-sharer thread reports a worker gone mid-way through sys.excepthook
    (as a traceback); during a run that says nothing, as the main thread says it in one line."""
    hook = quiet_hand_over(sys.__excepthook__)
    hook(*raised_in("/usr/lib/python3.11/multiprocessing/resource_sharer.py", ConnectionResetError(104, "reset")))
    assert capsys.readouterr().err == ""
    hook(*raised_in("/usr/lib/python3.11/multiprocessing/resource_sharer.py", ValueError("a bug")))
    hook(*raised_in("/work/my_stage.py", ConnectionResetError(104, "reset")))
    printed = capsys.readouterr().err
    assert printed.count("Traceback") == 2 and "ValueError: a bug" in printed, "any other error shows"
