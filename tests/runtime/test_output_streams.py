"""stdout and stderr that break, are closed, or cannot hold every character: the run goes on.

A reader that went away (`| head -1`) is played by a pipe whose reading end is closed before the
run starts, a full device by /dev/full, a stream closed on purpose by the shell's `2>&-`, and a
stdout that is not UTF-8 by PYTHONIOENCODING=ascii. In each the run trains to its end, its
record is complete and says what happened to the stream (summary.json's "output"), and the stream
that still works says it in one line (common/run/streams.py, common/run/guard.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from common.errors import WRITE_FAILED
from common.run import streams
from tests.helpers import EVENT_TIMEOUT, ROOT, SMOKE

STAGE = "stages.stage06_optim"


def run_stage(out: Path, shell_redirect: str = "", **popen) -> subprocess.CompletedProcess:
    """The stage, its streams as `popen` gives them; `shell_redirect` (`2>&-`) is applied by bash."""
    argv = [sys.executable, "-m", STAGE, *SMOKE, "--out", str(out)]
    if shell_redirect:
        argv = ["bash", "-c", f'exec "$0" "$@" {shell_redirect}', *argv]
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.run(argv, cwd=ROOT, text=True, timeout=EVENT_TIMEOUT, **popen)


def summary_of(out: Path) -> dict:
    [path] = out.glob("*/*/summary.json")
    return json.loads(path.read_text())


def whole_record(out: Path) -> None:
    summary = summary_of(out)
    assert summary["complete"] is True and summary["steps"] == 3
    [losses] = out.glob("*/*/losses.csv")
    assert len(losses.read_text().splitlines()) == 1 + 3, "every step's loss is in the record"


def last_line(stderr: str) -> str:
    return [line for line in stderr.splitlines() if line.strip() and "step/s" not in line][-1]


def test_a_stdout_whose_reader_went_away_keeps_the_run(tmp_path):
    reading, writing = os.pipe()
    os.close(reading)  # `| head -1` once head has its line
    try:
        result = run_stage(tmp_path, stdout=writing)
    finally:
        os.close(writing)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-800:]
    whole_record(tmp_path)
    assert summary_of(tmp_path)["output"] == {"stdout": "Broken pipe"}
    line = last_line(result.stderr)
    assert line.startswith("stage06_optim: stdout (Broken pipe): its reader went away, the run went on")
    assert "record is complete in" in line and "cannot write" not in line


def test_a_full_device_on_stdout_is_not_blamed_on_the_record_folder(tmp_path):
    with open("/dev/full", "w") as full:
        result = run_stage(tmp_path, stdout=full)
    assert result.returncode == WRITE_FAILED and "Traceback" not in result.stderr, result.stderr[-800:]
    whole_record(tmp_path)
    assert summary_of(tmp_path)["output"] == {"stdout": "No space left on device"}
    line = last_line(result.stderr)
    assert line.startswith("stage06_optim: error: stdout (No space left on device): the printed output was lost, "
                           "not the run")
    assert "cannot write" not in line


def test_a_stderr_closed_before_the_run_keeps_the_run(tmp_path):
    """`2>&-`, as under some daemons: the progress bar has nowhere to go, the run goes on."""
    result = run_stage(tmp_path, "2>&-", stdout=subprocess.PIPE, stderr=None)
    assert result.returncode == 0 and "Traceback" not in result.stdout, result.stdout[-800:]
    whole_record(tmp_path)
    assert summary_of(tmp_path)["output"] == {"stderr": "closed before the program began"}
    assert "stage06_optim: final training loss" in result.stdout


def test_a_stdout_closed_before_the_run_keeps_the_run(tmp_path):
    result = run_stage(tmp_path, ">&-")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-800:]
    whole_record(tmp_path)
    assert summary_of(tmp_path)["output"] == {"stdout": "closed before the program began"}


def test_a_stdout_that_is_not_utf8_gets_ascii_replacements(tmp_path):
    out = tmp_path / "rüns…"
    result = run_stage(out, stdout=subprocess.PIPE, env=dict(os.environ, PYTHONIOENCODING="ascii"))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-800:]
    whole_record(out)
    assert summary_of(out)["output"] == {}
    assert "r\\xfcns..." in result.stdout, "the path is shown, its non-ASCII letters replaced"


@given(st.text())
def test_every_message_has_an_ascii_form(text):
    written = text.encode("ascii", streams.ERRORS)
    assert written.isascii()
    if text.isascii():
        assert written.decode() == text, "ASCII text is written as it is"
