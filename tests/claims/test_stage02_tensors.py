"""Stage 2's claims (torch tensors, gradients still by hand), each shown by running it; and the
teaching printouts it starts, in every stage that has them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from common.harness import load_stage
from common.weights import reference_params
from tests.helpers import shows, stages_where


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


PRINTOUTS = ("show_tensor", "show_loss_and_cost", "show_gradient", "show_train_and_eval_modes")


@pytest.mark.parametrize("stage_name", stages_where(shows("show_tensor", "show_gradient")))
def test_the_teaching_printouts_leave_the_run_bit_for_bit_unchanged(stage_name, smoke_run, tmp_path, monkeypatch):
    """The printouts copy, fork or only read: with them switched off, the run is the same. Where
    the stage has dropout the run uses it (tests.helpers.smoke_argv), so it draws random numbers the printouts
    must not take. (On the CPU, where a run repeats bit for bit: the runs take --device cpu where
    there is one; the GPU's fork is checked in stage 9's claims.)"""
    stage = load_stage(stage_name)
    shown = smoke_run(stage_name)
    for name in PRINTOUTS:
        if hasattr(stage, name):
            monkeypatch.setattr(stage, name, lambda *args: None)
    hidden = smoke_run(stage_name, tmp_path)  # the same run again, with the printouts switched off
    assert "w.add(1) is w" in shown.out and "w.add(1) is w" not in hidden.out, "the printouts were switched off"
    assert shown.text("losses.csv") == hidden.text("losses.csv"), "the losses, in full precision"
    shown_params, hidden_params = shown.params, hidden.params
    assert list(shown_params) == list(hidden_params)
    for name in shown_params:
        assert np.array_equal(shown_params[name], hidden_params[name]), name
