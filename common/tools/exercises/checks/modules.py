"""Checks of the module stages: Net, dropout, the loop and evaluate."""
from __future__ import annotations

import inspect
from contextlib import contextmanager, nullcontext
from unittest import mock

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from common.harness import group_of_one, sample_batches
from common.tools.exercises.checks.handwritten import torch_of
from common.tools.exercises.diagnoses import factor, loop_behaviour, loss_words, update_words
from common.tools.exercises.framework import (FIVE_BATCHES, LR, MOMENTUM, ONE_BATCH, Mismatch, Subject, expect_close,
                                              expect_dicts_close, expect_losses, torch_reference)
from common.run import StepLog
from common.tools.exercises.watch import StepWatch, host_watched, on_host
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


def as_tensors(s: Subject, batches, dtype: str, host: bool = False) -> list:
    """The batches as CPU tensors, the way a DataLoader hands them over; `host`: on the watched
    host device, where .to(device) makes the copy the model must compute with."""
    tensors = [(torch_of(x, dtype), s.labels(y)) for x, y in batches]
    return [(on_host(x), on_host(y)) for x, y in tensors] if host else tensors


def takes_dropout(s: Subject) -> bool:
    return hasattr(s.module, "Net") and "dropout" in inspect.signature(s.module.Net).parameters


# ---------------------------------------------------------------- the training loop, watched
LOOP_BATCHES = 5


def run_loop(s: Subject, params: dict, batches: list, dtype: str, max_steps: int | None = None,
             setup=None) -> tuple[StepWatch, StepLog, object]:
    """The learner's train_one_epoch over `batches`, watched; from stage 8 on handed a model in eval
    mode (as evaluate() leaves it), from stage 9 on batches on the watched host device."""
    moves = s.takes("train_one_epoch", "device")
    model = s.driver.build(params, dtype, **s.driver.main_options() if setup is None else {})
    if setup is not None:
        setup(model)
    if takes_dropout(s):
        model.net.eval()
    optimizer = s.driver.optimizer(model, LR, MOMENTUM) if s.driver.family == "module with optimizer" else None
    named = dict(model.net) if isinstance(model.net, dict) else dict(model.module.named_parameters())
    net = None if isinstance(model.net, dict) else model.module
    watch = StepWatch(named, s.module, net=net, optimizer=optimizer)
    run = StepLog(on_step=watch.logged)
    given = as_tensors(s, batches, dtype, host=True) if moves else batches
    with watch.watching(), host_watched():
        try:
            s.driver.train_one_epoch(model, given, LR, MOMENTUM, max_steps=max_steps, run=run, as_given=moves)
        except (Mismatch, NotImplementedError):
            raise
        except Exception as err:  # what the loop did before it raised may say why it raised
            watch.error = err
    return watch, run, model


def check_train_one_epoch(s: Subject, dtype: str) -> None:
    """The learner's own loop over five batches, watched step by step (the order of its calls, the
    clearing of .grad, the mode, what the loss is given, the batches it moves), then its numbers
    against torch.optim.SGD over the same batches; then once more, stopped by --max-steps 3."""
    if s.driver.mixed_precision:
        from common.tools.exercises.checks.mixed_precision import check_autocast_loop

        return check_autocast_loop(s, dtype)
    params = reference_params(0)
    batches = sample_batches(LOOP_BATCHES, 4, seed=1)
    losses, final = torch_reference().reference_trajectory(params, batches, LR, MOMENTUM, dtype)
    _, after_one = torch_reference().reference_trajectory(params, batches[:1], LR, MOMENTUM, dtype)
    watch, run, model = run_loop(s, params, batches, dtype)
    found = loop_behaviour(watch, LOOP_BATCHES, dropout=takes_dropout(s))

    def compare() -> None:
        expect_losses("", run.losses, losses, dtype, FIVE_BATCHES)
        expect_dicts_close("after 5 steps, {name}", s.driver.get_params(model), final, dtype, FIVE_BATCHES)

    if found is not None:
        raise with_numbers(found, compare) if watch.error is None else found
    if watch.error is not None:
        raise watch.error
    try:
        compare()
    except Mismatch as err:
        raise loop_numbers_explained(err, run.losses, losses, watch.after_first_update, after_one, params,
                                     dtype) from None
    watch, run, model = run_loop(s, params, batches, dtype, max_steps=3)
    found = loop_behaviour(watch, LOOP_BATCHES, max_steps=3, dropout=takes_dropout(s))
    if found is not None:
        raise found
    if watch.error is not None:
        raise watch.error


def with_numbers(found: Mismatch, compare) -> Mismatch:
    """A diagnosis in words, with the first number that shows it, where one differs."""
    try:
        compare()
    except Mismatch as numbers:
        return Mismatch(found.words, numbers.words, found.gallery)
    return found


def loop_numbers_explained(err: Mismatch, got_losses, losses, after_first, expected_first, start, dtype):
    """Numbers that differ, under the words of their likely cause."""
    if got_losses:
        words = loss_words(float(got_losses[0]), losses[0], 4)
        if words is not None:
            return err.because(*words)
    if after_first is not None:
        words = update_words(*factor(after_first, expected_first, start), dtype)
        if words is not None:
            return err.because(*words)
    if got_losses and abs(float(got_losses[0]) - losses[0]) > abs(losses[0]) * 1e-3:
        return err.because("the loss of step 1 differs, before any update: the forward or the loss is not the "
                           "course's")
    return err.because("step 1 matches torch.optim.SGD's and a later one does not: what carries over from one "
                       "step to the next (the clearing of .grad, the momentum) is not the course's")


