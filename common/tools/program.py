"""The guard around every tool behind make (the course runner, compare, gradcheck, site, ...,
make itself): each way it can end early is one line and an exit code (common/errors.py), as a
stage's is, never a traceback; a bug still shows its traceback.

    if __name__ == "__main__":
        run_program(main)
"""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import PurePath
from typing import Callable

from common.errors import INTERRUPTED, READER_GONE, describe, flush_stdout, printable

_received: list[str] = []  # the name of the signal that stopped the tool, if one did


def program_name() -> str:
    """"python -m common.tools.compare", as the tool was started."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return f"python -m {spec.name}" if spec is not None else PurePath(sys.argv[0]).name


def _interrupt(signum, frame) -> None:
    _received.append(signal.Signals(signum).name)
    raise KeyboardInterrupt


def run_program(main: Callable[[], object], name: str | None = None) -> None:
    """main() inside the guard; its int result, if any, is the exit code. SIGTERM stops a tool
    as Ctrl-C does."""
    name = name or program_name()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = main()
    except SystemExit:
        flush_stdout()
        raise
    except BaseException as err:
        described = describe(err)
        if described is None:
            raise  # a bug: its traceback shows
        line, code = described
        if code == INTERRUPTED:
            line = f"interrupted by {_received[0] if _received else 'SIGINT'}"
        elif code != READER_GONE:
            line = f"error: {line}"
        flush_stdout()
        if code != READER_GONE:
            print(f"{name}: {printable(line)}", file=sys.stderr, flush=True)
        raise SystemExit(code) from None
    flush_stdout()
    raise SystemExit(result if isinstance(result, int) else 0)
