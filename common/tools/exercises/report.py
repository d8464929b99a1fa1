"""Running every check of an exercise, the report and verdict, the solution, and the command line."""
from __future__ import annotations

import argparse
import difflib
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from common.cli import OneLineParser
from common.errors import BAD_INPUT, INTERRUPTED, CourseError, printable
from common.harness import stage_file, stage_files
from common.tools.exercises.catalog import EXERCISES, exercise_for, work_file
from common.tools.exercises.generator import shown, write_exercise

NOT_DONE = 1  # the exit code when a check finds something not done yet or wrong
WHOLE = ("all together", "the whole program")  # checked once every blank passes


def plan(stage: int) -> list[str]:
    """The names of the checks of a stage's exercise, in order: every blank, then the whole file."""
    return [*exercise_for(stage).blanks, *WHOLE]


# ---------------------------------------------------------------- the checks, in this process
def check_here(stage: int, path: Path, first: int = 0, on_start: Callable | None = None,
               on_done: Callable | None = None, timed: bool = False) -> dict:
    """Every blanked function alone (from the `first` on), then the whole file, in this process:
    {name: Outcome}. `timed`: before each check, run the course's own file through it and pass its
    seconds to on_start(name, seconds), so that the caller can bound the learner's time by it."""
    import torch

    from common.harness import load_stage
    from common.tools.exercises.checks import CHECKS, WHOLE as WHOLE_CHECKS
    from common.tools.exercises.framework import (Subject, exception_report, lines_not_done, load_file,
                                                  others_from_course, run_check)
    from common.tools.exercises.outcomes import Outcome

    names = plan(stage)
    course = load_stage(stage)
    shared: dict = {}  # the course's own program runs, made once
    own = Subject(course, course, stage, stage_file(stage).resolve(), cache=shared)
    if on_start is not None:
        on_start("your file", timed_load(stage) if timed else None)
    try:
        s = Subject(load_file(path), course, stage, path, cache=shared)
    except BaseException as err:  # noqa: BLE001 - a file that does not load is an outcome too
        outcome = load_outcome(err, path, exception_report, Outcome)
        if on_done is not None:
            on_done("your file", outcome)
        return {"your file": outcome}
    if on_done is not None:
        on_done("your file", None)  # loaded
    outcomes = {}
    with one_thread(torch), distributed_environment_cleared():
        missing = set(lines_not_done(s))
        if timed and names[first] in CHECKS:  # once, untimed: the first use of torch's kernels costs seconds
            timed_check(own, CHECKS[names[first]], names[first])
        for name in names[first:]:
            if name in WHOLE and (first > 0 or not all(o.status == "passed" for o in outcomes.values())):
                outcome = Outcome("not checked", "waits until every function above passes")
            elif name in missing:
                outcome = Outcome("not done yet")
            else:
                check = CHECKS.get(name) or WHOLE_CHECKS[name]
                if on_start is not None:
                    on_start(name, timed_check(own, check, name) if timed else None)
                with others_from_course(s, keep=None if name in WHOLE else name):
                    outcome = run_check(s, check, None if name in WHOLE else name)
            outcomes[name] = outcome
            if on_done is not None:
                on_done(name, outcome)
    return outcomes


def timed_load(stage: int) -> float:
    from common.tools.exercises.framework import load_file

    start = time.perf_counter()
    load_file(stage_file(stage).resolve())
    return time.perf_counter() - start


def timed_check(own, check, name: str) -> float:
    """Seconds the course's own code takes for this check."""
    from common.tools.exercises.framework import run_check

    start = time.perf_counter()
    run_check(own, check, None if name in WHOLE else name)
    return time.perf_counter() - start


