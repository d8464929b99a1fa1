"""How many CPU threads the stages' maths uses: --threads N, or auto (the default).

torch may split one operator over several threads, by default one per physical core: an
element-wise operator only above 32,768 elements (ATen's grain size; up to that, it runs on the
calling thread), a convolution or a matrix product as oneDNN or the BLAS decide. numpy's matrix
product (OpenBLAS) likewise uses one thread per CPU it sees. Beside other busy processes two
threads can be much slower than one (docs/running.md, Threads, has a measurement): when the
scheduler preempts one of them for a whole time slice, longer than an operator, the operator
cannot end, and the other thread waits for it (spinning, at first). Sharing a core alone would
cost no more than falling back to one thread's speed.

auto measures instead of guessing. From /proc/stat it knows how much CPU time all processes
used, and from the process's own clock how much of it was its own; the difference, over the
last few seconds, is how many cores other programs keep busy. It uses one thread per core
that is left, at least one and at most the library's own default, and looks again every few
seconds, so a run that starts on an idle machine steps back to one thread when another
program starts, and back up when it ends. Where /proc/stat cannot be read (not Linux), auto
keeps the libraries' defaults. The thread counts go back to what they were when the run ends.
"""
from __future__ import annotations

import os
import time

from threadpoolctl import ThreadpoolController

from common.loaded import loaded_torch

CHECK_EVERY = 2.0  # seconds between two looks at the machine
FIRST_LOOK = 0.2  # the shortest span worth measuring (/proc/stat counts in 1/100 s)
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds_of_all_processes() -> float | None:
    """CPU time spent by every process since boot on the CPUs this process may use (idle and
    iowait excluded), in seconds; None where /proc/stat cannot be read."""
    try:
        with open("/proc/stat") as f:
            return busy_seconds(f.read(), usable_cpus())
    except (OSError, ValueError):
        return None


def busy_seconds(stat: str, cpus: set[int] | None) -> float | None:
    """The busy time in /proc/stat's per-CPU lines, of `cpus` only when they are listed: in a
    container pinned to a few cores the host's other cores are no one's business here."""
    per_cpu = {}
    for line in stat.splitlines():
        name, *values = line.split() or [""]
        if name.startswith("cpu") and name[3:].isdigit():
            v = [int(x) for x in values]
            per_cpu[int(name[3:])] = sum(v[:8]) - v[3] - (v[4] if len(v) > 4 else 0)  # user .. steal, less idle, iowait
    if not per_cpu:
        return None
    mine = [per_cpu[c] for c in cpus or () if c in per_cpu] or list(per_cpu.values())
    return sum(mine) / _CLOCK_TICKS


def usable_cpus() -> set[int] | None:
    try:
        return os.sched_getaffinity(0)
    except AttributeError:
        return None


def usable_cores() -> int:
    cpus = usable_cpus()
    return len(cpus) if cpus is not None else os.cpu_count() or 1


def clocks() -> tuple[float, float]:
    """Wall time and this process's own CPU time (all its threads), in seconds."""
    return time.monotonic(), time.process_time()


class ThreadPolicy:
    """Apply --threads to torch (when the stage uses it) and to numpy's BLAS: a number once, or
    auto by measurement, again every CHECK_EVERY seconds. restore() undoes it."""

    def __init__(self, setting):
        self.torch = loaded_torch()
        self.setting = setting
        self._blas = ThreadpoolController().select(user_api="blas")
        self._original = (self.torch.get_num_threads() if self.torch is not None else None,
                          self._blas.info())
        blas_default = max((lib["num_threads"] for lib in self._blas.info()), default=1)
        self.most = self._original[0] if self.torch is not None else blas_default
        self.threads = self.most
        self.others_busy = None  # cores other programs kept busy, last we looked
        self._last = None
        if setting != "auto":
            self._use(int(setting))
        elif cpu_seconds_of_all_processes() is not None:
            self._last = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        wall, own = clocks()
        return wall, cpu_seconds_of_all_processes(), own

    def _use(self, threads: int) -> None:
        if self.torch is not None and threads != self.torch.get_num_threads():
            self.torch.set_num_threads(threads)
        self._blas.limit(limits=threads)
        self.threads = threads

    def check(self, at_once: bool = False) -> bool:
        """Look again if CHECK_EVERY seconds have passed (or at once, given a moment to measure);
        True when the thread count changed."""
        if self._last is None:
            return False
        now = clocks()[0]
        if now - self._last[0] < (FIRST_LOOK if at_once else CHECK_EVERY):
            return False
        sample = self._sample()
        wall = sample[0] - self._last[0]
        others = ((sample[1] - self._last[1]) - (sample[2] - self._last[2])) / wall
        self._last = sample
        self.others_busy = max(0.0, others)
        free = usable_cores() - self.others_busy
        threads = max(1, min(self.most, int(free + 0.5)))
        changed = threads != self.threads
        if changed:
            self._use(threads)
        return changed

    def restore(self) -> None:
        torch_threads, blas = self._original
        if self.torch is not None and torch_threads is not None:
            self.torch.set_num_threads(torch_threads)
        for lib in blas:
            ThreadpoolController().select(filepath=lib["filepath"]).limit(limits=lib["num_threads"])

    def describe(self) -> str:
        what = "torch's and numpy's" if self.torch is not None else "numpy's"
        if self.setting != "auto":
            return f"threads: {self.threads} for {what} maths (--threads {self.setting})"
        if self._last is None:
            return "threads: the libraries' defaults (auto: /proc/stat is not readable here)"
        if self.others_busy is None:
            return f"threads: up to {self.most} for {what} maths, one per core other programs leave free (auto)"
        return (f"threads: {self.threads} for {what} maths (auto: other programs keep {self.others_busy:.1f} "
                f"of {usable_cores()} cores busy)")
