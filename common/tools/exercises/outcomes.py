"""What one check found, as the report shows it (kept apart from the checks, so that make check's
own process reads it without loading torch: the learner's code runs in a child process)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Outcome:
    status: str  # "passed", "not done yet", "wrong", "did not finish", "interrupted" or "not checked"
    detail: str = ""
