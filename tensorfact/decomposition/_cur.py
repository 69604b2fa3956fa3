"""CUR decomposition: ``M ≈ C · U · R`` with ``C`` actual columns and ``R`` actual rows of ``M``.

Unlike a truncated SVD, the outer factors of a CUR decomposition are pieces of the data
themselves, so they keep its sparsity, nonnegativity and meaning (a column is a sample, a row
a feature). Two ways of choosing them are provided (``"pivoted"``, deterministic, is the
default; ``"leverage"`` draws at random and needs a ``key``):

* ``method="leverage"`` (Mahoney & Drineas 2009, "CUR matrix decompositions for improved data
  analysis", PNAS 106(3)): with ``V_k`` and ``U_k`` the top-``k`` right and left singular
  vectors (``k = rank``), column ``j`` gets the normalized statistical leverage score
  ``π_j = ‖V_k[j, :]‖² / k`` and row ``i`` gets ``ρ_i = ‖U_k[i, :]‖² / k`` (each sums to 1).
  ``n_cols`` distinct columns and ``n_rows`` distinct rows are sampled *without replacement*
  with probabilities proportional to these scores (``jax.random.choice``, a Gumbel top-k).
  Sampling ``O(k log k / ε²)`` of them gives ``‖M − CUR‖_F ≤ (2 + ε) ‖M − M_k‖_F`` with high
  probability; the default number of columns and rows here is a modest ``2·rank``.

* ``method="pivoted"`` (Sorensen & Embree 2016, "A DEIM induced CUR factorization", SIAM J.
  Sci. Comput. 38(3)): the discrete empirical interpolation method (DEIM) picks indices
  greedily from the leading singular vectors. For the columns, with ``V`` the leading
  ``p = n_cols`` right singular vectors (``n × p``), DEIM takes ``j_1 = argmax |v_1|`` and
  then, for ``s = 2..p``, interpolates ``v_s`` at the indices chosen so far and takes the
  largest entry of the residual,

      r_s = v_s − V_{<s} (P_{<s}ᵀ V_{<s})⁻¹ P_{<s}ᵀ v_s,     j_s = argmax_j |r_s[j]|.

  The residual of step ``s`` is exactly column ``s`` of the Schur complement in Gaussian
  elimination of ``V`` with partial (row) pivoting, and its largest entry is that step's pivot,
  so the DEIM indices are the first ``p`` row pivots of ``LU(V)``: one ``jax.lax.linalg.lu``
  call (static shapes, batches under ``vmap``) replaces a greedy loop. Rows likewise use the
  leading ``n_rows`` left singular vectors. Deterministic; with ``n_cols = n_rows = rank``,
  ``‖M − CUR‖₂ ≤ (η_p + η_q) σ_{rank+1}`` where ``η_p, η_q`` are the DEIM error constants
  (modest in practice).

Both methods then use the middle matrix that is optimal for the chosen ``C`` and ``R`` in the
Frobenius norm, ``U = C⁺ M R⁺`` (so ``CUR = P_C M P_R``, the projection of ``M`` onto the
column space of ``C`` and the row space of ``R``). The pseudoinverses drop singular values
below ``RCOND · σ_max`` (see :data:`RCOND`).
"""

from __future__ import annotations

import functools
import numbers
from typing import Literal

import jax
import jax.numpy as jnp

from tensorfact._checks import finite_part, poison
from tensorfact._checks import (Precision, as_matrix, check_choice, check_key,
                                check_positive_int, report_nonfinite)
from tensorfact._numerics import pow2_scale, resolve_precision
from tensorfact.tensors import CURMatrix

__all__ = ["RCOND", "cur"]

CURMethod = Literal["pivoted", "leverage"]

#: Relative cutoff of the pseudoinverses in ``U = C⁺ M R⁺``: singular values of ``C`` (and of
#: ``R``) below ``RCOND[dtype] · σ_max`` are treated as zero, near ``sqrt(eps)`` of the dtype.
#: ``U`` carries the inverses of the kept singular values, which ``C U R`` has to cancel again
#: in floating point, so a smaller cutoff can make the result worse: in float32, taking all 50
#: columns and 60 rows of a 60 × 50 matrix with singular values ``0.7**i`` gives a relative
#: error of 1e-4 with the cutoff 1e-4, 6e-4 with 1e-5 and 5e-3 with 1e-6. What the cutoff
#: discards is the part of ``M`` along directions of ``C`` (or ``R``) weaker than
#: ``RCOND · σ_max``; with ``n_cols``, ``n_rows`` near the rank it is rarely reached.
RCOND = {"float32": 1e-4, "float64": 1e-8}


