"""CIFAR-10 as plain arrays: uint8 images (N, 32, 32, 3) and int64 labels (N,).

Where the data comes from (`--data auto`, the default), in order:
1. `--data-dir DIR` when given: a torchvision CIFAR-10 root (holding `cifar-10-batches-py/`)
   or a folder in the offline `.npy` layout (train_x.npy or shards, train_y.npy, test_x.npy,
   test_y.npy; see docs/running.md);
2. the torchvision root `./data`, downloaded by torchvision's own `CIFAR10` class if needed;
3. a built-in synthetic data set, made from the seed in a fraction of a second.
`--data cifar10` insists on the real thing; `--data synthetic` always works. When `auto` falls
back to the synthetic set, the printed line says why in plain words (no network, a download
that failed otherwise, or a damaged `cifar-10-batches-py/`); torchvision's own error is kept in
`CifarArrays.details` and printed with `verbose=True`.

The `.npy` layout, file by file:
- Training images are either one `train_x.npy` or shards named `train_x_<digits>.npy`, read
  in numeric order (`train_x_2.npy` before `train_x_10.npy`; zero-padding is allowed) and
  numbered without gaps from 0 or 1. Files that are clearly not shards are ignored: names not
  ending in `.npy` (`train_x_1.npy.bak`, `notes.txt`) and `.npy` files whose names do not start
  with `train_x` (`mean.npy`). Refused with one line, because the intent is unclear: any other
  `.npy` file starting with `train_x` (`train_x_final.npy`), two shards with one number
  (`train_x_01.npy` and `train_x_1.npy`), a gap in the numbers, or `train_x.npy` beside shards.
- Every file's header is read and checked before its data: images must be uint8 with shape
  (N, 32, 32, 3); labels a 1-D array of integers of any width, signedness and byte order,
  converted to native int64 once their values are checked to lie in 0-9. The data the header
  describes must fill the rest of the file exactly, so a header that promises more than the
  file holds (or a header length past its end) is refused before numpy allocates anything for
  it. Object (pickled) arrays are refused without being unpickled.
"""
from __future__ import annotations

import errno
import os
import re
import socket
import tokenize
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from common.errors import CourseError, one_line

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CHANCE = 1 / len(CLASSES)  # a guess's accuracy: one class in ten (the synthetic set has ten too)
SOURCES = ("auto", "cifar10", "synthetic")
DEFAULT_ROOT = Path("data")
IMAGE_SHAPE = (32, 32, 3)
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 8_000, 2_000
TORCHVISION_FOLDER = "cifar-10-batches-py"  # what torchvision's CIFAR10 reads inside its root
SHARD_NAME = re.compile(r"train_x_([0-9]+)\.npy")
SYNTHETIC_SOURCE = "built-in synthetic set"  # how the `source` of make_synthetic's data begins
# What figures, tables and captions call the data of a run: the synthetic shapes are far easier
# than CIFAR-10's photographs, so a result on them must never pass for a CIFAR-10 result.
SYNTHETIC_NAME, CIFAR10_NAME = "synthetic shapes, not CIFAR-10", "CIFAR-10"
UNKNOWN_NAME = "data not recorded"


@dataclass
class CifarArrays:
    train_x: np.ndarray  # (N, 32, 32, 3) uint8
    train_y: np.ndarray  # (N,) int64
    test_x: np.ndarray
    test_y: np.ndarray
    source: str  # one line for the learner: where the data came from
    classes: tuple[str, ...] = field(default=CLASSES)  # label k is classes[k]
    fallback: str | None = None  # why not the real data, in plain words ("not found and no network")
    details: str | None = None  # the technical reason behind `fallback`, for the run record


def data_name(source: str | None) -> str:
    """The name of a run's data for a figure or a table, from the `source` its record keeps
    (summary.json's data.source): SYNTHETIC_NAME, CIFAR10_NAME, or UNKNOWN_NAME without one."""
    if not source:
        return UNKNOWN_NAME
    return SYNTHETIC_NAME if source.startswith(SYNTHETIC_SOURCE) else CIFAR10_NAME


def on_data(name: str) -> str:
    """ "on synthetic shapes, not CIFAR-10" for a title, or what a record naming no data gets."""
    return "(the record names no data)" if name == UNKNOWN_NAME else f"on {name}"


