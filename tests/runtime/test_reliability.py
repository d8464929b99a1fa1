"""Nothing lost on a full disk or at a signal, and one line for each ending.

A full disk is played by the kernel's file-size limit (RLIMIT_FSIZE): past it, a write fails
with EFBIG exactly where a full disk fails with ENOSPC, in the middle of a file, and the
program must cope the same way. A signal is a real one, sent to a real process: while it trains
(every stage), while it draws its figures (made to arrive then by holding plot_run() until the
test has sent it, so it never depends on how fast the machine is), and to stage 11's processes
under torchrun, or to one of two processes of a group.
"""
from __future__ import annotations

import csv
import errno
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from common.errors import WRITE_FAILED
from tests.helpers import (ALL_STAGES, EVENT_TIMEOUT, ONE_EPOCH, ROOT, SMOKE, Background, exit_of_main, free_port,
                           run_main, tiny)


def limited_file_size(limit: int):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then a write past the limit fails with EFBIG
    return preexec


def run_limited(stage: str, args: list[str], out: Path, limit: int, preset=SMOKE) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", stage, *preset, *args, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=EVENT_TIMEOUT, preexec_fn=limited_file_size(limit),
                          env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))


def record_of(out: Path) -> Path:
    [record] = list(out.glob("*/*/"))
    return record


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_one_line_about(result: subprocess.CompletedProcess, path_piece: str) -> None:
    assert result.returncode == WRITE_FAILED, result.stderr[-800:]
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-800:]
    assert path_piece in lines[0] and "MB free" in lines[0] and "File too large" in lines[0]


@pytest.mark.parametrize("stage", ["stages.stage01_numpy", "stages.stage06_optim"])
def test_a_full_disk_while_training_keeps_every_row_written_before(stage, tmp_path):
    result = run_limited(stage, ["--max-steps", "600"], tmp_path, limit=12_000)  # grad_norms.csv fills first
    assert_one_line_about(result, "grad_norms.csv")
    record = record_of(tmp_path)
    norms, losses = rows(record / "grad_norms.csv"), rows(record / "losses.csv")
    assert 0 < len(norms) < 600, "the limit was reached mid-run"
    assert [r["step"] for r in norms] == [str(s) for s in range(1, len(norms) + 1)]
    assert all(None not in r.values() and "" not in r.values() for r in norms), "no half-written row"
    assert (record / "grad_norms.csv").read_bytes().endswith(b"\n")
    assert len(losses) >= len(norms) and all(float(r["loss"]) > 0 for r in losses)
    assert json.loads((record / "summary.json").read_text())["complete"] is False
    assert not list(record.glob(".*.tmp")), "no temporary file left behind"


def test_a_full_disk_while_saving_the_parameters_leaves_no_partial_file(tmp_path):
    result = run_limited("stages.stage06_optim", ["--max-steps", "20"], tmp_path, limit=100_000)  # params ~250 kB
    assert_one_line_about(result, "params.npz")
    record = record_of(tmp_path)
    assert not (record / "params.npz").exists() and not list(record.glob(".*.tmp"))
    assert len(rows(record / "losses.csv")) == 20


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, tiny_data):
    checkpoint = tmp_path / "c.npz"
    epochs = tiny(tiny_data) + ["--checkpoint", str(checkpoint)]
    run_main(6, tmp_path, "--epochs", "1", preset=epochs)  # the first epoch, in this process: no limit
    before = checkpoint.read_bytes()
    result = run_limited("stages.stage06_optim", ["--epochs", "2", "--resume", str(checkpoint)],
                         tmp_path / "second", limit=200_000, preset=epochs)  # a checkpoint is ~500 kB
    assert result.returncode == WRITE_FAILED and "the previous checkpoint is unchanged" in result.stderr
    assert "Traceback" not in result.stderr
    assert checkpoint.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_no_space_left_is_one_line_with_the_free_space(tmp_path, monkeypatch, capsys):
    """The real full-disk error, ENOSPC, raised by os.write after some rows, in this process."""
    real_write, calls = os.write, []

    def filling_write(fd, data):
        calls.append(fd)
        if len(calls) > 60:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", filling_write)
    code, _, err = exit_of_main(2, SMOKE + ["--max-steps", "100", "--out", str(tmp_path)], capsys)
    assert code == WRITE_FAILED
    [line] = [line for line in err.splitlines() if "error" in line]  # the rest is the progress bar
    assert "losses.csv: No space left on device" in line and "MB free" in line


