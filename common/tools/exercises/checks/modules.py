"""Checks of the module stages: Net, dropout, the loop and evaluate."""
from __future__ import annotations

import inspect
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from common.harness import sample_batches, to_numpy
from common.tools.exercises.checks.handwritten import torch_of
from common.tools.exercises.framework import (FIVE_BATCHES, LR, MOMENTUM, ONE_BATCH, Mismatch, Subject, expect_close,
                                              expect_dicts_close, expect_losses, torch_reference)
from common.weights import PARAM_SHAPES, reference_params


# ---------------------------------------------------------------- each function alone: the module
def check_net_init(s: Subject, dtype: str) -> None:
    net = s.module.Net()
    shapes = {name: tuple(p.shape) for name, p in net.named_parameters()}
    if shapes != PARAM_SHAPES:
        raise Mismatch(f"Net() has the parameters {shapes}, expected {PARAM_SHAPES} (the tutorial's layers, "
                       "named conv1, conv2, fc1, fc2, fc3)")
    check_net_forward(s, dtype)


def check_net_forward(s: Subject, dtype: str) -> None:
    """The logits and autograd's gradients through them; with dropout, train and eval mode."""
    params = reference_params(0)
    [(x, y)] = sample_batches(1, 4, seed=0)
    logits, _, grads = torch_reference().reference_step(params, x, y, dtype)
    model = s.driver.build(params, dtype)
    got = s.driver.forward(model, x)
    expect_close("logits", got, logits, dtype, ONE_BATCH)
    F.cross_entropy(got, s.labels(y)).backward()
    expect_dicts_close("{name} gradient (by autograd through your forward)",
                       {n: p.grad for n, p in model.module.named_parameters()}, grads, dtype, ONE_BATCH)
    if "dropout" in inspect.signature(s.module.Net).parameters:
        check_dropout(s, params, x, logits, dtype)


def check_dropout(s: Subject, params: dict, x: np.ndarray, logits, dtype: str) -> None:
    """Net(0.5): in train mode, the tutorial's network with dropout before fc2 and fc3, drawing
    the same masks from the same seed; in eval mode, the network without dropout."""
    model = s.driver.build(params, dtype, dropout=0.5)
    torch.manual_seed(0)
    first, second = s.driver.forward(model, x), s.driver.forward(model, x)
    if torch.equal(first, second):
        raise Mismatch("with Net(0.5) in train mode, two forwards of one batch gave the same logits: "
                       "the dropout layer is not used")
    torch.manual_seed(0)
    expected = dropout_reference(params, x, 0.5, dtype)
    torch.manual_seed(0)
    expect_close("Net(0.5) in train mode, seed 0: logits", s.driver.forward(model, x), expected, dtype,
                 f"{ONE_BATCH}, against dropout before fc2 and fc3")
    model.net.eval()
    expect_close("Net(0.5) in eval mode (dropout off): logits", s.driver.forward(model, x), logits, dtype,
                 ONE_BATCH)


def dropout_reference(params: dict, x: np.ndarray, p: float, dtype: str):
    """The tests' reference network with F.dropout(p) before fc2 and fc3, as stage 8 places it."""
    w = {name: torch_of(value, dtype) for name, value in params.items()}
    h = F.max_pool2d(F.relu(F.conv2d(torch_of(x, dtype), w["conv1.weight"], w["conv1.bias"])), 2)
    h = F.max_pool2d(F.relu(F.conv2d(h, w["conv2.weight"], w["conv2.bias"])), 2).flatten(1)
    h = F.dropout(F.relu(F.linear(h, w["fc1.weight"], w["fc1.bias"])), p)
    h = F.dropout(F.relu(F.linear(h, w["fc2.weight"], w["fc2.bias"])), p)
    return F.linear(h, w["fc3.weight"], w["fc3.bias"])


@contextmanager
def modes_seen(net):
    """The model's training flag at every forward while this lasts."""
    modes: list[bool] = []
    handle = net.register_forward_pre_hook(lambda module, inputs: modes.append(module.training))
    try:
        yield modes
    finally:
        handle.remove()


