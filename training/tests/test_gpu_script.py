"""scripts/train-parity-gpu end to end on the CPU (DEVICE=cpu, a few hundred examples, one
short epoch per model): both training phases, the hand-over of phase 1's checkpoints to
phase 2, and `finish` writing checked models and manifests. Fashion-MNIST is replaced by
random images (CI does not install the Debian package); MNIST is the real one."""

import json
import os
import subprocess
import sys

import numpy as np

from parm_training.idx import write_idx


def fake_fashion(folder):
    rng = np.random.default_rng(0)
    folder.mkdir()
    for prefix, n in (("train", 5300), ("t10k", 100)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))


def test_train_parity_gpu_script_trains_hands_over_and_finishes(tmp_path, repo):
    fake_fashion(tmp_path / "fashion")
    env = {**os.environ, "PY": sys.executable, "DEVICE": "cpu", "MINUTES": "0.01", "MINUTES2": "0.01",
           "LIMIT": "200", "MODELS": str(tmp_path / "models"), "PARM_FASHION_MNIST_DIR": str(tmp_path / "fashion")}
    script = repo / "scripts" / "train-parity-gpu"
    work = tmp_path / "work"
    subprocess.run([script, "train", work], env=env, check=True, capture_output=True, text=True)
    finals = {"mnist-add-k2", "mnist-add-k3", "mnist-add-k4", "mnist-concat-k4", "fashion-concat-k2", "fashion-add-k2"}
    shifted = {f"{n}-shifted" for n in finals}
    assert {p.stem for p in work.glob("*.npz")} == finals | shifted

    done = subprocess.run([script, "finish", work], env=env, check=True, capture_output=True, text=True)
    models = tmp_path / "models"
    names = {p.stem for p in models.glob("*.json")}
    assert names == {"mnist-lenet-parity-add-k2", "mnist-lenet-parity-add-k3", "mnist-lenet-parity-add-k4",
                     "mnist-lenet-parity-concat-k4", "fashion-mnist-lenet-parity-add-k2",
                     "fashion-mnist-lenet-parity-concat-k2"}
    assert done.stdout.count("ok   ") == len(names) and "FAIL" not in done.stdout
    fashion = json.loads((models / "fashion-mnist-lenet-parity-add-k2.json").read_text())["training"]
    # Phase 2 continued phase 1's convnet, without shifts; phase 1 had them.
    assert fashion["arch"] == "convnet" and "augmentation" not in fashion and fashion["device"] == "cpu"
    assert "fashion-add-k2-shifted.npz" in fashion["command"] and "augmentation" in fashion["continued_from"]
    k4 = json.loads((models / "mnist-lenet-parity-add-k4.json").read_text())["training"]
    assert "augmentation" not in k4 and k4["continued_from"]["init"] == "F's weights"
    k2 = json.loads((models / "mnist-lenet-parity-add-k2.json").read_text())["training"]
    # MNIST addition k = 2 keeps its shifts in phase 2 and picks its epoch on 3 groupings.
    assert k2["arch"] == "convnet" and k2["optimizer"]["lr"] == 5e-4 and "augmentation" in k2
    assert k2["validation"]["groupings"] == 3
    assert "mnist-add-k2-shifted.npz" in k2["command"] and k2["continued_from"]["init"] == "random"


def test_train_parity_gpu_script_r2_jobs_pick_candidates_and_evaluate_the_codes(tmp_path, repo):
    """JOBS=r2: parity 1 of the r = 2 codes at k = 2, 4 and addition at k = 8, two candidates
    each (compare --pick keeps one), concatenation k = 8, and each code's erasure patterns
    recorded in its parity-1 manifest."""
    env = {**os.environ, "PY": sys.executable, "DEVICE": "cpu", "MINUTES": "0.01", "MINUTES2": "0.01",
           "LIMIT": "200", "MODELS": str(tmp_path / "models"), "JOBS": "r2"}
    script = repo / "scripts" / "train-parity-gpu"
    work = tmp_path / "work"
    subprocess.run([script, "train", work], env=env, check=True, capture_output=True, text=True)
    finals = {"k2-r2-p1-convnet", "k2-r2-p1-lenet", "k4-r2-p1", "k4-r2-p1-warm", "add-k8", "add-k8-convnet", "concat-k8"}
    assert {p.stem for p in work.glob("*.npz")} == finals | {f"{n}-shifted" for n in finals}

    done = subprocess.run([script, "finish", work], env=env, check=True, capture_output=True, text=True)
    models = tmp_path / "models"
    assert {p.stem for p in models.glob("*.json")} == {
        "mnist-lenet-parity-add-k2-r2-p1", "mnist-lenet-parity-add-k4-r2-p1", "mnist-lenet-parity-add-k8",
        "mnist-lenet-parity-concat-k8"}
    assert done.stdout.count("best: ") == 3 and "FAIL" not in done.stdout
    k4 = json.loads((models / "mnist-lenet-parity-add-k4-r2-p1.json").read_text())
    assert (k4["parity_index"], k4["parities"]) == (1, 2) and k4["weights"] == [1.0, 4 / 3, 1 + 2 / 3, 2.0]
    assert "augmentation" not in k4["training"] and "augmentation" in k4["training"]["continued_from"]
    code = k4["accuracy"]["code"]
    assert code["parity_models"] == ["mnist-lenet-parity-add-k4", "mnist-lenet-parity-add-k4-r2-p1"]
    assert [(p["missing"], p["parities"], p["reconstructions"]) for p in code["patterns"]] == [
        (1, [0], 10000), (1, [1], 10000), (1, [0, 1], 10000), (2, [0, 1], 6 * 2500 * 2)]
    k8 = json.loads((models / "mnist-lenet-parity-add-k8.json").read_text())
    assert k8["k"] == 8 and not {"parity_index", "parities", "weights"} & set(k8)
