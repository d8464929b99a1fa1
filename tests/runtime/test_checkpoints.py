"""Checkpoints: a run stopped by a real signal and resumed ends bit-identical to one that never
stopped; every stage's state survives a resume; bad checkpoints are refused in one line and
overwrite nothing.

The signal tests wait for events (a checkpoint file, a row of losses.csv), never for a speed,
so they hold on a busy machine.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.helpers import ALL_STAGES, EVENT_TIMEOUT, ROOT, Background, npy_data_dir

from common.harness import load_stage

STAGE = "stages.stage08_train_eval"  # has dropout, so torch's RNG state must survive the resume too
# Bit-identical resumes need one thread count throughout (see docs/running.md, Determinism).
RUN = ["--data", "synthetic", "--epochs", "2", "--batch-size", "8", "--dropout", "0.3", "--threads", "1"]
STEPS_PER_EPOCH = 1000  # 8000 synthetic images / batch 8
SHORT = ["--data", "synthetic", "--batch-size", "800", "--threads", "1"]  # 10 steps an epoch: checkpoints in seconds


def run_stage(args: list[str], out: Path, stage: str = STAGE) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", stage, *args, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=EVENT_TIMEOUT)


def losses_written(out: Path) -> int:
    files = list(out.glob("*/*/losses.csv"))
    return sum(1 for _ in open(files[0])) - 1 if files else 0


def interrupt_in_epoch_two(checkpoint: Path, out: Path, sig: int) -> subprocess.CompletedProcess:
    run = Background(["-m", STAGE, *RUN, "--checkpoint", str(checkpoint), "--out", str(out)],
                     out.with_name(out.name + "-output"))
    run.wait_for(lambda: checkpoint.exists() and losses_written(out) > STEPS_PER_EPOCH,
                 "the first checkpoint and a step of epoch 2")
    run.process.send_signal(sig)
    return run.finish()


def params_of(out: Path) -> dict:
    with np.load(next(out.glob("*/*/params.npz"))) as saved:
        return dict(saved)


def meta_of(checkpoint: Path) -> dict:
    with np.load(checkpoint) as saved:
        return json.loads(str(saved["meta"]))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, sig):
    whole = run_stage(RUN, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-500:]

    split = tmp_path / "split.npz"
    stopped = interrupt_in_epoch_two(split, tmp_path / "split", sig)
    assert stopped.returncode == 130, stopped.stderr[-500:]
    assert f"interrupted by {signal.Signals(sig).name}" in stopped.stderr and "Traceback" not in stopped.stderr
    assert f"--resume {split} continues from epoch 2" in stopped.stderr
    assert meta_of(split)["epoch"] == 1 and meta_of(split)["step"] == STEPS_PER_EPOCH
    steps_taken = losses_written(tmp_path / "split")
    assert STEPS_PER_EPOCH < steps_taken < 2 * STEPS_PER_EPOCH, "stopped inside epoch 2"
    assert f"at step {steps_taken};" in stopped.stderr, "the record holds every step taken"
    summary = json.loads(next((tmp_path / "split").glob("*/*/summary.json")).read_text())
    assert summary["complete"] is False and summary["ended"] == "interrupted"

    resumed = run_stage(RUN + ["--checkpoint", str(split), "--resume", str(split)], tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-500:]
    assert "resumed from" in resumed.stdout
    whole_params, resumed_params = params_of(tmp_path / "whole"), params_of(tmp_path / "resumed")
    assert list(whole_params) == list(resumed_params)
    for name in whole_params:
        assert np.array_equal(whole_params[name], resumed_params[name]), f"{name} differs after the resume"
    assert meta_of(split)["epoch"] == 2


@pytest.mark.parametrize("stage_name", ALL_STAGES)
def test_every_stages_state_survives_a_resume(stage_name, tmp_path):
    """One epoch, then a resume for the second, ends bit for bit where two epochs in one run end:
    the objects each stage names in run.resume(...) are the whole of its state."""
    stage = load_stage(stage_name)
    checkpoint = str(tmp_path / "c.npz")
    whole = stage.main(SHORT + ["--epochs", "2", "--out", str(tmp_path / "whole")])
    stage.main(SHORT + ["--epochs", "1", "--checkpoint", checkpoint, "--out", str(tmp_path / "first")])
    resumed = stage.main(SHORT + ["--epochs", "2", "--resume", checkpoint, "--out", str(tmp_path / "second")])
    assert resumed["steps"] == whole["steps"] == 20
    expected, got = params_of(tmp_path / "whole"), params_of(tmp_path / "second")
    assert all(np.array_equal(expected[name], got[name]) for name in expected)


def run_in_process(stage_number: int, argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        load_stage(stage_number).main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture()
def good_checkpoint(tmp_path):
    path = tmp_path / "good.npz"
    load_stage(6).main(SHORT + ["--epochs", "1", "--checkpoint", str(path), "--out", str(tmp_path)])
    return path


def rewrite_meta(good: Path, bad: Path, change) -> None:
    with np.load(good) as saved:
        arrays = dict(saved)
    meta = json.loads(str(arrays.pop("meta")))
    change(meta)
    np.savez(bad, meta=np.array(json.dumps(meta)), **arrays)


def swap_first_two_tensors(meta: dict) -> None:
    """conv1.weight gets conv1.bias's numbers and the reverse: right names, wrong shapes."""
    entries = meta["state"][0]["value"]["dict"]
    entries[0][1], entries[1][1] = entries[1][1], entries[0][1]


