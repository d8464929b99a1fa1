"""Each kind of mistake a learner makes, planted in every stage where it can occur, fails its check
with a diagnosis in words (the likely cause first, then the numbers), names the gallery entry of
`make mistakes` that shows it where there is one, and leaves every other blank "passed"."""
from __future__ import annotations

import pytest

from common.tools.exercises import EXERCISES, check_here, report
from common.tools.mistakes import gallery_note
from tests.helpers import planted

ZERO_GRAD_6 = "        optimizer.zero_grad()  # every parameter's .grad to None, as model.zero_grad() did\n"
BACKWARD_3 = "        loss.backward()  # fills p.grad of every parameter\n"
UPDATE_3 = "        sgd_momentum_update(params, momentum_buffers, args.lr, args.momentum)\n"
UPDATE_5 = "        sgd_momentum_update(model, momentum_buffers, args.lr, args.momentum)\n"
STEP = "        loss.backward()\n        optimizer.step()\n"
MOVE = "        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)"
SCALED_STEP = ("        scaler.scale(loss).backward()  # outside autocast: each op's backward in its forward's dtype\n"
               "        scaler.step(optimizer)\n")

ORDER = "the update ran before loss.backward() filled .grad"
ADDED = "used the gradients of steps 1 and 2 added: .grad was not cleared before loss.backward()"
TRAIN_MODE = "ran its forward in eval mode from step 1"
EVAL_MODE = "evaluate ran its forward in train mode"
NOT_MOVED = "not with the copy x.to(device) returns"
NOT_MOVED_EVAL = "not with the copy .to(device) returns"

