"""Stage 4's claims (torch.nn.functional), each shown by running it; and the per-image losses it
prints, in every stage that prints them."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers import EVENT_TIMEOUT, assert_close


@pytest.mark.stage4
def test_f_cross_entropy_is_log_softmax_then_nll_loss_averaged():
    logits, y = torch.randn(7, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), torch.arange(7)
    by_hand = -F.log_softmax(logits, dim=1)[torch.arange(7), y].mean()
    assert_close(F.cross_entropy(logits, y), F.nll_loss(F.log_softmax(logits, dim=1), y), "float64", "nll_loss")
    assert_close(F.cross_entropy(logits, y), by_hand, "float64", "by hand")


@pytest.mark.stage4
def test_f_cross_entropy_subtracts_the_largest_logit_before_exponentiating():
    logits, y = torch.tensor([[1000.0, 0.0, -5.0]]), torch.tensor([1])
    naive = -torch.log(logits.exp()[0, 1] / logits.exp().sum())  # exp(1000) overflows to inf
    assert not torch.isfinite(naive)
    assert F.cross_entropy(logits, y).item() == 1000.0, "-log softmax = 1000 + log(1 + e^-1005): 1000 in float32"


@pytest.mark.stage4
def test_reduction_none_gives_one_loss_per_image_and_the_default_is_their_mean():
    logits, y = torch.randn(5, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1)), torch.arange(5)
    losses = F.cross_entropy(logits, y, reduction="none")
    assert losses.shape == (5,)
    assert_close(losses.mean(), F.cross_entropy(logits, y), "float64", "F.cross_entropy")
    assert_close(losses.mean(), nn.CrossEntropyLoss()(logits, y), "float64", "nn.CrossEntropyLoss")


def printed_numbers(line: str, after: str) -> list[float]:
    return [float(v) for v in re.findall(r"[-+]?\d+\.\d+(?:e[-+]\d+)?", line.split(after, 1)[1])]


def convolution_ops(dtype: torch.dtype) -> set[str]:
    from torch.profiler import profile

    x, weight = torch.rand(4, 3, 32, 32, dtype=dtype), torch.rand(6, 3, 5, 5, dtype=dtype)
    with profile() as prof:
        F.conv2d(x, weight)
    return {event.name for event in prof.events()}


DIRECT = """
import torch, torch.nn.functional as F
F.conv2d(torch.rand(4, 3, 32, 32), torch.rand(6, 3, 5, 5))
"""


@pytest.mark.slow  # a process of its own, or compiling: seconds
@pytest.mark.stage4
@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="a PyTorch built without oneDNN")
def test_float32_convolutions_run_onednns_direct_algorithm_and_float64_ones_unfold_the_windows():
    """What the lesson says of F.conv2d on this CPU: float32 goes to oneDNN, which runs a direct
    convolution (no matrix of copied windows); float64 goes to ATen's slow_conv2d, which unfolds
    the windows into columns as stage 1's im2col does."""
    assert "aten::mkldnn_convolution" in convolution_ops(torch.float32)
    assert "aten::_slow_conv2d_forward" in convolution_ops(torch.float64)
    result = subprocess.run([sys.executable, "-c", DIRECT], env={**os.environ, "ONEDNN_VERBOSE": "1"},
                            capture_output=True, text=True, timeout=EVENT_TIMEOUT)
    [line] = [line for line in result.stdout.splitlines() if ",exec,cpu,convolution," in line]
    assert "alg:convolution_direct" in line, line
