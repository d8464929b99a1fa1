"""--threads: a number, or auto, which counts the cores other programs keep busy and uses the rest.

The machine's load is played by a fake /proc/stat and fake clocks, so these tests say what
auto decides without depending on what else this machine is doing.
"""
from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_info

from common.run import threads
from common.harness import TOLERANCES, driver, load_stage, relative_error, sample_batches
from common.run.threads import ThreadPolicy
from common.weights import reference_params


def blas_threads() -> int:
    return max(lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas")


class FakeMachine:
    """Clocks for ThreadPolicy: `others` cores kept busy by other programs, this process idle."""

    def __init__(self, monkeypatch, cores: int = 2):
        self.now, self.all_cpu, self.own_cpu, self.others = 100.0, 5000.0, 10.0, 0.0
        monkeypatch.setattr(threads, "usable_cores", lambda: cores)
        monkeypatch.setattr(threads, "cpu_seconds_of_all_processes", lambda: self.all_cpu)
        monkeypatch.setattr(threads, "clocks", lambda: (self.now, self.own_cpu))

    def wait(self, seconds: float, own_cores: float = 1.0) -> None:
        self.now += seconds
        self.own_cpu += own_cores * seconds
        self.all_cpu += (own_cores + self.others) * seconds


def test_busy_time_counts_only_the_cpus_this_process_may_use():
    stat = ("cpu  400 0 100 9000 50 0 0 0 0 0\n"
            "cpu0 100 0 0 1000 10 0 0 0 0 0\n"
            "cpu1 300 0 100 8000 40 0 0 5 0 0\n"
            "intr 12345\n")
    ticks = threads._CLOCK_TICKS
    assert threads.busy_seconds(stat, {1}) == 405 / ticks, "user + system + steal of cpu1"
    assert threads.busy_seconds(stat, {0, 1}) == 505 / ticks
    assert threads.busy_seconds(stat, {7}) == 505 / ticks, "CPUs not listed (renumbered): every line"
    assert threads.busy_seconds("intr 1\n", {0}) is None


@pytest.fixture()
def two_threads_to_start_with():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_a_number_sets_torchs_and_numpys_threads_and_restore_undoes_it(two_threads_to_start_with):
    blas_before = blas_threads()
    policy = ThreadPolicy(1)
    assert torch.get_num_threads() == 1 and blas_threads() == 1
    policy.restore()
    assert torch.get_num_threads() == 2 and blas_threads() == blas_before


def test_auto_uses_every_core_on_an_idle_machine(monkeypatch, two_threads_to_start_with):
    machine = FakeMachine(monkeypatch)
    policy = ThreadPolicy("auto")
    machine.wait(0.5)
    policy.check(at_once=True)
    assert policy.threads == 2 and torch.get_num_threads() == 2
    assert "other programs keep 0.0 of 2 cores busy" in policy.describe()
    policy.restore()


def test_auto_steps_back_beside_a_busy_process_and_up_again_when_it_ends(monkeypatch, two_threads_to_start_with):
    machine = FakeMachine(monkeypatch)
    policy = ThreadPolicy("auto")
    machine.others = 1.0  # another program starts, and keeps a core busy
    machine.wait(0.5)
    assert policy.check(at_once=True) and policy.threads == 1 and torch.get_num_threads() == 1
    assert blas_threads() == 1, "numpy's matrix products share the machine too"
    machine.others = 0.0
    machine.wait(1.0)
    assert not policy.check(), "it looks again only every CHECK_EVERY seconds"
    machine.wait(threads.CHECK_EVERY)
    assert policy.check() and policy.threads == 2
    policy.restore()


def test_auto_never_goes_below_one_thread_or_above_the_default(monkeypatch, two_threads_to_start_with):
    machine = FakeMachine(monkeypatch, cores=8)
    policy = ThreadPolicy("auto")
    machine.others = 20.0
    machine.wait(3)
    policy.check()
    assert policy.threads == 1
    machine.others = 0.0
    machine.wait(3)
    policy.check()
    assert policy.threads == 2, "torch's own default (2 here) is the most auto uses"
    policy.restore()


def test_a_run_puts_the_thread_count_back_when_it_ends(tmp_path, two_threads_to_start_with):
    load_stage(6).main(["--data", "synthetic", "--max-steps", "3", "--threads", "1", "--out", str(tmp_path)])
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("value", ["0", "-1", "257", "two", ""])
def test_a_thread_count_outside_1_to_256_is_refused(value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_stage(6).main(["--threads", value, "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "--threads" in capsys.readouterr().err


def test_the_thread_count_changes_at_most_the_last_bits(two_threads_to_start_with):
    """Why a run repeats bit for bit only with a fixed --threads: a sum split over two threads may
    be added in another order than on one (whether it is depends on the build's kernels), which
    changes its last bits, and no more."""
    d, batches = driver(6), sample_batches(20, 8, seed=11)
    results = {}
    for count in (1, 2):
        torch.set_num_threads(count)
        model = d.build(reference_params(0))
        for x, y in batches:
            d.train_step(model, x, y, 0.01, 0.9)
        results[count] = d.get_params(model)
    assert max(relative_error(results[2][n], results[1][n]) for n in results[1]) <= TOLERANCES["float32"].rtol
