"""The recorder reads each step's loss and gradient norms back from where they were computed
every READ_EVERY steps (common/run/steps.py), never at every step, and still writes every step,
in order, and finds a divergence at the step where it happened."""
from __future__ import annotations

import argparse

import numpy as np
import torch

from common.run import progress, record, steps
from common.run.steps import READ_EVERY, StepLog
from common.weights import PARAM_SHAPES
from tests.helpers import run_main


def a_step_log(tmp_path) -> StepLog:
    rec = record.Record(tmp_path, "stage_test", {})
    bar = progress.Progress("stage_test", shown=False)
    bar.start(10**6)
    return StepLog(rec, bar, argparse.Namespace(lr=0.1, momentum=0.9))


def test_the_losses_are_read_back_once_every_read_every_steps(tmp_path, monkeypatch):
    """A read of a tensor's value (.item(), .tolist(), float()) is where a CPU waits for a GPU:
    counted on the losses and norms the recorder keeps, it happens once per READ_EVERY steps."""
    log = a_step_log(tmp_path)
    reads = []
    real_tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(t.shape) or real_tolist(t))
    monkeypatch.setattr(torch.Tensor, "item", lambda t: (_ for _ in ()).throw(AssertionError("item() read")))
    monkeypatch.setattr(torch.Tensor, "__float__", lambda t: (_ for _ in ()).throw(AssertionError("float() read")))
    grads = {name: torch.ones(shape) for name, shape in PARAM_SHAPES.items()}
    for step in range(1, 2 * READ_EVERY + 1):
        log.add(step, 1, torch.tensor(2.0) * step, grads)
        if step % READ_EVERY:
            assert len(reads) == 2 * (step // READ_EVERY), f"read at step {step}"
    assert len(reads) == 4, "twice: the losses and the norms of 50 steps, each in one read"
    rows = (tmp_path / "stage_test").glob("*/losses.csv")
    assert len(next(rows).read_text().splitlines()) == 1 + 2 * READ_EVERY


def test_every_step_is_written_in_order_with_its_own_loss(tmp_path):
    run = run_main(6, tmp_path, "--max-steps", str(READ_EVERY + 7))
    assert len(run.losses) == READ_EVERY + 7, "the steps after the last read are written at the end"
    steps_written = [int(line.split(",")[0]) for line in run.text("losses.csv").splitlines()[1:]]
    assert steps_written == list(range(1, READ_EVERY + 8))
    norms = run.text("grad_norms.csv").splitlines()[1:]
    assert len(norms) == READ_EVERY + 7 and all(float(v) > 0 for v in norms[0].split(",")[1:])


def test_a_divergence_is_named_at_its_step_though_it_was_read_later(tmp_path):
    log = a_step_log(tmp_path)
    for step in range(1, 8):
        log.pending.add(step, 1, torch.tensor(float("nan") if step >= 5 else 1.0), None)
    try:
        log.write_pending()
    except Exception as err:
        assert "the loss became nan at step 5" in str(err)
    else:
        raise AssertionError("no divergence found")
    written = next((tmp_path / "stage_test").glob("*/losses.csv")).read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in written] == [1, 2, 3, 4, 5], "up to the step that diverged"


def test_numpy_losses_and_gradients_are_kept_as_they_are(tmp_path):
    log = a_step_log(tmp_path)
    grads = {name: np.ones(shape) for name, shape in PARAM_SHAPES.items()}
    log.add(1, 1, np.float64(2.5), grads)
    (_, _, loss, norms), = log.pending.read()
    assert loss == 2.5 and len(norms) == len(record.LAYERS)
    assert abs(norms[0] - np.sqrt(6 * 3 * 5 * 5 + 6)) < 1e-12, "conv1: weight and bias together"
    assert steps.first_non_finite([(1, 1, 2.5, None)]) is None
