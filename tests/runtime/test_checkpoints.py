"""Checkpoints: a run stopped by a real signal and resumed ends bit-identical to one that never
stopped; every stage's state survives a resume; bad checkpoints are refused in one line and
overwrite nothing.

The signal tests wait for events (a checkpoint file, a row of losses.csv), never for a speed,
so they hold on a busy machine. The other tests resume whole epochs of 10 steps of a tiny data
folder (tests.helpers.tiny): a checkpoint is written at the end of an epoch.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import (ALL_STAGES, EVENT_TIMEOUT, ROOT, ONE_EPOCH, Background, exit_of_main, npy_data_dir,
                           run_main, tiny)

STAGE = "stages.stage08_train_eval"  # has dropout, so torch's RNG state must survive the resume too
# Bit-identical resumes need one thread count throughout (see docs/running.md, Determinism).
INTERRUPTED = ONE_EPOCH + ["--epochs", "2", "--dropout", "0.3", "--threads", "1"]
STEPS_PER_EPOCH = 1000  # 8000 synthetic images / batch 8: a signal sent in epoch 2 arrives in epoch 2


def losses_written(out: Path) -> int:
    files = list(out.glob("*/*/losses.csv"))
    return sum(1 for _ in open(files[0])) - 1 if files else 0


def meta_of(checkpoint: Path) -> dict:
    with np.load(checkpoint) as saved:
        return json.loads(str(saved["meta"]))


# ---------------------------------------------------------------- a real signal, then a resume
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The run that never stopped, which both signals' resumed runs must end at (in this process:
    only the interrupted run needs a process of its own, to receive a real signal)."""
    return run_main(STAGE, tmp_path_factory.mktemp("whole"), preset=INTERRUPTED).params


def interrupt_in_epoch_two(checkpoint: Path, out: Path, sig: int) -> subprocess.CompletedProcess:
    run = Background(["-m", STAGE, *INTERRUPTED, "--checkpoint", str(checkpoint), "--out", str(out)],
                     out.with_name(out.name + "-output"))
    run.wait_for(lambda: checkpoint.exists() and losses_written(out) > STEPS_PER_EPOCH,
                 "the first checkpoint and a step of epoch 2")
    run.process.send_signal(sig)
    return run.finish()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, sig, uninterrupted):
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

    resumed = run_main(STAGE, tmp_path / "resumed", "--checkpoint", str(split), "--resume", str(split),
                       preset=INTERRUPTED)
    assert "resumed from" in resumed.out
    assert list(resumed.params) == list(uninterrupted)
    for name, value in resumed.params.items():
        assert np.array_equal(uninterrupted[name], value), f"{name} differs after the resume"
    assert meta_of(split)["epoch"] == 2


# ---------------------------------------------------------------- every stage's state
@pytest.mark.parametrize("stage_name", ALL_STAGES)
def test_every_stages_state_survives_a_resume(stage_name, tmp_path, tiny_data):
    """One epoch, then a resume for the second, ends bit for bit where two epochs in one run end:
    the objects each stage names in run.resume(...) are the whole of its state."""
    checkpoint = str(tmp_path / "c.npz")
    epochs = tiny(tiny_data)
    whole = run_main(stage_name, tmp_path / "whole", "--epochs", "2", preset=epochs)
    run_main(stage_name, tmp_path / "first", "--epochs", "1", "--checkpoint", checkpoint, preset=epochs)
    resumed = run_main(stage_name, tmp_path / "second", "--epochs", "2", "--resume", checkpoint, preset=epochs)
    assert resumed.summary["steps"] == whole.summary["steps"] == 20
    expected, got = whole.params, resumed.params
    assert all(np.array_equal(expected[name], got[name]) for name in expected)


# ---------------------------------------------------------------- bad checkpoints
@pytest.fixture(scope="module")
def pristine_checkpoint(tmp_path_factory, tiny_data) -> Path:
    """Stage 6 after one whole epoch, made once; tests get a copy of it (`good_checkpoint`)."""
    folder = tmp_path_factory.mktemp("good")
    run_main(6, folder, "--epochs", "1", "--checkpoint", str(folder / "good.npz"), preset=tiny(tiny_data))
    return folder / "good.npz"


@pytest.fixture()
def good_checkpoint(pristine_checkpoint, tmp_path) -> Path:
    return Path(shutil.copy(pristine_checkpoint, tmp_path / "good.npz"))


