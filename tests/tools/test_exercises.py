"""Exercises: `make exercise` blanks the lesson of a stage, `make check` says what is right.

The checker is tested the way a learner meets it: the course's own stage passes it, a fresh
exercise is "not done yet" in every blanked function, and each planted mistake is named, with
what differs and where, never as a traceback."""
from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path

import pytest
import torch
from tests.helpers import copy_of_the_course, make

from common.tools import exercises
from common.errors import CourseError
from common.tools.exercises import EXERCISES, check, hint_sentence, load_file, report, stage_file, write_exercise

STAGES = [pytest.param(n, id=f"stage{n}", marks=getattr(pytest.mark, f"stage{n}")) for n in EXERCISES]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> dict[int, Path]:
    """A fresh exercise of every stage."""
    work = tmp_path_factory.mktemp("work")
    return {n: write_exercise(n, work) for n in EXERCISES}


def planted(tmp_path: Path, stage: int, function: str, old: str, new: str, times: int = 1) -> Path:
    """The course's own stage with one mistake planted in `function`: there `old`, found `times`
    times, becomes `new`."""
    source = stage_file(stage).read_text()
    node = exercises.function_nodes(ast.parse(source))[function]
    lines = source.splitlines(keepends=True)
    start, end = node.lineno - 1, node.end_lineno
    before, body, after = "".join(lines[:start]), "".join(lines[start:end]), "".join(lines[end:])
    assert body.count(old) == times, f"the plant must find {old!r} {times} time(s) in stage {stage}'s {function}"
    path = tmp_path / stage_file(stage).name
    path.write_text(before + body.replace(old, new) + after)
    return path


def line_of(output: str, name: str) -> str:
    return next(line for line in output.splitlines() if line.strip().startswith(name + " "))


# ---------------------------------------------------------------- the data and the generator
@pytest.mark.parametrize("stage", STAGES)
def test_each_exercise_says_why_it_blanks_what_it_blanks(stage):
    exercise = EXERCISES[stage]
    assert exercise.blanks and len(exercise.why.split()) >= 10
    assert set(exercise.blanks) <= set(exercises.CHECKS), "every blanked function has a check of its own"


@pytest.mark.parametrize("stage", [p for p in STAGES if p.values[0] > 1])
def test_an_exercise_blanks_only_functions_the_diff_introduces_or_changes(stage):
    """The lesson of stage N is its diff from stage N-1: a function the diff leaves alone is no exercise."""
    def bodies(n):
        nodes = exercises.function_nodes(ast.parse(stage_file(n).read_text()))
        return {name: ast.dump(ast.Module(body=[s for s in node.body if not is_docstring(s)], type_ignores=[]))
                for name, node in nodes.items()}

    before, after = bodies(stage - 1), bodies(stage)
    for name in EXERCISES[stage].blanks:
        assert before.get(name) != after[name], f"{name} is the same in stage {stage - 1} and stage {stage}"


def is_docstring(statement) -> bool:
    return isinstance(statement, ast.Expr) and isinstance(getattr(statement, "value", None), ast.Constant) \
        and isinstance(statement.value.value, str)


@pytest.mark.parametrize("stage", STAGES)
def test_an_exercise_is_its_stage_with_only_the_blanked_bodies_replaced(stage, fresh):
    """Signatures, docstrings and every other line stay; each blanked body is one raise."""
    original, exercise = (ast.parse(p.read_text()) for p in (stage_file(stage), fresh[stage]))
    original_nodes, exercise_nodes = exercises.function_nodes(original), exercises.function_nodes(exercise)
    for name in EXERCISES[stage].blanks:
        body = [s for s in exercise_nodes[name].body if not is_docstring(s)]
        assert len(body) == 1 and isinstance(body[0], ast.Raise), name
        assert ast.unparse(body[0].exc).startswith("NotImplementedError(")
        node = original_nodes[name]
        node.body = [s for s in node.body if is_docstring(s)] + body  # the original, blanked as expected
    assert ast.dump(original) == ast.dump(exercise)


@pytest.mark.parametrize("stage", STAGES)
def test_every_hint_is_a_sentence_of_the_stage_docstring_quoted_in_the_exercise(stage, fresh):
    doc = ast.get_docstring(ast.parse(stage_file(stage).read_text()))
    comments = " ".join(line.strip().removeprefix("#").strip() for line in fresh[stage].read_text().splitlines()
                        if line.strip().startswith("#"))
    for name, words in EXERCISES[stage].blanks.items():
        sentence = hint_sentence(doc, words)
        assert sentence is not None, f"stage {stage}'s docstring no longer says {words!r} (the hint of {name})"
        assert " ".join(sentence.split()) in comments


def test_a_sentence_ends_at_its_full_stop_not_at_an_abbreviation():
    sentences = exercises.docstring_sentences("Intro:\n- One, e.g. `x`. Two\n  goes on.\n- Three (`y`). four.")
    assert sentences == ["Intro:", "One, e.g. `x`.", "Two goes on.", "Three (`y`).", "four."]


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
    outcomes = check(stage, stage_file(stage))
    assert {name: o.status for name, o in outcomes.items()} == dict.fromkeys([*EXERCISES[stage].blanks,
                                                                              "all together"], "passed")
    assert report(stage, stage_file(stage), outcomes).splitlines()[-1].startswith("verdict: passed")


