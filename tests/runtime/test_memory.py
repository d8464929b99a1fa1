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

from common.errors import OUT_OF_MEMORY
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
