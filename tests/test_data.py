"""Data sources: the synthetic set, the offline .npy layout, a torchvision root, and bad input."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from common import data as data_module
from common.data import CLASSES, load_data, make_synthetic
from common.errors import CourseError

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def small_arrays(n_train=20, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n_train),
            rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n_test))


def write_npy_layout(folder: Path, arrays, shards: int = 2) -> Path:
    train_x, train_y, test_x, test_y = arrays
    folder.mkdir(parents=True, exist_ok=True)
    for k, part in enumerate(np.array_split(train_x, shards)):
        np.save(folder / f"train_x_{k}.npy", part)
    np.save(folder / "train_y.npy", train_y)
    np.save(folder / "test_x.npy", test_x)
    np.save(folder / "test_y.npy", test_y)
    return folder


# ---------------------------------------------------------------- synthetic
def test_synthetic_is_cifar_shaped_and_deterministic():
    a, b, c = make_synthetic(3), make_synthetic(3), make_synthetic(4)
    assert a.train_x.shape[1:] == (32, 32, 3) and a.train_x.dtype == np.uint8
    assert a.train_y.dtype == np.int64 and set(np.unique(a.train_y)) == set(range(10))
    np.testing.assert_array_equal(a.train_x, b.train_x)
    np.testing.assert_array_equal(a.test_y, b.test_y)
    assert not np.array_equal(a.train_x, c.train_x)


def test_synthetic_classes_are_balanced_and_images_vary():
    d = make_synthetic(0)
    counts = np.bincount(d.train_y, minlength=10)
    assert counts.min() > 0.8 * len(d.train_y) / 10
    assert d.train_x.std() > 30  # not flat images


def test_synthetic_source_needs_no_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    d = load_data("synthetic", seed=1)
    assert "synthetic" in d.source and "synthetic" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- offline .npy layout
def test_npy_layout_loads_shards_in_order(tmp_path):
    arrays = small_arrays()
    folder = write_npy_layout(tmp_path / "cifar", arrays, shards=3)
    d = load_data("auto", folder)
    np.testing.assert_array_equal(d.train_x, arrays[0])
    np.testing.assert_array_equal(d.test_y, arrays[3])
    assert d.classes == CLASSES and str(folder) in d.source


def test_npy_layout_accepts_a_single_train_file(tmp_path):
    train_x, train_y, test_x, test_y = small_arrays()
    for name, value in dict(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y).items():
        np.save(tmp_path / f"{name}.npy", value)
    np.testing.assert_array_equal(load_data("cifar10", tmp_path).train_x, train_x)


@pytest.mark.skipif(not SHARED_CIFAR.exists(), reason="the real CIFAR-10 copy is not on this machine")
def test_the_real_cifar10_copy_loads():
    d = load_data("cifar10", SHARED_CIFAR)
    assert d.train_x.shape == (50000, 32, 32, 3) and d.test_x.shape == (10000, 32, 32, 3)
    assert list(d.train_y[:10]) == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert list(d.train_x[0, 0, :6, 0]) == [59, 43, 50, 68, 98, 119]


# ---------------------------------------------------------------- torchvision root
def write_torchvision_root(root: Path, arrays) -> Path:
    """The cifar-10-batches-py pickles, as torchvision reads them (split into 5 + 1 batches)."""
    train_x, train_y, test_x, test_y = arrays
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    splits = list(zip(np.array_split(train_x, 5), np.array_split(train_y, 5)))
    for name, (x, y) in [(f"data_batch_{k + 1}", s) for k, s in enumerate(splits)] + [("test_batch", (test_x, test_y))]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), "labels": y.tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CLASSES)}, f)
    return root


def test_torchvision_root_loads_through_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets.cifar

    # Hand-made pickles cannot match the official MD5 sums, so only that check is bypassed.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: Path(path).exists())
    arrays = small_arrays(n_train=25)
    d = load_data("auto", write_torchvision_root(tmp_path, arrays))
    np.testing.assert_array_equal(d.train_x, arrays[0])
    np.testing.assert_array_equal(d.train_y, arrays[1])
    np.testing.assert_array_equal(d.test_x, arrays[2])
    assert d.root == tmp_path and "torchvision" in d.source


class OfflineCIFAR10:
    """Stands in for torchvision's CIFAR10 where the download fails, as it does offline."""

    def __init__(self, root, train=True, download=False, **kwargs):
        Path(root).mkdir(parents=True, exist_ok=True)  # torchvision makes the folder first
        raise OSError("<urlopen error [Errno -2] Name or service not known>")


def test_auto_falls_back_to_synthetic_when_the_download_fails(tmp_path, monkeypatch, capsys):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", OfflineCIFAR10)
    monkeypatch.setattr(data_module, "DEFAULT_ROOT", tmp_path / "data")
    d = load_data("auto", seed=0)
    out = capsys.readouterr().out
    assert "synthetic" in d.source and "not available" in out and "Name or service" in out
    assert not (tmp_path / "data").exists(), "a failed download leaves no empty folder"


def test_cifar10_source_fails_clearly_when_unavailable(tmp_path, monkeypatch):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", OfflineCIFAR10)
    monkeypatch.setattr(data_module, "DEFAULT_ROOT", tmp_path / "data")
    with pytest.raises(CourseError, match="CIFAR-10 is not available.*--data synthetic"):
        load_data("cifar10")


# ---------------------------------------------------------------- bad input
def corrupt(folder: Path, name: str, value) -> None:
    np.save(folder / name, value)


BAD_LAYOUTS = {
    "wrong image shape": ("test_x.npy", np.zeros((10, 3, 32, 32), np.uint8), "shape \\(N, 32, 32, 3\\)"),
    "wrong image dtype": ("test_x.npy", np.zeros((10, 32, 32, 3), np.float32), "must be uint8"),
    "wrong length": ("test_y.npy", np.zeros(9, np.int64), "10 images but 9 labels"),
    "labels out of range": ("train_y.npy", np.full(20, 10), "labels must lie in 0-9"),
    "negative labels": ("train_y.npy", np.full(20, -1), "labels must lie in 0-9"),
    "float labels": ("train_y.npy", np.zeros(20, np.float64), "integer array"),
}


@pytest.mark.parametrize("case", BAD_LAYOUTS)
def test_bad_arrays_are_named_in_one_line(tmp_path, case):
    name, value, message = BAD_LAYOUTS[case]
    folder = write_npy_layout(tmp_path, small_arrays())
    corrupt(folder, name, value)
    with pytest.raises(CourseError, match=message) as err:
        load_data("auto", folder)
    assert "\n" not in str(err.value)


def test_truncated_npy_file_is_reported(tmp_path):
    folder = write_npy_layout(tmp_path, small_arrays())
    raw = (folder / "test_x.npy").read_bytes()
    (folder / "test_x.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CourseError, match="test_x.npy: not a readable .npy file"):
        load_data("auto", folder)


@pytest.mark.parametrize("make_folder,message", [
    (lambda p: p / "missing", "no such folder"),
    (lambda p: p, "holds neither"),
])
def test_data_dir_must_hold_cifar(tmp_path, make_folder, message):
    with pytest.raises(CourseError, match=message):
        load_data("auto", make_folder(tmp_path))


def test_missing_file_in_layout_is_named(tmp_path):
    folder = write_npy_layout(tmp_path, small_arrays())
    (folder / "test_y.npy").unlink()
    with pytest.raises(CourseError, match="test_y.npy: missing"):
        load_data("auto", folder)


def test_unknown_source_is_rejected():
    with pytest.raises(CourseError, match="unknown data source"):
        load_data("imagenet")