@pytest.mark.parametrize("stage", STAGES)
def test_a_fresh_exercise_is_not_done_yet_in_every_blanked_function(stage, fresh, capsys):
    code = exercises.main(["check", str(stage), "--file", str(fresh[stage])])
    out = capsys.readouterr().out
    assert code == exercises.NOT_DONE
    for name in EXERCISES[stage].blanks:
        assert line_of(out, name).split(None, 1)[1] == "not done yet", out
    assert "not checked" in line_of(out, "all together")
    assert f"({len(EXERCISES[stage].blanks)} not done yet)" in out.splitlines()[-1]


# a mistake a learner makes: (stage, text to replace (or (text, how many times)), its replacement,
# the function it is planted in, which the checker must call wrong, words its report must hold)
PLANTS = {
    "stage 1, a wrong momentum formula": (
        1, "else momentum * buf + grad", "else momentum * buf + (1 - momentum) * grad",
        "sgd_momentum_update", ["after step 2 of 3: conv1.weight differs by", "(tolerance 1e-10, float64)"]),
    "stage 1, a transposed weight gradient": (
        1, "return dout.T @ x, dout.sum(axis=0),", "return x.T @ dout, dout.sum(axis=0),",
        "linear_backward", ["weight gradient has shape (84, 10), expected (10, 84)"]),
    "stage 1, a relu skipped in the chain rule": (
        1, '    dh2 = relu_backward(dh2, c["h2"])\n', "",
        "backward", ["fc2.weight gradient differs by", "on a batch of 4 synthetic images, seed 0"]),
    "stage 1, exp() of logits not shifted by their largest": (
        1, "shifted = logits - logits.max(axis=1, keepdims=True)", "shifted = logits",
        "cross_entropy", ["loss holds NaN or infinite values (on logits (4, 10) in the thousands"]),
    "stage 2, a loss in float64 whatever the dtype": (
        2, "    return loss, dlogits / n", "    return loss.double(), dlogits / n",
        "cross_entropy", ["loss is float64, expected float32"]),
    "stage 2, max() without .values": (
        2, "logits.max(dim=1, keepdim=True).values", "logits.max(dim=1, keepdim=True)",
        "cross_entropy", ["TypeError: ",
                          ", in cross_entropy: shifted = logits - logits.max(dim=1, keepdim=True)"]),
    "stage 3, a zero_grad that clears nothing": (
        3, "        p.grad = None\n", "        pass\n",
        "zero_grad", ["conv1.weight.grad still holds the previous step's gradient"]),
    "stage 3, a forgotten zero_grad": (
        3, "        zero_grad(params)\n", "",
        "train_one_epoch", ["the loss of step 3 differs by", "on 5 batches of 4 synthetic images, seed 1"]),
    "stage 3, the update outside no_grad": (
        3, "    with torch.no_grad():  # the update is not part of the model: autograd must not record it\n",
        "    if True:\n",
        "sgd_momentum_update", ["RuntimeError: a leaf Variable that requires grad is being used in an in-place "
                                "operation.", ", in sgd_momentum_update: p -= lr * momentum_buffers[name]"]),
    "stage 4, average pooling": (
        4, "h = F.max_pool2d(F.relu(F.conv2d(x,", "h = F.avg_pool2d(F.relu(F.conv2d(x,",
        "forward", ["logits differ by"]),
    "stage 5, the update outside no_grad": (
        5, "    with torch.no_grad():  # the update is not part of the model: autograd must not record it\n",
        "    if True:\n",
        "sgd_momentum_update", ["RuntimeError: a leaf Variable that requires grad is being used in an in-place "
                                "operation."]),
    "stage 6, a forgotten optimizer.zero_grad()": (
        6, "        optimizer.zero_grad()", "        pass",
        "train_one_epoch", ["the loss of step 3 differs by"]),
    "stage 7, an unseeded shuffle": (
        7, "shuffle=True, generator=generator,", "shuffle=True,",
        "make_loaders", ["training batch 1 holds other images than the images"]),
    "stage 7, no conversion to the run's dtype": (
        7, ",\n                               transforms.ConvertImageDtype(dtype)", "",
        "make_transform", ["make_transform(torch.float64) made torch.float32 images"]),
    "stage 8, dropout left out of forward": (
        8, "x = self.dropout(F.relu(self.fc1(x)))", "x = F.relu(self.fc1(x))",
        "Net.forward", ["Net(0.5) in train mode, seed 0: logits differ by", "against dropout before fc2 and fc3"]),
    "stage 8, no dropout at all": (
        8, ("x = self.dropout(F.relu(", 2), "x = (F.relu(",
        "Net.forward", ["two forwards of one batch gave the same logits"]),
    "stage 8, a forgotten model.train()": (
        8, "    model.train()", "    pass",
        "train_one_epoch", ["ran its forward in eval mode", "call model.train() first"]),
    "stage 8, a forgotten model.eval()": (
        8, "    model.eval()", "    pass",
        "evaluate", ["ran its forward in train mode", "call model.eval() first"]),
    "stage 9, a batch not moved to the device": (
        9, "        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)", "        pass",
        "train_one_epoch", ["did not call x.to(device) on training batch 1"]),
    "stage 9, a test batch not moved to the device": (
        9, "model(x.to(device, non_blocking=True))", "model(x)",
        "evaluate", ["did not call x.to(device) on test batch 1"]),
    "stage 10, every GPU in order": (
        10, "return [device.index] + [i for i in range(torch.cuda.device_count()) if i != device.index]",
        "return list(range(torch.cuda.device_count()))",
        "gpus_starting_at", ["returned [0, 1, 2, 3], expected [2, 0, 1, 3]"]),
    "stage 11, a group never left": (
        11, "        dist.destroy_process_group()", "        pass",
        "process_group", ["the process group is still initialised"]),
    "stage 11, LOCAL_RANK ignored": (
        11, 'torch.device(f"cuda:{local_rank}" if name == "cuda" else name)',
        'torch.device("cuda:0" if name == "cuda" else name)',
        "choose_device", ["expected torch.device('cuda:1')", "LOCAL_RANK=1"]),
}


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # the unshifted softmax's
@pytest.mark.parametrize("plant", [pytest.param(v, id=k, marks=getattr(pytest.mark, f"stage{v[0]}"))
                                   for k, v in PLANTS.items()])
