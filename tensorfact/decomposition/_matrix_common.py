"""Numerical pieces shared by the matrix fits (``svd``, ``nmf``, ``complete``, ``rpca``).

* :func:`pow2_root`: the power-of-two scale of :func:`tensorfact._numerics.pow2_scale` rounded
  to an even power, so that it splits exactly over two factors (``W H``, ``A Bᵀ``).
* :func:`thin_svd`: ``jnp.linalg.svd(a, full_matrices=False)`` whose derivative stays finite
  where singular values repeat or vanish (zero rows or columns, rank-deficient data).
* :func:`relative_error`, :func:`error_from_norms`: the fits' error measures, with finite
  gradients at a perfect fit (where ``‖x − x̂‖ = 0`` and ``sqrt`` has an infinite slope).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from tensorfact._numerics import pow2_scale, safe_divide, safe_sqrt

__all__ = ["pow2_root", "times_root_power", "thin_svd", "relative_error", "error_from_norms",
           "ratio"]

_HIGHEST = lax.Precision.HIGHEST


def pow2_root(x, where=None):
    """``(scale, root)`` with ``scale = root²`` a power of two and ``max |x| / scale`` in
    ``(1/2, 2]`` (over the entries where ``where`` is True); ``(1, 1)`` for zero or non-finite
    data. A fit of a product ``W H`` runs on ``x / scale`` and multiplies each factor by
    ``root``, exactly. Not differentiated (the scale is piecewise constant)."""
    s = lax.stop_gradient(pow2_scale(x, where))
    _, exponent = jnp.frexp(s)  # s = 2^(exponent − 1)
    root = jnp.ldexp(jnp.ones((), s.dtype), (exponent - 1) // 2)
    return root * root, root


def times_root_power(value, root, power: int):
    """``value · root^power`` for a power-of-two ``root``, exactly and without forming
    ``root^power`` (which may over- or underflow where the product does not; XLA would also
    fold ``v / r / r / r`` into ``v / r³``). Overflow gives ``±inf``."""
    _, exponent = jnp.frexp(root)  # root = 2^(exponent − 1)
    return jnp.ldexp(jnp.asarray(value, root.dtype), power * (exponent - 1))


def ratio(numer, denom):
    """``numer / denom`` for ``numer, denom ≥ 0`` with ``0/0 = 0`` and ``x/0 = inf``, and finite
    derivatives everywhere it is finite (no division by a clamped ``tiny``, whose square
    underflows: JAX's derivative of ``x / y`` divides by ``y²``)."""
    positive = denom > 0
    quotient = numer / jnp.where(positive, denom, 1)
    return jnp.where(positive, quotient, jnp.where(numer > 0, jnp.inf, quotient))


def relative_error(x, approx, mask=None):
    """``‖x − approx‖ / ‖x‖`` (on the entries where ``mask`` is True), with a finite gradient
    when the fit is exact (the error is then 0); ``0`` for zero data fitted exactly and
    ``inf`` for zero data fitted by anything else. For data already scaled to entries of order
    one (see :func:`pow2_root`), whose squares neither over- nor underflow."""
    diff = x - approx
    if mask is not None:
        diff, x = jnp.where(mask, diff, 0), jnp.where(mask, x, 0)
    return safe_sqrt(ratio(jnp.sum(diff * diff), jnp.sum(x * x)))


def error_from_norms(norm_x_sq, inner, approx_sq):
    """Relative error from ``‖x‖², ⟨x, x̂⟩, ‖x̂‖²`` without forming ``x̂`` (clamped at 0, with a
    finite gradient there)."""
    return safe_sqrt(ratio(jnp.maximum(norm_x_sq - 2 * inner + approx_sq, 0), norm_x_sq))


@jax.custom_jvp
def thin_svd(a):
    """``u, s, vt = svd(a, full_matrices=False)`` for a 2-D ``a`` (map batches with ``vmap``).

    The values are LAPACK's (or cuSOLVER's). The derivative is JAX's rule for the thin SVD
    (Townsend 2016, "Differentiating the singular value decomposition") with its two
    divisions made safe: ``1 / (s_j² − s_i²)`` is taken as 0 where the two singular values
    are equal to within ``eps·s_max²`` (their vectors are then not determined, and JAX's rule
    gives ``inf · 0 = NaN``), and ``1 / s_i`` as 0 for ``s_i ≤ eps·s_max`` (the pseudo-inverse
    convention). Elsewhere it is the exact derivative.
    """
    u, s, vt = jnp.linalg.svd(a, full_matrices=False)
    return u, s, vt


@thin_svd.defjvp
def _thin_svd_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    u, s, vt = thin_svd(a)
    v = vt.T
    eps = jnp.finfo(s.dtype).eps
    top = jnp.max(s) if s.size else jnp.zeros((), s.dtype)
    dsm = jnp.matmul(jnp.matmul(u.T, da, precision=_HIGHEST), v, precision=_HIGHEST)
    ds = jnp.diagonal(dsm)
    row = s[None, :]
    gaps = (row + row.T) * (row - row.T)  # (i, j): s_j² − s_i²
    f = safe_divide(1.0, jnp.where(jnp.abs(gaps) > eps * top * top, gaps, 0))
    s_inv = safe_divide(1.0, jnp.where(s > eps * top, s, 0))
    dss, sds = row * dsm, row.T * dsm
    du = jnp.matmul(u, f * (dss + dss.T), precision=_HIGHEST)
    dv = jnp.matmul(v, f * (sds + sds.T), precision=_HIGHEST)
    rows, cols = a.shape
    if rows > cols:  # the part of dA·V outside the range of U
        dav = jnp.matmul(da, v, precision=_HIGHEST)
        du = du + (dav - jnp.matmul(u, jnp.matmul(u.T, dav, precision=_HIGHEST),
                                    precision=_HIGHEST)) * s_inv
    if cols > rows:
        dau = jnp.matmul(da.T, u, precision=_HIGHEST)
        dv = dv + (dau - jnp.matmul(v, jnp.matmul(vt, dau, precision=_HIGHEST),
                                    precision=_HIGHEST)) * s_inv
    return (u, s, vt), (du, ds, dv.T)
