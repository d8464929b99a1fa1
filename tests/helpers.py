"""What the tests share: the stages as parameters, the argument presets, one way to run a stage's
main() and read its record, one way to say "close", and programs run in the background.

Import by name (`from tests.helpers import ALL_STAGES, run_main`); tests/conftest.py holds the
fixtures and is never imported.
"""
from __future__ import annotations

import contextlib
import csv
import inspect
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np
import pytest

from common.harness import (TOLERANCES, driver, group_left_behind_ended, load_stage, relative_error, stage_names,
                            worst_relative_error)

ROOT = Path(__file__).resolve().parent.parent
EVENT_TIMEOUT = 900  # a safety net only: the tests wait for events (a file, a row), never for a speed

# ---------------------------------------------------------------- the stages as test parameters
STAGES: list[str] = stage_names()  # ["stages.stage01_numpy", ...], found by their file names


def stage_number(name: str) -> int:
    """"stages.stage03_autograd" (or "stage03_autograd") -> 3."""
    return int(re.search(r"stage(\d\d)_", name)[1])


def stage_marker(name: str):
    return getattr(pytest.mark, f"stage{stage_number(name)}")


def stage_marks(name: str) -> list:
    """`stageN`; and `slow` for a stage that compiles with inductor (seconds for each new graph),
    so that make test-quick leaves it to make test."""
    return [stage_marker(name)] + ([pytest.mark.slow] if hasattr(load_stage(name), "can_compile") else [])


def stage_param(name: str):
    """A stage's module name as a test parameter, id "stage03_autograd", marked `stage3` (-m stage3)."""
    return pytest.param(name, id=name.split(".")[1], marks=stage_marks(name))


def stage_pair_param(previous: str, current: str):
    """Two consecutive stages, id "2->3", marked with the later stage: its lesson is the change."""
    return pytest.param(previous, current, id=f"{stage_number(previous)}->{stage_number(current)}",
                        marks=stage_marks(current))


ALL_STAGES = [stage_param(name) for name in STAGES]
CONSECUTIVE_STAGES = [stage_pair_param(a, b) for a, b in zip(STAGES, STAGES[1:])]


def stages_where(predicate: Callable[[ModuleType], bool]) -> list:
    """The stages for which predicate(stage module) is true, as parameters: the ranges a test
    runs over follow from what the stages are, so a new stage joins the right tests by itself."""
    return [stage_param(name) for name in STAGES if predicate(load_stage(name))]


# What a stage has, for stages_where(). Each looks at the stage itself, never at its number.
def has_module_net(stage: ModuleType) -> bool:
    """The model is an nn.Module, `Net` (from stage 5)."""
    return hasattr(stage, "Net")


def has_optimizer(stage: ModuleType) -> bool:
    """main() builds nn.CrossEntropyLoss and optim.SGD (from stage 6)."""
    return driver(stage).family == "module with optimizer"


def has_dropout(stage: ModuleType) -> bool:
    """Its Net takes a dropout probability (from stage 8)."""
    return has_module_net(stage) and "dropout" in inspect.signature(stage.Net).parameters


def has_hand_written_gradients(stage: ModuleType) -> bool:
    """backward() written by hand (stages 1-2)."""
    return driver(stage).family == "hand-written gradients"


def has_hand_written_pool(stage: ModuleType) -> bool:
    """Its own max_pool2x2 (stages 1-3), where later stages call F.max_pool2d."""
    return hasattr(stage, "max_pool2x2")


def loads_torch(stage: ModuleType) -> bool:
    """The stage imports torch (all but the numpy stage)."""
    return "torch" in vars(stage)


def uses_dataloader(stage: ModuleType) -> bool:
    """Batches come from a DataLoader (from stage 7), whose shuffle is torch's, not numpy's."""
    return hasattr(stage, "make_loaders")


def is_distributed(stage: ModuleType) -> bool:
    """Each process takes its share of the data through a DistributedSampler (stage 11)."""
    return "DistributedSampler" in vars(stage)


def shows(*names: str) -> Callable[[ModuleType], bool]:
    """The stage has these teaching printouts (show_tensor, show_loss_and_cost, ...)."""
    return lambda stage: all(hasattr(stage, name) for name in names)


def takes_option(flag: str) -> Callable[[ModuleType], bool]:
    """The stage's command line has this option (--device, --dropout, --data-parallel, ...)."""
    def predicate(stage: ModuleType) -> bool:
        from common.cli import build_parser

        parser = build_parser(stage.__file__, stage.__doc__)
        if hasattr(stage, "add_options"):
            stage.add_options(parser)
        return any(flag in action.option_strings for action in parser._actions)
    return predicate


