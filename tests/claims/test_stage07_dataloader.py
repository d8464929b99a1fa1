"""Stage 7's claims (Dataset, DataLoader and the tutorial's transform), each shown by running it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate
from torchvision import transforms

from common.data import make_synthetic
from common.harness import load_stage, stage_options


@pytest.mark.stage7
def test_to_tensor_makes_uint8_images_the_default_dtype_float32():
    image = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
    assert transforms.ToTensor()(image).dtype == torch.float32
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert transforms.ToTensor()(image).dtype == torch.float64, "the default dtype, not float32 as such"
    finally:
        torch.set_default_dtype(saved)


@pytest.mark.stage7
def test_the_tutorial_transform_equals_the_hand_written_normalisation():
    images = make_synthetic(0, n_train=16, n_test=1).train_x
    by_hand = load_stage(1).normalise(images, np.float32)
    transform = load_stage(7).make_transform(torch.float32)
    by_torchvision = torch.stack([transform(image) for image in images])
    assert by_torchvision.dtype == torch.float32
    assert np.array_equal(by_torchvision.numpy(), by_hand), "bit for bit, not just close"


@pytest.mark.stage7
def test_the_v2_transforms_differ_from_to_tensor_in_the_last_bit_so_the_stage_keeps_v1():
    """v2's ToDtype(scale=True) multiplies by float32(1/255); ToTensor() divides by 255. For about
    half of the 256 pixel values the two round differently, by one unit in the last place, and
    stage 7 would no longer equal stage 6 bit for bit."""
    from torchvision.transforms import v2

    values = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)  # every uint8 value
    v1 = transforms.ToTensor()(values)
    scaled = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])(values)
    assert torch.equal(v1, torch.from_numpy(values).permute(2, 0, 1).float() / 255), "v1: a division"
    assert torch.equal(scaled, torch.from_numpy(values).permute(2, 0, 1).float() * (1 / 255)), "v2: a product"
    differ = (scaled != v1)[0]
    assert 100 < differ.sum() < 156, f"{int(differ.sum())} of 256 values"
    a, b = scaled.numpy(), v1.numpy()
    assert np.all(np.abs(a - b) <= np.spacing(b)), "by one unit in the last place at most"
    by_hand = torch.from_numpy(load_stage(6).normalise(values[None], torch.float32).numpy()[0])
    stage7 = load_stage(7).make_transform(torch.float32)(values)
    v2_normalised = v2.Normalize((0.5,) * 3, (0.5,) * 3)(scaled)
    assert torch.equal(stage7, by_hand) and not torch.equal(v2_normalised, by_hand)


@pytest.mark.stage7
def test_a_float64_run_trains_on_images_normalised_in_float32():
    """Every uint8 value there is, through stage 7's float64 transform and stage 6's normalise()."""
    values = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    through_float32 = load_stage(7).make_transform(torch.float32)(values[0])
    through_float64 = load_stage(7).make_transform(torch.float64)(values[0])
    by_hand = torch.from_numpy(load_stage(6).normalise(values, torch.float64)[0].numpy())
    assert through_float64.dtype == torch.float64
    assert torch.equal(through_float64, through_float32.double()), "normalised in float32, then widened"
    difference = (through_float64 - by_hand).abs().max().item()
    assert 0 < difference <= 2**-24, difference  # float32's rounding: half a unit in the last place at 1


@pytest.mark.stage7
def test_the_loader_batches_and_its_shuffle_follows_the_seed():
    stage = load_stage(7)
    data = make_synthetic(0, n_train=40, n_test=10)
    args = stage_options(stage, ["--batch-size", "8", "--seed", "3"])
    orders = []
    for _ in range(2):
        train_loader, test_loader = stage.make_loaders(data, args)
        x, y = next(iter(train_loader))
        assert x.shape == (8, 3, 32, 32) and y.dtype == torch.int64
        orders.append(torch.cat([y for _, y in train_loader]))
    assert torch.equal(orders[0], orders[1])
    assert sorted(orders[0].tolist()) == sorted(data.train_y.tolist())
    assert len(test_loader.dataset) == 10


@pytest.mark.stage7
def test_default_collate_makes_the_batch_the_dataloader_makes():
    stage = load_stage(7)
    data = make_synthetic(0, n_train=4, n_test=8)
    _, test_loader = stage.make_loaders(data, stage_options(stage))
    x, y = default_collate([test_loader.dataset[i] for i in range(4)])
    loader_x, loader_y = next(iter(DataLoader(test_loader.dataset, batch_size=4)))
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.int64
    assert torch.equal(x, loader_x) and torch.equal(y, loader_y)


@pytest.mark.stage7
def test_iterating_a_dataloader_draws_a_random_number_but_indexing_its_dataset_does_not():
    """Why the stages look at test_loader.dataset[i], not next(iter(test_loader)): each new
    iterator draws a base seed for its workers from torch's global generator."""
    data = make_synthetic(0, n_train=4, n_test=8)
    test_set = load_stage(7).ArrayDataset(data.test_x, data.test_y, load_stage(7).make_transform(torch.float32))
    state = torch.get_rng_state()
    default_collate([test_set[i] for i in range(4)])
    assert torch.equal(torch.get_rng_state(), state)
    next(iter(DataLoader(test_set, batch_size=4)))
    assert not torch.equal(torch.get_rng_state(), state)
