"""Checks of the step's pieces: the update, zero_grad and forward of the autograd stages."""
from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from common.harness import sample_batches
from common.tools.exercises.checks.handwritten import torch_of
from common.tools.exercises.diagnoses import factor, update_words
from common.tools.exercises.framework import (MOMENTUM, ONE_BATCH, Mismatch, Subject, expect_close, expect_dicts_close,
                                              random, sgd_reference, torch_reference)
from common.weights import PARAM_NAMES, PARAM_SHAPES, reference_params

# ---------------------------------------------------------------- each function alone: the step's pieces
UPDATE_STEPS, UPDATE_LR = 3, 0.1
UPDATE_INPUTS = f"the reference weights and random gradients, seed 10, lr {UPDATE_LR}, momentum {MOMENTUM}"


def check_sgd_momentum_update(s: Subject, dtype: str) -> None:
    """Three updates with given gradients, against torch.optim.SGD fed the same gradients: step 1
    shows the learning rate (there the buffer is the gradient itself), step 2 the momentum."""
    params = reference_params(0)
    grads = [{n: random(10 + step, PARAM_SHAPES[n]) for n in PARAM_NAMES} for step in range(UPDATE_STEPS)]
    expected = sgd_reference(params, grads, UPDATE_LR, MOMENTUM, dtype)
    model = s.driver.build(params, dtype)
    tensors = parameters_of(s, model)
    for step, step_grads in enumerate(grads):
        update(s, model, step_grads, dtype)
        if s.driver.family != "hand-written gradients":
            replaced = next((n for n, p in tensors.items() if parameters_of(s, model)[n] is not p), None)
            if replaced is not None:
                raise Mismatch(f"{replaced} is a new tensor after the update: change each parameter in place "
                               "(p -= ...), so that backward() goes on filling its .grad")
        got = s.driver.get_params(model)
        try:
            expect_dicts_close(f"after step {step + 1} of {UPDATE_STEPS}: {{name}}", got, expected[step], dtype,
                               UPDATE_INPUTS, order=PARAM_NAMES)
        except Mismatch as err:
            raise explained(err, step, got, expected, params, dtype) from None


def explained(err: Mismatch, step: int, got: dict, expected: list[dict], start: dict, dtype: str) -> Mismatch:
    """The words for an update that differs: a factor off at step 1, or right at step 1 and not later."""
    if step == 0:
        words = update_words(*factor(got, expected[0], start), dtype)
        if words is not None:
            return err.because(*words)
        return err.because("the first update, where the buffer is the gradient itself, is not p -= lr * grad")
    return err.because(f"step 1 matches torch.optim.SGD's, step {step + 1} does not: from the second step on the "
                       "buffer is buf = momentum * buf + grad (no factor on grad), then p -= lr * buf")


def parameters_of(s: Subject, model) -> dict:
    if isinstance(model.net, dict):
        return dict(model.net)
    return dict(model.module.named_parameters())


def update(s: Subject, model, grads: dict, dtype: str) -> None:
    """One call of the learner's update, with the gradients where this stage's update reads them."""
    if s.driver.family == "hand-written gradients":
        native = dict(zip(grads, s.native(dtype, *grads.values())))
        s.module.sgd_momentum_update(model.net, model.momentum_buffers, native, UPDATE_LR, MOMENTUM)
        return
    for name, p in parameters_of(s, model).items():
        p.grad = torch_of(grads[name], dtype)
    s.module.sgd_momentum_update(model.net, model.momentum_buffers, UPDATE_LR, MOMENTUM)


def check_zero_grad(s: Subject, dtype: str) -> None:
    """Before any backward (every .grad None), then after one (every .grad full)."""
    model = s.driver.build(reference_params(0), dtype)
    try:
        s.module.zero_grad(model.net)
    except AttributeError as err:
        raise Mismatch("zero_grad(params) failed before the first backward, where every .grad is still None: "
                       "set p.grad = None, or zero it only where it is not None",
                       f"AttributeError: {err}") from None
    for name, p in model.net.items():
        p.grad = torch_of(np.ones(PARAM_SHAPES[name]), dtype)  # as a previous backward() leaves it
    s.module.zero_grad(model.net)
    for name in PARAM_NAMES:
        grad = model.net[name].grad
        if grad is not None and bool(grad.any()):
            raise Mismatch(f"after zero_grad(params), {name}.grad still holds the previous step's gradient, "
                           "and the next backward() adds to it", gallery="forgotten-zero-grad")


def check_forward(s: Subject, dtype: str) -> None:
    """forward(params, x) of the autograd stages: the logits, and the gradients autograd derives from them."""
    params = reference_params(0)
    [(x, y)] = sample_batches(1, 4, seed=0)
    logits, _, grads = torch_reference().reference_step(params, x, y, dtype)
    model = s.driver.build(params, dtype)
    got = s.module.forward(model.net, *s.native(dtype, x))
    expect_close("logits", got, logits, dtype, ONE_BATCH)
    F.cross_entropy(got, s.labels(y)).backward()
    expect_dicts_close("{name} gradient (by autograd through your forward)",
                       {n: p.grad for n, p in model.net.items()}, grads, dtype, ONE_BATCH)
