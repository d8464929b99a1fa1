"""From what a check saw to the likely cause, in words: the order of a loop's calls, a .grad not
cleared, a mode not set, a batch not moved, a loss given probabilities or summed, a value off by
a factor. Each returns a Mismatch (words first; the numbers, where there are any, after) or None."""
from __future__ import annotations

import numpy as np

from common.harness import TOLERANCES, to_numpy
from common.tools.exercises.framework import Mismatch
from common.tools.exercises.watch import StepWatch


def loop_behaviour(watch: StepWatch, batches: int, function: str = "train_one_epoch",
                   max_steps: int | None = None, dropout: bool = False) -> Mismatch | None:
    """What the loop did wrong, step by step, before any number is looked at. After the loop
    raised (watch.error), only what the steps before it show: the steps it completed."""
    steps = [step for step in watch.steps() if step and step[0].kind == "forward"]
    stopped = watch.error is not None
    expected = batches if max_steps is None else min(batches, max_steps)
    if dropout and any(step[0].training is False for step in steps):
        first = next(i for i, step in enumerate(steps, 1) if step[0].training is False)
        return Mismatch(f"{function} ran its forward in eval mode from step {first} (it was handed a model in "
                        "eval mode, as evaluate() leaves it): call model.train() first, or dropout stays off while "
                        "training", gallery="train-mode-never-restored")
    for i, step in enumerate(steps, 1):
        if step[0].on_host or any(e.kind == "loss" and e.on_host for e in step):
            which = "x" if step[0].on_host else "y"
            return Mismatch(f"at step {i} the {'model' if which == 'x' else 'loss'} computed with {which} as the "
                            f"loader gave it, not with the copy {which}.to(device) returns: write "
                            f"{which} = {which}.to(device). On the CPU that changes nothing, but on a GPU the batch "
                            "stays on the CPU while the model is on the GPU, and the step fails",
                            gallery="to-device-unassigned")
        for event in step:
            if event.kind == "loss" and event.probabilities:
                return Mismatch(f"at step {i} the loss was given probabilities (every row sums to 1): the loss "
                                "applies the softmax itself, so give it the logits, model(x) as it is",
                                gallery="softmax-before-loss")
            if event.kind == "loss" and event.reduction == "sum":
                return Mismatch(f"at step {i} the loss summed over the batch (reduction='sum'): the course's loss is "
                                "the mean (the default), and its learning rate is chosen for the mean",
                                gallery="summed-loss")
    for i, step in enumerate(steps[:expected], 1):
        kinds = [e.kind for e in step]
        if stopped and "update" in kinds and "backward" not in kinds:
            return Mismatch(f"at step {i} the update ran before loss.backward() filled .grad, and found no "
                            "gradient: call loss.backward() first, then the update", gallery="step-before-backward")
        if stopped and not ("backward" in kinds and "update" in kinds):
            return None  # the step the loop raised in: its exception says more
        if "backward" not in kinds:
            return Mismatch(f"step {i} has no loss.backward(): nothing fills .grad for the update")
        if "update" not in kinds:
            return Mismatch(f"step {i} has no update (optimizer.step(), or the stage's sgd_momentum_update): "
                            "the weights never change")
        if kinds.index("update") < kinds.index("backward"):
            moved = "so it found no gradients and the weights did not move" if i == 1 else \
                "so each step used the gradients of the step before"
            update = next(e for e in step if e.kind == "update")
            if update.empty:
                moved = "after zero_grad had emptied .grad, so it found no gradients and the weights did not move"
            return Mismatch(f"at step {i} the update ran before loss.backward() filled .grad, {moved}: call "
                            "loss.backward() first, then optimizer.step()", gallery="step-before-backward")
        update = next(e for e in step if e.kind == "update")
        if len(update.empty) == len(watch.parameters):
            return Mismatch(f"at step {i} the update found every .grad empty: .grad was cleared between "
                            "loss.backward() and the update; clear it before the backward (or after the update)")
        backward = next(e for e in step if e.kind == "backward")
        if backward.stale:
            steps_added = "1 and 2" if i == 2 else f"1 to {i}"
            return Mismatch(f"step {i} used the gradients of steps {steps_added} added: .grad was not cleared before "
                            f"loss.backward() ({backward.stale[0]}.grad still held step {i - 1}'s), and backward() "
                            "adds to what .grad holds; clear it first (optimizer.zero_grad())",
                            gallery="forgotten-zero-grad")
    if stopped:
        return None
    if len(steps) != expected:
        if max_steps is not None and len(steps) > expected:
            return Mismatch(f"{function} went on after args.max_steps = {max_steps} steps ({len(steps)} steps on "
                            f"{batches} batches): return once run.steps reaches args.max_steps")
        return Mismatch(f"{function} took {len(steps)} steps on {batches} batches"
                        + (f" with args.max_steps = {max_steps}" if max_steps else ""))
    logs = watch.logs()
    if logs != expected:
        return Mismatch(f"run.log_step(...) was called {logs} times in {expected} steps: call it once after each "
                        "step (the record and the progress bar count the steps by it, and --max-steps too)")
    if hasattr(watch.module, "show_first_step") and watch.first_step_shown != [1]:
        return Mismatch("show_first_step(loss, conv1.bias.grad) was called after the steps "
                        f"{watch.first_step_shown or 'none'}: call it once, after step 1 (every stage prints step "
                        "1's loss and gradient there)")
    return None


def factor(actual: dict, expected: dict, start: dict) -> tuple[float, float]:
    """How the learner's change of the weights compares with the expected one: the factor c that
    best makes one the other, and how far from c times the other it is (relative)."""
    got = np.concatenate([to_numpy(actual[n]).ravel() - start[n].ravel() for n in start])
    want = np.concatenate([to_numpy(expected[n]).ravel() - start[n].ravel() for n in start])
    scale = float(want @ want)
    if scale == 0:
        return float("nan"), float("inf")
    c = float(got @ want) / scale
    residual = float(np.linalg.norm(got - c * want) / max(np.linalg.norm(c * want), 1e-300))
    return c, residual


def update_words(c: float, residual: float, dtype: str, what: str = "the first update") -> tuple[str, str | None] | None:
    """Words for an update that is a whole factor off, or None."""
    if residual > 100 * TOLERANCES[dtype].rtol or abs(c - 1) < 1e-3:
        return None
    if abs(c) < 1e-6:
        return f"{what} did not move the weights at all", None
    gallery = "lr-ten-times" if abs(c - 10) < 0.05 else None
    return (f"{what} is {c:.4g} times torch.optim.SGD's, in every weight alike: the learning rate, or the "
            f"gradient, is scaled by {c:.4g}"), gallery


def loss_words(first_loss: float, expected: float, batch_size: int) -> tuple[str, str | None] | None:
    """Words for a loss that is a whole factor off, or None."""
    if expected == 0 or not np.isfinite(first_loss):
        return None
    ratio = first_loss / expected
    if abs(ratio - batch_size) < 1e-3 * batch_size:
        return (f"the loss of step 1 is {ratio:.4g} times PyTorch's, the batch size: it sums over the batch where "
                "the mean is expected (F.cross_entropy's default reduction)"), "summed-loss"
    if abs(ratio - 1) > 1e-3 and abs(ratio - round(ratio)) < 1e-6 * ratio:
        return f"the loss of step 1 is {ratio:.4g} times PyTorch's: a factor too many in the loss", None
    return None