# ---------------------------------------------------------------- argument presets
# The start of a stage's argv; a test adds what it needs after it (argparse keeps the last value).
# SMOKE: a run of a few steps on the built-in synthetic set, for what main() prints and writes.
SMOKE = ["--data", "synthetic", "--epochs", "1", "--batch-size", "8", "--max-steps", "3"]
# REPEATABLE: SMOKE that repeats bit for bit: one thread count throughout (docs/running.md, Determinism).
REPEATABLE = SMOKE + ["--threads", "1"]
# LEARNS: long enough to learn the synthetic set (300 steps of 16 at lr 0.01; chance is 10%).
LEARNS = ["--data", "synthetic", "--epochs", "1", "--batch-size", "16", "--lr", "0.01", "--max-steps", "300"]
# ONE_EPOCH: a whole epoch of the synthetic set, 1000 steps of 8: long enough for a signal to arrive in
# the middle of it; with a larger batch, a course run with no --max-steps that takes seconds.
ONE_EPOCH = ["--data", "synthetic", "--epochs", "1", "--batch-size", "8"]
TINY_TRAIN, TINY_TEST = 40, 10  # the images of conftest's `tiny_data` folder


def tiny(data_dir: Path) -> list[str]:
    """Whole epochs of 10 steps in a moment, batches of 4 from the `tiny_data` folder, on one thread
    (a run then repeats bit for bit: docs/running.md, Determinism): for checkpoints and resumes, which
    happen at the end of an epoch, and for runs that several tests read or that must repeat."""
    return ["--data-dir", str(data_dir), "--batch-size", "4", "--threads", "1"]


def for_stage(stage: str | ModuleType, argv: list[str], **options: str) -> list[str]:
    """argv plus each option the stage takes, e.g. for_stage(s, argv, dropout="0.3", device="cpu")."""
    stage = load_stage(stage) if isinstance(stage, str) else stage
    extra = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if takes_option(flag)(stage):
            extra += [flag, value]
    return [*argv, *extra]


def smoke_argv(stage: str | ModuleType) -> list[str]:
    """After tiny(), the argv of each stage's one shared run (conftest's `smoke_run`): 20 steps, two
    whole epochs (so a reshuffle too), seed 4, and where the stage takes them --dropout 0.3 (so
    that the run draws random numbers) and --device cpu (where a run repeats bit for bit)."""
    return for_stage(stage, ["--epochs", "2", "--max-steps", "20", "--seed", "4"], dropout="0.3", device="cpu")


# ---------------------------------------------------------------- a stage's main(), and its record
@dataclass
class StageResult:
    """What one run of a stage's main() left: its summary, record folder and what it printed."""
    summary: dict
    record: Path
    out: str  # stdout, with the teaching printouts
    err: str  # stderr: the progress bar, and any warning

    @property
    def losses(self) -> list[float]:
        """The loss of every step, from losses.csv."""
        with open(self.record / "losses.csv", newline="") as f:
            return [float(row["loss"]) for row in csv.DictReader(f)]

    @property
    def params(self) -> dict[str, np.ndarray]:
        """The final parameters, from params.npz."""
        with np.load(self.record / "params.npz") as saved:
            return dict(saved)

    def text(self, name: str) -> str:
        """Another file of the record as text (losses.csv in full precision, options.json, ...)."""
        return (self.record / name).read_text()


def run_main(stage: str | int, out_dir: Path, *argv: str, preset: list[str] = SMOKE) -> StageResult:
    """load_stage(stage).main(preset + ["--out", out_dir] + argv) in this process, its printing
    captured, and what it left. A later argument overrides the preset's (argparse keeps the last).

    Each run starts with torch.compile's in-memory caches empty, as in a new process. Otherwise a
    compiled stage reuses the graphs of earlier runs in this process, and a graph that an earlier
    run's batch size made dynamic is other generated code than the static graph a new process
    compiles, with other last digits: tests/equivalence/test_determinism.py shows it."""
    forget_compiled_graphs()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), group_left_behind_ended():
        summary = load_stage(stage).main([*preset, "--out", str(out_dir), *argv])
    return StageResult(summary, Path(summary["record"]), out.getvalue(), err.getvalue())


