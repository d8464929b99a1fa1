"""Ctrl-C (SIGINT), SIGTERM and SIGHUP (the terminal closed): one guarded window per program.

A program of the course installs these handlers with its first line and keeps them to its last:
a stage (`guard_program("stage", ...)`, from stages/__init__.py or parse_args) and every tool
behind make (common/run/program.py). Inside the window a signal never ends in a traceback:

- in a tool, the first signal stops it where it is (KeyboardInterrupt), and its guard says so in
  one line;
- in a stage before its run begins (torch still importing, the options being read), the first
  signal is noted and parse_args() ends the program before anything is written;
- during a run (`defer()`, by StageRun), the first signal is only noted (`pending()`) and the
  recorder stops the run at the next step boundary, so nothing is half-written; a second one
  raises KeyboardInterrupt at once, for a run that does not reach a step boundary soon;
- once the program is ending (its one line decided, `ending()`), a further signal ends it at
  once with the same exit code: a clean-up that takes long never turns into a traceback.

Without a program (the tests import the stages and call main()), `restore()` puts back the
handlers that were there before.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable

from common.errors import INTERRUPTED

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
MEANING = {signal.SIGHUP: " (the terminal was closed)"}

_received: list[int] = []
_previous: dict = {}  # the handlers before the course's, for restore()
_state = {
    "program": None,  # None (no program: the tests), "stage" or "tool"
    "name": "",  # how the program names itself in its one line
    "in_run": False,  # between StageRun's defer() and restore()
    "ending": None,  # (exit code, last words or None) once the program is ending
    "last_words": None,  # what to say and record should a signal end the program at once
}


def _handle(signum, frame):
    _received.append(signum)
    if _state["ending"] is not None:  # already ending: a clean-up that takes long is cut short
        end_at_once()
    if _state["in_run"]:
        if len(_received) == 1:
            return  # acted on between two steps
        stopping()  # asked twice: stop now
        raise KeyboardInterrupt
    if _state["program"] == "stage":
        if len(_received) == 1:
            return  # parse_args(), the stage's first line, ends the program
        ending(INTERRUPTED, lambda: say(f"{_state['name']}: {starting_message()}"))
        end_at_once()
    stopping()  # a tool: stop where it is; its guard says so in one line
    raise KeyboardInterrupt


def _install() -> None:
    if _previous or threading.current_thread() is not threading.main_thread():
        return
    _received.clear()
    for sig in SIGNALS:
        _previous[sig] = signal.signal(sig, _handle)


def guard_program(kind: str, name: str) -> None:
    """The program's window, from here to its end: kind "stage" or "tool" (see the top)."""
    if _state["program"] is not None:
        return
    from common.run import streams  # a broken or closed stdout or stderr must not end the program

    _install()
    if _previous:
        _state.update(program=kind, name=name)
        streams.guard()


def reclaim() -> None:
    """The course's handlers again, after a library (torchrun's agent) replaced them with its own."""
    if _state["program"] is not None:
        for sig in SIGNALS:
            signal.signal(sig, _handle)


def defer() -> None:
    """From now on (a run), note the first signal instead of stopping (main thread only)."""
    _install()
    if _previous:
        _state["in_run"] = True


def restore() -> None:
    """The run is over: back to the program's window, or, without one, to the previous handlers."""
    _state.update(in_run=False, last_words=None)
    if _state["program"] is None:
        for sig, handler in _previous.items():
            signal.signal(sig, handler)
        _previous.clear()
        _state["ending"] = None
    elif _state["program"] == "tool":
        _received.clear()  # the course runner goes on with the next stage (or ends, saying so itself)
        _state["ending"] = None
    elif _state["program"] == "stage" and _state["ending"] is None:
        ending(0)  # the run finished: a stage has nothing left to do but exit


def program() -> str | None:
    """"stage" or "tool" (see the top); None for a main() called from Python (a test, a notebook)."""
    return _state["program"]


def pending() -> int | None:
    """The first signal received since the window began, or None."""
    return _received[0] if _received else None


def name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum else "a signal"


def starting_message() -> str:
    return f"interrupted by {name(pending())} while starting; nothing was written"


def when_stopped_at_once(last_words: Callable[[], None] | None) -> None:
    """What to say and record (the run's one line, summary.json) should a signal end the program
    at once, before its own ending is reached."""
    _state["last_words"] = last_words


def stopping() -> None:
    """The program stops now (a KeyboardInterrupt is on its way): a further signal ends it at once."""
    if _state["ending"] is None and _previous:
        ending(INTERRUPTED, _state["last_words"])


def ending(code: int, last_words: Callable[[], None] | None = None) -> None:
    """The program is ending with `code` (its line said, or `last_words` to say it): a further
    signal ends it at once."""
    if _previous:
        _state["ending"] = (code, last_words)


def end_at_once() -> None:
    code, last_words = _state["ending"]
    _state["ending"] = (code, None)
    try:
        if last_words is not None:
            last_words()
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except BaseException:  # the process ends here whatever the streams do
        pass
    os._exit(code)


def say(line: str) -> None:
    """One line on stderr (or stdout, where stderr cannot be written)."""
    from common.run import streams

    streams.tell(line)
