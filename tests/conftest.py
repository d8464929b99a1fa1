"""Shared fixtures: the stages as pytest parameters, each carrying its own marker (-m stage3)."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common.harness import stage_names  # noqa: E402
from common.weights import reference_params  # noqa: E402

STAGES = stage_names()


def stage_number(name: str) -> int:
    return int(name.split(".stage")[1][:2])


def stage_param(name: str):
    """A stage module name as a test parameter, marked `stageN` so -m can select it."""
    return pytest.param(name, id=name.split(".")[1], marks=getattr(pytest.mark, f"stage{stage_number(name)}"))


def stage_pair_param(previous: str, current: str):
    return pytest.param(previous, current, id=f"{stage_number(previous)}->{stage_number(current)}",
                        marks=getattr(pytest.mark, f"stage{stage_number(current)}"))


ALL_STAGES = [stage_param(n) for n in STAGES]
CONSECUTIVE_STAGES = [stage_pair_param(a, b) for a, b in zip(STAGES, STAGES[1:])]


@pytest.fixture(scope="session")
def params():
    return reference_params(0)


# ---------------------------------------------------------------- programs run in the background
EVENT_TIMEOUT = 900  # a safety net only: the tests wait for events (a file, a row), never for a speed


class Background:
    """A course program started in the background, its output going to files: a pipe that no one
    reads while the test waits could fill up and stall the program on a slow machine."""

    def __init__(self, argv: list[str], folder: Path, **popen):
        folder.mkdir(parents=True, exist_ok=True)
        self.stdout, self.stderr = folder / "stdout.txt", folder / "stderr.txt"
        with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
            self.process = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=out, stderr=err, **popen)

    def wait_for(self, condition, what: str) -> None:
        deadline = time.monotonic() + EVENT_TIMEOUT
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"the run ended (code {self.process.returncode}) before {what}: "
                                     f"{self.stderr.read_text()[-500:]}")
            assert time.monotonic() < deadline, f"gave up waiting for {what}"
            time.sleep(0.02)

    def finish(self) -> subprocess.CompletedProcess:
        self.process.wait(timeout=EVENT_TIMEOUT)
        return subprocess.CompletedProcess(self.process.args, self.process.returncode,
                                           self.stdout.read_text(), self.stderr.read_text())


def free_port() -> int:
    """A TCP port free at this moment, for a test's own process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the make targets, in a copy
def copy_of_the_course(dest: Path) -> Path:
    """What the Makefile targets need, copied, so that they write into `dest`, not the real work/."""
    for folder in ("common", "stages"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("Makefile", "requirements.txt"):
        shutil.copy(ROOT / name, dest)
    return dest


def make(course: Path, *args: str) -> subprocess.CompletedProcess:
    """make in the copy, with this interpreter's environment; -o: never (re)build that environment."""
    venv = Path(sys.prefix)
    return subprocess.run(["make", "--no-print-directory", f"VENV={venv}", "-o", str(venv / ".installed"), *args],
                          cwd=course, capture_output=True, text=True, timeout=EVENT_TIMEOUT)


# ---------------------------------------------------------------- a small data folder
def npy_data_dir(folder: Path, n_train: int = 20, n_test: int = 10) -> Path:
    """A data folder in the course's offline .npy layout, random images and labels, seed 0."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        np.save(folder / f"{split}_x.npy", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
        np.save(folder / f"{split}_y.npy", rng.integers(0, 10, n))
    return folder