# ---------------------------------------------------------------- evaluate, watched
OTHER_PROCESS_COUNTED = 7  # what the pretended other process of a group adds to the all-reduced count


def check_evaluate(s: Subject, dtype: str) -> None:
    """Predictions for 6 test images, given a model in train mode with dropout 0.5: evaluate must
    switch to eval mode; from stage 9 on it gets batches on the watched host device; from stage
    11 on it all-reduces its count, in a pretended group where another process counted 7; in
    stage 12 it runs its forward under the autocast it is given."""
    params = reference_params(0)
    batches = sample_batches(2, 3, seed=4)
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    expected = torch_reference().reference_step(params, x, np.zeros(len(x), dtype=np.int64), dtype)[0].argmax(1)
    correct = int((expected == y).sum())
    if s.takes("evaluate", "autocast"):  # bfloat16 may flip a close call: count as the course does
        correct = int(evaluated(s, s.course.evaluate, params, batches, dtype)[0]) - OTHER_PROCESS_COUNTED
    result, modes, met, reduced, layers = evaluated(s, s.module.evaluate, params, batches, dtype)
    if not modes or any(modes):
        raise Mismatch("evaluate ran its forward in train mode (it was handed a model in train mode, with "
                       "dropout 0.5): call model.eval() first, or dropout changes the predictions",
                       gallery="eval-in-train-mode")
    if met:
        raise Mismatch(f"evaluate computed ({met[0]}) with a batch as the loader gave it, not with the copy "
                       ".to(device) returns: write x, y = x.to(device), y.to(device). On the CPU that changes "
                       "nothing; on a GPU the batch stays on the CPU and the forward or the comparison fails",
                       gallery="to-device-unassigned")
    if s.takes("evaluate", "autocast") and dtype == "float32" and "bfloat16" not in layers:
        raise Mismatch(f"evaluate's forward ran outside autocast (the layers' outputs were {sorted(layers)}): "
                       "put the forward inside `with autocast:`")
    if hasattr(s.course, "join_process_group"):
        check_reduced_count(result, reduced, correct)
        return
    if not isinstance(result, int):
        raise Mismatch(f"evaluate returned a {type(result).__name__}: return how many are correct, as an int "
                       "(.item())")
    if result != correct:
        raise Mismatch(f"evaluate counted {result} correct; the network predicts {expected.tolist()} for labels "
                       f"{y.tolist()}, so {correct} are (6 synthetic test images, seed 4, {dtype})")


def evaluated(s: Subject, evaluate, params: dict, batches, dtype: str):
    """evaluate() of the learner (or the course) on a model in train mode with dropout 0.5, watched:
    (what it returned, the mode at each forward, what met a host batch, what it all-reduced, the
    dtypes of the layers' outputs)."""
    model = s.driver.build(params, dtype, dropout=0.5)
    model.net.train()
    wants_device = s.takes("evaluate", "device")
    tensors = as_tensors(s, batches, dtype, host=wants_device)
    arguments = [model.net, *([torch.device("cpu")] if wants_device else []), tensors]
    if s.takes("evaluate", "autocast"):
        arguments.append(torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "float32"))
    reduced: list = []
    layers: set = set()
    hooks = [layer.register_forward_hook(lambda layer, inputs, out: layers.add(str(out.dtype).removeprefix("torch.")))
             for name, layer in model.net.named_children() if name.startswith(("conv", "fc"))]
    try:
        with modes_seen(model.net) as modes, host_watched() as met, \
                (all_reduce_pretended(reduced) if hasattr(s.course, "join_process_group") else nullcontext()):
            result = evaluate(*arguments)
            met = list(met)
    finally:
        for hook in hooks:
            hook.remove()
    return result, modes, met, reduced, layers


@contextmanager
def all_reduce_pretended(reduced: list):
    """dist.all_reduce in a group of one, pretending another process that counted 7."""
    original = dist.all_reduce

    def all_reduce(tensor, *args, **kwargs):
        reduced.append(tensor)
        result = original(tensor, *args, **kwargs)
        tensor += OTHER_PROCESS_COUNTED
        return result

    with group_of_one(), mock.patch.object(dist, "all_reduce", all_reduce):
        yield


def check_reduced_count(result, reduced: list, correct: int) -> None:
    if not reduced:
        raise Mismatch("evaluate never called dist.all_reduce: each process counts only its share of the test "
                       "set, so the count must be summed over the processes")
    expected = correct + OTHER_PROCESS_COUNTED
    if not isinstance(result, int):
        raise Mismatch(f"evaluate returned a {type(result).__name__}: return the sum as an int (.item())")
    if result != expected:
        raise Mismatch(f"evaluate returned {result}, expected {expected}: this process counted {correct} and the "
                       f"other (pretended) process {OTHER_PROCESS_COUNTED}; return the count that "
                       "dist.all_reduce summed in place")
