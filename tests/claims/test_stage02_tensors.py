"""Stage 2's claims (torch tensors, gradients still by hand), each shown by running it; and the
teaching printouts it starts, in every stage that has them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.harness import load_stage
from common.weights import reference_params
from tests.helpers import EVENT_TIMEOUT, ROOT, shows, stages_where


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


@pytest.mark.parametrize("stage_name", stages_where(shows("show_tensor")))
def test_show_tensor_says_what_it_shows_and_leaves_the_weights_alone(stage_name, capsys):
    weight = torch.tensor(reference_params(0)["conv1.weight"], dtype=torch.float32)
    before = weight.clone()
    load_stage(stage_name).show_tensor("conv1.weight", weight)
    out = capsys.readouterr().out
    assert "torch.float32 on cpu, shape (6, 3, 5, 5)" in out
    assert "w.add(1) is w: False, w.add_(1) is w: True" in out
    assert torch.equal(weight, before)


@pytest.mark.parametrize("stage_name", stages_where(shows("show_tensor")))
def test_every_stage_with_tensors_prints_what_a_trailing_underscore_does(stage_name, smoke_run):
    assert "w.add(1) is w: False, w.add_(1) is w: True" in smoke_run(stage_name).out


# Each stage's teaching printout, by its function's name, and words of the line it prints.
PRINTOUTS = {"show_tensor": "w.add(1) is w", "show_loss_and_cost": "reduction='none'",
             "show_parameters": "model.named_parameters()", "show_momentum_buffers": "optimizer.state after step 1",
             "show_dataset": "len(train_set)", "show_train_and_eval_modes": "a copy with dropout 0.5",
             "show_device": "x.to(device) is x", "show_autocast": "under autocast"}


@pytest.mark.parametrize("stage_name", stages_where(lambda stage: any(hasattr(stage, name) for name in PRINTOUTS)))
def test_the_teaching_printouts_leave_the_run_bit_for_bit_unchanged(stage_name, smoke_run, tmp_path, monkeypatch):
    """The printouts copy, fork or only read: with them switched off, the run is the same. Where
    the stage has dropout the run uses it (tests.helpers.smoke_argv), so it draws random numbers the printouts
    must not take. (On the CPU, where a run repeats bit for bit: the runs take --device cpu where
    there is one; the GPU's fork is checked in stage 9's claims.)"""
    stage = load_stage(stage_name)
    shown = smoke_run(stage_name)
    words = [PRINTOUTS[name] for name in PRINTOUTS if hasattr(stage, name)]
    for name in PRINTOUTS:
        if hasattr(stage, name):
            monkeypatch.setattr(stage, name, lambda *args: None)
    hidden = smoke_run(stage_name, tmp_path)  # the same run again, with the printouts switched off
    assert all(w in shown.out and w not in hidden.out for w in words), "the printouts were switched off"
    assert shown.text("losses.csv") == hidden.text("losses.csv"), "the losses, in full precision"
    shown_params, hidden_params = shown.params, hidden.params
    assert list(shown_params) == list(hidden_params)
    for name in shown_params:
        assert np.array_equal(shown_params[name], hidden_params[name]), name
