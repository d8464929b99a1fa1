"""Stage 11 on: each process counts the correct predictions on its share of the test set and
dist.all_reduce sums the counts. Two gloo processes must count what one process counts, on a
test set that two processes cannot split evenly (a strided share: each image exactly once, no
padding)."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from common.data import make_synthetic
from common.harness import driver, load_stage, stage_options
from common.weights import reference_params
from tests.helpers import free_port, stages_where

SHARDED = stages_where(lambda stage: hasattr(stage, "join_process_group"))
WORLD_SIZE = 2
TEST_IMAGES = 1001  # odd: the two shares hold 501 and 500 images


def evaluate_in_the_group(rank: int, stage_names: list[str], world_size: int, port: int, out_dir: str) -> None:
    """Each stage's evaluate() in one group (one group for all of them: a spawned process costs
    seconds, importing torch); what it counted and how many images its share held."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        data = make_synthetic(0, n_train=8, n_test=TEST_IMAGES)
        device = torch.device("cpu")
        for name in stage_names:
            stage = load_stage(name)
            _, test_loader, _ = stage.make_loaders(data, stage_options(stage, []), device)
            model = driver(stage).build(reference_params(0), "float32").net
            takes_autocast = "autocast" in inspect.signature(stage.evaluate).parameters
            extra = (torch.autocast("cpu", enabled=False),) if takes_autocast else ()
            correct = stage.evaluate(model, device, test_loader, *extra)
            np.save(f"{out_dir}/{name}-rank{rank}.npy", np.array([correct, len(test_loader.dataset)]))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def counted(tmp_path_factory):
    """counted[world_size][stage]: (correct, images seen) of each rank."""
    names = [param.values[0] for param in SHARDED]
    result = {}
    for world_size in (1, WORLD_SIZE):
        out_dir = tmp_path_factory.mktemp(f"world{world_size}")
        mp.start_processes(evaluate_in_the_group, args=(names, world_size, free_port(), str(out_dir)),
                           nprocs=world_size, start_method="spawn")
        result[world_size] = {name: [np.load(out_dir / f"{name}-rank{r}.npy").tolist() for r in range(world_size)]
                              for name in names}
    return result


@pytest.mark.slow  # two spawned processes, as the suite's other two-process tests
@pytest.mark.parametrize("stage_name", SHARDED)
def test_two_processes_count_what_one_counts_on_a_test_set_they_cannot_split_evenly(stage_name, counted):
    (one_correct, one_seen), = counted[1][stage_name]
    two = counted[WORLD_SIZE][stage_name]
    assert one_seen == TEST_IMAGES
    assert [seen for _, seen in two] == [501, 500], "each image in one share, none repeated"
    assert [correct for correct, _ in two] == [one_correct] * WORLD_SIZE, "every process has the sum"
