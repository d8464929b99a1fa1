"""How a program of the course ends early: one line and an exit code, never a traceback.

Exit codes of every stage and of every tool behind make:
  0    finished
  1    (make check, make compare) something is not done yet, wrong or disagreeing
  2    bad input: an option, a make variable, the data, a device that is not there, a file or
       folder that cannot be used, a process group that could not form
  3    training diverged: the loss became NaN or infinite
  4    a write failed (a full disk): what was written before stays readable
  5    out of memory
  6    another process of the group failed (stages 11-13)
  130  interrupted: Ctrl-C (SIGINT) or SIGTERM
  141  stdout's reader went away (`| head`): the program ends quietly, as the shell reports a
       program that SIGPIPE ended
A bug still shows its traceback: `describe` returns None for it.
"""
from __future__ import annotations

import errno
import os
import re
import sys
import unicodedata

BAD_INPUT, DIVERGED, WRITE_FAILED, OUT_OF_MEMORY, GROUP_FAILED, INTERRUPTED = 2, 3, 4, 5, 6, 130
READER_GONE = 141
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class CourseError(Exception):
    """A problem the learner can fix; `exit_code` says which kind."""

    def __init__(self, message: str, exit_code: int = BAD_INPUT):
        super().__init__(message)
        self.exit_code = exit_code


def describe(exc: BaseException) -> tuple[str, int] | None:
    """The one line (without the program's name) and the exit code of an exception that ends a
    program, or None for a bug. The process-group errors are torch's (torch.distributed.DistError
    and its subclasses), told apart by name so that the numpy stage never has to import torch."""
    kinds = {cls.__name__ for cls in type(exc).__mro__}
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", INTERRUPTED
    if isinstance(exc, CourseError):
        return str(exc), exc.exit_code
    if isinstance(exc, BrokenPipeError):  # `| head` read what it wanted: the callers say nothing
        return "stdout's reader went away", READER_GONE
    if isinstance(exc, MemoryError) or "OutOfMemoryError" in kinds:  # numpy's, or torch's
        return "out of memory: try a smaller --batch-size, or close other programs", OUT_OF_MEMORY
    if kinds & {"DistStoreError", "DistNetworkError"}:  # the group's rendezvous: a port, a peer
        return f"the process group could not form: {one_line(exc)}", BAD_INPUT
    if "DistError" in kinds or isinstance(exc, RuntimeError) and "/gloo/" in str(exc):  # gloo's own
        why = re.sub(r"^\[.*?\] ", "", str(exc)).split(". ")[0]  # without gloo's file and advice
        return f"another process of the group failed, so this one stops ({one_line(why)})", \
            GROUP_FAILED
    if isinstance(exc, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({one_line(exc)})", BAD_INPUT
    if isinstance(exc, OSError) and exc.errno is not None:
        where = f"{exc.filename}: " if exc.filename is not None else ""
        if exc.errno in DISK_FULL:
            return f"cannot write {where}{exc.strerror}; what was written before is intact", \
                WRITE_FAILED
        return f"{where}{exc.strerror}", BAD_INPUT
    return None


def flush_stdout() -> None:
    """Flush stdout now; where its reader went away (`| head`), send the rest nowhere, so that
    Python's own flush at exit has nothing to complain about."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def printable(text: str) -> str:
    """A message with its control characters (a line break typed in an option) written as in a
    Python string, `\\n`: the message stays one line and shows what was typed."""
    return "".join(repr(c)[1:-1] if unicodedata.category(c) == "Cc" else c for c in str(text))


def one_line(text, limit: int = 160) -> str:
    """Foreign text (a library's message) as part of one short line."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 2] + " …"
