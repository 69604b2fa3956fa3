"""The t-SVD and what is read off it: the tubal rank, the singular-tube norms and the effective
tubal rank.

Under the t-product a third-order tensor ``X`` of shape ``(n1, n2, n3)`` behaves like a matrix
whose entries are tubes. After a transform ``L`` along the tubes (the FFT by default) every
frontal slice ``L(X)_k`` is an ordinary ``n1 × n2`` matrix, and the t-SVD (Kilmer & Martin
2011) is the SVD of each of them, ``L(X)_k = Û_k Σ_k V̂_kᴴ``, transformed back.

References:
  M. E. Kilmer and C. D. Martin, "Factorization strategies for third-order tensors", Linear
  Algebra and its Applications 435(3), 2011.
  M. E. Kilmer, K. Braman, N. Hao and R. C. Hoover, "Third-order tensors as operators on
  matrices: a theoretical and computational framework with applications in imaging", SIAM J.
  Matrix Analysis and Applications 34(1), 2013.
  E. Kernfeld, M. Kilmer and S. Aeron, "Tensor–tensor products with invertible linear
  transforms", Linear Algebra and its Applications 485, 2015.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from tensorfact import _tproduct
from tensorfact._checks import finite_part, poison
from tensorfact._checks import check_nonneg_number, is_traced, report_nonfinite
from tensorfact._numerics import pow2_scale
from tensorfact.decomposition._common import concrete_or_traced
from tensorfact.decomposition._gradient_fit import (DEFAULT_RANK_TOL, check_rank_tol,
                                                    product_spectrum, rank_from_norms)
from tensorfact.tensors import TSVDTensor, TubalFactors
from tensorfact.tensors._tubal import factor_hats
from tensorfact.tubal._common import (check_rank, check_tensor, scaled_tsvd, slice_sigma,
                                      truncated_tsvd)

__all__ = ["svd", "rank", "singular_tube_norms", "effective_rank"]


def svd(x, rank=None, *, transform: _tproduct.TransformLike = "fft",
        precision="highest") -> TSVDTensor:
    """The t-SVD ``X = U * S * Vᵀ`` of a third-order tensor (Kilmer & Martin 2011).

    With ``X̂_k = L(X)_k`` the frontal slices after the transform ``L`` along the tubes, each
    slice is factorised by a thin SVD, ``X̂_k = Û_k Σ_k V̂_kᴴ``, and the factors are transformed
    back: ``U`` (``n1 × r × n3``) and ``V`` (``n2 × r × n3``) are t-orthogonal (``Uᵀ * U = I``)
    and ``S`` is f-diagonal. For the FFT only the ``n3 // 2 + 1`` non-redundant frequencies are
    factorised; the real slices among them in real arithmetic, so that ``U``, ``S``, ``V`` are
    real. The SVDs run on ``x / 2^k`` (``2^k`` near ``max |x|``, exact) and ``S`` is scaled
    back, so the result is scale-equivariant for data of any magnitude.

    With ``rank=r`` every slice keeps its ``r`` largest singular values: the result is the best
    approximation of tubal rank ``r`` in the Frobenius norm (Kilmer & Martin 2011, Thm 4.3; for
    the FFT, the DCT or an orthogonal matrix), with error
    ``‖X − X_r‖²_F = Σ_k w_k Σ_{i>r} σ_{k,i}²`` (``w_k`` the Parseval weights of
    :func:`frequency_weights`). For a non-orthogonal matrix transform the truncation is still
    slice-wise but optimal only in the transformed domain.

    Args:
      x: ``(n1, n2, n3)`` real tensor (``jax.vmap`` for a batch).
      rank: tubal rank ``r`` to keep, ``1 ≤ r ≤ min(n1, n2)``; ``None`` keeps ``min(n1, n2)``
        (the full, exact t-SVD).
      transform: ``"fft"`` (the t-product), ``"dct"`` or an invertible ``n3 × n3`` matrix
        (Kernfeld, Kilmer & Aeron 2015).
      precision: XLA precision of the product with a transform matrix (the FFT and DCT do not
        use it); ``"highest"`` (the default) is full float32, ``None`` JAX's default.

    Returns:
      A :class:`~tensorfact.TSVDTensor` ``(u, s, v)`` with ``s`` the diagonal tubes of ``S``
      (its transform ``L(s)[:, k]`` holds the singular values of slice ``k``, nonincreasing).

    Example:
      >>> import jax, tensorfact as tfa
      >>> k1, k2 = jax.random.split(jax.random.key(0))
      >>> a, b = jax.random.normal(k1, (20, 3, 8)), jax.random.normal(k2, (3, 15, 8))
      >>> x = tfa.tubal.product(a, b)
      >>> t = tfa.tubal.svd(x, rank=3)          # x has tubal rank 3
      >>> t.shape, t.rank
      ((20, 15, 8), 3)
      >>> bool(tfa.relative_error(x, t.to_dense()) < 1e-5)
      True

    Raises:
      ValueError: if ``x`` is not one third-order tensor, ``rank`` is not a positive int or
        exceeds ``min(n1, n2)``, ``transform`` is unknown or a singular/wrong-shape matrix, or
        (eager calls) ``x`` holds NaN or Inf.
    """
    x = check_tensor(x)
    n1, n2, n3 = x.shape
    t = _tproduct.resolve_transform(transform, n3)
    rank = check_rank(rank, n1, n2, required=False)
    result, n_nonfinite = _svd(x, t.matrix, rank=rank, kind=t.kind, precision=precision)
    report_nonfinite(n_nonfinite, "x")
    return result


@functools.partial(jax.jit, static_argnames=("rank", "kind", "precision"))
def _svd(x, matrix, *, rank, kind, precision):
    x, n_nonfinite = finite_part(x)  # LAPACK's SVD does not return on Inf
    scale = jax.lax.stop_gradient(pow2_scale(x))
    t = truncated_tsvd(x / scale, _tproduct.Transform(kind, matrix), rank, precision)
    return poison(scaled_tsvd(t, scale), n_nonfinite), n_nonfinite


def rank(x, tol=None, *, transform: _tproduct.TransformLike = "fft"):
    """The tubal rank of ``x``: the number of nonzero singular tubes of its t-SVD, i.e. the
    largest rank of a transformed frontal slice, ``max_k rank(L(x)_k)`` (Kilmer & Martin 2011).

    A singular value counts as nonzero when it exceeds ``tol``; the default is NumPy's
    ``matrix_rank`` rule, ``σ_max · max(n1, n2) · eps`` with ``σ_max`` the largest singular value
    over all slices (the tensor spectral norm) and ``eps`` the machine epsilon of ``x``'s dtype.

    Args:
      x: ``(n1, n2, n3)`` real tensor (``jax.vmap`` for a batch).
      tol: absolute threshold (``≥ 0``) on the singular values, or ``None`` for the default.
      transform: ``"fft"``, ``"dct"`` or an invertible ``n3 × n3`` matrix.

    Returns:
      A Python int for a concrete ``x``; an int32 scalar array under ``jit``/``vmap``.

    Example:
      >>> import jax, tensorfact as tfa
      >>> k1, k2 = jax.random.split(jax.random.key(0))
      >>> a, b = jax.random.normal(k1, (10, 2, 5)), jax.random.normal(k2, (2, 9, 5))
      >>> tfa.tubal.rank(tfa.tubal.product(a, b))
      2

    Raises:
      ValueError: if ``x`` is not one third-order tensor, ``tol`` is negative or infinite, or
        ``transform`` is bad.
    """
    x = check_tensor(x)
    t = _tproduct.resolve_transform(transform, x.shape[-1])
    if tol is not None:
        check_nonneg_number(tol, "tol")
        tol = concrete_or_traced(tol)
    r = _rank(x, t.matrix, tol, kind=t.kind)
    return r if is_traced(r) else int(r)


@functools.partial(jax.jit, static_argnames=("kind",))
def _rank(x, matrix, tol, *, kind):
    n1, n2 = x.shape[:2]
    s, _, scale = slice_sigma(x, _tproduct.Transform(kind, matrix))
    if tol is None:
        tol = jnp.max(s) * max(n1, n2) * jnp.finfo(x.dtype).eps
    else:
        tol = jnp.asarray(tol, s.dtype) / scale
    return jnp.max(jnp.sum(s > tol, axis=-1, dtype=jnp.int32))


def singular_tube_norms(x, *, transform: _tproduct.TransformLike = "fft"):
    """Frobenius norms ``‖s_j‖_F`` of the singular tubes of a third-order tensor, decreasing.

    ``x = U * S * Vᵀ`` (t-SVD, Kilmer & Martin 2011) has singular tubes ``s_j = S[j, j, :]``
    with ``L(s_j)_k = σ_j(X̂_k)``, so ``‖s_j‖²_F = Σ_k w_k σ_j(X̂_k)²`` (``w_k`` the Parseval
    weights of :func:`frequency_weights`) and ``Σ_j ‖s_j‖²_F = ‖x‖²_F``.

    Args:
      x: a dense ``(n1, n2, n3)`` tensor, or :class:`~tensorfact.TubalFactors` (computed from
        the factors without densifying: a QR of each transformed factor slice and an
        ``R × R`` SVD).
      transform: for a dense ``x``: ``"fft"``, ``"dct"`` or an invertible matrix (factors
        carry their own).

    Returns:
      ``(min(n1, n2),)`` norms (``min(n1, n2, R)`` for factors).

    Example:
      >>> import jax, tensorfact as tfa
      >>> k1, k2 = jax.random.split(jax.random.key(0))
      >>> a, b = jax.random.normal(k1, (6, 2, 4)), jax.random.normal(k2, (2, 5, 4))
      >>> norms = tfa.tubal.singular_tube_norms(tfa.tubal.product(a, b))
      >>> norms.shape, int((norms > 1e-4 * norms[0]).sum())                  # two nonzero
      ((5,), 2)
    """
    if isinstance(x, TubalFactors):
        if x.left.ndim != 3:
            raise ValueError(f"x must hold one tensor's factors, got left of shape "
                             f"{tuple(x.left.shape)}; map over a batch with jax.vmap.")
        return _factor_tube_norms(x)
    x = check_tensor(x)
    t = _tproduct.resolve_transform(transform, x.shape[-1])
    return _tube_norms(x, t.matrix, kind=t.kind)


@functools.partial(jax.jit, static_argnames=("kind",))
def _tube_norms(x, matrix, *, kind):
    s, w, scale = slice_sigma(x, _tproduct.Transform(kind, matrix))
    return (jnp.sqrt(jnp.sum(w[:, None] * jnp.square(s), axis=0)) * scale).astype(x.dtype)


@jax.jit
def _factor_tube_norms(f: TubalFactors):
    t = f.transform
    factors, exponent = _tproduct.unit_scaled(f.left, *(() if f.symmetric else (f.right,)))
    la, lb = factor_hats(factors[0], factors[-1] if not f.symmetric else None, t)
    w = _tproduct.frequency_weights(f.shape[2], t, jnp.real(la).dtype)
    norms = product_spectrum(la, lb, w, f.symmetric).astype(f.left.dtype)
    return jnp.ldexp(norms, 2 * exponent if f.symmetric else exponent)


def effective_rank(x, tol: float = DEFAULT_RANK_TOL, *,
                   transform: _tproduct.TransformLike = "fft"):
    """The effective tubal rank: the number of singular tubes with ``‖s_j‖_F > tol · ‖s_1‖_F``
    (:func:`singular_tube_norms`), the tubal analogue of counting singular values above a
    relative threshold.

    ``tol → 0`` gives the tubal rank of Kilmer et al. (2013) (the number of nonzero singular
    tubes); a tolerance ignores the small tubes that round-off or a small initialisation leave
    (Karnik, Veselovska, Iwen & Krahmer, ICML 2025, track it along gradient descent).

    Args:
      x: a dense ``(n1, n2, n3)`` tensor or :class:`~tensorfact.TubalFactors`.
      tol: ``τ ∈ [0, 1)``.
      transform: for a dense ``x`` (see :func:`singular_tube_norms`).

    Returns:
      An int32 scalar array; 0 for the zero tensor.

    Example:
      >>> import jax, tensorfact as tfa
      >>> k1, k2 = jax.random.split(jax.random.key(0))
      >>> a, b = jax.random.normal(k1, (6, 2, 4)), jax.random.normal(k2, (2, 5, 4))
      >>> int(tfa.tubal.effective_rank(tfa.tubal.product(a, b)))
      2
    """
    tol = check_rank_tol(tol, "tol")
    return rank_from_norms(singular_tube_norms(x, transform=transform), tol)
