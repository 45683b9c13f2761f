import pytest
import torch

from training.checkpoints import resolve_checkpoint
from training.synthetic import synthetic_dataset


@pytest.fixture(autouse=True, scope="session")
def _two_threads():
    # The CI machine has 2 cores; more threads only add contention.
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def random_vit_t():
    return resolve_checkpoint("vit_t", "random")


@pytest.fixture(scope="session")
def tiny_dataset():
    return synthetic_dataset(4, 128, seed=3)
