"""Stage 9's claims (the device, decided once in main()), each shown by running it. The claims
about a GPU run on a GPU, marked `cuda` and skipped where none is visible; what the stage decides
without one is shown with torch.cuda pretending."""
from __future__ import annotations

import pytest
import torch
from torch import optim

from common.data import make_synthetic
from common.harness import load_stage, stage_options
from tests.helpers import assert_close, needs_gpus, pretend_gpus, reference_net, train_a_few_steps


@pytest.mark.stage9
def test_tensor_to_same_device_returns_itself():
    x = torch.zeros(2, 3)
    assert x.to("cpu") is x and x.to(x.device, x.dtype) is x
    assert x.to(torch.float64) is not x and x.dtype == torch.float32, "a copy, x untouched"
    assert x.to("cpu", copy=True) is not x


@pytest.mark.stage9
def test_choose_device_without_a_gpu(monkeypatch, capsys):
    pretend_gpus(monkeypatch, 0)
    stage = load_stage(9)
    assert stage.choose_device("auto") == stage.choose_device("cpu") == torch.device("cpu")
    with pytest.raises(SystemExit) as exit_info:  # the command line refuses a GPU that is not there
        stage_options(stage, ["--device", "cuda"])
    assert exit_info.value.code == 2 and "--device" in capsys.readouterr().err


@pytest.mark.stage9
def test_choose_device_with_two_gpus(monkeypatch, capsys):
    pretend_gpus(monkeypatch, 2)
    stage = load_stage(9)
    assert stage.choose_device("auto") == stage.choose_device("cuda") == torch.device("cuda")
    assert stage.choose_device(stage_options(stage, ["--device", "cuda:1"]).device) == torch.device("cuda:1")
    with pytest.raises(SystemExit) as exit_info:
        stage_options(stage, ["--device", "cuda:2"])
    assert exit_info.value.code == 2
    assert "cuda:2: no such cuda device here (2 visible)" in capsys.readouterr().err


@pytest.mark.stage9
@needs_gpus(1)
def test_module_to_cuda_keeps_the_same_parameter_objects():
    model = load_stage(9).Net()
    before = list(model.parameters())
    assert model.to("cuda:0") is model
    assert all(p is q and p.is_cuda for p, q in zip(model.parameters(), before))


@pytest.mark.stage9
@needs_gpus(1)
def test_tensor_to_cuda_returns_a_copy_and_leaves_the_tensor_where_it_was():
    x = torch.zeros(2, 3)
    x_cuda = x.to("cuda:0")
    assert x_cuda is not x and x_cuda.is_cuda and not x.is_cuda
    assert x_cuda.to("cuda:0") is x_cuda


@pytest.mark.stage9
@needs_gpus(1)
def test_an_optimizer_built_before_moving_to_the_gpu_still_trains():
    early = reference_net(9)  # float64: TF32 plays no part
    early_optimizer = optim.SGD(early.parameters(), lr=0.01, momentum=0.9)
    early.to("cuda:0")
    late = reference_net(9).to("cuda:0")
    train_a_few_steps(early, early_optimizer)
    train_a_few_steps(late, optim.SGD(late.parameters(), lr=0.01, momentum=0.9))
    # not bit for bit: a GPU may add in another order from run to run (atomics)
    assert_close(dict(early.named_parameters()), dict(late.named_parameters()), "float64", "parameters")


@pytest.mark.stage9
@needs_gpus(1)
def test_momentum_buffers_made_on_the_cpu_stay_there_when_the_model_moves():
    model = reference_net(9)
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train_a_few_steps(model, optimizer, steps=1)
    model.to("cuda:0")
    assert model.conv1.weight.is_cuda
    assert not optimizer.state[model.conv1.weight]["momentum_buffer"].is_cuda


@pytest.mark.stage9
@needs_gpus(1)
def test_optimizer_load_state_dict_puts_momentum_buffers_on_the_parameters_gpu():
    saved = reference_net(9)
    saved_optimizer = optim.SGD(saved.parameters(), lr=0.01, momentum=0.9)
    train_a_few_steps(saved, saved_optimizer, steps=1)
    model = reference_net(9).to("cuda:0")
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    optimizer.load_state_dict(saved_optimizer.state_dict())
    assert optimizer.state[model.conv1.weight]["momentum_buffer"].is_cuda


@pytest.mark.stage9
@needs_gpus(1)
def test_the_loader_pins_its_batches_for_a_gpu_only():
    stage = load_stage(9)
    data = make_synthetic(0, n_train=8, n_test=8)
    args = stage_options(stage, ["--batch-size", "4"])
    for device, pinned in ((torch.device("cuda:0"), True), (torch.device("cpu"), False)):
        train_loader, _ = stage.make_loaders(data, args, device)
        x, y = next(iter(train_loader))
        assert x.is_pinned() == pinned and y.is_pinned() == pinned, device


