"""Ctrl-C and SIGTERM, acted on between two training steps instead of in the middle of one.

`defer()` replaces Python's default handlers: the first signal is only noted (`pending()`),
and the training loop's recorder stops the run at the next step boundary, so that nothing
is half-written. A second signal raises KeyboardInterrupt at once, for a run that does not
reach a step boundary soon. `restore()` puts the previous handlers back.
"""
from __future__ import annotations

import signal
import threading

_received: list[int] = []
_previous: dict = {}


def _note(signum, frame):
    _received.append(signum)
    if len(_received) > 1:  # asked twice: stop now
        raise KeyboardInterrupt


def defer() -> None:
    """From now on, note SIGINT and SIGTERM instead of dying (only the main thread may do this)."""
    if _previous or threading.current_thread() is not threading.main_thread():
        return
    _received.clear()
    for sig in (signal.SIGINT, signal.SIGTERM):
        _previous[sig] = signal.signal(sig, _note)


def restore() -> None:
    for sig, handler in _previous.items():
        signal.signal(sig, handler)
    _previous.clear()


def pending() -> int | None:
    """The first signal received since defer(), or None."""
    return _received[0] if _received else None


def name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum else "a signal"
