"""Every way a learner can end a run early gets one line and an exit code (common/errors.py), never
a traceback, and nothing written before is lost; the record says the run is incomplete.

The endings are real: a signal sent to a real process, a full disk played by the kernel's
file-size limit (RLIMIT_FSIZE: past it a write fails with EFBIG exactly where a full disk fails
with ENOSPC), too little memory by RLIMIT_AS, a peer of a process group that never comes or that
dies (SIGKILL), a port another program holds, a reader that goes away (`| head`).
"""
from __future__ import annotations

import csv
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.errors import BAD_INPUT, DIVERGED, INTERRUPTED, OUT_OF_MEMORY, READER_GONE, WRITE_FAILED
from tests.helpers import EVENT_TIMEOUT, ONE_EPOCH, ROOT, SMOKE, Background, exit_of_main, free_port, outside_make


def said(stderr: str) -> list[str]:
    """stderr's lines without the progress bar ("...  39%|███▉  | 47/120 [...]"), which redraws
    itself after a carriage return."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]


def record_of(out: Path) -> Path:
    [record] = list(out.glob("*/*/"))
    return record


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def summary_of(out: Path) -> dict:
    return json.loads((record_of(out) / "summary.json").read_text())


def whole_rows(path: Path) -> None:
    """Every row of a CSV file whole, numbered from 1 without gaps, the file ending with its line break."""
    written = rows(path)
    assert [row["step"] for row in written] == [str(s) for s in range(1, len(written) + 1)]
    assert all(None not in row.values() and "" not in row.values() for row in written)
    assert path.read_bytes().endswith(b"\n")


def stage(*argv: str, out: Path, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv, "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=EVENT_TIMEOUT, **popen)


def losses_written(out: Path) -> int:
    files = list(out.glob("*/*/losses.csv"))
    return len(rows(files[0])) if files else 0


# ---------------------------------------------------------------- signals
@pytest.mark.parametrize("name, sig", [("stages.stage01_numpy", signal.SIGINT),
                                       ("stages.stage08_train_eval", signal.SIGTERM)],
                         ids=["Ctrl-C to the numpy stage", "SIGTERM to a torch stage"])
def test_a_signal_while_training_is_one_line_and_keeps_the_record(name, sig, tmp_path):
    out = tmp_path / "runs"
    run = Background(["-m", name, *ONE_EPOCH, "--out", str(out)], tmp_path)
    run.wait_for(lambda: losses_written(out) > 0, "the first losses to be written")
    run.process.send_signal(sig)
    result = run.finish()
    assert result.returncode == INTERRUPTED and "Traceback" not in result.stderr, result.stderr[-800:]
    [line] = said(result.stderr)
    assert line.startswith(f"{name[7:]}: interrupted by {sig.name} at step ") and str(out) in line
    assert summary_of(out)["complete"] is False and summary_of(out)["ended"].startswith("interrupted")
    whole_rows(record_of(out) / "losses.csv")


def test_a_signal_to_a_tool_is_one_line(tmp_path):
    """The course runner, running a stage: the stage says where it stopped, the tool says nothing more."""
    out = tmp_path / "runs"
    run = Background(["-m", "common.tools.course", "--stages", "6", *ONE_EPOCH, "--out", str(out)], tmp_path)
    run.wait_for(lambda: losses_written(out) > 0, "the stage to train")
    run.process.send_signal(signal.SIGTERM)
    result = run.finish()
    assert result.returncode == INTERRUPTED and "Traceback" not in result.stderr, result.stderr[-800:]
    assert [line.split(" at step")[0] for line in said(result.stderr)] == ["stage06_optim: interrupted by SIGTERM"]


# ---------------------------------------------------------------- a loss that is NaN, a full disk, too little memory
def test_a_diverging_loss_is_one_line_naming_its_step_and_the_lr(tmp_path, capsys):
    code, _, err = exit_of_main(6, SMOKE + ["--lr", "100", "--max-steps", "200", "--out", str(tmp_path)], capsys)
    assert code == DIVERGED
    [line] = said(err)
    assert "stage06_optim: error: the loss became nan at step" in line and "try a smaller --lr than 100" in line
    steps = rows(record_of(tmp_path) / "losses.csv")
    assert steps[-1]["loss"] == "nan" and all(row["loss"] != "nan" for row in steps[:-1]), "up to the first NaN"
    assert summary_of(tmp_path)["complete"] is False


def limited_file_size(limit: int):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then a write past the limit fails with EFBIG
    return preexec


@pytest.mark.parametrize("name", ["stages.stage01_numpy", "stages.stage06_optim"])
def test_a_full_disk_while_training_keeps_every_row_written_before(name, tmp_path):
    result = stage(name, *SMOKE, "--max-steps", "400", out=tmp_path, preexec_fn=limited_file_size(3_000))
    assert result.returncode == WRITE_FAILED and "Traceback" not in result.stderr, result.stderr[-800:]
    [line] = said(result.stderr)
    assert "losses.csv: File too large; what was written before is intact" in line
    record = record_of(tmp_path)
    whole_rows(record / "losses.csv")
    assert 0 < len(rows(record / "losses.csv")) < 400, "the limit was reached mid-run"
    assert summary_of(tmp_path)["complete"] is False


def test_a_full_disk_while_saving_the_parameters_leaves_no_partial_file(tmp_path):
    result = stage("stages.stage06_optim", *SMOKE, "--max-steps", "20", out=tmp_path,
                   preexec_fn=limited_file_size(100_000))  # params.npz is about 250 kB
    assert result.returncode == WRITE_FAILED and "Traceback" not in result.stderr, result.stderr[-800:]
    [line] = said(result.stderr)
    assert "params.npz" in line and "File too large" in line
    record = record_of(tmp_path)
    assert not (record / "params.npz").exists() and not list(record.glob(".*.tmp"))
    assert len(rows(record / "losses.csv")) == 20


def test_a_batch_too_large_for_the_memory_is_one_line_naming_the_batch_size(tmp_path):
    """The numpy stage (torch reserves address space of its own when it loads), with 1.5 GiB of
    address space: enough to start, not for the im2col matrix of a batch of 8000 (1.75 GiB)."""
    def little_memory():
        resource.setrlimit(resource.RLIMIT_AS, (1500 * 2**20, 1500 * 2**20))

    result = stage("stages.stage01_numpy", "--data", "synthetic", "--epochs", "1", "--batch-size", "8000",
                   out=tmp_path, preexec_fn=little_memory)
    assert result.returncode == OUT_OF_MEMORY and "Traceback" not in result.stderr, result.stderr[-800:]
    [line] = said(result.stderr)
    assert line.startswith("stage01_numpy: error: out of memory: try a smaller --batch-size")
    assert summary_of(tmp_path)["complete"] is False


# ---------------------------------------------------------------- a process group (stages 11-13)
def group_of_two(rank: int, port: int) -> dict:
    return dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port), PYTHONUNBUFFERED="1")


@pytest.mark.stage11
@pytest.mark.parametrize("rank", [0, 1], ids=["the first process", "another process"])
def test_ctrl_c_while_waiting_for_a_peer_that_never_comes_ends_at_once(rank, tmp_path):
    """torch waits for the other processes in C++, where Python could not answer a signal for
    its 30 minutes: until the first step, Ctrl-C keeps its default action and ends the program."""
    run = Background(["-m", "stages.stage11_distributed", *SMOKE, "--out", str(tmp_path / "runs")], tmp_path,
                     env=group_of_two(rank, free_port()))
    run.wait_for(lambda: catches_ctrl_c(run.process.pid), "Python to install its Ctrl-C handler")
    run.wait_for(lambda: not catches_ctrl_c(run.process.pid), "the run to give Ctrl-C its default action")
    time.sleep(1)  # by now inside init_process_group, waiting (the claim holds anywhere before the first step)
    run.process.send_signal(signal.SIGINT)
    run.process.wait(timeout=60)  # at once: otherwise torch's 30 minutes
    assert run.process.returncode == -signal.SIGINT, run.stderr.read_text()[-800:]
    assert "Traceback" not in run.stderr.read_text()
    assert not list((tmp_path / "runs").glob("*/*")), "no record: nothing was trained"


def catches_ctrl_c(pid: int) -> bool:
    """Whether the process has a handler of its own for SIGINT (SigCgt in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(caught & (1 << (signal.SIGINT - 1)))


SHORT_WAIT = "import datetime, torch.distributed.distributed_c10d as c\nc.default_pg_timeout = datetime.timedelta(seconds=3)\n"


@pytest.mark.stage11
def test_a_peer_that_never_comes_is_given_up_after_torchs_time_limit_in_one_line(tmp_path):
    """torch's own limit (default_pg_timeout, 30 minutes), made 3 seconds here."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SHORT_WAIT)
    result = stage("stages.stage11_distributed", *SMOKE, out=tmp_path / "runs",
                   env=dict(group_of_two(0, free_port()), PYTHONPATH=str(site)))
    assert result.returncode == BAD_INPUT and "Traceback" not in result.stderr, result.stderr[-800:]
    [line] = said(result.stderr)
    assert line.startswith("stage11_distributed: error: the process group could not form: ") and "1/2" in line


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def environment(pid: int) -> dict:
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(entry.split(b"=", 1) for entry in f.read().split(b"\0") if b"=" in entry)


@pytest.mark.slow
@pytest.mark.stage11
def test_a_peer_that_dies_mid_run_ends_the_others_with_one_line_each(tmp_path):
    out = tmp_path / "runs"
    run = Background(["-m", "common.tools.torchrun", "--standalone", "--nproc-per-node", "2", "-m",
                      "stages.stage11_distributed", *ONE_EPOCH, "--out", str(out)], tmp_path)
    run.wait_for(lambda: losses_written(out) > 0, "the group to train")
    [peer] = [pid for pid in children(run.process.pid) if environment(pid).get(b"RANK") == b"1"]
    os.kill(peer, signal.SIGKILL)
    result = run.finish()
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-1500:]
    lines = said(result.stderr)
    assert lines[-1] == "torchrun: process 1 failed first (signal 9); torchrun stopped the others", lines
    [first] = [line for line in lines if line.startswith("stage11_distributed:")]
    ended = summary_of(out)["ended"]
    assert first.startswith(f"stage11_distributed: {ended}") and summary_of(out)["complete"] is False
    # the first process learns it at its next all-reduce, or from torchrun, which stops it
    assert ended.startswith(("error: another process of the group failed", "interrupted by SIGTERM")), ended


@pytest.mark.slow
def test_make_ddp_runs_beside_a_program_that_holds_torchruns_usual_port(tmp_path):
    with socket.socket() as busy:
        try:
            busy.bind(("127.0.0.1", 29500))  # torchrun's default MASTER_PORT
        except OSError:
            pytest.skip("port 29500 is taken already: the test cannot take it")
        busy.listen()
        result = subprocess.run(["make", "--no-print-directory", f"VENV={sys.prefix}", "-o",
                                 f"{sys.prefix}/.installed", "ddp", "NPROC=1",
                                 f"ARGS={' '.join(SMOKE)} --out {tmp_path}"], cwd=ROOT, capture_output=True,
                                text=True, timeout=EVENT_TIMEOUT, env=outside_make())
    assert result.returncode == 0, result.stderr[-800:]
    assert summary_of(tmp_path)["complete"] is True


def test_torchrun_on_a_port_another_program_holds_is_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "common.tools.torchrun", "--nproc-per-node", "1",
                                 "--master-addr", "127.0.0.1", "--master-port", str(port), "-m",
                                 "stages.stage11_distributed", *SMOKE, "--out", str(tmp_path)], cwd=ROOT,
                                capture_output=True, text=True, timeout=EVENT_TIMEOUT)
    assert result.returncode == BAD_INPUT and "Traceback" not in result.stderr, result.stderr[-800:]
    [line] = said(result.stderr)
    assert line.startswith("python -m common.tools.torchrun: error: the process group could not form: ")
    assert str(port) in line


# ---------------------------------------------------------------- a reader that goes away
@pytest.mark.parametrize("lines", [1, 3], ids=["while it starts", "while it trains"])
def test_a_reader_that_goes_away_ends_the_run_quietly(lines, tmp_path):
    """`| head -N`: the run ends at its next line, as a program that SIGPIPE ends, with no word
    on stderr and no traceback; a record it had begun says it is incomplete."""
    result = subprocess.run(f"{sys.executable} -m stages.stage06_optim {' '.join(SMOKE)} --out {tmp_path} "
                            f"| head -{lines}; exit ${{PIPESTATUS[0]}}", shell=True, executable="/bin/bash",
                            cwd=ROOT, capture_output=True, text=True, timeout=EVENT_TIMEOUT)
    assert result.returncode == READER_GONE, result.stderr[-800:]
    assert said(result.stderr) == [], result.stderr
    assert len(result.stdout.splitlines()) == lines
    summaries = list(tmp_path.glob("*/*/summary.json"))
    assert all(json.loads(s.read_text())["complete"] is False for s in summaries)
