"""make check runs the learner's code in a child process, each check within a time limit: whatever
that code does (sys.exit, os._exit, an endless loop, a KeyboardInterrupt, a write into the
course's own files), every check ends in its one line, a pass needs every check run and passed,
and a Ctrl-C or SIGTERM at the terminal stops the checks with what had been checked."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from common.errors import INTERRUPTED
from common.tools import exercises
from common.tools.exercises import sandbox
from tests.helpers import ROOT, Background, copy_of_the_course, make, planted

pytestmark = pytest.mark.stage6

AFTER_BACKWARD = "        loss.backward()\n"


def in_the_loop(tmp_path: Path, code: str) -> Path:
    """Stage 6 with `code` run in its loop, after the first backward."""
    return planted(tmp_path, 6, "train_one_epoch", AFTER_BACKWARD, AFTER_BACKWARD + f"        {code}\n")


def at_load(tmp_path: Path, code: str) -> Path:
    path = tmp_path / "stage06_optim.py"
    path.write_text((ROOT / "stages" / "stage06_optim.py").read_text() + f"\n{code}\n")
    return path


def checked(path: Path, capsys, stage: int = 6) -> tuple[int, str]:
    code = exercises.main(["check", str(stage), "--file", str(path)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.out


def status(out: str, name: str) -> str:
    line = next(line for line in out.splitlines() if line.strip().startswith(name + " "))
    return line.strip()[len(name):].strip()


def test_sys_exit_0_in_the_learners_code_is_a_wrong_answer_never_a_pass(tmp_path, capsys):
    code, out = checked(in_the_loop(tmp_path, "import sys; sys.exit(0)"), capsys)
    assert code == exercises.NOT_DONE
    assert status(out, "train_one_epoch").startswith("wrong: your code called sys.exit(0)")
    assert out.splitlines()[-1].startswith("verdict: not yet")


def test_os_exit_in_the_learners_code_is_one_line(tmp_path, capsys):
    code, out = checked(in_the_loop(tmp_path, "import os; os._exit(0)"), capsys)
    assert code == exercises.NOT_DONE
    assert status(out, "train_one_epoch").startswith("wrong: your code called os._exit(0)")
    assert status(out, "the whole program").startswith("not checked")


@pytest.mark.parametrize("code, says", [("import sys; sys.exit(0)", "wrong: it does not load: your code called sys.exit(0)"),
                                        ("import os; os._exit(0)", "wrong: your code called os._exit(0)")],
                         ids=["sys.exit", "os._exit"])
def test_an_exit_as_the_file_loads_is_one_line_and_never_a_pass(code, says, tmp_path, capsys):
    exit_code, out = checked(at_load(tmp_path, code), capsys)
    assert exit_code == exercises.NOT_DONE
    assert status(out, "your file").startswith(says), out


def test_an_endless_loop_does_not_finish_in_its_time_and_the_checks_after_it_still_run(tmp_path, capsys,
                                                                                      monkeypatch):
    monkeypatch.setattr(sandbox, "LIMIT_FLOOR", 3.0)
    monkeypatch.setattr(sandbox, "LIMIT_FACTOR", 5)
    path = planted(tmp_path, 3, "zero_grad", "        p.grad = None\n", "        while True:\n            pass\n")
    code, out = checked(path, capsys, stage=3)
    assert code == exercises.NOT_DONE
    assert status(out, "zero_grad").startswith("did not finish in "), out
    assert "the limit is 5 times that, and 3 s at least" in out
    assert status(out, "sgd_momentum_update") == "passed" and status(out, "train_one_epoch") == "passed", out


def test_a_keyboard_interrupt_raised_by_the_learners_code_is_interrupted(tmp_path, capsys):
    code, out = checked(in_the_loop(tmp_path, "raise KeyboardInterrupt"), capsys)
    assert code == exercises.NOT_DONE
    assert status(out, "train_one_epoch").startswith("interrupted: your code raised KeyboardInterrupt")


def test_a_write_into_the_courses_stages_is_refused_and_the_stage_stays_as_it_was(tmp_path):
    course = copy_of_the_course(tmp_path / "course")
    stage = course / "stages" / "stage06_optim.py"
    before = stage.read_bytes()
    mine = in_the_loop(course / "work", f"open({str(stage)!r}, 'a').write('# changed by the exercise\\n')")
    result = make(course, "check", "STAGE=6")
    assert result.returncode != 0 and "Traceback" not in result.stdout + result.stderr
    assert "wrong: your code tried to write stages/stage06_optim.py: make check keeps the course's own files" in \
        result.stdout, result.stdout
    assert stage.read_bytes() == before and mine.exists()


def test_a_write_past_the_refusal_is_put_back_and_said(tmp_path):
    """A shell the learner's code starts is no Python code the child can refuse: the parent puts
    the course's files back afterwards, and says so."""
    course = copy_of_the_course(tmp_path / "course")
    stage = course / "stages" / "stage06_optim.py"
    before = stage.read_bytes()
    in_the_loop(course / "work", f"__import__('os').system('echo \"# changed\" >> {stage}')")
    result = make(course, "check", "STAGE=6")
    assert result.returncode != 0
    assert "wrong: your code changed stages/stage06_optim.py: make check put back the course's own files" in \
        result.stdout, result.stdout
    assert stage.read_bytes() == before


@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_a_signal_at_the_terminal_stops_the_checks_with_what_had_been_checked(sent, tmp_path):
    """The learner's code says, in a file, that it runs (and its process id): the signal goes to
    make check's own process then; the child is stopped, the report so far shown, exit 130."""
    marker = tmp_path / "running"
    path = in_the_loop(tmp_path, f"open({str(marker)!r}, 'w').write(str(__import__('os').getpid())); import time; "
                                 "[time.sleep(0.1) for _ in iter(int, 1)]")
    run = Background(["-m", "common.tools.exercises", "check", "6", "--file", str(path)], tmp_path / "out")
    run.wait_for(lambda: marker.exists() and marker.read_text(), "the learner's code to run")
    child = int(marker.read_text())
    run.process.send_signal(sent)
    done = run.finish()
    assert done.returncode == INTERRUPTED, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "train_one_epoch  interrupted: make check was interrupted while this check ran" in done.stdout
    assert done.stdout.splitlines()[-1].startswith("verdict: none: make check was interrupted")
    assert "make check: interrupted" in done.stderr and len(done.stderr.splitlines()) == 1
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_the_child_never_sees_the_distributed_environment(tmp_path, capsys, monkeypatch):
    """A RANK left in the terminal would make stage 11's main() wait for a torchrun that never comes."""
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "8")
    code, out = checked(in_the_loop(tmp_path, "import os; assert 'RANK' not in os.environ"), capsys)
    assert code == 0, out
