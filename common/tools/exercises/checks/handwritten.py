"""Checks of the hand-written ops of stages 1-2: each against autograd of its forward."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from common.harness import relative_error, sample_batches, to_numpy
from common.tools.exercises.framework import (ONE_BATCH, Mismatch, Subject, by_autograd, expect_close,
                                              expect_dicts_close, random, returned, torch_dtype, torch_reference)
from common.weights import reference_params

# ---------------------------------------------------------------- each function alone: hand-written ops
CONV_INPUTS = "x (2, 6, 14, 14), weight (16, 6, 5, 5), bias (16,) and dout (2, 16, 10, 10), random, seed 0"
POOL_INPUT = "a (2, 3, 8, 8) input of 0s, 1s and 2s, so that most windows hold ties, seed 0"
LINEAR_INPUTS = "x (4, 84), weight (10, 84) and dout (4, 10), random, seed 0"


def conv_case():
    return dict(x=random(0, (2, 6, 14, 14)), weight=random(1, (16, 6, 5, 5)) / 10, bias=random(2, (16,))), \
        random(3, (2, 16, 10, 10))


def check_conv2d(s: Subject, dtype: str) -> None:
    inputs, dout = conv_case()
    out, _ = by_autograd(F.conv2d, {"input": inputs["x"], "weight": inputs["weight"], "bias": inputs["bias"]},
                         dout, dtype)
    got = s.module.conv2d(*s.native(dtype, inputs["x"], inputs["weight"], inputs["bias"]))
    got_out, cols = returned(got, 2, "the output and the windows (cols)")
    expect_close("output", got_out, out, dtype, CONV_INPUTS)
    # cols, in the layout stage 1 uses: rows (C, k, k), as the weight flattens; columns (N, OH, OW)
    windows = F.unfold(torch_of(inputs["x"], dtype), 5)  # (N, C*k*k, OH*OW)
    expect_close("cols", cols, windows.permute(1, 0, 2).reshape(6 * 25, -1), dtype, CONV_INPUTS)


def torch_of(array: np.ndarray, dtype: str):
    return torch.tensor(array, dtype=torch_dtype(dtype))


def check_conv2d_backward(s: Subject, dtype: str) -> None:
    inputs, dout = conv_case()
    _, grads = by_autograd(F.conv2d, {"input": inputs["x"], "weight": inputs["weight"], "bias": inputs["bias"]},
                           dout, dtype)
    x, weight, bias, native_dout = s.native(dtype, inputs["x"], inputs["weight"], inputs["bias"], dout)
    _, cols = s.module.conv2d(x, weight, bias)  # the windows this stage's forward keeps
    dweight, dbias = returned(s.module.conv2d_backward(native_dout, cols, weight), 2,
                              "the weight gradient and the bias gradient")
    expect_close("weight gradient", dweight, grads["weight"], dtype, CONV_INPUTS)
    expect_close("bias gradient", dbias, grads["bias"], dtype, CONV_INPUTS)


def check_conv2d_input_backward(s: Subject, dtype: str) -> None:
    inputs, dout = conv_case()
    _, grads = by_autograd(F.conv2d, {"input": inputs["x"], "weight": inputs["weight"], "bias": inputs["bias"]},
                           dout, dtype)
    native_dout, weight = s.native(dtype, dout, inputs["weight"])
    expect_close("input gradient", s.module.conv2d_input_backward(native_dout, weight), grads["input"], dtype,
                 CONV_INPUTS)


def check_relu_backward(s: Subject, dtype: str) -> None:
    z, dout = random(0, (4, 120)), random(1, (4, 120))
    _, grads = by_autograd(F.relu, {"input": z}, dout, dtype)
    native_z, native_dout = s.native(dtype, z, dout)
    expect_close("input gradient", s.module.relu_backward(native_dout, s.module.relu(native_z)), grads["input"],
                 dtype, "z (4, 120) and dout (4, 120), random, seed 0")


def pool_case():
    rng = np.random.default_rng(0)
    return rng.integers(0, 3, size=(2, 3, 8, 8)).astype(np.float64), rng.random((2, 3, 4, 4))


def check_max_pool2x2(s: Subject, dtype: str) -> None:
    x, dout = pool_case()
    out, grads = by_autograd(lambda input: F.max_pool2d(input, 2), {"input": x}, dout, dtype)
    got_out, winner = returned(s.module.max_pool2x2(*s.native(dtype, x)), 2, "the output and the winners")
    expect_close("output", got_out, out, dtype, POOL_INPUT)
    # the winners say where the gradient goes: the course's backward routes dout by them
    routed = s.course.max_pool2x2_backward(*s.native(dtype, dout), winner)
    expect_close("the gradient routed by its winners", routed, grads["input"], dtype, POOL_INPUT)


def check_max_pool2x2_backward(s: Subject, dtype: str) -> None:
    x, dout = pool_case()
    _, grads = by_autograd(lambda input: F.max_pool2d(input, 2), {"input": x}, dout, dtype)
    native_x, native_dout = s.native(dtype, x, dout)
    _, winner = s.module.max_pool2x2(native_x)
    expect_close("input gradient", s.module.max_pool2x2_backward(native_dout, winner), grads["input"], dtype,
                 POOL_INPUT)


def check_linear_backward(s: Subject, dtype: str) -> None:
    x, weight, bias, dout = random(0, (4, 84)), random(1, (10, 84)), random(2, (10,)), random(3, (4, 10))
    _, grads = by_autograd(F.linear, {"input": x, "weight": weight, "bias": bias}, dout, dtype)
    native_dout, native_x, native_weight = s.native(dtype, dout, x, weight)
    dweight, dbias, dx = returned(s.module.linear_backward(native_dout, native_x, native_weight), 3,
                                  "the weight gradient, the bias gradient and the input gradient")
    expect_close("weight gradient", dweight, grads["weight"], dtype, LINEAR_INPUTS)
    expect_close("bias gradient", dbias, grads["bias"], dtype, LINEAR_INPUTS)
    expect_close("input gradient", dx, grads["input"], dtype, LINEAR_INPUTS)


def check_cross_entropy(s: Subject, dtype: str) -> None:
    """Ordinary logits, then logits in the thousands, where exp() overflows unless the largest
    logit is subtracted first."""
    y = np.array([3, 0, 9, 3])
    for scale, on in ((3, "logits (4, 10), random, seed 0"), (3000, "logits (4, 10) in the thousands, seed 0")):
        logits = scale * random(0, (4, 10))
        loss, grads = by_autograd(lambda logits: F.cross_entropy(logits, torch.as_tensor(y)), {"logits": logits},
                                  np.array(1.0), dtype)
        [native_logits] = s.native(dtype, logits)
        on = f"{on}, labels {y.tolist()}"
        if s.driver.family == "hand-written gradients":
            got_loss, dlogits = returned(s.module.cross_entropy(native_logits, s.labels(y)), 2,
                                         "the loss and its gradient with respect to the logits")
        else:  # autograd differentiates the learner's loss
            native_logits.requires_grad_()
            got_loss = s.module.cross_entropy(native_logits, s.labels(y))
            got_loss.backward()
            dlogits = native_logits.grad
        try:
            expect_close("loss", got_loss, loss, dtype, on)
            expect_close("gradient of the loss with respect to the logits", dlogits, grads["logits"], dtype, on)
        except Mismatch as err:
            words = batch_factor(got_loss, loss, "loss") or batch_factor(dlogits, grads["logits"], "gradient")
            if words is not None:
                raise err.because(words, "summed-loss" if words.startswith("the loss") else None) from None
            if scale == 3:
                raise
            raise err.because("right on ordinary logits, wrong on logits in the thousands: exp() overflows there "
                              "unless each row's largest logit is subtracted first (which changes neither the "
                              "loss nor the softmax)") from None


def batch_factor(actual, expected, what: str, n: int = 4) -> str | None:
    """Words for a loss or gradient that is the batch size (or its inverse) times the mean's."""
    actual, expected = to_numpy(actual), to_numpy(expected)
    if actual.shape != expected.shape or not np.isfinite(actual).all() or not np.abs(expected).max() > 0:
        return None
    for factor, words in ((n, "sums over the batch where the mean is expected: divide by the batch size"),
                          (1 / n, "is divided by the batch size once too often")):
        if relative_error(actual, factor * expected) < 1e-6:
            return f"the {what} is {factor:.4g} times F.cross_entropy's, a factor of the batch size: it {words}"
    return None


def check_backward(s: Subject, dtype: str) -> None:
    """The chain rule: every parameter's gradient from one batch, against autograd."""
    params = reference_params(0)
    [(x, y)] = sample_batches(1, 4, seed=0)
    _, _, expected = torch_reference().reference_step(params, x, y, dtype)
    model = s.driver.build(params, dtype)
    logits, cache = s.module.forward_with_cache(model.net, *s.native(dtype, x))
    _, dlogits = s.module.cross_entropy(logits, s.labels(y))
    expect_dicts_close("{name} gradient", s.module.backward(model.net, cache, dlogits), expected, dtype, ONE_BATCH)
