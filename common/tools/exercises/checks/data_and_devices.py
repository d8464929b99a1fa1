"""Checks of the data pipeline and the devices: transform, Dataset, DataLoader, device, process group."""
from __future__ import annotations

import argparse
import inspect
import os
from contextlib import contextmanager
from unittest import mock

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from common.data import make_synthetic
from common.tools.exercises.framework import Mismatch, Subject, expect_close, returned, torch_dtype


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


def expected_order(s: Subject, n: int, args: argparse.Namespace, epoch: int) -> list[list[int]]:
    """The index batches PyTorch draws for this stage: a DataLoader shuffled by a generator seeded
    with --seed, or (stage 11) a DistributedSampler with that seed, for one process of one."""
    indices = list(range(n))
    if hasattr(s.course, "process_group"):
        sampler = DistributedSampler(indices, num_replicas=1, rank=0, shuffle=True, seed=args.seed)
        sampler.set_epoch(epoch)
        loader = DataLoader(indices, batch_size=args.batch_size, sampler=sampler)
    else:
        loader = DataLoader(indices, batch_size=args.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(args.seed))
    return [batch.tolist() for batch in loader]


def check_make_loaders(s: Subject, dtype: str) -> None:
    data, on = dataset_case()
    args = loader_args(dtype)
    parameters = inspect.signature(s.module.make_loaders).parameters
    with group_of_one():  # a DistributedSampler asks the process group for its size and rank
        made = s.module.make_loaders(data, args, *([torch.device("cpu")] if "device" in parameters else []))
        distributed = hasattr(s.course, "process_group")
        loaders = returned(tuple(made) if isinstance(made, list) else made, 3 if distributed else 2,
                           "the train loader, the test loader" + (" and the sampler" if distributed else ""))
        n = len(data.train_y)
        expect_batches("training", loaders[0], data.train_x, data.train_y, expected_order(s, n, args, 0), dtype,
                       f"{on}, batch size 4, seed 3")
        if distributed:  # the sampler: set_epoch(1) must give the order of epoch 1
            loaders[2].set_epoch(1)
            expect_batches("epoch 1's training", loaders[0], data.train_x, data.train_y,
                           expected_order(s, n, args, 1), dtype, f"{on}, batch size 4, seed 3, after set_epoch(1)")
    expect_batches("test", loaders[1], data.test_x, data.test_y, None, dtype, on)


def expect_batches(kind: str, loader, images, labels, order, dtype: str, on: str) -> None:
    """The loader's batches hold these images, in this order of index batches (None: all of them
    in order, in batches of any size)."""
    batches = [(x, y) for x, y in loader]
    if order is None:
        order = [list(range(len(labels)))]
        batches = [(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))]
    if [len(y) for _, y in batches] != [len(o) for o in order]:
        raise Mismatch(f"the {kind} batches have the sizes {[len(y) for _, y in batches]}, expected "
                       f"{[len(o) for o in order]} on {on}")
    expected_x = reference_images(images, dtype)
    for i, ((x, y), indices) in enumerate(zip(batches, order), 1):
        if y.tolist() != labels[indices].tolist() or not torch.allclose(x.double(), expected_x[indices].double()):
            raise Mismatch(f"{kind} batch {i} holds other images than the images {indices} that PyTorch's "
                           f"shuffle draws (labels {y.tolist()}, expected {labels[indices].tolist()}) on {on}")
        expect_close(f"{kind} batch {i}", x, expected_x[indices], dtype, on)


@contextmanager
def group_of_one():
    """A process group of this process alone (its rendezvous store in memory), if none is joined."""
    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def check_choose_device(s: Subject, dtype: str) -> None:
    """With and without a GPU (torch.cuda.is_available() answered both ways); in stage 11 as the
    process of LOCAL_RANK 1, since there each process takes the GPU of its local rank."""
    local_rank = 1 if hasattr(s.course, "process_group") else 0
    with mock.patch.dict(os.environ, {"LOCAL_RANK": str(local_rank)}):
        for cuda in (True, False):
            gpu = f"cuda:{local_rank}"
            cases = {"cpu": "cpu", "cuda": gpu, "cuda:1": "cuda:1", "auto": gpu if cuda else "cpu"}
            with mock.patch.object(torch.cuda, "is_available", lambda: cuda):
                for name, expected in cases.items():
                    got = s.module.choose_device(name)
                    if not isinstance(got, torch.device) or got != torch.device(expected):
                        raise Mismatch(f"choose_device({name!r}) returned {got!r}, expected "
                                       f"torch.device({expected!r}) ({'a' if cuda else 'no'} GPU, "
                                       f"LOCAL_RANK={local_rank})")


def check_gpus_starting_at(s: Subject, dtype: str) -> None:
    with mock.patch.object(torch.cuda, "device_count", lambda: 4):
        for index, expected in ((0, [0, 1, 2, 3]), (2, [2, 0, 1, 3])):
            got = s.module.gpus_starting_at(torch.device("cuda", index))
            if list(got) != expected:
                raise Mismatch(f"gpus_starting_at(cuda:{index}) with 4 GPUs returned {list(got)}, expected "
                               f"{expected}: the model's own GPU first, then the others")


def check_process_group(s: Subject, dtype: str) -> None:
    """Plain python (no RANK in the environment): a group of one process, left at the end."""
    outside_torchrun = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    with mock.patch.dict(os.environ, outside_torchrun, clear=True):
        try:
            with s.module.process_group(torch.device("cpu")):
                if not dist.is_initialized():
                    raise Mismatch("inside process_group(cpu), no process group is initialised")
                seen = dist.get_world_size(), dist.get_rank(), dist.get_backend()
        finally:
            left = dist.is_initialized()
            if left:
                dist.destroy_process_group()
    if seen != (1, 0, "gloo"):
        raise Mismatch(f"inside process_group(cpu) started by plain python, world size, rank and backend are "
                       f"{seen}, expected (1, 0, 'gloo')")
    if left:
        raise Mismatch("after the with block, the process group is still initialised: destroy it on the way out")
