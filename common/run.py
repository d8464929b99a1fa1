"""The run recorder: what every stage's training loop calls, but never what the loop is.

A stage writes its loop itself, `for epoch in ...:` and `for x, y in ...:`, and calls

    with StageRun(__file__, args) as run:           # record folder, one-line errors, summary
        first_epoch = run.resume(model, optimizer, rng)   # --resume: put the saved state back
        for epoch in range(first_epoch, args.epochs + 1):
            run.start_epoch(epoch, steps)           # the progress bar
            ... run.log_step(loss, model) ...       # after each step: losses.csv, grad_norms.csv
            run.end_epoch(predicted, data)          # accuracy; --checkpoint: saved here
        run.save_params(model.state_dict())         # params.npz (and model.pt for torch stages)

The record of a run is runs/<stage>/<timestamp>/: options.json, losses.csv (the loss of every
step, in full precision), grad_norms.csv (each layer's gradient norm at every step),
accuracy.csv (after each epoch), per_class_accuracy.csv, threads.csv (a row each time
--threads auto changes the count), params.npz, model.pt (torch stages), summary.json and
curves.png.

Failures become one line and an exit code (common/errors.py): bad input 2, a diverging loss 3,
a failed write (a full disk) 4, Ctrl-C or SIGTERM 130, acted on between two steps
(common/signals.py). Every row of losses.csv is written (unbuffered, not fsynced) as soon as
its step ends, a failed write is undone to the last whole row, and files that are written
whole (params.npz, summary.json, ...) go to a temporary name first and are renamed into place
(curves.png is deleted if its write fails), so a failure never leaves a half-written file.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common import checkpoint, signals
from common.threads import ThreadPolicy
from common.data import CHANCE
from common.errors import BAD_INPUT, DIVERGED, INTERRUPTED, WRITE_FAILED, CourseError, one_line, printable
from common.weights import PARAM_SHAPES

RUNNING_LOSS_STEPS = 100  # the progress bar and the summary average the loss over this many steps
REFRESH_EVERY = 50  # steps between progress-bar text updates: formatting every step costs time
AGREE_EVERY = 10  # steps between two agreements on stopping, in a distributed run
LAYERS = tuple(dict.fromkeys(name.split(".")[0] for name in PARAM_SHAPES))  # conv1, conv2, fc1, fc2, fc3


class StageRun:
    """Use as `with StageRun(__file__, args) as run:` around a stage's whole run."""

    def __init__(self, stage_file: str, args: argparse.Namespace, main_process: bool = True):
        self.stage = Path(stage_file).stem
        self.args = args
        self.main_process = main_process  # in a distributed run, only one process prints and writes
        self.steps = 0  # training steps taken, counting those of a resumed run
        self.epoch = 0
        self.recent_losses: deque[float] = deque(maxlen=RUNNING_LOSS_STEPS)
        self.accuracies: list[float] = []
        self.per_class: list[float] = []
        self.classes: tuple[str, ...] = ()
        self.summary: dict = {}
        self.record_dir = Path(os.devnull)
        self._bar = None
        self._files: dict[str, RecordFile] = {}
        self._objects: tuple = ()
        self._resumed: dict = {}
        self._epoch_first_step = 0
        self._steps_per_epoch = 0
        self._saved_epoch = None  # the epoch the last checkpoint holds
        self._data: dict = {}  # where the data came from, with the technical detail, for the record
        self._threads = None

    # ---------------------------------------------------------------- called from the loop
    def resume(self, *objects) -> int:
        """Name the objects that hold the run's state (what --checkpoint saves after each
        epoch); with --resume, put their saved state back. Returns the epoch to start at."""
        self._objects = objects
        if self.args.checkpoint is not None:
            checkpoint.check_writable(self.args.checkpoint)
        if self.args.resume is None:
            return 1
        meta, states = checkpoint.load(self.args.resume)
        where = f"--resume {self.args.resume}"
        this_run = {"stage": self.stage, "dtype": self.args.dtype, "batch_size": self.args.batch_size,
                    "seed": self.args.seed}
        for key, value in this_run.items():
            if meta[key] != value:
                raise CourseError(f"{where}: made with {key} {meta[key]!r}, but this run has {value!r}")
        kinds = [checkpoint.describe(o) for o in objects]
        saved_kinds = [entry["kind"] for entry in meta["state"]]
        if kinds != saved_kinds:
            raise CourseError(f"{where}: holds {saved_kinds}, this stage keeps {kinds}")
        for obj, state in zip(objects, states):
            checkpoint.restore(obj, state, where, self.args.dtype)
        self._restore_rng(meta, where)
        self._announce_changed_hyperparameters(meta["hyperparameters"], where)
        self._resumed, self.steps, self._saved_epoch = meta, meta["step"], meta["epoch"]
        if meta["epoch"] >= self.args.epochs:
            self._say(f"{where}: that run already finished its {meta['epoch']} epoch(s) "
                      f"({meta['step']} steps); nothing to train (ask for more with --epochs)")
            raise SystemExit(0)
        self._say(f"resumed from {self.args.resume}: {meta['epoch']} epoch(s), {meta['step']} steps done")
        return meta["epoch"] + 1

    def start_epoch(self, epoch: int, steps: int) -> None:
        """The progress bar of the run (made at the first epoch), now at `epoch`."""
        if self._resumed and steps != self._resumed["steps_per_epoch"]:
            raise CourseError(f"--resume {self.args.resume}: made with {self._resumed['steps_per_epoch']} "
                              f"steps per epoch, this run has {steps} (other data?)")
        self.epoch, self._steps_per_epoch, self._epoch_first_step = epoch, steps, self.steps
        if self._bar is None:
            self._threads.check(at_once=True)  # the set-up so far was the first look at the machine
            self._say(self._threads.describe())
            total = (self.args.epochs - epoch + 1) * steps
            if self.args.max_steps is not None:
                total = max(0, min(total, self.args.max_steps - self.steps))
            self._bar = tqdm(total=total, unit="step", leave=False, dynamic_ncols=True, file=sys.stderr,
                             disable=not self.main_process)
        self._bar.set_description(f"{self.stage} epoch {epoch}/{self.args.epochs}", refresh=False)
        self._stop_if_asked()

    def log_step(self, loss: float, gradients=None) -> None:
        """One training step done: its loss (before the update) and, if given, the gradients
        it used, as a dict of arrays or tensors, a dict of parameters, or a module."""
        loss = float(loss)
        self.steps += 1
        if not math.isfinite(loss):
            raise CourseError(self._divergence_message(loss), DIVERGED)
        if self.steps == 1:
            self._say(f"loss before any update: {loss:.4f} (small random weights give ten nearly equal logits, "
                      f"so each class gets probability about 1/10 and the loss about ln 10 = {math.log(10):.3f})")
        self._files["losses.csv"].write_row((self.steps, self.epoch, repr(loss)))  # repr: every bit
        if gradients is not None:
            self._files["grad_norms.csv"].write_row((self.steps, *(f"{n:.6g}" for n in layer_norms(gradients))))
        self.recent_losses.append(loss)
        if self._threads.check():
            self._files["threads.csv"].write_row((self.steps, self._threads.threads, f"{self._threads.others_busy:.2f}"))
        self._bar.update()
        if self.steps % REFRESH_EVERY == 0:
            self._bar.set_postfix(loss=f"{self.running_loss:.4f}", refresh=False)
        self._stop_if_asked(every_step=True)

    def end_epoch(self, predicted, data) -> float:
        """Score the predicted classes of the test set; with --checkpoint, save the run's state
        when the epoch was whole. Returns the test accuracy."""
        predicted, labels = _as_numpy(predicted).astype(np.int64), np.asarray(data.test_y)
        self.classes = tuple(data.classes)
        self._data = {"source": data.source, "details": getattr(data, "details", None)}
        total = np.bincount(labels, minlength=len(self.classes))
        correct = np.bincount(labels[predicted == labels], minlength=len(self.classes))
        accuracy = float(correct.sum() / total.sum())
        self.accuracies.append(accuracy)
        self.per_class = (correct / np.maximum(total, 1)).tolist()
        seconds = time.perf_counter() - self._start
        self._files["accuracy.csv"].write_row((self.epoch, self.steps, f"{accuracy:.6f}", f"{seconds:.2f}"))
        self._say(f"{self.stage} epoch {self.epoch}: running loss {self.running_loss:.4f}, "
                  f"test accuracy {100 * accuracy:.2f}% ({seconds:.1f}s)")
        whole = self.steps - self._epoch_first_step == self._steps_per_epoch
        if self.args.checkpoint is not None and whole:
            self._save_checkpoint()
        self._stop_if_asked()
        return accuracy

    def save_params(self, params: dict) -> None:
        """The final parameters under their canonical names: params.npz, and for tensors also
        model.pt, which loads with `Net().load_state_dict(torch.load(path, weights_only=True))`."""
        if not self.main_process:
            return
        arrays = {name: _as_numpy(value) for name, value in params.items()}
        write_whole(self.record_dir / "params.npz", lambda f: np.savez(f, **arrays))
        torch = sys.modules.get("torch")
        if torch is not None and any(isinstance(v, torch.Tensor) for v in params.values()):
            state = {name: value.detach().cpu().clone() for name, value in params.items()}
            write_whole(self.record_dir / "model.pt", lambda f: torch.save(state, f))

    @property
    def running_loss(self) -> float:
        return sum(self.recent_losses) / max(len(self.recent_losses), 1)

    # ---------------------------------------------------------------- checkpoints and signals
    def _save_checkpoint(self) -> None:
        if not self.main_process:
            return
        meta = {"stage": self.stage, "dtype": self.args.dtype, "batch_size": self.args.batch_size,
                "seed": self.args.seed, "steps_per_epoch": self._steps_per_epoch, "epoch": self.epoch,
                "step": self.steps, "hyperparameters": self._hyperparameters()}
        checkpoint.save(self.args.checkpoint, meta, list(self._objects))
        self._saved_epoch = self.epoch

    def _hyperparameters(self) -> dict:
        return {key: getattr(self.args, key) for key in checkpoint.HYPERPARAMETERS if hasattr(self.args, key)}

    def _announce_changed_hyperparameters(self, saved: dict, where: str) -> None:
        """A resume may change --lr, --momentum or --dropout (to lower the learning rate, say):
        the new values apply from the next step, and the run says so in one line."""
        now = self._hyperparameters()
        changed = [f"--{k} {now[k]} (was {saved[k]})" for k in now if k in saved and saved[k] != now[k]]
        if changed:
            self._say(f"{where}: continuing with {', '.join(changed)}")
        torch = sys.modules.get("torch")
        for obj in self._objects:  # load_state_dict() brought back the old values: the command line wins
            if torch is not None and isinstance(obj, torch.optim.Optimizer):
                for group in obj.param_groups:
                    group.update(lr=self.args.lr, momentum=self.args.momentum)

    def _restore_rng(self, meta: dict, where: str) -> None:
        torch = sys.modules.get("torch")
        if torch is None:
            return
        try:
            if "torch_rng" in meta:
                torch.set_rng_state(torch.as_tensor(meta["torch_rng"]))
            if "cuda_rng" in meta and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([torch.as_tensor(state) for state in meta["cuda_rng"]])
        except (RuntimeError, TypeError, ValueError) as err:
            raise CourseError(f"{where}: damaged random-number state ({one_line(str(err), 120)})") from None

    def _divergence_message(self, loss: float) -> str:
        blame = f"try a smaller --lr than {self.args.lr}"
        # SGD's first update uses the gradient alone: momentum first shows in the loss of step 3
        if getattr(self.args, "momentum", 0) >= 1 and self.steps >= 3:
            blame = (f"--momentum {self.args.momentum} is 1 or more, so the update never decays; "
                     "use a momentum below 1")
        return f"the loss became {loss} at step {self.steps}: training diverged; {blame}"

    def _stop_if_asked(self, every_step: bool = False) -> None:
        """Stop between two steps once a signal came. In a distributed run the processes agree
        first (every AGREE_EVERY steps), so that all stop after the same step and none is left
        waiting for the others in an all-reduce."""
        asked = signals.pending() is not None
        group = _process_group()
        if group is not None:
            if every_step and self.steps % AGREE_EVERY:
                return
            asked = group.any(asked)
        if asked:
            raise KeyboardInterrupt

    def _interrupted_message(self) -> str:
        what = f"interrupted by {signals.name(signals.pending())} at step {self.steps}"
        if self.args.checkpoint is not None:
            if self._saved_epoch is not None:
                what += (f"; {self.args.checkpoint} holds epoch {self._saved_epoch}: "
                         f"--resume {self.args.checkpoint} continues from epoch {self._saved_epoch + 1}")
            else:
                what += "; no checkpoint yet (one is saved after each whole epoch)"
        return f"{what}; the record so far is in {self.record_dir}"

    # ---------------------------------------------------------------- around the run
    def __enter__(self) -> "StageRun":
        self._start = time.perf_counter()
        signals.defer()
        self._threads = ThreadPolicy(self.args.threads)
        try:
            self._stop_if_asked()
            if self.main_process:
                self.record_dir = new_record_dir(Path(self.args.out) / self.stage)
                write_whole(self.record_dir / "options.json",
                            lambda f: f.write((json.dumps(vars(self.args), indent=2) + "\n").encode()))
            for name, header in (("losses.csv", ("step", "epoch", "loss")),
                                 ("grad_norms.csv", ("step",) + LAYERS),
                                 ("accuracy.csv", ("epoch", "step", "test_accuracy", "seconds")),
                                 ("threads.csv", ("step", "threads", "cores_busy_elsewhere"))):
                self._files[name] = RecordFile(self.record_dir / name if self.main_process else None, header)
        except BaseException as err:
            self.__exit__(type(err), err, err.__traceback__)
            raise
        # a diverging run overflows on the way to NaN; log_step() reports that in one line instead
        self._quiet_numpy = np.errstate(over="ignore", invalid="ignore")
        self._quiet_numpy.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if self._bar is not None:
                self._bar.close()
            if hasattr(self, "_quiet_numpy"):
                self._quiet_numpy.__exit__(None, None, None)
            if exc is None:
                try:
                    self._finish()
                except KeyboardInterrupt:  # a second signal while finishing: stop now
                    self._mark_incomplete("interrupted while writing the summary and figures")
                    self._end(f"stopped while writing the summary and figures; the training record is in "
                              f"{self.record_dir}, marked incomplete", INTERRUPTED)
                except CourseError as err:  # a full disk while finishing: the training record stays
                    self._mark_incomplete("failed while writing the summary and figures")
                    self._end(f"error: {err}", err.exit_code)
                if signals.pending() is not None:  # one signal while finishing: finished first, then say so
                    self._end(f"{signals.name(signals.pending())} while writing the summary and figures: "
                              f"they were finished first, the record is complete in {self.record_dir}",
                              INTERRUPTED)
                return False
            if isinstance(exc, KeyboardInterrupt):
                self._mark_incomplete("interrupted")
                self._end(self._interrupted_message(), INTERRUPTED)
            if isinstance(exc, CourseError):
                self._mark_incomplete("failed")
                self._end(f"error: {exc}", exc.exit_code)
            if isinstance(exc, OSError) and exc.errno is not None:  # a write outside the helpers here
                self._mark_incomplete("failed")
                path = exc.filename or self.record_dir
                self._end(f"error: cannot write {path}: {exc.strerror}{checkpoint.free_space_note(Path(path))}",
                          WRITE_FAILED)
            return False  # anything else is a bug: let its traceback show
        finally:
            for f in self._files.values():
                f.close()
            if self._threads is not None:
                self._threads.restore()
            signals.restore()

    def _finish(self) -> None:
        seconds = time.perf_counter() - self._start
        accuracy = self.accuracies[-1] if self.accuracies else float("nan")
        self.summary = {"stage": self.stage, "final_loss": self.running_loss, "test_accuracy": accuracy,
                        "seconds": seconds, "steps": self.steps, "record": str(self.record_dir),
                        "complete": True, "data": self._data}
        if not self.main_process:
            return
        if self.per_class:
            rows = "class,test_accuracy\n" + "".join(f"{c},{a:.6f}\n" for c, a in zip(self.classes, self.per_class))
            write_whole(self.record_dir / "per_class_accuracy.csv", lambda f: f.write(rows.encode()))
            self._say("test accuracy per class: " + ", ".join(f"{c} {100 * a:.1f}%"
                                                              for c, a in zip(self.classes, self.per_class)))
        write_whole(self.record_dir / "summary.json",
                    lambda f: f.write((json.dumps(self.summary, indent=2) + "\n").encode()))
        from common.plots import plot_run  # matplotlib loads only once a run has finished

        try:
            plot_run(self.record_dir)
        except OSError as err:
            (self.record_dir / "curves.png").unlink(missing_ok=True)
            raise CourseError(f"cannot write {self.record_dir / 'curves.png'}: {err.strerror}"
                              f"{checkpoint.free_space_note(self.record_dir)}", WRITE_FAILED) from None
        print(f"{self.stage}: final training loss {self.running_loss:.4f} "
              f"(mean of the last {len(self.recent_losses)} steps), "
              f"test accuracy {100 * accuracy:.2f}%, time {seconds:.1f}s, record {self.record_dir}")
        if self.args.max_steps is not None and self.steps == self.args.max_steps and accuracy < 2 * CHANCE:
            print(f"{self.stage}: {self.steps} steps were too few to learn: the test accuracy is near chance "
                  f"({100 * CHANCE:.0f}%). At the tutorial's lr 0.001 the loss stays near ln 10 for the first "
                  "few hundred steps on CIFAR-10; drop --max-steps to train whole epochs")

    def _mark_incomplete(self, why: str) -> None:
        """An ended run leaves summary.json saying it is incomplete, and why."""
        if not self.main_process or self.record_dir == Path(os.devnull) or not self.record_dir.exists():
            return
        summary = {"stage": self.stage, "complete": False, "ended": why, "steps": self.steps,
                   "record": str(self.record_dir)}
        try:
            write_whole(self.record_dir / "summary.json",
                        lambda f: f.write((json.dumps(summary, indent=2) + "\n").encode()))
        except CourseError:
            pass  # the disk is full: the message about that is the one to show

    def _say(self, line: str, file=None) -> None:
        if self.main_process:
            tqdm.write(line, file=file or sys.stdout)  # looked up now: tests swap sys.stdout

    def _end(self, message: str, code: int) -> None:
        if self.main_process:
            print(f"{self.stage}: {printable(message)}", file=sys.stderr)
        raise SystemExit(code)


