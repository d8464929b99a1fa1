"""What surrounds every stage's training loop but is never its lesson.

`StageRun` shows a progress bar with the running loss, writes the run's record
(runs/<stage>/<timestamp>/: options.json, losses.csv, accuracy.csv, params.npz, curves.png),
stops at --max-steps, turns a diverging loss, a bad input or Ctrl-C into one clear line and
an exit code, and prints the closing summary. In the stages that have --checkpoint and
--resume (6 onward) it also saves and restores checkpoints (see common/checkpoint.py).

Ctrl-C (SIGINT) and SIGTERM are caught and acted on between two training steps, never in the
middle of one, so a checkpoint saved on the way out is consistent. A second Ctrl-C stops at
once, without a checkpoint.
"""
from __future__ import annotations

import argparse
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

import numpy as np
from tqdm import tqdm

from common import checkpoint
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
        self._stop_signal = None  # set by the signal handler, acted on at the next step boundary
        self._forced_stop = False
        self._tracked = None  # (model, optimizer, data-order generator) for checkpoints
        self._resume: dict = {}
        self._skip = 0  # steps of the resumed epoch already taken before the interruption

    # ---------------------------------------------------------------- the loop's hooks
    def checkpoint_with(self, model, opt, order=None) -> None:
        """What --checkpoint saves and --resume restores: the model, its optimizer and the
        generator that orders the data (a numpy Generator, a torch.Generator or None)."""
        self._tracked = (getattr(model, "module", model), opt, order)  # save the unwrapped model
        if getattr(self.args, "resume", None) is None:
            return
        state = checkpoint.load(self.args.resume, self._identity())
        try:
            self._tracked[0].load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as err:
            raise CourseError(f"--resume {self.args.resume}: does not fit this model "
                              f"({str(err).splitlines()[0][:120]})") from None
        checkpoint.set_torch_rng_state(state["torch_rng"])
        self._resume = state
        self.step_count = state["step"]
        self._say(f"resumed from {self.args.resume}: epoch {state['epoch']}, "
                  f"{state['steps_in_epoch']} steps into it, step {state['step']} in all")

    def epochs(self, steps_per_epoch: int):
        """Yield the epoch numbers, with a progress bar over each epoch's steps; stop at
        --max-steps; save a checkpoint after each epoch when --checkpoint is given."""
        first = self._resume.get("epoch", 1)
        if self._resume and self._resume["steps_per_epoch"] != steps_per_epoch:
            raise CourseError(f"--resume {self.args.resume}: made with {self._resume['steps_per_epoch']} steps "
                              f"per epoch, this run has {steps_per_epoch} (other data or batch size?)")
        for epoch in range(first, self.args.epochs + 1):
            if self.done:
                return
            self.epoch = epoch
            self._epoch_start_step = self.step_count
            if epoch == first and self._resume:
                checkpoint.set_order_state(self._order, self._resume["order"])
                self._skip = self._resume["steps_in_epoch"]
                self._epoch_start_step -= self._skip
            self._epoch_order = checkpoint.order_state(self._order)
            self._steps_per_epoch = steps_per_epoch
            self._bar = tqdm(total=steps_per_epoch, initial=self._skip, desc=f"{self.stage} epoch {epoch}",
                             unit="step", leave=False, dynamic_ncols=True, file=sys.stderr,
                             disable=not self.main_process)
            yield epoch
            self._bar.close()
            if getattr(self.args, "checkpoint", None):
                self._save_checkpoint_after_epoch()
            self._stop_if_asked()

    def skip_done(self, batches):
        """This epoch's batches, less those a resumed run had already trained on."""
        skip, self._skip = self._skip, 0
        for i, batch in enumerate(batches):
            if i >= skip:
                yield batch

    def step(self, loss) -> bool:
        """Record one training step's loss; False once training should stop (--max-steps)."""
        loss = float(loss)
        self.step_count += 1
        if not math.isfinite(loss):
            raise CourseError(f"the loss became {loss} at step {self.step_count}: training diverged; "
                              f"try a smaller learning rate than --lr {self.args.lr}", DIVERGED)
        self.recent_losses.append(loss)
        self._losses.writerow((self.step_count, self.epoch, repr(loss)))  # repr: every bit, for comparisons
        self._bar.update()
        if self.step_count % REFRESH_EVERY == 0:
            self._bar.set_postfix(loss=f"{self.running_loss:.4f}", refresh=False)
            self._loss_file.flush()
        self._stop_if_asked()
        return not self.done

    def save_params(self, params: dict) -> None:
        """The final parameters under their canonical names, as params.npz in the record."""
        if self.main_process:
            arrays = {name: value.detach().cpu().numpy() if hasattr(value, "detach") else value
                      for name, value in params.items()}
            np.savez(self.record_dir / "params.npz", **arrays)

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

    # ---------------------------------------------------------------- checkpoints and signals
    @property
    def _order(self):
        return self._tracked[2] if self._tracked else None

    def _identity(self) -> dict:
        """What a checkpoint must agree on with the run that resumes it."""
        return {"stage": self.stage, "dtype": self.args.dtype, "batch_size": self.args.batch_size,
                "seed": self.args.seed}

    def _save_checkpoint_after_epoch(self) -> None:
        steps_in_epoch = self.step_count - self._epoch_start_step
        if steps_in_epoch >= self._steps_per_epoch:  # complete: the next run starts the next epoch
            self._save_checkpoint(self.epoch + 1, 0, checkpoint.order_state(self._order))
        else:  # stopped early by --max-steps: the next run continues this epoch
            self._save_checkpoint(self.epoch, steps_in_epoch, self._epoch_order)

    def _save_checkpoint(self, epoch: int, steps_in_epoch: int, order) -> None:
        if not self.main_process or self._tracked is None:
            return
        model, opt, _ = self._tracked
        state = dict(self._identity(), model=model.state_dict(), optimizer=opt.state_dict(), epoch=epoch,
                     steps_in_epoch=steps_in_epoch, step=self.step_count, order=order,
                     torch_rng=checkpoint.torch_rng_state(), steps_per_epoch=self._steps_per_epoch)
        checkpoint.save(self.args.checkpoint, state)

    def _catch_signals(self) -> None:
        def request_stop(signum, frame):
            if self._stop_signal is not None:  # asked twice: stop now, mid-step, without a checkpoint
                self._forced_stop = True
                raise KeyboardInterrupt
            self._stop_signal = signum

        self._old_handlers = {}
        if threading.current_thread() is threading.main_thread():  # Python allows handlers only there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old_handlers[sig] = signal.signal(sig, request_stop)

    def _stop_if_asked(self) -> None:
        if self._stop_signal is not None:
            raise KeyboardInterrupt

    def _interrupted(self) -> None:
        what = f"interrupted at step {self.step_count}"
        if getattr(self.args, "checkpoint", None) and not self._forced_stop and self._bar is not None:
            steps_in_epoch = self.step_count - self._epoch_start_step
            self._save_checkpoint(self.epoch, steps_in_epoch, self._epoch_order)
            what += f"; checkpoint saved: continue with --resume {self.args.checkpoint}"
        self._say(f"\n{self.stage}: {what}; the record so far is in {self.record_dir}", file=sys.stderr)
        raise SystemExit(INTERRUPTED)

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
        self._catch_signals()
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
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        if exc is None:
            self._finish()
            return False
        if isinstance(exc, CourseError):
            self._fail(exc)
        if isinstance(exc, KeyboardInterrupt):
            try:
                self._interrupted()
            except CourseError as err:  # the checkpoint could not be written
                self._fail(err)
        return False  # anything else is a bug: let its traceback show

    def _record_path(self, name: str) -> Path:
        return self.record_dir / name if self.main_process else Path(os.devnull)

    def _say(self, line: str, file=None) -> None:
        if self.main_process:
            tqdm.write(line, file=file or sys.stdout)  # looked up now: tests swap sys.stdout

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
