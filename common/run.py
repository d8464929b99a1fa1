"""The run recorder: what a stage's loop calls to keep a record of the run. It is never the loop.

    with StageRun(__file__, args) as run:      # --threads, said in one line
        for epoch in range(1, args.epochs + 1):
            run.start_epoch(epoch, steps)      # the progress bar; at the first, the record folder
            ... run.log_step(loss) ...         # after each step: the bar, losses.csv
            run.end_epoch(correct, data)       # the epoch's line, accuracy.csv
        run.save_params(model.state_dict())    # params.npz, and model.pt for tensors
    return run.summary                         # summary.json, also written with curves.png

That is all. The record is a folder, runs/<stage>/<time>/: options.json, losses.csv, accuracy.csv,
params.npz, model.pt, summary.json and curves.png (those written whole go to a temporary name that
is then renamed: never half a file). With main_process=False (stage 11's other processes) it
writes and prints nothing.

A run that ends early says why in one line with an exit code (common/errors.py), never a
traceback, and keeps what it wrote; its summary.json says it is incomplete, and why: a loss
that is NaN or infinite (3), Ctrl-C or SIGTERM (130), out of memory (5), a full disk (4).
Until the first step, Ctrl-C and SIGTERM end the program at once and silently: nothing is
trained yet, and torch may be waiting in C++ (for the other processes of a group), where
Python could not answer a signal before the wait ends.

`Run` is what a stage's `train_one_epoch` sees of it; `StepLog` stands in for it where a loop
is run without a record (the tests, the tools).
"""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Protocol

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from common.data import CHANCE, data_name, on_data
from common.errors import (DIVERGED, INTERRUPTED, READER_GONE, CourseError, describe, flush_stdout,
                           printable)

READ_EVERY = 50  # steps whose losses are read back at once: a GPU then waits once, not every step
RUNNING_LOSS_STEPS = 100  # the epoch's line and the figure average the loss over this many steps
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Run(Protocol):
    """What a stage's train_one_epoch uses of the recorder."""
    steps: int  # training steps so far
    main_process: bool  # the process that prints (rank 0 of a group)

    def log_step(self, loss) -> None:
        """One step done, with its loss (a float, or a tensor left where it is)."""


class StepLog:
    """A Run that only counts the steps and keeps their losses, for a loop run by the tests or
    the tools; `on_step()`, if given, is called after each step."""

    main_process = True

    def __init__(self, on_step=None):
        self.steps, self._losses, self._on_step = 0, [], on_step

    def log_step(self, loss) -> None:
        self.steps += 1
        self._losses.append(loss.detach() if hasattr(loss, "detach") else loss)  # read when asked
        if self._on_step is not None:
            self._on_step()

    @property
    def losses(self) -> list[float]:
        return [float(loss) for loss in self._losses]


