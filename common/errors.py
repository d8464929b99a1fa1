"""Errors a learner can fix themselves: shown as one line, never as a traceback.

Exit codes of every stage, of the course runner and of every tool behind make:
  0    finished (also: a --resume of a run that had already finished)
  1    (make check, make compare) something is not done yet, wrong or disagreeing
  2    bad input: an option, a make variable, the data, a checkpoint, a device that is not there,
       a file or folder that cannot be used (not there, not writable, not UTF-8 text), a
       --checkpoint that another run is writing or that names a file which is not a checkpoint,
       a distributed environment that does not add up or whose other processes never came
  3    training diverged: the loss became NaN or infinite
  4    a write failed (a full disk, a folder that became read-only, a stdout that could not take
       the output); what was written before stays readable
  5    out of memory: a batch too large for this machine's memory, or a DataLoader worker killed
       (most often by the system's out-of-memory killer); the record says it is incomplete
  130  interrupted by Ctrl-C (SIGINT), SIGTERM or SIGHUP (the terminal closed)
"""
from __future__ import annotations

import unicodedata

BAD_INPUT = 2
DIVERGED = 3
WRITE_FAILED = 4
OUT_OF_MEMORY = 5
INTERRUPTED = 130  # the shell's code for a program stopped by Ctrl-C


class CourseError(Exception):
    """A problem with what the learner asked for; `exit_code` says which kind."""

    def __init__(self, message: str, exit_code: int = BAD_INPUT):
        super().__init__(message)
        self.exit_code = exit_code


def printable(text: str) -> str:
    """A message with its control characters (a line break in a file name or in an option's
    value, a terminal escape) written as in a Python string literal, `\\n` or `\\x1b`: the
    message stays one line and shows what was typed."""
    return "".join(repr(c)[1:-1] if unicodedata.category(c) == "Cc" else c for c in text)


def one_line(text: str, limit: int = 160) -> str:
    """Foreign text (a library's message, a header's contents) as part of one short line, cut
    at a word boundary when it is long."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit - 2)
    return text[: cut if cut > limit // 2 else limit - 2] + " …"
