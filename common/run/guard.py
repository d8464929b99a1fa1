"""The guard around a run: a signal stops it between two steps (the processes of a distributed
run agreeing first), and every way a run can end becomes one line and an exit code."""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import numpy as np

from common.errors import INTERRUPTED, OUT_OF_MEMORY, WRITE_FAILED, CourseError, one_line, printable
from common.loaded import loaded_torch
from common.run import checkpoint, signals, streams

AGREE_EVERY = 10  # steps between two agreements on stopping, in a distributed run


class Guard:
    def __init__(self, stage: str, shown: bool, args=None):
        self.stage, self.shown, self.args = stage, shown, args
        self._sigchld = None  # torch's SIGCHLD handler, while stop_watching_workers has it off

    def __enter__(self) -> "Guard":
        signals.defer()
        # a diverging run overflows on the way to NaN; the step log reports that in one line instead
        self._quiet_numpy = np.errstate(over="ignore", invalid="ignore")
        self._quiet_numpy.__enter__()
        self._excepthook = sys.excepthook
        sys.excepthook = quiet_hand_over(sys.excepthook)
        return self

    def __exit__(self, *exc) -> bool:
        sys.excepthook = self._excepthook
        if self._sigchld is not None and signals.program() != "stage":  # a stage program ends here
            signal.signal(signal.SIGCHLD, self._sigchld)  # the next run in this process is watched again
            self._sigchld = None
        self._quiet_numpy.__exit__(None, None, None)
        signals.restore()
        return False

    def stop_if_asked(self, steps: int, every_step: bool = False) -> None:
        """Stop between two steps once a signal came. In a distributed run the processes agree
        first (every AGREE_EVERY steps), so that all stop after the same step and none is left
        waiting for the others in an all-reduce."""
        asked = signals.pending() is not None
        group = process_group()
        if group is not None:
            if every_step and steps % AGREE_EVERY:
                return
            asked = group.any(asked)
        if asked:
            signals.stopping()  # a further signal now ends the program at once
            raise KeyboardInterrupt

    def stop_watching_workers(self, exc: BaseException | None) -> None:
        """A run ending on an error (a DataLoader worker killed, say): until the run's clean-up is
        done, a child process that ends is no news. torch's SIGCHLD handler may still report the
        dead worker late (any child that ends triggers its check), mid-way through the clean-up,
        and its traceback would follow the run's one line."""
        main_thread = threading.current_thread() is threading.main_thread()
        if exc is not None and main_thread and hasattr(signal, "SIGCHLD"):  # Windows has none
            self._sigchld = signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    @staticmethod
    def write_failed(exc: BaseException | None) -> bool:
        """The run ends because a write failed (no use writing more); a batch cut off on its way from
        a DataLoader worker is an OSError too, and the record's pending rows can still be written."""
        return isinstance(exc, CourseError) or isinstance(exc, OSError) and not isinstance(exc, ConnectionError)

    @staticmethod
    def signal_name() -> str:
        return signals.name(signals.pending())

    @staticmethod
    def signalled() -> bool:
        return signals.pending() is not None

    def ending(self, exc: BaseException, interrupted: str, record_dir: Path) -> tuple[str, str, int] | None:
        """How an exception ends the run: (why, for summary.json; the line; the exit code), or
        None for a bug, whose traceback should show."""
        if isinstance(exc, KeyboardInterrupt):
            return "interrupted", interrupted, INTERRUPTED
        if isinstance(exc, CourseError):
            return "failed", f"error: {exc}", exc.exit_code
        out_of_memory = out_of_memory_message(exc, self.args)
        if out_of_memory is not None:
            return "out of memory", f"error: {out_of_memory}; the record so far is in {record_dir}", OUT_OF_MEMORY
        if isinstance(exc, OSError) and exc.errno is not None:  # a write outside the record's helpers
            path = exc.filename or record_dir
            return "failed", (f"error: cannot write {path}: {exc.strerror}"
                              f"{checkpoint.free_space_note(Path(path))}"), WRITE_FAILED
        return None

    def finish(self, finish, mark_incomplete, record_dir: Path) -> None:
        """Write the summary and figures of a finished run (`finish`): a second signal meanwhile
        stops at once, a failed write keeps the training record, both marked incomplete."""
        try:
            finish()
        except KeyboardInterrupt:
            mark_incomplete("interrupted while writing the summary and figures")
            self.end(f"stopped while writing the summary and figures; the training record is in "
                     f"{record_dir}, marked incomplete", INTERRUPTED)
        except CourseError as err:
            mark_incomplete("failed while writing the summary and figures")
            self.end(f"error: {err}", err.exit_code)
        if self.signalled():  # one signal while finishing: finished first, then say so
            self.end(f"{self.signal_name()} while writing the summary and figures: they were "
                     f"finished first, the record is complete in {record_dir}", INTERRUPTED)
        self.tell_broken_streams(record_dir)

    def tell_broken_streams(self, record_dir: Path) -> None:
        """A stdout or stderr that broke during the run (common/run/streams.py) did not stop it:
        say so on the stream that still works. A reader that went away (`| head -1`) was the
        learner's choice; a stream that could not take the output (a full device) lost it: 4."""
        broke = streams.broke()
        if not broke:
            return
        if streams.lost_output():
            self.end(f"error: {broke}: the printed output was lost, not the run: its record is complete in "
                     f"{record_dir}", WRITE_FAILED)
        if self.shown:
            signals.say(f"{self.stage}: {broke}: its reader went away, the run went on; its record is complete in "
                        f"{record_dir}")

    def end(self, message: str, code: int) -> None:
        signals.ending(code)  # the line is said: a further signal ends the program at once
        if self.shown:
            signals.say(f"{self.stage}: {printable(message)}")
        raise SystemExit(code)