def load_data(source: str = "auto", data_dir: str | os.PathLike | None = None, seed: int = 0, *,
              announce: bool = True, verbose: bool = False) -> CifarArrays:
    """Load CIFAR-10 (or its synthetic stand-in) and check it.

    announce: print one line naming the source; False prints nothing (for all processes of a
    distributed run but one). verbose: when `auto` fell back to the synthetic set, also print
    the technical reason, as a second line.
    """
    if source not in SOURCES:
        raise CourseError(f"unknown data source {source!r}: choose one of {', '.join(SOURCES)}")
    data = _load_unchecked(source, data_dir, seed)
    validate(data)
    if announce:
        print(_announcement(data))
        if verbose and data.details:
            print(f"data: detail: {data.details}")
    return data


def _announcement(data: CifarArrays) -> str:
    if data.fallback is None:
        return f"data: {data.source} ({len(data.train_y)} train, {len(data.test_y)} test images)"
    return (f"data: CIFAR-10 {data.fallback}: using the {data.source}, {len(data.train_y)} train "
            f"and {len(data.test_y)} test images; pass --data-dir DIR for the real one")


def _load_unchecked(source: str, data_dir, seed: int) -> CifarArrays:
    if source == "synthetic":
        return make_synthetic(seed)
    if data_dir is not None:
        return load_dir(Path(data_dir))
    try:
        return load_torchvision(DEFAULT_ROOT, download=True)
    except Unavailable as err:
        if source == "cifar10":
            raise CourseError(f"CIFAR-10 is not available ({err.plain}: {err.reason}); "
                              "use --data-dir DIR for a local copy, or --data synthetic") from None
        data = make_synthetic(seed)
        data.fallback, data.details = err.plain, err.reason
        return data


def load_dir(directory: Path) -> CifarArrays:
    """A folder given by --data-dir: the offline .npy layout or a torchvision root."""
    if not directory.is_dir():
        raise CourseError(f"--data-dir {directory}: no such folder")
    if (directory / "train_y.npy").exists():
        return load_npy(directory)
    if (directory / TORCHVISION_FOLDER).is_dir():
        return load_torchvision(directory, download=False)
    raise CourseError(f"--data-dir {directory}: holds neither the .npy layout (train_y.npy, ...) "
                      "nor a torchvision root (cifar-10-batches-py/)")


def validate(data: CifarArrays) -> None:
    """Say exactly what is wrong with loaded arrays, instead of failing somewhere in training."""
    for split in ("train", "test"):
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        where = f"{split} data ({data.source})"
        if x.dtype != np.uint8:
            raise CourseError(f"{where}: images must be uint8, got {x.dtype}")
        if x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
            raise CourseError(f"{where}: images must have shape (N, 32, 32, 3), got {x.shape}")
        if y.ndim != 1 or y.dtype != np.int64:  # np.int64 is native order, unlike a swapped one
            raise CourseError(f"{where}: labels must be a 1-D array of native int64, got "
                              f"{y.dtype.str} {y.shape}")
        if len(x) != len(y):
            raise CourseError(f"{where}: {len(x)} images but {len(y)} labels")
        if len(x) == 0:
            raise CourseError(f"{where}: no images")
        if y.min() < 0 or y.max() >= len(data.classes):
            raise CourseError(f"{where}: labels must lie in 0-9, found {y.min()}..{y.max()}")


# ---------------------------------------------------------------- the offline .npy layout
def load_npy(directory: Path) -> CifarArrays:
    """The offline layout: train_x.npy or its shards, train_y.npy, test_x.npy, test_y.npy."""
    train_x = np.concatenate([_read_images(f) for f in _train_files(directory)])
    return CifarArrays(train_x, _read_labels(directory / "train_y.npy"),
                       _read_images(directory / "test_x.npy"),
                       _read_labels(directory / "test_y.npy"),
                       source=f"CIFAR-10 from the .npy files in {directory}")


