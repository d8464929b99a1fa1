"""--checkpoint and --resume for one run: what it saves after each whole epoch, and the checks
that a checkpoint belongs to this run before its state is put back (common/run/checkpoint.py
is the file format)."""
from __future__ import annotations

import argparse
import os

from common.errors import CourseError, one_line
from common.loaded import loaded_torch
from common.run import checkpoint
from common.run.guard import process_group

SAME_RUN = ("stage", "dtype", "batch_size", "seed")  # what a resumed run must share with the saved one


class Checkpoints:
    def __init__(self, stage: str, args: argparse.Namespace, writes: bool):
        self.stage, self.args, self.writes = stage, args, writes
        self.objects: tuple = ()
        self.resumed: dict = {}  # the checkpoint's meta fields, after a resume
        self.saved_epoch = None  # the epoch the last checkpoint holds

    def resume(self, objects: tuple, say) -> tuple[int, int]:
        """Remember what holds the run's state; with --resume, put it back. Returns the epoch to
        start at and the steps already taken."""
        self.objects = objects
        if self.args.checkpoint is not None:
            checkpoint.check_writable(self.args.checkpoint)
            if not same_file(self.args.checkpoint, self.args.resume):  # a --resume of it is checked by load()
                checkpoint.check_replaceable(self.args.checkpoint)
            if self.writes:
                checkpoint.hold(self.args.checkpoint)  # until release(): no other run writes it meanwhile
        if self.args.resume is None:
            return 1, 0
        meta, states = checkpoint.load(self.args.resume, stage=self.stage)
        where = f"--resume {self.args.resume}"
        for key in SAME_RUN:
            value = self.stage if key == "stage" else getattr(self.args, key)
            if meta[key] != value:
                raise CourseError(f"{where}: made with {key} {meta[key]!r}, but this run has {value!r}")
        kinds = [checkpoint.describe(o) for o in objects]
        saved_kinds = [entry["kind"] for entry in meta["state"]]
        if kinds != saved_kinds:
            raise CourseError(f"{where}: holds {saved_kinds}, this stage keeps {kinds}")
        for obj, state in zip(objects, states):
            checkpoint.restore(obj, state, where, self.args.dtype)
        restore_rng(meta, where)
        self._announce_changed_hyperparameters(meta["hyperparameters"], where, say)
        self.resumed, self.saved_epoch = meta, meta["epoch"]
        if meta["epoch"] >= self.args.epochs:
            say(f"{where}: that run already finished its {meta['epoch']} epoch(s) "
                f"({meta['step']} steps); nothing to train (ask for more with --epochs)")
            raise SystemExit(0)
        say(f"resumed from {self.args.resume}: {meta['epoch']} epoch(s), {meta['step']} steps done")
        return meta["epoch"] + 1, meta["step"]

    def check_steps_per_epoch(self, steps: int) -> None:
        if self.resumed and steps != self.resumed["steps_per_epoch"]:
            raise CourseError(f"--resume {self.args.resume}: made with {self.resumed['steps_per_epoch']} "
                              f"steps per epoch, this run has {steps} (other data?)")

    def save(self, epoch: int, steps: int, steps_per_epoch: int) -> None:
        """After a whole epoch, with --checkpoint: the run's state, atomically (every process of a
        distributed run calls this: each one's random-number state goes in too)."""
        if self.args.checkpoint is None:
            return
        group = process_group()
        rng_by_rank = group.gather(own_rng_states()) if group is not None else None
        if not self.writes:
            return
        meta = {"stage": self.stage, "dtype": self.args.dtype, "batch_size": self.args.batch_size,
                "seed": self.args.seed, "steps_per_epoch": steps_per_epoch, "epoch": epoch,
                "step": steps, "hyperparameters": self._hyperparameters()}
        checkpoint.save(self.args.checkpoint, meta, list(self.objects), rng_by_rank)
        self.saved_epoch = epoch

    def release(self) -> None:
        if self.writes:
            checkpoint.release(self.args.checkpoint)

    def interrupted_note(self) -> str:
        """What a learner can do with the checkpoint after an interruption."""
        if self.args.checkpoint is None:
            return ""
        if self.saved_epoch is None:
            return "; no checkpoint yet (one is saved after each whole epoch)"
        return (f"; {self.args.checkpoint} holds epoch {self.saved_epoch}: "
                f"--resume {self.args.checkpoint} continues from epoch {self.saved_epoch + 1}")

    def _hyperparameters(self) -> dict:
        return {key: getattr(self.args, key) for key in checkpoint.HYPERPARAMETERS if hasattr(self.args, key)}

    def _announce_changed_hyperparameters(self, saved: dict, where: str, say) -> None:
        """A resume may change --lr, --momentum or --dropout (to lower the learning rate, say):
        the new values apply from the next step, and the run says so in one line."""
        now = self._hyperparameters()
        changed = [f"--{k} {now[k]} (was {saved[k]})" for k in now if k in saved and saved[k] != now[k]]
        if changed:
            say(f"{where}: continuing with {', '.join(changed)}")
        torch = loaded_torch()
        for obj in self.objects:  # load_state_dict() brought back the old values: the command line wins
            if torch is not None and isinstance(obj, torch.optim.Optimizer):
                for group in obj.param_groups:
                    group.update(lr=self.args.lr, momentum=self.args.momentum)


def same_file(path, other) -> bool:
    return other is not None and os.path.abspath(path) == os.path.abspath(other)


def own_rng_states() -> list:
    """This process's CPU generator state and, on a GPU, its GPU's."""
    torch = loaded_torch()
    on_gpu = torch.cuda.is_available() and torch.cuda.is_initialized()
    return [torch.get_rng_state().numpy(), torch.cuda.get_rng_state().numpy() if on_gpu else None]


def restore_rng(meta: dict, where: str) -> None:
    """torch's global generators as the checkpoint saved them (the numpy stage has none); in a
    distributed run, each process's own."""
    torch = loaded_torch()
    if torch is None:
        return
    cpu, gpus, own_gpu = meta.get("torch_rng"), meta.get("cuda_rng"), None
    group = process_group()
    try:
        if group is not None and "rng_by_rank" in meta:
            states = meta["rng_by_rank"]
            if not isinstance(states, list) or len(states) != group.size:
                raise CourseError(f"{where}: saved by another number of processes than this run's {group.size}")
            (cpu, own_gpu), gpus = states[group.rank], None
        if cpu is not None:
            torch.set_rng_state(torch.as_tensor(cpu))
        if gpus is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([torch.as_tensor(state) for state in gpus])
        if own_gpu is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(torch.as_tensor(own_gpu))  # the current GPU: this process's own
    except (RuntimeError, TypeError, ValueError) as err:
        raise CourseError(f"{where}: damaged random-number state ({one_line(str(err), 120)})") from None
