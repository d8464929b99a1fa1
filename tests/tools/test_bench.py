"""The benchmark's machinery (not its timings: benchmarks are figures to read, not assertions)."""
from __future__ import annotations

from benchmarks import bench


def test_the_flop_count_is_the_networks():
    # 2 FLOPs per multiply-add: conv1 450 weights x 28*28 pixels, conv2 2400 x 10*10, then the 3 linear layers
    assert bench.flops_per_image_forward() == 2 * (450 * 784 + 2400 * 100 + 48000 + 10080 + 840)
    # the backward: each weight gradient costs its layer's forward, each input gradient too but conv1's,
    # which autograd never computes (tests/claims/test_stage03_autograd.py)
    assert bench.flops_per_image_train_step() == 3 * bench.flops_per_image_forward() - 2 * 450 * 784


def test_every_loop_of_the_throughput_comparison_runs(tmp_path):
    rows = bench.bench_throughput(n_images=64, batch_size=16, rounds=1)
    assert [r["loop"] for r in rows] == ["the tutorial's loop", "stage07", "stage08", "stage09", "stage10"]
    assert all(r["images_per_s"] > 0 for r in rows) and rows[0]["vs_tutorial"] == 1.0


def test_the_tutorial_dataset_gives_what_torchvision_cifar10_gives(tmp_path):
    """The baseline reads images the way torchvision's CIFAR10 does: a PIL image, then the transform."""
    import torch
    from torchvision import transforms

    from common.data import make_synthetic
    from common.harness import load_stage

    data = make_synthetic(0, n_train=8, n_test=1)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    ours = bench.TutorialCIFAR10(data.train_x, data.train_y, transform)
    stage7 = load_stage(7)
    theirs = stage7.ArrayDataset(data.train_x, data.train_y, stage7.make_transform(torch.float32))
    for i in range(8):
        assert torch.equal(ours[i][0], theirs[i][0]) and ours[i][1] == theirs[i][1]


def test_the_busy_process_runs_only_inside_its_block():
    with bench.one_busy_process() as hog:
        assert hog.poll() is None
    assert hog.poll() is not None, "stopped and reaped when the block ends"
