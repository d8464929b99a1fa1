"""The whole file together, through the harness's driver."""
from __future__ import annotations

from common.harness import load_stage, one_step, sample_batches, to_numpy, trajectory
from common.tools.exercises.framework import (FIVE_BATCHES, GRADIENT_ORDER, LR, MOMENTUM, ONE_BATCH, Subject,
                                              expect_close, expect_losses, torch_reference)
from common.weights import reference_params


# ---------------------------------------------------------------- all of the learner's file together
def check_together(s: Subject, dtype: str) -> None:
    """Through the harness's driver: one step and five momentum steps against PyTorch and against
    the stage before, and the stage's own train_one_epoch."""
    reference = torch_reference()
    params = reference_params(0)
    [(x, y)] = sample_batches(1, 4, seed=0)
    logits, loss, grads = reference.reference_step(params, x, y, dtype)
    raw = s.driver.forward(s.driver.build(params, dtype), x)
    expect_close("logits", raw, logits, dtype, ONE_BATCH)  # in the stage's own dtype, before any conversion
    mine = one_step(s.module, params, x, y, dtype, LR, MOMENTUM)
    expect_step("one step", mine, logits, loss, grads, dtype)
    batches = sample_batches(5, 4, seed=1)
    losses, final = reference.reference_trajectory(params, batches, LR, MOMENTUM, dtype)
    my_steps = trajectory(s.module, params, batches, dtype, LR, MOMENTUM)
    expect_trajectory("5 momentum steps", my_steps, losses, final, dtype)
    if s.stage > 1:
        previous = load_stage(s.stage - 1)
        before = one_step(previous, params, x, y, dtype, LR, MOMENTUM)
        expect_step(f"against stage {s.stage - 1}, one step", mine, before["logits"], before["loss"],
                    before["grads"], dtype)
        before = trajectory(previous, params, batches, dtype, LR, MOMENTUM)
        expect_trajectory(f"against stage {s.stage - 1}, 5 momentum steps", my_steps, list(before["losses"]),
                          before["params"], dtype)
    model = s.driver.build(params, dtype)
    expect_trajectory("its own train_one_epoch", {"losses": s.driver.train_one_epoch(model, batches, LR, MOMENTUM),
                                                  "params": s.driver.get_params(model)}, losses, final, dtype)


def expect_step(what: str, got: dict, logits, loss, grads, dtype: str) -> None:
    """`got` from harness.one_step: float64 copies, compared within the tolerance of `dtype`."""
    expect_close(f"{what}: logits", got["logits"], logits, "float64", ONE_BATCH, tolerance_of=dtype)
    expect_close(f"{what}: loss", got["loss"], loss, "float64", ONE_BATCH, tolerance_of=dtype)
    for name in GRADIENT_ORDER:
        expect_close(f"{what}: {name} gradient", got["grads"][name], grads[name], "float64", ONE_BATCH,
                     tolerance_of=dtype)


def expect_trajectory(what: str, got: dict, losses, final: dict, dtype: str) -> None:
    """`got` as harness.trajectory returns it: losses, and float64 copies of the parameters."""
    expect_losses(f"{what}: ", list(got["losses"]), list(losses), dtype, FIVE_BATCHES)
    for name in GRADIENT_ORDER:
        expect_close(f"{what}: {name} afterwards", to_numpy(got["params"][name]), final[name], "float64",
                     FIVE_BATCHES, tolerance_of=dtype)