# ---------------------------------------------------------------- writing that survives failures
class RecordFile:
    """A CSV file written one row at a time, each row on disk when write_row() returns; a
    failed write is undone, so the file always ends with a complete row."""

    def __init__(self, path: Path | None, header: tuple):
        self.path, self._fd, self._size = path, None, 0
        if path is not None:
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            except OSError as err:
                raise _write_failed(path, err) from None
            self.write_row(header)

    def write_row(self, row) -> None:
        if self._fd is None:
            return
        data = (",".join(str(v) for v in row) + "\n").encode()
        try:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError as err:
            try:
                os.ftruncate(self._fd, self._size)  # drop the partial row: shrinking needs no space
            except OSError:
                pass
            raise _write_failed(self.path, err) from None
        self._size += len(data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def write_whole(path: Path, write) -> None:
    """A record file written whole or not at all (checkpoint.write_atomically), one line if not."""
    try:
        checkpoint.write_atomically(path, write)
    except OSError as err:
        raise _write_failed(path, err) from None


def _write_failed(path: Path, err: OSError) -> CourseError:
    reason = err.strerror or str(err)
    return CourseError(f"cannot write {path}: {reason}{checkpoint.free_space_note(path)}; "
                       "everything written before is intact", WRITE_FAILED)


def new_record_dir(stage_dir: Path) -> Path:
    """runs/<stage>/<timestamp>[-N]/, never reusing a folder, so no earlier record is lost."""
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


# ---------------------------------------------------------------- distributed runs
class _Group:
    """The process group of a distributed run, for the recorder's own agreements."""

    def __init__(self, dist):
        self.dist = dist

    def any(self, flag: bool) -> bool:
        """True on every process when it is True on any."""
        torch = sys.modules["torch"]
        device = torch.device("cuda", torch.cuda.current_device()) if self.dist.get_backend() == "nccl" else "cpu"
        value = torch.tensor([int(flag)], device=device)
        self.dist.all_reduce(value, op=self.dist.ReduceOp.MAX)
        return bool(value.item())


def _process_group() -> _Group | None:
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    return _Group(dist)


# ---------------------------------------------------------------- gradients and arrays
def layer_norms(gradients) -> list[float]:
    """The L2 norm of each layer's gradient, weight and bias together, in LAYERS order."""
    grads = _named_gradients(gradients)
    squares = dict.fromkeys(LAYERS, 0.0)
    torch = sys.modules.get("torch")
    if torch is not None and grads and isinstance(next(iter(grads.values())), torch.Tensor):
        names = list(grads)
        norms = torch.stack(torch._foreach_norm([grads[n] for n in names])).tolist()  # one call, not ten
        values = dict(zip(names, norms))
    else:
        values = {n: float(np.sqrt(np.vdot(g, g))) for n, g in grads.items()}
    for name, norm in values.items():
        squares[name.split(".")[0]] += norm**2
    return [math.sqrt(squares[layer]) for layer in LAYERS]


def _named_gradients(gradients) -> dict:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(gradients, torch.nn.Module):
        items = gradients.named_parameters()
    else:
        items = gradients.items()
    grads = {}
    for name, value in items:
        name = name.removeprefix("module.")  # DataParallel and DDP keep the network as .module
        if torch is not None and isinstance(value, torch.Tensor) and value.requires_grad:
            value = value.grad  # a parameter: its gradient lives in .grad
        if value is not None:
            grads[name] = value.detach() if hasattr(value, "detach") else value
    return grads


def _as_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)