BAD_CHECKPOINTS = {
    "truncated": lambda good, bad: bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2]),
    "not a checkpoint": lambda good, bad: bad.write_text("hello"),
    "another dtype": lambda good, bad: bad.write_bytes(good.read_bytes()),  # resumed with --dtype float64
    "missing": lambda good, bad: None,
    "a field missing": lambda good, bad: rewrite_meta(good, bad, lambda m: m.pop("step")),
    "a field of the wrong type": lambda good, bad: rewrite_meta(good, bad, lambda m: m.update(epoch="1")),
    "an array of the wrong shape": lambda good, bad: rewrite_meta(good, bad, swap_first_two_tensors),
}


@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_a_bad_checkpoint_is_refused_and_overwrites_nothing(case, good_checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    BAD_CHECKPOINTS[case](good_checkpoint, bad)
    before = bad.read_bytes() if bad.exists() else None
    extra = ["--dtype", "float64"] if case == "another dtype" else []
    code, _, err = run_in_process(6, SHORT + ["--epochs", "2", "--resume", str(bad), "--checkpoint", str(bad),
                                              "--out", str(tmp_path)] + extra, capsys)
    assert code == 2 and "--resume" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert (bad.read_bytes() if bad.exists() else None) == before


def test_a_checkpoint_of_another_stage_is_refused(good_checkpoint, tmp_path, capsys):
    code, _, err = run_in_process(7, SHORT + ["--epochs", "2", "--resume", str(good_checkpoint),
                                              "--out", str(tmp_path)], capsys)
    assert code == 2 and "made with stage 'stage06_optim'" in err


def test_divergence_keeps_the_last_good_checkpoint(good_checkpoint, tmp_path, capsys):
    before = good_checkpoint.read_bytes()
    code, _, err = run_in_process(6, SHORT + ["--epochs", "2", "--lr", "100", "--resume", str(good_checkpoint),
                                              "--checkpoint", str(good_checkpoint), "--out", str(tmp_path)], capsys)
    assert code == 3 and "diverged" in err
    assert good_checkpoint.read_bytes() == before


def test_resuming_a_finished_run_says_so_and_exits_0(good_checkpoint, tmp_path, capsys):
    code, out, err = run_in_process(6, SHORT + ["--epochs", "1", "--resume", str(good_checkpoint),
                                                "--out", str(tmp_path)], capsys)
    assert code == 0 and "already finished its 1 epoch(s)" in out and err == ""


def test_a_resume_with_another_learning_rate_is_announced_and_used(good_checkpoint, tmp_path, capsys):
    args = SHORT + ["--epochs", "2", "--resume", str(good_checkpoint), "--out", str(tmp_path)]
    same = load_stage(6).main(args)
    out = capsys.readouterr().out
    assert "continuing with" not in out
    changed = load_stage(6).main(args[:-2] + ["--lr", "0.002", "--out", str(tmp_path / "b")])
    out = capsys.readouterr().out
    assert "continuing with --lr 0.002 (was 0.001)" in out
    assert changed["final_loss"] != same["final_loss"], "the new learning rate is the one used"


@pytest.mark.parametrize("path", ["/proc/no-such-dir/ckpt.npz", "{tmp}"], ids=["unwritable", "a folder"])
def test_a_checkpoint_path_that_cannot_be_written_is_refused_before_training(path, tmp_path, capsys):
    code, _, err = run_in_process(6, SHORT + ["--checkpoint", path.format(tmp=tmp_path), "--out", str(tmp_path)],
                                  capsys)
    assert code == 2 and "--checkpoint" in err and len(err.strip().splitlines()) == 1
    assert losses_written(tmp_path) == 0, "refused before the first step"


@pytest.mark.slow
@pytest.mark.parametrize("stage_name", [p.values[0] for p in ALL_STAGES])
def test_ctrl_c_without_checkpoint_is_one_line_and_keeps_the_record(stage_name, tmp_path):
    run = Background(["-m", stage_name, "--data", "synthetic", "--epochs", "1", "--out", str(tmp_path / "runs")],
                     tmp_path)
    run.wait_for(lambda: losses_written(tmp_path / "runs") >= 1, "the first step")
    run.process.send_signal(signal.SIGINT)
    result = run.finish()
    assert result.returncode == 130 and "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    steps = int(last_line.split(" at step ")[1].split(";")[0])
    assert losses_written(tmp_path / "runs") == steps >= 1


def test_a_checkpoint_written_in_the_other_byte_order_resumes_the_same(tmp_path):
    """A checkpoint made on a big-endian machine holds the same numbers: every array of it
    rewritten in the other byte order resumes to the very parameters the original gives."""
    checkpoint, swapped = tmp_path / "c.npz", tmp_path / "swapped.npz"
    load_stage(8).main(SHORT + ["--epochs", "1", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "a")])
    with np.load(checkpoint) as saved:
        other_order = {key: saved[key].astype(saved[key].dtype.newbyteorder()) for key in saved.files}
    assert any(a.dtype.byteorder not in ("=", "|") for a in other_order.values())
    np.savez(swapped, **other_order)
    for path, out in ((checkpoint, "b"), (swapped, "c")):
        load_stage(8).main(SHORT + ["--epochs", "2", "--resume", str(path), "--out", str(tmp_path / out)])
    first, second = params_of(tmp_path / "b"), params_of(tmp_path / "c")
    assert all(np.array_equal(first[name], second[name]) for name in first)


