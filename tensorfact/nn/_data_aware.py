"""Rank-r approximations of a dense kernel that minimise an error weighted by data.

A Flax kernel ``W`` is ``in × out`` and a layer computes ``y = x W``. Each function returns the
best rank-``r`` kernel ``W′`` for its objective and the singular values of the transformed
matrix it truncates (from which energy-based ranks are read):

* :func:`whitened` (SVD-LLM: Wang et al., "SVD-LLM: Truncation-aware singular value decomposition
  for large language model compression", ICLR 2025): minimises the error of the layer's output
  on the calibration inputs ``X``, ``‖X (W − W′)‖_F``. With ``XᵀX + λI = S Sᵀ`` (Cholesky),
  ``‖X A‖_F ≈ ‖Sᵀ A‖_F``, so ``W′ = S⁻ᵀ (SᵀW)_r`` with ``(·)_r`` the truncated SVD — exact
  (Eckart–Young in the whitened space). ``λ = damping · tr(XᵀX)/in`` keeps ``S`` invertible when
  the inputs do not span every direction (fewer rows than features, dead features).
  The result does not depend on the scale of ``X``; inputs so small that ``XᵀX`` underflows to
  zero in float32 (about 1e-20) leave ``S = √λ I`` and give the plain truncated SVD.
* :func:`activation_scaled` (ASVD: Yuan et al., "ASVD: Activation-aware singular value
  decomposition for compressing large language models", 2023): the cheaper diagonal variant,
  ``W′ = D⁻¹ (D W)_r`` with ``D = diag(mean |x_i|)^α`` (``α = 0.5``, the paper's choice).
* :func:`fisher_weighted` (FWSVD: Hsu et al., "Language model compression with weighted
  low-rank factorization", ICLR 2022): minimises ``Σ_j f_j ‖w_j − w′_j‖²`` over the output
  units ``j`` (columns of the Flax kernel, rows of PyTorch's weight, as in the paper), with
  ``f_j`` the Fisher information of unit ``j`` summed over its inputs:
  ``W′ = (W F)_r F⁻¹``, ``F = diag(√f)``. Uniform ``f`` gives the plain truncated SVD.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular

__all__ = ["whitened", "activation_scaled", "fisher_weighted", "output_error", "DEFAULT_DAMPING",
           "ASVD_ALPHA"]

#: ``λ / (tr(XᵀX)/in)`` added to the input Gram matrix before its Cholesky factorization.
DEFAULT_DAMPING = 1e-5
#: ASVD's exponent on the mean absolute activations.
ASVD_ALPHA = 0.5

_HI = lax.Precision.HIGHEST


def _truncate(m, rank):
    u, s, vt = jnp.linalg.svd(m, full_matrices=False)
    return jnp.matmul(u[:, :rank] * s[:rank], vt[:rank], precision=_HI), s


def _positive_weights(v):
    """``v`` with its non-positive entries raised to a millionth of its mean (a unit that never
    fired or whose gradient was always zero still gets a tiny, finite weight)."""
    floor = 1e-6 * jnp.maximum(jnp.mean(v), jnp.finfo(v.dtype).tiny)
    return jnp.maximum(v, floor)


def whitened(w, gram, rank: int, *, damping: float = DEFAULT_DAMPING):
    """``(W′, σ)``: the rank-``rank`` kernel minimising ``‖X(W − W′)‖_F`` given ``gram = XᵀX``,
    and the singular values of ``SᵀW`` (see the module docstring)."""
    w = jnp.asarray(w, jnp.float32)
    gram = jnp.asarray(gram, jnp.float32)
    d = gram.shape[0]
    scale = jnp.trace(gram) / d
    scale = jnp.where(scale > 0, scale, 1.0)
    s = jnp.linalg.cholesky(gram + damping * scale * jnp.eye(d, dtype=gram.dtype))
    low, sigma = _truncate(jnp.matmul(s.T, w, precision=_HI), rank)
    return solve_triangular(s.T, low, lower=False), sigma


def activation_scaled(w, abs_mean, rank: int, *, alpha: float = ASVD_ALPHA):
    """``(W′, σ)`` of ASVD: ``D⁻¹ (D W)_r`` with ``D = diag(mean |x|)^α``."""
    w = jnp.asarray(w, jnp.float32)
    scale = _positive_weights(jnp.asarray(abs_mean, jnp.float32)) ** alpha
    low, sigma = _truncate(scale[:, None] * w, rank)
    return low / scale[:, None], sigma


def fisher_weighted(w, fisher, rank: int):
    """``(W′, σ)`` of FWSVD: ``(W F)_r F⁻¹`` with ``F = diag(√(Σ_i fisher_ij))`` over the output
    units ``j``; ``fisher`` has the kernel's shape."""
    w = jnp.asarray(w, jnp.float32)
    weight = jnp.sqrt(_positive_weights(jnp.sum(jnp.asarray(fisher, jnp.float32), axis=0)))
    low, sigma = _truncate(w * weight[None, :], rank)
    return low / weight[None, :], sigma


def output_error(w, w_new, gram) -> float:
    """``‖X(W − W′)‖_F / ‖X W‖_F`` from ``gram = XᵀX``; NaN when ``‖XW‖`` is zero as far as
    float32 can tell (no input reaches the layer's row space, or the squares of inputs near
    1e-20 underflowed), never a 0 that would read as a perfect fit."""
    diff = jnp.asarray(w, jnp.float32) - jnp.asarray(w_new, jnp.float32)
    gram = jnp.asarray(gram, jnp.float32)

    def quad(a):
        return jnp.sum(a * jnp.matmul(gram, a, precision=_HI))

    num, den = float(jax.device_get(quad(diff))), float(jax.device_get(quad(jnp.asarray(w))))
    if not den > 0:  # XW = 0, or XᵀX underflowed (inputs near 1e-20): the ratio is unknown
        return float("nan")
    return (max(num, 0.0) / den) ** 0.5
