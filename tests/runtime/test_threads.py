"""--threads: one decision at the start of a run, said in one line: torch's threads (where the stage
uses torch) and numpy's matrix products (its BLAS) on that many threads, put back when the run
ends. The default, one thread, is the measured rule (docs/running.md, Threads)."""
from __future__ import annotations

import pytest
import torch
from threadpoolctl import threadpool_info

from common.cli import DEFAULT_THREADS
from common.run import use_threads
from tests.helpers import run_main


def blas_threads() -> set[int]:
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


@pytest.fixture
def two_threads_to_start_with():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_a_number_sets_torchs_and_numpys_threads_and_puts_them_back(two_threads_to_start_with):
    blas_before = blas_threads()
    put_back = use_threads(1)
    assert torch.get_num_threads() == 1 and blas_threads() == {1}
    put_back()
    assert torch.get_num_threads() == 2 and blas_threads() == blas_before


def test_a_run_says_its_thread_count_and_puts_it_back(tmp_path, two_threads_to_start_with):
    run = run_main(6, tmp_path, "--threads", "3")
    assert "threads: 3, for torch's and numpy's maths (--threads)" in run.out
    assert torch.get_num_threads() == 2


def test_the_default_is_one_thread():
    assert DEFAULT_THREADS == 1
