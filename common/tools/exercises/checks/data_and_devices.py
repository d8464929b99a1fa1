"""Checks of the data pipeline and the devices: transform, Dataset, DataLoader, device, process group."""
from __future__ import annotations

import argparse
import os
import shutil
from contextlib import contextmanager
from unittest import mock

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from common.data import make_synthetic
from common.harness import group_of_one
from common.tools.exercises.framework import Mismatch, Subject, expect_close, once, returned, torch_dtype


# ---------------------------------------------------------------- each function alone: data and devices
def reference_images(images: np.ndarray, dtype: str):
    """The tutorial's transform by hand: ToTensor() (float32 in [0, 1]), Normalize(0.5, 0.5), then the dtype."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).to(torch.float32) / 255
    return ((x - 0.5) / 0.5).to(torch_dtype(dtype))


def check_make_transform(s: Subject, dtype: str) -> None:
    images = make_synthetic(5, n_train=3, n_test=1).train_x
    transform = s.module.make_transform(s.module.DTYPES[dtype])
    got = [transform(image) for image in images]
    # ToTensor makes float32 whatever comes after, so float32 precision is what both orders share
    for i, (x, expected) in enumerate(zip(got, reference_images(images, dtype))):
        if str(getattr(x, "dtype", "")) != f"torch.{dtype}":
            raise Mismatch(f"make_transform(torch.{dtype}) made {getattr(x, 'dtype', type(x).__name__)} images: "
                           "end with a conversion to the run's dtype")
        expect_close(f"image {i} after the transform", x, expected, dtype, "3 synthetic images, seed 5",
                     tolerance_of="float32")


def dataset_case():
    data = make_synthetic(6, n_train=10, n_test=5)
    return data, f"the synthetic set of seed 6 ({len(data.train_y)} training, {len(data.test_y)} test images)"


def check_array_dataset_len(s: Subject, dtype: str) -> None:
    data, on = dataset_case()
    dataset = s.module.ArrayDataset(data.train_x, data.train_y, s.module.make_transform(s.module.DTYPES[dtype]))
    if len(dataset) != len(data.train_y):
        raise Mismatch(f"len(ArrayDataset(...)) is {len(dataset)}, expected {len(data.train_y)} on {on}")


def check_array_dataset_getitem(s: Subject, dtype: str) -> None:
    data, on = dataset_case()
    dataset = s.module.ArrayDataset(data.train_x, data.train_y, s.module.make_transform(s.module.DTYPES[dtype]))
    expected = reference_images(data.train_x, dtype)
    for i in (0, 7):
        item = dataset[i]
        x, y = returned(tuple(item) if isinstance(item, list) else item, 2, "the transformed image and its label")
        expect_close(f"dataset[{i}]'s image", x, expected[i], dtype, on)
        if int(y) != int(data.train_y[i]):
            raise Mismatch(f"dataset[{i}]'s label is {y}, expected {int(data.train_y[i])} on {on}")


def loader_args(dtype: str) -> argparse.Namespace:
    return argparse.Namespace(batch_size=4, seed=3, workers=0, dtype=dtype)


WORLD, RANK = 2, 1  # stage 11's make_loaders is checked as rank 1 of a pretended group of 2


def expected_order(s: Subject, n: int, args: argparse.Namespace, epoch: int) -> list[list[int]]:
    """The index batches PyTorch draws for this stage: a DataLoader shuffled by a generator seeded
    with --seed, or (stage 11) rank 1's share from a DistributedSampler with that seed."""
    indices = list(range(n))
    if hasattr(s.course, "join_process_group"):
        sampler = DistributedSampler(indices, num_replicas=WORLD, rank=RANK, shuffle=True, seed=args.seed)
        sampler.set_epoch(epoch)
        loader = DataLoader(indices, batch_size=args.batch_size, sampler=sampler)
    else:
        loader = DataLoader(indices, batch_size=args.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(args.seed))
    return [batch.tolist() for batch in loader]


@contextmanager
def pretended_group():
    """A group of one in which dist says this is rank 1 of 2: what a DistributedSampler and the
    sharded test set ask for."""
    with group_of_one(), mock.patch.object(dist, "get_world_size", lambda *a, **k: WORLD), \
            mock.patch.object(dist, "get_rank", lambda *a, **k: RANK):
        yield