def moves_watched(device):
    """A TorchFunctionMode that records which tensors had .to(device) (or .cuda()) called on them."""
    class MovesToDevice(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.moved: set[int] = set()

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.Tensor.cuda or (func is torch.Tensor.to and goes_to(device, args[1:], kwargs)):
                self.moved.add(id(args[0]))
            return func(*args, **kwargs)

    return MovesToDevice()


def goes_to(device, args, kwargs) -> bool:
    for value in (*args, kwargs.get("device")):
        if isinstance(value, (str, torch.device)):
            try:
                return torch.device(value) == device
            except RuntimeError:
                return False
    return False


def as_tensors(s: Subject, batches, dtype: str) -> list:
    """The batches as CPU tensors, the way a DataLoader hands them over."""
    return [(torch_of(x, dtype), s.labels(y)) for x, y in batches]


def best_device():
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


@contextmanager
def no_tf32():
    """Full float32 matrix products and convolutions on a GPU while this lasts: TF32, on by
    default for cuDNN's convolutions, keeps 10 bits of mantissa and would miss the tolerance."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def check_train_one_epoch(s: Subject, dtype: str) -> None:
    """The learner's own loop over five batches, against torch.optim.SGD over the same batches;
    from stage 8 on in the mode it sets, from stage 9 on with the batches it moves."""
    params = reference_params(0)
    batches = sample_batches(5, 4, seed=1)
    losses, final = torch_reference().reference_trajectory(params, batches, LR, MOMENTUM, dtype)
    device = best_device() if "device" in inspect.signature(s.module.train_one_epoch).parameters else None
    model = s.driver.build(params, dtype, **({"device": device} if device is not None else {}))
    tensors = as_tensors(s, batches, dtype) if device is not None else batches
    takes_dropout = hasattr(s.module, "Net") and "dropout" in inspect.signature(s.module.Net).parameters
    if takes_dropout:
        model.net.eval()  # train_one_epoch itself must switch to train mode
    with (modes_seen(model.net) if takes_dropout else nullcontext([])) as modes, no_tf32(), \
            (moves_watched(device) if device is not None else nullcontext()) as watch, \
            first_batch_moved(watch, tensors, "train_one_epoch", "training"):
        got = (s.driver.train_one_epoch(model, tensors, LR, MOMENTUM, as_given=True) if device is not None
               else s.driver.train_one_epoch(model, batches, LR, MOMENTUM))
    expect_losses("", got, losses, dtype, FIVE_BATCHES)
    expect_dicts_close("after 5 steps, {name}", s.driver.get_params(model), final, dtype, FIVE_BATCHES)
    if not all(modes):
        raise Mismatch("train_one_epoch ran its forward in eval mode (it was handed a model in eval mode, as "
                       "evaluate() leaves it): call model.train() first, or dropout stays off while training")
    if watch is not None:
        expect_moved(watch, tensors, "train_one_epoch", "training")


@contextmanager
def first_batch_moved(watch, batches, function: str, kind: str, labels: bool = True):
    """On a GPU, a batch left on the CPU makes the forward raise (the weights are on the GPU);
    then say that, as on the CPU, rather than torch's message about devices."""
    try:
        yield
    except NotImplementedError:  # a RuntimeError too, but one that means "not done yet"
        raise
    except RuntimeError:  # what torch raises for tensors on different devices
        if watch is not None:
            expect_moved(watch, batches[:1], function, kind, labels)
        raise


def expect_moved(watch, batches, function: str, kind: str, labels: bool = True) -> None:
    for i, (x, y) in enumerate(batches, 1):
        for name, tensor in (("x", x), ("y", y)) if labels else (("x", x),):
            if id(tensor) not in watch.moved:
                raise Mismatch(f"{function} did not call {name}.to(device) on {kind} batch {i}: on the CPU that "
                               f"changes nothing, but on a GPU the batch stays on the CPU while the model is on "
                               f"the GPU, and the step fails")


def check_evaluate(s: Subject, dtype: str) -> None:
    """Predictions for 6 test images, given a model in train mode with dropout 0.5: evaluate must
    switch to eval mode (and, from stage 9 on, move each batch to the device)."""
    params = reference_params(0)
    batches = sample_batches(2, 3, seed=4)
    x = np.concatenate([b[0] for b in batches])
    expected = torch_reference().reference_step(params, x, np.zeros(len(x), dtype=np.int64), dtype)[0].argmax(1)
    wants_device = "device" in inspect.signature(s.module.evaluate).parameters
    device = best_device() if wants_device else None
    model = s.driver.build(params, dtype, dropout=0.5, **({"device": device} if wants_device else {}))
    model.net.train()
    tensors = as_tensors(s, batches, dtype)
    with modes_seen(model.net) as modes, no_tf32(), \
            (moves_watched(device) if wants_device else nullcontext()) as watch, \
            first_batch_moved(watch, tensors, "evaluate", "test", labels=False):
        predicted = s.module.evaluate(model.net, *([device] if wants_device else []), tensors)
    if not modes or any(modes):
        raise Mismatch("evaluate ran its forward in train mode (it was handed a model in train mode, with "
                       "dropout 0.5): call model.eval() first, or dropout changes the predictions")
    predicted = to_numpy(predicted).astype(np.int64)
    if not np.array_equal(predicted, expected):
        raise Mismatch(f"evaluate predicted the classes {predicted.tolist()}, the network predicts "
                       f"{expected.tolist()} (6 synthetic test images, seed 4, {dtype})")
    if watch is not None:
        expect_moved(watch, tensors, "evaluate", "test", labels=False)
