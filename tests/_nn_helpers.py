"""Helpers shared by the ``tensorfact.nn`` test modules: float64 copies, moving an adapter off
its exact start, and an independent NumPy reference of a TT-matrix."""

import jax
import numpy as np
from flax import nnx


def np64(a):
    return np.asarray(a, np.float64)


def perturb(module, seed=3, scale=0.3):
    """Moves every ``nnx.LoRAParam`` of ``module`` (in place) so that an adapter's update is not
    zero and its adapted kernel differs from the base's."""
    keys = iter(jax.random.split(jax.random.key(seed), 16))
    for _, var in nnx.iter_graph(module):
        if isinstance(var, nnx.LoRAParam):
            var[...] = var[...] + scale * jax.random.normal(next(keys), var[...].shape)
    return module


def tt_dense_reference(cores):
    """The ``(∏ m, ∏ n)`` TT-matrix from its cores ``(r, m, n, r')``, in float64 NumPy."""
    t = np.ones((1, 1, 1))                                     # (rows, cols, rank)
    for g in map(np64, cores):
        t = np.einsum("pqa,amnb->pmqnb", t, g)
        t = t.reshape(t.shape[0] * t.shape[1], t.shape[2] * t.shape[3], t.shape[4])
    return t[..., 0]
