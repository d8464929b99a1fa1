"""Exercises: a stage with its lesson taken out, and a checker that says what is right, and why not.

    make exercise STAGE=3   # writes work/stage03_autograd.py: stage 3, its lesson's function bodies blanked
    make check STAGE=3      # checks your file, function by function, then as a whole
    make solution STAGE=3   # the diff from your file to the course's stage 3

`EXERCISES` (catalog.py, read from each lesson page's "Do it yourself") says, per stage, which
functions an exercise blanks (and, in stages 10-13, which lines of main()), why those, and the hint
over each: what the blank must do and what its check looks at. A blanked body becomes `raise NotImplementedError` under its
hint; the signature and the function's own docstring stay.

The checker runs your code in a child process (sandbox.py), each check within a time limit
scaled from the course's own time for it, and checks, in float64 and then in float32:
- each blank alone, by what it does (checks/): a backward helper against autograd of its forward;
  a training loop watched step by step (watch.py: the order of zero_grad, backward and the
  update, whether every .grad was cleared before each backward, the mode at every forward, what
  the loss was given), then its numbers against torch.optim.SGD; a batch's .to(device) on a
  watched host device, where a copy never assigned shows; the shuffle against PyTorch's, ... While
  one blank is checked, the others are the course's own, so that an unfinished one hides nothing;
- then, once every blank passes, the whole file: through `common.harness.driver` (one step against
  the independent PyTorch reference, five momentum steps, the same against stage N-1) and your
  main() for 30 steps beside the course's from the same seed, their records compared (losses,
  the data order, the accuracy of each epoch, the final parameters).

Each check is "passed", "not done yet", "wrong" (the likely cause in words, then the first number
that differs, its tolerance and the input, and the entry of `make mistakes` that shows that
mistake), "did not finish" or "interrupted". What your code prints is not shown.

Exit codes: 0 every check ran and passed, 1 something is not done yet or wrong, 2 bad input (no
such stage, no such file, an exercise file that exists and FORCE=1 was not given), 130
interrupted. make passes STAGE and FORCE to this module in the environment.
"""
from common.harness import stage_file
from common.tools.exercises.catalog import EXERCISES, WORK_DIR, Exercise, Lines, exercise_for, work_file
from common.tools.exercises.generator import blank_functions, function_nodes, write_exercise
from common.tools.exercises.outcomes import Outcome
from common.tools.exercises.report import (NOT_DONE, check, check_here, main, passed, plan, report, solution_diff,
                                           verdict)


def __getattr__(name: str):
    """What needs torch (the checks' framework) loads on first use: make check's own process never
    does, the learner's code runs in a child process that does."""
    if name in ("Mismatch", "load_file"):
        from common.tools.exercises import framework

        return getattr(framework, name)
    raise AttributeError(name)

__all__ = ["EXERCISES", "Exercise", "Lines", "Mismatch", "NOT_DONE", "Outcome", "WORK_DIR", "blank_functions",
           "check", "check_here", "exercise_for", "function_nodes", "load_file", "main", "passed", "plan", "report",
           "solution_diff", "stage_file", "verdict", "work_file", "write_exercise"]
