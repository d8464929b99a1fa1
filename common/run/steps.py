"""The steps since the record last heard of them: each step's loss and gradient norms, kept where
they were computed and read back every READ_EVERY steps, so that a GPU never waits for the
recorder (reading a number back makes the CPU wait until the GPU has computed it)."""
from __future__ import annotations

import math

from common.errors import DIVERGED, CourseError
from common.loaded import loaded_torch
from common.run.gradients import layer_norms, parameter_norms
from common.run.guard import divergence_message

READ_EVERY = 50  # steps between two reads: one wait per 50 steps instead of one per step


class PendingSteps:
    def __init__(self):
        self.steps: list[tuple[int, int]] = []  # (step, epoch)
        self.losses: list = []  # floats, or 0-d tensors on the device
        self.norms: list = []  # per step: (names, norms), the norms a list or a tensor on the device

    def __len__(self) -> int:
        return len(self.steps)

    def add(self, step: int, epoch: int, loss, gradients) -> None:
        self.steps.append((step, epoch))
        self.losses.append(loss.detach() if hasattr(loss, "detach") else float(loss))
        self.norms.append(None if gradients is None else parameter_norms(gradients))

    def read(self) -> list[tuple[int, int, float, list[float] | None]]:
        """(step, epoch, loss, layer norms or None) of every pending step, in order; one wait."""
        losses, norms = self.losses, [entry[1] if entry else None for entry in self.norms]
        torch = loaded_torch()
        if torch is not None and losses and isinstance(losses[0], torch.Tensor):
            losses = torch.stack(losses).double().tolist()  # every loss of these steps in one read
        if torch is not None and any(isinstance(n, torch.Tensor) for n in norms):
            stacked = iter(torch.stack([n for n in norms if n is not None]).tolist())
            norms = [None if n is None else next(stacked) for n in norms]
        rows = [(step, epoch, float(loss), None if entry is None else layer_norms(entry[0], norm))
                for (step, epoch), loss, entry, norm in zip(self.steps, losses, self.norms, norms)]
        self.__init__()
        return rows


def first_non_finite(rows) -> tuple[int, float] | None:
    """The step and loss of the first row whose loss is NaN or infinite, or None."""
    return next(((step, loss) for step, _, loss, _ in rows if not math.isfinite(loss)), None)


class StepLog:
    """losses.csv and grad_norms.csv, written READ_EVERY steps at a time from the pending steps."""

    def __init__(self, record, progress, args):
        self.record, self.progress, self.args = record, progress, args
        self.pending = PendingSteps()

    def add(self, step: int, epoch: int, loss, gradients) -> None:
        self.pending.add(step, epoch, loss, gradients)
        if len(self.pending) >= READ_EVERY:
            self.write_pending()

    def write_pending(self, at_the_end: bool = False) -> None:
        """Every pending step into the record, up to a loss that is NaN or infinite, which ends
        the run in one line naming its step. At the end of a run that is already ending, that
        ending stands: a divergence found now, or a second Ctrl-C, is not raised over it."""
        if at_the_end:
            try:
                self.write_pending()
            except (CourseError, KeyboardInterrupt, MemoryError):
                pass
            return
        rows = self.pending.read()
        diverged = first_non_finite(rows)
        rows = [row for row in rows if diverged is None or row[0] <= diverged[0]]
        for step, epoch, loss, norms in rows:
            self.record.row("losses.csv", (step, epoch, repr(loss)))  # repr: every bit
            if norms is not None:
                self.record.row("grad_norms.csv", (step, *(f"{n:.6g}" for n in norms)))
        self.progress.losses([loss for step, _, loss, _ in rows if diverged is None or step < diverged[0]])
        if diverged is not None:
            raise CourseError(divergence_message(diverged[1], diverged[0], self.args), DIVERGED)
