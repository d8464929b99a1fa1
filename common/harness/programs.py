"""A stage's whole program, its main(), run in this process on a small data folder, and what it
left read back: the record (per-step losses, accuracy per epoch, final parameters), the data
order (which images each training step saw) and how it ended. `make check` runs a learner's
main() beside the course's this way, and `make mistakes` runs each mistake beside the correct run.

The runs skip the figures of their record (curves.png): matplotlib would take longer than the
few dozen steps they train, and nothing here looks at the picture."""
from __future__ import annotations

import csv
import inspect
import io
import sys
import time
from contextlib import ExitStack, contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from unittest import mock

import numpy as np

from common.data import make_synthetic
from common.harness.driver import group_left_behind_ended


@dataclass
class Program:
    """What one run of a main() left."""
    losses: list[float]  # the loss of every step, from losses.csv
    accuracies: list[float]  # the test accuracy after each epoch, from accuracy.csv
    params: dict | None  # the final parameters, from params.npz (None if the run saved none)
    batches: list[tuple]  # the data order: a fingerprint of each training batch, in order
    epochs: list[int]  # the epoch (1, 2, ...) of each training batch: which call of train_one_epoch saw it
    calls: dict[str, list[dict]]  # the arguments of every call of train_one_epoch and evaluate
    returned: dict[str, list]  # what each call of train_one_epoch and evaluate returned
    exit_code: int | None = None  # None when main() returned
    error: BaseException | None = None  # an exception main() raised, other than SystemExit
    out: str = ""  # what it printed: stdout
    err: str = ""  # stderr: the progress bar, and the one line of a run that ended early
    seconds: float = 0.0
    record: Path | None = None
    exit: SystemExit | None = None  # how main() exited, when it did
    evaluating: bool = False  # while the run lasts: whether evaluate() is running now
    extra: dict = field(default_factory=dict)  # what a caller's own watchers noted

    @property
    def last_line(self) -> str:
        """The last line on stderr: the one line of a run that ended with an exit code."""
        lines = [line for line in self.err.replace("\r", "\n").splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""


def small_data(folder: Path, n_train: int, n_test: int, seed: int = 0, by_class: bool = False) -> Path:
    """A data folder in the course's .npy layout from the synthetic set; `by_class`: the training
    images stored class by class, as a folder per class (torchvision's ImageFolder) lists them."""
    data = make_synthetic(seed, n_train=n_train, n_test=n_test)
    order = np.argsort(data.train_y, kind="stable") if by_class else np.arange(n_train)
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in (("train_x", data.train_x[order]), ("train_y", data.train_y[order]),
                        ("test_x", data.test_x), ("test_y", data.test_y)):
        np.save(folder / f"{name}.npy", array)
    return folder


def fingerprint(x) -> tuple:
    """A batch of images in a few numbers: its shape and two weighted sums, enough to tell two
    batches (or two orders of the same images) apart."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    flat = x.reshape(len(x), -1).sum(axis=1) if x.ndim > 1 else x
    weights = np.arange(1, len(flat) + 1)
    return tuple(x.shape), float(np.round(flat.sum(), 6)), float(np.round((flat * weights).sum(), 6))


def run_program(main: Callable, argv: list[str], watchers: tuple = ()) -> Program:
    """main(argv) in this process, watched: `main` may be a learner's (a function whose globals
    are its stage's module). `watchers`: functions of the Program being made, each returning a
    context manager to enter around the run (they note what they watch in program.extra)."""
    stage = main.__globals__
    program = Program([], [], None, [], [], {"train_one_epoch": [], "evaluate": []},
                      {"train_one_epoch": [], "evaluate": []})

    def note_batch(x) -> None:
        if not program.evaluating and _grad_enabled():
            program.batches.append(fingerprint(x))
            program.epochs.append(len(program.calls["train_one_epoch"]))

    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with ExitStack() as stack:
        stack.enter_context(_figures_skipped())
        stack.enter_context(_watched(stage, "train_one_epoch", program, evaluating=False))
        stack.enter_context(_watched(stage, "evaluate", program, evaluating=True))
        stack.enter_context(_forward_watched(stage, note_batch))
        for watcher in watchers:
            stack.enter_context(watcher(program))
        stack.enter_context(redirect_stdout(out))
        stack.enter_context(redirect_stderr(err))
        stack.enter_context(group_left_behind_ended())
        try:
            summary = main(argv)
            program.record = Path(summary["record"]) if isinstance(summary, dict) and "record" in summary else None
        except SystemExit as exit:
            program.exit, program.exit_code = exit, exit.code if isinstance(exit.code, int) else 1
        except Exception as error:  # the learner's code raised: the caller says what and where
            program.error = error
    program.seconds = time.perf_counter() - start
    program.out, program.err = out.getvalue(), err.getvalue()
    _read_record(program, argv)
    return program


def _grad_enabled() -> bool:
    torch = sys.modules.get("torch")
    return torch is None or torch.is_grad_enabled()


@contextmanager
def _figures_skipped():
    import common.run

    with mock.patch.object(common.run, "save_curves", lambda folder, source: None):
        yield


@contextmanager
def _watched(stage: dict, name: str, program: Program, evaluating: bool):
    """The stage's function `name`, as main() finds it in its globals, noting each call's arguments."""
    function = stage.get(name)
    if function is None:
        yield
        return
    signature = inspect.signature(function)

    def watched(*args, **kwargs):
        bound = signature.bind_partial(*args, **kwargs)
        program.calls[name].append(dict(bound.arguments))
        program.evaluating = evaluating
        try:
            result = function(*args, **kwargs)
        finally:
            program.evaluating = False
        program.returned[name].append(result)
        return result

    stage[name] = watched
    try:
        yield
    finally:
        stage[name] = function


@contextmanager
def _forward_watched(stage: dict, note: Callable):
    """Every forward of the network: a hook on any module named Net (stages 5 on), or the
    stage's own forward_with_cache / forward (stages 1-4)."""
    if "Net" in stage:
        import torch

        def hook(module, inputs):
            if type(module).__name__ == "Net" and inputs:
                note(inputs[0])

        handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
        try:
            yield
        finally:
            handle.remove()
        return
    name = "forward_with_cache" if "forward_with_cache" in stage else "forward"
    function = stage[name]

    def watched(params, x, *args, **kwargs):
        note(x)
        return function(params, x, *args, **kwargs)

    stage[name] = watched
    try:
        yield
    finally:
        stage[name] = function


def _read_record(program: Program, argv: list[str]) -> None:
    folder = program.record or _newest_record(argv)
    if folder is None:
        return
    program.record = folder
    program.losses = [float(row["loss"]) for row in _rows(folder / "losses.csv")]
    program.accuracies = [float(row["test_accuracy"]) for row in _rows(folder / "accuracy.csv")]
    if (folder / "params.npz").exists():
        with np.load(folder / "params.npz") as saved:
            program.params = dict(saved)


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _newest_record(argv: list[str]) -> Path | None:
    """The record folder of a run that ended early (main() returned no summary): the newest
    under --out."""
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
    if out is None or not out.exists():
        return None
    folders = sorted((p for stage in out.iterdir() if stage.is_dir() for p in stage.iterdir() if p.is_dir()),
                     key=lambda p: p.stat().st_mtime)
    return folders[-1] if folders else None
