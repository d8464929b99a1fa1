"""stdout and stderr that never end a program: a run goes on when they break.

`guard()` (once per program, from the signal window) wraps both streams so that:
- a write that fails (`| head -1` closed the pipe, a full device, a terminal that is gone) is
  noted, not raised: the run keeps training and writing its record, and the stream's file
  descriptor is pointed at /dev/null, so that not even Python's last flush at exit fails;
- a stream closed before the program began (`2>&-`, as under some daemons) is the same, and its
  file descriptor is filled with /dev/null first, so that no file the run opens later takes it;
- every message can be written on any stdout: what its encoding cannot hold (PYTHONIOENCODING=
  ascii, a Latin-1 locale) becomes an ASCII replacement ("…" -> "...", "ü" -> "\\xfc").

`trouble()` says what failed, for the record and the run's last line; `tell()` prints a line
on stderr, or on stdout where stderr cannot be written.
"""
from __future__ import annotations

import codecs
import errno
import os
import sys

ASCII_FOR = {"…": "...", "–": "-", "—": "-", "−": "-", "≈": "~", "×": "x", "’": "'", "‘": "'", "“": '"', "”": '"',
             "→": "->", "←": "<-", "≤": "<=", "≥": ">=", "±": "+/-", "²": "^2", "µ": "u", "·": ".", "▏": "|",
             "█": "#"}
ERRORS = "course-ascii"  # the name of the encoding error handler below
CLOSED_BEFORE = "closed before the program began"  # on purpose (`2>&-`): nothing to tell


def _ascii_replacement(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeEncodeError):
        raise err
    text = err.object[err.start:err.end]
    return "".join(ASCII_FOR.get(c) or c.encode("ascii", "backslashreplace").decode() for c in text), err.end


codecs.register_error(ERRORS, _ascii_replacement)


class GuardedStream:
    """A text stream whose failed writes are noted instead of raised (see the top)."""

    def __init__(self, stream, label: str, failure: str | None = None):
        self.stream, self.label, self.failure = stream, label, failure

    def write(self, text: str) -> int:
        if self.failure is None:
            try:
                return self.stream.write(text)
            except (OSError, ValueError) as err:  # ValueError: written after it was closed
                self._failed(err)
        return len(text)

    def flush(self) -> None:
        if self.failure is None:
            try:
                self.stream.flush()
            except (OSError, ValueError) as err:
                self._failed(err)

    def __getattr__(self, name: str):  # encoding, isatty, fileno, ... of the stream itself
        return getattr(self.stream, name)

    def _failed(self, err: Exception) -> None:
        self.failure = getattr(err, "strerror", None) or "closed"
        self.errno = getattr(err, "errno", None)
        try:
            _point_at_devnull(self.stream.fileno())
        except (OSError, ValueError):
            pass


def _point_at_devnull(fd: int) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    if devnull != fd:
        os.dup2(devnull, fd)
        os.close(devnull)


def _guarded(stream, fd: int, label: str) -> GuardedStream:
    if stream is None:  # closed before Python started
        try:
            os.fstat(fd)
        except OSError:
            _point_at_devnull(fd)
        return GuardedStream(open(os.devnull, "w"), label, failure=CLOSED_BEFORE)
    if hasattr(stream, "reconfigure"):
        stream.reconfigure(errors=ERRORS)
    return GuardedStream(stream, label)


def guard() -> None:
    if not isinstance(sys.stdout, GuardedStream):
        sys.stdout = _guarded(sys.stdout, 1, "stdout")
    if not isinstance(sys.stderr, GuardedStream):
        sys.stderr = _guarded(sys.stderr, 2, "stderr")


def trouble() -> dict[str, str]:
    """{"stdout": "Broken pipe", ...}: the guarded streams that could not be written."""
    return {s.label: s.failure for s in (sys.stdout, sys.stderr) if isinstance(s, GuardedStream) and s.failure}


def broke() -> str:
    """"stdout (Broken pipe)": the streams that broke while the program ran, or ""."""
    return ", ".join(f"{label} ({why})" for label, why in trouble().items() if why != CLOSED_BEFORE)


def lost_output() -> bool:
    """True when output was lost against the learner's will: a full device, an I/O error (not a
    reader that went away, `| head`, nor a stream closed on purpose, `2>&-`)."""
    return any(isinstance(s, GuardedStream) and s.failure and getattr(s, "errno", None) not in (None, errno.EPIPE)
               for s in (sys.stdout, sys.stderr))


def say(line: str) -> None:
    """One line on stdout, whatever stdout is."""
    try:
        print(line, flush=True)
    except (OSError, ValueError):
        pass


def tell(line: str) -> None:
    """One line on stderr, or on stdout where stderr cannot be written."""
    for stream in (sys.stderr, sys.stdout):
        if stream is None or getattr(stream, "failure", None):
            continue
        try:
            print(line, file=stream, flush=True)
        except (OSError, ValueError):
            continue
        if not getattr(stream, "failure", None):
            return
