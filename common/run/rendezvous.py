"""The start of a distributed run: the environment checked before any waiting, and the wait for
the other processes bounded and interruptible.

torchrun describes the group in the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT); `check_environment()` refuses, in one line, values that do not add up and a
MASTER_PORT that another program already holds, before the stage waits for anyone.

`dist.init_process_group` then waits for the other processes inside torch's TCPStore, in C++,
for up to 30 minutes, and Python's signal handlers cannot run until it returns. `Watch`
watches from a thread of its own: it learns of a signal through the wakeup file descriptor
that Python writes to whatever the main thread is doing, and of the time limit from its own
clock. Either one ends the process at once (nothing has been trained yet), with one line and the
record marked; once the group is formed, the watch steps aside.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time

from common.errors import BAD_INPUT, INTERRUPTED
from common.loaded import loaded_torch
from common.run import signals, streams

TIMEOUT_VARIABLE = "COURSE_RENDEZVOUS_TIMEOUT"
TIMEOUT = 180.0  # seconds: generous for processes that import torch side by side on a busy machine
NOTICE_AFTER = 5.0  # seconds of waiting before the process says what it waits for
LOOK_EVERY = 0.1  # seconds between two looks at the group while waiting
_joins_a_group = [False]  # set by parse_args: this stage joins a process group (stages 11-13)


def expect_group(joins: bool) -> None:
    """parse_args() says whether the stage it parses for joins a process group."""
    _joins_a_group[0] = joins


def _whole_number(name: str) -> int | None:
    text = os.environ.get(name)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a whole number") from None


def timeout() -> float:
    text = os.environ.get(TIMEOUT_VARIABLE)
    if text is None:
        return TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise ValueError(f"{TIMEOUT_VARIABLE}={text!r} is not a number of seconds")
    return seconds


def group_size() -> int:
    """WORLD_SIZE of a run started by torchrun (checked), 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ else 1


def check_environment() -> str | None:
    """What does not add up in the distributed environment, in one line, or None."""
    try:
        rank, size, local_rank = (_whole_number(n) for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        timeout()
    except ValueError as err:
        return str(err)
    if rank is None:
        return None  # plain python: a group of one process (stage 11 makes it)
    if size is None:
        return "RANK is set but WORLD_SIZE is not: set both (torchrun does), or neither for one process"
    if size < 1 or not 0 <= rank < size:
        return f"RANK={rank} with WORLD_SIZE={size}: the ranks are 0 to {size - 1}"
    if local_rank is not None and local_rank < 0:
        return f"LOCAL_RANK={local_rank} is below 0"
    if not os.environ.get("MASTER_ADDR"):
        return "MASTER_ADDR is not set: the address of the first process (torchrun sets it)"
    port_text = os.environ.get("MASTER_PORT", "")
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return f"MASTER_PORT={port_text!r} is not a port number (1 to 65535)"
    if rank == 0 and size > 1 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" and _in_use(int(port_text)):
        return (f"MASTER_PORT={port_text} is already in use on this machine (another run's group?): "
                "choose another port, or stop that program")
    return None


def _in_use(port: int) -> bool:
    """Whether the first process could not open its rendezvous at `port` (torchrun's own agent,
    which holds it on purpose, is left out by the caller)."""
    address = os.environ["MASTER_ADDR"]
    try:
        if socket.gethostbyname(address) not in ("127.0.0.1", socket.gethostbyname(socket.gethostname())):
            return False  # another machine's port: only that machine can tell
    except OSError:
        return False
    with socket.socket() as probe:
        try:
            probe.bind(("", port))
        except OSError:
            return True
    return False


# ---------------------------------------------------------------- the wait for the other processes
class Watch:
    """From start() until the group is formed (or stop()), a signal or the time limit ends the
    process at once: `ended(why, line, code)` records it and says the line first."""

    def __init__(self, stage: str, ended):
        self.stage, self.ended = stage, ended
        self.size, self.limit, self.where = 1, TIMEOUT, ""
        self._stop = threading.Event()
        self._thread = self._pipe = self._previous_fd = None

    @property
    def others(self) -> str:
        n = self.size - 1
        return f"the other {'process' if n == 1 else f'{n} processes'} of the group (WORLD_SIZE={self.size})"

    def start(self) -> None:
        if not _joins_a_group[0] or group_size() < 2 or threading.current_thread() is not threading.main_thread():
            return
        self.size, self.limit = group_size(), timeout()  # checked by parse_args
        self.where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        self._pipe = os.pipe()
        os.set_blocking(self._pipe[1], False)
        self._previous_fd = signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="rendezvous watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The group is formed (or the run ends): back to Python's own handling of signals."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        signal.set_wakeup_fd(self._previous_fd)
        for fd in self._pipe:
            os.close(fd)
        self._thread = None

    def _watch(self) -> None:
        start = time.monotonic()
        noticed = False
        while not self._stop.is_set() and not self._formed():
            readable, _, _ = select.select([self._pipe[0]], [], [], LOOK_EVERY)
            arrived = os.read(self._pipe[0], 64) if readable else b""
            sig = next((s for s in arrived if s in signals.SIGNALS), None) or signals.pending()
            waited = time.monotonic() - start
            if sig is not None:
                self.ended("interrupted while waiting for the other processes",
                           f"interrupted by {signals.name(sig)} while waiting for {self.others} at {self.where}; "
                           "nothing was trained", INTERRUPTED)
            if waited > self.limit:
                self.ended("gave up waiting for the other processes",
                           f"error: gave up after {self.limit:g} s waiting for {self.others} at {self.where}: "
                           f"are they started, with the same MASTER_ADDR and MASTER_PORT? ({TIMEOUT_VARIABLE}=SECONDS "
                           "waits longer)", BAD_INPUT)
            if waited > NOTICE_AFTER and not noticed:
                noticed = True
                streams.say(f"{self.stage}: waiting for {self.others} at {self.where} (up to {self.limit:g} s; "
                                "Ctrl-C stops)")

    @staticmethod
    def _formed() -> bool:
        torch = loaded_torch()
        dist = getattr(torch, "distributed", None) if torch is not None else None
        return dist is not None and dist.is_available() and dist.is_initialized()
