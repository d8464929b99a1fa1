"""Stage 11: two processes under gloo, each on half of every batch, take the very steps that one
process (stage 6) takes on the whole batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from tests.helpers import free_port

from common.harness import driver, sample_batches, to_numpy, worst_relative_error
from common.weights import reference_params

pytestmark = pytest.mark.stage11

WORLD_SIZE = 2
STEPS, BATCH_SIZE = 5, 8  # each process sees 4 images a step
LR, MOMENTUM = 0.01, 0.9
DISTRIBUTED_RTOL = 1e-9  # float64; the all-reduce sums two halves in another order than one batch


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
            name, error = worst_relative_error(section(saved, f"grad/{step}/"), grads)
            assert error <= DISTRIBUTED_RTOL, f"rank {rank}, step {step}: gradient of {name} off by {error:.1e}"


def test_the_half_batch_losses_average_to_the_whole_batch_loss(ranks, single_process):
    steps, _ = single_process
    for step, (loss, _) in enumerate(steps):
        mean_loss = np.mean([float(saved[f"loss/{step}"]) for saved in ranks])
        assert abs(mean_loss - loss) <= DISTRIBUTED_RTOL * abs(loss)


def test_parameters_after_five_steps_are_the_single_process_ones(ranks, single_process):
    _, final = single_process
    for rank, saved in enumerate(ranks):
        name, error = worst_relative_error(section(saved, "param/"), final)
        assert error <= DISTRIBUTED_RTOL, f"rank {rank}: {name} off by {error:.1e}"


def stop_worker(rank: int, port: int, out_dir: str) -> None:
    """A signal reaches one process only (rank 1, at step 23): both must stop after the same step."""
    import signal as signal_module

    from common.run import signals
    from common.run.guard import Guard

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        guard = Guard("stage11_distributed", shown=rank == 0)
        stopped_at = None
        for step in range(1, 60):
            if rank == 1 and step == 23:
                signals._received.append(signal_module.SIGINT)  # as the handler notes a Ctrl-C
            try:
                guard.stop_if_asked(step, every_step=True)
            except KeyboardInterrupt:
                stopped_at = step
                break
        np.save(f"{out_dir}/stopped{rank}.npy", np.array(stopped_at if stopped_at is not None else -1))
    finally:
        dist.destroy_process_group()


def test_a_signal_to_one_process_stops_every_process_after_the_same_step(tmp_path):
    mp.start_processes(stop_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, start_method="spawn")
    stopped = [int(np.load(tmp_path / f"stopped{r}.npy")) for r in range(WORLD_SIZE)]
    assert stopped == [30, 30], "they agree every 10 steps: the first agreement after step 23 is at step 30"