def check_make_loaders(s: Subject, dtype: str) -> None:
    data, on = dataset_case()
    args = loader_args(dtype)
    distributed = hasattr(s.course, "join_process_group")
    extra = [torch.device("cpu")] * s.takes("make_loaders", "device") + [RANK] * s.takes("make_loaders", "rank")
    n = len(data.train_y)
    with pretended_group() if distributed else group_of_one():
        made = s.module.make_loaders(data, args, *extra)
        loaders = returned(tuple(made) if isinstance(made, list) else made, 3 if distributed else 2,
                           "the train loader, the test loader" + (" and the sampler" if distributed else ""))
        share = f", as rank {RANK} of {WORLD}" if distributed else ""
        expect_batches("training", loaders[0], data.train_x, data.train_y, expected_order(s, n, args, 0), dtype,
                       f"{on}, batch size 4, seed 3{share}", distributed)
        if distributed:  # the sampler: set_epoch(1) must give the order of epoch 1
            if not isinstance(loaders[2], DistributedSampler):
                raise Mismatch(f"make_loaders returned a {type(loaders[2]).__name__} as its third value: return "
                               "the DistributedSampler, whose set_epoch() main() calls")
            loaders[2].set_epoch(1)
            expect_batches("epoch 1's training", loaders[0], data.train_x, data.train_y,
                           expected_order(s, n, args, 1), dtype, f"{on}, batch size 4, seed 3{share}, after "
                           "set_epoch(1)", distributed)
        test = list(range(RANK, len(data.test_y), WORLD)) if distributed else list(range(len(data.test_y)))
        expect_batches("test", loaders[1], data.test_x, data.test_y, [test], dtype, on + share, distributed,
                       whole=True)


def expect_batches(kind: str, loader, images, labels, order, dtype: str, on: str, distributed: bool = False,
                   whole: bool = False) -> None:
    """The loader's batches hold these images, in this order of index batches (`whole`: all the
    images of order[0], in batches of any size)."""
    batches = [(x, y) for x, y in loader]
    if whole and batches:
        batches = [(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))]
    if [len(y) for _, y in batches] != [len(o) for o in order]:
        sizes = [len(y) for _, y in batches]
        words = f"the {kind} batches have the sizes {sizes}, expected {[len(o) for o in order]} on {on}"
        if distributed and sum(sizes) > sum(len(o) for o in order):
            words = (f"the {kind} loader gives this process {sum(sizes)} images, its share is "
                     f"{sum(len(o) for o in order)} (on {on}): "
                     + ("a DistributedSampler gives each process its own share" if kind != "test" else
                        "each process evaluates every world_size-th test image, from its rank on"))
        raise Mismatch(words)
    expected_x = reference_images(images, dtype)
    for i, ((x, y), indices) in enumerate(zip(batches, order), 1):
        if y.tolist() != labels[indices].tolist() or not torch.allclose(x.double(), expected_x[indices].double()):
            raise Mismatch(order_words(kind, batches, expected_x, order, distributed),
                           f"{kind} batch {i} holds other images than the images {indices} that PyTorch's "
                           f"shuffle draws (labels {y.tolist()}, expected {labels[indices].tolist()}) on {on}",
                           gallery="unshuffled-data" if order_of(batches, expected_x) == sorted(
                               order_of(batches, expected_x)) and kind == "training" else None)
        expect_close(f"{kind} batch {i}", x, expected_x[indices], dtype, on)


def order_of(batches, expected_x) -> list[int]:
    """Which image of the data set each image of the batches is (-1: none of them)."""
    found = []
    for x, _ in batches:
        for image in x:
            matches = [i for i, e in enumerate(expected_x) if torch.allclose(image.double(), e.double(), atol=1e-3)]
            found.append(matches[0] if matches else -1)
    return found


def order_words(kind: str, batches, expected_x, order, distributed: bool) -> str:
    got = order_of(batches, expected_x)
    if kind == "test":
        return "the test batches are not the test set's images in order" + (
            ", every world_size-th from this process's rank on: Subset(test_set, range(rank, n, world_size))"
            if distributed else ": the test loader does not shuffle")
    if -1 in got:
        return f"the {kind} batches hold images that are not the data set's, as the transform makes them"
    if got == sorted(got):
        return (f"the {kind} batches come in the data set's own order: shuffle them "
                + ("(DistributedSampler(train_set, shuffle=True, seed=args.seed))" if distributed else
                   "(DataLoader(..., shuffle=True, generator=...))"))
    return (f"the {kind} batches are shuffled, but not as --seed shuffles them: "
            + ("DistributedSampler(train_set, shuffle=True, seed=args.seed)" if distributed else
               "give the DataLoader generator=torch.Generator().manual_seed(args.seed)")
            + (", and call set_epoch on it" if "epoch 1" in kind else ""))


@contextmanager
def pretended_machine(kind: str | None, count: int = 0):
    """torch.accelerator and torch.cuda say this machine has `count` accelerators of `kind`
    ("cuda", "mps") or none: for what a function decides, not for computing on them."""
    here = torch.device(kind) if kind and count else None
    cuda = count if kind == "cuda" else 0
    with mock.patch.object(torch.accelerator, "current_accelerator", lambda check_available=False: here), \
            mock.patch.object(torch.accelerator, "is_available", lambda: here is not None), \
            mock.patch.object(torch.accelerator, "device_count", lambda: count), \
            mock.patch.object(torch.cuda, "is_available", lambda: cuda > 0), \
            mock.patch.object(torch.cuda, "device_count", lambda: cuda), \
            mock.patch.object(torch.cuda, "current_device", lambda: 0):
        yield


