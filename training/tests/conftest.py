from pathlib import Path

import pytest
import torch

# One thread: tests share a two-core machine with builds.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def mnist():
    from parm_training import data

    return data.load_mnist()