# kind -> {case: (stage, function, old (or (old, times)), new, words the diagnosis must hold, gallery entry)}
MISTAKES = {
    "an operation in the wrong order": {
        "stage 3, the update before the backward": (
            3, "train_one_epoch", BACKWARD_3 + UPDATE_3, UPDATE_3 + BACKWARD_3, [ORDER], "step-before-backward"),
        "stage 4, the update before the backward": (
            4, "train_one_epoch", BACKWARD_3 + UPDATE_3, UPDATE_3 + BACKWARD_3, [ORDER], "step-before-backward"),
        "stage 5, the update before the backward": (
            5, "train_one_epoch", "        loss.backward()\n" + UPDATE_5, UPDATE_5 + "        loss.backward()\n", [ORDER],
            "step-before-backward"),
        "stage 6, optimizer.step() before loss.backward()": (
            6, "train_one_epoch", STEP, "        optimizer.step()\n        loss.backward()\n",
            [ORDER, "the weights did not move"], "step-before-backward"),
        "stage 6, zero_grad between backward and step": (
            6, "train_one_epoch", ZERO_GRAD_6 + "        loss = criterion(model(x), y)\n" + STEP,
            "        loss = criterion(model(x), y)\n        loss.backward()\n        optimizer.zero_grad()\n"
            "        optimizer.step()\n", ["the update found every .grad empty"], None),
        "stage 8, optimizer.step() before loss.backward()": (
            8, "train_one_epoch", STEP, "        optimizer.step()\n        loss.backward()\n", [ORDER],
            "step-before-backward"),
        "stage 9, optimizer.step() before loss.backward()": (
            9, "train_one_epoch", STEP, "        optimizer.step()\n        loss.backward()\n", [ORDER],
            "step-before-backward"),
        "stage 12, scaler.step() before the backward": (
            12, "train_one_epoch", SCALED_STEP,
            "        scaler.step(optimizer)\n        scaler.scale(loss).backward()\n", [ORDER], "step-before-backward"),
    },
    "a call forgotten": {
        **{f"stage {n}, zero_grad forgotten": (n, "train_one_epoch", line, "", [ADDED], "forgotten-zero-grad")
           for n, line in ((3, "        zero_grad(params)\n"), (4, "        zero_grad(params)\n"),
                           (5, "        model.zero_grad()  # every parameter's .grad to None, at once\n"),
                           (6, ZERO_GRAD_6), (8, ZERO_GRAD_6), (9, ZERO_GRAD_6), (12, ZERO_GRAD_6))},
        "stage 3, a zero_grad that clears nothing": (
            3, "zero_grad", "        p.grad = None\n", "        pass\n",
            ["conv1.weight.grad still holds the previous step's gradient"], "forgotten-zero-grad"),
        **{f"stage {n}, run.log_step forgotten": (
            n, "train_one_epoch", "        run.log_step(loss)", "        pass",
            ["run.log_step(...) was called 0 times in 5 steps"], None) for n in (3, 6, 12)},
        "stage 6, the --max-steps return forgotten": (
            6, "train_one_epoch", "        if run.steps == args.max_steps:\n            return\n", "",
            ["went on after args.max_steps = 3 steps"], None),
        "stage 6, show_first_step forgotten": (
            6, "train_one_epoch", "            show_first_step(loss, model.conv1.bias.grad)", "            pass",
            ["show_first_step(loss, conv1.bias.grad) was called after the steps none"], None),
        **{f"stage {n}, model.train() forgotten": (n, "train_one_epoch", "    model.train()  # dropout on\n", "",
                                                   [TRAIN_MODE, "call model.train() first"],
                                                   "train-mode-never-restored") for n in (8, 9, 12)},
        **{f"stage {n}, model.eval() forgotten": (
            n, "evaluate", "    model.eval()  # dropout off: every prediction uses the whole network\n", "",
            [EVAL_MODE, "call model.eval() first"], "eval-in-train-mode") for n in (8, 9, 11, 12)},
        "stage 9, the batch never moved": (9, "train_one_epoch", MOVE + "  # to the device\n", "",
                                           [NOT_MOVED], "to-device-unassigned"),
        "stage 11, sampler.set_epoch forgotten": (
            11, "main", "            sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every process\n",
            "", ["sampler.set_epoch was never called: every epoch drew epoch 1's order again"],
            "sampler-epoch-never-set"),
        **{f"stage {n}, dist.all_reduce forgotten": (
            n, "evaluate", "    dist.all_reduce(correct)  # the sum over every process, on every process\n", "",
            ["evaluate never called dist.all_reduce"], None) for n in (11, 12)},
        "stage 12, scaler.update() forgotten": (12, "train_one_epoch", "        scaler.update()\n", "",
                                               ["scaler.update() was called 0 times in 5 steps"], None),
        "stage 12, the loss not scaled": (
            12, "train_one_epoch", "        scaler.scale(loss).backward()", "        loss.backward()",
            ["scaler.scale(loss) was called 0 times in 5 steps"], None),
        "stage 12, autocast left out of the loop": (
            12, "train_one_epoch", "        with autocast:  # the forward and the loss, each op in the dtype autocast "
                                   "chooses for it\n            loss = criterion(model(x), y)\n",
            "        loss = criterion(model(x), y)\n", ["the forward ran outside autocast"], None),
        "stage 13, the compile left out": (
            13, "main", "            model.compile()  # in place: from its first call on, forward runs through "
                        "torch.compile\n", "            pass\n",
            ["with --compile on, your main() compiled 0 time(s), the course's 1"], None),
    },
    "a result not assigned": {
        "stage 9, x.to(device) without x = in the loop": (
            9, "train_one_epoch", MOVE, "        x.to(device, non_blocking=True), y.to(device, non_blocking=True)",
            [NOT_MOVED], "to-device-unassigned"),
        **{f"stage {n}, x.to(device) without x = in evaluate": (
            n, "evaluate", MOVE, "        x.to(device, non_blocking=True), y.to(device, non_blocking=True)",
            [NOT_MOVED_EVAL], "to-device-unassigned") for n in (9, 11, 12)},
        "stage 12, x.to(device) without x = in the loop": (
            12, "train_one_epoch", MOVE, "        x.to(device, non_blocking=True), y.to(device, non_blocking=True)",
            [NOT_MOVED], "to-device-unassigned"),
        **{f"stage {n}, the update not assigned": (
            n, "sgd_momentum_update", old, old.replace(" -= ", " - "), ["the first update did not move the weights at all"],
            None) for n, old in ((1, "params[name] -= lr * momentum_buffers[name]"),
                                 (2, "params[name] -= lr * momentum_buffers[name]"),
                                 (3, "p -= lr * momentum_buffers[name]"), (5, "p -= lr * momentum_buffers[name]"))},
        "stage 10, the DataParallel wrap not assigned": (
            10, "main", "model = nn.DataParallel(model, device_ids=gpus_starting_at(device))",
            "nn.DataParallel(model, device_ids=gpus_starting_at(device))",
            ["the model is still the Net here", "assign it (model = ...)"], None),
        "stage 11, the DDP wrap not assigned": (
            11, "main", "model = DistributedDataParallel(model)", "DistributedDataParallel(model)",
            ["the model is still the Net here"], None),
        "stage 13, torch.compile(model) instead of the in-place compile": (
            13, "main", "            model.compile()", "            torch.compile(model)",
            ["torch.compile(model) returns a new module"], None),
    },
    "a mode not set": {
        **{f"stage {n}, model.train() as model.eval()": (
            n, "train_one_epoch", "    model.train()  # dropout on\n", "    model.eval()\n", [TRAIN_MODE],
            "train-mode-never-restored") for n in (8, 9)},
        **{f"stage {n}, model.eval() as model.train()": (
            n, "evaluate", "    model.eval()  # dropout off: every prediction uses the whole network\n",
            "    model.train()\n", [EVAL_MODE], "eval-in-train-mode") for n in (8, 9)},
    },
    "a value off by a factor": {
        **{f"stage {n}, the learning rate ten times": (
            n, "sgd_momentum_update", old, old.replace("lr *", "10 * lr *"),
            ["the first update is 10 times torch.optim.SGD's, in every weight alike"], "lr-ten-times")
           for n, old in ((1, "params[name] -= lr * momentum_buffers[name]"),
                          (2, "params[name] -= lr * momentum_buffers[name]"),
                          (3, "p -= lr * momentum_buffers[name]"), (5, "p -= lr * momentum_buffers[name]"))},
        "stage 1, a dampened momentum": (
            1, "sgd_momentum_update", "else momentum * buf + grad", "else momentum * buf + (1 - momentum) * grad",
            ["step 1 matches torch.optim.SGD's, step 2 does not", "after step 2 of 3: conv1.weight differs by"],
            None),
        "stage 1, the gradient of the loss not divided by the batch size": (
            1, "cross_entropy", "return loss, dlogits / n", "return loss, dlogits",
            ["the gradient is 4 times F.cross_entropy's, a factor of the batch size"], None),
    },
    "a wrong reduction": {
        "stage 1, a summed loss": (1, "cross_entropy", "loss = -log_probs[np.arange(n), y].mean()",
                                   "loss = -log_probs[np.arange(n), y].sum()",
                                   ["the loss is 4 times F.cross_entropy's", "sums over the batch"], "summed-loss"),
        "stage 2, a summed loss": (2, "cross_entropy", "loss = -log_probs[torch.arange(n), y].mean()",
                                   "loss = -log_probs[torch.arange(n), y].sum()",
                                   ["the loss is 4 times F.cross_entropy's", "sums over the batch"], "summed-loss"),
        "stage 4, reduction='sum'": (4, "train_one_epoch", "loss = F.cross_entropy(forward(params, x), y)",
                                     'loss = F.cross_entropy(forward(params, x), y, reduction="sum")',
                                     ["the loss summed over the batch (reduction='sum')"], "summed-loss"),
        **{f"stage {n}, reduction='sum'": (n, "train_one_epoch", "loss = criterion(model(x), y)",
                                           'loss = F.cross_entropy(model(x), y, reduction="sum")',
                                           ["the loss summed over the batch (reduction='sum')"], "summed-loss")
           for n in (6, 8, 9)},
        "stage 6, softmax before the loss": (6, "train_one_epoch", "loss = criterion(model(x), y)",
                                             "loss = criterion(F.softmax(model(x), dim=1), y)",
                                             ["the loss was given probabilities"], "softmax-before-loss"),
    },
}
CASES = [pytest.param(kind, *case, id=f"{kind}: {name}", marks=getattr(pytest.mark, f"stage{case[0]}"))
         for kind, cases in MISTAKES.items() for name, case in cases.items()]


