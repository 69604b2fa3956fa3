"""Numerical pieces shared by the matrix types (:class:`LowRankMatrix`, :class:`CURMatrix`)."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from tensorfact._numerics import pow2_scale

__all__ = ["norm_of_scaled"]


def norm_of_scaled(leaves, norm_sq, precision):
    """``sqrt(norm_sq(*leaves, precision))`` for a norm that is homogeneous of degree one in
    each leaf, computed on the leaves divided by powers of two near their largest entries
    (exact) and scaled back with ``ldexp``. The result is finite whenever the norm is
    representable (no squared 1e20 overflows, no squared 1e-30 underflows), NaN stays NaN,
    and the gradient at a zero matrix is zero (not NaN)."""
    scales = [lax.stop_gradient(pow2_scale(leaf)) for leaf in leaves]
    sq = norm_sq(*(leaf / c for leaf, c in zip(leaves, scales)), precision)
    positive = sq > 0
    root = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1)), jnp.where(sq == sq, 0, sq))
    exponent = sum(jnp.frexp(c)[1] - 1 for c in scales)  # each c = 2^(e − 1)
    return jnp.ldexp(root, exponent)