class StageRun:
    """`with StageRun(__file__, args) as run:` around a stage's whole run (see the top)."""

    def __init__(self, stage_file: str, args, main_process: bool = True):
        self.stage, self.args, self.main_process = Path(stage_file).stem, args, main_process
        self.steps = self.epoch = 0
        self.summary: dict = {}
        self.folder: Path | None = None  # made at the first epoch
        self.recent_losses: deque[float] = deque(maxlen=RUNNING_LOSS_STEPS)
        self._pending: list = []  # the losses not yet read back
        self._bar = self._signal = self._data = None
        self._accuracy = float("nan")

    # ---------------------------------------------------------------- called by the stage
    def start_epoch(self, epoch: int, steps: int) -> None:
        """The progress bar at `epoch` (made at the first, with the record folder)."""
        self.epoch = epoch
        if self._bar is None:
            self._begin(epoch, steps)
        self._bar.set_description(f"{self.stage} epoch {epoch}/{self.args.epochs}", refresh=False)

    def log_step(self, loss) -> None:
        self.steps += 1
        if self.main_process:  # the others need not wait for their losses
            self._pending.append(loss.detach() if hasattr(loss, "detach") else float(loss))
            if len(self._pending) == READ_EVERY:
                self._write_losses()
            self._bar.update()

    def end_epoch(self, correct: int, data) -> float:
        """The epoch's test result, `correct` of the test images: said in one line and recorded."""
        self._write_losses()
        self._accuracy, self._data = int(correct) / len(data.test_y), data
        seconds = time.perf_counter() - self._start
        row = (self.epoch, self.steps, f"{self._accuracy:.6f}", f"{seconds:.2f}")
        self._append("accuracy.csv", [row])
        self._say(f"{self.stage} epoch {self.epoch}: running loss {self.running_loss:.4f}, "
                  f"test accuracy {100 * self._accuracy:.2f}% ({seconds:.1f}s)")
        return self._accuracy

    def save_params(self, params: dict) -> None:
        """params.npz, and model.pt for tensors: `Net().load_state_dict(torch.load(path,
        weights_only=True))` loads it."""
        if self.folder is None:
            return
        arrays = {name: np.asarray(value.detach().cpu() if hasattr(value, "detach") else value)
                  for name, value in params.items()}
        write_whole(self.folder / "params.npz", lambda f: np.savez(f, **arrays))
        torch = sys.modules.get("torch")
        if torch is not None and any(isinstance(value, torch.Tensor) for value in params.values()):
            state = {name: value.detach().cpu().clone() for name, value in params.items()}
            write_whole(self.folder / "model.pt", lambda f: torch.save(state, f))

    @property
    def running_loss(self) -> float:
        return sum(self.recent_losses) / max(len(self.recent_losses), 1)

    # ---------------------------------------------------------------- around the run
    def __enter__(self) -> "StageRun":
        self._start = time.perf_counter()
        self._threads = use_threads(self.args.threads)
        self._quiet = np.errstate(over="ignore", invalid="ignore")  # numpy's warnings on the way to
        self._quiet.__enter__()  # a NaN: the run says it once, in its own line (a loss of NaN)
        self._handlers = {}
        if threading.current_thread() is threading.main_thread():  # signal handlers live there
            self._handlers = {sig: signal.signal(sig, signal.SIG_DFL) for sig in SIGNALS}
        try:  # a folder that cannot be made is said now, not after the set-up
            if self.main_process:
                self._stage_folder = stage_folder(Path(self.args.out) / self.stage)
        except CourseError as err:
            self.__exit__(type(err), err, err.__traceback__)  # its one line, and its exit code
        self._say(f"threads: {self.args.threads}, for torch's and numpy's maths (--threads)")
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        self._close()
        try:
            if exc is None:
                self._finish()
                return False
            if not isinstance(exc, (CourseError, OSError)):  # (a write may be what failed)
                self._write_losses()  # the steps computed before the end are kept
        except BaseException as err:  # a full disk while writing the end, say
            exc = err
        line, code = self._ending(exc)
        if line is None:
            raise exc  # a bug: its traceback shows
        flush_stdout()
        if code != READER_GONE:
            print(f"{self.stage}: {printable(line)}", file=sys.stderr, flush=True)
        raise SystemExit(code) from None

    # ---------------------------------------------------------------- the parts
    def _begin(self, epoch: int, steps: int) -> None:
        """The first epoch: the record folder, the progress bar, and signals answered from now on
        with the run's one line."""
        if self.main_process:
            self.folder = new_record_folder(self._stage_folder)
            write_whole(self.folder / "options.json", json_writer(vars(self.args)))
            self._append("losses.csv", [("step", "epoch", "loss")])
            self._append("accuracy.csv", [("epoch", "step", "test_accuracy", "seconds")])
        total = (self.args.epochs - epoch + 1) * steps
        if self.args.max_steps is not None:
            total = min(total, self.args.max_steps)
        self._bar = tqdm(total=total, unit="step", leave=False, dynamic_ncols=True, file=sys.stderr,
                         disable=not self.main_process)
        for sig in self._handlers:
            signal.signal(sig, self._interrupt)

    def _interrupt(self, signum, frame) -> None:
        self._signal = signal.Signals(signum).name
        raise KeyboardInterrupt

    def _write_losses(self) -> None:
        """The pending losses, read back at once, into losses.csv; the first that is NaN or
        infinite ends the run."""
        if not self._pending:
            return
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(self._pending[0], torch.Tensor):
            losses = torch.stack(self._pending).tolist()  # one wait for all of them
        else:
            losses = [float(loss) for loss in self._pending]
        self._pending = []
        first = self.steps - len(losses) + 1
        bad = next((i for i, loss in enumerate(losses) if not math.isfinite(loss)), None)
        kept = losses if bad is None else losses[:bad + 1]
        self._append("losses.csv", [(first + i, self.epoch, repr(loss))  # repr: every bit
                                    for i, loss in enumerate(kept)])
        self.recent_losses.extend(losses if bad is None else losses[:bad])
        self._bar.set_postfix(loss=f"{self.running_loss:.4f}", refresh=False)
        if bad is not None:
            raise CourseError(f"the loss became {losses[bad]} at step {first + bad}: training "
                              f"diverged; try a smaller --lr than {self.args.lr}", DIVERGED)

    def _finish(self) -> None:
        self.summary = {"stage": self.stage, "complete": True, "steps": self.steps,
                        "final_loss": self.running_loss, "test_accuracy": self._accuracy,
                        "seconds": time.perf_counter() - self._start, "record": str(self.folder),
                        "data": {"source": getattr(self._data, "source", None),
                                 "details": getattr(self._data, "details", None)}}
        if self.folder is None:
            return
        write_whole(self.folder / "summary.json", json_writer(self.summary))
        save_curves(self.folder, self.summary["data"]["source"])
        self._say(f"{self.stage}: final training loss {self.running_loss:.4f} (mean of the last "
                  f"{len(self.recent_losses)} steps), test accuracy {100 * self._accuracy:.2f}%, "
                  f"time {self.summary['seconds']:.1f}s, record {self.folder}")
        if self.steps == self.args.max_steps and self._accuracy < 2 * CHANCE:
            self._say(f"{self.stage}: {self.steps} steps were too few to learn: the test "
                      f"accuracy, {100 * self._accuracy:.2f}%, is below twice chance "
                      f"({200 * CHANCE:.0f}%); drop --max-steps to train whole epochs")
        flush_stdout()

    def _ending(self, exc: BaseException) -> tuple[str | None, int]:
        """The run's last line and exit code, with the record marked incomplete; None: a bug."""
        described = describe(exc)
        if described is None:
            return None, 1
        line, code = described
        if code == INTERRUPTED:
            line = f"interrupted by {self._signal or 'SIGINT'} at step {self.steps}"
        elif code != READER_GONE:
            line = f"error: {line}"
        if self.folder is not None:
            incomplete = {"stage": self.stage, "complete": False, "ended": line,
                          "steps": self.steps}
            line += f"; the record so far is in {self.folder}"
            try:
                write_whole(self.folder / "summary.json", json_writer(incomplete))
            except OSError:
                pass  # a full disk: the line says so already
        return line, code

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        self._threads()
        self._quiet.__exit__(None, None, None)

    def _append(self, name: str, rows: list[tuple]) -> None:
        """Rows at the end of a CSV file of the record; a write that fails (a full disk, Ctrl-C)
        is undone, so that the file always ends with a whole row."""
        if self.folder is None:
            return
        data = memoryview("".join(",".join(map(str, row)) + "\n" for row in rows).encode())
        path = self.folder / name
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        size = os.fstat(fd).st_size
        try:
            while data:
                data = data[os.write(fd, data):]
        except BaseException as err:
            os.ftruncate(fd, size)  # shrinking a file needs no space
            if isinstance(err, OSError):  # os.write's error names no file: this one does
                raise OSError(err.errno, err.strerror, str(path)) from None
            raise
        finally:
            os.close(fd)

    def _say(self, line: str) -> None:
        if self.main_process:
            tqdm.write(line, file=sys.stdout)  # above the progress bar


