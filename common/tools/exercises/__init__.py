"""Exercises: a stage with its lesson taken out, and a checker that says what is right.

    make exercise STAGE=3   # writes work/stage03_autograd.py: stage 3, its lesson's function bodies blanked
    make check STAGE=3      # checks your file, function by function, then as a whole
    make solution STAGE=3   # the diff from your file to the course's stage 3

`EXERCISES` is the one place that says, per stage, which functions an exercise blanks and why
those: the functions whose bodies carry the lesson of the diff from the stage before. A blanked
body becomes `raise NotImplementedError` under a hint, the sentence of the stage's docstring
that holds the words EXERCISES names; the signature and the function's own docstring stay.

The checker loads your file by its path and checks, in float64 and then in float32:
- each blanked function alone, against PyTorch (a backward helper against autograd of its
  forward, `cross_entropy` against `F.cross_entropy`, an update against `torch.optim.SGD`, a
  loop against the steps of `optim.SGD`, ...). While one function is checked, the other blanked
  functions are the course's own, so that an unfinished one does not hide a finished one;
- then, once every one of them passes, all of your file together, through
  `common.harness.driver`: one step (logits, loss, every gradient) against the tests'
  independent PyTorch reference, five momentum steps against `optim.SGD`, the same against the
  course's stage N-1, and your stage's own `train_one_epoch`.

Each function is "passed", "not done yet" (it raises NotImplementedError) or "wrong", with the
first output that differs, by how much, at what tolerance and on what input, or the exception
your code raised and the line of your file it came from. What your code prints is not shown;
`python -m work.stage03_autograd --max-steps 5` runs your file as a program.

Exit codes: 0 every check passed, 1 something is not done yet or wrong, 2 bad input (no such
stage, no such file, an exercise file that exists and FORCE=1 was not given). make passes
STAGE and FORCE to this module in the environment.
"""
from common.tools.exercises.catalog import EXERCISES, WORK_DIR, Exercise, exercise_for, work_file
from common.tools.exercises.checks import CHECKS
from common.tools.exercises.framework import Mismatch, Outcome, load_file
from common.harness import stage_file
from common.tools.exercises.generator import (blank_functions, docstring_sentences, function_nodes, hint_sentence,
                                              write_exercise)
from common.tools.exercises.report import NOT_DONE, check, main, report, solution_diff, verdict

__all__ = ["CHECKS", "EXERCISES", "Exercise", "Mismatch", "NOT_DONE", "Outcome", "WORK_DIR", "blank_functions",
           "check", "docstring_sentences", "exercise_for", "function_nodes", "hint_sentence", "load_file", "main",
           "report", "solution_diff", "stage_file", "verdict", "work_file", "write_exercise"]
