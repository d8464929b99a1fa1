"""Each stage as a program: it trains end to end, leaves a record, and rejects bad input in one line."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from tests.helpers import ALL_STAGES, ROOT, make, npy_data_dir, stage_number

from common.tools import course
from common.harness import load_stage

SMOKE = ["--data", "synthetic", "--epochs", "1", "--max-steps", "20"]


@pytest.mark.parametrize("stage_name", ALL_STAGES)
def test_stage_trains_end_to_end_and_leaves_a_record(stage_name, tmp_path, capsys):
    summary = load_stage(stage_name).main(SMOKE + ["--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "final training loss" in out and "test accuracy" in out and "time" in out
    assert summary["steps"] == 20 and 0.0 <= summary["test_accuracy"] <= 1.0
    record = tmp_path / stage_name.split(".")[1]
    [run_dir] = list(record.iterdir())
    assert json.loads((run_dir / "options.json").read_text())["max_steps"] == 20
    with open(run_dir / "losses.csv") as f:
        assert len(list(csv.DictReader(f))) == 20
    assert (run_dir / "accuracy.csv").exists() and (run_dir / "curves.png").stat().st_size > 10_000


@pytest.mark.parametrize("stage_name", ALL_STAGES)
def test_help_names_every_default(stage_name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_stage(stage_name).main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "Changes from stage" in out and "(default: 4)" in out and "(default: 0.001)" in out


BAD_INPUT = [  # (arguments, expected exit code, a piece of the message)
    (["--batch-size", "0"], 2, "--batch-size: must be a positive integer"),
    (["--epochs", "-1"], 2, "--epochs: must be a positive integer"),
    (["--lr", "0"], 2, "--lr: must be a positive number"),
    (["--lr", "nan"], 2, "--lr: must be a positive number"),
    (["--lr", "fast"], 2, "not a number"),
    (["--momentum", "-0.5"], 2, "--momentum: must be zero or more"),
    (["--max-steps", "0"], 2, "--max-steps: must be a positive integer"),
    (["--dtype", "float16"], 2, "invalid choice: 'float16'"),
    (["--data", "imagenet"], 2, "invalid choice: 'imagenet'"),
    (["--data-dir", "/nonexistent/cifar"], 2, "no such folder"),
    (["--data", "synthetic", "--out", "/proc/no-such-dir"], 2, "cannot write run records"),
    (["--data", "synthetic", "--lr", "100"], 3, "training diverged; try a smaller --lr"),
]


@pytest.mark.parametrize("stage_name", ALL_STAGES)
@pytest.mark.parametrize("argv,code,message", BAD_INPUT, ids=[" ".join(a) for a, _, _ in BAD_INPUT])
def test_bad_input_gets_one_line_and_an_exit_code(stage_name, argv, code, message, tmp_path, capsys):
    argv = argv if "--out" in argv else argv + ["--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        load_stage(stage_name).main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == code
    assert message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1


DEVICE_STAGES = [p for p in ALL_STAGES if stage_number(p.values[0]) >= 9]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without a GPU")
@pytest.mark.parametrize("stage_name", DEVICE_STAGES)
def test_asking_for_a_missing_gpu_is_one_line_and_exit_code_2(stage_name, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_stage(stage_name).main(["--device", "cuda", "--data", "synthetic", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "no such CUDA device" in err and "Traceback" not in err


BAD_DATA_DIRS = {  # (what to write into an otherwise good .npy folder, a piece of the message)
    "empty folder": (None, "holds neither"),
    "images of the wrong shape": (("test_x.npy", np.zeros((10, 3, 32, 32), np.uint8)), "shape (N, 32, 32, 3)"),
    "images of the wrong dtype": (("test_x.npy", np.zeros((10, 32, 32, 3), np.float32)), "must be uint8"),
    "too few labels": (("test_y.npy", np.zeros(9, np.int64)), "10 images but 9 labels"),
    "labels outside 0-9": (("train_y.npy", np.full(20, 12)), "labels must lie in 0-9"),
    "a corrupt file": (("train_y.npy", b"not numpy"), "not a readable .npy file"),
}


def make_bad_data_dir(folder, case):
    change, _ = BAD_DATA_DIRS[case]
    if change is None:
        folder.mkdir()
        return folder
    npy_data_dir(folder)
    name, value = change
    if isinstance(value, bytes):
        (folder / name).write_bytes(value)
    else:
        np.save(folder / name, value)
    return folder


@pytest.mark.parametrize("stage_name", ALL_STAGES)
@pytest.mark.parametrize("case", BAD_DATA_DIRS)
def test_bad_data_folders_get_one_line_and_exit_code_2(stage_name, case, tmp_path, capsys):
    folder = make_bad_data_dir(tmp_path / "data", case)
    with pytest.raises(SystemExit) as exit_info:
        load_stage(stage_name).main(["--data-dir", str(folder), "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and BAD_DATA_DIRS[case][1] in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_real_process_prints_no_traceback_on_bad_input():
    result = subprocess.run([sys.executable, "-m", "stages.stage01_numpy", "--data-dir", "/nonexistent"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("--data-dir /nonexistent: no such folder")
    assert "Traceback" not in result.stderr


def test_synthetic_data_is_learnable(tmp_path):
    """Chance is 10%; a few hundred steps must do far better, or the synthetic set teaches nothing."""
    summary = load_stage(1).main(["--data", "synthetic", "--epochs", "1", "--max-steps", "300",
                                  "--batch-size", "16", "--lr", "0.01", "--out", str(tmp_path)])
    assert summary["test_accuracy"] > 0.5


def test_same_seed_same_losses_in_every_torch_free_and_torch_stage(tmp_path):
    """With one seed, stages 1-3 see the same weights and batches, so they print the same losses."""
    summaries = course.main(["--stages", "1", "2", "3", "--out", str(tmp_path)] + SMOKE)
    losses = [s["final_loss"] for s in summaries]
    assert max(losses) - min(losses) < 1e-4
    assert (tmp_path / "course-summary-stages-1-2-3-smoke.json").exists()


def test_make_diff_shows_the_lesson():
    result = make(ROOT, "diff", "FROM=2", "TO=3")
    assert result.returncode == 0, result.stderr
    assert "+        loss.backward()" in result.stdout
    assert "-def conv2d_backward(dout, cols, weight):" in result.stdout
    assert "--- a/stages/stage02_tensors.py" in result.stdout


@pytest.mark.parametrize("arguments", [
    ["diff", "FROM=2; touch {marker}", "TO=3"],
    ["diff", "FROM=2", "TO=$(touch {marker})"],
    ["test-quick", "ARGS=--collect-only -q tests/runtime/test_weights.py; touch {marker}"],
    ["test-quick", "ARGS=--collect-only -q tests/runtime/test_weights.py `touch {marker}`"],
], ids=["FROM with ;", "TO with $()", "ARGS with ;", "ARGS with backquotes"])
def test_make_targets_never_run_user_text_as_a_command(arguments, tmp_path):
    marker = tmp_path / "ran"
    result = make(ROOT, *(a.format(marker=marker) for a in arguments))
    assert not marker.exists(), "the learner's text was run as a shell command"
    assert result.returncode != 0 and "Traceback" not in result.stderr


@pytest.mark.stage1
def test_the_numpy_stage_runs_without_loading_torch(tmp_path):
    code = ("import sys; from stages import stage01_numpy as s; "
            f"s.main(['--data', 'synthetic', '--max-steps', '5', '--out', {str(tmp_path)!r}]); "
            "print('torch loaded:', 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "torch loaded: False" in result.stdout


def test_a_run_too_short_to_learn_says_so_in_one_line(tmp_path, capsys):
    summary = load_stage(1).main(SMOKE + ["--out", str(tmp_path)])
    assert summary["test_accuracy"] < 0.2, "20 steps at lr 0.001 stay below twice chance"
    lines = [line for line in capsys.readouterr().out.splitlines() if "too few to learn" in line]
    assert len(lines) == 1 and "--max-steps" in lines[0]


def test_a_run_that_learned_does_not_say_it_was_too_short(tmp_path, capsys):
    summary = load_stage(1).main(["--data", "synthetic", "--max-steps", "300", "--batch-size", "16", "--lr", "0.01",
                                  "--out", str(tmp_path)])
    assert summary["test_accuracy"] > 0.5
    assert "too few to learn" not in capsys.readouterr().out