def load_outcome(err: BaseException, path: Path, exception_report, Outcome):
    if isinstance(err, NotImplementedError):
        return Outcome("not done yet", exception_report(err, path))
    if isinstance(err, UnicodeDecodeError):
        return Outcome("wrong", f"it does not load: {shown(path)} is not UTF-8 text (byte {err.object[err.start]:#04x} "
                                f"at position {err.start}): save it as UTF-8")
    if isinstance(err, SyntaxError):
        return Outcome("wrong", f"it does not load: SyntaxError: {err.msg}\n"
                                f"at {shown(path)}, line {err.lineno}: {(err.text or '').strip()}")
    if isinstance(err, SystemExit):
        return Outcome("wrong", f"it does not load: your code called sys.exit({err.code!r}) as the file was loaded")
    if isinstance(err, KeyboardInterrupt):
        return Outcome("interrupted", "your code raised KeyboardInterrupt as the file was loaded")
    return Outcome("wrong", "it does not load: " + exception_report(err, path))


@contextmanager
def one_thread(torch):
    """torch on one thread while the checks run: on batches of a few images a second thread has
    little to share, and on a busy machine it mostly waits for a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextmanager
def distributed_environment_cleared():
    """No torchrun variables while the checks run: stage 11's programs make a group of one."""
    saved = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
             if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


# ---------------------------------------------------------------- the checks, guarded
def check(stage: int, path: Path | None = None) -> dict:
    """Every check of the learner's file, run in a child process with a time limit per check
    (common/tools/exercises/sandbox.py): {name: Outcome}, "all together" and "the whole program"
    last. A Ctrl-C ends it with Interrupted, which carries the outcomes so far."""
    from common.tools.exercises import sandbox

    exercise_for(stage)
    path = Path(path or work_file(stage)).resolve()
    if not path.exists():
        raise CourseError(f"{shown(path)} does not exist: make exercise STAGE={stage} writes it")
    return sandbox.run_checks(stage, path, plan(stage))


# ---------------------------------------------------------------- the report
def report(stage: int, path: Path, outcomes: dict, interrupted: bool = False) -> str:
    """One line per check (more for where an exception was raised and what it likely means), then the verdict."""
    against = "PyTorch" + (f" and stage {stage - 1}" if stage > 1 else "")
    width = max(map(len, outcomes), default=0) + 2
    lines = [f"checking {shown(path)} against {against}, in float64 then float32:"]
    for name, outcome in outcomes.items():
        joint = " " if outcome.detail.startswith("in ") else ": "  # "did not finish in 30 s (...)"
        text = outcome.status + (joint + outcome.detail if outcome.detail else "")
        first, *rest = text.split("\n")
        lines.append(f"  {name:<{width}}{first}")
        lines += [f"  {'':<{width}}{line}" for line in rest]
    if interrupted:
        lines.append(f"verdict: none: make check was interrupted after {sum(o.status != 'interrupted' for o in outcomes.values())} "
                     f"of {len(plan(stage))} checks; make check STAGE={stage} runs them all again")
    else:
        lines.append(verdict(stage, outcomes))
    return "\n".join(lines)


STATUSES = ("wrong", "did not finish", "interrupted", "not done yet", "not checked")


def passed(outcomes: dict, stage: int) -> bool:
    """Every check of the plan ran and passed: nothing less is a pass, whatever else happened."""
    return set(plan(stage)) <= set(outcomes) and all(o.status == "passed" for o in outcomes.values())


def verdict(stage: int, outcomes: dict) -> str:
    if passed(outcomes, stage):
        against = "PyTorch computes" if stage == 1 else f"PyTorch and stage {stage - 1} compute"
        return (f"verdict: passed. Your stage {stage} computes what {against}, in float64 and float32, and "
                "your main() trains as the course's does.")
    counts = {status: sum(o.status == status for o in outcomes.values()) for status in STATUSES[:-1]}
    summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n) or "not every check ran"
    first = "start with the first that is wrong" if counts["wrong"] or counts["did not finish"] or counts["interrupted"] else \
        "write what is not done yet"
    return (f"verdict: not yet ({summary}): {first}, then make check STAGE={stage} again. "
            f"(make solution STAGE={stage} shows the course's own answer.)")


