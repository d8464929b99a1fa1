"""The guard around a whole tool (the course runner, compare, gradcheck, site, ..., make itself):
every way it can end is one line and an exit code (common/errors.py), never a traceback.

    if __name__ == "__main__":
        run_program(main)

From its first line to its last the tool is inside the signal window (common/run/signals.py):
Ctrl-C, SIGTERM and SIGHUP stop it with "interrupted by SIGTERM" and 130; an OSError (a folder
that cannot be written, a file that is a folder, a full disk) names the file and why; a file
that is not UTF-8 text names the file and the first byte that is not. A bug still shows its
traceback.
"""
from __future__ import annotations

import errno
import io
import os
import sys
from pathlib import PurePath
from typing import Callable

from common.errors import BAD_INPUT, INTERRUPTED, OUT_OF_MEMORY, WRITE_FAILED, CourseError, printable
from common.run import signals, streams

FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)  # a write that failed midway: exit code 4


def program_name() -> str:
    """"python -m common.tools.compare", as the tool was started."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return f"python -m {spec.name}" if spec is not None else PurePath(sys.argv[0]).name


def run_program(main: Callable[[], object], name: str | None = None) -> None:
    """main() inside the guard; its int result, if any, is the exit code."""
    name = name or program_name()
    signals.guard_program("tool", name)
    try:
        result = main()
    except SystemExit as done:
        signals.ending(0 if done.code is None else done.code if isinstance(done.code, int) else 1)
        raise
    except BaseException as err:
        ending = ending_of(err)
        if ending is None:
            raise  # a bug: its traceback shows
    else:
        ending = None
    if ending is not None:  # said once the exception and its frames are gone (a progress bar closed)
        end(name, *ending)
    code = result if isinstance(result, int) else 0
    if code == 0 and streams.lost_output():  # a full device on stdout: the tool's output is gone, say so
        end(name, f"error: {streams.broke()}: the printed output was lost", WRITE_FAILED)
    signals.ending(code)
    raise SystemExit(code)


def ending_of(err: BaseException) -> tuple[str, int] | None:
    """The line and exit code of an exception that ends a tool, or None for a bug."""
    if isinstance(err, KeyboardInterrupt):
        return f"interrupted by {signals.name(signals.pending())}", INTERRUPTED
    if isinstance(err, CourseError):
        return f"error: {err}", err.exit_code
    if isinstance(err, UnicodeDecodeError):
        return f"error: {not_utf8(err)}", BAD_INPUT
    if isinstance(err, OSError):
        return f"error: {os_error(err)}", exit_code_of(err)
    if isinstance(err, MemoryError):
        return "error: out of memory (close other programs, or ask for less: fewer steps or a smaller batch)", \
            OUT_OF_MEMORY
    return None


def end(name: str, message: str, code: int) -> None:
    signals.ending(code)
    signals.say(f"{name}: {printable(message)}")
    raise SystemExit(code)


def exit_code_of(err: OSError) -> int:
    """4 for a write that failed midway (a full disk), 2 for a path that cannot be used at all."""
    return WRITE_FAILED if err.errno in FULL else BAD_INPUT


def os_error(err: OSError) -> str:
    """"runs/compare: Not a directory", or the error itself when it names no file."""
    from common.run.checkpoint import free_space_note

    if err.filename is None:
        return err.strerror or str(err)
    if isinstance(err, FileExistsError) and os.path.isfile(err.filename):  # a folder was to be made there
        return f"{err.filename}: a file, not a folder"
    where = str(err.filename) + (f" -> {err.filename2}" if err.filename2 is not None else "")
    note = free_space_note(PurePath(str(err.filename))) if err.errno in FULL else ""
    return f"{where}: {err.strerror}{note}"


def not_utf8(err: UnicodeDecodeError) -> str:
    """The file that was being read, where the traceback shows it, and the byte that is not UTF-8."""
    byte = err.object[err.start:err.start + 1].hex() if isinstance(err.object, bytes) else "?"
    what = f"byte 0x{byte} at position {err.start} is not {err.encoding.upper()} text"
    path = _file_being_read(err.__traceback__)
    return (f"{path}: {what}; save it as UTF-8 (an editor's 'Save with Encoding'), then try again"
            if path else what)


def _file_being_read(tb) -> str | None:
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):  # the innermost first: pathlib's read_text, or a function holding the file
        for value in frame.f_locals.values():
            if isinstance(value, PurePath):
                return str(value)
            if isinstance(value, io.TextIOWrapper) and isinstance(value.name, str):
                return value.name
    return None
