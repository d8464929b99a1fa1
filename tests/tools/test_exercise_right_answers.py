"""Right answers written another way pass every check, the whole program included: the checker
judges what the code does, not how it is spelled."""
from __future__ import annotations

import pytest

from common.tools.exercises import check_here, passed, report
from tests.helpers import planted

ZERO_GRAD_6 = "        optimizer.zero_grad()  # every parameter's .grad to None, as model.zero_grad() did\n"
MOVE = "        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)"

# (stage, function, the course's text, the same answer written another way)
RIGHT_ANSWERS = {
    "choose_device: torch.device('cuda:0') for 'cuda'": (
        9, "choose_device", "    return torch.device(name)", '    return torch.device("cuda:0" if name == "cuda" else name)'),
    "choose_device: the accelerator of LOCAL_RANK as a string": (
        11, "choose_device", 'torch.device(name, int(os.environ.get("LOCAL_RANK", "0")))',
        'torch.device(f"{name}:{os.environ.get(\'LOCAL_RANK\', 0)}")'),
    "zero_grad: p.grad zeroed where it is not None": (
        3, "zero_grad", "        p.grad = None\n", "        if p.grad is not None:\n            p.grad.zero_()\n"),
    "zero_grad: p.grad = torch.zeros_like(p)": (3, "zero_grad", "        p.grad = None\n",
                                                "        p.grad = torch.zeros_like(p)\n"),
    "the loop: model.zero_grad() for optimizer.zero_grad()": (
        6, "train_one_epoch", ZERO_GRAD_6, "        model.zero_grad()\n"),
    "the loop: zero_grad(set_to_none=False)": (
        6, "train_one_epoch", ZERO_GRAD_6, "        optimizer.zero_grad(set_to_none=False)\n"),
    "the loop: F.cross_entropy(model(x), y) for criterion(model(x), y)": (
        6, "train_one_epoch", "loss = criterion(model(x), y)", "loss = F.cross_entropy(model(x), y)"),
    "the loop: model.train(True)": (8, "train_one_epoch", "    model.train()", "    model.train(True)"),
    "evaluate: model.train(False)": (8, "evaluate", "    model.eval()", "    model.train(False)"),
    "the loop: each tensor moved on its own line, blocking": (
        9, "train_one_epoch", MOVE, "        x = x.to(device)\n        y = y.to(device=device)"),
    "evaluate: x.to(device) inside the call": (
        9, "evaluate", MOVE + "\n        predicted = model(x).argmax(dim=1)",
        "        y = y.to(device)\n        predicted = model(x.to(device)).argmax(dim=1)"),
    "Net.forward: x.reshape(len(x), -1) for torch.flatten(x, 1)": (
        5, "Net.forward", "x = torch.flatten(x, 1)", "x = x.reshape(len(x), -1)"),
    "cross_entropy: amax for max(...).values": (
        2, "cross_entropy", "logits.max(dim=1, keepdim=True).values", "logits.amax(dim=1, keepdim=True)"),
    "the update: the momentum buffer changed in place": (
        1, "sgd_momentum_update", "        momentum_buffers[name] = grad.copy() if buf is None else momentum * buf + grad\n",
        "        if buf is None:\n            momentum_buffers[name] = grad.copy()\n        else:\n"
        "            buf *= momentum\n            buf += grad\n"),
    "the update: p.add_(buf, alpha=-lr)": (
        3, "sgd_momentum_update", "p -= lr * momentum_buffers[name]", "p.add_(momentum_buffers[name], alpha=-lr)"),
    "make_loaders: the DataLoader's options by position": (
        7, "make_loaders", "train_set, batch_size=args.batch_size, shuffle=True,",
        "train_set, args.batch_size, True,"),
    "gpus_starting_at: a device without an index taken as GPU 0": (
        10, "gpus_starting_at", "first = device.index if device.index is not None else torch.cuda.current_device()",
        "first = device.index or 0"),
    "the wrap: device_ids given by position": (
        10, "main", "nn.DataParallel(model, device_ids=gpus_starting_at(device))",
        "nn.DataParallel(model, gpus_starting_at(device))"),
    "evaluate: all_reduce with op=SUM spelled out": (
        11, "evaluate", "dist.all_reduce(correct)", "dist.all_reduce(correct, op=dist.ReduceOp.SUM)"),
    "autocast through torch.amp.autocast, by keyword": (
        12, "main", "torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp)",
        "torch.amp.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp)"),
    "can_compile: the compilers looked up one by one": (
        13, "can_compile", "    return device.type != \"cpu\" or any(shutil.which(c) for c in compilers if c)",
        "    if device.type != \"cpu\":\n        return True\n    for c in compilers:\n"
        "        if c and shutil.which(c):\n            return True\n    return False"),
}


@pytest.mark.parametrize("stage, function, old, new", [
    pytest.param(*answer, id=name, marks=getattr(pytest.mark, f"stage{answer[0]}"))
    for name, answer in RIGHT_ANSWERS.items()])
def test_a_right_answer_written_another_way_passes(stage, function, old, new, tmp_path):
    path = planted(tmp_path, stage, function, old, new)
    outcomes = check_here(stage, path)
    assert passed(outcomes, stage), report(stage, path, outcomes)
