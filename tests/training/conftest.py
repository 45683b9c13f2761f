import pytest
import torch

from training.data.synthetic import synthetic_dataset
from training.model.weights import resolve_checkpoint


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
