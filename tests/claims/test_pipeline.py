"""Stages 7-10: the data pipeline, train/eval modes, device transfer and DataParallel."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from common.data import make_synthetic
from common.harness import (TOLERANCES, driver, load_stage, relative_error, sample_batches, stage_options, to_numpy,
                            trajectory)


@pytest.mark.stage7
def test_the_tutorial_transform_equals_the_hand_written_normalisation():
    images = make_synthetic(0, n_train=16, n_test=1).train_x
    by_hand = load_stage(1).normalise(images, np.float32)
    transform = load_stage(7).make_transform(torch.float32)
    by_torchvision = torch.stack([transform(image) for image in images])
    assert by_torchvision.dtype == torch.float32
    assert np.array_equal(by_torchvision.numpy(), by_hand), "bit for bit, not just close"


@pytest.mark.stage7
def test_the_loader_batches_and_its_shuffle_follows_the_seed(tmp_path):
    stage = load_stage(7)
    data = make_synthetic(0, n_train=40, n_test=10)
    args = stage_options(stage, ["--batch-size", "8", "--seed", "3"])
    orders = []
    for _ in range(2):
        train_loader, test_loader = stage.make_loaders(data, args)
        x, y = next(iter(train_loader))
        assert x.shape == (8, 3, 32, 32) and y.dtype == torch.int64
        orders.append(torch.cat([y for _, y in train_loader]))
    assert torch.equal(orders[0], orders[1])
    assert sorted(orders[0].tolist()) == sorted(data.train_y.tolist())
    assert len(test_loader.dataset) == 10


@pytest.mark.stage8
def test_dropout_differs_in_train_mode_and_vanishes_in_eval_mode(params):
    d = driver(8)
    [(x, _)] = sample_batches(1, 4)
    reference = to_numpy(d.forward(d.build(params, dtype="float64"), x))
    model = d.build(params, dtype="float64", dropout=0.5)
    model.net.train()
    first, second = to_numpy(d.forward(model, x)), to_numpy(d.forward(model, x))
    assert relative_error(first, second) > 1e-3
    model.net.eval()
    first, second = to_numpy(d.forward(model, x)), to_numpy(d.forward(model, x))
    assert np.array_equal(first, second)
    assert relative_error(first, reference) <= TOLERANCES["float64"].rtol


@pytest.mark.stage8
def test_evaluate_predicts_every_test_image_in_eval_mode(params):
    stage = load_stage(8)
    data = make_synthetic(0, n_train=10, n_test=1500)  # more than one evaluation batch
    _, test_loader = stage.make_loaders(data, stage_options(stage))
    model = driver(stage).build(params).net
    model.train()
    predicted = stage.evaluate(model, test_loader)
    assert not model.training, "evaluate() leaves the model in eval mode"
    assert predicted.shape == (1500,) and predicted.dtype == torch.int64
    with torch.no_grad():
        expected = model(torch.stack([test_loader.dataset[i][0] for i in range(1500)])).argmax(dim=1)
    assert torch.equal(predicted, expected)


@pytest.mark.stage9
def test_module_to_moves_in_place_but_tensor_to_returns_a_new_tensor(params):
    """On a CPU-only machine the dtype stands in for the device: .to() treats both alike."""
    model = load_stage(9).Net()
    moved = model.to(torch.float64)
    assert moved is model and model.conv1.weight.dtype == torch.float64
    x = torch.zeros(2, 3, 32, 32)
    x64 = x.to(torch.float64)
    assert x64 is not x and x.dtype == torch.float32 and x64.dtype == torch.float64


def pretend_gpus(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


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
    assert stage.choose_device("auto") == stage.choose_device("cuda") == torch.device("cuda:0")
    assert stage.choose_device(stage_options(stage, ["--device", "cuda:1"]).device) == torch.device("cuda:1")
    with pytest.raises(SystemExit) as exit_info:
        stage_options(stage, ["--device", "cuda:2"])
    assert exit_info.value.code == 2
    assert "cuda:2: no such CUDA device here (2 visible)" in capsys.readouterr().err


@pytest.mark.stage10
def test_dataparallel_device_ids_start_at_the_models_gpu(monkeypatch):
    """DataParallel keeps the parameters on device_ids[0] and gathers there: with the model on
    cuda:1, device_ids must begin with 1 (its default, every GPU in order, begins with 0)."""
    pretend_gpus(monkeypatch, 3)
    stage = load_stage(10)
    assert stage.gpus_starting_at(torch.device("cuda:1")) == [1, 0, 2]
    assert stage.gpus_starting_at(torch.device("cuda:0")) == [0, 1, 2]


@pytest.mark.stage10
def test_dataparallel_prefixes_the_state_dict_but_not_the_canonical_names(params):
    d = driver(10)
    model = d.build(params, wrap="data_parallel")
    assert isinstance(model.net, nn.DataParallel)
    assert all(key.startswith("module.") for key in model.net.state_dict())
    assert list(d.get_params(model)) == list(params)
    assert list(model.net.module.state_dict()) == list(params)


@pytest.mark.stage10
def test_dataparallel_computes_what_the_plain_module_computes(params):
    batches = sample_batches(5, 4, seed=4)
    plain = trajectory(load_stage(9), params, batches, "float64")
    wrapped = trajectory(load_stage(10), params, batches, "float64", wrap="data_parallel")
    for name, value in wrapped["params"].items():
        assert relative_error(value, plain["params"][name]) <= TOLERANCES["float64"].rtol


@pytest.mark.stage10
def test_a_run_saves_weights_that_load_into_a_plain_net(tmp_path):
    stage = load_stage(10)
    summary = stage.main(["--data", "synthetic", "--max-steps", "5", "--data-parallel", "--out", str(tmp_path)])
    state = torch.load(f"{summary['record']}/model.pt", weights_only=True)
    assert not any(key.startswith("module.") for key in state)
    net = stage.Net()
    net.load_state_dict(state)  # raises on any missing or unexpected key


@pytest.mark.stage11
def test_each_distributed_process_takes_the_gpu_of_its_local_rank(monkeypatch):
    pretend_gpus(monkeypatch, 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    stage = load_stage(11)
    assert stage.choose_device("auto") == stage.choose_device("cuda") == torch.device("cuda:1")


@pytest.mark.stage11
def test_a_process_without_a_gpu_of_its_own_is_refused_in_one_line(monkeypatch, capsys):
    """Under torchrun, --device auto means cuda:LOCAL_RANK: a second process on a one-GPU machine
    has no GPU of its own, and the command line says so instead of a CUDA traceback."""
    pretend_gpus(monkeypatch, 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(SystemExit) as exit_info:
        stage_options(11, [])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "LOCAL_RANK=1 but only 1 GPU(s) are visible" in err
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert stage_options(11, []).device == "auto"