# ---------------------------------------------------------------- threads
def use_threads(threads: int):
    """torch's threads (where the stage uses torch) and numpy's matrix products on `threads`
    threads; returns what puts them back."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(threads)
    blas = threadpool_limits(limits=threads, user_api="blas")

    def put_back() -> None:
        blas.restore_original_limits()
        if before is not None:
            torch.set_num_threads(before)
    return put_back


# ---------------------------------------------------------------- files
def stage_folder(folder: Path) -> Path:
    """runs/<stage>/, made if it is not there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CourseError(f"--out {folder.parent}: cannot make a folder there ({err.strerror})")
    return folder


def new_record_folder(stage_folder: Path) -> Path:
    """runs/<stage>/<time>[-N]/, a new folder every time, so that no earlier record is lost."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        try:
            folder = stage_folder / (stamp if n == 0 else f"{stamp}-{n}")
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise CourseError(f"--out {stage_folder.parent}: no free record folder")


def write_whole(path: Path, write) -> None:
    """write(f) into a temporary file beside `path`, then renamed to it: `path` is the old file or
    the whole new one, never half of one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as f:
            write(f)
        os.replace(temporary, path)
    except OSError as err:  # named after the file the learner knows, not the temporary one
        raise OSError(err.errno, err.strerror, str(path)) from None
    finally:
        temporary.unlink(missing_ok=True)


