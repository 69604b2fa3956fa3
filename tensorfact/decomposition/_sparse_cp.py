"""CP of a sparse tensor (a ``jax.experimental.sparse.BCOO``) by ALS over its stored entries,
never densified: what :func:`tensorfact.cp` runs when ``x`` is sparse.

Each sweep is the ALS (or HALS) sweep of the dense fit with the MTTKRP taken over the nonzeros
(:func:`tensorfact._sparse.sparse_mttkrp`: gather the factor rows at each entry's coordinates,
multiply, ``segment_sum`` into the rows; Bader & Kolda, SIAM J. Sci. Comput. 2007, §3.3):

    A_n ← MTTKRP_n(x) · (⊛_{k≠n} A_kᵀA_k + λI)⁺,

with the same factor update, ridge, normalisation and scaling as the dense fit
(:mod:`tensorfact.decomposition._sweeps`), so from the same start both follow the same path to
float rounding. Memory is ``O(nnz · R + Σ_n I_n · R)``: no array of the tensor's size exists
anywhere in the program.

The error never forms ``x̂`` either: ``‖x‖² = Σ v²``, ``⟨x, x̂⟩`` from the last MTTKRP and
``‖x̂‖²`` from the Gram matrices. Where that formula cancels (relative errors below about
``sqrt(eps)``), and for ``info.rel_error``, the error is

    ‖x − x̂‖² = Σ_nnz (v − x̂(i))² + (‖x̂‖² − Σ_nnz x̂(i)²),

with ``x̂(i)`` gathered at the stored coordinates: exact on the entries that hold data, the
formula only for the mass of ``x̂`` where ``x`` is zero.

``init="svd"``: the leading left singular vectors of each sparse unfolding ``X_(n)``
(``I_n × Π_{k≠n} I_k``) by subspace iteration with sparse products (Halko, Martinsson & Tropp,
SIAM Rev. 2011, Alg. 4.4): ``Q ← qr(X_(n) X_(n)ᵀ Q)``, ``POWER_ITERATIONS`` times from a
deterministic start of ``r + OVERSAMPLE`` columns, then a Rayleigh–Ritz step (the eigenvectors
of ``(X_(n)ᵀQ)ᵀ(X_(n)ᵀQ)``). ``X_(n)ᵀQ`` lives on the unfolding's nonzero columns alone (at
most ``nnz``: their ids come from one sort of the other modes' coordinates), so each product
costs ``O(nnz · (r + OVERSAMPLE))`` whatever the mode sizes: a 10⁴ × 10⁴ × 10³ tensor with 10⁶
nonzeros needs no ``10⁷``-row matrix, and no ``I_n × I_n`` Gram matrix (10⁸ entries) either.
A mode with ``I_n ≤ r + OVERSAMPLE`` takes the exact eigenvectors of its Gram matrix. The result
is deterministic (no key). Derivatives flow through the Rayleigh–Ritz step with the iterated
basis held fixed (a QR of a rank-deficient product has no finite derivative).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import sparse

from tensorfact import algebra
from tensorfact._checks import (Impl, check_choice, check_nonneg_number, check_positive_int,
                                finite_part, poison, report_nonfinite)
from tensorfact._numerics import pow2_scale
from tensorfact._sparse import check_sparse, gather_rows, inside, sparse_mttkrp
from tensorfact.decomposition._common import (check_cp_init, check_iteration_args,
                                              concrete_or_traced, leading_eigenvectors,
                                              resolve_init, resolve_tol)
from tensorfact.decomposition._loop import (FitInfo, cp_info, error_from_norms, iterate,
                                            refine_error, relative_from_squares)
from tensorfact.decomposition._sweeps import (ONE_DEVICE, cp_initial_factors, cp_penalties,
                                              cp_scale_back, cp_sweep_result, extra_columns,
                                              scaled_to_data, update_cp_factor)
from tensorfact.tensors import CPTensor

__all__ = ["sparse_cp", "POWER_ITERATIONS", "OVERSAMPLE"]

#: Subspace iterations of the sparse SVD start (each one product with ``X_(n) X_(n)ᵀ``).
POWER_ITERATIONS = 4
#: Columns beyond the rank carried by the subspace iteration (they speed its convergence).
OVERSAMPLE = 10


def sparse_cp(x, rank, *, key, init, n_iter, tol, mask, nonneg, l2, normalize, precision, impl,
              return_info):
    """:func:`tensorfact.cp` for a sparse ``x`` (a ``BCOO`` with sparse dimensions only); the
    arguments mean what they mean there. ``mask`` is refused: the stored entries are the data
    and every other entry is a zero (to fit only the observed entries of an array, pass it
    dense with a ``mask``). ``impl`` takes ``"auto"`` or ``"xla"``: the MTTKRP is the sparse
    gather-and-sum."""
    x = check_sparse(x, "x", min_ndim=2, nonempty=True)
    rank = check_positive_int(rank, "rank")
    n_iter, tol = check_iteration_args(n_iter, tol)
    check_nonneg_number(l2, "l2")
    if mask is not None:
        raise ValueError("mask cannot be given with a sparse x (a BCOO): its stored entries are "
                         "the data and every other entry is a zero. To fit the observed entries "
                         "of an array alone, pass x dense with a mask.")
    if check_choice(impl, Impl, "impl") == "pallas":
        raise ValueError('impl="pallas" has no kernel for a sparse x (a BCOO): use "auto" or '
                         '"xla" (the MTTKRP over its stored entries).')
    init_tensor, init_kind = resolve_init(init, CPTensor, key,
                                          lambda t: check_cp_init(t, x.shape, rank))
    fixed, tol = resolve_tol(tol)
    result, n_nonfinite = _sparse_cp_fit(
        x, key, init_tensor, concrete_or_traced(l2), tol, rank=rank, n_iter=n_iter, fixed=fixed,
        init=init_kind, nonneg=bool(nonneg), normalize=bool(normalize), precision=precision,
        return_info=bool(return_info))
    report_nonfinite(n_nonfinite, "x")
    return result


@functools.partial(jax.jit, static_argnames=(
    "rank", "n_iter", "fixed", "init", "nonneg", "normalize", "precision", "return_info"))
def _sparse_cp_fit(x, key, init_tensor, l2, tol, *, rank, n_iter, fixed, init, nonneg,
                   normalize, precision, return_info):
    dtype = x.dtype
    if not x.unique_indices:  # repeated coordinates add up (BCOO's meaning): merge them once
        x = x.sum_duplicates(nse=x.nse)
    stored = inside(x)
    values, n_nonfinite = finite_part(jnp.where(stored, x.data, 0))
    scale = lax.stop_gradient(pow2_scale(values))  # fit x / 2^k, as the dense fit does
    x = sparse.BCOO((values / scale, x.indices), shape=x.shape, indices_sorted=x.indices_sorted,
                    unique_indices=True)
    prec = algebra.resolve_precision(precision)
    norm_x_sq = jnp.vdot(x.data, x.data, precision=prec)

    if init == "given":
        weights = init_tensor.weights.astype(dtype) / scale
        factors = [a.astype(dtype) for a in init_tensor.factors]
    else:
        weights, factors = cp_initial_factors(
            x, rank, key, init, nonneg, precision, shape=x.shape,
            subspace=lambda n, r: sparse_leading_subspace(x, n, r, precision=precision))
        if nonneg:  # HALS's path depends on the start's scale: match the data's
            weights, factors = scaled_to_data(weights, factors, norm_x_sq, precision)
    if not normalize:  # the factors carry the scale; the weights stay at one
        factors = [factors[0] * weights] + list(factors[1:])
        weights = jnp.ones_like(weights)
    l2 = cp_penalties(l2, scale, x.ndim, normalize)

    def step(state):
        weights, factors = state
        factors, local = list(factors), list(factors)
        grams = [jnp.matmul(a.T, a, precision=prec) for a in factors]
        update = functools.partial(update_cp_factor, factors=factors, local=local, grams=grams,
                                   layout=ONE_DEVICE, l2=l2, nonneg=nonneg, normalize=normalize,
                                   precision=precision)
        for n in range(x.ndim):
            m_n = sparse_mttkrp(x, factors, n)
            weights = update(n, m_n, weights)
        weights, factors, (inner, approx_sq) = cp_sweep_result(
            weights, factors, local, grams, m_n, ONE_DEVICE, precision)
        err = refine_error(error_from_norms(norm_x_sq, inner, approx_sq),
                           lambda: _support_error(x, stored, norm_x_sq, weights, factors, prec))
        return (weights, factors), err

    state, n_done, errors, converged = iterate(step, (weights, tuple(factors)), n_iter=n_iter,
                                               tol=0 if fixed else tol)
    weights, factors = cp_scale_back(*state, scale, normalize)
    result = CPTensor(weights, factors)
    if return_info:
        rel = _support_error(x, stored, norm_x_sq, *state, prec)
        result = (result, cp_info(FitInfo(n_done, errors, rel, converged), weights, factors))
    return poison(result, n_nonfinite), n_nonfinite


def _support_error(x, stored, norm_x_sq, weights, factors, prec):
    """``‖x − x̂‖ / ‖x‖`` from ``x̂`` gathered at the stored coordinates (exact there) and the
    Gram matrices (for the rest of ``x̂``'s mass)."""
    fitted = jnp.broadcast_to(weights, (x.nse, weights.shape[0]))
    for m, a in enumerate(factors):
        fitted = fitted * gather_rows(a, x.indices[:, m])
    fitted = jnp.where(stored, jnp.sum(fitted, axis=1), 0)
    on_support = jnp.sum((x.data - fitted) ** 2)
    gram_all = functools.reduce(lambda a, b: a * b,
                                [jnp.matmul(a.T, a, precision=prec) for a in factors])
    approx_sq = jnp.einsum("r,rs,s->", weights, gram_all, weights, precision=prec)
    off_support = jnp.maximum(approx_sq - jnp.sum(fitted ** 2), 0)
    return relative_from_squares(on_support + off_support, norm_x_sq)


def _by_column(indices, shape, mode: int):
    """The stored entries in the order of the columns of the unfolding ``X_(mode)``:
    ``(order, ids)`` with ``ids`` (sorted, in ``[0, nse)``) the column of entry ``order[k]``.
    Entries with equal coordinates in every other mode share a column. One sort: of the
    column's linear index where it fits in int32, else of the coordinates (lexicographic; no
    index that could overflow). Padding entries may share a column with anything: their values
    are zero."""
    others = [k for k in range(len(shape)) if k != mode]
    coords = [jnp.clip(indices[:, k], 0, shape[k] - 1).astype(jnp.int32) for k in others]
    if math.prod(shape[k] for k in others) <= np.iinfo(np.int32).max:
        linear = coords[0]
        for k, c in zip(others[1:], coords[1:]):
            linear = linear * shape[k] + c
        order = jnp.argsort(linear)
        ordered = linear[order]
        change = ordered[1:] != ordered[:-1]
    else:
        order = jnp.lexsort(coords[::-1])
        ordered = jnp.stack(coords, axis=1)[order]
        change = jnp.any(ordered[1:] != ordered[:-1], axis=1)
    new = jnp.concatenate([jnp.ones((1,), bool), change])
    return order, jnp.cumsum(new, dtype=jnp.int32) - 1


def sparse_leading_subspace(x, mode: int, r: int, *, precision="highest"):
    """The ``r`` leading left singular vectors of the unfolding ``X_(mode)`` of a sparse ``x``
    (an ``I_n × r`` array with orthonormal columns), from products with the nonzeros only: see
    the module's docstring. ``x`` holds unique coordinates (padding entries with zero values
    are harmless)."""
    size, nse, dtype = x.shape[mode], x.nse, x.dtype
    prec = algebra.resolve_precision(precision)
    order, cols = _by_column(x.indices, x.shape, mode)  # the entries column by column
    rows, data = x.indices[order, mode], x.data[order][:, None]
    n_cols = max(nse, 1)

    def times_t(q):  # X_(n)ᵀ Q on the nonzero columns: (n_cols, width)
        return jax.ops.segment_sum(data * gather_rows(q, rows), cols, num_segments=n_cols,
                                   indices_are_sorted=True)

    def times(z):  # X_(n) Z: (I_n, width)
        return jax.ops.segment_sum(data * gather_rows(z, cols), rows, num_segments=size)

    width = min(r + OVERSAMPLE, size)
    if width == size:  # a small mode: the whole space, so the Rayleigh–Ritz step is exact
        q = jnp.eye(size, dtype=dtype)
    else:
        q = extra_columns(size, width, dtype, mode)
        for _ in range(POWER_ITERATIONS):
            q, _ = jnp.linalg.qr(times(times_t(q)))
        q = lax.stop_gradient(q)
    z = times_t(q)
    vecs = leading_eigenvectors(jnp.matmul(z.T, z, precision=prec), r)
    return jnp.matmul(q, vecs, precision=prec)
