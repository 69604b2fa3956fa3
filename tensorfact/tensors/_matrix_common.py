"""Numerical pieces shared by the matrix types (:class:`LowRankMatrix`, :class:`CURMatrix`)."""

from __future__ import annotations

from tensorfact._numerics import pow2_normalize, pow2_restore, safe_sqrt

__all__ = ["norm_of_scaled"]


def norm_of_scaled(leaves, norm_sq, precision):
    """``sqrt(norm_sq(*leaves, precision))`` for a norm that is homogeneous of degree one in
    each leaf, computed on the leaves divided by powers of two near their largest entries
    (exact) and scaled back with ``ldexp``. The result is finite whenever the norm is
    representable (no squared 1e20 overflows, no squared 1e-30 underflows), NaN stays NaN,
    and the gradient at a zero matrix is zero (not NaN)."""
    mantissas, exponents = zip(*(pow2_normalize(leaf) for leaf in leaves))
    return pow2_restore(safe_sqrt(norm_sq(*mantissas, precision)), sum(exponents))