def json_writer(value: dict):
    return lambda f: f.write((json.dumps(value, indent=2) + "\n").encode())


# ---------------------------------------------------------------- the figure
def read_csv(path: Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = rows[0] if rows else ()
    return {column: np.array([float(row[column]) for row in rows]) for column in columns}


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of every `window` consecutive values: len(values) - window + 1 of them."""
    window = max(1, min(window, len(values)))
    return np.convolve(values, np.ones(window) / window, mode="valid")


def save_curves(folder: Path, source: str | None) -> None:
    """curves.png, drawn from the record's CSV files (a Figure made without pyplot needs no
    closing, and matplotlib loads only now, at the end of a run)."""
    figure = draw_curves(folder, source)
    write_whole(folder / "curves.png", lambda f: figure.savefig(f, format="png", dpi=100))


def draw_curves(folder: Path, source: str | None):
    """The training loss per step and its moving average; the test accuracy per epoch; the title
    names the data (`source`, as load_data() gave it), so that a result on the synthetic shapes
    never passes for a CIFAR-10 one."""
    from matplotlib.figure import Figure

    losses, accuracy = read_csv(folder / "losses.csv"), read_csv(folder / "accuracy.csv")
    data = on_data(data_name(source))
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, accuracy_axes = fig.subplots(1, 2, width_ratios=[3, 2])
    loss_axes.set(xlabel="training step", ylabel="cross-entropy loss", title="training loss")
    if losses:
        loss_axes.plot(losses["step"], losses["loss"], color="0.75", lw=0.6, label="per step")
        window = max(1, min(RUNNING_LOSS_STEPS, len(losses["step"]) // 4))
        loss_axes.plot(losses["step"][window - 1:], moving_average(losses["loss"], window),
                       color="C0", label=f"mean of {window} steps")
        loss_axes.legend(loc="upper right")
    accuracy_axes.set(ylim=(0, 100), xlabel="epoch", ylabel="test accuracy (%)",
                      title="test accuracy")
    if accuracy:
        accuracy_axes.set(xticks=accuracy["epoch"], xlim=(0.5, accuracy["epoch"][-1] + 0.5))
        accuracy_axes.plot(accuracy["epoch"], 100 * accuracy["test_accuracy"], "o-", color="C1")
        for epoch, value in zip(accuracy["epoch"], 100 * accuracy["test_accuracy"]):
            accuracy_axes.annotate(f"{value:.1f}%", (epoch, value), textcoords="offset points",
                                   xytext=(0, 8), ha="center")
    accuracy_axes.axhline(100 * CHANCE, color="0.5", ls="--", lw=1, label="chance")
    accuracy_axes.legend(loc="lower right")
    fig.suptitle(f"{folder.parent.name}: {len(losses.get('step', ()))} training steps {data}")
    return fig

