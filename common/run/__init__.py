"""The run recorder: what every stage's training loop calls, but never what the loop is.

A stage writes its loop itself, `for epoch in ...:` and `for x, y in ...:`, and calls

    with StageRun(__file__, args) as run:           # record folder, one-line errors, summary
        first_epoch = run.resume(model, optimizer, rng)   # --resume: put the saved state back
        for epoch in range(first_epoch, args.epochs + 1):
            run.start_epoch(epoch, steps)           # the progress bar
            ... run.log_step(loss, model) ...       # after each step: losses.csv, grad_norms.csv
            run.end_epoch(predicted, data)          # accuracy; --checkpoint: saved here
        run.save_params(model.state_dict())         # params.npz (and model.pt for torch stages)

`StageRun` only hands each job to its part: record.py (the record folder, runs/<stage>/<time>/,
and its files), progress.py (the bar and the printed lines), resume.py (--checkpoint and
--resume), guard.py (signals, and every ending as one line and an exit code: bad input 2, a
diverging loss 3, a failed write 4, out of memory 5, Ctrl-C, SIGTERM or SIGHUP 130), threads.py (--threads) and
plots.py (curves.png).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from common.run import signals, summary
from common.run.guard import Guard
from common.run.progress import Progress
from common.run.record import Record, per_class_accuracy
from common.run.rendezvous import Watch
from common.run.steps import StepLog
from common.run.resume import Checkpoints
from common.run.threads import ThreadPolicy


class StageRun:
    """Use as `with StageRun(__file__, args) as run:` around a stage's whole run."""

    def __init__(self, stage_file: str, args: argparse.Namespace, main_process: bool = True):
        self.stage, self.args, self.main_process = Path(stage_file).stem, args, main_process
        self.steps = self.epoch = 0  # steps count those of a resumed run too
        self.accuracies, self.summary = [], {}  # the test accuracy of each epoch; summary.json's content
        self.progress = Progress(self.stage, shown=main_process)
        self.checkpoints = Checkpoints(self.stage, args, writes=main_process)
        self.guard = Guard(self.stage, shown=main_process, args=args)
        self.record = self.threads = None
        self.watch = Watch(self.stage, self._ended_waiting)  # for the other processes of a group (stage 11)
        self._epoch = {"first_step": 0, "steps": 0, "per_class": [], "classes": (), "data": {}}

    @property
    def record_dir(self) -> Path:
        return self.record.folder if self.record is not None else Path(os.devnull)

    # ---------------------------------------------------------------- called from the loop
    def resume(self, *objects) -> int:
        """Name the objects that hold the run's state (what --checkpoint saves after each
        epoch); with --resume, put their saved state back. Returns the epoch to start at."""
        first_epoch, self.steps = self.checkpoints.resume(objects, self.progress.say)
        return first_epoch

    def start_epoch(self, epoch: int, steps: int) -> None:
        """The progress bar of the run (made at the first epoch), now at `epoch`."""
        self.checkpoints.check_steps_per_epoch(steps)
        self.epoch = epoch
        self._epoch.update(first_step=self.steps, steps=steps)
        if self.progress.bar is None:
            self.watch.stop()  # the group, if any, is formed
            self.threads.check(at_once=True)  # the set-up so far was the first look at the machine
            self.progress.say(self.threads.describe())
            total = (self.args.epochs - epoch + 1) * steps
            if self.args.max_steps is not None:
                total = max(0, min(total, self.args.max_steps - self.steps))
            self.progress.start(total)
        self.progress.epoch(epoch, self.args.epochs)
        self.guard.stop_if_asked(self.steps)

    def log_step(self, loss, gradients=None) -> None:
        """One training step done: its loss (before the update; a float, or a tensor left where it
        is) and, if given, the gradients it used, as a dict of arrays or tensors, a dict of
        parameters, or a module. Both are read back every READ_EVERY steps (common/run/steps.py)."""
        self.steps += 1
        self.step_log.add(self.steps, self.epoch, loss, gradients)
        if self.threads.check():
            self.record.row("threads.csv", (self.steps, self.threads.threads, f"{self.threads.others_busy:.2f}"))
        self.progress.step()
        self.guard.stop_if_asked(self.steps, every_step=True)

    def end_epoch(self, correct: int, data, predicted=None) -> float:
        """The epoch's test result: `correct` of the test images classified right (and, if given,
        the predicted class of each, for the per-class table); with --checkpoint, save the run's
        state when the epoch was whole. Returns the test accuracy."""
        self.step_log.write_pending()
        accuracy = int(correct) / len(data.test_y)
        per_class = [] if predicted is None else per_class_accuracy(predicted, np.asarray(data.test_y),
                                                                    len(data.classes))
        self.accuracies.append(accuracy)
        self._epoch.update(per_class=per_class, classes=tuple(data.classes),
                           data={"source": data.source, "details": getattr(data, "details", None)})
        seconds = time.perf_counter() - self._start
        self.record.row("accuracy.csv", (self.epoch, self.steps, f"{accuracy:.6f}", f"{seconds:.2f}"))
        self.progress.say(f"{self.stage} epoch {self.epoch}: running loss {self.progress.running_loss:.4f}, "
                          f"test accuracy {100 * accuracy:.2f}% ({seconds:.1f}s)")
        if self.steps - self._epoch["first_step"] == self._epoch["steps"]:  # a whole epoch
            self.checkpoints.save(self.epoch, self.steps, self._epoch["steps"])
        self.guard.stop_if_asked(self.steps)
        return accuracy

    def save_params(self, params: dict) -> None:
        """The final parameters under their canonical names: params.npz, and for tensors also
        model.pt, which loads with `Net().load_state_dict(torch.load(path, weights_only=True))`."""
        self.record.save_params(params)

    # ---------------------------------------------------------------- around the run
    def __enter__(self) -> "StageRun":
        self._start = time.perf_counter()
        self.guard.__enter__()
        signals.when_stopped_at_once(self._stopped_at_once)  # a second signal while the run unwinds
        self.threads = ThreadPolicy(self.args.threads)
        try:
            self.guard.stop_if_asked(self.steps)
            self.record = Record(Path(self.args.out) if self.main_process else None, self.stage, vars(self.args))
            self.step_log = StepLog(self.record, self.progress, self.args)
            self.watch.start()
        except BaseException as err:
            self.__exit__(type(err), err, err.__traceback__)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.guard.stop_watching_workers(exc)
        try:
            self.progress.close()
            if self.record is not None and not self.guard.write_failed(exc):
                self.step_log.write_pending(at_the_end=True)  # what the last steps computed is not lost
            if exc is None:
                self.guard.finish(self._finish, self._mark_incomplete, self.record_dir)
                return False
            ending = self.guard.ending(exc, self._interrupted_message(), self.record_dir)
            if ending is not None:
                why, message, code = ending
                self._mark_incomplete(why)
                self.guard.end(message, code)
            return False  # anything else is a bug: let its traceback show
        finally:
            self.watch.stop()
            self.checkpoints.release()
            if self.record is not None:
                self.record.close()
            if self.threads is not None:
                self.threads.restore()
            self.guard.__exit__(None, None, None)

    def _finish(self) -> None:
        accuracy = self.accuracies[-1] if self.accuracies else float("nan")
        self.summary = {"stage": self.stage, "final_loss": self.progress.running_loss, "test_accuracy": accuracy,
                        "seconds": time.perf_counter() - self._start, "steps": self.steps,
                        "record": str(self.record_dir), "complete": True, "data": self._epoch["data"]}
        if self.record.writes:
            summary.finish(self.record, self.progress, self.summary, self._epoch["classes"],
                           self._epoch["per_class"], self.args.max_steps)

    def _mark_incomplete(self, why: str) -> None:
        """An ended run leaves summary.json saying it is incomplete, why, and by which signal."""
        if self.record is not None and self.main_process:
            self.record.mark_incomplete(why, self.steps, self.guard.signal_name() if self.guard.signalled() else None)

    def _interrupted_message(self) -> str:
        if self.record is None:
            return signals.starting_message()
        return (f"interrupted by {self.guard.signal_name()} at step {self.steps}"
                f"{self.checkpoints.interrupted_note()}; the record so far is in {self.record_dir}")

    def _ended_waiting(self, why: str, line: str, code: int) -> None:
        """The wait for the other processes ended by a signal or the time limit (from the watch's thread)."""
        self._mark_incomplete(why)
        signals.ending(code)
        signals.say(f"{self.stage}: {line}")
        signals.end_at_once()

    def _stopped_at_once(self) -> None:
        """A signal came while the run was already stopping: record and say so, before the program ends."""
        self._mark_incomplete("interrupted")
        if self.main_process:
            signals.say(f"{self.stage}: {self._interrupted_message()}")
