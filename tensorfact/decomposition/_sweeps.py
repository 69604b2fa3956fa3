"""The sweeps of CP-ALS and HOOI, shared by the single-device fits (``_cp.py``, ``_tucker.py``)
and the sharded ones (``_sharded.py``), which run them on local blocks with a
:class:`SweepLayout` (CP) or ``rows``/``reduce`` hooks (Tucker) instead of a copy of each.

* CP: :func:`cp_initial_factors`, :func:`cp_sweep` (a two-level dimension tree, Phan,
  Tichavský & Cichocki 2013, or one MTTKRP kernel per mode) and its factor update.
* Tucker: :func:`tucker_sweep_modes` (the same tree for ``Y_n = x ×_{k≠n} U_kᵀ``) and
  :func:`hoqri_update` (HOQRI, Sun et al. 2020).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from tensorfact import algebra, kernels
from tensorfact._numerics import safe_divide
from tensorfact.decomposition._common import (hals_columns, leading_subspace, normalize_columns,
                                              solve_normal_equations, split_halves)

__all__ = ["SweepLayout", "ONE_DEVICE", "cp_initial_factors", "scaled_to_data", "extra_columns",
           "cp_penalties", "cp_scale_back", "cp_sweep",
           "update_cp_factor", "cp_sweep_result", "tucker_sweep_modes", "hoqri_update"]


def cp_initial_factors(x, rank, key, init, nonneg, precision, *, shape=None, subspace=None):
    """CP-ALS starting point ``(weights, factors)``: the leading left singular vectors of each
    unfolding (``init="svd"``, deterministic), or Gaussian (uniform for ``nonneg``) factors
    (``init="random"``, drawn from ``key``).

    A CP rank may exceed a mode size ``I_n``. The SVD start then completes the ``I_n`` singular
    vectors ``U`` with :func:`extra_columns` ``U c_j``: unit vectors spread over the whole
    subspace, distinct from each other and from the first ``I_n`` columns in every mode, so no
    two components start equal (ALS would keep them equal) and the start is as well conditioned
    as ``[I, C]``, whose singular values are all at least 1.

    ``subspace(n, r)`` gives the ``r`` leading left singular vectors of ``unfold(x, n)``; a
    sharded fit passes its own (the Gram matrix of a split unfolding is reduced over devices)
    together with the global ``shape``. The weights are ones.
    """
    shape = tuple(x.shape) if shape is None else tuple(shape)
    if subspace is None:
        def subspace(n, r):
            return leading_subspace(algebra.unfold(x, n), r, precision=precision)
    keys = jax.random.split(key, len(shape)) if init == "random" else [None] * len(shape)
    factors = []
    for n, size in enumerate(shape):
        if init == "random":
            draw = jax.random.uniform if nonneg else jax.random.normal
            factors.append(draw(keys[n], (size, rank), x.dtype))
            continue
        u = subspace(n, min(rank, size))
        if rank > size:  # CP rank may exceed a mode size: complete deterministically
            extra = jnp.matmul(u, extra_columns(size, rank - size, x.dtype, n),
                               precision=algebra.resolve_precision(precision))
            u = jnp.concatenate([u, extra], axis=1)
        factors.append(jnp.abs(u) if nonneg else u)
    return jnp.ones((rank,), x.dtype), factors


def scaled_to_data(weights, factors, norm_x_sq, precision):
    """The start ``(weights, factors)`` with its weights multiplied by ``‖x‖ / ‖x̂‖``, so that the
    starting CP tensor has the norm of the data.

    ALS is indifferent to the scale of its start (each update solves for a whole factor), but
    HALS updates one column at a time against the current values of the others, so its path
    depends on the ratio of the data's scale to the start's. A start of unit columns is then
    tied to whatever power of two the data were divided by; matched to the data's norm, the
    path is that of the data alone (on planted nonnegative tensors it then follows TensorLy's
    ``non_negative_parafac_hals`` from the same SVD start to the same fit). Zero data keep the
    start as it is."""
    grams = [jnp.matmul(a.T, a, precision=algebra.resolve_precision(precision)) for a in factors]
    gram_all = functools.reduce(lambda a, b: a * b, grams)
    approx_sq = jnp.einsum("r,rs,s->", weights, gram_all, weights,
                           precision=algebra.resolve_precision(precision))
    ratio = jnp.sqrt(safe_divide(norm_x_sq, approx_sq))
    return weights * jnp.where(ratio > 0, ratio, 1), factors


#: Golden-ratio conjugate: the angles of :func:`extra_columns` never repeat (nor mirror each
#: other) modulo ``2π``, because it is irrational.
_GOLDEN = (5 ** 0.5 - 1) / 2


def extra_columns(size: int, count: int, dtype, mode: int = 0):
    """``count`` unit vectors ``c_j ∈ R^size``, ``c_j[k] ∝ cos((k + ½) θ_j)`` with
    ``θ_j = π (j + 1) g_n`` and ``g_n = frac((n + 1) g)`` for mode ``n`` (``g`` the golden-ratio
    conjugate): samples of cosines at frequencies that never coincide, so the ``c_j`` of a mode
    are pairwise distinct (never ``±`` each other), and two that happen to lie close in one mode
    (``size`` small, ``count`` large) do not in the next, whose frequencies are other multiples.
    Deterministic: the SVD start of CP needs no key at any rank."""
    step = (mode + 1) * _GOLDEN % 1.0
    k = jnp.arange(size, dtype=dtype)[:, None] + 0.5
    theta = jnp.pi * step * jnp.arange(1, count + 1, dtype=dtype)[None, :]
    c = jnp.cos(k * theta)
    return c / jnp.linalg.norm(c, axis=0, keepdims=True)


class SweepLayout(NamedTuple):
    """Where the blocks of ``x`` live during a sweep; the defaults are one device.

    A sharded fit (``decomposition/_sharded.py``) runs the same sweep on each device's block
    with: ``rows(a, n)`` the rows of factor ``n`` matching the local block, ``reduce(m, n)`` the
    sum of MTTKRP ``n``'s partial contributions over the devices, ``gather(a, n)`` factor ``n``
    rebuilt from the rows solved here, and ``total(v)`` a scalar summed over the devices that
    split the last mode.
    """
    rows: Callable = lambda a, n: a
    reduce: Callable = lambda m, n: m
    gather: Callable = lambda a, n: a
    total: Callable = lambda v: v


ONE_DEVICE = SweepLayout()


def cp_penalties(l2, scale, ndim: int, normalize: bool):
    """The ridge of each mode's update (a length-``ndim`` vector) for a fit of ``x / scale``
    that solves the problem ``l2`` was given for, on ``x``.

    With ``normalize=True`` the updated factor carries the whole scale and the ridge
    regression ``M (V + λI)⁻¹`` is linear in the data: ``λ`` is the same at every scale. With
    ``normalize=False`` the first factor carries the scale ``1/scale`` of the rescaled fit and
    the others keep theirs, so their ridge becomes ``λ / scale²`` (capped at ``1/eps``, where
    it already zeroes the factor).
    """
    l2 = jnp.full((ndim,), l2, scale.dtype)
    if normalize:
        return l2
    cap = 1 / jnp.finfo(scale.dtype).eps
    others = jnp.where(l2[1:] > 0, jnp.minimum(l2[1:] * (1 / scale) ** 2, cap), 0)
    return l2.at[1:].set(others)


def cp_scale_back(weights, factors, scale, normalize: bool):
    """The fit of ``x / scale`` as a fit of ``x``: the weights (or, with ``normalize=False``,
    the first factor, which carries the scale) times ``scale``."""
    if normalize:
        return weights * scale, tuple(factors)
    return weights, (factors[0] * scale,) + tuple(factors[1:])


def cp_sweep(x, weights, factors, *, l2, nonneg, normalize, precision, impl="xla",
           layout=ONE_DEVICE):
    """One ALS (or HALS) pass over all modes through a two-level dimension tree (``impl="xla"``)
    or one MTTKRP kernel per mode (``impl="pallas"``). ``l2`` holds the ridge of each mode
    (:func:`cp_penalties`). Under a sharded ``layout`` either path contracts the local block
    with the local factor rows and ``layout.reduce`` sums the partial MTTKRPs over devices.

    Returns the new weights and factors and ``(⟨x, x̂⟩, ‖x̂‖²)`` for the error.
    """
    factors = list(factors)
    local = [layout.rows(a, m) for m, a in enumerate(factors)]
    grams = [jnp.matmul(a.T, a, precision=algebra.resolve_precision(precision)) for a in factors]
    modes = tuple(range(x.ndim))
    mttkrp_last = None
    update = functools.partial(update_cp_factor, factors=factors, local=local, grams=grams,
                               layout=layout, l2=l2, nonneg=nonneg, normalize=normalize,
                               precision=precision)
    if impl == "pallas":  # the kernel reads x at full bandwidth: one read per mode is cheaper
        for n in modes:      # than the tree's two reads plus its HBM intermediates
            m_n = kernels.mttkrp(x, local, n, impl="pallas", precision=precision)
            m_n = layout.reduce(m_n, n)
            weights = update(n, m_n, weights)
            mttkrp_last = m_n
        return cp_sweep_result(weights, factors, local, grams, mttkrp_last, layout, precision)
    for half, other in (split_halves(modes), split_halves(modes)[::-1]):
        # one read of x: contract the other half's factors; the rank axis is shared
        rank_axis = algebra.natural_rank_axis(x.ndim, other)
        partial = algebra.partial_mttkrp(x, [local[m] for m in other], other,
                                         rank_axis=rank_axis, precision=precision)
        for n in half:
            rest = [m for m in half if m != n]
            m_n = algebra.contract_with_rank(partial, half, [local[m] for m in rest], rest,
                                             rank_axis=rank_axis, precision=precision)
            if rank_axis == 0:
                m_n = m_n.T
            m_n = layout.reduce(m_n, n)
            weights = update(n, m_n, weights)
            mttkrp_last = m_n
    return cp_sweep_result(weights, factors, local, grams, mttkrp_last, layout, precision)


def update_cp_factor(n, m_n, weights, *, factors, local, grams, layout, l2, nonneg, normalize,
                   precision):
    """Solves for the (local) rows of ``A_n`` from its MTTKRP ``m_n``; updates ``factors``,
    ``local`` and ``grams`` in place and returns the new weights."""
    gram_others = functools.reduce(lambda a, b: a * b,
                                   [grams[k] for k in range(len(factors)) if k != n])
    if nonneg:
        a_n = hals_columns(local[n] * weights, m_n, gram_others, l2[n], precision)
    else:
        a_n = solve_normal_equations(m_n, gram_others, l2[n], precision)
    a_n = layout.gather(a_n, n)
    if normalize:
        weights, a_n = normalize_columns(a_n)
    factors[n] = a_n
    local[n] = layout.rows(a_n, n)
    grams[n] = jnp.matmul(a_n.T, a_n, precision=algebra.resolve_precision(precision))
    return weights


def cp_sweep_result(weights, factors, local, grams, mttkrp_last, layout, precision):
    # error terms from the last mode's MTTKRP (computed with all other factors current)
    inner = layout.total(jnp.sum(weights * jnp.sum(local[-1] * mttkrp_last, axis=0)))
    gram_all = functools.reduce(lambda a, b: a * b, grams)
    approx_sq = jnp.einsum("r,rs,s->", weights, gram_all, weights,
                           precision=algebra.resolve_precision(precision))
    return weights, tuple(factors), (inner, approx_sq)


def tucker_sweep_modes(x, factors, modes, update, precision, *, rows=lambda u, m: u,
                 reduce=lambda y, n: y):
    """Updates every decomposed mode in order: ``U_n ← update(n, Y_n)`` with
    ``Y_n = x ×_{k≠n} U_kᵀ`` built from the current factors through a two-level dimension tree.

    A sharded fit (``_sharded.py``) passes ``rows(u, m)``, the rows of ``U_m``
    matching the local block of ``x``, and ``reduce(y, n)``, which sums the partial ``Y_n`` over
    the devices and gathers mode ``n``; on one device both are the identity.

    Returns the new factors (a dict by mode) and the last ``(n, Y_n)``.
    """
    factors = dict(zip(modes, factors))
    first, second = split_halves(modes)
    for half, other in ((first, second), (second, first)):
        partial = algebra.multi_mode_dot(x, [rows(factors[m], m) for m in other], other,
                                         transpose=True, precision=precision)
        for n in half:
            rest = [m for m in half if m != n]
            y = algebra.multi_mode_dot(partial, [rows(factors[m], m) for m in rest], rest,
                                       transpose=True, precision=precision)
            y = reduce(y, n)
            factors[n] = update(n, y, factors)
    return factors, n, y


def hoqri_update(subspace_iter, precision):
    """HOQRI's factor update (Sun et al. 2020): ``subspace_iter`` steps of
    ``U ← qr((Y_(n) Y_(n)ᵀ + δI) U)``, starting from the current ``U_n``.

    The shift ``δ = sqrt(eps) ‖Y‖²`` leaves the invariant subspaces (the fixed points) as they
    are and keeps ``(YYᵀ + δI) U`` of full column rank when the data have a lower rank than
    ``r_n``, where QR's derivative would divide by zero (NaN under ``jax.grad``).
    """
    prec = algebra.resolve_precision(precision)

    def update(n, y, current):
        unfolded = algebra.unfold(y, n)
        u = current[n]
        shift = (jnp.sqrt(jnp.finfo(y.dtype).eps)
                 * jnp.vdot(unfolded, unfolded, precision=prec))
        for _ in range(subspace_iter):
            z = jnp.matmul(unfolded, jnp.matmul(unfolded.T, u, precision=prec), precision=prec)
            u, _ = jnp.linalg.qr(z + shift * u)
        return u

    return update