def test_a_planted_mistake_is_named_with_what_differs(plant, tmp_path, capsys):
    stage, old, new, function, says = plant
    old, times = old if isinstance(old, tuple) else (old, 1)
    path = planted(tmp_path, stage, function, old, new, times)
    code = exercises.main(["check", str(stage), "--file", str(path)])
    out = capsys.readouterr().out
    assert code == exercises.NOT_DONE
    assert line_of(out, function).split(None, 1)[1].startswith("wrong: "), out
    for words in says:
        assert words in out, out
    for other in set(EXERCISES[stage].blanks) - {function}:
        assert line_of(out, other).split(None, 1)[1] == "passed", out
    assert "Traceback" not in out


def test_a_wrong_line_outside_the_blanked_functions_is_caught_all_together(tmp_path, capsys):
    """Stage 2 blanks four functions; a mistake in relu_backward, which it does not blank, shows
    in the checks of the whole file."""
    path = planted(tmp_path, 2, "relu_backward", "return dout * (out > 0)", "return dout * (out >= 0)")
    assert exercises.main(["check", "2", "--file", str(path)]) == exercises.NOT_DONE
    out = capsys.readouterr().out
    assert "wrong: one step: fc2.weight gradient differs by" in line_of(out, "all together"), out


def test_what_the_stage_prints_while_it_is_checked_stays_out_of_the_report(tmp_path, capsys):
    path = planted(tmp_path, 6, "train_one_epoch", "        loss.backward()\n",
                   "        loss.backward()\n        print('a line of the stage')\n")
    assert exercises.main(["check", "6", "--file", str(path)]) == 0
    out = capsys.readouterr().out
    assert "a line of the stage" not in out and out.splitlines()[-1].startswith("verdict: passed")


def test_a_file_that_does_not_load_is_one_line_with_its_line_number(tmp_path, capsys):
    path = planted(tmp_path, 6, "train_one_epoch", "        loss.backward()\n", "        loss.backward(\n")
    assert exercises.main(["check", "6", "--file", str(path)]) == exercises.NOT_DONE
    out = capsys.readouterr().out
    assert "wrong: it does not load: SyntaxError" in out and "line " in out and "Traceback" not in out


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert exercises.main(["check", "3", "--file", str(tmp_path / "missing.py")]) == 2
    err = capsys.readouterr().err
    assert "missing.py does not exist: make exercise STAGE=3 writes it" in err and len(err.splitlines()) == 1
    for stage in ("12", "x", "0"):
        with pytest.raises(SystemExit) as exit_info:
            exercises.main(["check", stage])
        assert exit_info.value.code == 2
        assert len(capsys.readouterr().err.splitlines()) == 1


def test_checking_leaves_torch_as_it_found_it(fresh):
    threads = torch.get_num_threads()
    check(11, fresh[11])
    check(11, stage_file(11))
    assert torch.get_num_threads() == threads and torch.is_grad_enabled()
    assert not torch.distributed.is_initialized()


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
    assert checked.returncode != 0 and "train_one_epoch  not done yet" in checked.stdout
    assert "Traceback" not in checked.stdout + checked.stderr
    assert "+        optimizer.step()" in make(course, "solution", "STAGE=6").stdout
    shutil.copy(course / "stages" / "stage06_optim.py", mine)  # the learner's answer: the course's own
    assert make(course, "check", "STAGE=6").returncode == 0
    unsafe = make(course, "check", "STAGE=6; touch pwned")
    assert unsafe.returncode != 0 and not (course / "pwned").exists(), "STAGE never reaches a shell"
    assert os.listdir(course / "work") == ["stage06_optim.py"]
