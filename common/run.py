"""What surrounds every stage's training loop but is never its lesson.

`StageRun` shows a progress bar with the running loss, writes the run's record
(runs/<stage>/<timestamp>/: options.json, losses.csv, accuracy.csv, curves.png), stops at
--max-steps, turns a diverging loss, a bad input or Ctrl-C into one clear line and an exit
code, and prints the closing summary.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.errors import BAD_INPUT, DIVERGED, CourseError

INTERRUPTED = 130  # the shell's code for a program stopped by Ctrl-C
RUNNING_LOSS_STEPS = 100  # the progress bar and the summary average the loss over this many steps
REFRESH_EVERY = 50  # steps between progress-bar text updates: formatting every step costs time


class StageRun:
    """Use as `with StageRun(__file__, args) as run:` around a stage's whole run."""

    def __init__(self, stage_file: str, args: argparse.Namespace, main_process: bool = True):
        self.stage = Path(stage_file).stem
        self.args = args
        self.main_process = main_process  # in a distributed run, only one process prints and writes
        self.step_count = 0
        self.epoch = 0
        self.recent_losses: deque[float] = deque(maxlen=RUNNING_LOSS_STEPS)
        self.accuracies: list[float] = []
        self.summary: dict = {}
        self._bar = None

    # ---------------------------------------------------------------- the loop's hooks
    def epochs(self, steps_per_epoch: int):
        """Yield 1..--epochs, with a progress bar over each epoch's steps; stop at --max-steps."""
        for epoch in range(1, self.args.epochs + 1):
            if self.done:
                return
            self.epoch = epoch
            self._bar = tqdm(total=steps_per_epoch, desc=f"{self.stage} epoch {epoch}",
                             unit="step", leave=False, dynamic_ncols=True, file=sys.stderr,
                             disable=not self.main_process)
            yield epoch
            self._bar.close()

    def step(self, loss) -> bool:
        """Record one training step's loss; False once training should stop (--max-steps)."""
        loss = float(loss)
        self.step_count += 1
        if not math.isfinite(loss):
            raise CourseError(f"the loss became {loss} at step {self.step_count}: training diverged; "
                              f"try a smaller learning rate than --lr {self.args.lr}", DIVERGED)
        self.recent_losses.append(loss)
        self._losses.writerow((self.step_count, self.epoch, f"{loss:.8g}"))
        self._bar.update()
        if self.step_count % REFRESH_EVERY == 0:
            self._bar.set_postfix(loss=f"{self.running_loss:.4f}", refresh=False)
            self._loss_file.flush()
        return not self.done

    def log_accuracy(self, accuracy: float) -> None:
        """The test accuracy after an epoch."""
        self.accuracies.append(accuracy)
        seconds = time.perf_counter() - self._start
        self._accuracy.writerow((self.epoch, self.step_count, f"{accuracy:.6f}", f"{seconds:.2f}"))
        self._accuracy_file.flush()
        self._say(f"{self.stage} epoch {self.epoch}: running loss {self.running_loss:.4f}, "
                   f"test accuracy {100 * accuracy:.2f}% ({seconds:.1f}s)")

    def log_per_class(self, per_class: list[float], classes: tuple[str, ...]) -> None:
        """The tutorial's table: test accuracy for each class, printed and saved as CSV."""
        if not self.main_process:
            return
        with open(self.record_dir / "per_class_accuracy.csv", "w", newline="") as f:
            csv.writer(f).writerows([("class", "test_accuracy")] + [(c, f"{a:.6f}") for c, a in zip(classes, per_class)])
        self._say("test accuracy per class:\n" + "\n".join(f"  {c:<12}{100 * a:6.1f}%" for c, a in zip(classes, per_class)))

    @property
    def done(self) -> bool:
        return self.args.max_steps is not None and self.step_count >= self.args.max_steps

    @property
    def running_loss(self) -> float:
        return sum(self.recent_losses) / max(len(self.recent_losses), 1)

    # ---------------------------------------------------------------- around the run
    def __enter__(self) -> "StageRun":
        self._start = time.perf_counter()
        try:
            self.record_dir = _new_record_dir(Path(self.args.out) / self.stage, self.main_process)
        except CourseError as err:
            self._fail(err)
        # a diverging run overflows on the way to NaN; step() reports that in one line instead
        self._quiet_numpy = np.errstate(over="ignore", invalid="ignore")
        self._quiet_numpy.__enter__()
        if self.main_process:
            (self.record_dir / "options.json").write_text(json.dumps(vars(self.args), indent=2) + "\n")
        self._loss_file = open(self._record_path("losses.csv"), "w", newline="")
        self._losses = csv.writer(self._loss_file)
        self._losses.writerow(("step", "epoch", "loss"))
        self._accuracy_file = open(self._record_path("accuracy.csv"), "w", newline="")
        self._accuracy = csv.writer(self._accuracy_file)
        self._accuracy.writerow(("epoch", "step", "test_accuracy", "seconds"))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._bar is not None:
            self._bar.close()
        self._loss_file.close()  # flushes: the record so far survives any ending
        self._accuracy_file.close()
        self._quiet_numpy.__exit__(None, None, None)
        if exc is None:
            self._finish()
            return False
        if isinstance(exc, CourseError):
            self._fail(exc)
        if isinstance(exc, KeyboardInterrupt):
            self._say(f"\n{self.stage}: interrupted at step {self.step_count}; "
                      f"the record so far is in {self.record_dir}", file=sys.stderr)
            raise SystemExit(INTERRUPTED)
        return False  # anything else is a bug: let its traceback show

    def _record_path(self, name: str) -> Path:
        return self.record_dir / name if self.main_process else Path(os.devnull)

    def _say(self, line: str, file=sys.stdout) -> None:
        if self.main_process:
            tqdm.write(line, file=file)

    def _fail(self, err: CourseError) -> None:
        if self.main_process:
            print(f"{self.stage}: error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code)

    def _finish(self) -> None:
        seconds = time.perf_counter() - self._start
        accuracy = self.accuracies[-1] if self.accuracies else float("nan")
        self.summary = {"stage": self.stage, "final_loss": self.running_loss, "test_accuracy": accuracy,
                        "seconds": seconds, "steps": self.step_count, "record": str(self.record_dir)}
        if not self.main_process:
            return
        (self.record_dir / "summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")
        from common.plots import plot_run  # matplotlib loads only once a run has finished
        plot_run(self.record_dir)
        print(f"{self.stage}: final training loss {self.running_loss:.4f} "
              f"(mean of the last {len(self.recent_losses)} steps), "
              f"test accuracy {100 * accuracy:.2f}%, time {seconds:.1f}s, record {self.record_dir}")


def _new_record_dir(stage_dir: Path, main_process: bool = True) -> Path:
    """runs/<stage>/<timestamp>[-N]/, never reusing a folder, so no earlier record is lost."""
    if not main_process:  # the other processes of a distributed run keep no record
        return Path(os.devnull)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        stage_dir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1000):
            path = stage_dir / (stamp if attempt == 0 else f"{stamp}-{attempt}")
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as err:
        raise CourseError(f"cannot write run records under --out {stage_dir.parent}: {err.strerror}",
                          BAD_INPUT) from None
    raise CourseError(f"cannot find a free record folder in {stage_dir}", BAD_INPUT)
