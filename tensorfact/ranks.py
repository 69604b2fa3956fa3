"""Rank selection tools: how many components a matrix needs, or a parameter budget allows."""

from __future__ import annotations

import math
import numbers

import jax.numpy as jnp

from tensorfact._checks import as_float_array, as_matrix, check_positive_int, is_traced

__all__ = ["stable_rank", "effective_rank", "rank_for_energy", "rank_for_params"]


def stable_rank(m) -> jnp.ndarray:
    """``‖M‖_F² / ‖M‖_2²``: a continuous, perturbation-robust lower bound on the rank
    (Rudelson & Vershynin 2007); Cuttlefish (Wang et al. 2023) tracks it to decide when and at
    what rank to factorize a layer."""
    s = jnp.linalg.svd(as_matrix(m), compute_uv=False)
    return jnp.sum(s * s) / jnp.maximum(s[0] * s[0], jnp.finfo(s.dtype).tiny)


def effective_rank(m) -> jnp.ndarray:
    """Effective rank of Roy & Vetterli (EUSIPCO 2007): ``exp(H(p))`` with ``p = s / ‖s‖₁`` the
    normalised singular values and ``H`` the Shannon entropy. Pass a matrix, or a 1-D array of
    singular values."""
    m = as_float_array(m, "m")
    if m.ndim == 2:
        s = jnp.linalg.svd(m, compute_uv=False)
    elif m.ndim == 1:
        s = jnp.abs(m)
    else:
        raise ValueError(f"m must be a matrix or a vector of singular values, got shape "
                         f"{tuple(m.shape)}.")
    p = s / jnp.maximum(jnp.sum(s), jnp.finfo(s.dtype).tiny)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return jnp.exp(entropy)


def _check_fraction(fraction, name="fraction"):
    if is_traced(fraction):
        return fraction
    if not isinstance(fraction, numbers.Real) or not 0 < float(fraction) <= 1:
        raise ValueError(f"{name} must be in (0, 1], got {fraction!r}.")
    return float(fraction)


def rank_for_energy(s, fraction: float):
    """Smallest ``k`` whose leading singular values hold ``fraction`` of the energy:
    ``Σ_{i<k} s_i² ≥ fraction · Σ s_i²``. ``s`` must be sorted in decreasing order (as SVDs
    return them). Returns a Python int for concrete input, a traced int32 under ``jit``."""
    s = as_float_array(s, "s")
    if s.ndim != 1 or s.shape[0] == 0:
        raise ValueError(f"s must be a non-empty 1-D array of singular values, got shape "
                         f"{tuple(s.shape)}.")
    fraction = _check_fraction(fraction)
    energy = jnp.cumsum(s * s)
    # small relative slack so that fraction=1 is reached despite rounding in the cumulative sum
    target = fraction * energy[-1] * (1 - 4 * jnp.finfo(s.dtype).eps)
    k = jnp.minimum(jnp.sum(energy < target) + 1, s.shape[0]).astype(jnp.int32)
    return k if is_traced(k) else int(k)


def rank_for_params(shape, fraction: float) -> int:
    """Largest rank ``r ≥ 1`` whose factors ``(m + n)·r`` use at most ``fraction`` of the
    ``m·n`` parameters of a dense ``shape = (m, n)`` matrix (always below ``min(m, n)``)."""
    shape = tuple(shape)
    if len(shape) != 2:
        raise ValueError(f"shape must be (m, n), got {shape!r}.")
    rows, cols = (check_positive_int(d, f"shape[{i}]") for i, d in enumerate(shape))
    fraction = _check_fraction(fraction)
    r = math.floor(fraction * rows * cols / (rows + cols) + 1e-9)
    return max(r, 1)
