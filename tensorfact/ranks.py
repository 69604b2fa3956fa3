"""Rank selection tools: how many components a matrix needs, or a parameter budget allows.

Every measure here is scale-free and is computed from the singular values divided by the
largest one, so data of any representable magnitude (1e-30 … 1e30 in float32) give the same
answer as data of magnitude one: no squared singular value over- or underflows.
"""

from __future__ import annotations

import math
import numbers

import jax.numpy as jnp
import numpy as np

from tensorfact._checks import as_float_array, as_matrix, check_positive_int, is_traced
from tensorfact._numerics import safe_divide

__all__ = ["stable_rank", "effective_rank", "rank_for_energy", "rank_for_params"]


def _relative(s):
    """``|s| / max |s|`` (zero where all of ``s`` is zero)."""
    s = jnp.abs(s)
    return safe_divide(s, jnp.max(s))


def stable_rank(m) -> jnp.ndarray:
    """``‖M‖_F² / ‖M‖_2²``: a continuous, perturbation-robust lower bound on the rank
    (Rudelson & Vershynin 2007); Cuttlefish (Wang et al. 2023) tracks it to decide when and at
    what rank to factorize a layer. 0 for a zero matrix.

    Args:
      m: a 2-D array with no dimension of size zero (use ``jax.vmap`` for a batch).

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> round(float(tfa.stable_rank(jnp.diag(jnp.array([3.0, 1.0, 1.0])))), 5)  # 11 / 9
      1.22222
    """
    p = _relative(jnp.linalg.svd(as_matrix(m), compute_uv=False))
    return jnp.sum(p * p)


def effective_rank(m) -> jnp.ndarray:
    """Effective rank of Roy & Vetterli (EUSIPCO 2007): ``exp(H(p))`` with ``p = s / ‖s‖₁`` the
    normalised singular values and ``H`` the Shannon entropy; 1 for a zero matrix.

    Args:
      m: a 2-D matrix, or a 1-D array of singular values (non-empty; use ``jax.vmap`` for a
        batch).

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> round(float(tfa.effective_rank(jnp.eye(4))), 4)
      4.0
    """
    m = as_float_array(m, "m", nonempty=True)
    if m.ndim == 2:
        s = jnp.linalg.svd(m, compute_uv=False)
    elif m.ndim == 1:
        s = m
    else:
        raise ValueError(f"m must be a matrix or a vector of singular values, got shape "
                         f"{tuple(m.shape)}.")
    s = _relative(s)
    p = safe_divide(s, jnp.sum(s))
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return jnp.exp(entropy)


def _check_fraction(fraction, name="fraction"):
    if is_traced(fraction):
        return fraction
    if (isinstance(fraction, (bool, np.bool_)) or not isinstance(fraction, numbers.Real)
            or not 0 < float(fraction) <= 1):
        raise ValueError(f"{name} must be in (0, 1], got {fraction!r}.")
    return float(fraction)


def rank_for_energy(s, fraction: float):
    """Smallest ``k`` whose leading singular values hold ``fraction`` of the energy:
    ``Σ_{i<k} s_i² ≥ fraction · Σ s_i²``. ``s`` must be sorted in decreasing order (as SVDs
    return them). Returns a Python int for concrete input, a traced int32 under ``jit``.

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> tfa.rank_for_energy(jnp.array([4.0, 2.0, 1.0, 1.0]), 0.75)  # 16 + 4 of 22
      2
    """
    s = as_float_array(s, "s")
    if s.ndim != 1 or s.shape[0] == 0:
        raise ValueError(f"s must be a non-empty 1-D array of singular values, got shape "
                         f"{tuple(s.shape)}.")
    fraction = _check_fraction(fraction)
    p = _relative(s)
    energy = jnp.cumsum(p * p)
    # small relative slack so that fraction=1 is reached despite rounding in the cumulative sum
    target = fraction * energy[-1] * (1 - 4 * jnp.finfo(s.dtype).eps)
    k = jnp.minimum(jnp.sum(energy < target) + 1, s.shape[0]).astype(jnp.int32)
    return k if is_traced(k) else int(k)


def rank_for_params(shape, fraction: float) -> int:
    """Largest rank ``r ≥ 1`` whose factors ``(m + n)·r`` use at most ``fraction`` of the
    ``m·n`` parameters of a dense ``shape = (m, n)`` matrix (always below ``min(m, n)``).

    Example:
      >>> import tensorfact as tfa
      >>> tfa.rank_for_params((100, 50), 0.1)  # 3·150 = 450 ≤ 500 < 4·150
      3
    """
    shape = tuple(shape)
    if len(shape) != 2:
        raise ValueError(f"shape must be (m, n), got {shape!r}.")
    rows, cols = (check_positive_int(d, f"shape[{i}]") for i, d in enumerate(shape))
    fraction = _check_fraction(fraction)
    r = math.floor(fraction * rows * cols / (rows + cols) + 1e-9)
    return max(r, 1)