def status_of(out: str, name: str) -> str:
    line = next(line for line in out.splitlines() if line.strip().startswith(name + " "))
    return line.strip()[len(name):].strip()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # what a mistake's numbers may overflow to
@pytest.mark.parametrize("kind, stage, function, old, new, says, gallery", CASES)
def test_a_planted_mistake_fails_with_its_diagnosis(kind, stage, function, old, new, says, gallery, tmp_path):
    old, times = old if isinstance(old, tuple) else (old, 1)
    path = planted(tmp_path, stage, function, old, new, times)
    out = report(stage, path, check_here(stage, path))
    blamed = [name for name in EXERCISES[stage].blanks if status_of(out, name).startswith("wrong: ")]
    assert blamed, out
    for words in says:
        assert words in out, out
    if gallery is not None:
        assert gallery_note(gallery) in out, out
    if function != "main":  # a wrong line of main() may show in each check that runs main()
        assert blamed == [function] or blamed == [n for n in EXERCISES[stage].blanks if function in n], out
        for other in set(EXERCISES[stage].blanks) - {function}:
            assert status_of(out, other) == "passed", out
    assert "Traceback" not in out
    assert out.splitlines()[-1].startswith("verdict: not yet")


def test_the_words_come_before_the_numbers(tmp_path):
    """A forgotten zero_grad in stage 6 once read "the loss of step 3 differs by 6.3e-04": now the
    cause comes first; where numbers follow, they say what differs, its tolerance and the input."""
    path = planted(tmp_path, 1, "sgd_momentum_update", "else momentum * buf + grad",
                   "else momentum * buf + (1 - momentum) * grad")
    detail = check_here(1, path)["sgd_momentum_update"].detail.splitlines()
    assert detail[0].startswith("step 1 matches torch.optim.SGD's")
    assert detail[1].startswith("after step 2 of 3: conv1.weight differs by") and "(tolerance 1e-10, float64)" in \
        detail[1]


def test_every_kind_of_mistake_is_planted_in_more_than_one_stage():
    for kind, cases in MISTAKES.items():
        assert len({case[0] for case in cases.values()}) >= 2, kind
