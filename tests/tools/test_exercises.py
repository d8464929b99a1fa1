"""Exercises: `make exercise` blanks the lesson of a stage, `make check` says what is right.

The checker is tested the way a learner meets it: the course's own stage passes it, a fresh
exercise is "not done yet" in every blank, a hint names everything its blank must do, and (in
test_exercise_diagnoses.py) each planted mistake is named by its likely cause, never as a
traceback. The checks run here in this process (check_here); make check runs the same checks in
a child process (test_check_sandbox.py)."""
from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path

import pytest
import torch

from common.errors import CourseError
from common.harness import stage_files
from common.tools import exercises
from common.tools.exercises import EXERCISES, check_here, load_file, report, stage_file, write_exercise
from common.tools.exercises.checks import CHECKS
from common.tools.exercises.generator import blocks, function_nodes, is_docstring, statements_of
from tests.helpers import copy_of_the_course, make, planted

STAGES = [pytest.param(n, id=f"stage{n}", marks=getattr(pytest.mark, f"stage{n}")) for n in EXERCISES]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> dict[int, Path]:
    """A fresh exercise of every stage."""
    work = tmp_path_factory.mktemp("work")
    return {n: write_exercise(n, work) for n in EXERCISES}


def line_of(output: str, name: str) -> str:
    return next(line for line in output.splitlines() if line.strip().startswith(name + " "))


# ---------------------------------------------------------------- the catalog and the generator
def test_every_stage_of_the_course_is_an_exercise():
    assert sorted(EXERCISES) == list(range(1, len(stage_files()) + 1))


@pytest.mark.parametrize("stage", STAGES)
def test_each_exercise_says_why_it_blanks_what_it_blanks(stage):
    exercise = EXERCISES[stage]
    assert exercise.blanks and len(exercise.why.split()) >= 10
    assert set(exercise.blanks) <= set(CHECKS), "every blank has a check of its own"
    assert set(exercise.lines) <= set(exercise.blanks)


def course_statements(stage: int, name: str) -> list[ast.stmt]:
    """What a blank takes out of the course's stage: a function's body, or lines of main()."""
    source = stage_file(stage).read_text()
    nodes = function_nodes(ast.parse(source))
    exercise = EXERCISES[stage]
    if name in exercise.lines:
        return statements_of(exercise.lines[name], nodes[exercise.lines[name].function], source)
    return [s for s in nodes[name].body if not is_docstring(s)]


@pytest.mark.parametrize("stage", [p for p in STAGES if p.values[0] > 1])
def test_an_exercise_blanks_only_what_the_diff_introduces_or_changes(stage):
    """The lesson of stage N is its diff from stage N-1: a function the diff leaves alone, or lines of
    main() that stage N-1 has too, are no exercise."""
    before = stage_file(stage - 1).read_text()
    previous = {name: ast.dump(ast.Module(body=[s for s in node.body if not is_docstring(s)], type_ignores=[]))
                for name, node in function_nodes(ast.parse(before)).items()}
    for name in EXERCISES[stage].blanks:
        statements = course_statements(stage, name)
        if name in EXERCISES[stage].lines:
            previous_main = ast.dump(function_nodes(ast.parse(before))["main"])
            assert all(ast.dump(s) not in previous_main for s in statements), f"{name}: stage {stage - 1} has it too"
        else:
            assert previous.get(name) != ast.dump(ast.Module(body=statements, type_ignores=[])), \
                f"{name} is the same in stage {stage - 1} and stage {stage}"