def _train_files(directory: Path) -> list[Path]:
    """train_x.npy, or the shards in numeric order; the rule is in the module docstring."""
    shards = _shards(directory)
    if not shards:
        return [directory / "train_x.npy"]
    if (directory / "train_x.npy").exists():
        raise CourseError(f"{directory}: holds both train_x.npy and shards "
                          "(train_x_<number>.npy); keep one")
    numbers = sorted(shards)
    if numbers[0] > 1 or numbers[-1] - numbers[0] + 1 != len(numbers):
        shown = _clip(", ".join(map(str, numbers)))
        raise CourseError(f"{directory}: the shards are numbered {shown}; "
                          "they must run from 0 or 1 without gaps (is one missing?)")
    return [directory / shards[n] for n in numbers]


def _shards(directory: Path) -> dict[int, str]:
    """Shard number -> file name; refuses the names whose intent is unclear."""
    shards: dict[int, str] = {}
    for name in sorted(p.name for p in directory.iterdir()):
        if not (name.startswith("train_x") and name.endswith(".npy")) or name == "train_x.npy":
            continue  # not a shard, and clearly not meant as one
        match = SHARD_NAME.fullmatch(name)
        if match is None:
            raise CourseError(f"{directory / name}: neither train_x.npy nor a shard "
                              "train_x_<number>.npy; "
                              "rename it or move it out of the folder")
        number = int(match[1])
        if number in shards:
            raise CourseError(f"{directory}: {shards[number]} and {name} are both shard "
                              f"{number}; keep one")
        shards[number] = name
    return shards


def _read_images(path: Path) -> np.ndarray:
    # A Fortran-order file loads as a transposed view; the stages expect C order.
    return np.ascontiguousarray(_read_npy(path, _check_images))


def _read_labels(path: Path) -> np.ndarray:
    labels = _read_npy(path, _check_labels)
    # Checked before the conversion: a uint64 label of 2**63 or more would wrap to a negative int64.
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise CourseError(f"{path}: labels must lie in 0-9, found {labels.min()}..{labels.max()}")
    return labels.astype(np.int64)  # native byte order, whatever the file's


