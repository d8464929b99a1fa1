"""CIFAR-10 as plain arrays: uint8 images (N, 32, 32, 3) and int64 labels (N,).

Where the data comes from (`--data auto`, the default), in order:
1. `--data-dir DIR` when given: a torchvision CIFAR-10 root (holding `cifar-10-batches-py/`)
   or a folder in the offline `.npy` layout (train_x_0.npy ..., train_y.npy, test_x.npy,
   test_y.npy; see the README);
2. the torchvision root `./data`, downloaded by torchvision's own `CIFAR10` class if needed;
3. a built-in synthetic data set, made from the seed in a fraction of a second.
`--data cifar10` insists on the real thing; `--data synthetic` always works.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import CourseError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SOURCES = ("auto", "cifar10", "synthetic")
DEFAULT_ROOT = Path("data")
IMAGE_SHAPE = (32, 32, 3)
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 8_000, 2_000


@dataclass
class CifarArrays:
    train_x: np.ndarray  # (N, 32, 32, 3) uint8
    train_y: np.ndarray  # (N,) int64
    test_x: np.ndarray
    test_y: np.ndarray
    source: str  # one line for the learner: where the data came from
    root: Path | None = None  # the torchvision root, when the data came through torchvision
    classes: tuple[str, ...] = field(default=CLASSES)


def load_data(source: str = "auto", data_dir: str | os.PathLike | None = None, seed: int = 0,
              verbose: bool = True) -> CifarArrays:
    """Load CIFAR-10 (or its synthetic stand-in) and check it; print one line naming the source."""
    if source not in SOURCES:
        raise CourseError(f"unknown data source {source!r}: choose one of {', '.join(SOURCES)}")
    data = _load_unchecked(source, data_dir, seed)
    validate(data)
    if verbose:
        print(f"data: {data.source} ({len(data.train_y)} train, {len(data.test_y)} test images)")
    return data


def _load_unchecked(source: str, data_dir, seed: int) -> CifarArrays:
    if source == "synthetic":
        return make_synthetic(seed)
    if data_dir is not None:
        return load_dir(Path(data_dir))
    try:
        return load_torchvision(DEFAULT_ROOT, download=True)
    except CourseError as err:
        if source == "cifar10":
            raise CourseError(f"CIFAR-10 is not available ({err}); "
                              "use --data-dir DIR for a local copy, or --data synthetic") from None
        print(f"data: CIFAR-10 not available ({err}); using the built-in synthetic set")
        return make_synthetic(seed)


def load_dir(directory: Path) -> CifarArrays:
    """A folder given by --data-dir: the offline .npy layout or a torchvision root."""
    if not directory.is_dir():
        raise CourseError(f"--data-dir {directory}: no such folder")
    if (directory / "train_y.npy").exists():
        return load_npy(directory)
    if (directory / "cifar-10-batches-py").is_dir():
        return load_torchvision(directory, download=False)
    raise CourseError(f"--data-dir {directory}: holds neither the .npy layout (train_y.npy, ...) "
                      "nor a torchvision root (cifar-10-batches-py/)")


def load_npy(directory: Path) -> CifarArrays:
    """The offline layout: train_x.npy or shards train_x_0.npy, train_x_1.npy, ...; the rest whole."""
    shards = sorted(directory.glob("train_x_*.npy"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    train_files = shards or [directory / "train_x.npy"]
    train_x = np.concatenate([_read_npy(f) for f in train_files])
    return CifarArrays(train_x, _read_npy(directory / "train_y.npy"),
                       _read_npy(directory / "test_x.npy"), _read_npy(directory / "test_y.npy"),
                       source=f"CIFAR-10 from the .npy files in {directory}")


def _read_npy(path: Path) -> np.ndarray:
    if not path.exists():
        raise CourseError(f"{path}: missing (the .npy layout needs train_x*, train_y, test_x, test_y)")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise CourseError(f"{path}: not a readable .npy file ({err})") from None


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
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CourseError(f"torchvision CIFAR10 at {root}: {reason}") from None
    return CifarArrays(train.data, np.asarray(train.targets, dtype=np.int64),
                       test.data, np.asarray(test.targets, dtype=np.int64),
                       source=f"CIFAR-10 via torchvision from {root}", root=root)


def validate(data: CifarArrays) -> None:
    """Say exactly what is wrong with loaded arrays, instead of failing somewhere in training."""
    for split in ("train", "test"):
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        where = f"{split} data ({data.source})"
        if x.dtype != np.uint8:
            raise CourseError(f"{where}: images must be uint8, got {x.dtype}")
        if x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
            raise CourseError(f"{where}: images must have shape (N, 32, 32, 3), got {x.shape}")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise CourseError(f"{where}: labels must be a 1-D integer array, got {y.dtype} {y.shape}")
        if len(x) != len(y):
            raise CourseError(f"{where}: {len(x)} images but {len(y)} labels")
        if len(x) == 0:
            raise CourseError(f"{where}: no images")
        if y.min() < 0 or y.max() >= len(CLASSES):
            raise CourseError(f"{where}: labels must lie in 0-9, found {y.min()}..{y.max()}")


# ---------------------------------------------------------------- the synthetic data set
# Ten classes, each a shape with its own colour, drawn at a random place and size on a random
# background, with pixel noise. Colour and shape both carry the class, so the small convnet
# learns it well above chance in one epoch, yet it is not trivial: colours are jittered and
# the noise is strong.
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 250, 250]],
                   dtype=np.int16)


def make_synthetic(seed: int = 0, n_train: int = SYNTHETIC_TRAIN, n_test: int = SYNTHETIC_TEST) -> CifarArrays:
    """A deterministic, learnable, CIFAR-shaped stand-in: same seed, same images."""
    rng = np.random.default_rng([seed, 10])
    train_x, train_y = _synthetic_split(rng, n_train)
    test_x, test_y = _synthetic_split(rng, n_test)
    return CifarArrays(train_x, train_y, test_x, test_y, source=f"built-in synthetic set (seed {seed})")


def _synthetic_split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, len(CLASSES), size=n)
    centre = rng.uniform(10, 22, size=(n, 2)).astype(np.float32)
    size = rng.uniform(5, 9, size=(n, 1)).astype(np.float32)
    pixels = np.arange(32, dtype=np.float32)
    dy = ((pixels - centre[:, :1]) / size)[:, :, None]  # (N, 32, 1): rows, relative to the shape
    dx = ((pixels - centre[:, 1:]) / size)[:, None, :]  # (N, 1, 32): columns
    mask = np.zeros((n, 32, 32), dtype=bool)
    for label, shape in enumerate(_SHAPES):  # a loop over the 10 classes, not over images
        chosen = labels == label
        mask[chosen] = shape(dy[chosen], dx[chosen])
    background = rng.integers(0, 120, size=(n, 1, 1, 3), dtype=np.int16)
    colour = (PALETTE[labels] + rng.normal(0, 20, size=(n, 3))).astype(np.int16)[:, None, None, :]
    images = np.where(mask[..., None], colour, background)  # (N, 32, 32, 3) int16
    images += rng.integers(-40, 41, size=images.shape, dtype=np.int16)  # uniform pixel noise
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


_SHAPES = (
    lambda dy, dx: np.maximum(abs(dy), abs(dx)) < 1,  # square
    lambda dy, dx: dy**2 + dx**2 < 1,  # disc
    lambda dy, dx: (dy**2 + dx**2 < 1) & (dy**2 + dx**2 > 0.4),  # ring
    lambda dy, dx: (abs(dy) < 0.3) & (abs(dx) < 1.2) | (abs(dx) < 0.3) & (abs(dy) < 1.2),  # cross
    lambda dy, dx: (dy > -1) & (dy < 1) & (abs(dx) < (dy + 1) / 2),  # triangle
    lambda dy, dx: (abs(dy) < 1.2) & (abs(dx) < 1.2) & (np.floor(dy * 2) % 2 == 0),  # stripes
    lambda dy, dx: (abs(dy) < 1.2) & (abs(dx) < 1.2) & (np.floor(dx * 2) % 2 == 0),  # bars
    lambda dy, dx: (abs(dy) < 1.2) & (abs(dx) < 1.2) & ((np.floor(dy * 2) + np.floor(dx * 2)) % 2 == 0),  # checks
    lambda dy, dx: abs(dy) + abs(dx) < 1.2,  # diamond
    lambda dy, dx: (abs(dy - dx) < 0.35) & (abs(dy) < 1.2),  # diagonal bar
)