def test_the_numpy_stage_resumes_without_torch_a_checkpoint_saved_with_it(tmp_path):
    """In this test process torch is loaded, so the checkpoint holds torch's random-number state;
    a numpy-only run must still read it, without loading torch."""
    checkpoint = tmp_path / "c.npz"
    load_stage(1).main(SHORT + ["--epochs", "1", "--checkpoint", str(checkpoint), "--out", str(tmp_path)])
    assert "torch_rng" in meta_of(checkpoint)
    code = ("import sys; from stages import stage01_numpy as s; "
            f"s.main({SHORT + ['--epochs', '2', '--resume', str(checkpoint), '--out', str(tmp_path / 'b')]!r}); "
            "print('torch loaded:', 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=EVENT_TIMEOUT)
    assert result.returncode == 0, result.stderr[-500:]
    assert "resumed from" in result.stdout and "torch loaded: False" in result.stdout


@pytest.mark.parametrize("change,message", [
    (["--batch-size", "400"], "made with batch_size 800, but this run has 400"),
    (["--seed", "3"], "made with seed 0, but this run has 3"),
    (["--data-dir", "{tiny}"], "made with 10 steps per epoch, this run has 1 (other data?)"),
], ids=["another batch size", "another seed", "other data"])
def test_a_checkpoint_of_another_run_is_refused(change, message, good_checkpoint, tmp_path, capsys):
    change = [a.format(tiny=npy_data_dir(tmp_path / "tiny")) if "{tiny}" in a else a for a in change]
    argv = SHORT + ["--epochs", "2", "--resume", str(good_checkpoint), "--out", str(tmp_path)]
    argv = [a for a in argv if a != "synthetic" and a != "--data"] if "--data-dir" in change else argv
    code, _, err = run_in_process(6, argv + change, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