def out_of_memory_message(exc: BaseException, args) -> str | None:
    """What ran out of memory, naming what the learner can make smaller; None for other errors.
    A DataLoader worker killed (by the system's out-of-memory killer, most often) shows as a
    RuntimeError from torch that starts "DataLoader worker", or, when the worker dies while
    handing over a batch, as whatever error the hand-over then meets inside the DataLoader."""
    batch_size = getattr(args, "batch_size", None)
    smaller = f"a smaller --batch-size than {batch_size}" if batch_size else "a smaller --batch-size"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # numpy's, or torch's on a GPU
        return f"out of memory with --batch-size {batch_size}: try {smaller}, or close other programs"
    worker_died = isinstance(exc, RuntimeError) and str(exc).startswith("DataLoader worker")
    # a batch cut off on its way from a dead worker; a worker's own error (a file not found) is re-raised as it is
    if not worker_died and not (isinstance(exc, (ConnectionError, EOFError)) and _in_data_loader(exc)):
        return None
    what = (one_line(str(exc).split(". ")[0], 100) if worker_died
            else f"a DataLoader worker ended while handing over a batch ({one_line(exc, 60)})")
    return (f"{what}, most often by the system's out-of-memory killer: try fewer --workers than "
            f"{getattr(args, 'workers', None)} (0 loads the data in this process) or {smaller}")


def _in_data_loader(exc: BaseException) -> bool:
    return _passes_through(exc.__traceback__, "torch/utils/data/")


def _passes_through(tb, path_part: str) -> bool:
    while tb is not None:
        if path_part in tb.tb_frame.f_code.co_filename.replace("\\", "/"):
            return True
        tb = tb.tb_next
    return False


def quiet_hand_over(previous):
    """sys.excepthook during a run (forked DataLoader workers inherit it). multiprocessing's
    resource-sharer thread, which passes file descriptors between this process and its workers,
    reports a hand-over that the other side broke off (a worker killed) through sys.excepthook, as
    a traceback; the main thread already says in one line that the worker died
    (out_of_memory_message). Every other error goes to `previous`."""
    def hook(kind, exc, tb):
        if issubclass(kind, (ConnectionError, EOFError)) and _passes_through(tb, "multiprocessing/resource_sharer.py"):
            return
        previous(kind, exc, tb)
    return hook


def divergence_message(loss: float, step: int, args) -> str:
    """A NaN or infinite loss, and what the learner can change."""
    blame = f"try a smaller --lr than {args.lr}"
    # SGD's first update uses the gradient alone: momentum first shows in the loss of step 3
    if getattr(args, "momentum", 0) >= 1 and step >= 3:
        blame = f"--momentum {args.momentum} is 1 or more, so the update never decays; use a momentum below 1"
    return f"the loss became {loss} at step {step}: training diverged; {blame}"


# ---------------------------------------------------------------- distributed runs
class Group:
    """The process group of a distributed run, for the recorder's own agreements."""

    def __init__(self, dist):
        self.dist = dist

    def any(self, flag: bool) -> bool:
        """True on every process when it is True on any."""
        torch = loaded_torch()
        device = torch.device("cuda", torch.cuda.current_device()) if self.dist.get_backend() == "nccl" else "cpu"
        value = torch.tensor([int(flag)], device=device)
        self.dist.all_reduce(value, op=self.dist.ReduceOp.MAX)
        return bool(value.item())

    def gather(self, value) -> list:
        """`value` of every process, in rank order, on every process."""
        values = [None] * self.dist.get_world_size()
        self.dist.all_gather_object(values, value)
        return values

    @property
    def rank(self) -> int:
        return self.dist.get_rank()

    @property
    def size(self) -> int:
        return self.dist.get_world_size()


def process_group() -> Group | None:
    torch = loaded_torch()
    dist = getattr(torch, "distributed", None) if torch is not None else None
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    return Group(dist)