def _check_images(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if dtype != np.uint8:  # one byte has no byte order: '<u1', '>u1' and '|u1' are all uint8
        raise CourseError(f"{path}: images must be uint8, got {_clip(dtype.name)}")
    if len(shape) != 4 or shape[1:] != IMAGE_SHAPE:
        raise CourseError(f"{path}: images must have shape (N, 32, 32, 3), got {_clip(str(shape))}")


def _check_labels(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if dtype.kind not in "iu" or len(shape) != 1:  # kind i: signed integers, u: unsigned
        raise CourseError(f"{path}: labels must be a 1-D integer array, got {_clip(dtype.name)} "
                          f"{_clip(str(shape))}")


def _read_npy(path: Path, check) -> np.ndarray:
    """Read a .npy file's header, check what it claims, and only then read the data."""
    if not path.is_file():
        what = "not a file" if path.exists() else "missing"
        raise CourseError(f"{path}: {what} (the .npy layout needs train_x*, train_y, test_x, "
                          "test_y)")
    try:
        with open(path, "rb") as f:
            shape, dtype = _read_header(path, f)
            check(path, shape, dtype)
            _check_size(path, shape, dtype, data_bytes=os.fstat(f.fileno()).st_size - f.tell())
            f.seek(0)
            return npy_format.read_array(f, allow_pickle=False)
    except OSError as err:
        raise CourseError(f"{path}: cannot be read ({err.strerror or err})") from None


def _read_header(path: Path, f) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype a .npy header claims; leaves `f` where the data begins."""
    try:
        version = npy_format.read_magic(f)
        if version not in ((1, 0), (2, 0)):  # np.save writes 3.0 only for non-latin-1 field names
            raise ValueError(f"format version {version[0]}.{version[1]}; np.save writes plain "
                             "arrays as 1.0 or 2.0")
        _check_header_length(path, f, length_bytes=2 if version == (1, 0) else 4)
        read_header = (npy_format.read_array_header_1_0 if version == (1, 0)
                       else npy_format.read_array_header_2_0)
        shape, _, dtype = read_header(f)
    # numpy parses the header (at most 10000 characters) with ast.literal_eval. Malformed text
    # raises ValueError, TypeError (an unhashable key: "{[]: 1}"), tokenize.TokenError (open
    # brackets, from numpy's fallback for Python 2 headers), or, when nested too deeply for
    # Python's parser, MemoryError ("-" * 9000 + "1") or RecursionError ("a." * 4900 + "a"):
    # here these mean "malformed", not "out of memory". SyntaxError too, should numpy pass it on.
    except (ValueError, TypeError, tokenize.TokenError, MemoryError, RecursionError,
            SyntaxError) as err:
        why = _clip(str(err) or type(err).__name__)
        raise CourseError(f"{path}: not a readable .npy file ({why})") from None
    if dtype.hasobject:
        raise CourseError(f"{path}: holds Python objects, which would have to be unpickled; "
                          "only plain numeric arrays are read")
    return shape, dtype


def _check_header_length(path: Path, f, length_bytes: int) -> None:
    """numpy reads as many bytes as the header's length field says in one call, and Python sets
    aside that much memory first: up to 4 GB for a 2.0 header, however small the file."""
    start = f.tell()
    length = int.from_bytes(f.read(length_bytes), "little")
    f.seek(start)
    if length > os.fstat(f.fileno()).st_size - start - length_bytes:
        raise CourseError(f"{path}: not a readable .npy file (its header length, {length:,} bytes, "
                          "runs past the end of the file)")


def _check_size(path: Path, shape: tuple[int, ...], dtype: np.dtype, data_bytes: int) -> None:
    """The header's promise against the file's size: this is what makes an absurd shape harmless."""
    if any(n < 0 for n in shape):
        raise CourseError(f"{path}: not a readable .npy file (negative length in shape "
                          f"{_clip(str(shape))})")
    needed = dtype.itemsize
    for n in shape:
        needed *= n  # Python ints: no overflow, however absurd the shape
    if needed != data_bytes:
        raise CourseError(f"{path}: not a readable .npy file (its header describes "
                          f"{_clip(str(shape))} "
                          f"{dtype.name}, {needed:,} bytes, but {data_bytes:,} bytes follow it)")


def _clip(text: str, limit: int = 80) -> str:
    """Foreign text (numpy's reasons, a header's shape) as part of one short line."""
    return one_line(text, limit)


# ---------------------------------------------------------------- a torchvision root
class Unavailable(CourseError):
    """torchvision could not provide CIFAR-10: `plain` says why in words, `reason` is its error."""

    def __init__(self, plain: str, reason: str):
        super().__init__(f"CIFAR-10 {plain}; torchvision says: {reason}")
        self.plain, self.reason = plain, reason


def load_torchvision(root: Path, download: bool) -> CifarArrays:
    """torchvision's own CIFAR10 class: it downloads (when allowed) and checks the files' MD5."""
    from torchvision.datasets import CIFAR10

    existed = root.exists()
    try:
        train = CIFAR10(str(root), train=True, download=download)
        test = CIFAR10(str(root), train=False, download=False)
    except Exception as err:  # torchvision raises RuntimeError, URLError, OSError, ...
        if not existed and root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # leave no empty folder behind a failed download
        reason = _clip(str(err) or type(err).__name__, 200)
        raise Unavailable(_why_unavailable(err, root), reason) from None
    return CifarArrays(train.data, np.asarray(train.targets, dtype=np.int64),
                       test.data, np.asarray(test.targets, dtype=np.int64),
                       source=f"CIFAR-10 via torchvision from {root}")


def _why_unavailable(err: Exception, root: Path) -> str:
    """What went wrong, in words a learner can act on (torchvision's reason stays in `details`)."""
    folder = root / TORCHVISION_FOLDER
    if folder.is_dir():
        damaged = _damaged_files(folder)
        if damaged:
            return (f"in {folder} is damaged ({', '.join(damaged)}: missing or failing "
                    "torchvision's MD5 check)")
        return f"in {folder} could not be read"
    if _is_offline(err):
        return "not found and no network"
    return "not found and its download failed"


def _damaged_files(folder: Path) -> list[str]:
    """The files of a cifar-10-batches-py folder that are missing or fail their MD5 check."""
    from torchvision.datasets.cifar import CIFAR10  # its lists of file names and MD5 sums
    from torchvision.datasets.utils import check_integrity

    meta = [[CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]
    expected = CIFAR10.train_list + CIFAR10.test_list + meta
    return [name for name, md5 in expected if not check_integrity(folder / name, md5)]


_OFFLINE_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN}


def _is_offline(err: Exception) -> bool:
    """Whether the download server was never reached: no name lookup, no route, or no answer."""
    # urllib wraps a failed connection in URLError and keeps the socket's error as `reason`.
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    return (isinstance(reason, (socket.gaierror, TimeoutError))
            or getattr(reason, "errno", None) in _OFFLINE_ERRNOS)


# ---------------------------------------------------------------- the synthetic data set
# Ten classes, each a shape with its own colour, drawn at a random place and size on a random
# background, with pixel noise. Colour and shape both carry the class, so the small convnet
# learns it well above chance in one epoch, yet it is not trivial: colours are jittered and
# the noise is strong.
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                    [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230],
                    [210, 245, 60], [250, 250, 250]], dtype=np.int16)


def make_synthetic(seed: int = 0, n_train: int = SYNTHETIC_TRAIN,
                   n_test: int = SYNTHETIC_TEST) -> CifarArrays:
    """A deterministic, learnable, CIFAR-shaped stand-in: same seed, same images."""
    rng = np.random.default_rng([seed, 10])
    train_x, train_y = _synthetic_split(rng, n_train)
    test_x, test_y = _synthetic_split(rng, n_test)
    return CifarArrays(train_x, train_y, test_x, test_y, source=f"{SYNTHETIC_SOURCE} (seed {seed})",
                       classes=SYNTHETIC_CLASSES)


def _synthetic_split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, len(SYNTHETIC_CLASSES), size=n)
    centre = rng.uniform(10, 22, size=(n, 2)).astype(np.float32)
    size = rng.uniform(5, 9, size=(n, 1)).astype(np.float32)
    pixels = np.arange(32, dtype=np.float32)
    dy = ((pixels - centre[:, :1]) / size)[:, :, None]  # (N, 32, 1): rows, relative to the shape
    dx = ((pixels - centre[:, 1:]) / size)[:, None, :]  # (N, 1, 32): columns
    mask = np.zeros((n, 32, 32), dtype=bool)
    for label, shape in enumerate(_SHAPES.values()):  # a loop over the 10 classes, not over images
        chosen = labels == label
        mask[chosen] = shape(dy[chosen], dx[chosen])
    background = rng.integers(0, 120, size=(n, 1, 1, 3), dtype=np.int16)
    colour = (PALETTE[labels] + rng.normal(0, 20, size=(n, 3))).astype(np.int16)[:, None, None, :]
    images = np.where(mask[..., None], colour, background)  # (N, 32, 32, 3) int16
    images += rng.integers(-40, 41, size=images.shape, dtype=np.int16)  # uniform pixel noise
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


