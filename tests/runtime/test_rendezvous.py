"""The start of a distributed run (stages 11-13): the environment torchrun describes is checked
before any waiting, and the wait for the other processes is bounded and can be interrupted.

torch's TCPStore waits for the other processes in C++ for 30 minutes, where Python's signal
handlers cannot run; the recorder watches from a thread of its own (common/run/rendezvous.py).
A peer that never comes is played by asking for two processes and starting one.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from common.errors import BAD_INPUT, INTERRUPTED
from tests.helpers import EVENT_TIMEOUT, ROOT, SMOKE, Background, free_port

pytestmark = pytest.mark.stage11
STAGE = "stages.stage11_distributed"


def group_of_two(rank: int, port: int, **extra: str) -> dict:
    return dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port), **extra)


def waiting(out) -> bool:
    """The run is waiting for the other process: its record exists and it said so."""
    return bool(list(out.glob("*/*/options.json")))


@pytest.mark.parametrize("rank", [0, 1], ids=["the first process", "another process"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_while_waiting_for_the_other_processes_ends_the_wait(sig, rank, tmp_path):
    out = tmp_path / "runs"
    run = Background(["-m", STAGE, *SMOKE, "--out", str(out)], tmp_path, env=group_of_two(rank, free_port()))
    if rank == 0:
        run.wait_for(lambda: waiting(out), "the record of the waiting process")
    else:  # a process other than the first writes nothing: it says it is waiting
        run.wait_for(lambda: "waiting for" in run.stdout.read_text(), "the process to say it waits")
    run.process.send_signal(sig)
    result = run.finish()
    assert result.returncode == INTERRUPTED and "Traceback" not in result.stderr, result.stderr[-800:]
    [line] = [line for line in result.stderr.splitlines() if "interrupted" in line]
    assert f"interrupted by {sig.name} while waiting for the other process of the group" in line
    if rank == 0:
        [summary] = out.glob("*/*/summary.json")
        ended = json.loads(summary.read_text())
        assert ended["complete"] is False and ended["ended"] == "interrupted while waiting for the other processes"


def test_a_peer_that_never_comes_is_given_up_after_the_stated_time(tmp_path):
    port = free_port()
    result = subprocess.run([sys.executable, "-m", STAGE, *SMOKE, "--out", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=EVENT_TIMEOUT,
                            env=group_of_two(0, port, COURSE_RENDEZVOUS_TIMEOUT="3"))
    assert result.returncode == BAD_INPUT and "Traceback" not in result.stderr, result.stderr[-800:]
    [line] = [line for line in result.stderr.splitlines() if "error" in line]
    assert (f"gave up after 3 s waiting for the other process of the group (WORLD_SIZE=2) at 127.0.0.1:{port}"
            in line)
    [summary] = tmp_path.glob("*/*/summary.json")
    assert json.loads(summary.read_text())["complete"] is False


INCONSISTENT = {  # the environment, a piece of the one line
    "RANK not a number": (dict(RANK="x", WORLD_SIZE="2"), "RANK='x' is not a whole number"),
    "RANK past WORLD_SIZE": (dict(RANK="2", WORLD_SIZE="2"), "RANK=2 with WORLD_SIZE=2: the ranks are 0 to 1"),
    "no WORLD_SIZE": (dict(RANK="0"), "RANK is set but WORLD_SIZE is not"),
    "no MASTER_ADDR": (dict(RANK="0", WORLD_SIZE="2", MASTER_ADDR=None), "MASTER_ADDR is not set"),
    "a port that is no port": (dict(RANK="0", WORLD_SIZE="2", MASTER_PORT="http"),
                               "MASTER_PORT='http' is not a port number"),
    "LOCAL_RANK not a number": (dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="a"), "LOCAL_RANK='a' is not a whole number"),
    "a timeout that is no time": (dict(RANK="0", WORLD_SIZE="2", COURSE_RENDEZVOUS_TIMEOUT="soon"),
                                  "COURSE_RENDEZVOUS_TIMEOUT='soon' is not a number of seconds"),
}


@pytest.mark.parametrize("variables,message", INCONSISTENT.values(), ids=INCONSISTENT.keys())
def test_an_inconsistent_distributed_environment_is_one_line_before_any_waiting(variables, message, tmp_path):
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), LOCAL_RANK="0")
    env.update(variables)
    env = {k: v for k, v in env.items() if v is not None}
    result = subprocess.run([sys.executable, "-m", STAGE, *SMOKE, "--out", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=EVENT_TIMEOUT, env=env)
    assert result.returncode == BAD_INPUT and "Traceback" not in result.stderr, result.stderr[-800:]
    [line] = [line for line in result.stderr.splitlines() if "error" in line]
    assert message in line
    assert not list(tmp_path.iterdir()), "refused before the record was made"


def test_a_busy_port_is_one_line_before_any_waiting(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", STAGE, *SMOKE, "--out", str(tmp_path)], cwd=ROOT,
                                capture_output=True, text=True, timeout=EVENT_TIMEOUT, env=group_of_two(0, port))
    assert result.returncode == BAD_INPUT and "Traceback" not in result.stderr, result.stderr[-800:]
    [line] = [line for line in result.stderr.splitlines() if "error" in line]
    assert f"MASTER_PORT={port} is already in use on this machine" in line
    assert not list(tmp_path.iterdir())