# ---------------------------------------------------------------- the solution
def solution_diff(stage: int, path: Path | None = None) -> str:
    """The unified diff from the learner's file to the course's stage."""
    exercise_for(stage)
    path = Path(path or work_file(stage)).resolve()
    if not path.exists():
        raise CourseError(f"{shown(path)} does not exist: make exercise STAGE={stage} writes it")
    course = stage_file(stage)
    try:
        mine = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise CourseError(f"{shown(path)} is not UTF-8 text (byte {err.object[err.start]:#04x} at position "
                          f"{err.start}): save it as UTF-8") from None
    except OSError as err:
        raise CourseError(f"cannot read {shown(path)}: {err.strerror}") from None
    yours, theirs = mine.splitlines(keepends=True), course.read_text().splitlines(keepends=True)
    diff = difflib.unified_diff(yours, theirs, fromfile=f"{shown(path)} (yours)",
                                tofile=f"{shown(course)} (the course's)")
    text = "".join(line if line.endswith("\n") else line + "\n" for line in diff)
    return text or f"{shown(path)} is the same as {shown(course)}\n"


# ---------------------------------------------------------------- command line
def parse(argv) -> argparse.Namespace:
    """The command line; `make check STAGE=3` gives STAGE (and FORCE) through the environment,
    so that no text of the learner's is ever part of a shell command."""
    parser = OneLineParser(prog="python -m common.tools.exercises",
                           description="Exercises from the stages: write one, check it, see the solution.")
    parser.add_argument("command", choices=("exercise", "check", "solution"))
    parser.add_argument("stage", nargs="?", default=os.environ.get("STAGE", "").strip() or None,
                        help=f"the stage number, 1 to {len(stage_files())} (default: $STAGE)")
    parser.add_argument("--force", action="store_true",
                        default=os.environ.get("FORCE", "").strip() in ("1", "yes", "true"),
                        help="exercise: overwrite an existing file (default: $FORCE is 1, yes or true)")
    parser.add_argument("--file", type=Path, default=None, help="check or solution: this file instead of work/")
    args = parser.parse_args(argv)
    if args.stage is None:
        parser.error(f"which stage? make {args.command} STAGE=N, N from 1 to {len(EXERCISES)}")
    if not stage_number_ok(args.stage):
        parser.error(f"STAGE must be a number from 1 to {len(EXERCISES)}, got {args.stage!r}")
    args.stage = int(args.stage)
    return args


def stage_number_ok(text: str) -> bool:
    """A stage number as int() reads it (no superscripts, which str.isdigit() lets through)."""
    try:
        return int(text) in EXERCISES and text.strip().isascii()
    except ValueError:
        return False


@contextmanager
def signals_as_interrupts():
    """SIGTERM and SIGHUP end a check as Ctrl-C does: the child process is stopped, the report so far shown."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    saved = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "exercise":
            path = write_exercise(args.stage, force=args.force)
            names = ", ".join(exercise_for(args.stage).blanks)
            print(f"wrote {shown(path)}: fill in {names}; then make check STAGE={args.stage}")
            return 0
        if args.command == "solution":
            sys.stdout.write(solution_diff(args.stage, args.file))
            return 0
        from common.tools.exercises.sandbox import Interrupted

        path = Path(args.file or work_file(args.stage)).resolve()
        try:
            with signals_as_interrupts():
                outcomes = check(args.stage, path)
        except Interrupted as stopped:
            print(report(args.stage, path, stopped.outcomes, interrupted=True))
            print("make check: interrupted; the checks above are all that ran", file=sys.stderr)
            return INTERRUPTED
        print(report(args.stage, path, outcomes))
        return 0 if passed(outcomes, args.stage) else NOT_DONE
    except CourseError as err:
        print(f"error: {printable(str(err))}", file=sys.stderr)
        return BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