def test_a_full_disk_while_drawing_the_figures_is_one_line_and_keeps_the_record(tmp_path, monkeypatch, capsys):
    """The figures are the last thing written: a full disk there ends the run like anywhere else."""
    def full_disk(record_dir):
        (record_dir / "curves.png").write_bytes(b"half a png")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("common.run.plots.plot_run", full_disk)
    code, _, err = exit_of_main(6, SMOKE + ["--max-steps", "20", "--out", str(tmp_path)], capsys)
    assert code == WRITE_FAILED and "Traceback" not in err
    [line] = [line for line in err.splitlines() if "error" in line]
    assert "curves.png: No space left on device" in line and "MB free" in line
    record = record_of(tmp_path)
    assert not (record / "curves.png").exists(), "no half-written figure"
    assert len(rows(record / "losses.csv")) == 20 and (record / "params.npz").exists()
    summary = json.loads((record / "summary.json").read_text())
    assert summary["complete"] is False and "summary and figures" in summary["ended"]


# ---------------------------------------------------------------- signals while training
def losses_written(out: Path) -> int:
    files = list(out.glob("*/*/losses.csv"))
    return sum(1 for _ in open(files[0])) - 1 if files else 0


@pytest.mark.slow
@pytest.mark.parametrize("stage_name", ALL_STAGES)
def test_ctrl_c_without_checkpoint_is_one_line_and_keeps_the_record(stage_name, tmp_path):
    run = Background(["-m", stage_name, *ONE_EPOCH, "--out", str(tmp_path / "runs")], tmp_path)
    run.wait_for(lambda: losses_written(tmp_path / "runs") >= 1, "the first step")
    run.process.send_signal(signal.SIGINT)
    result = run.finish()
    assert result.returncode == 130 and "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    steps = int(last_line.split(" at step ")[1].split(";")[0])
    assert losses_written(tmp_path / "runs") == steps >= 1


