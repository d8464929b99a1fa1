"""Stage 11's claims (DistributedDataParallel, DistributedSampler), each shown by running it; what
DDP does across processes is shown in two real processes under gloo."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DistributedSampler

from common.harness import load_stage, stage_options
from common.seed import seed_everything
from tests.helpers import REPEATABLE, a_batch, assert_close, assert_differs, free_port, pretend_gpus, reference_net

pytestmark = pytest.mark.stage11


def test_distributed_sampler_pads_by_repeating_samples():
    dataset, processes = list(range(10)), 3
    shares = [list(DistributedSampler(dataset, num_replicas=processes, rank=r, shuffle=True, seed=0))
              for r in range(processes)]
    assert [len(s) for s in shares] == [4, 4, 4], "ceil(10 / 3) each"
    order = [i for step in zip(*shares) for i in step]  # rank r takes every 3rd index from r
    assert sorted(set(order)) == dataset, "every image is seen ..."
    assert order[10:] == order[:2], "... and the first two of the shuffled order twice"


def test_set_epoch_reshuffles_alike_on_every_process():
    dataset = list(range(12))

    def shares(epoch):
        samplers = [DistributedSampler(dataset, num_replicas=2, rank=r, seed=0) for r in range(2)]
        for sampler in samplers:
            sampler.set_epoch(epoch)
        return [list(s) for s in samplers]

    assert shares(1) == shares(1), "same seed and epoch: same order, on every process"
    assert shares(1) != shares(2)
    assert sorted(shares(2)[0] + shares(2)[1]) == dataset, "the shares split one permutation"


def test_equal_shares_average_to_the_whole_batch_gradient_but_unequal_ones_do_not():
    x, y = a_batch(8)
    model = reference_net(11)

    def gradient(batches):
        grads = [torch.autograd.grad(F.cross_entropy(model(xs), ys), model.fc3.weight)[0] for xs, ys in batches]
        return sum(grads) / len(grads)  # what DDP's all-reduce makes of them

    whole = gradient([(x, y)])
    assert_close(gradient([(x[:4], y[:4]), (x[4:], y[4:])]), whole, "float64", "two equal shares")
    assert_differs(gradient([(x[:6], y[:6]), (x[6:], y[6:])]), whole, "float64", "two unequal shares")


def test_each_distributed_process_takes_the_gpu_of_its_local_rank(monkeypatch):
    pretend_gpus(monkeypatch, 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    stage = load_stage(11)
    assert stage.choose_device("auto") == stage.choose_device("cuda") == torch.device("cuda:1")


def test_a_process_without_a_gpu_of_its_own_is_refused_in_one_line(monkeypatch, capsys):
    """Under torchrun, --device auto means cuda:LOCAL_RANK: a second process on a one-GPU machine
    has no GPU of its own, and the command line says so instead of a CUDA traceback."""
    pretend_gpus(monkeypatch, 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(SystemExit) as exit_info:
        stage_options(11, [])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "LOCAL_RANK=1, but only 1 cuda device(s) are visible" in err
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert stage_options(11, []).device == "auto"


def ddp_worker(rank: int, port: int, out_dir: str) -> None:
    """One process as stage 11's main() sets it up: its weights made differently on purpose."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        stage = load_stage(11)
        model = stage.Net(0.5).double()
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(rank + 1)
        model = nn.parallel.DistributedDataParallel(model)
        seed_everything(0)  # one seed on every process
        alike = model(torch.ones(1, 3, 32, 32, dtype=torch.float64) / 100)
        seed_everything(0 + rank)  # as main() does: --seed + rank
        apart = model(torch.ones(1, 3, 32, 32, dtype=torch.float64) / 100)
        weights = model.module.fc3.bias.detach()
        torch.save({"alike": alike.detach(), "apart": apart.detach(), "weights": weights}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp_claims")
    mp.start_processes(ddp_worker, args=(free_port(), str(out_dir)), nprocs=2, start_method="spawn")
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.slow  # two processes started, each loading torch
def test_ddp_copies_rank_0s_parameters_to_every_process(two_ranks):
    assert torch.equal(two_ranks[1]["weights"], two_ranks[0]["weights"])
    assert two_ranks[0]["weights"].tolist() == [1.0] * 10, "rank 0's own weights"


@pytest.mark.slow
def test_each_rank_seeded_with_seed_plus_rank_draws_its_own_dropout_masks(two_ranks):
    assert not torch.equal(two_ranks[0]["apart"], two_ranks[1]["apart"]), "--seed + rank: masks of their own"
    assert torch.equal(two_ranks[0]["alike"], two_ranks[1]["alike"]), "one seed everywhere: the same masks"


def main_in_a_group_of_two(rank: int, port: int, out_dir: str) -> None:
    """stage 11's main() as torchrun starts it, then the seed of the generator it drew from."""
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    load_stage(11).main([*REPEATABLE, "--dropout", "0.5", "--seed", "7", "--out", out_dir])
    torch.save(torch.initial_seed(), f"{out_dir}/seed{rank}.pt")


@pytest.mark.slow
def test_main_seeds_each_process_with_seed_plus_rank(tmp_path):
    """What each process's dropout draws from: torch's generator, seeded --seed + RANK by main()
    (the weights come from the reference arrays, equal everywhere; DDP broadcasts rank 0's anyway)."""
    mp.start_processes(main_in_a_group_of_two, args=(free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    assert [torch.load(tmp_path / f"seed{rank}.pt") for rank in range(2)] == [7, 8]


def test_this_networks_gradients_fit_one_bucket_so_ddp_all_reduces_once_after_the_backward():
    """DDP all-reduces a bucket as soon as all its gradients are ready, overlapping the rest of the
    backward; this network's 62,006 float32 gradients (248 KB) are under the first bucket's cap
    (1 MiB; later ones 25 MiB), so there is one bucket, reduced when the whole backward is done."""
    if dist.is_initialized():
        pytest.skip("a process group is already running in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = nn.parallel.DistributedDataParallel(reference_net(11, "float32"))
        buckets = []

        def count(state, bucket):  # DDP's communication hook: called once per bucket per backward
            buckets.append(len(bucket.parameters()))
            done = torch.futures.Future()
            done.set_result(bucket.buffer())
            return done

        model.register_comm_hook(None, count)
        x, y = a_batch(4, dtype="float32")
        for _ in range(2):  # the first backward may rebuild the buckets: the second shows them as they stay
            model.zero_grad()
            F.cross_entropy(model(x), y).backward()
        assert buckets == [10, 10], "one bucket holding all ten parameter tensors, each backward"
        assert sum(p.numel() * p.element_size() for p in model.parameters()) == 248_024
    finally:
        dist.destroy_process_group()
