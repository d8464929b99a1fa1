"""Checkpoints: a run interrupted by a real signal and resumed ends bit-identical to one that
never stopped; bad checkpoints are refused in one line and overwrite nothing."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT

from common.harness import load_stage

STAGE = "stages.stage08_train_eval"  # has dropout, so torch's RNG state must survive the resume too
RUN = ["--data", "synthetic", "--epochs", "2", "--batch-size", "4", "--dropout", "0.3"]
STEPS_PER_EPOCH = 2000  # 8000 synthetic images / batch 4


def run_stage(args: list[str], out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", STAGE, *RUN, "--out", str(out), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def losses_written(out: Path) -> int:
    files = list(out.glob("*/*/losses.csv"))
    return sum(1 for _ in open(files[0])) - 1 if files else 0


def interrupt_in_epoch_two(args: list[str], out: Path, sig: int) -> subprocess.CompletedProcess:
    process = subprocess.Popen([sys.executable, "-m", STAGE, *RUN, "--out", str(out), *args], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while losses_written(out) < STEPS_PER_EPOCH + 300 and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def model_of(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, sig):
    whole = run_stage(["--checkpoint", str(tmp_path / "whole.pt")], tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr

    stopped = interrupt_in_epoch_two(["--checkpoint", str(tmp_path / "split.pt")], tmp_path / "split", sig)
    assert stopped.returncode == 130, stopped.stderr[-500:]
    assert "checkpoint saved" in stopped.stderr and "Traceback" not in stopped.stderr
    saved = torch.load(tmp_path / "split.pt", weights_only=True)
    assert saved["epoch"] == 2 and 0 < saved["steps_in_epoch"] < STEPS_PER_EPOCH, "stopped inside epoch 2"
    assert losses_written(tmp_path / "split") == saved["step"], "the record holds every step taken"

    resumed = run_stage(["--checkpoint", str(tmp_path / "split.pt"), "--resume", str(tmp_path / "split.pt")],
                        tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    whole_model, split_model = model_of(tmp_path / "whole.pt"), model_of(tmp_path / "split.pt")
    for name in whole_model:
        assert torch.equal(whole_model[name], split_model[name]), f"{name} differs after the resume"
    whole_params = np.load(next((tmp_path / "whole").glob("*/*/params.npz")))
    resumed_params = np.load(next((tmp_path / "resumed").glob("*/*/params.npz")))
    assert all(np.array_equal(whole_params[k], resumed_params[k]) for k in whole_params)


def run_in_process(stage_number: int, argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        load_stage(stage_number).main(argv)
    return exit_info.value.code, capsys.readouterr().err


@pytest.fixture()
def good_checkpoint(tmp_path):
    path = tmp_path / "good.pt"
    load_stage(6).main(["--data", "synthetic", "--max-steps", "10", "--checkpoint", str(path), "--out", str(tmp_path)])
    return path


BAD_CHECKPOINTS = {
    "truncated": lambda good, bad: bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2]),
    "not a checkpoint": lambda good, bad: bad.write_text("hello"),
    "another dtype": lambda good, bad: bad.write_bytes(good.read_bytes()),  # resumed with --dtype float64
    "missing": lambda good, bad: None,
}


@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_a_bad_checkpoint_is_refused_and_overwrites_nothing(case, good_checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    BAD_CHECKPOINTS[case](good_checkpoint, bad)
    before = bad.read_bytes() if bad.exists() else None
    extra = ["--dtype", "float64"] if case == "another dtype" else []
    code, err = run_in_process(6, ["--data", "synthetic", "--max-steps", "5", "--resume", str(bad),
                                   "--checkpoint", str(bad), "--out", str(tmp_path)] + extra, capsys)
    assert code == 2 and "--resume" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert (bad.read_bytes() if bad.exists() else None) == before


def test_a_checkpoint_of_another_stage_is_refused(good_checkpoint, tmp_path, capsys):
    code, err = run_in_process(7, ["--data", "synthetic", "--max-steps", "5", "--resume", str(good_checkpoint),
                                   "--out", str(tmp_path)], capsys)
    assert code == 2 and "made with stage 'stage06_optim'" in err


def test_divergence_keeps_the_last_good_checkpoint(good_checkpoint, tmp_path, capsys):
    before = good_checkpoint.read_bytes()
    code, err = run_in_process(6, ["--data", "synthetic", "--lr", "100", "--resume", str(good_checkpoint),
                                   "--checkpoint", str(good_checkpoint), "--out", str(tmp_path)], capsys)
    assert code == 3 and "diverged" in err
    assert good_checkpoint.read_bytes() == before


@pytest.mark.slow
@pytest.mark.parametrize("stage_name", [p.values[0] for p in __import__("conftest").ALL_STAGES])
def test_ctrl_c_without_checkpoint_is_one_line_and_keeps_the_record(stage_name, tmp_path):
    process = subprocess.Popen([sys.executable, "-m", stage_name, "--data", "synthetic", "--epochs", "1",
                                "--out", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while losses_written(tmp_path) < 200 and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in stderr
    last_line = stderr.strip().splitlines()[-1]
    steps = int(last_line.split("interrupted at step ")[1].split(";")[0])
    assert losses_written(tmp_path) == steps >= 200
