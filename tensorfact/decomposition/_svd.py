"""Truncated SVD: exact, or randomized (Halko, Martinsson & Tropp 2011).

The best rank-``r`` approximation of a matrix in the Frobenius and spectral norms is its
truncated SVD (Eckart & Young 1936). ``method="randomized"`` finds it approximately at a
fraction of the cost for large matrices:

1. sketch the range: ``Y = M Ω`` with a Gaussian ``Ω`` of ``r + oversample`` columns;
2. sharpen it by ``n_power_iter`` power iterations ``Y ← M (Mᵀ Q)``, re-orthonormalising after
   every product (Halko et al., Algorithm 4.4), which makes the error decay like the singular
   values raised to ``2q + 1``;
3. ``Q = orth(Y)``; the projection ``B = Qᵀ M`` is factored without an SVD of the wide ``B``:
   ``Mᵀ Q = Z R`` (``Z = orth(Mᵀ Q)``, ``R = Zᵀ Mᵀ Q``), so ``B = Rᵀ Zᵀ``; the SVD of the small
   square ``Rᵀ = Ũ Σ Ṽᵀ`` gives ``U = Q Ũ`` and ``V = Z Ṽ`` (Algorithm 5.1 with the SVD moved
   to a ``k × k`` matrix).

The tall sketches are orthonormalised by Cholesky QR (``G = YᵀY + δ I = L Lᵀ``,
``Q = Y L⁻ᵀ``; Fukaya et al. 2020): thin products and ``k × k`` factorizations, with no LAPACK
call on the tall matrix. A Householder QR's call cost as much as a product on CPUs, and far
more where a multithreaded OpenBLAS competes for busy cores (a 1024 × 16 QR took 111 ms
instead of 0.07 ms on a loaded 2-core machine; a 4096² rank-16 split 0.5–1.7 s instead of
60 ms). Between products only the span matters: three shifted passes (:func:`_span_basis`).
For ``Q`` and ``Z``, two more plain passes make them orthonormal to rounding, and columns
without a direction of their own (``M`` of lower rank than the sketch) are replaced by random
ones first (:func:`_orthonormal_basis`), so ``U`` and ``V`` are orthonormal whatever ``M``.

The randomized method never forms a rescaled copy of ``M``: the power of two ``2^k`` near
``max |M|`` is applied to the thin operands, ``(M / 2^k) X = (M (X 2^{-a})) 2^{-b}`` with
``a + b = k`` (exact: both are powers of two, split so that neither side leaves the
floating-point range), and NaN or Inf in ``M`` is detected by one reduction. On a large
matrix each elementwise pass over ``M`` costs several products with the thin sketch.

References: N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with randomness:
probabilistic algorithms for constructing approximate matrix decompositions", SIAM Review
53(2), 2011. T. Fukaya, R. Kannan, Y. Nakatsukasa, Y. Yamamoto, Y. Yanagisawa, "Shifted
Cholesky QR for computing the QR factorization of ill-conditioned matrices", SIAM J. Sci.
Comput. 42(1), 2020.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
from jax import lax

from tensorfact._checks import count_nonfinite, finite_part, is_traced, poison
from tensorfact._checks import (Precision, as_matrix, check_choice, check_key,
                                check_nonneg_int, check_positive_int, report_nonfinite)
from tensorfact._numerics import pow2_scale, resolve_precision
from tensorfact.decomposition._matrix_common import thin_svd
from tensorfact.tensors import LowRankMatrix

__all__ = ["svd"]

SVDMethod = Literal["exact", "randomized"]


def svd(m, rank: int, *, key=None, method: SVDMethod = "exact", oversample: int = 10,
        n_power_iter: int = 2, precision: Precision = "highest") -> LowRankMatrix:
    """Truncated SVD of a matrix: the best rank-``rank`` approximation ``U diag(s) Vᵀ``.

    Like every fit it runs on ``m / 2^k`` (``2^k`` near ``max |m|``, an exact division) and
    scales the singular values back, so ``svd(c·m) = c·svd(m)`` for data anywhere in the
    floating-point range, whatever the backend's SVD and QR do with extreme values. ``jax.grad``
    through the result is finite even where singular values repeat or vanish (zero rows or
    columns): the derivative's divisions by ``s_j² − s_i²`` and ``s_i`` are taken as zero
    there (elsewhere it is the exact derivative). The randomized method's orthonormalisation
    has no derivative at an exactly zero matrix.

    Args:
      m: a 2-D array (use ``jax.vmap`` for a batch of matrices).
      rank: number of singular triplets kept, ``1 ≤ rank ≤ min(m.shape)``.
      key: ``jax.random`` key, required for ``method="randomized"`` (a ``ValueError``
        without it); the default ``"exact"`` draws nothing.
      method: ``"exact"`` (a thin SVD, truncated) or ``"randomized"`` (Halko et al. 2011).
      oversample: extra sketch columns beyond ``rank`` (an int >= 0; randomized; the sketch
        is capped at ``min(m.shape)``).
      n_power_iter: power iterations (an int >= 0; randomized); 2 suits slowly decaying
        spectra such as neural-network weights.
      precision: XLA precision of the products: ``"highest"`` (the default) is true float32;
        ``None`` is JAX's default (TF32 or bfloat16 passes on recent GPUs and TPUs).

    Returns:
      A :class:`LowRankMatrix` with orthonormal ``u`` (m × rank), ``vtᵀ`` (n × rank) and
      nonincreasing ``s ≥ 0``.

    Example:
      >>> import jax, tensorfact as tfa
      >>> w = jax.random.normal(jax.random.key(0), (512, 256))
      >>> lr = tfa.svd(w, 32, method="randomized", key=jax.random.key(1))
      >>> lr.shape, lr.rank
      ((512, 256), 32)
      >>> exact = tfa.svd(w, 32)
      >>> bool(jax.numpy.allclose(exact.s, jax.numpy.linalg.svd(w, compute_uv=False)[:32]))
      True

    Raises:
      ValueError: if ``m`` is not 2-D or has a dimension of size zero; ``rank``,
        ``oversample`` or ``n_power_iter`` is not an int in range (bools and floats
        included); ``method`` or ``precision`` is unknown; ``key`` is missing or malformed for
        ``method="randomized"``; or (eager calls) ``m`` holds NaN or Inf.
    """
    m = as_matrix(m)
    rank = check_positive_int(rank, "rank")
    if rank > min(m.shape):
        raise ValueError(f"rank = {rank} is larger than min(m.shape) = {min(m.shape)} "
                         f"(shape {tuple(m.shape)}).")
    method = check_choice(method, SVDMethod, "method")
    oversample = check_nonneg_int(oversample, "oversample")
    n_power_iter = check_nonneg_int(n_power_iter, "n_power_iter")
    resolve_precision(precision)
    if method == "randomized":
        check_key(key, 'for method="randomized"')
    elif key is not None:
        check_key(key, 'only for method="randomized"')
        key = None
    result, n_nonfinite = _svd(m, key, rank=rank, method=method, oversample=oversample,
                               n_power_iter=n_power_iter, precision=precision)
    if method == "randomized" and not is_traced(n_nonfinite) and int(n_nonfinite):
        n_nonfinite = count_nonfinite(m)  # the program only flags; count for the message
    report_nonfinite(n_nonfinite, "m")
    return result


@functools.partial(jax.jit, static_argnames=("rank", "method", "oversample", "n_power_iter",
                                             "precision"))
def _svd(m, key, *, rank, method, oversample, n_power_iter, precision):
    """``(result, n)``: ``n`` counts the NaN/Inf entries of ``m`` (exact method) or is 1 where
    there is one (randomized), and the result is then NaN."""
    if method == "randomized":
        return _randomized(m, key, rank=rank, width=min(rank + oversample, min(m.shape)),
                           n_power_iter=n_power_iter, precision=resolve_precision(precision))
    m, n_nonfinite = finite_part(m)  # LAPACK's SVD does not return on Inf
    # On m / 2^k (exact): any backend's SVD sees entries of order one whatever the data's
    # magnitude; the singular values are scaled back.
    scale = lax.stop_gradient(pow2_scale(m))
    u, s, vt = thin_svd(m / scale)
    result = LowRankMatrix(u[:, :rank], s[:rank] * scale, vt[:rank])
    return poison(result, n_nonfinite), n_nonfinite


def _randomized(m, key, *, rank, width, n_power_iter, precision):
    """Halko et al.'s Algorithm 4.4 + 5.1 on ``m / 2^k`` (see the module docstring), with
    ``m`` read only by the ``2 n_power_iter + 2`` products with the thin sketch and two
    reductions."""
    # NaN or Inf anywhere makes the sum of m·0 NaN (one fused pass; max |m| may skip NaNs)
    bad = jnp.isnan(jnp.sum(m * 0)).astype(jnp.int32)
    # m / 2^k, 2^k ≤ max|m| < 2^(k+1), applied as 2^-a to the thin operand and 2^-b to the
    # product: exactly (m / 2^k) X, with X 2^-a and the product in range for any k
    peak = lax.stop_gradient(jnp.max(jnp.abs(m)))
    ok = jnp.isfinite(peak) & (peak > 0)
    _, exponent = jnp.frexp(jnp.where(ok, peak, 1))
    k = jnp.where(ok, exponent - 1, 0)
    a = k // 2
    pre, post = jnp.ldexp(jnp.ones((), m.dtype), -a), jnp.ldexp(jnp.ones((), m.dtype), a - k)

    def times(x):       # (m / 2^k) X
        return jnp.matmul(m, x * pre, precision=precision) * post

    def transpose_times(q):       # (m / 2^k)ᵀ Q
        return _transpose_times(m, q * pre, precision) * post

    omega = jax.random.normal(key, (m.shape[1], width), m.dtype)
    y = times(omega)
    for _ in range(n_power_iter):
        z = transpose_times(_span_basis(y, precision))
        y = times(_span_basis(z, precision))
    key_q, key_z = jax.random.split(jax.random.fold_in(key, 1))
    q = _orthonormal_basis(y, key_q, precision)
    # M ≈ Q Qᵀ M = Q (MᵀQ)ᵀ = Q Rᵀ Zᵀ with MᵀQ = Z R: the SVD of the small square Rᵀ gives the
    # factors, instead of an SVD of the wide B = QᵀM (a slow, bidiagonalising call on GPUs).
    p = transpose_times(q)
    z = _orthonormal_basis(p, key_z, precision)
    r = jnp.matmul(z.T, p, precision=precision)      # Z Zᵀ P = P: Z spans P
    # LAPACK's SVD does not return on NaN or Inf: give it zeros (the result is NaN anyway)
    u_small, s, vt_small = thin_svd(jnp.where(bad > 0, 0, r.T))
    u = jnp.matmul(q, u_small[:, :rank], precision=precision)
    vt = jnp.matmul(vt_small[:rank], z.T, precision=precision)
    scale = jnp.ldexp(jnp.ones((), m.dtype), k)
    return poison(LowRankMatrix(u, s[:rank] * scale, vt), bad), bad


def _span_basis(y, precision):
    """A well-conditioned basis of the span of the tall ``y`` (n × k) by shifted Cholesky QR
    (Fukaya et al. 2020), no LAPACK call on the tall matrix: ``Y ← Y L⁻ᵀ`` with
    ``L Lᵀ = YᵀY + δ I``, three times. ``δ = (n + k) ε tr(YᵀY)`` bounds the rounding of the
    Gram matrix and of its Cholesky factorization, so the factorization never fails (a tiny
    floor keeps a zero ``y`` finite), but one pass leaves the directions of ``y`` weaker than
    ``√δ`` (about 1e-2 of its norm) shrunk in proportion, and the next product with ``M`` then
    loses them to rounding: a singular value 1e-4 below the largest came out 6× too small.
    Each pass multiplies such a direction by about ``1 / √δ``; after three, the power
    iterations resolve the singular values that Householder QR does (to 1e-6 of the largest in
    float32). Each pass is two thin products and ``k × k`` factorizations."""
    n, k = y.shape
    eps = jnp.finfo(y.dtype).eps
    eye = jnp.eye(k, dtype=y.dtype)
    for _ in range(3):
        # (true float32 whatever ``precision``: a TF32 Gram matrix could break the Cholesky)
        g = jnp.matmul(y.T, y, precision=lax.Precision.HIGHEST)
        shift = (n + k) * eps * jnp.trace(g) + jnp.finfo(y.dtype).tiny
        chol = jnp.linalg.cholesky(g + shift * eye)
        inverse = lax.linalg.triangular_solve(chol, eye, left_side=True, lower=True)
        y = jnp.matmul(y, inverse.T, precision=precision)
    return y


def _orthonormal_basis(y, key, precision):
    """Orthonormal columns ``Q`` (n × k) spanning the tall ``y`` without a LAPACK call on it:
    :func:`_span_basis`, then two plain Cholesky QR passes, which make a well-conditioned basis
    orthonormal to rounding (Fukaya et al.'s shifted CholeskyQR3). Where ``y`` has fewer than
    ``k`` independent columns (a zero matrix, an exactly low-rank one such as all ones), the
    columns left without a direction of their own (squared norm below 1/2 after the shifted
    passes: Cholesky QR orthogonalises in column order) are replaced by random ones first, so
    that ``Q`` is orthonormal whatever ``y``, as a Householder QR's would be."""
    n, k = y.shape
    q = _span_basis(y, precision)
    fill = jax.random.normal(key, (n, k), y.dtype) / jnp.sqrt(jnp.asarray(n, y.dtype))
    q = jnp.where(jnp.sum(q * q, axis=0) < 0.5, fill, q)
    eye = jnp.eye(k, dtype=y.dtype)
    for _ in range(2):
        g = jnp.matmul(q.T, q, precision=lax.Precision.HIGHEST)
        chol = jnp.linalg.cholesky(g + jnp.finfo(y.dtype).tiny * eye)
        inverse = lax.linalg.triangular_solve(chol, eye, left_side=True, lower=True)
        q = jnp.matmul(q, inverse.T, precision=precision)
    return q


def _transpose_times(m, q, precision):
    """``Mᵀ Q`` for a tall-skinny ``Q``, computed as ``(Qᵀ M)ᵀ``. XLA:CPU otherwise folds the
    transpose into the dot and picks a kernel about 4× slower (2.3 ms against 0.6 ms at
    1024² × 26); the barrier keeps the fast product and a cheap transpose of the small result.
    On GPUs both forms are one cuBLAS call."""
    return lax.optimization_barrier(jnp.matmul(q.T, m, precision=precision)).T
