"""What the Makefile's targets run, with the learner's text kept away from any shell.

make puts the variables of its command line (`make diff FROM=2 TO=3`, `make run ARGS='--lr 0.01'`)
into the environment of its recipes; every recipe is a fixed command, `python -m common.tools.make
TARGET`, and this module reads the variables from the environment and splits ARGS the way a
shell would (shlex), without running one. So `make diff FROM='2; rm -rf ~'` is a bad stage
number, never a command.
"""
from __future__ import annotations

import os
import shlex
import sys

from common.errors import BAD_INPUT
from common.tools.program import run_program


def args_from_env() -> list[str]:
    try:
        return shlex.split(os.environ.get("ARGS", ""))
    except ValueError as err:  # an unclosed quote
        fail(f"ARGS: {err}")


def number(variable: str, what: str, example: str, default: str = "") -> int:
    """A make variable as a whole number, by the rule int() uses: "3", " 3", "٣" (another script's
    digit) are 3; "²" or "3.0" are refused here in one line, not by a traceback later."""
    text = os.environ.get(variable, default).strip()
    try:
        return int(text)
    except ValueError:
        fail(f"{variable}={text!r} is not {what} (try {example})")


def stage_number(variable: str, example: str) -> int:
    return number(variable, "a stage number", example)


def fail(message: str) -> None:
    print(f"make: {message}", file=sys.stderr)
    raise SystemExit(BAD_INPUT)


def stage_file(n: int, variable: str):
    from common.harness import stage_file, stage_files

    found = stage_file(n)
    if found is None:
        fail(f"no stage {variable}={n} (the stages are 1 to {len(stage_files())})")
    return found


def run() -> None:
    from common.tools import course

    stage = os.environ.get("STAGE", "").strip()
    argv = (["--stages", str(stage_number("STAGE", "STAGE=3"))] if stage else []) + ["--epochs", "1"]
    course.main(argv + args_from_env())


def smoke() -> None:
    from common.tools import course

    course.main(["--epochs", "1", "--max-steps", "20", "--data", "synthetic"] + args_from_env())


def diff() -> None:
    """The later stage's docstring, then the diff of the code below the docstrings; ARGS=--full:
    the plain diff of the two files (common/tools/stage_diff.py)."""
    from common.tools import stage_diff

    old = stage_file(stage_number("FROM", "FROM=2 TO=3"), "FROM")
    new = stage_file(stage_number("TO", "FROM=2 TO=3"), "TO")
    args = args_from_env()
    if args not in ([], ["--full"]):
        fail(f"ARGS={shlex.join(args)!r}: make diff takes ARGS=--full (the whole files, docstrings included) or nothing")
    stage_diff.say(stage_diff.lesson(old, new, full=args == ["--full"]))


def ddp() -> None:
    from common.tools import torchrun

    nproc = number("NPROC", "a number of processes", "NPROC=2", default="2")
    if nproc < 1:
        fail(f"NPROC={nproc} is not a number of processes (try NPROC=2)")
    # --standalone: torchrun picks a free port itself, so another run's port is never in the way
    return torchrun.main(["--standalone", "--nproc-per-node", str(nproc), "-m", "stages.stage11_distributed"]
                         + args_from_env())


def module(name: str, fixed: list[str] = (), stage: bool = False):
    """A target that runs `python -m name` with fixed arguments and then ARGS; stage: it reads
    STAGE, checked (and written as plain digits) here."""
    def target() -> None:
        import runpy

        if stage and os.environ.get("STAGE", "").strip():
            os.environ["STAGE"] = str(stage_number("STAGE", "STAGE=3"))
        sys.argv = [name, *fixed, *args_from_env()]
        runpy.run_module(name, run_name="__main__", alter_sys=True)
    return target


def pytest_target(fixed: list[str] = ()):
    def target() -> None:
        import pytest

        raise SystemExit(pytest.main([*fixed, *args_from_env()]))
    return target


# The suite is one CPU-bound process (its runs take --threads 1), so a second core runs a second
# worker (pytest-xdist); --dist loadfile keeps each file's tests on one worker, so what a module's
# tests share is made once. The quick tests share little: each goes to the worker that is free
# (--dist load), which halves their time. ARGS='-n 0' runs them in this one process.
TWO_CORES = (os.cpu_count() or 1) >= 2
WORKERS = ["-n", "2", "--dist", "loadfile"] if TWO_CORES else []

# The equivalence proofs, the claims and the rule of the rooms, by folder of tests/, without the
# tests marked slow or fuzz: a check in a minute rather than the full suite's minutes.
QUICK_FOLDERS = ["equivalence", "claims", "layout"]
QUICK = ["-m", "not slow and not fuzz", *(f"tests/{name}" for name in QUICK_FOLDERS)]
QUICK_WORKERS = ["-n", "2", "--dist", "load"] if TWO_CORES else []
TARGETS = {
    "run": run, "smoke": smoke, "diff": diff, "ddp": ddp,
    "test": pytest_target(WORKERS), "test-quick": pytest_target([*QUICK_WORKERS, *QUICK]),
    "gradcheck": module("common.tools.gradcheck"), "bench": module("benchmarks.bench"),
    "compare": module("common.tools.compare"), "site": module("common.tools.site"),
    "batch-experiment": module("common.tools.batch_experiment"),
    "exercise": module("common.tools.exercises", ["exercise"], stage=True),
    "check": module("common.tools.exercises", ["check"], stage=True),
    "solution": module("common.tools.exercises", ["solution"], stage=True), "notebooks": module("common.tools.notebooks"),
    "mistakes": module("common.tools.mistakes"),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in TARGETS:
        fail(f"usage: python -m common.tools.make TARGET, TARGET one of {', '.join(TARGETS)}")
    return TARGETS[argv[0]]()


if __name__ == "__main__":
    run_program(main, name="make")  # one line and an exit code for every ending (common/tools/program.py)
