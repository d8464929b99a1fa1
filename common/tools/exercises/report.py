"""Running every check of an exercise, the report and verdict, the solution, and the command line."""
from __future__ import annotations

import argparse
import difflib
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from common.cli import OneLineParser
from common.errors import BAD_INPUT, CourseError
from common.harness import load_stage, stage_file
from common.tools.exercises.catalog import EXERCISES, exercise_for, work_file
from common.tools.exercises.checks import CHECKS
from common.tools.exercises.checks.together import check_together
from common.tools.exercises.framework import (Outcome, Subject, exception_report, load_file, others_from_course,
                                              run_check)
from common.tools.exercises.generator import shown, write_exercise

NOT_DONE = 1  # the exit code when a check finds something not done yet or wrong



def check(stage: int, path: Path | None = None) -> dict[str, Outcome]:
    """Every blanked function alone, then the whole file: {name: Outcome}, "all together" last."""
    exercise_for(stage)
    path = Path(path or work_file(stage)).resolve()
    if not path.exists():
        raise CourseError(f"{shown(path)} does not exist: make exercise STAGE={stage} writes it")
    try:
        s = Subject(load_file(path), load_stage(stage), stage, path)
    except NotImplementedError as err:
        return {"your file": Outcome("not done yet", exception_report(err, path))}
    except SyntaxError as err:
        return {"your file": Outcome("wrong", f"it does not load: SyntaxError: {err.msg}\n"
                                              f"at {shown(path)}, line {err.lineno}: {(err.text or '').strip()}")}
    except Exception as err:
        return {"your file": Outcome("wrong", "it does not load: " + exception_report(err, path))}
    outcomes = {}
    with one_thread():
        for name in s.blanks:
            with others_from_course(s, keep=name):
                outcomes[name] = run_check(s, CHECKS[name], name)
        if all(o.status == "passed" for o in outcomes.values()):
            outcomes["all together"] = run_check(s, check_together, None)
        else:  # it would only repeat what is said above
            outcomes["all together"] = Outcome("not checked", "waits until every function above passes")
    return outcomes


@contextmanager
def one_thread():
    """torch on one thread while the checks run: on batches of a few images a second thread has
    little to share, and on a busy machine it mostly waits for a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def report(stage: int, path: Path, outcomes: dict[str, Outcome]) -> str:
    """One line per function (a second for where an exception was raised), then the verdict."""
    against = "PyTorch" + (f" and stage {stage - 1}" if stage > 1 else "")
    width = max(map(len, outcomes)) + 2
    lines = [f"checking {shown(path)} against {against}, in float64 then float32:"]
    for name, outcome in outcomes.items():
        text = outcome.status + (f": {outcome.detail}" if outcome.detail else "")
        first, *rest = text.split("\n")
        lines.append(f"  {name:<{width}}{first}")
        lines += [f"  {'':<{width}}{line}" for line in rest]
    lines.append(verdict(stage, outcomes))
    return "\n".join(lines)


def verdict(stage: int, outcomes: dict[str, Outcome]) -> str:
    if all(o.status == "passed" for o in outcomes.values()):
        against = "PyTorch computes" if stage == 1 else f"PyTorch and stage {stage - 1} compute"
        return f"verdict: passed. Your stage {stage} computes what {against}, in float64 and float32."
    counts = {status: sum(o.status == status for o in outcomes.values()) for status in ("wrong", "not done yet")}
    summary = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    first = "start with the first that is wrong" if counts["wrong"] else "write what is not done yet"
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
    yours, theirs = (p.read_text().splitlines(keepends=True) for p in (path, course))
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
                        help="the stage number, 1 to 11 (default: $STAGE)")
    parser.add_argument("--force", action="store_true",
                        default=os.environ.get("FORCE", "").strip() in ("1", "yes", "true"),
                        help="exercise: overwrite an existing file (default: $FORCE is 1, yes or true)")
    parser.add_argument("--file", type=Path, default=None, help="check or solution: this file instead of work/")
    args = parser.parse_args(argv)
    if args.stage is None:
        parser.error(f"which stage? make {args.command} STAGE=N, N from 1 to {len(EXERCISES)}")
    if not args.stage.isdigit() or int(args.stage) not in EXERCISES:
        parser.error(f"STAGE must be a number from 1 to {len(EXERCISES)}, got {args.stage!r}")
    args.stage = int(args.stage)
    return args


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
        path = Path(args.file or work_file(args.stage)).resolve()
        outcomes = check(args.stage, path)
        print(report(args.stage, path, outcomes))
        return 0 if all(o.status == "passed" for o in outcomes.values()) else NOT_DONE
    except CourseError as err:
        print(f"error: {err}", file=sys.stderr)
        return BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