def cur(m, rank: int, *, key=None, method: CURMethod = "pivoted", n_cols=None, n_rows=None,
        precision: Precision = "highest") -> CURMatrix:
    """CUR decomposition ``M ≈ C U R`` of a matrix, by leverage-score sampling or DEIM.

    ``C = M[:, col_index]`` (``m × k``, ``k = n_cols``) and ``R = M[row_index, :]``
    (``l × n``, ``l = n_rows``) are actual columns and rows of ``M``, and
    ``U = C⁺ M R⁺`` (``k × l``) is the Frobenius-optimal middle matrix for them.

    The selection and ``U`` depend only on the directions of ``M``'s singular vectors and on
    pseudoinverses with a relative cutoff, all scale-free, and are computed on ``m / 2^k``
    (``2^k`` near ``max |m|``, an exact division; ``U`` is scaled back): ``cur(c·m)`` selects
    the same columns and rows as ``cur(m)``, with ``C``, ``R`` taken from ``c·m`` and ``U``
    divided by ``c``, for data anywhere in the floating-point range.

    Args:
      m: 2-D array (float32 or float64; other real dtypes are cast to float32; use
        ``jax.vmap`` for a batch).
      rank: target rank ``k`` (a positive int ``≤ min(m.shape)``, static): the default number
        of columns and rows for ``"pivoted"``, and the number of singular vectors whose
        leverage scores are sampled (``"leverage"``).
      key: ``jax.random`` key, required for ``method="leverage"`` (a ``ValueError`` without
        it); the default ``"pivoted"`` draws nothing and ignores it.
      method: ``"pivoted"`` (the default; Sorensen & Embree 2016: deterministic DEIM selection
        from the leading ``n_cols`` right / ``n_rows`` left singular vectors, computed as the
        pivots of an LU factorization with partial pivoting) or ``"leverage"`` (Mahoney &
        Drineas 2009: random sampling without replacement, probabilities proportional to the
        rank-``k`` leverage scores). See the module docstring for the math.
      n_cols: number of columns ``k`` in ``C`` (static int, ``rank ≤ n_cols ≤ n``). Default:
        ``min(2·rank, n)`` for ``"leverage"`` (oversampling makes the random choice reliable),
        ``rank`` for ``"pivoted"``.
      n_rows: number of rows ``l`` in ``R`` (static int, ``rank ≤ n_rows ≤ m``); defaults as
        for ``n_cols``, with ``m`` in place of ``n``.
      precision: XLA precision of the matrix products: ``"highest"`` (the default) is true
        float32; ``None`` is JAX's default (TF32 or bfloat16 passes on recent GPUs and TPUs).

    Returns:
      A :class:`~tensorfact.tensors.cur.CURMatrix` whose ``col_index`` / ``row_index`` hold
      distinct indices in the order they were selected (most important first for DEIM).

    Example:
      >>> import jax, tensorfact as tfa
      >>> a, b = jax.random.normal(jax.random.key(0), (2, 30, 3))
      >>> x = a @ b.T                                   # 30 × 30, rank 3
      >>> approx = tfa.cur(x, 3)                        # pivoted (DEIM): deterministic
      >>> approx.c.shape, approx.u.shape, approx.r.shape
      ((30, 3), (3, 3), (3, 30))
      >>> bool(jax.numpy.allclose(approx.c, x[:, approx.col_index]))
      True
      >>> err = jax.numpy.linalg.norm(x - approx.to_dense()) / jax.numpy.linalg.norm(x)
      >>> bool(err < 1e-4)
      True
      >>> sampled = tfa.cur(x, 3, key=jax.random.key(1), method="leverage")  # 6 cols, 6 rows
      >>> sampled.c.shape, sampled.r.shape
      ((30, 6), (6, 30))

    Raises:
      ValueError: if ``m`` is not 2-D or has a dimension of size zero; ``rank`` is not a
        positive integer (bools and floats included) or exceeds ``min(m.shape)``; ``n_cols``
        / ``n_rows`` is not an integer in ``[rank, n]`` / ``[rank, m]``; ``method`` or
        ``precision`` is unknown; ``key`` is missing for ``method="leverage"`` or malformed;
        or (in an eager call) ``m`` holds NaN or Inf.
    """
    m = as_matrix(m)
    rows, cols = (int(s) for s in m.shape)
    rank = check_positive_int(rank, "rank")
    if rank > min(rows, cols):
        raise ValueError(f"rank = {rank} must be at most min(m.shape) = {min(rows, cols)} "
                         f"(m has shape {(rows, cols)}).")
    method = check_choice(method, CURMethod, "method")
    resolve_precision(precision)
    if method == "leverage":
        check_key(key, 'for method="leverage" (columns and rows are sampled at random)')
        default_cols, default_rows = min(2 * rank, cols), min(2 * rank, rows)
    else:
        if key is not None:
            check_key(key, 'only for method="leverage"')
        key = None
        default_cols = default_rows = rank
    n_cols = _check_count(n_cols, default_cols, rank, cols, "n_cols", "columns")
    n_rows = _check_count(n_rows, default_rows, rank, rows, "n_rows", "rows")
    result, n_nonfinite = _cur_fit(m, key, rank=rank, method=method, n_cols=n_cols,
                                   n_rows=n_rows, precision=precision)
    report_nonfinite(n_nonfinite, "m")
    return result