@pytest.fixture()
def resume_argv(tiny_data, tmp_path) -> list[str]:
    """Stage 6's argv for a run of two epochs into tmp_path; a test adds --resume and the rest."""
    return tiny(tiny_data) + ["--epochs", "2", "--out", str(tmp_path)]


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
def test_a_bad_checkpoint_is_refused_and_overwrites_nothing(case, good_checkpoint, resume_argv, tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    BAD_CHECKPOINTS[case](good_checkpoint, bad)
    before = bad.read_bytes() if bad.exists() else None
    extra = ["--dtype", "float64"] if case == "another dtype" else []
    code, _, err = exit_of_main(6, resume_argv + ["--resume", str(bad), "--checkpoint", str(bad)] + extra, capsys)
    assert code == 2 and "--resume" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert (bad.read_bytes() if bad.exists() else None) == before


def test_a_checkpoint_of_another_stage_is_refused(good_checkpoint, resume_argv, capsys):
    code, _, err = exit_of_main(7, resume_argv + ["--resume", str(good_checkpoint)], capsys)
    assert code == 2 and "made with stage 'stage06_optim'" in err


def test_divergence_keeps_the_last_good_checkpoint(good_checkpoint, resume_argv, capsys):
    before = good_checkpoint.read_bytes()
    code, _, err = exit_of_main(6, resume_argv + ["--lr", "100", "--resume", str(good_checkpoint),
                                                  "--checkpoint", str(good_checkpoint)], capsys)
    assert code == 3 and "diverged" in err
    assert good_checkpoint.read_bytes() == before


def test_resuming_a_finished_run_says_so_and_exits_0(good_checkpoint, resume_argv, capsys):
    code, out, err = exit_of_main(6, resume_argv + ["--epochs", "1", "--resume", str(good_checkpoint)], capsys)
    assert code == 0 and "already finished its 1 epoch(s)" in out and err == ""


def test_a_resume_with_another_learning_rate_is_announced_and_used(good_checkpoint, tiny_data, tmp_path):
    args = ["--epochs", "2", "--resume", str(good_checkpoint)]
    same = run_main(6, tmp_path / "a", *args, preset=tiny(tiny_data))
    assert "continuing with" not in same.out
    changed = run_main(6, tmp_path / "b", *args, "--lr", "0.002", preset=tiny(tiny_data))
    assert "continuing with --lr 0.002 (was 0.001)" in changed.out
    assert changed.summary["final_loss"] != same.summary["final_loss"], "the new learning rate is the one used"


@pytest.mark.parametrize("path", ["/proc/no-such-dir/ckpt.npz", "{tmp}"], ids=["unwritable", "a folder"])
def test_a_checkpoint_path_that_cannot_be_written_is_refused_before_training(path, resume_argv, tmp_path, capsys):
    code, _, err = exit_of_main(6, resume_argv + ["--checkpoint", path.format(tmp=tmp_path)], capsys)
    assert code == 2 and "--checkpoint" in err and len(err.strip().splitlines()) == 1
    assert losses_written(tmp_path) == 0, "refused before the first step"


def test_two_processes_checking_one_checkpoint_path_at_once_both_pass(tmp_path, monkeypatch):
    """Every process of a run under torchrun checks --checkpoint before training, at the same
    moment. Played here in the order that once failed in CI: the second process's whole check
    runs between the first one's test write and its clean-up."""
    from common.run import checkpoint

    path, interleaved = tmp_path / "ckpt.npz", []
    unlink = Path.unlink

    def unlink_after_the_other_process(self, *args, **kwargs):
        if self.parent == tmp_path and not interleaved:
            interleaved.append(self.name)
            checkpoint.check_writable(path)  # the other process, start to end
        return unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", unlink_after_the_other_process)
    checkpoint.check_writable(path)
    assert interleaved, "the check cleans up with Path.unlink, where the other process was played in"
    assert list(tmp_path.iterdir()) == [], "each process removes its own test file, and only that"


@pytest.mark.parametrize("change,message", [
    (["--batch-size", "2"], "made with batch_size 4, but this run has 2"),
    (["--seed", "3"], "made with seed 0, but this run has 3"),
    (["--data-dir", "{other}"], "made with 10 steps per epoch, this run has 5 (other data?)"),
], ids=["another batch size", "another seed", "other data"])
def test_a_checkpoint_of_another_run_is_refused(change, message, good_checkpoint, resume_argv, tmp_path, capsys):
    change = [str(npy_data_dir(tmp_path / "other", 20, 10)) if a == "{other}" else a for a in change]
    code, _, err = exit_of_main(6, resume_argv + ["--resume", str(good_checkpoint)] + change, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- what a checkpoint file holds
def test_a_checkpoint_written_in_the_other_byte_order_resumes_the_same(tmp_path, tiny_data):
    """A checkpoint made on a big-endian machine holds the same numbers: every array of it
    rewritten in the other byte order resumes to the very parameters the original gives."""
    checkpoint, swapped = tmp_path / "c.npz", tmp_path / "swapped.npz"
    epochs = tiny(tiny_data)
    run_main(8, tmp_path / "a", "--epochs", "1", "--checkpoint", str(checkpoint), preset=epochs)
    with np.load(checkpoint) as saved:
        other_order = {key: saved[key].astype(saved[key].dtype.newbyteorder()) for key in saved.files}
    assert any(a.dtype.byteorder not in ("=", "|") for a in other_order.values())
    np.savez(swapped, **other_order)
    first, second = (run_main(8, tmp_path / out, "--epochs", "2", "--resume", str(path), preset=epochs).params
                     for path, out in ((checkpoint, "b"), (swapped, "c")))
    assert all(np.array_equal(first[name], second[name]) for name in first)


def test_the_numpy_stage_resumes_without_torch_a_checkpoint_saved_with_it(tmp_path, tiny_data):
    """In this test process torch is loaded, so the checkpoint holds torch's random-number state;
    a numpy-only run, in a process of its own, must still read it without loading torch."""
    checkpoint = tmp_path / "c.npz"
    epochs = tiny(tiny_data)
    run_main(1, tmp_path, "--epochs", "1", "--checkpoint", str(checkpoint), preset=epochs)
    assert "torch_rng" in meta_of(checkpoint)
    code = ("import sys; from stages import stage01_numpy as s; "
            f"s.main({epochs + ['--epochs', '2', '--resume', str(checkpoint), '--out', str(tmp_path / 'b')]!r}); "
            "print('torch loaded:', 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=EVENT_TIMEOUT)
    assert result.returncode == 0, result.stderr[-500:]
    assert "resumed from" in result.stdout and "torch loaded: False" in result.stdout