def same_device(got, expected: torch.device) -> bool:
    """torch.device("cuda") is the current GPU, cuda:0 here: both spellings are the same device."""
    return isinstance(got, torch.device) and got.type == expected.type and (got.index or 0) == (expected.index or 0)


@once
def check_choose_device(s: Subject, dtype: str) -> None:
    """On pretended machines: without an accelerator, with 2 CUDA GPUs, with MPS; in stage 11 as
    the process of LOCAL_RANK 1, since there each process takes the GPU of its local rank."""
    per_process = hasattr(s.course, "join_process_group")
    local_rank = 1 if per_process else 0
    own = f"cuda:{local_rank}"
    machines = [(None, 0, {"cpu": "cpu", "auto": "cpu"}),
                ("cuda", 2, {"cpu": "cpu", "cuda": own, "cuda:1": "cuda:1", "auto": own})]
    if not per_process:  # stage 11's process group runs on cuda or the cpu only
        machines.append(("mps", 1, {"cpu": "cpu", "mps": "mps", "auto": "mps"}))
    environment = {"LOCAL_RANK": str(local_rank)} if per_process else {}
    with mock.patch.dict(os.environ, environment):
        for kind, count, cases in machines:
            machine = f"a machine with {count} {kind} device(s)" if kind else "a machine without an accelerator"
            with pretended_machine(kind, count):
                for name, expected in cases.items():
                    got = s.module.choose_device(name)
                    if isinstance(got, str):
                        raise Mismatch(f"choose_device({name!r}) returned the string {got!r}: return "
                                       f"torch.device({got!r}), since the stage reads device.type")
                    if not same_device(got, torch.device(expected)):
                        raise Mismatch(f"choose_device({name!r}) returned {got!r} on {machine}"
                                       + (f" as the process of LOCAL_RANK={local_rank}" if per_process else "")
                                       + f", expected torch.device({expected!r}){device_hint(name, expected, s)}")


def device_hint(name: str, expected: str, s: Subject) -> str:
    if name == "auto" and expected == "mps":
        return ": torch.accelerator.current_accelerator(check_available=True) finds any accelerator, not only CUDA"
    if hasattr(s.course, "join_process_group") and expected.startswith("cuda:"):
        return ": each process takes the GPU of its LOCAL_RANK"
    return ""


@once
def check_gpus_starting_at(s: Subject, dtype: str) -> None:
    with pretended_machine("cuda", 4):
        for device, expected in ((torch.device("cuda", 0), [0, 1, 2, 3]), (torch.device("cuda", 2), [2, 0, 1, 3]),
                                 (torch.device("cuda"), [0, 1, 2, 3])):
            got = s.module.gpus_starting_at(device)
            if list(got) != expected:
                hint = (": torch.device('cuda') has index None, which means the current GPU, 0" if device.index is None
                        else ": the model's own GPU first, then the others")
                raise Mismatch(f"gpus_starting_at({device}) with 4 GPUs returned {list(got)}, expected {expected}"
                               + hint)


@once
def check_can_compile(s: Subject, dtype: str) -> None:
    """With no compiler on the PATH, with g++ alone, with $CXX alone; and for a GPU."""
    def which(found):
        return lambda name, *args, **kwargs: f"/usr/bin/{name}" if name in found else None

    cases = ((set(), {}, torch.device("cpu"), False), ({"g++"}, {}, torch.device("cpu"), True),
             ({"clang++"}, {}, torch.device("cpu"), True), ({"my-c++"}, {"CXX": "my-c++"}, torch.device("cpu"), True),
             (set(), {}, torch.device("cuda", 0), True))
    for found, environment, device, expected in cases:
        cleared = {k: v for k, v in os.environ.items() if k != "CXX"} | environment
        with mock.patch.object(shutil, "which", which(found)), mock.patch.dict(os.environ, cleared, clear=True):
            got = s.module.can_compile(device)
        if bool(got) != expected:
            where = f"with {', '.join(sorted(found))} on the PATH" if found else "with no C++ compiler on the PATH"
            where += " and CXX=" + environment["CXX"] if environment else ""
            raise Mismatch(f"can_compile({device.type}) {where} returned {got!r}, expected {expected}"
                           + (": only a CPU run needs a C++ compiler" if device.type != "cpu" else ""))


@once
def check_join_process_group(s: Subject, dtype: str) -> None:
    """Plain python (no RANK in the environment): a group of one process, on gloo for the CPU."""
    outside_torchrun = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    with mock.patch.dict(os.environ, outside_torchrun, clear=True):
        try:
            s.module.join_process_group(torch.device("cpu"))
            if not dist.is_initialized():
                raise Mismatch("after join_process_group(cpu), no process group is initialised")
            seen = dist.get_world_size(), dist.get_rank(), dist.get_backend()
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    if seen != (1, 0, "gloo"):
        raise Mismatch(f"after join_process_group(cpu) started by plain python, world size, rank and backend are "
                       f"{seen}, expected (1, 0, 'gloo')")
