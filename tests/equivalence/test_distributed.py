"""Stage 11: two processes under gloo, each on half of every batch, take the very steps that one
process (stage 6) takes on the whole batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from common.harness import driver, sample_batches, to_numpy
from common.weights import reference_params
from tests.helpers import assert_close, free_port

pytestmark = [pytest.mark.stage11, pytest.mark.slow]  # two processes started, each loading torch

WORLD_SIZE = 2
STEPS, BATCH_SIZE = 5, 8  # each process sees 4 images a step
LR, MOMENTUM = 0.01, 0.9  # in float64: the all-reduce sums two halves in another order than one batch does


def worker(rank: int, port: int, out_dir: str) -> None:
    """One process: join the group, train on its half of each batch, save what it saw."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        d = driver(11)
        model = d.build(reference_params(0), dtype="float64", wrap="distributed")
        half = slice(rank * BATCH_SIZE // WORLD_SIZE, (rank + 1) * BATCH_SIZE // WORLD_SIZE)
        saved = {}
        for step, (x, y) in enumerate(sample_batches(STEPS, BATCH_SIZE, seed=5)):
            loss, grads = d.train_step(model, x[half], y[half], LR, MOMENTUM)
            saved[f"loss/{step}"] = np.array(loss)
            saved.update({f"grad/{step}/{k}": to_numpy(v) for k, v in grads.items()})
        saved.update({f"param/{k}": to_numpy(v) for k, v in d.get_params(model).items()})
        np.savez(f"{out_dir}/rank{rank}.npz", **saved)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.start_processes(worker, args=(free_port(), str(out_dir)), nprocs=WORLD_SIZE, start_method="spawn")
    return [dict(np.load(out_dir / f"rank{r}.npz")) for r in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def single_process():
    """Stage 6 on the whole batches, step by step."""
    d = driver(6)
    model = d.build(reference_params(0), dtype="float64")
    steps = [d.train_step(model, x, y, LR, MOMENTUM) for x, y in sample_batches(STEPS, BATCH_SIZE, seed=5)]
    return steps, d.get_params(model)


def section(saved: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in saved.items() if k.startswith(prefix)}


def test_every_step_uses_the_whole_batch_gradient(ranks, single_process):
    steps, _ = single_process
    for rank, saved in enumerate(ranks):
        for step, (_, grads) in enumerate(steps):
            assert_close(section(saved, f"grad/{step}/"), grads, "float64", f"rank {rank}, step {step}: gradient")


def test_the_half_batch_losses_average_to_the_whole_batch_loss(ranks, single_process):
    steps, _ = single_process
    for step, (loss, _) in enumerate(steps):
        mean_loss = np.mean([float(saved[f"loss/{step}"]) for saved in ranks])
        assert_close(mean_loss, loss, "float64", f"step {step}: the mean of the half-batch losses")


def test_parameters_after_five_steps_are_the_single_process_ones(ranks, single_process):
    _, final = single_process
    for rank, saved in enumerate(ranks):
        assert_close(section(saved, "param/"), final, "float64", f"rank {rank}: parameters")
