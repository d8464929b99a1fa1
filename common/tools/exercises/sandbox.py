"""make check runs the learner's code in a child process, never in its own.

The child (python -m common.tools.exercises.sandbox STAGE FILE FD FIRST) loads the file and runs
the checks one by one; before each, it runs the course's own file through the same check and
tells the parent, over the pipe FD, the check it starts and the course's time for it. The parent
gives each check LIMIT_FACTOR times that time, and at least LIMIT_FLOOR seconds; a check that
takes longer "did not finish in N s" and the child is stopped (a fresh child then runs the checks
after it). So whatever the learner's code does, every check ends in one line:
- a loop that never ends: "did not finish in N s";
- sys.exit(...) or raise SystemExit: "your code called sys.exit(...)", a wrong answer, never an
  exit status the parent would take for a verdict (the verdict is the checks' outcomes alone);
- os._exit(n): "your code called os._exit(n)";
- KeyboardInterrupt raised by the code: "interrupted" (a Ctrl-C at the terminal reaches the parent
  alone, which stops the child and shows what had been checked);
- a write into the course's own files (anywhere in the course's folder but work/, the learner's,
  and runs/, the records): refused in the child by an audit hook, and in case anything got past
  it, the parent puts back every file of stages/ and common/ as it was before the check, and says so.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.harness import ROOT

LIMIT_FACTOR, LIMIT_FLOOR = 20, 30.0  # a check may take 20 times the course's own time for it, and 30 s at least
COURSE_LIMIT = 900.0  # the child's own work (importing torch, running the course's checks): a safety net only
WRITABLE = ("work", "runs")  # the learner's folder and the records: a check's code may write there, nowhere else in ROOT
RESTORED = ("stages", "common")  # the folders whose files the parent puts back after a check


class Interrupted(Exception):
    """make check stopped by Ctrl-C (or SIGTERM, SIGHUP): the outcomes of the checks that ran."""

    def __init__(self, outcomes: dict):
        super().__init__("interrupted")
        self.outcomes = outcomes


# ---------------------------------------------------------------- the parent
def run_checks(stage: int, path: Path, names: list[str]) -> dict:
    """Every check of `names`, in child processes, each within its time limit: {name: Outcome}."""
    from common.tools.exercises.outcomes import Outcome

    outcomes: dict = {}
    snapshot = snapshot_of(RESTORED)
    child = None
    try:
        first = 0
        while True:
            child = Child(stage, path, first)
            ended = child.follow(outcomes)
            if ended is None:  # every check reported
                break
            name, outcome = ended
            outcomes[name] = outcome
            if name == "your file" or name not in names or names.index(name) + 1 >= len(names):
                break
            first = names.index(name) + 1
        for name in names:
            if name not in outcomes and "your file" not in outcomes:
                outcomes[name] = Outcome("not checked", "the checks before it did not finish")
    except KeyboardInterrupt:
        if child is not None:
            child.stop()
        if child is not None and child.current is not None:
            outcomes[child.current] = Outcome("interrupted", "make check was interrupted while this check ran")
        raise Interrupted(with_restored(outcomes, snapshot)) from None
    finally:
        if child is not None:
            child.stop()
    return with_restored(outcomes, snapshot)


def with_restored(outcomes: dict, snapshot: dict) -> dict:
    from common.tools.exercises.outcomes import Outcome

    changed = restore(snapshot, RESTORED)
    if changed:
        outcomes["the course's files"] = Outcome(
            "wrong", f"your code changed {', '.join(changed[:3])}{' ...' if len(changed) > 3 else ''}: "
                     "make check put back the course's own files as they were")
    return outcomes


class Child:
    """One child process running the checks from the `first` on, and the pipe it reports on."""

    def __init__(self, stage: int, path: Path, first: int):
        read, write = os.pipe()
        self.read = read
        self.log = tempfile.TemporaryFile()
        self.folder = tempfile.TemporaryDirectory(prefix="make-check-")
        environment = {k: v for k, v in os.environ.items()
                       if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
        search = [str(ROOT)] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
        environment.update(PYTHONPATH=os.pathsep.join(search), PYTHONDONTWRITEBYTECODE="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "common.tools.exercises.sandbox", str(stage), str(path), str(write), str(first)],
            cwd=self.folder.name, env=environment, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
            pass_fds=(write,), start_new_session=True)  # its own session: the terminal's Ctrl-C reaches the parent
        os.close(write)
        self.current: str | None = None
        self.limit = COURSE_LIMIT
        self.course_seconds: float | None = None
        self.exit_call: tuple[str, object] | None = None

    def follow(self, outcomes: dict):
        """Read the child's reports until it has reported every check (None), or until it dies or
        runs out of time during one: (that check's name, its outcome)."""
        from common.tools.exercises.outcomes import Outcome

        buffer = b""
        deadline = time.monotonic() + self.limit
        while True:
            ready, _, _ = select.select([self.read], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                self.stop()
                return self.current or "your file", Outcome("did not finish", self.too_long())
            data = os.read(self.read, 65536)
            if not data:
                return self.ended()
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                message = json.loads(line)
                if "start" in message:
                    self.current, self.course_seconds = message["start"], message["seconds"]
                    self.limit = limit_for(self.course_seconds)
                    deadline = time.monotonic() + self.limit
                elif "done" in message:
                    outcomes[message["done"]] = Outcome(message["status"], message["detail"])
                    self.current, self.limit = None, COURSE_LIMIT
                    deadline = time.monotonic() + self.limit
                elif "loaded" in message:
                    self.current, self.limit = None, COURSE_LIMIT
                    deadline = time.monotonic() + self.limit
                elif "exit" in message:
                    self.exit_call = message["exit"], message["code"]
                elif "end" in message:
                    return None

    def too_long(self) -> str:
        if self.course_seconds is None:
            return f"in {self.limit:.0f} s"
        return (f"in {self.limit:.0f} s (the course's own code takes {self.course_seconds:.1f} s "
                f"for this check; the limit is {LIMIT_FACTOR} times that, and {LIMIT_FLOOR:.0f} s at least): "
                "an endless loop, or a wait that never ends?")

    def ended(self):
        """The child ended before reporting every check."""
        from common.tools.exercises.outcomes import Outcome

        code = self.process.wait()
        name = self.current or "your file"
        if self.exit_call is not None:
            return name, Outcome("wrong", f"your code called os._exit({self.exit_call[1]!r}), which ends the "
                                          "process at once, in the middle of the check: return instead")
        if code < 0:
            return name, Outcome("wrong", f"the check's process was killed by {signal.Signals(-code).name} "
                                          "while your code ran")
        return name, Outcome("wrong", f"the check's process ended (exit code {code}) while your code ran, "
                                      f"without a verdict{self.last_words()}")

    def last_words(self) -> str:
        self.log.seek(0)
        lines = [line for line in self.log.read().decode(errors="replace").splitlines() if line.strip()]
        return f": {lines[-1].strip()[:200]}" if lines else ""

    def stop(self) -> None:
        """The child and everything it started, stopped."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        for closing in (lambda: os.close(self.read), self.log.close, self.folder.cleanup):
            try:
                closing()
            except OSError:
                pass


def limit_for(course_seconds: float | None) -> float:
    return COURSE_LIMIT if course_seconds is None else max(LIMIT_FLOOR, LIMIT_FACTOR * course_seconds)


def snapshot_of(folders) -> dict[str, bytes]:
    """Every file of the course's folders (bytecode aside), by its path from the course's root."""
    files = {}
    for folder in folders:
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                files[str(path.relative_to(ROOT))] = path.read_bytes()
    return files


def restore(snapshot: dict[str, bytes], folders) -> list[str]:
    """Put every file back as the snapshot has it, remove the new ones: the paths that changed."""
    now = snapshot_of(folders)
    changed = sorted(name for name in set(now) | set(snapshot) if now.get(name) != snapshot.get(name))
    for name in changed:
        path = ROOT / name
        if name in snapshot:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(snapshot[name])
        else:
            path.unlink(missing_ok=True)
    return changed


# ---------------------------------------------------------------- the child
def child_main(stage: int, path: Path, fd: int, first: int) -> None:
    from common.tools.exercises import framework
    from common.tools.exercises.report import check_here

    channel = os.fdopen(fd, "w", buffering=1)
    really_exit = os._exit

    def send(**message) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    def exit_now(code=0):  # os._exit, as the learner's code calls it: say so, then do it
        send(exit="os._exit", code=code)
        really_exit(code)

    sys.addaudithook(guard_writes(framework.REFUSED_WRITES))
    os._exit = exit_now
    check_here(stage, path, first, timed=True,
               on_start=lambda name, seconds: send(start=name, seconds=seconds),
               on_done=lambda name, outcome: send(loaded=True) if outcome is None else
               send(done=name, status=outcome.status, detail=outcome.detail))
    send(end=True)
    channel.close()
    really_exit(0)  # at once: a thread the learner's code left running must not keep the check waiting


WRITING_EVENTS = {"os.remove": (0,), "os.rmdir": (0,), "os.rename": (0, 1), "os.truncate": (0,), "os.chmod": (0,),
                  "os.chown": (0,), "os.link": (1,), "os.symlink": (1,), "os.mkdir": (0,), "os.utime": (0,),
                  "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.copytree": (1,), "shutil.move": (0, 1)}


def guard_writes(refused: list[str]):
    """An audit hook that refuses, with PermissionError, any write into the course's own files."""
    root = os.path.realpath(ROOT)
    writable = tuple(os.path.join(root, folder) + os.sep for folder in WRITABLE)

    def inside(target) -> str | None:
        """The course's file that `target` names, relative to its root; None for any other path."""
        if isinstance(target, int) or target is None:
            return None
        try:
            real = os.path.realpath(os.fsdecode(target))
        except (TypeError, ValueError):
            return None
        if not (real + os.sep).startswith(root + os.sep) or (real + os.sep).startswith(writable):
            return None
        return os.path.relpath(real, root)

    def hook(event: str, args) -> None:
        if event == "open":
            target, mode, flags = (tuple(args) + (None, None))[:3]
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else \
                isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC))
            where = inside(target) if writes else None
        elif event in WRITING_EVENTS:
            where = next((inside(args[i]) for i in WRITING_EVENTS[event] if i < len(args) and inside(args[i])), None)
        else:
            return
        if where is not None:
            refused.append(where)
            raise PermissionError(f"make check does not let your code write {where}")

    return hook


if __name__ == "__main__":
    child_main(int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
