"""Writers of one file: two runs given the same --checkpoint, a checkpoint path that names a file
that is not a checkpoint, and a course summary whose figure fails part-way.

A second writer is played at a known point: inside the first one's write (the temporary files),
or while the first run is held at its first epoch (tests.helpers.held_at), never after a sleep.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.errors import BAD_INPUT, WRITE_FAILED, CourseError
from common.run import checkpoint
from tests.helpers import EVENT_TIMEOUT, ROOT, SMOKE, Background, held_at, tiny

STAGE = "stages.stage06_optim"


def run_stage(*options: str) -> subprocess.CompletedProcess:
    """The stage, SMOKE unless `options` say otherwise (argparse: the last value of an option wins)."""
    return subprocess.run([sys.executable, "-m", STAGE, *SMOKE, *options], cwd=ROOT, capture_output=True,
                          text=True, timeout=EVENT_TIMEOUT)


def said(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and "step/s" not in line]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- the temporary file
def test_two_writers_of_one_file_never_write_into_the_same_temporary_file(tmp_path):
    """A second writer starts and ends while the first is half-way through: each file written is
    one writer's whole, never a mix, and no temporary file is left."""
    path = tmp_path / "ckpt.npz"

    def first(f):
        f.write(b"A" * 1000)
        checkpoint.write_atomically(path, lambda g: g.write(b"B" * 2000))  # the second writer, meanwhile
        f.write(b"A" * 1000)

    checkpoint.write_atomically(path, first)
    assert path.read_bytes() == b"A" * 2000, "the last rename wins, with one writer's whole file"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"], "no temporary file left"


# ---------------------------------------------------------------- one run per checkpoint
def test_a_second_run_on_a_checkpoint_that_a_run_holds_refuses_in_one_line(tmp_path, tiny_data):
    ckpt, one_epoch = tmp_path / "ckpt.npz", [*tiny(tiny_data), "--epochs", "1"]  # a whole epoch: a checkpoint
    first = Background(["-m", STAGE, *one_epoch, "--checkpoint", str(ckpt), "--out", str(tmp_path / "first")],
                       tmp_path, env=held_at("common.run:StageRun.start_epoch", tmp_path))
    first.wait_for(lambda: (tmp_path / "held").exists(), "the first run to reach its first epoch")
    second = run_stage(*one_epoch, "--checkpoint", str(ckpt), "--out", str(tmp_path / "second"))
    (tmp_path / "release").touch()
    assert second.returncode == BAD_INPUT and "Traceback" not in second.stderr, second.stderr[-800:]
    [line] = said(second.stderr)
    assert line.startswith(f"stage06_optim: error: --checkpoint {ckpt}: another run (process {first.process.pid}) "
                           "is writing that checkpoint")
    done = first.finish()
    assert done.returncode == 0, done.stderr[-800:]
    import torch  # noqa: F401  (load() decodes a torch stage's tensors only once torch is loaded)

    meta, _ = checkpoint.load(ckpt, stage="stage06_optim")
    assert meta["epoch"] == 1, "the first run's checkpoint is whole"
    again = run_stage(*one_epoch, "--checkpoint", str(ckpt), "--out", str(tmp_path / "again"))
    assert again.returncode == 0, "once the first run ended, the checkpoint is free: " + again.stderr[-800:]


# ---------------------------------------------------------------- a file that is not a checkpoint
def not_checkpoints(folder: Path) -> dict[str, Path]:
    source = folder / "train.py"
    source.write_text("print('my own work')\n")
    arrays = folder / "data.npz"
    np.savez(arrays, x=np.arange(3))
    return {"a Python file": source, "another program's .npz": arrays}


@pytest.mark.parametrize("kind", ["a Python file", "another program's .npz"])
def test_checkpoint_refuses_to_overwrite_a_file_that_is_not_a_checkpoint(kind, tmp_path):
    path = not_checkpoints(tmp_path)[kind]
    before = digest(path)
    result = run_stage("--checkpoint", str(path), "--out", str(tmp_path / "runs"))
    assert result.returncode == BAD_INPUT and "Traceback" not in result.stderr, result.stderr[-800:]
    [line] = said(result.stderr)
    assert f"--checkpoint {path}: that file exists and is not a checkpoint of this course" in line
    assert digest(path) == before, "the file is as it was"


# ---------------------------------------------------------------- the course summary
def test_a_course_summary_whose_figure_fails_part_way_keeps_the_previous_one(tmp_path, monkeypatch):
    from common.tools import course

    argv = [*SMOKE, "--stages", "4", "--out", str(tmp_path)]
    with contextlib.redirect_stdout(io.StringIO()):
        course.main(argv)
    png, summary = tmp_path / "course-summary-stages-4-smoke.png", tmp_path / "course-summary-stages-4-smoke.json"
    good = digest(png), digest(summary)

    def full_disk_half_way(target, **kwargs):  # the disk fills while the summary's PNG is written
        target.write(b"\x89PNG\r\n\x1a\n partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    def a_figure_that_fails(*args, draw=course.draw_course):
        fig = draw(*args)
        fig.savefig = full_disk_half_way
        return fig

    monkeypatch.setattr(course, "draw_course", a_figure_that_fails)
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(CourseError) as failed:
        course.main(argv)
    assert failed.value.exit_code == WRITE_FAILED
    assert str(failed.value).startswith(f"cannot write the summary to {tmp_path}: No space left on device")
    assert (digest(png), digest(summary)) == good, "the previous summary and figure are whole"
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file left"