def forget_compiled_graphs() -> None:
    """torch.compiler.reset(): a compiled stage then traces afresh (inductor's kernels on disk stay)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.compiler.reset()


def exit_of_main(stage: str | int, argv: list[str], capsys) -> tuple[int, str, str]:
    """The exit code, stdout and stderr of a main() that must end with SystemExit (bad input, --help)."""
    with pytest.raises(SystemExit) as exit_info, group_left_behind_ended():
        load_stage(stage).main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


# ---------------------------------------------------------------- how close is close
def _error(actual, expected) -> tuple[str, float]:
    if isinstance(expected, dict):
        name, error = worst_relative_error(actual, expected)
        return f" (worst: {name})", error
    return "", relative_error(actual, expected)


def assert_close(actual, expected, dtype: str, what: str = "") -> None:
    """The relative error (common.harness.relative_error: max |a - e| / max |e|) within the
    tolerance of `dtype` (common.harness.TOLERANCES). Arrays, tensors or floats; or two dicts of
    them with the same keys, judged by their worst entry."""
    where, error = _error(actual, expected)
    rtol = TOLERANCES[dtype].rtol
    assert error <= rtol, f"{what or 'values'}{where}: relative error {error:.2e} > {rtol:.0e} ({dtype})"


def assert_differs(actual, expected, dtype: str, what: str = "", times: float = 1) -> None:
    """The opposite: they differ by more than `times` the tolerance of `dtype`, more than round-off
    could explain (times > 1: by far more, for a test that means something only if they do)."""
    where, error = _error(actual, expected)
    bound = times * TOLERANCES[dtype].rtol
    assert error > bound, f"{what or 'values'}{where}: relative error {error:.2e} <= {bound:.0e} ({dtype})"


# ---------------------------------------------------------------- the equivalence tests' computations
LR, MOMENTUM = 0.01, 0.9  # a larger lr than the tutorial's, so that a few steps move the weights visibly
BATCH_SIZES = (1, 4, 7)  # a single image, the tutorial's batch, and an odd one
TRAJECTORY_STEPS, TRAJECTORY_BATCH = 5, 7


class Computations:
    """One step and a trajectory of each stage, each computed once per session (conftest's
    `computed`) and read by every test that compares it: with the reference, and with the stage
    before (the same inputs for both, so that no stage is computed twice)."""

    def __init__(self, params: dict):
        self.params, self._done = params, {}

    def _once(self, key, compute):
        if key not in self._done:
            self._done[key] = compute()
        return self._done[key]

    @staticmethod
    def step_batch(batch_size: int):
        from common.harness import sample_batches

        return sample_batches(1, batch_size, seed=batch_size)[0]

    @staticmethod
    def trajectory_batches():
        from common.harness import sample_batches

        return sample_batches(TRAJECTORY_STEPS, TRAJECTORY_BATCH, seed=2)

    def one_step(self, stage: str, dtype: str, batch_size: int) -> dict:
        """Logits, loss and gradients of one step from the reference weights (common.harness.one_step)."""
        from common.harness import one_step

        x, y = self.step_batch(batch_size)
        return self._once(("step", stage, dtype, batch_size),
                          lambda: one_step(load_stage(stage), self.params, x, y, dtype, LR, MOMENTUM))

    def trajectory(self, stage: str, dtype: str) -> dict:
        """Losses and final parameters of TRAJECTORY_STEPS momentum steps (common.harness.trajectory)."""
        from common.harness import trajectory

        return self._once(("trajectory", stage, dtype),
                          lambda: trajectory(load_stage(stage), self.params, self.trajectory_batches(), dtype, LR,
                                             MOMENTUM))


# ---------------------------------------------------------------- for the fuzz tests
def event(text: str) -> None:
    """hypothesis.event(text) with any lone surrogate escaped: argv may hold them (a drawn one, or
    an undecodable byte as Python passes it on), and hypothesis's pytest plugin cannot encode one
    in its statistics: it would end the whole session with an INTERNALERROR."""
    import hypothesis

    hypothesis.event(text.encode("utf-8", "backslashreplace").decode("utf-8"))


# ---------------------------------------------------------------- small pieces for the claims
def reference_net(stage: str | int, dtype: str = "float64", dropout: float | None = None):
    """A stage's Net with the reference weights (seed 0), in `dtype`."""
    import torch

    from common.weights import reference_params

    net_class = load_stage(stage).Net
    model = (net_class() if dropout is None else net_class(dropout)).to(getattr(torch, dtype))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in reference_params(0).items()})
    return model


def a_batch(n: int = 4, seed: int = 0, dtype: str = "float64"):
    """n synthetic images, normalised, as a tensor of `dtype`, and their labels."""
    import torch

    from common.harness import sample_batches

    [(x, y)] = sample_batches(1, n, seed=seed)
    return torch.as_tensor(x, dtype=getattr(torch, dtype)), torch.as_tensor(y)


