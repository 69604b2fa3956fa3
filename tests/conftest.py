"""Shared fixtures, and the hypothesis profile for CI (the environment is set by the root
conftest.py)."""

import os

import jax
import numpy as np
import pytest
from hypothesis import settings

# CI draws the same hypothesis examples on every run (CI=true); locally they vary.
if os.environ.get("CI"):
    settings.register_profile("ci", derandomize=True, print_blob=True)
    settings.load_profile("ci")


@pytest.fixture
def key():
    """A fixed JAX PRNG key."""
    return jax.random.key(0)


@pytest.fixture
def rng():
    """A fixed NumPy generator (test data are drawn here, then handed to JAX)."""
    return np.random.default_rng(0)

