import jax
import numpy as np
import pytest


@pytest.fixture
def key():
    """A fixed JAX PRNG key."""
    return jax.random.key(0)


@pytest.fixture
def rng():
    """A fixed NumPy generator (test data are drawn here, then handed to JAX)."""
    return np.random.default_rng(0)