@pytest.mark.parametrize("stage", STAGES)
def test_an_exercise_is_its_stage_with_only_the_blanks_replaced(stage, fresh):
    """Signatures, docstrings and every other line stay; each blank becomes one raise."""
    source = stage_file(stage).read_text()
    original, exercise = ast.parse(source), ast.parse(fresh[stage].read_text())
    raises = {ast.literal_eval(node.exc.args[0]).split(" is yours")[0]: node for node in ast.walk(exercise)
              if isinstance(node, ast.Raise) and "is yours to write" in ast.unparse(node)}
    assert set(raises) == set(EXERCISES[stage].blanks)
    nodes = function_nodes(original)
    for name, exercise_raise in raises.items():  # the original, blanked as expected
        if name in EXERCISES[stage].lines:
            lines = EXERCISES[stage].lines[name]
            statements = statements_of(lines, nodes[lines.function], source)
            block = next(b for b in blocks(nodes[lines.function]) if statements[0] in b)
            start = block.index(statements[0])
            block[start:start + len(statements)] = [exercise_raise]
        else:
            node = nodes[name]
            node.body = [s for s in node.body if is_docstring(s)] + [exercise_raise]
    assert ast.dump(original) == ast.dump(exercise)


def comment_above(text: str, message: str) -> str:
    """The comment lines right above the raise whose message starts with `message`, as one line."""
    lines = text.splitlines()
    index = next(i for i, line in enumerate(lines) if f'NotImplementedError("{message}' in line)
    comment = []
    while lines[index - 1].strip().startswith("#"):
        index -= 1
        comment.insert(0, lines[index].strip().removeprefix("#").strip())
    return " ".join(comment)


@pytest.mark.parametrize("stage", STAGES)
def test_every_hint_is_the_catalogs_own_text_above_its_blank(stage, fresh):
    text = fresh[stage].read_text()
    for name, hint in EXERCISES[stage].blanks.items():
        assert comment_above(text, f"{name} is yours to write") == f"Yours to write. {' '.join(hint.split())}"


LOOP_OBJECTS = {"run", "optimizer", "loss", "model", "scaler", "sampler", "dist"}


def named_by_the_course(stage: int, name: str) -> set[str]:
    """What a blank's course statements call: the stage's own functions and what the function is
    given (criterion, model), methods of the loop's objects (run.log_step, optimizer.step, ...),
    and args.max_steps where they stop at it."""
    nodes = function_nodes(ast.parse(stage_file(stage).read_text()))
    function = nodes[EXERCISES[stage].function_of(name)]
    callable_names = set(nodes) | {a.arg for a in function.args.args} - {"self"}
    named = set()
    for statement in course_statements(stage, name):
        for node in ast.walk(statement):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in callable_names:
                named.add(node.func.id)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    isinstance(node.func.value, ast.Name) and node.func.value.id in LOOP_OBJECTS:
                named.add(node.func.attr)
            elif isinstance(node, ast.Attribute) and node.attr == "max_steps":
                named.add("max_steps")
    return named


@pytest.mark.parametrize("stage", STAGES)
def test_a_hint_names_everything_its_blank_must_do(stage):
    """Every call of the course's own lines that a blank takes out (the stage's functions, the
    loop's objects' methods) and the --max-steps return are named in its hint."""
    for name, hint in EXERCISES[stage].blanks.items():
        missing = sorted(word for word in named_by_the_course(stage, name) if word not in hint)
        assert not missing, f"stage {stage}'s hint for {name} leaves out {missing}"


def test_a_hint_says_what_its_check_tests():
    """Stage 1's cross_entropy: the gradient it returns and the largest logit, which its check tests."""
    hint = EXERCISES[1].blanks["cross_entropy"]
    assert "gradient" in hint and "largest logit" in hint and "thousands" in hint
    for stage, exercise in EXERCISES.items():
        for name, hint in exercise.blanks.items():
            assert "check" in hint, f"stage {stage}'s hint for {name} does not say what its check tests"


def test_an_existing_exercise_is_never_overwritten_unless_forced(tmp_path):
    path = write_exercise(3, tmp_path)
    path.write_text(path.read_text() + "# the learner's own line\n")
    with pytest.raises(CourseError, match="FORCE=1"):
        write_exercise(3, tmp_path)
    assert path.read_text().endswith("# the learner's own line\n")
    write_exercise(3, tmp_path, force=True)
    assert "the learner's own line" not in path.read_text()


def test_an_exercise_loads_by_its_path_and_runs_as_a_program_up_to_its_options(fresh, capsys):
    """Loaded by path under a name of its own (no `python -m`), the file is a module like the stage."""
    module = load_file(fresh[3])
    assert module.__name__ != load_file(fresh[3]).__name__
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0 and "Stage 3" in capsys.readouterr().out


