"""Data sources: the synthetic set, the offline .npy layout, a torchvision root, and bad input."""
from __future__ import annotations

import io
import pickle
import re
import socket
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from common import data as data_module
from common.data import CLASSES, SYNTHETIC_CLASSES, load_data, make_synthetic
from common.errors import CourseError
from tests.helpers import ROOT

SHARED_CIFAR = ROOT.parent / "shared" / "data" / "cifar10"  # beside the checkout, where there is one


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


def test_synthetic_set_names_its_own_classes():
    assert load_data("synthetic", announce=False).classes == (
        "square", "disc", "ring", "cross", "triangle", "stripes", "bars", "checks", "diamond", "diagonal bar")
    assert SYNTHETIC_CLASSES != CLASSES


# For each shape, a point (dy, dx) inside it and one outside, in units of the shape's size
# (dy grows downwards): a name given to the wrong shape fails here.
INSIDE_AND_OUTSIDE = {
    "square": ((0.9, 0.9), (1.1, 0.0)),
    "disc": ((0.0, 0.0), (0.75, 0.75)),
    "ring": ((0.8, 0.0), (0.0, 0.0)),
    "cross": ((0.0, 1.0), (0.8, 0.8)),
    "triangle": ((0.9, 0.8), (-0.9, 0.5)),  # narrow at the top, wide at the bottom
    "stripes": ((0.2, 0.7), (0.7, 0.2)),  # horizontal bands: dy decides
    "bars": ((0.7, 0.2), (0.2, 0.7)),  # vertical bands: dx decides
    "checks": ((0.2, 0.2), (0.2, 0.7)),
    "diamond": ((0.0, 1.1), (0.7, 0.7)),
    "diagonal bar": ((0.5, 0.5), (0.5, -0.5)),
}


@pytest.mark.parametrize("name", SYNTHETIC_CLASSES)
def test_synthetic_class_names_describe_their_shapes(name):
    inside, outside = INSIDE_AND_OUTSIDE[name]
    shape = data_module._SHAPES[name]
    assert shape(np.array(inside[0]), np.array(inside[1])), f"{name}: {inside} should be inside"
    assert not shape(np.array(outside[0]), np.array(outside[1])), f"{name}: {outside} should be outside"


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


NO_NETWORK = urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))  # as urllib raises it offline


def failing_cifar10(error: Exception):
    """Stands in for torchvision's CIFAR10 where the download fails with `error`."""

    def cifar10(root, train=True, download=False, **kwargs):
        Path(root).mkdir(parents=True, exist_ok=True)  # torchvision makes the folder first
        raise error

    return cifar10


@pytest.fixture
def default_root(tmp_path, monkeypatch) -> Path:
    """Where `auto` looks for and downloads CIFAR-10, moved into a temporary folder."""
    monkeypatch.setattr(data_module, "DEFAULT_ROOT", tmp_path / "data")
    return tmp_path / "data"


FALLBACK_LINE = ("data: CIFAR-10 not found and no network: using the built-in synthetic set (seed 0), "
                 "8000 train and 2000 test images; pass --data-dir DIR for the real one\n")


def test_auto_falls_back_to_synthetic_when_the_download_fails(default_root, monkeypatch, capsys):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", failing_cifar10(NO_NETWORK))
    d = load_data("auto", seed=0)
    assert "synthetic" in d.source and d.classes == SYNTHETIC_CLASSES
    assert capsys.readouterr().out == FALLBACK_LINE  # one line, in plain words, without urllib's text
    assert d.details == "<urlopen error [Errno -2] Name or service not known>"
    assert not default_root.exists(), "a failed download leaves no empty folder"


def test_verbose_adds_the_technical_reason_and_announce_false_prints_nothing(default_root, monkeypatch, capsys):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", failing_cifar10(NO_NETWORK))
    load_data("auto", verbose=True)
    detail = "data: detail: <urlopen error [Errno -2] Name or service not known>\n"
    assert capsys.readouterr().out == FALLBACK_LINE + detail
    load_data("auto", announce=False, verbose=True)
    assert capsys.readouterr().out == ""