def train_a_few_steps(model, optimizer, steps: int = 3) -> None:
    """Steps of batches of 4, on the model's device and in its dtype."""
    import torch
    import torch.nn.functional as F

    from common.harness import sample_batches

    weight = next(model.parameters())
    for x, y in sample_batches(steps, 4, seed=1):
        optimizer.zero_grad()
        F.cross_entropy(model(torch.as_tensor(x, dtype=weight.dtype, device=weight.device)),
                        torch.as_tensor(y, device=weight.device)).backward()
        optimizer.step()


def pretend_gpus(monkeypatch, count: int) -> None:
    """torch.cuda says this many GPUs are visible (for what a stage decides, not for computing)."""
    pretend_accelerator(monkeypatch, "cuda", count)


def pretend_accelerator(monkeypatch, kind: str, count: int = 1) -> None:
    """torch.accelerator (and torch.cuda for "cuda") says this machine has `count` devices of
    this kind ("cuda", "mps", "xpu", ...), none with count 0: for what a stage decides, not for
    computing on them."""
    import torch

    here = torch.device(kind) if count else None
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda check_available=False: here)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.accelerator, "device_count", lambda: count)
    cuda = count if kind == "cuda" else 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)


def needs_gpus(count: int = 1):
    """Marks a test `cuda` and skips it where fewer than `count` CUDA GPUs are visible."""
    def mark(test):
        import torch

        reason = "no CUDA GPU visible" if count == 1 else f"needs {count} CUDA GPUs"
        return pytest.mark.cuda(pytest.mark.skipif(torch.cuda.device_count() < count, reason=reason)(test))
    return mark


# ---------------------------------------------------------------- programs run in the background
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
    """What the Makefile targets need, copied, so that they write into `dest`, not the real work/:
    the code, and the lesson pages (the exercises are written there)."""
    for folder in ("common", "stages", "docs"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("Makefile", "requirements.txt"):
        shutil.copy(ROOT / name, dest)
    return dest


# What an outer make (`make test ARGS='-x'`) hands down to every make started under it, in the
# environment and in MAKEFLAGS: the make a test starts must see only the variables it gives.
MAKE_VARIABLES = ("ARGS", "STAGE", "FROM", "TO", "NPROC", "FORCE", "MAKEFLAGS", "MFLAGS", "MAKELEVEL",
                  "MAKEOVERRIDES")


def outside_make(**variables: str) -> dict:
    """This process's environment without what an outer make handed down, plus `variables`."""
    return {**{name: value for name, value in os.environ.items() if name not in MAKE_VARIABLES}, **variables}


def make(course: Path, *args: str) -> subprocess.CompletedProcess:
    """make in `course` (a copy, or ROOT), with this interpreter's environment; -o: never (re)build
    that environment, whatever the timestamps of requirements.txt and its marker file say."""
    venv = Path(sys.prefix)
    return subprocess.run(["make", "--no-print-directory", f"VENV={venv}", "-o", str(venv / ".installed"), *args],
                          cwd=course, capture_output=True, text=True, timeout=EVENT_TIMEOUT, env=outside_make())


# ---------------------------------------------------------------- a small data folder
def npy_data_dir(folder: Path, n_train: int = 20, n_test: int = 10) -> Path:
    """A data folder in the course's offline .npy layout, random images and labels, seed 0."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        np.save(folder / f"{split}_x.npy", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
        np.save(folder / f"{split}_y.npy", rng.integers(0, 10, n))
    return folder


# ---------------------------------------------------------------- a stage with a mistake planted
def planted(folder: Path, stage: int, function: str, old: str, new: str, times: int = 1) -> Path:
    """The course's own stage, as a learner's file in `folder`, with one mistake planted in
    `function` (a function, Class.method or main): there `old`, found `times` times, becomes `new`."""
    import ast

    from common.harness import stage_file
    from common.tools.exercises import function_nodes

    source = stage_file(stage).read_text()
    node = function_nodes(ast.parse(source))[function]
    lines = source.splitlines(keepends=True)
    start, end = node.lineno - 1, node.end_lineno
    before, body, after = "".join(lines[:start]), "".join(lines[start:end]), "".join(lines[end:])
    assert body.count(old) == times, f"the plant must find {old!r} {times} time(s) in stage {stage}'s {function}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / stage_file(stage).name
    path.write_text(before + body.replace(old, new) + after)
    return path