def _check_count(value, default, rank, size, name, label):
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not (
            rank <= value <= size):
        raise ValueError(f"{name} must be an integer in [rank, {label}] = [{rank}, {size}] "
                         f"(m has {size} {label}), got {value!r}.")
    return int(value)


@functools.partial(jax.jit, static_argnames=("rank", "method", "n_cols", "n_rows", "precision"))
def _cur_fit(m, key, *, rank, method, n_cols, n_rows, precision):
    m, n_nonfinite = finite_part(m)  # LAPACK's SVD does not return on Inf
    rows, cols = m.shape
    # The selection and U = C⁺ M R⁺ are computed on m / 2^k (exact), so that no backend's SVD
    # sees extreme values; C and R are gathered from m itself and U scaled back by 1 / 2^k.
    data = m
    scale = jax.lax.stop_gradient(pow2_scale(m))
    m = m / scale
    if method == "leverage":
        u_svd, _, vt_svd = jnp.linalg.svd(m, full_matrices=False)
        col_p = jnp.sum(vt_svd[:rank] ** 2, axis=0) / rank  # leverage scores, summing to 1
        row_p = jnp.sum(u_svd[:, :rank] ** 2, axis=1) / rank
        key_c, key_r = jax.random.split(key)
        col_index = jax.random.choice(key_c, cols, (n_cols,), replace=False, p=col_p)
        row_index = jax.random.choice(key_r, rows, (n_rows,), replace=False, p=row_p)
    else:
        # more indices than min(m.shape) need the full set of singular vectors
        full = max(n_cols, n_rows) > min(rows, cols)
        u_svd, _, vt_svd = jnp.linalg.svd(m, full_matrices=full)
        col_index = _deim(vt_svd[:n_cols].T)
        row_index = _deim(u_svd[:, :n_rows])
    col_index = col_index.astype(jnp.int32)
    row_index = row_index.astype(jnp.int32)
    c, r = m[:, col_index], m[row_index, :]
    rcond = RCOND["float64" if m.dtype == jnp.float64 else "float32"]
    hp = resolve_precision(precision)
    c_pinv = jnp.linalg.pinv(c, rtol=rcond)
    r_pinv = jnp.linalg.pinv(r, rtol=rcond)
    if n_rows <= n_cols:  # C⁺ (M R⁺) or (C⁺ M) R⁺: contract the big matrix with the smaller side
        u = jnp.matmul(c_pinv, jnp.matmul(m, r_pinv, precision=hp), precision=hp)
    else:
        u = jnp.matmul(jnp.matmul(c_pinv, m, precision=hp), r_pinv, precision=hp)
    result = CURMatrix(data[:, col_index], u / scale, data[row_index, :], col_index, row_index)
    return poison(result, n_nonfinite), n_nonfinite


def _deim(basis):
    """DEIM indices of the ``p`` columns of the orthonormal ``basis`` (``n × p``).

    Gaussian elimination with partial pivoting on ``basis`` chooses, at step ``s``, the row
    where the residual of interpolating column ``s`` at the previous pivots is largest in
    magnitude: exactly the DEIM rule. The first ``p`` entries of the LU row permutation are
    therefore the DEIM indices, in selection order, and they are distinct.
    """
    _, _, permutation = jax.lax.linalg.lu(basis)
    return permutation[:basis.shape[1]]
