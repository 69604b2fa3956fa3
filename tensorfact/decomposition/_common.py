"""Pieces shared by the decomposition families (initialisation, subspaces, argument checks)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from tensorfact import algebra, kernels
from tensorfact._checks import check_nonneg_number, check_positive_int, is_traced


def split_halves(modes):
    """Splits the modes of a sweep in two for a dimension tree: each half is updated from one
    contraction of the data with the other half's factors, so a sweep reads the data twice
    whatever the order of the tensor."""
    h = (len(modes) + 1) // 2
    return tuple(modes[:h]), tuple(modes[h:])


def leading_eigenvectors(gram, r: int):
    """The ``r`` leading eigenvectors of a symmetric (Gram) matrix, by decreasing eigenvalue."""
    _, vecs = jnp.linalg.eigh(gram)
    return vecs[:, ::-1][:, :r]


def leading_subspace(matrix, r: int, *, precision="highest"):
    """The ``r`` leading left singular vectors of ``matrix`` (``I × P``), as an ``I × r`` array.

    From the eigenvectors of the ``I × I`` Gram matrix when ``I ≤ P`` (a small symmetric
    eigenproblem instead of an SVD of the wide unfolding), else from a thin SVD. When
    ``P < r ≤ I`` the matrix has only ``P`` singular vectors; the basis is completed with
    orthonormal directions (from the coordinate axes), so ``r`` columns are always returned.
    """
    rows, cols = matrix.shape
    if rows <= cols:
        gram = jnp.matmul(matrix, matrix.T, precision=algebra.resolve_precision(precision))
        return leading_eigenvectors(gram, r)
    u, _, _ = jnp.linalg.svd(matrix, full_matrices=False)
    if r <= cols:
        return u[:, :r]
    completed, _ = jnp.linalg.qr(jnp.concatenate([u, jnp.eye(rows, r, dtype=u.dtype)], axis=1))
    return completed[:, :r]


def check_iteration_args(n_iter, tol):
    """Validates the loop controls shared by the iterative fits."""
    n_iter = check_positive_int(n_iter, "n_iter")
    check_nonneg_number(tol, "tol")
    return n_iter, tol


def concrete_or_traced(value):
    """``value`` as a float when known at trace time (keeps jit caches keyed on Python floats)."""
    return value if is_traced(value) else float(value)


def positive_floor(dtype):
    """Smallest positive normal number of ``dtype`` (guards divisions in multiplicative updates)."""
    return jnp.finfo(dtype).tiny


def random_orthonormal(key, rows: int, cols: int, dtype):
    """An ``rows × cols`` matrix with orthonormal columns, from a Gaussian matrix by QR."""
    q, _ = jnp.linalg.qr(jax.random.normal(key, (rows, cols), dtype))
    return q


HALS_INNER_SWEEPS = 5  # HALS passes per factor update: the subproblem is small, solve it well


def hals_columns(a, m, gram, l2, precision, sweeps: int = HALS_INNER_SWEEPS):
    """HALS: for each column r, ``a_r ← max(0, (m_r − Σ_{s≠r} a_s g_sr) / (g_rr + λ))``.

    This is the exact minimiser over column r of ``‖M − A Gᵀ‖``-type least squares plus
    ``λ‖A‖²`` with the other columns fixed (Cichocki & Phan, IEICE Trans. 2009). ``gram`` is
    ``R × R``, or ``I × R × R`` for a separate Gram matrix per row (weighted/masked fits). A
    column whose Gram diagonal is zero (``g_rr + λ = 0``) is left as it is. ``sweeps`` passes
    over the columns are made (each pass can only lower the objective).
    """
    per_row = gram.ndim == 3

    def column(r, a):
        g_r = lax.dynamic_index_in_dim(gram, r, axis=gram.ndim - 1, keepdims=False)
        g_rr = g_r[..., r]
        denom = g_rr + l2
        a_r = a[:, r]
        if per_row:
            others = jnp.einsum("is,is->i", a, g_r, precision=algebra.resolve_precision(precision))
        else:
            others = jnp.matmul(a, g_r, precision=algebra.resolve_precision(precision))
        others = others - a_r * g_rr
        updated = jnp.maximum((m[:, r] - others) / jnp.where(denom > 0, denom, 1.0), 0.0)
        return a.at[:, r].set(jnp.where(denom > 0, updated, a_r))

    return lax.fori_loop(0, sweeps * a.shape[1], lambda i, a: column(i % a.shape[1], a), a)


def solve_normal_equations(m, gram, l2, precision="highest"):
    """``m · (gram + λI)⁻¹`` (``gram`` is ``R × R``, or ``I × R × R`` per row), with a jitter of
    ``eps·tr(gram)/R`` so that rank-deficient Gram matrices stay solvable.

    One small Gram matrix (the ALS case) is inverted in a single kernel
    (:func:`tensorfact.kernels.spd_inverse`): on a GPU the launch latency of a library Cholesky
    solve dominated an ALS sweep. Larger or per-row systems use Cholesky.
    """
    r = gram.shape[-1]
    eye = jnp.eye(r, dtype=gram.dtype)
    trace = jnp.trace(gram, axis1=-2, axis2=-1)[..., None, None]
    jitter = jnp.finfo(gram.dtype).eps * trace / r + jnp.finfo(gram.dtype).tiny
    regularized = gram + (l2 + jitter) * eye
    if gram.ndim == 2 and r <= kernels.SPD_INVERSE_MAX_SIZE:
        return jnp.matmul(m, kernels.spd_inverse(regularized),
                          precision=algebra.resolve_precision(precision))
    chol = jax.scipy.linalg.cho_factor(regularized)
    if gram.ndim == 2:
        return jax.scipy.linalg.cho_solve(chol, m.T).T
    return jax.vmap(lambda c, b: jax.scipy.linalg.cho_solve((c, chol[1]), b))(chol[0], m)
