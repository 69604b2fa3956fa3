"""PARAFAC2 by alternating least squares (Kiers, ten Berge & Bro 1999).

Fits ``K`` matrices ``X_k`` (``I_k × J``, the ``I_k`` may differ) by
``X_k ≈ P_k B diag(w ⊙ a_k) Cᵀ`` with ``P_kᵀP_k = I``, minimising ``Σ_k ‖X_k − P_k B D_k Cᵀ‖²``
(``D_k = diag(w ⊙ a_k)``). One iteration of the direct fitting algorithm of Kiers, ten Berge &
Bro ("PARAFAC2 — Part I. A direct fitting algorithm for the PARAFAC2 model", J. Chemometrics
13, 1999):

1. for each ``k``, the orthogonal Procrustes solution ``P_k = U_k V_kᵀ`` from the thin SVD
   ``X_k C D_k Bᵀ = U_k S_k V_kᵀ``;
2. one CP-ALS sweep (``cp_sweeps`` of them; ``A``, then ``B``, then ``C``, TensorLy's order)
   on the projected tensor ``Y_k = P_kᵀ X_k`` (``K × R × J``): with the ``P_k`` fixed,
   ``‖X_k − P_k M_k‖² = ‖X_k‖² − ‖Y_k‖² + ‖Y_k − M_k‖²``, so the CP sweep lowers the PARAFAC2
   loss. The same identity gives the error of every iteration without a dense reconstruction.

Ragged slices are padded to ``I_max`` rows with zeros; the padded rows are zero in the data
and (by a row mask) in the projections, so they add nothing to the Procrustes SVDs, the
projected tensor or the error.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from tensorfact import algebra
from tensorfact._checks import (Init, Precision, as_float_array, check_positive_int,
                                finite_part, is_traced, poison, report_nonfinite)
from tensorfact._numerics import pow2_scale, safe_divide, safe_sqrt
from tensorfact.decomposition._common import (check_finite_init, check_iteration_args,
                                              hals_columns, leading_subspace, normalize_columns,
                                              resolve_init, resolve_tol, solve_normal_equations)
from tensorfact.decomposition._loop import DEFAULT_TOL, FitInfo, iterate, relative_error
from tensorfact.decomposition._sweeps import extra_columns
from tensorfact.tensors import Parafac2Tensor

__all__ = ["parafac2"]


def parafac2(slices, rank: int, *, key=None, init: Union[Init, Parafac2Tensor] = "svd",
             n_iter: int = 100, tol: float = DEFAULT_TOL, cp_sweeps: int = 5,
             nonneg: bool = False, mask=None, precision: Precision = "highest",
             return_info: bool = False):
    """PARAFAC2 of a list of matrices with a shared column mode, by ALS.

    Model: ``X_k ≈ P_k B diag(w ⊙ a_k) Cᵀ`` with ``P_kᵀP_k = I``; each iteration solves for
    every ``P_k`` (orthogonal Procrustes: ``P_k = U_k V_kᵀ`` from the SVD of
    ``X_k C diag(w ⊙ a_k) Bᵀ``), then runs CP-ALS sweeps for ``A``, ``B``, ``C`` on the
    projected tensor ``Y_k = P_kᵀ X_k`` (``cp_sweeps`` of them; Kiers, ten Berge & Bro,
    J. Chemometrics 1999). The whole fit is one compiled program (``lax.scan`` for ``tol=0``,
    else ``lax.while_loop``).

    Args:
      slices: a sequence of ``K`` 2-D arrays ``(I_k, J)`` (row counts may differ; they are
        padded to ``I_max`` with zero rows, and a row mask keeps the padding out of the fit), or
        a 3-way array ``(K, I, J)`` (every slice of ``I`` rows: the form to ``jit``/``vmap``).
      rank: number of components ``R`` (a positive int). A slice with ``I_k < R`` rows gets a
        projection of rank ``I_k`` (columns past its row count are zero, as in TensorLy); a
        rank above ``J`` is allowed (the SVD start completes ``C`` deterministically) but only
        wastes work.
      key: ``jax.random`` key; needed for ``init="random"`` only.
      init: ``"svd"`` (``C`` the leading left singular vectors of ``[X_1ᵀ … X_Kᵀ]``, ``A`` ones,
        ``B = I``: TensorLy's start), ``"random"`` (Gaussian, uniform for ``nonneg``; needs
        ``key``), or a finite :class:`~tensorfact.Parafac2Tensor` of the same ``K``, ``J`` and
        rank (its weights and ``A, B, C`` are the start; the projections are recomputed).
      n_iter: maximum number of iterations (static: it sizes ``info.errors``).
      tol: stop when the relative error changes by less than ``tol`` between iterations; a
        concrete ``0`` runs exactly ``n_iter`` (a ``lax.scan``, differentiable).
      cp_sweeps: CP-ALS sweeps on the projected tensor per iteration (step 2). Kiers et al.
        make one; the default 5 is TensorLy's ``n_iter_parafac``: the sweeps act on the small
        ``K × R × J`` tensor, so the extra ones cost little and the fit converges in fewer
        iterations.
      nonneg: constrain ``A`` and ``C`` (the non-evolving modes) to be nonnegative, updating
        them by HALS (Cichocki & Phan 2009), as TensorLy's ``nn_modes=(0, 2)``; ``B`` stays
        unconstrained (``P_k B`` cannot be made nonnegative by ALS).
      mask: optional boolean (or 0/1) array of the padded shape ``(K, I_max, J)``, or a list of
        per-slice masks ``(I_k, J)``; True where observed. Missing entries may hold anything
        (NaN included) and are fitted by EM imputation: they start at the mean of their
        column's observed entries and are replaced by the model's values after every
        iteration. Errors count the observed entries only.
      precision: XLA precision of the contractions (``"highest"``: true float32).
      return_info: also return a :class:`~tensorfact.decomposition.FitInfo` (errors over all
        true, observed entries; ``rel_error`` from the dense reconstruction).

    Returns:
      A :class:`~tensorfact.Parafac2Tensor` (the weights carry the scale; the columns of
      ``A``, ``B`` and ``C`` have unit norm), or ``(Parafac2Tensor, FitInfo)``.

    Example:
      >>> import jax, jax.numpy as jnp, tensorfact as tfa
      >>> ka, kc, kp = jax.random.split(jax.random.key(0), 3)
      >>> a, c = jax.random.uniform(ka, (4, 2)) + 0.5, jax.random.normal(kc, (6, 2))
      >>> ps = [jnp.linalg.qr(jax.random.normal(jax.random.fold_in(kp, k), (n, 2)))[0]
      ...       for k, n in enumerate((5, 7, 6, 8))]
      >>> xs = [p @ jnp.diag(a[k]) @ c.T for k, p in enumerate(ps)]  # ragged slices, B = I
      >>> fit, info = tfa.parafac2(xs, 2, n_iter=200, return_info=True)
      >>> fit.row_counts, bool(info.rel_error < 1e-3)
      ((5, 7, 6, 8), True)

    Raises:
      ValueError: naming ``slices`` for an empty list, a slice that is not 2-D, slices with
        different column counts, a size-zero dimension, or NaN/Inf in the observed entries
        (eager calls); for a bad ``rank``, ``n_iter``, ``tol``, ``mask`` or ``init`` shape, and
        a missing key for ``init="random"``.
    """
    x, row_counts = _as_padded(slices)
    n_slices, i_max, n_cols = x.shape
    rank = check_positive_int(rank, "rank")
    n_iter, tol = check_iteration_args(n_iter, tol)
    cp_sweeps = check_positive_int(cp_sweeps, "cp_sweeps")
    mask = _check_mask(mask, x.shape, row_counts)
    init_tensor, init_kind = resolve_init(
        init, Parafac2Tensor, key, lambda t: _check_init(t, n_slices, n_cols, rank))
    fixed, tol = resolve_tol(tol)
    result, n_nonfinite = _parafac2_fit(
        x, mask, key, init_tensor, tol, row_counts=row_counts, rank=rank, n_iter=n_iter,
        fixed=fixed, init=init_kind, cp_sweeps=cp_sweeps, nonneg=bool(nonneg),
        precision=precision, return_info=bool(return_info))
    report_nonfinite(n_nonfinite, "slices", maskable=True)
    return result


def _as_padded(slices):
    """``(x, row_counts)``: a 3-way array as it is (``row_counts`` None: every row is real), or a
    list of matrices padded with zero rows to ``(K, I_max, J)`` and their row counts."""
    if isinstance(slices, (jax.Array, np.ndarray)) or not isinstance(slices, Sequence):
        x = as_float_array(slices, "slices")
        if x.ndim != 3:
            raise ValueError("slices must be a sequence of 2-D arrays (I_k, J) or a 3-way array "
                             f"(K, I, J), got an array of shape {tuple(x.shape)}.")
        if x.size == 0:
            raise ValueError(f"slices has a mode of size zero (shape {tuple(x.shape)}): there "
                             "is nothing to decompose.")
        return x, None
    if not slices:
        raise ValueError("slices must be a non-empty sequence of 2-D arrays, got an empty "
                         f"{type(slices).__name__}.")
    mats = [as_float_array(s, f"slices[{k}]") for k, s in enumerate(slices)]
    for k, m in enumerate(mats):
        if m.ndim != 2:
            raise ValueError(f"slices[{k}] must be a 2-D array (I_k, J), got shape "
                             f"{tuple(m.shape)}.")
        if m.size == 0:
            raise ValueError(f"slices[{k}] has a dimension of size zero (shape "
                             f"{tuple(m.shape)}): there is nothing to decompose.")
    cols = {int(m.shape[1]) for m in mats}
    if len(cols) != 1:
        raise ValueError("slices must all have the same number of columns J, got shapes "
                         f"{[tuple(m.shape) for m in mats]}.")
    dtype = jnp.result_type(*mats)
    row_counts = tuple(int(m.shape[0]) for m in mats)
    i_max = max(row_counts)
    x = jnp.stack([jnp.pad(m.astype(dtype), ((0, i_max - m.shape[0]), (0, 0))) for m in mats])
    if min(row_counts) == i_max:
        row_counts = None  # equal slices: nothing padded
    return x, row_counts


def _check_mask(mask, shape, row_counts):
    if mask is None:
        return None
    if not hasattr(mask, "shape") and isinstance(mask, Sequence):
        if len(mask) != shape[0]:
            raise ValueError(f"mask must be an array of shape {tuple(shape)} or a list of "
                             f"{shape[0]} per-slice masks, got a list of {len(mask)}.")
        counts = row_counts or (shape[1],) * shape[0]
        parts = []
        for k, (m, n) in enumerate(zip(mask, counts)):
            m = jnp.asarray(m)
            if m.shape != (n, shape[2]):
                raise ValueError(f"mask[{k}] must have the shape of slices[{k}] "
                                 f"{(n, shape[2])}, got {tuple(m.shape)}.")
            parts.append(jnp.pad(m.astype(bool), ((0, shape[1] - n), (0, 0))))
        return jnp.stack(parts)
    mask = jnp.asarray(mask)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask must have the padded shape of slices {tuple(shape)}, got "
                         f"{tuple(mask.shape)}.")
    if not (mask.dtype == jnp.bool_ or is_traced(mask) or bool(
            jnp.all((mask == 0) | (mask == 1)))):
        raise ValueError("mask must be boolean or hold only 0 and 1.")
    return mask.astype(bool)


def _check_init(init: Parafac2Tensor, n_slices, n_cols, rank) -> Parafac2Tensor:
    k, _, j = init.shape
    if (k, j, init.rank) != (n_slices, n_cols, rank):
        raise ValueError(f"init must be a Parafac2Tensor of {n_slices} slices, {n_cols} columns "
                         f"and rank {rank}, got {k} slices, {j} columns and rank {init.rank}.")
    check_finite_init(init)
    return init


@functools.partial(jax.jit, static_argnames=(
    "row_counts", "rank", "n_iter", "fixed", "init", "cp_sweeps", "nonneg", "precision",
    "return_info"))
def _parafac2_fit(x, mask, key, init_tensor, tol, *, row_counts, rank, n_iter, fixed, init,
                  cp_sweeps, nonneg, precision, return_info):
    n_slices, i_max, n_cols = x.shape
    dtype = x.dtype
    prec = algebra.resolve_precision(precision)
    rows = (jnp.ones((n_slices, i_max), bool) if row_counts is None else
            jnp.arange(i_max)[None, :] < jnp.asarray(row_counts)[:, None])
    observed = rows[..., None] if mask is None else (mask & rows[..., None])
    observed = jnp.broadcast_to(observed, x.shape)
    x, n_nonfinite = finite_part(jnp.where(observed, x, 0), observed)
    scale = lax.stop_gradient(pow2_scale(x))  # fit x / 2^k: exact, no square overflows
    x = x / scale
    rowsf = rows.astype(dtype)[..., None]
    counts = row_counts or (i_max,) * n_slices  # the result's static row counts

    if init == "given":
        weights = init_tensor.weights.astype(dtype) / scale
        factors = tuple(f.astype(dtype) for f in init_tensor.factors)
    else:
        weights, factors = _initial_factors(x, rank, key, init, nonneg, prec)

    if mask is None:
        filled = None
        norm_x_sq = jnp.vdot(x, x, precision=prec)
    else:  # EM start: missing entries at their column's observed mean
        count = jnp.sum(observed, axis=(0, 1))
        mean = safe_divide(jnp.sum(x, axis=(0, 1)), count.astype(dtype))
        filled = jnp.where(observed, x, mean * rowsf)
        norm_x_sq = jnp.vdot(x, x, precision=prec)  # x is zero off the observed entries

    def step(state):
        weights, factors, data = state
        current = x if data is None else data
        proj = _projections(current, weights, factors, rowsf, prec)
        y = jnp.einsum("kir,kij->krj", proj, current, precision=prec)  # Y_k = P_kᵀ X_k
        weights, factors = lax.fori_loop(
            0, cp_sweeps, lambda _, wf: _cp_sweep(y, *wf, nonneg, prec), (weights, factors))
        if data is None:
            model = _cp_dense(weights, factors, prec)
            resid = y - model
            err_sq = (norm_x_sq - jnp.vdot(y, y, precision=prec)
                      + jnp.vdot(resid, resid, precision=prec))
            err = safe_sqrt(safe_divide(jnp.maximum(err_sq, 0.0), norm_x_sq))
            return (weights, factors, None), err
        dense = Parafac2Tensor.tree_unflatten(
            (counts,), (weights, factors, proj)).to_dense(precision=precision)
        err = relative_error(x, dense, observed)
        return (weights, factors, jnp.where(observed, x, dense * rowsf)), err

    state, n_done, errors, converged = iterate(step, (weights, factors, filled), n_iter=n_iter,
                                               tol=0 if fixed else tol)
    weights, factors, data = state
    current = x if data is None else data
    proj = _projections(current, weights, factors, rowsf, prec)
    fitted = Parafac2Tensor.tree_unflatten((counts,), (weights, factors, proj))
    result = Parafac2Tensor.tree_unflatten((counts,), (weights * scale, factors, proj))
    if return_info:
        rel = relative_error(x, fitted.to_dense(precision=precision), observed)
        result = (result, FitInfo(n_done, errors, rel, converged))
    return poison(result, n_nonfinite), n_nonfinite


def _initial_factors(x, rank, key, init, nonneg, prec):
    n_slices, _, n_cols = x.shape
    dtype = x.dtype
    if init == "random":
        ka, kb, kc = jax.random.split(key, 3)
        draw = jax.random.uniform if nonneg else jax.random.normal
        a = draw(ka, (n_slices, rank), dtype)
        b = jax.random.normal(kb, (rank, rank), dtype)
        c = draw(kc, (n_cols, rank), dtype)
    else:
        c = leading_subspace(algebra.unfold(x, 2), min(rank, n_cols), precision=prec)
        if rank > n_cols:  # complete deterministically (no key at any rank)
            c = jnp.concatenate([c, jnp.matmul(c, extra_columns(n_cols, rank - n_cols, dtype, 2),
                                               precision=prec)], axis=1)
        c = jnp.abs(c) if nonneg else c
        a = jnp.ones((n_slices, rank), dtype)
        b = jnp.eye(rank, dtype=dtype)
    return jnp.ones((rank,), dtype), (a, b, c)


def _projections(x, weights, factors, rowsf, prec):
    """``P_k = polar(X_k C D_k Bᵀ)`` for every slice (orthogonal Procrustes), zero in the
    padded rows."""
    a, b, c = factors
    xc = jnp.matmul(x, c, precision=prec)                             # (K, I, R)
    m = jnp.matmul(xc * (weights * a)[:, None, :], b.T, precision=prec)
    return jax.vmap(_polar)(m) * rowsf


@jax.custom_jvp
def _polar(m):
    """The orthogonal polar factor ``U Vᵀ`` of ``m = U S Vᵀ`` (``I × R``), over the singular
    values above rounding (a partial isometry where ``m`` is rank-deficient, e.g. ``I < R``)."""
    u, _, vt = _thin_svd(m)
    return jnp.matmul(u, vt, precision=lax.Precision.HIGHEST)


def _thin_svd(m):
    """Thin SVD ``(U, (keep, s), Vᵀ)`` with the columns of ``U``, rows of ``Vᵀ`` of singular
    values below rounding zeroed. A tall ``m`` (``I ≥ R``) goes through a Householder QR and
    the SVD of the ``R × R`` factor (backward stable as the direct SVD; 2× faster on CPU for
    ``I = 100, R = 4``)."""
    if m.shape[0] >= m.shape[1]:
        q, r = jnp.linalg.qr(m)
        u_r, s, vt = jnp.linalg.svd(r)
        u = jnp.matmul(q, u_r, precision=lax.Precision.HIGHEST)
    else:
        u, s, vt = jnp.linalg.svd(m, full_matrices=False)
    floor = max(m.shape) * jnp.finfo(m.dtype).eps * jnp.max(s)
    keep = (s > floor).astype(m.dtype)
    return u * keep, (keep, s), vt * keep[:, None]


@_polar.defjvp
def _polar_jvp(primals, tangents):
    """``dP = U Ω Vᵀ + (I − UUᵀ) dM V S⁻¹ Vᵀ + U S⁻¹ Uᵀ dM (I − VVᵀ)`` with
    ``Ω_ij = (G_ij − G_ji)/(s_i + s_j)``, ``G = Uᵀ dM V``, over the kept singular values: no
    ``1/(s_i − s_j)``, so finite where singular values repeat (JAX's SVD derivative is not)."""
    (m,), (dm,) = primals, tangents
    hi = lax.Precision.HIGHEST
    u, (keep, s), vt = _thin_svd(m)
    v = vt.T
    p = jnp.matmul(u, vt, precision=hi)
    s_inv = keep * safe_divide(1.0, s)
    dm_v = jnp.matmul(dm, v, precision=hi)
    g = jnp.matmul(u.T, dm_v, precision=hi)
    omega = safe_divide(g - g.T, s[:, None] + s[None, :]) * keep[:, None] * keep[None, :]
    ut_dm = jnp.matmul(u.T, dm, precision=hi)
    dp = (jnp.matmul(jnp.matmul(u, omega, precision=hi), vt, precision=hi)
          + jnp.matmul((dm_v - jnp.matmul(u, g, precision=hi)) * s_inv, vt, precision=hi)
          + jnp.matmul(u * s_inv, ut_dm - jnp.matmul(g, vt, precision=hi), precision=hi))
    return p, dp


def _cp_dense(weights, factors, prec):
    a, b, c = factors
    return jnp.einsum("kr,ir,jr->kij", a * weights, b, c, precision=prec)


def _cp_sweep(y, weights, factors, nonneg, prec):
    """One ALS pass over ``A``, ``B``, ``C`` of the CP model of ``y`` (``K × R × J``); HALS for
    ``A`` and ``C`` when ``nonneg``. Column norms go to the weights after each update."""
    factors = list(factors)
    specs = ("kij,ir,jr->kr", "kij,kr,jr->ir", "kij,kr,ir->jr")
    for n in range(3):
        others = [factors[m] for m in range(3) if m != n]
        m_n = jnp.einsum(specs[n], y, *others, precision=prec)
        gram = functools.reduce(lambda g, h: g * h,
                                [jnp.matmul(f.T, f, precision=prec) for f in others])
        if nonneg and n != 1:
            a_n = hals_columns(factors[n] * weights, m_n, gram, 0.0, prec)
        else:
            a_n = solve_normal_equations(m_n, gram, 0.0, prec)
        weights, factors[n] = normalize_columns(a_n)
    return weights, tuple(factors)