def test_a_download_that_fails_for_another_reason_says_so(default_root, monkeypatch, capsys):
    import torchvision.datasets

    refused = urllib.error.HTTPError("https://www.cs.toronto.edu/", 503, "Service Unavailable", {}, io.BytesIO())
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", failing_cifar10(refused))
    d = load_data("auto")
    out = capsys.readouterr().out
    assert out.startswith("data: CIFAR-10 not found and its download failed: using the built-in synthetic set")
    assert "no network" not in out and "503" not in out
    assert d.details == "HTTP Error 503: Service Unavailable"


def test_a_damaged_torchvision_folder_is_named_with_its_files(default_root, monkeypatch, capsys):
    import torchvision.datasets.cifar

    # The real CIFAR10 class, whose MD5 check the hand-made files fail; only its download is cut off.
    write_torchvision_root(default_root, small_arrays())
    (default_root / "cifar-10-batches-py" / "test_batch").unlink()

    def no_network(*args, **kwargs):
        raise NO_NETWORK

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", no_network)
    d = load_data("auto", verbose=True)
    line, detail = capsys.readouterr().out.splitlines()
    assert line.startswith(f"data: CIFAR-10 in {default_root / 'cifar-10-batches-py'} is damaged (data_batch_1, "
                           "data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch, batches.meta: "
                           "missing or failing torchvision's MD5 check): using the built-in synthetic set")
    assert detail == f"data: detail: {d.details}" and "Name or service not known" in d.details


def test_a_damaged_data_dir_is_refused_naming_its_files(tmp_path):
    write_torchvision_root(tmp_path, small_arrays())  # hand-made pickles: every MD5 differs
    damaged = "cifar-10-batches-py is damaged \\(data_batch_1, .*batches.meta: missing"
    with pytest.raises(CourseError, match=damaged) as err:
        load_data("auto", tmp_path)
    assert "\n" not in str(err.value)


def test_cifar10_source_fails_clearly_when_unavailable(default_root, monkeypatch):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", failing_cifar10(NO_NETWORK))
    with pytest.raises(CourseError, match="CIFAR-10 is not available \\(not found and no network: <urlopen error "
                                          "\\[Errno -2\\] Name or service not known>\\).*--data synthetic") as err:
        load_data("cifar10")
    assert "\n" not in str(err.value)


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


