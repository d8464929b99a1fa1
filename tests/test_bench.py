"""The benchmark's machinery (not its timings: benchmarks are figures to read, not assertions)."""
from __future__ import annotations

from benchmarks import bench


def test_the_flop_count_is_the_networks():
    # 2 FLOPs per multiply-add: conv1 450 weights x 28*28 pixels, conv2 2400 x 10*10, then the 3 linear layers
    assert bench.flops_per_image_forward() == 2 * (450 * 784 + 2400 * 100 + 48000 + 10080 + 840)
    assert bench.flops_per_image_train_step() == 3 * bench.flops_per_image_forward()


def test_every_loop_of_the_throughput_comparison_runs(tmp_path):
    rows = bench.bench_throughput(n_images=64, batch_size=16, rounds=1)
    assert [r["loop"] for r in rows] == ["plain PyTorch loop", "stage07", "stage08", "stage09", "stage10"]
    assert all(r["images_per_s"] > 0 for r in rows) and rows[0]["vs_plain"] == 1.0
