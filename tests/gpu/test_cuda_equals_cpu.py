"""On a GPU: the stages that take a device compute on CUDA what they compute on the CPU.

Skipped where no CUDA GPU is visible; the claims about the GPU are in their stages' claims files
(tests/claims/), marked `cuda` too. TF32 is switched off: with it (on by default for cuDNN's
convolutions, off for matrix products), float32 keeps only 10 bits of mantissa and differs from
the CPU by ~1e-3.
"""
from __future__ import annotations

import inspect

import pytest
import torch

from common.harness import driver, load_stage, sample_batches, to_numpy
from tests.helpers import assert_close, needs_gpus, stages_where, takes_option

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")]

DEVICE_STAGES = stages_where(lambda stage: "device" in inspect.signature(stage.train_one_epoch).parameters)


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
    assert_close(cuda[0], cpu[0], dtype, "logits")
    assert_close(cuda[1], cpu[1], dtype, "losses")
    assert_close(cuda[2], cpu[2], dtype, "parameters after 5 steps")


@pytest.mark.parametrize("stage_name", stages_where(takes_option("--data-parallel")))
@needs_gpus(2)  # DataParallel needs two GPUs to split a batch
def test_dataparallel_over_gpus_equals_one_gpu(stage_name, params):
    d, batches = driver(stage_name), sample_batches(5, 8, seed=7)
    one = d.build(params, dtype="float64", device="cuda:0")
    many = d.build(params, dtype="float64", device="cuda:0", wrap="data_parallel")
    for x, y in batches:
        d.train_step(one, x, y, 0.01, 0.9)
        d.train_step(many, x, y, 0.01, 0.9)
    assert_close(d.get_params(many), d.get_params(one), "float64", "parameters after 5 steps")
