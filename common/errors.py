"""Errors a learner can fix themselves: shown as one line, never as a traceback."""
from __future__ import annotations

BAD_INPUT = 2  # wrong option, missing or corrupt data, unavailable device
DIVERGED = 3  # the loss became NaN or infinite


class CourseError(Exception):
    """A problem with what the learner asked for; `exit_code` says which kind."""

    def __init__(self, message: str, exit_code: int = BAD_INPUT):
        super().__init__(message)
        self.exit_code = exit_code
