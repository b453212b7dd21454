"""The committed models/ folder: the contract the Rust side reads."""

import json

import numpy as np
import pytest

from parm_training import export
from parm_training.idx import read_idx


def manifests(repo):
    return sorted((repo / "models").glob("*.json"))


def test_models_are_committed(repo):
    names = {p.name for p in manifests(repo)}
    assert {"mnist-mlp.json", "mnist-mlp-parity-add-k2.json"} <= names


@pytest.mark.parametrize("name", ["mnist-mlp.json", "mnist-mlp-parity-add-k2.json"])
def test_manifest_reference_reproduces(repo, name):
    path = repo / "models" / name
    assert export.check_manifest(path) < export.TOLERANCE
    m = json.loads(path.read_text())
    assert (path.parent / m["file"]).is_file()


def test_parity_manifest_names_its_base(repo):
    parity = json.loads((repo / "models" / "mnist-mlp-parity-add-k2.json").read_text())
    base = json.loads((repo / "models" / f"{parity['base']}.json").read_text())
    assert base["role"] == "base" and base["dataset"] == parity["dataset"]
    assert parity["accuracy"]["base_top1"] == base["accuracy"]["test_top1"]


def test_test_data_files_are_the_first_2000_test_examples(repo, mnist):
    images = read_idx(repo / "models" / "data" / "mnist-test-images.idx3-ubyte")
    labels = read_idx(repo / "models" / "data" / "mnist-test-labels.idx1-ubyte")
    assert images.shape == (2000, 28, 28) and labels.shape == (2000,)
    assert np.array_equal(images, mnist.test.images[:2000])
    assert np.array_equal(labels, mnist.test.labels[:2000])
    # The base manifest's reference inputs are the first three of these, as p / 255.
    base = json.loads((repo / "models" / "mnist-mlp.json").read_text())
    ref = np.asarray(base["reference"]["inputs"], dtype=np.float32)
    assert np.abs(ref - images[:3].reshape(3, -1) / np.float32(255)).max() < 1e-6


def test_every_committed_model_reproduces_its_reference(repo):
    for path in manifests(repo):
        assert export.check_manifest(path) < export.TOLERANCE, path
        m = json.loads(path.read_text())
        if m["role"] == "parity":
            base = json.loads((path.parent / f"{m['base']}.json").read_text())
            assert base["role"] == "base" and base["dataset"] == m["dataset"], path


def test_full_test_sets_are_the_standard_test_sets(repo, mnist):
    images = read_idx(repo / "models" / "data" / "mnist-t10k-images.idx3-ubyte.gz")
    labels = read_idx(repo / "models" / "data" / "mnist-t10k-labels.idx1-ubyte.gz")
    assert np.array_equal(images, mnist.test.images) and np.array_equal(labels, mnist.test.labels)
    fashion = repo / "models" / "data" / "fashion-mnist-t10k-labels.idx1-ubyte.gz"
    assert read_idx(fashion).shape == (10000,)
