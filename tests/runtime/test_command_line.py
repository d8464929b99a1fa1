"""Each stage's command line: --help names every default, and bad input (options, data folders, a
GPU that is not there) is refused in one line with an exit code, never a traceback."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from common.harness import load_stage
from tests.helpers import ALL_STAGES, EVENT_TIMEOUT, ROOT, exit_of_main, npy_data_dir, stages_where, takes_option


@pytest.mark.parametrize("stage_name", ALL_STAGES)
def test_help_names_every_default(stage_name, capsys):
    code, out, _ = exit_of_main(stage_name, ["--help"], capsys)
    assert code == 0
    stage = load_stage(stage_name)
    assert stage.__doc__.splitlines()[0] in out, "the stage's one line"
    assert f"docs/stages/{stage.__name__.split('.')[1]}.md" in out, "where its lesson is"
    assert "(default: 4)" in out and "(default: 0.001)" in out
    assert len(out.splitlines()) <= 45, "one screen"


BAD_INPUT = [  # (arguments, expected exit code, a piece of the message)
    (["--batch-size", "0"], 2, "--batch-size: must be at least 1 and at most"),
    (["--epochs", "-1"], 2, "--epochs: must be at least 1, got -1"),
    (["--lr", "0"], 2, "--lr: must be above 0, got 0"),
    (["--lr", "nan"], 2, "--lr: must be above 0, got nan"),
    (["--lr", "fast"], 2, "not a number"),
    (["--momentum", "-0.5"], 2, "--momentum: must be at least 0 and below 1"),
    (["--momentum", "1"], 2, "--momentum: must be at least 0 and below 1"),
    (["--max-steps", "0"], 2, "--max-steps: must be at least 1"),
    (["--threads", "0"], 2, "--threads: must be at least 1 and at most 256"),
    (["--dtype", "float16"], 2, "invalid choice: 'float16'"),
    (["--data", "imagenet"], 2, "invalid choice: 'imagenet'"),
    (["--data-dir", "/nonexistent/cifar"], 2, "no such folder"),
    (["--data", "synthetic", "--out", "/proc/no-such-dir"], 2, "--out /proc/no-such-dir: cannot make a folder"),
    (["--data", "synthetic", "--lr", "100"], 3, "training diverged; try a smaller --lr"),
]


@pytest.mark.parametrize("stage_name", ALL_STAGES)
@pytest.mark.parametrize("argv,code,message", BAD_INPUT, ids=[" ".join(a) for a, _, _ in BAD_INPUT])
def test_bad_input_gets_one_line_and_an_exit_code(stage_name, argv, code, message, tmp_path, capsys):
    argv = argv if "--out" in argv else argv + ["--out", str(tmp_path)]
    exit_code, _, err = exit_of_main(stage_name, argv, capsys)
    assert exit_code == code
    assert message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without a GPU")
@pytest.mark.parametrize("stage_name", stages_where(takes_option("--device")))
def test_asking_for_a_missing_gpu_is_one_line_and_exit_code_2(stage_name, tmp_path, capsys):
    code, _, err = exit_of_main(stage_name, ["--device", "cuda", "--data", "synthetic", "--out", str(tmp_path)], capsys)
    assert code == 2 and "cuda: no such device on this machine" in err and "Traceback" not in err


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
    code, _, err = exit_of_main(stage_name, ["--data-dir", str(folder), "--out", str(tmp_path / "runs")], capsys)
    assert code == 2 and BAD_DATA_DIRS[case][1] in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_real_process_prints_no_traceback_on_bad_input():
    result = subprocess.run([sys.executable, "-m", "stages.stage01_numpy", "--data-dir", "/nonexistent"],
                            cwd=ROOT, capture_output=True, text=True, timeout=EVENT_TIMEOUT)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("--data-dir /nonexistent: no such folder")
    assert "Traceback" not in result.stderr