# ---------------------------------------------------------------- the checker
@pytest.mark.parametrize("stage", STAGES)
def test_the_course_passes_its_own_check(stage):
    outcomes = check_here(stage, stage_file(stage).resolve())
    assert {name: o.status for name, o in outcomes.items()} == dict.fromkeys(exercises.plan(stage), "passed")
    assert report(stage, stage_file(stage), outcomes).splitlines()[-1].startswith("verdict: passed")


@pytest.mark.parametrize("stage", STAGES)
def test_a_fresh_exercise_is_not_done_yet_in_every_blank(stage, fresh):
    outcomes = check_here(stage, fresh[stage])
    out = report(stage, fresh[stage], outcomes)
    for name in EXERCISES[stage].blanks:
        assert line_of(out, name).split(None, len(name.split()))[-1] == "not done yet", out
    assert "not checked" in line_of(out, "all together") and "not checked" in line_of(out, "the whole program")
    assert f"({len(EXERCISES[stage].blanks)} not done yet)" in out.splitlines()[-1]
    assert not exercises.passed(outcomes, stage)


def test_a_wrong_line_outside_the_blanked_functions_is_caught_all_together(tmp_path):
    """Stage 2 blanks four functions; a mistake in relu_backward, which it does not blank, shows
    in the checks of the whole file."""
    path = planted(tmp_path, 2, "relu_backward", "return dout * (out > 0)", "return dout * (out >= 0)")
    outcomes = check_here(2, path)
    assert "wrong: one step: fc2.weight gradient differs by" in line_of(report(2, path, outcomes), "all together")


def test_a_wrong_line_of_main_is_caught_by_the_whole_program(tmp_path):
    """Stage 6 blanks only the loop; main()'s optimizer built with another momentum shows when main()
    runs beside the course's."""
    path = planted(tmp_path, 6, "main", "momentum=args.momentum)", "momentum=0.5)")
    out = report(6, path, check_here(6, path))
    assert line_of(out, "all together").split(None, 2)[2] == "passed"
    assert "wrong: your main() computes another loss from step 3 on" in line_of(out, "the whole program"), out


def test_what_the_stage_prints_while_it_is_checked_stays_out_of_the_report(tmp_path, capsys):
    path = planted(tmp_path, 6, "train_one_epoch", "        loss.backward()\n",
                   "        loss.backward()\n        print('a line of the stage')\n")
    outcomes = check_here(6, path)
    assert exercises.passed(outcomes, 6)
    assert "a line of the stage" not in capsys.readouterr().out + report(6, path, outcomes)


def test_a_file_that_does_not_load_is_one_line_with_its_line_number(tmp_path):
    path = planted(tmp_path, 6, "train_one_epoch", "        loss.backward()\n", "        loss.backward(\n")
    out = report(6, path, check_here(6, path))
    assert "wrong: it does not load: SyntaxError" in out and "line " in out and "Traceback" not in out


def test_a_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "stage06_optim.py"
    path.write_bytes(stage_file(6).read_bytes().replace(b"# the class with", "# la classe \u00e9".encode("latin-1")))
    assert "is not UTF-8 text (byte 0xe9" in report(6, path, check_here(6, path))
    assert exercises.main(["solution", "6", "--file", str(path)]) == 2
    err = capsys.readouterr().err
    assert "is not UTF-8 text" in err and len(err.splitlines()) == 1


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert exercises.main(["check", "3", "--file", str(tmp_path / "missing.py")]) == 2
    err = capsys.readouterr().err
    assert "missing.py does not exist: make exercise STAGE=3 writes it" in err and len(err.splitlines()) == 1
    for stage in (str(len(EXERCISES) + 1), "x", "0", "\u00b3", "\u0663"):  # ³ and ٣ pass str.isdigit()
        with pytest.raises(SystemExit) as exit_info:
            exercises.main(["check", stage])
        assert exit_info.value.code == 2
        assert len(capsys.readouterr().err.splitlines()) == 1


