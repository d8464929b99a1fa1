"""Stage 2's claims (torch tensors, gradients still by hand), each shown by running it; and the
teaching printouts it starts, in every stage that has them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import EVENT_TIMEOUT, ROOT


@pytest.mark.stage2
def test_torch_tensor_keeps_float64_from_numpy():
    assert torch.tensor(np.zeros(3)).dtype == torch.float64
    assert torch.from_numpy(np.zeros(3)).dtype == torch.float64
    assert np.array([0.5]).dtype == np.float64, "numpy's default float"
    assert torch.tensor([0.5]).dtype == torch.get_default_dtype() == torch.float32, "torch's default float"


@pytest.mark.stage2
def test_from_numpy_shares_memory_but_torch_tensor_copies():
    array = np.zeros(3)
    shared, copied = torch.from_numpy(array), torch.tensor(array)
    shared -= 1  # in place, as the hand-written update changes the weights
    copied -= 1
    assert array.tolist() == [-1.0, -1.0, -1.0], "from_numpy: the array changed with the tensor"
    copied -= 1
    assert array.tolist() == [-1.0, -1.0, -1.0], "torch.tensor: the array did not change"


@pytest.mark.stage2
def test_a_trailing_underscore_changes_the_tensor_in_place():
    w = torch.zeros(3)
    new = w.add(1)
    assert new is not w and w.tolist() == [0.0, 0.0, 0.0]
    same = w.add_(1)
    assert same is w and w.tolist() == [1.0, 1.0, 1.0]
    assert w.zero_() is w and w.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.stage2
def test_torch_also_accepts_numpys_axis_and_keepdims_as_aliases():
    """The stage writes torch's own names, dim= and keepdim=; numpy's work too."""
    t = torch.arange(12.0).reshape(3, 4)
    assert torch.equal(t.sum(axis=1, keepdims=True), t.sum(dim=1, keepdim=True))
    assert torch.equal(t.max(axis=1, keepdims=True).values, t.max(dim=1, keepdim=True).values)
    assert t.sum(axis=1, keepdims=True).shape == (3, 1)


# In a process of its own, with 2 threads: how much CPU time the threads other than the main one
# spend on 20,000 element-wise products of each size (Linux's per-thread clock, in ticks).
OTHER_THREADS = """
import os, time, torch
torch.set_num_threads(2)
def ticks():
    per_thread = {}
    for tid in os.listdir(f"/proc/{os.getpid()}/task"):
        with open(f"/proc/{os.getpid()}/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        per_thread[int(tid)] = int(fields[11]) + int(fields[12])  # utime + stime
    return per_thread
torch.rand(1 << 20).mul(2.0)  # starts the thread pool
for n in (32768, 65536):
    x = torch.rand(n)
    time.sleep(0.5)  # the pool's threads stop spinning and sleep
    before = ticks()
    for _ in range(20000):
        x.mul(2.0)
    after = ticks()
    main = after[os.getpid()] - before[os.getpid()]
    others = sum(after[t] - before.get(t, 0) for t in after if t != os.getpid())
    print(n, main, others)
"""


@pytest.mark.slow  # a process of its own, or compiling: seconds
@pytest.mark.stage2
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's per-thread CPU clocks")
def test_an_element_wise_operator_of_up_to_32768_elements_runs_on_one_thread():
    """ATen's grain size, 32,768: an element-wise op no larger runs on the calling thread alone."""
    result = subprocess.run([sys.executable, "-c", OTHER_THREADS], cwd=ROOT, capture_output=True, text=True,
                            timeout=EVENT_TIMEOUT)
    assert result.returncode == 0, result.stderr
    (_, main_small, others_small), (_, main_large, others_large) = (
        [int(v) for v in line.split()] for line in result.stdout.split("\n") if line)
    assert main_small > 0 and others_small <= 1, f"32,768 elements: the other thread ran {others_small} ticks"
    assert others_large > 0.3 * main_large, f"65,536 elements: two threads ({others_large} vs {main_large} ticks)"