# ---------------------------------------------------------------- signals while finishing
HELD_PLOT = """
import runpy, sys, time
from pathlib import Path
import common.run.plots, common.run.signals
release = Path(sys.argv[1])
draw = common.run.plots.plot_run

def held_plot_run(record_dir):
    (record_dir / "drawing").touch()  # the test's cue: the figures are being drawn now
    noted = 0
    while not release.exists():
        if len(common.run.signals._received) > noted:  # a signal's handler has run: tell the test
            noted = len(common.run.signals._received)
            (record_dir / f"noted-{noted}").touch()
        time.sleep(0.01)
    return draw(record_dir)

common.run.plots.plot_run = held_plot_run
sys.argv = [sys.argv[2]] + sys.argv[3:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_holding_the_figures(tmp_path: Path, signals_to_send: list[int]) -> tuple[subprocess.CompletedProcess, Path]:
    release, runs = tmp_path / "release", tmp_path / "runs"
    run = Background(["-c", HELD_PLOT, str(release), "stages.stage06_optim", *SMOKE, "--max-steps", "30",
                      "--out", str(runs)], tmp_path)
    run.wait_for(lambda: list(runs.glob("*/*/drawing")), "the figures")
    *first, last = signals_to_send
    for n, sig in enumerate(first, start=1):
        run.process.send_signal(sig)
        # Python runs the handler later, in the main thread; two signals sent before it ran would
        # count as one, so the next is sent only once this one was noted
        run.wait_for(lambda: list(runs.glob(f"*/*/noted-{n}")), f"signal {n} to be noted")
    run.process.send_signal(last)
    release.touch()
    return run.finish(), record_of(runs)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_the_figures_are_drawn_finishes_them_then_says_so(sig, tmp_path):
    result, record = run_holding_the_figures(tmp_path, [sig])
    assert result.returncode == 130 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(f"the record is complete in {record}")
    assert f"{signal.Signals(sig).name} while writing the summary and figures" in result.stderr
    assert (record / "curves.png").stat().st_size > 10_000 and (record / "params.npz").exists()
    assert json.loads((record / "summary.json").read_text())["complete"] is True


def test_a_second_signal_while_finishing_stops_at_once_and_marks_the_record(tmp_path):
    result, record = run_holding_the_figures(tmp_path, [signal.SIGINT, signal.SIGINT])
    assert result.returncode == 130 and "Traceback" not in result.stderr
    assert "marked incomplete" in result.stderr.strip().splitlines()[-1]
    summary = json.loads((record / "summary.json").read_text())
    assert summary["complete"] is False and "summary and figures" in summary["ended"]
    assert len(rows(record / "losses.csv")) == 30, "the training record is whole"


# ---------------------------------------------------------------- stage 11: under torchrun, and in two processes
@pytest.mark.slow
@pytest.mark.stage11
def test_ctrl_c_to_torchrun_stops_every_process_after_the_same_step(tmp_path):
    """Ctrl-C reaches the whole process group: torchrun and both workers."""
    runs = tmp_path / "runs"
    run = Background(["-m", "common.tools.torchrun", "--nproc-per-node", "2", "-m", "stages.stage11_distributed",
                      *ONE_EPOCH,
                      "--out", str(runs)], tmp_path, start_new_session=True)

    def losses() -> list[dict]:
        path = next(runs.glob("*/*/losses.csv"), None)
        return rows(path) if path is not None else []

    run.wait_for(lambda: len(losses()) >= 1, "the first step")
    os.killpg(run.process.pid, signal.SIGINT)
    result = run.finish()
    assert result.returncode == 130, result.stderr[-800:]
    assert "Traceback" not in result.stderr and "torchrun: stopped by SIGINT" in result.stderr
    [line] = [line for line in result.stderr.splitlines() if "interrupted by SIGINT at step" in line]
    steps = int(line.split(" at step ")[1].split(";")[0])
    assert len(losses()) == steps


@pytest.mark.stage11
def test_a_failing_process_under_torchrun_is_one_line_each(tmp_path):
    result = subprocess.run([sys.executable, "-m", "common.tools.torchrun", "--nproc-per-node", "2", "-m",
                             "stages.stage11_distributed", "--data-dir", "/nonexistent", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=EVENT_TIMEOUT)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr
    assert "--data-dir /nonexistent: no such folder" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("torchrun: ")


def stop_worker(rank: int, port: int, out_dir: str) -> None:
    """A signal reaches one process only (rank 1, at step 23): both must stop after the same step."""
    import signal as signal_module

    from common.run import signals
    from common.run.guard import Guard

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        guard = Guard("stage11_distributed", shown=rank == 0)
        stopped_at = None
        for step in range(1, 60):
            if rank == 1 and step == 23:
                signals._received.append(signal_module.SIGINT)  # as the handler notes a Ctrl-C
            try:
                guard.stop_if_asked(step, every_step=True)
            except KeyboardInterrupt:
                stopped_at = step
                break
        np.save(f"{out_dir}/stopped{rank}.npy", np.array(stopped_at if stopped_at is not None else -1))
    finally:
        dist.destroy_process_group()


@pytest.mark.stage11
def test_a_signal_to_one_process_stops_every_process_after_the_same_step(tmp_path):
    mp.start_processes(stop_worker, args=(free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    stopped = [int(np.load(tmp_path / f"stopped{r}.npy")) for r in range(2)]
    assert stopped == [30, 30], "they agree every 10 steps: the first agreement after step 23 is at step 30"
