"""On a GPU: the stages that take a device compute on CUDA what they compute on the CPU.

Skipped where no CUDA GPU is visible. TF32 is switched off: with it (on by default for cuDNN's
convolutions, off for matrix products), float32 keeps only 10 bits of mantissa and differs from
the CPU by ~1e-3.
"""
from __future__ import annotations

import inspect

import pytest
import torch
from tests.helpers import STAGES, stage_param

from common.harness import TOLERANCES, driver, load_stage, relative_error, sample_batches, to_numpy

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")]

DEVICE_STAGES = [stage_param(n) for n in STAGES
                 if "device" in inspect.signature(load_stage(n).train_one_epoch).parameters]


@pytest.fixture(autouse=True)
def without_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def run_steps(d, params, batches, dtype, device):
    model = d.build(params, dtype=dtype, device=device)
    logits = to_numpy(d.forward(model, batches[0][0]))
    losses = [float(d.train_step(model, x, y, 0.01, 0.9)[0]) for x, y in batches]
    return logits, losses, {k: to_numpy(v) for k, v in d.get_params(model).items()}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("stage_name", DEVICE_STAGES)
def test_cuda_equals_cpu(stage_name, dtype, params):
    d, batches = driver(stage_name), sample_batches(5, 7, seed=6)
    cpu = run_steps(d, params, batches, dtype, torch.device("cpu"))
    cuda = run_steps(d, params, batches, dtype, torch.device("cuda:0"))
    rtol = TOLERANCES[dtype].rtol
    assert relative_error(cuda[0], cpu[0]) <= rtol, "logits"
    assert relative_error(cuda[1], cpu[1]) <= rtol, "losses"
    for name in cpu[2]:
        assert relative_error(cuda[2][name], cpu[2][name]) <= rtol, name


def test_to_cuda_moves_a_module_in_place_and_copies_a_tensor(params):
    model = load_stage(9).Net()
    assert model.to("cuda:0") is model and model.conv1.weight.is_cuda
    x = torch.zeros(2, 3, 32, 32)
    x_cuda = x.to("cuda:0")
    assert x_cuda is not x and x_cuda.is_cuda and not x.is_cuda


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DataParallel needs two GPUs to split a batch")
def test_dataparallel_over_gpus_equals_one_gpu(params):
    d, batches = driver(10), sample_batches(5, 8, seed=7)
    one = d.build(params, dtype="float64", device="cuda:0")
    many = d.build(params, dtype="float64", device="cuda:0", wrap="data_parallel")
    for x, y in batches:
        d.train_step(one, x, y, 0.01, 0.9)
        d.train_step(many, x, y, 0.01, 0.9)
    for name, value in d.get_params(one).items():
        assert relative_error(d.get_params(many)[name], value) <= TOLERANCES["float64"].rtol