def test_checking_leaves_torch_as_it_found_it(fresh):
    threads = torch.get_num_threads()
    check_here(11, fresh[11])
    check_here(11, stage_file(11).resolve())
    assert torch.get_num_threads() == threads and torch.is_grad_enabled()
    assert not torch.distributed.is_initialized()


def test_a_pass_needs_every_check_of_the_plan():
    from common.tools.exercises.outcomes import Outcome

    every = {name: Outcome("passed") for name in exercises.plan(6)}
    assert exercises.passed(every, 6)
    assert not exercises.passed({name: o for name, o in every.items() if name != "the whole program"}, 6)
    assert not exercises.passed({}, 6)
    assert not exercises.report(6, stage_file(6), {}).splitlines()[-1].startswith("verdict: passed")


def test_the_solution_is_the_diff_from_the_learners_file_to_the_stage(fresh):
    diff = exercises.solution_diff(3, fresh[3])
    assert diff.startswith(f"--- {fresh[3]} (yours)\n+++ stages/stage03_autograd.py (the course's)\n")
    assert '-    raise NotImplementedError("zero_grad is yours to write' in diff
    assert "+        p.grad = None\n" in diff
    assert exercises.solution_diff(3, stage_file(3)).endswith("is the same as stages/stage03_autograd.py\n")


# ---------------------------------------------------------------- through make
def test_the_make_targets_write_refuse_check_and_show_the_solution(tmp_path):
    course = copy_of_the_course(tmp_path)
    done = make(course, "exercise", "STAGE=6")
    assert done.returncode == 0 and "wrote work/stage06_optim.py: fill in train_one_epoch" in done.stdout
    mine = course / "work" / "stage06_optim.py"
    mine.write_text(mine.read_text() + "# mine\n")
    refused = make(course, "exercise", "STAGE=6")
    assert refused.returncode != 0 and "FORCE=1 overwrites it" in refused.stderr
    assert mine.read_text().endswith("# mine\n")
    assert make(course, "exercise", "STAGE=6", "FORCE=1").returncode == 0
    assert "# mine" not in mine.read_text()
    checked = make(course, "check", "STAGE=6")
    assert checked.returncode != 0 and "train_one_epoch    not done yet" in checked.stdout
    assert "Traceback" not in checked.stdout + checked.stderr
    assert "+        optimizer.step()" in make(course, "solution", "STAGE=6").stdout
    shutil.copy(course / "stages" / "stage06_optim.py", mine)  # the learner's answer: the course's own
    passed = make(course, "check", "STAGE=6")
    assert passed.returncode == 0 and passed.stdout.splitlines()[-1].startswith("verdict: passed"), passed.stdout
    unsafe = make(course, "check", "STAGE=6; touch pwned")
    assert unsafe.returncode != 0 and not (course / "pwned").exists(), "STAGE never reaches a shell"
    assert os.listdir(course / "work") == ["stage06_optim.py"]


def only_blanked(stage: int, name: str, folder: Path) -> Path:
    """The course's stage with one blank alone left for the learner."""
    from common.tools.exercises.generator import blanked_lines

    source = stage_file(stage).read_text()
    lines = source.splitlines(keepends=True)
    which = list(EXERCISES[stage].blanks).index(name)
    first, last, new = blanked_lines(source, stage)[which]
    lines[first - 1:last] = new
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / stage_file(stage).name
    path.write_text("".join(lines))
    return path


@pytest.mark.stage11
def test_lines_of_main_not_done_yet_are_the_courses_while_the_others_are_checked(tmp_path):
    """Stage 11 with its DDP wrap written and its sampler's epoch not: the wrap is checked by running
    main() with the course's set_epoch line in place of the one not written."""
    path = only_blanked(11, "main: the sampler's epoch", tmp_path)
    out = report(11, path, check_here(11, path))
    assert line_of(out, "main: the DDP wrap").split(None, 4)[-1] == "passed", out
    assert line_of(out, "main: the sampler's epoch").endswith("not done yet"), out
