"""Helpers shared by the test modules."""

import jax
import numpy as np


def x64():
    """A context in which JAX creates float64 arrays (without touching the global config)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # older JAX
    return enable_x64()


def rel(x, y):
    """‖x − y‖ / ‖x‖ in float64 NumPy: an error measure independent of the library."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return float(np.linalg.norm(x - y) / np.linalg.norm(x))
