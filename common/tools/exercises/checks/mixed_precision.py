"""Checks of stage 12: the dtype autocast uses, and the loop under autocast with its GradScaler."""
from __future__ import annotations

from unittest import mock

import torch

from common.harness import Driver, sample_batches
from common.tools.exercises.diagnoses import loop_behaviour
from common.tools.exercises.framework import FIVE_BATCHES, Mismatch, Subject, expect_dicts_close, expect_losses, once
from common.weights import reference_params


@once
def check_autocast_dtype(s: Subject, dtype: str) -> None:
    """The CPU, and pretended CUDA GPUs with and without bfloat16."""
    cases = ((torch.device("cpu"), True, torch.bfloat16), (torch.device("cuda:0"), True, torch.bfloat16),
             (torch.device("cuda:0"), False, torch.float16))
    for device, bf16, expected in cases:
        with mock.patch.object(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16):
            got = s.module.autocast_dtype(device)
        if got != expected:
            gpu = "" if device.type == "cpu" else f" on a GPU {'with' if bf16 else 'without'} bfloat16"
            raise Mismatch(f"autocast_dtype({device.type}){gpu} returned {got}, expected {expected}"
                           + (": float16 is for GPUs that cannot compute in bfloat16" if expected is torch.bfloat16
                              else ": without bfloat16 a GPU autocasts to float16"))


class WatchedScaler(torch.amp.GradScaler):
    """A GradScaler that notes what the loop asks of it, and whether optimizer.step() ran inside
    its step()."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []
        self.stepping = False
        self.direct_steps = 0  # optimizer.step() calls made outside scaler.step()

    def scale(self, outputs):
        self.calls.append("scale")
        return super().scale(outputs)

    def step(self, optimizer, *args, **kwargs):
        self.calls.append("step")
        self.stepping = True
        try:
            return super().step(optimizer, *args, **kwargs)
        finally:
            self.stepping = False

    def update(self, new_scale=None):
        self.calls.append("update")
        return super().update(new_scale)


def check_autocast_loop(s: Subject, dtype: str) -> None:
    """The loop under bfloat16 autocast (the CPU's), then under float16 with a GradScaler that
    acts, each beside the course's own loop in the same setting; in float64 autocast is off."""
    from common.tools.exercises.checks.modules import LOOP_BATCHES, run_loop

    params = reference_params(0)
    batches = sample_batches(LOOP_BATCHES, 4, seed=1)
    settings = [("bfloat16", False)] + ([("float16", True)] if dtype == "float32" else [])
    for amp_dtype, scaled in settings:
        def setup(model, amp_dtype=amp_dtype, scaled=scaled):
            model.autocast = torch.autocast("cpu", dtype=getattr(torch, amp_dtype), enabled=dtype == "float32")
            model.scaler = WatchedScaler("cpu", enabled=scaled)

        watch, run, model = run_loop(s, params, batches, dtype, setup=setup)
        course = Subject(s.course, s.course, s.stage, s.path)
        _, course_run, course_model = run_loop(course, params, batches, dtype, setup=setup)
        found = loop_behaviour(watch, LOOP_BATCHES, dropout=True)
        if found is None and watch.error is None:
            found = scaler_behaviour(model.scaler, watch)
        if found is None and dtype == "float32":
            found = autocast_behaviour(watch, amp_dtype)
        if found is not None:
            raise found
        if watch.error is not None:
            raise watch.error
        on = f"{FIVE_BATCHES}, under {amp_dtype} autocast" + (" with a GradScaler that acts" if scaled else "")
        expect_losses("against the course's loop: ", run.losses, course_run.losses, dtype, on)
        expect_dicts_close("against the course's loop, after 5 steps: {name}", Driver(s.module).get_params(model),
                           Driver(s.course).get_params(course_model), dtype, on)


def autocast_behaviour(watch, amp_dtype: str) -> Mismatch | None:
    for i, (step, layers) in enumerate(zip([st for st in watch.steps() if st[0].kind == "forward"],
                                           watch.layer_dtypes), 1):
        if amp_dtype not in layers:
            return Mismatch(f"at step {i} the forward ran outside autocast (the layers' outputs were "
                            f"{sorted(layers)}): put criterion(model(x), y) inside `with autocast:`")
        backward = next((e for e in step if e.kind == "backward"), None)
        if backward is not None and backward.autocast:
            return Mismatch(f"at step {i} the backward ran inside the autocast block: leave it before "
                            "scaler.scale(loss).backward(), as PyTorch's AMP recipe does (the backward uses the "
                            "dtypes its forward chose anyway)")
        if backward is not None and backward.dtype != "float32":
            return Mismatch(f"at step {i} the loss was {backward.dtype}: compute criterion(...) inside "
                            "`with autocast:`, where autocast computes the loss in float32")
    return None


def scaler_behaviour(scaler: WatchedScaler, watch) -> Mismatch | None:
    steps = len([st for st in watch.steps() if st[0].kind == "forward"])
    counts = {name: scaler.calls.count(name) for name in ("scale", "step", "update")}
    if counts["scale"] < steps:
        return Mismatch(f"scaler.scale(loss) was called {counts['scale']} times in {steps} steps: call "
                        "scaler.scale(loss).backward(); with float16 the scaler then unscales gradients that "
                        "were scaled")
    if counts["step"] < steps:
        return Mismatch(f"scaler.step(optimizer) was called {counts['step']} times in {steps} steps: it unscales "
                        "the gradients before the step (with float16 they are otherwise 65536 times too large) "
                        "and skips a step whose gradients hold inf; call it instead of optimizer.step()")
    if counts["update"] < steps:
        return Mismatch(f"scaler.update() was called {counts['update']} times in {steps} steps: call it after "
                        "scaler.step(optimizer), so that the scale adapts (it halves after an inf)")
    return None
