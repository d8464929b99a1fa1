"""What a run shows as it goes: the progress bar, the running loss, and lines printed above the bar."""
from __future__ import annotations

import sys
from collections import deque

from tqdm import tqdm

RUNNING_LOSS_STEPS = 100  # the progress bar and the summary average the loss over this many steps


class Progress:
    """One progress bar for the whole run (made at its first epoch); shown by one process only."""

    def __init__(self, stage: str, shown: bool):
        self.stage, self.shown = stage, shown
        self.recent_losses: deque[float] = deque(maxlen=RUNNING_LOSS_STEPS)
        self.bar = None

    @property
    def running_loss(self) -> float:
        return sum(self.recent_losses) / max(len(self.recent_losses), 1)

    def start(self, total: int) -> None:
        self.bar = tqdm(total=total, unit="step", leave=False, dynamic_ncols=True, file=sys.stderr,
                        disable=not self.shown)

    def epoch(self, epoch: int, epochs: int) -> None:
        self.bar.set_description(f"{self.stage} epoch {epoch}/{epochs}", refresh=False)

    def step(self) -> None:
        self.bar.update()

    def losses(self, values: list[float]) -> None:
        """The losses of the steps just read back: the running loss, and the bar's text."""
        self.recent_losses.extend(values)
        if self.bar is not None and values:
            self.bar.set_postfix(loss=f"{self.running_loss:.4f}", refresh=False)

    def say(self, line: str, file=None) -> None:
        """A line above the bar (looked up now: the tests swap sys.stdout)."""
        if self.shown:
            tqdm.write(line, file=file or sys.stdout)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