_SHAPES = {  # class name -> whether each pixel (dy, dx), in units of the shape's size, is inside it
    "square": lambda dy, dx: np.maximum(abs(dy), abs(dx)) < 1,
    "disc": lambda dy, dx: dy**2 + dx**2 < 1,
    "ring": lambda dy, dx: (dy**2 + dx**2 < 1) & (dy**2 + dx**2 > 0.4),
    "cross": lambda dy, dx: (abs(dy) < 0.3) & (abs(dx) < 1.2) | (abs(dx) < 0.3) & (abs(dy) < 1.2),
    "triangle": lambda dy, dx: (dy > -1) & (dy < 1) & (abs(dx) < (dy + 1) / 2),
    "stripes": lambda dy, dx: (abs(dy) < 1.2) & (abs(dx) < 1.2) & (np.floor(dy * 2) % 2 == 0),
    "bars": lambda dy, dx: (abs(dy) < 1.2) & (abs(dx) < 1.2) & (np.floor(dx * 2) % 2 == 0),
    "checks": lambda dy, dx: ((abs(dy) < 1.2) & (abs(dx) < 1.2)
                              & ((np.floor(dy * 2) + np.floor(dx * 2)) % 2 == 0)),
    "diamond": lambda dy, dx: abs(dy) + abs(dx) < 1.2,
    "diagonal bar": lambda dy, dx: (abs(dy - dx) < 0.35) & (abs(dy) < 1.2),
}
SYNTHETIC_CLASSES = tuple(_SHAPES)  # the label is the index into this tuple