# ---------------------------------------------------------------- .npy headers, checked before the data
def write_npy_header(path: Path, descr: str, shape: tuple, data: bytes = b"") -> None:
    """A .npy file whose header claims `shape` whatever the data after it holds."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
        f.write(data)


@pytest.mark.parametrize("dtype", ["i1", "<i2", ">i2", "<i4", ">i4", ">i8", "u1", "<u2", ">u4", ">u8"])
def test_integer_labels_of_any_width_and_byte_order_become_native_int64(tmp_path, dtype):
    arrays = small_arrays()
    folder = write_npy_layout(tmp_path, arrays)
    np.save(folder / "train_y.npy", arrays[1].astype(dtype))
    d = load_data("auto", folder)
    assert d.train_y.dtype == np.dtype(np.int64) and d.train_y.dtype.isnative
    np.testing.assert_array_equal(d.train_y, arrays[1])


@pytest.mark.parametrize("labels,found", [
    (np.array([0, 10], ">i4"), "0..10"),
    (np.array([0, 2**63 + 1], "<u8"), "0..9223372036854775809"),  # would wrap to a negative int64
    (np.array([-1, 3], ">i2"), "-1..3"),
])
def test_labels_are_range_checked_before_conversion(tmp_path, labels, found):
    folder = write_npy_layout(tmp_path, small_arrays(n_test=2))
    np.save(folder / "test_y.npy", labels)
    with pytest.raises(CourseError, match=f"test_y.npy: labels must lie in 0-9, found {found}$"):
        load_data("auto", folder)


@pytest.mark.parametrize("dtype", [">u2", "i1", "bool", "float64"])
def test_images_must_be_uint8(tmp_path, dtype):
    folder = write_npy_layout(tmp_path, small_arrays())
    np.save(folder / "test_x.npy", np.zeros((10, 32, 32, 3), dtype))
    with pytest.raises(CourseError, match="test_x.npy: images must be uint8"):
        load_data("auto", folder)


@pytest.mark.parametrize("name,descr,shape", [
    ("test_x.npy", "|u1", (10**12, 32, 32, 3)),  # 3 TB promised, one image's bytes present
    ("train_y.npy", "<i8", (2**62,)),
    ("test_y.npy", ">i4", (3,)),  # fewer bytes promised than the file holds
])
def test_a_header_that_disagrees_with_the_file_size_is_refused_before_loading(tmp_path, name, descr, shape):
    folder = write_npy_layout(tmp_path, small_arrays())
    write_npy_header(folder / name, descr, shape, data=bytes(3072))
    with pytest.raises(CourseError, match=f"{name}: not a readable .npy file \\(its header describes .* bytes, "
                                          "but 3,072 bytes follow it\\)"):
        load_data("auto", folder)


def test_a_negative_length_in_a_header_is_refused(tmp_path):
    folder = write_npy_layout(tmp_path, small_arrays())
    write_npy_header(folder / "train_y.npy", "<i8", (-20,), data=bytes(160))
    with pytest.raises(CourseError, match="train_y.npy: not a readable .npy file \\(negative length"):
        load_data("auto", folder)


def test_a_header_length_past_the_end_of_the_file_is_refused_before_it_is_read(tmp_path):
    import tracemalloc

    folder = write_npy_layout(tmp_path, small_arrays())
    # A 2.0 header's length field is 4 bytes: this one claims 2 GB of header in a 14-byte file.
    (folder / "test_y.npy").write_bytes(np.lib.format.magic(2, 0) + (2**31).to_bytes(4, "little") + b"{}")
    tracemalloc.start()  # numpy and Python report their allocations to tracemalloc
    try:
        with pytest.raises(CourseError, match="test_y.npy: not a readable .npy file \\(its header length, "
                                              "2,147,483,648 bytes, runs past the end of the file\\)"):
            load_data("auto", folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"{peak:,} bytes allocated"


UNPICKLED = []


def unpickled() -> None:
    UNPICKLED.append(True)


class Tripwire:
    """Records it if it is ever unpickled."""

    def __reduce__(self):
        return unpickled, ()


def test_pickled_arrays_are_refused_without_being_unpickled(tmp_path):
    folder = write_npy_layout(tmp_path, small_arrays())
    np.save(folder / "train_y.npy", np.array([Tripwire()] * 20, dtype=object), allow_pickle=True)
    with pytest.raises(CourseError, match="train_y.npy: holds Python objects, which would have to be unpickled"):
        load_data("auto", folder)
    assert UNPICKLED == []


@pytest.mark.parametrize("header", [
    b"-" * 9000 + b"1",  # so deeply nested that Python's parser raises MemoryError
    b"a." * 4900 + b"a",  # ... RecursionError
    b"{[]: 1}",  # a list as a dictionary key: TypeError
    b"{'descr': '<i8', 'fortran_order': False, 'shape': (",  # unbalanced: tokenize.TokenError
    b"{'descr': 'x', 'fortran_order': False, 'shape': (3,), }",
    b"[1, 2, 3]",  # valid Python, but not the dictionary numpy expects
    b"\x00",
])
def test_a_malformed_header_is_one_line(tmp_path, header):
    folder = write_npy_layout(tmp_path, small_arrays())
    (folder / "test_y.npy").write_bytes(np.lib.format.magic(1, 0) + len(header).to_bytes(2, "little") + header)
    with pytest.raises(CourseError, match="test_y.npy: not a readable .npy file \\(") as err:
        load_data("auto", folder)
    assert "\n" not in str(err.value) and len(str(err.value)) < 200 + len(str(folder))


@pytest.mark.parametrize("content,message", [
    (b"GIF89a not numpy at all", "the magic string is not correct"),
    (np.lib.format.magic(3, 0) + bytes(60), "format version 3.0"),
    (b"", "EOF: reading magic string"),
])
def test_files_that_are_not_npy_arrays_are_refused(tmp_path, content, message):
    folder = write_npy_layout(tmp_path, small_arrays())
    (folder / "test_x.npy").write_bytes(content)
    with pytest.raises(CourseError, match=f"test_x.npy: not a readable .npy file \\({message}"):
        load_data("auto", folder)


def test_a_folder_where_a_file_should_be_is_named(tmp_path):
    folder = write_npy_layout(tmp_path, small_arrays())
    (folder / "test_y.npy").unlink()
    (folder / "test_y.npy").mkdir()
    with pytest.raises(CourseError, match="test_y.npy: not a file"):
        load_data("auto", folder)


def test_version_2_and_fortran_order_files_load_as_c_order_arrays(tmp_path):
    arrays = small_arrays()
    folder = write_npy_layout(tmp_path, arrays)
    with open(folder / "test_x.npy", "wb") as f:
        np.lib.format.write_array(f, np.asfortranarray(arrays[2]), version=(2, 0))
    d = load_data("auto", folder)
    np.testing.assert_array_equal(d.test_x, arrays[2])
    assert d.test_x.flags.c_contiguous


# ---------------------------------------------------------------- which files are shards
def test_shards_are_read_in_numeric_order_not_name_order(tmp_path):
    arrays = small_arrays(n_train=24)
    folder = write_npy_layout(tmp_path, arrays, shards=12)  # train_x_10.npy sorts before train_x_2.npy by name
    np.testing.assert_array_equal(load_data("auto", folder).train_x, arrays[0])


def test_zero_padded_shards_numbered_from_one_load(tmp_path):
    arrays = small_arrays()
    folder = write_npy_layout(tmp_path, arrays, shards=2)
    (folder / "train_x_1.npy").rename(folder / "train_x_02.npy")
    (folder / "train_x_0.npy").rename(folder / "train_x_01.npy")
    np.testing.assert_array_equal(load_data("auto", folder).train_x, arrays[0])


def test_files_that_are_clearly_not_shards_are_ignored(tmp_path):
    arrays = small_arrays()
    folder = write_npy_layout(tmp_path, arrays)
    for stray in ("train_x_1.npy.bak", "train_x_7.npz", "notes.txt", "mean.npy", "test_x_0.npy"):
        (folder / stray).write_bytes(b"anything")
    np.testing.assert_array_equal(load_data("auto", folder).train_x, arrays[0])


@pytest.mark.parametrize("extra,message", [
    ("train_x_final.npy", "train_x_final.npy: neither train_x.npy nor a shard train_x_<number>.npy"),
    ("train_x_1a.npy", "train_x_1a.npy: neither train_x.npy nor a shard"),
    ("train_x_01.npy", "train_x_01.npy and train_x_1.npy are both shard 1; keep one"),
    ("train_x_3.npy", "the shards are numbered 0, 1, 3; they must run from 0 or 1 without gaps"),
    ("train_x.npy", "holds both train_x.npy and shards"),
])
def test_names_that_might_be_shards_are_refused(tmp_path, extra, message):
    folder = write_npy_layout(tmp_path, small_arrays())
    np.save(folder / extra, np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(CourseError, match=message) as err:
        load_data("auto", folder)
    assert "\n" not in str(err.value)


def test_shards_must_start_at_zero_or_one(tmp_path):
    folder = write_npy_layout(tmp_path, small_arrays())
    (folder / "train_x_1.npy").rename(folder / "train_x_3.npy")
    (folder / "train_x_0.npy").rename(folder / "train_x_2.npy")
    with pytest.raises(CourseError, match="the shards are numbered 2, 3; they must run from 0 or 1"):
        load_data("auto", folder)


def test_a_mis_shaped_shard_is_named(tmp_path):
    folder = write_npy_layout(tmp_path, small_arrays(), shards=3)
    np.save(folder / "train_x_1.npy", np.zeros((5, 32, 32), np.uint8))
    expected = f"{folder / 'train_x_1.npy'}: images must have shape (N, 32, 32, 3), got (5, 32, 32)"
    with pytest.raises(CourseError, match=f"^{re.escape(expected)}$"):
        load_data("auto", folder)
