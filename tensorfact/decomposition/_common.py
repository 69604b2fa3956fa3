"""Pieces shared by the decomposition families: argument checks and their resolution (``init``,
``tol``), leading subspaces with derivatives that stay finite on rank-deficient data, the
normal-equation solve of ALS (a pseudo-inverse), HALS column updates, safe normalisation."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from tensorfact import algebra
from tensorfact._checks import (Init, check_choice, check_key, check_nonneg_number,
                                check_positive_int, is_traced, is_zero)
from tensorfact._numerics import safe_divide, safe_norm


def split_halves(modes):
    """Splits the modes of a sweep in two for a dimension tree: each half is updated from one
    contraction of the data with the other half's factors, so a sweep reads the data twice
    whatever the order of the tensor."""
    h = (len(modes) + 1) // 2
    return tuple(modes[:h]), tuple(modes[h:])


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def leading_eigenvectors(gram, r: int):
    """The ``r`` leading eigenvectors of a symmetric (Gram) matrix, by decreasing eigenvalue.

    Differentiable where the data are rank-deficient: ``jnp.linalg.eigh``'s derivative divides
    by every eigenvalue gap ``λ_j − λ_i`` and is NaN as soon as two eigenvalues repeat (the
    zero eigenvalues of a rank-deficient Gram matrix). Here the pairs whose gap is below
    rounding (``n · eps · max |λ|``) are left out of the derivative; they span an eigenspace
    whose basis is arbitrary anyway, and the derivative of the leading subspace, where it
    exists (a gap after the ``r``-th eigenvalue), is exact.
    """
    _, vecs = jnp.linalg.eigh(gram)
    return vecs[:, ::-1][:, :r]


@leading_eigenvectors.defjvp
def _leading_eigenvectors_jvp(r, primals, tangents):
    (gram,), (d_gram,) = primals, tangents
    vals, vecs = jnp.linalg.eigh(gram)
    vals, vecs = vals[::-1], vecs[:, ::-1]
    gap = vals[None, :] - vals[:, None]  # λ_j − λ_i
    floor = gram.shape[-1] * jnp.finfo(gram.dtype).eps * jnp.max(jnp.abs(vals))
    inverse_gap = jnp.where(jnp.abs(gap) > floor, 1 / jnp.where(jnp.abs(gap) > floor, gap, 1), 0)
    hi = lax.Precision.HIGHEST
    projected = jnp.matmul(jnp.matmul(vecs.T, d_gram, precision=hi), vecs[:, :r], precision=hi)
    d_vecs = jnp.matmul(vecs, inverse_gap[:, :r] * projected, precision=hi)
    return vecs[:, :r], d_vecs


def leading_subspace(matrix, r: int, *, precision="highest"):
    """The ``r`` leading left singular vectors of ``matrix`` (``I × P``), as an ``I × r`` array.

    From the eigenvectors of the ``I × I`` Gram matrix when ``I ≤ P`` (a small symmetric
    eigenproblem instead of an SVD of the wide unfolding), else from a thin SVD. When
    ``P < r ≤ I`` the matrix has only ``P`` singular vectors; the basis is completed with
    orthonormal directions (from the coordinate axes), so ``r`` columns are always returned.
    Both routes have finite derivatives on rank-deficient matrices (see
    :func:`leading_eigenvectors`); the completing directions are arbitrary and carry none.
    """
    rows, cols = matrix.shape
    if rows <= cols:
        gram = jnp.matmul(matrix, matrix.T, precision=algebra.resolve_precision(precision))
        return leading_eigenvectors(gram, r)
    u = _left_singular_vectors(matrix)
    if r <= cols:
        return u[:, :r]
    completed, _ = jnp.linalg.qr(jnp.concatenate(
        [lax.stop_gradient(u), jnp.eye(rows, r, dtype=u.dtype)], axis=1))
    return jnp.concatenate([u, completed[:, cols:r]], axis=1)


@jax.custom_jvp
def _left_singular_vectors(matrix):
    """``U`` of the thin SVD ``M = U S Vᵀ``, with the derivative of :func:`_left_singular_jvp`."""
    return jnp.linalg.svd(matrix, full_matrices=False)[0]


@_left_singular_vectors.defjvp
def _left_singular_jvp(primals, tangents):
    """``dU = U (F ∘ (Uᵀ dM V S + S Vᵀ dMᵀ U)) + (I − UUᵀ) dM V S⁻¹`` with
    ``F_ij = 1/(s_j² − s_i²)`` (Townsend 2016), where gaps and singular values below rounding
    are left out (JAX's own SVD derivative is NaN there: repeated or zero singular values of
    rank-deficient data)."""
    (m,), (dm,) = primals, tangents
    u, s, vt = jnp.linalg.svd(m, full_matrices=False)
    hi = lax.Precision.HIGHEST
    floor = max(m.shape) * jnp.finfo(m.dtype).eps * jnp.max(s)
    sq = s * s
    gap = sq[None, :] - sq[:, None]
    gap_floor = floor * jnp.max(s)
    f = jnp.where(jnp.abs(gap) > gap_floor, 1 / jnp.where(jnp.abs(gap) > gap_floor, gap, 1), 0)
    s_inv = jnp.where(s > floor, 1 / jnp.where(s > floor, s, 1), 0)
    dm_v = jnp.matmul(dm, vt.T, precision=hi)
    proj = jnp.matmul(u.T, dm_v, precision=hi)
    inner = f * (proj * s[None, :] + s[:, None] * proj.T)
    du = (jnp.matmul(u, inner, precision=hi)
          + (dm_v - jnp.matmul(u, proj, precision=hi)) * s_inv[None, :])
    return u, du


def check_finite_init(init, name: str = "init") -> None:
    """Raises ``ValueError`` naming ``name`` if a given starting tensor (a factorized type)
    holds NaN or Inf; values under a transformation are unknown and pass."""
    leaves = jax.tree_util.tree_leaves(init)
    if any(is_traced(leaf) for leaf in leaves):
        return
    bad = sum(int(np.sum(~np.isfinite(np.asarray(leaf)))) for leaf in leaves)
    if bad:
        raise ValueError(f"{name} contains {bad} NaN or Inf value(s); a starting "
                         f"{type(init).__name__} must be finite.")


def check_cp_init(init, shape, rank: int):
    """A given CP start (``init=CPTensor``) of the data's shape and the fit's rank, finite."""
    if init.shape != tuple(shape) or init.rank != rank:
        raise ValueError(f"init must be a CPTensor of shape {tuple(shape)} and rank {rank}, got "
                         f"shape {init.shape} and rank {init.rank}.")
    check_finite_init(init)
    return init


def normalize_columns(a):
    """``(norms, a / norms)`` over the columns of ``a``; a zero column stays zero with a zero
    norm, and the derivative is finite there (safe norm and division)."""
    norms = safe_norm(a, axis=0)
    return norms, safe_divide(a, norms)


def check_iteration_args(n_iter, tol):
    """Validates the loop controls shared by the iterative fits."""
    n_iter = check_positive_int(n_iter, "n_iter")
    check_nonneg_number(tol, "tol")
    return n_iter, tol


def resolve_init(init, tensor_type, key, check_given):
    """``(init_tensor, kind)`` of an iterative fit's ``init``: a given ``tensor_type`` (checked
    and normalised by ``check_given``) with kind ``"given"``, or ``(None, "svd" | "random")``
    for an option (``"random"`` needs ``key``, the only option that draws)."""
    if isinstance(init, tensor_type):
        return check_given(init), "given"
    kind = check_choice(init, Init, "init")
    if kind == "random":
        check_key(key, 'for init="random"')
    return None, kind


def resolve_tol(tol):
    """``(fixed, tol)``: a concrete zero asks for exactly ``n_iter`` iterations (a scan,
    differentiable) and becomes ``0.0``; any other value stays (a float when concrete)."""
    if is_zero(tol):
        return True, 0.0
    return False, concrete_or_traced(tol)


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
    """``m · (gram + λI)⁺``: the minimum-norm solution of the least-squares problem whose normal
    equations these are (``gram`` is ``R × R``, or ``I × R × R`` for a separate system per row).

    ALS solves ``A ← MTTKRP · V⁺`` with ``V = ⊛_{k≠n} A_kᵀA_k``. ``V`` is singular whenever the
    rank exceeds what the data hold (an over-ranked CP, a row of a masked fit with fewer
    observations than the rank). In floating point every entry of ``V`` carries an error of a
    few ``eps``, so its eigenvalues carry errors up to about ``R · eps · μ_max``: below that
    they are noise, and an inverse, a Cholesky factorization or an LU solve amplifies the noise
    into factors of 1e3 and more until the fit diverges (NaN at a CP rank of 100 in float32).
    Here the eigenvalues of ``V + λI`` below ``PINV_RCOND · R · eps · μ_max`` are dropped, as
    ``numpy.linalg.pinv`` does with its ``rcond``, so over-ranking only wastes work: the
    redundant directions get the minimum-norm share. A zero ``gram`` (a row with no
    observation) gives a zero row. See :func:`psd_pinv` for the derivative.
    """
    r = gram.shape[-1]
    regularized = gram + l2 * jnp.eye(r, dtype=gram.dtype)
    rcond = PINV_RCOND * r * float(jnp.finfo(gram.dtype).eps)
    inverse = psd_pinv(regularized, rcond, precision)
    prec = algebra.resolve_precision(precision)
    if gram.ndim == 2:
        return jnp.matmul(m, inverse, precision=prec)
    return jnp.einsum("ir,irs->is", m, inverse, precision=prec)


#: Relative eigenvalue threshold of :func:`solve_normal_equations`, in units of ``R · eps``
#: (measured on exactly low-rank data fitted at up to three times the largest mode size:
#: 10 reached the smallest float32 errors; 1 lets noise through, ``sqrt(eps)`` drops signal).
PINV_RCOND = 10.0


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def psd_pinv(v, rcond: float, precision="highest"):
    """Pseudo-inverse of symmetric positive semi-definite matrices (leading batch axes ok):
    ``Q diag(1/λ_i) Qᵀ`` over the eigenvalues ``λ_i > rcond · λ_max``, zero on the others.

    The derivative is Golub & Pereyra's (SIAM J. Numer. Anal. 1973) for a pseudo-inverse of
    constant rank, ``dP = −P dV P + P² dV (I − VP) + (I − PV) dV P²``. It holds no
    ``1/(λ_i − λ_j)``, so it stays finite where eigenvalues repeat (``V = I``, orthogonal
    factors), unlike differentiating through ``eigh``.
    """
    w, q = jnp.linalg.eigh(v)
    keep = w > rcond * jnp.max(w, axis=-1, keepdims=True)
    inv_w = jnp.where(keep, 1 / jnp.where(keep, w, 1), 0)
    prec = algebra.resolve_precision(precision)
    return jnp.matmul(q * inv_w[..., None, :], jnp.swapaxes(q, -1, -2), precision=prec)


@psd_pinv.defjvp
def _psd_pinv_jvp(rcond, precision, primals, tangents):
    (v,), (dv,) = primals, tangents
    p = psd_pinv(v, rcond, precision)
    prec = algebra.resolve_precision(precision)

    def mm(a, b):
        return jnp.matmul(a, b, precision=prec)

    eye = jnp.eye(v.shape[-1], dtype=v.dtype)
    p_sq = mm(p, p)
    dp = -mm(mm(p, dv), p) + mm(mm(p_sq, dv), eye - mm(v, p)) + mm(mm(eye - mm(p, v), dv), p_sq)
    return p, dp


def tt_rank_list(ranks, shape, name: str = "ranks") -> tuple[int, ...]:
    """``(1, r_1, …, r_{d−1}, 1)`` from a sequence of the ``d + 1`` ranks of a tensor train (or
    grid) of ``shape`` or of its ``d − 1`` inner ones, each a positive int; errors name ``name``.
    Whether each rank is reachable from the shape is the caller's check."""
    d = len(shape)
    if isinstance(ranks, str) or not isinstance(ranks, (Sequence, np.ndarray)):
        raise ValueError(f"{name} must be an int or a sequence of ints (1, r_1, ..., r_{{d-1}}, "
                         f"1), got {ranks!r}.")
    ranks = tuple(ranks)
    if len(ranks) not in (d + 1, d - 1):
        raise ValueError(f"{name} must have d + 1 = {d + 1} entries (1, r_1, ..., r_{{d-1}}, 1) "
                         f"or the d - 1 = {d - 1} inner ones (r_1, ..., r_{{d-1}}) for a {d}-way "
                         f"tensor of shape {tuple(shape)}, got {len(ranks)}: {ranks!r}.")
    if len(ranks) == d - 1:
        ranks = (1,) + ranks + (1,)
    ranks = tuple(check_positive_int(r, f"{name}[{k}]") for k, r in enumerate(ranks))
    if ranks[0] != 1 or ranks[-1] != 1:
        raise ValueError(f"{name} must start and end with 1 (a tensor train has boundary "
                         f"ranks 1), got {ranks!r}.")
    return ranks
