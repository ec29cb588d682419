import numpy as np
import pytest
from hypothesis import settings

settings.register_profile("default", deadline=None, max_examples=60)
settings.load_profile("default")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def heavy_tailed(rng, shape, dtype=np.float32, scale=0.01):
    """Values shaped like real model updates: Student-t with 3 degrees of freedom."""
    return (rng.standard_t(3, size=shape) * scale).astype(dtype)
