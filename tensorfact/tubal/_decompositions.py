"""Tubal decompositions: the t-SVD, tubal rank, tensor nuclear norm, tensor robust PCA and
low-tubal-rank completion.

Under the t-product (:mod:`tensorfact.tproduct`) a third-order tensor ``X`` of shape
``(n1, n2, n3)`` behaves like a matrix whose entries are tubes. After a transform ``L`` along the
tubes (the FFT by default) every frontal slice ``L(X)_k`` is an ordinary ``n1 × n2`` matrix, and
the tubal algebra works slice by slice:

* **t-SVD** (Kilmer & Martin 2011): ``X = U * S * Vᵀ`` with ``L(X)_k = Û_k Σ_k V̂_kᴴ`` the SVD of
  each transformed slice. Keeping the ``r`` largest singular values of every slice gives the best
  approximation of tubal rank ``r`` in the Frobenius norm (Kilmer & Martin, Thm 4.3).
* **Tubal rank**: the number of nonzero singular tubes, ``max_k rank(L(X)_k)``.
* **Tensor nuclear norm** (Lu et al. 2019): ``‖X‖_TNN = (1/n3) Σ_{k=1}^{n3} ‖X̂_k‖_*`` over all
  ``n3`` frequencies, and its proximal operator, slice-wise singular value thresholding.
* **TRPCA** (Lu et al. 2019): ``min ‖L‖_TNN + λ‖S‖₁ s.t. L + S = X`` by ADMM.
* **Completion**: TNN minimisation under the observation constraint (Zhang & Aeron 2017; Lu et
  al. 2019), or alternating least squares on the factors of ``X = A * Bᵀ`` at a fixed tubal rank
  (Liu, Aeron, Aggarwal & Wang 2016).

Real in, real out. With the FFT, only the ``n3 // 2 + 1`` frequencies of the real FFT are
factorised (the others are their complex conjugates). The zero frequency (and the Nyquist one
for even ``n3``) of a real tensor is a real slice; those slices are factorised in real
arithmetic, because an SVD computed in complex arithmetic may give them factors with arbitrary
complex phases, which the inverse real FFT would silently drop (``U * S * Vᵀ ≠ X``).

References:
  M. E. Kilmer and C. D. Martin, "Factorization strategies for third-order tensors", Linear
  Algebra and its Applications 435(3), 2011.
  E. Kernfeld, M. Kilmer and S. Aeron, "Tensor–tensor products with invertible linear
  transforms", Linear Algebra and its Applications 485, 2015.
  C. Lu, J. Feng, Y. Chen, W. Liu, Z. Lin and S. Yan, "Tensor robust principal component analysis
  with a new tensor nuclear norm", IEEE TPAMI 42(4), 2019.
  C. Lu, X. Peng and Y. Wei, "Low-rank tensor completion with a new tensor nuclear norm induced
  by invertible linear transforms", CVPR 2019.
  Z. Zhang and S. Aeron, "Exact tensor completion using t-SVD", IEEE Transactions on Signal
  Processing 65(6), 2017.
  X.-Y. Liu, S. Aeron, V. Aggarwal and X. Wang, "Low-tubal-rank tensor completion using
  alternating minimization", arXiv:1610.01690, 2016 (IEEE Trans. Information Theory 2020).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tensorfact import _tproduct, algebra
from tensorfact._checks import (as_float_array, check_choice, check_mask, check_nonneg_number,
                                check_positive_int, count_nonfinite, is_traced,
                                report_nonfinite, check_key)
from tensorfact.decomposition._common import (check_iteration_args, concrete_or_traced,
                                              solve_normal_equations)
from tensorfact.decomposition._loop import FitInfo, is_fixed_length, iterate, relative_error
from tensorfact.tensors import TSVDTensor

__all__ = ["tsvd", "tubal_rank", "tnn", "prox_tnn", "trpca", "tubal_complete"]

_METHODS = ("tnn", "factor")
_INITS = ("svd", "random")

#: ADMM (TRPCA and TNN completion): growth factor of the penalty ``μ`` (Lu et al.'s value; a
#: faster growth, e.g. the matrix RPCA's 1.5, freezes the completion iteration at a feasible
#: point before it reaches the minimiser) and its cap relative to the initial ``μ``.
ADMM_RHO = 1.1
ADMM_MU_CAP = 1e7
#: Factor ALS ridge used when ``l2 == 0``, relative to the mean squared row norm of the design.
FACTOR_DEFAULT_RIDGE = 1e-6


# -------------------------------------------------------------------------------------------
# argument checks and slice-wise linear algebra in the transform domain
# -------------------------------------------------------------------------------------------

def _check_tensor(x, name: str = "x", *, batch: bool = True) -> jax.Array:
    x = as_float_array(x, name)
    if x.ndim < 3 or (not batch and x.ndim != 3):
        extra = ", optionally with leading batch axes," if batch else " (use jax.vmap for a batch)"
        raise ValueError(f"{name} must be a third-order tensor (n1, n2, n3){extra} got shape "
                         f"{tuple(x.shape)}.")
    return x


def _orthogonal_transform(transform, n3: int) -> _tproduct.Transform:
    """Resolves a transform for the tensor nuclear norm, which needs an orthogonal one (up to the
    FFT's known scale): "fft", "dct", or a matrix with ``M Mᵀ = I`` (checked when concrete)."""
    t = _tproduct.resolve_transform(transform, n3)
    if t.kind == "matrix" and not is_traced(t.matrix):
        m = np.asarray(t.matrix, np.float64)
        dev = float(np.max(np.abs(m @ m.T - np.eye(n3))))
        if dev > 1e-4:
            raise ValueError(f"transform matrix must be orthogonal (M Mᵀ = I) for the tensor "
                             f"nuclear norm and its prox, got max |M Mᵀ − I| = {dev:.3g}; use "
                             f"'fft', 'dct' or an orthogonal matrix.")
    return t


def _real_slices(t: _tproduct.Transform, n3: int):
    """``(first, last)``: for the FFT, the zero frequency is real, and so is the last stored one
    when ``n3`` is even; ``None`` means every slice is real (DCT, real matrix)."""
    if t.kind != "fft":
        return None
    return True, n3 % 2 == 0 and n3 > 1


def _slicewise(fn, hat, t: _tproduct.Transform, n3: int):
    """Applies a slice-batched factorisation ``fn`` (returning a tuple of arrays whose slice
    axis is at ``hat.ndim - 3``) to the transformed slices, in real arithmetic for the real
    ones (see the module docstring) and complex arithmetic for the others."""
    if _real_slices(t, n3) is None:
        return fn(hat)
    k, axis = hat.shape[-3], hat.ndim - 3
    last_real = _real_slices(t, n3)[1]
    stop = k - 1 if last_real else k
    parts = [fn(jnp.real(hat[..., :1, :, :]))]
    if stop > 1:
        parts.append(fn(hat[..., 1:stop, :, :]))
    if last_real:
        parts.append(fn(jnp.real(hat[..., k - 1:, :, :])))
    out = []
    for pieces in zip(*parts):
        dtype = jnp.result_type(*pieces)
        out.append(jnp.concatenate([p.astype(dtype) for p in pieces], axis=axis))
    return tuple(out)


def _svd_hat(hat, t, n3):
    """Thin SVD of every transformed slice: ``(Û, σ, V̂ᴴ)``, σ real and nonincreasing."""
    return _slicewise(functools.partial(jnp.linalg.svd, full_matrices=False), hat, t, n3)


def _svt_hat(hat, tau, t, n3, precision):
    """Singular value soft-thresholding of every transformed slice: ``Û max(σ − τ, 0) V̂ᴴ``."""
    u, s, vh = _svd_hat(hat, t, n3)
    shrunk = jnp.maximum(s - tau, 0).astype(s.dtype)
    return _tproduct.facewise(u * shrunk[..., None, :], vh, precision=precision)


def _tsvd_from_hat(uh, sigma, vh, t, n3) -> TSVDTensor:
    """A :class:`TSVDTensor` from transform-domain factors ``uh (..., k, n1, r)``, singular values
    ``sigma (..., k, r)`` and ``vh (..., k, n2, r)``."""
    u = _tproduct.from_transform_domain(uh, n3, t)
    v = _tproduct.from_transform_domain(vh, n3, t)
    s = _tproduct.from_transform_domain(sigma[..., None], n3, t)[..., 0, :]
    dtype = u.dtype
    return TSVDTensor(u, s.astype(dtype), v.astype(dtype), t)


def _slice_sigma(x, t, precision="highest"):
    """Singular values of the transformed slices, ``(..., k, min(n1, n2))``."""
    hat = _tproduct.to_transform_domain(x, t, precision=precision)
    return jnp.linalg.svd(hat, compute_uv=False)


# -------------------------------------------------------------------------------------------
# t-SVD, tubal rank, TNN and its prox
# -------------------------------------------------------------------------------------------

def tsvd(x, rank=None, *, transform="fft", precision="highest") -> TSVDTensor:
    """The t-SVD ``X = U * S * Vᵀ`` of a third-order tensor (Kilmer & Martin 2011).

    With ``X̂_k = L(X)_k`` the frontal slices after the transform ``L`` along the tubes, each
    slice is factorised by a thin SVD, ``X̂_k = Û_k Σ_k V̂_kᴴ``, and the factors are transformed
    back: ``U`` (``n1 × r × n3``) and ``V`` (``n2 × r × n3``) are t-orthogonal (``Uᵀ * U = I``)
    and ``S`` is f-diagonal. For the FFT only the ``n3 // 2 + 1`` non-redundant frequencies are
    factorised; the real slices among them in real arithmetic, so that ``U``, ``S``, ``V`` are
    real.

    With ``rank=r`` every slice keeps its ``r`` largest singular values: the result is the best
    approximation of tubal rank ``r`` in the Frobenius norm (Kilmer & Martin 2011, Thm 4.3; for
    the FFT, the DCT or an orthogonal matrix), with error
    ``‖X − X_r‖²_F = Σ_k w_k Σ_{i>r} σ_{k,i}²`` (``w_k`` the Parseval weights of
    :func:`tensorfact._tproduct.frequency_weights`). For a non-orthogonal matrix transform the
    truncation is still slice-wise but optimal only in the transformed domain.

    Args:
      x: ``(..., n1, n2, n3)`` real tensor; leading axes are a batch.
      rank: tubal rank ``r`` to keep, ``1 ≤ r ≤ min(n1, n2)``; ``None`` keeps ``min(n1, n2)``
        (the full, exact t-SVD).
      transform: ``"fft"`` (the t-product), ``"dct"`` or an invertible ``n3 × n3`` matrix
        (Kernfeld, Kilmer & Aeron 2015).
      precision: XLA precision of the product with a transform matrix (the FFT and DCT do not
        use it); ``"highest"`` (the default) is full float32, ``None`` JAX's default.

    Returns:
      A :class:`TSVDTensor` ``(u, s, v)`` with ``s`` the diagonal tubes of ``S`` (its transform
      ``L(s)[:, k]`` holds the singular values of slice ``k``, nonincreasing).

    Example:
      >>> import jax, tensorfact as tfa
      >>> k1, k2 = jax.random.split(jax.random.key(0))
      >>> x = tfa.tubal.product(jax.random.normal(k1, (20, 3, 8)), jax.random.normal(k2, (3, 15, 8)))
      >>> t = tfa.tubal.svd(x, rank=3)          # x has tubal rank 3
      >>> t.shape, t.rank
      ((20, 15, 8), 3)
      >>> bool(tfa.relative_error(x, t.to_dense()) < 1e-5)
      True

    Raises:
      ValueError: if ``x`` has fewer than 3 axes, ``rank`` is not a positive int or exceeds
        ``min(n1, n2)``, ``transform`` is unknown or a singular/wrong-shape matrix, or (eager
        calls) ``x`` holds NaN or Inf.
    """
    x = _check_tensor(x)
    n1, n2, n3 = x.shape[-3:]
    t = _tproduct.resolve_transform(transform, n3)
    rank = _check_rank(rank, n1, n2, required=False)
    result, n_nonfinite = _tsvd_fit(x, t.matrix, rank=rank, kind=t.kind, precision=precision)
    report_nonfinite(n_nonfinite, "x")
    return result


def _check_rank(rank, n1, n2, *, required, method=None):
    if rank is None:
        if required:
            raise ValueError(f"rank is required for method={method!r}: pass the tubal rank "
                             f"(an int in [1, {min(n1, n2)}]).")
        return min(n1, n2)
    rank = check_positive_int(rank, "rank")
    if rank > min(n1, n2):
        raise ValueError(f"rank must be at most min(n1, n2) = {min(n1, n2)} for a tensor with "
                         f"n1 = {n1}, n2 = {n2}, got {rank}.")
    return rank


@functools.partial(jax.jit, static_argnames=("rank", "kind", "precision"))
def _tsvd_fit(x, matrix, *, rank, kind, precision):
    return _tsvd_of(x, _tproduct.Transform(kind, matrix), rank, precision), count_nonfinite(x)


def _tsvd_of(x, t, rank, precision) -> TSVDTensor:
    """The t-SVD of ``x`` truncated to ``rank`` tubes (traceable; no argument checks)."""
    n3 = x.shape[-1]
    hat = _tproduct.to_transform_domain(x, t, precision=precision)
    u, s, vh = _svd_hat(hat, t, n3)
    u, s, vh = u[..., :rank], s[..., :rank], vh[..., :rank, :]
    return _tsvd_from_hat(u, s, jnp.conj(jnp.swapaxes(vh, -1, -2)), t, n3)


def tubal_rank(x, tol=None, *, transform="fft"):
    """The tubal rank of ``x``: the number of nonzero singular tubes of its t-SVD, i.e. the
    largest rank of a transformed frontal slice, ``max_k rank(L(x)_k)`` (Kilmer & Martin 2011).

    A singular value counts as nonzero when it exceeds ``tol``; the default is NumPy's
    ``matrix_rank`` rule, ``σ_max · max(n1, n2) · eps`` with ``σ_max`` the largest singular value
    over all slices (the tensor spectral norm) and ``eps`` the machine epsilon of ``x``'s dtype.

    Args:
      x: ``(..., n1, n2, n3)`` real tensor; leading axes are a batch.
      tol: absolute threshold (``≥ 0``) on the singular values, or ``None`` for the default.
      transform: ``"fft"``, ``"dct"`` or an invertible ``n3 × n3`` matrix.

    Returns:
      A Python int for a concrete unbatched ``x``; an int32 array (of the batch shape) for a
      batch or under ``jit``/``vmap``.

    Example:
      >>> import jax, tensorfact as tfa
      >>> k1, k2 = jax.random.split(jax.random.key(0))
      >>> x = tfa.tubal.product(jax.random.normal(k1, (10, 2, 5)), jax.random.normal(k2, (2, 9, 5)))
      >>> tfa.tubal.rank(x)
      2

    Raises:
      ValueError: if ``x`` has fewer than 3 axes, ``tol`` is negative or ``transform`` is bad.
    """
    x = _check_tensor(x)
    t = _tproduct.resolve_transform(transform, x.shape[-1])
    if tol is not None:
        check_nonneg_number(tol, "tol")
        tol = concrete_or_traced(tol)
    r = _tubal_rank_fit(x, t.matrix, tol, kind=t.kind)
    return r if (is_traced(r) or r.ndim) else int(r)


@functools.partial(jax.jit, static_argnames=("kind",))
def _tubal_rank_fit(x, matrix, tol, *, kind):
    n1, n2 = x.shape[-3:-1]
    s = _slice_sigma(x, _tproduct.Transform(kind, matrix))
    if tol is None:
        tol = jnp.max(s, axis=(-2, -1)) * max(n1, n2) * jnp.finfo(x.dtype).eps
    tol = jnp.asarray(tol, s.dtype)[..., None, None]
    return jnp.max(jnp.sum(s > tol, axis=-1, dtype=jnp.int32), axis=-1)


def tnn(x, *, transform="fft"):
    """The tensor nuclear norm ``‖X‖_TNN = (1/n3) Σ_{k=1}^{n3} ‖X̂_k‖_*`` (Lu et al. 2019), the
    mean over all ``n3`` frequencies of the nuclear norms of the transformed slices (conjugate
    twins of the real FFT counted twice, through :func:`tensorfact._tproduct.frequency_weights`).

    It is the convex envelope of the tubal average rank on the unit ball of the tensor spectral
    norm, its dual norm. Under the DCT or an orthogonal matrix it is ``Σ_k ‖L(X)_k‖_*`` (Lu, Peng
    & Wei, CVPR 2019, with ``L Lᵀ = I``). Differentiable where the slices have distinct nonzero
    singular values: the gradient is ``U * Vᵀ`` from the t-SVD.

    Args:
      x: ``(..., n1, n2, n3)`` real tensor; leading axes are a batch.
      transform: ``"fft"``, ``"dct"`` or an orthogonal ``n3 × n3`` matrix.

    Returns:
      A scalar (an array of the batch shape for a batch).

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> float(tfa.tubal.tnn(tfa.tubal.identity(3, 4)))     # every slice of I is the 3 × 3 identity
      3.0

    Raises:
      ValueError: if ``x`` has fewer than 3 axes or the transform is not orthogonal.
    """
    x = _check_tensor(x)
    t = _orthogonal_transform(transform, x.shape[-1])
    return _tnn_fit(x, t.matrix, kind=t.kind)


@functools.partial(jax.jit, static_argnames=("kind",))
def _tnn_fit(x, matrix, *, kind):
    t = _tproduct.Transform(kind, matrix)
    s = _slice_sigma(x, t)
    w = _tproduct.frequency_weights(x.shape[-1], t, s.dtype)
    return jnp.sum(w * jnp.sum(s, axis=-1), axis=-1).astype(x.dtype)


def prox_tnn(x, tau, *, transform="fft", precision="highest"):
    """The proximal operator of ``τ‖·‖_TNN``: ``argmin_Z τ‖Z‖_TNN + ½‖Z − X‖²_F``.

    It is tubal singular value thresholding (Lu et al. 2019, Thm 4.2): with the SVD of every
    transformed slice ``X̂_k = Û_k Σ_k V̂_kᴴ``, ``Ẑ_k = Û_k max(Σ_k − τ, 0) V̂_kᴴ`` (the threshold
    is ``τ`` itself, because both the TNN and the squared Frobenius norm carry the same
    ``1/n3`` in the Fourier domain).

    Args:
      x: ``(..., n1, n2, n3)`` real tensor; leading axes are a batch.
      tau: threshold ``τ ≥ 0`` (may be traced).
      transform: ``"fft"``, ``"dct"`` or an orthogonal ``n3 × n3`` matrix.
      precision: XLA precision of the slice products; ``"highest"`` (the default) is full float32,
        ``None`` JAX's default.

    Returns:
      The real tensor ``Z`` of ``x``'s shape.

    Example:
      >>> import jax, tensorfact as tfa
      >>> x = jax.random.normal(jax.random.key(0), (6, 5, 4))
      >>> z = tfa.tubal.prox(x, 1.0)
      >>> bool(tfa.tubal.tnn(z) < tfa.tubal.tnn(x))
      True

    Raises:
      ValueError: if ``x`` has fewer than 3 axes, ``tau`` is negative or not a scalar, or the
        transform is not orthogonal.
    """
    x = _check_tensor(x)
    n3 = x.shape[-1]
    t = _orthogonal_transform(transform, n3)
    check_nonneg_number(tau, "tau")
    return _prox_fit(x, t.matrix, concrete_or_traced(tau), kind=t.kind, precision=precision)


@functools.partial(jax.jit, static_argnames=("kind", "precision"))
def _prox_fit(x, matrix, tau, *, kind, precision):
    return _prox(x, jnp.asarray(tau, x.dtype), _tproduct.Transform(kind, matrix),
                 precision).astype(x.dtype)


def _prox(x, tau, t, precision):
    n3 = x.shape[-1]
    hat = _tproduct.to_transform_domain(x, t, precision=precision)
    return _tproduct.from_transform_domain(_svt_hat(hat, tau, t, n3, precision), n3, t)


# -------------------------------------------------------------------------------------------
# tensor robust PCA
# -------------------------------------------------------------------------------------------

def _check_mu(mu):
    if mu is None:
        return None
    if not is_traced(mu) and (np.ndim(mu) != 0 or not float(mu) > 0):
        raise ValueError(f"mu must be a scalar > 0, got {mu!r}.")
    return concrete_or_traced(mu)


def trpca(x, *, lam=None, mu=None, n_iter: int = 500, tol: float = 1e-6, transform="fft",
          precision="highest", return_info: bool = False):
    """Tensor robust PCA: ``X = L + S`` with ``L`` of low tubal rank and ``S`` sparse (Lu, Feng,
    Chen, Liu, Lin & Yan, "Tensor robust principal component analysis with a new tensor nuclear
    norm", IEEE TPAMI 2019),

        min_{L,S} ‖L‖_TNN + λ‖S‖₁   subject to   L + S = X,

    solved by ADMM (Lu et al., Algorithm 1). With the multiplier ``Y`` and penalty ``μ``:

        L ← prox_tnn(X − S + Y/μ, 1/μ)       (tubal singular value thresholding)
        S ← shrink_{λ/μ}(X − L + Y/μ)        (entrywise soft-thresholding)
        Y ← Y + μ (X − L − S)
        μ ← min(ρ μ, μ̄)

    Lu et al. start from ``Y = 0`` and a fixed ``μ₀ = 10⁻³``, which depends on the scale of the
    data; as in the matrix :func:`tensorfact.rpca` (Lin, Chen & Ma 2010) we start from the
    scale-free ``μ₀ = 1.25 / ‖X‖`` and ``Y = X / max(‖X‖, ‖X‖_∞ / λ)`` (``‖X‖`` the tensor
    spectral norm, the dual of the TNN), with Lu et al.'s ``ρ = 1.1`` and ``μ̄ = 10⁷ μ₀``
    (``ADMM_RHO``, ``ADMM_MU_CAP``). Lu et al. show exact recovery, with high probability, for
    ``λ = 1/√(max(n1, n2) n3)`` when ``L`` is incoherent and of tubal rank
    ``O(min(n1, n2) / (μ log²(max(n1, n2) n3)))`` and the support of ``S`` is random and not too
    dense. The iteration stops when the larger of the relative residual
    ``‖X − L − S‖_F / ‖X‖_F`` and the relative changes of ``L`` and ``S`` (``‖ΔL‖_F / ‖X‖_F``)
    falls below ``tol`` (the Frobenius form of Lu et al.'s rule). Each iteration takes the SVDs
    of the ``n3 // 2 + 1`` transformed slices.

    Args:
      x: ``(n1, n2, n3)`` real tensor, all finite (``jax.vmap`` for a batch).
      lam: weight ``λ ≥ 0`` of the sparse term; default ``1/√(max(n1, n2) · n3)``.
      mu: initial penalty ``μ₀ > 0``; default ``1.25 / ‖X‖``.
      n_iter: maximum number of iterations (static: it sizes ``info.errors``).
      tol: stopping tolerance (above); a literal ``0`` runs exactly ``n_iter`` iterations as a
        ``lax.scan``.
      transform: ``"fft"``, ``"dct"`` or an orthogonal ``n3 × n3`` matrix.
      precision: XLA precision of the slice products; ``"highest"`` (the default) is full float32,
        ``None`` JAX's default.
      return_info: also return a :class:`FitInfo` whose ``errors`` are the stopping quantities
        above, ``rel_error`` the final relative residual and ``converged`` whether it fell
        below ``tol``.

    Returns:
      ``(low_rank, sparse)`` dense arrays of ``x``'s shape, or ``(low_rank, sparse, FitInfo)``.

    Example:
      >>> import jax, jax.numpy as jnp, tensorfact as tfa
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> low = tfa.tubal.product(jax.random.normal(k1, (30, 2, 6)), jax.random.normal(k2, (2, 30, 6)))
      >>> sparse = jnp.where(jax.random.bernoulli(k3, 0.05, low.shape), 10.0, 0.0)
      >>> l, s = tfa.tubal.rpca(low + sparse)
      >>> bool(tfa.relative_error(low, l) < 1e-3)
      True

    Raises:
      ValueError: if ``x`` is not 3-way, ``lam``/``tol`` is negative, ``mu`` is not positive,
        ``n_iter`` is not a positive int, the transform is not orthogonal, or (eager calls)
        ``x`` holds NaN or Inf.
    """
    x = _check_tensor(x, batch=False)
    n_iter, tol = check_iteration_args(n_iter, tol)
    t = _orthogonal_transform(transform, x.shape[-1])
    if lam is not None:
        check_nonneg_number(lam, "lam")
        lam = concrete_or_traced(lam)
    mu = _check_mu(mu)
    fixed = is_fixed_length(tol)
    tol = 0.0 if fixed else concrete_or_traced(tol)
    result, n_nonfinite = _trpca_fit(x, t.matrix, lam, mu, tol, kind=t.kind, n_iter=n_iter,
                                     fixed=fixed, precision=precision,
                                     return_info=bool(return_info))
    report_nonfinite(n_nonfinite, "x")
    return result


def _shrink(x, threshold):
    """Entrywise soft-thresholding ``sign(x) max(|x| − τ, 0)``."""
    return jnp.sign(x) * jnp.maximum(jnp.abs(x) - threshold, 0)


@functools.partial(jax.jit, static_argnames=("kind", "n_iter", "fixed", "precision",
                                             "return_info"))
def _trpca_fit(x, matrix, lam, mu, tol, *, kind, n_iter, fixed, precision, return_info):
    n_nonfinite = count_nonfinite(x)
    t = _tproduct.Transform(kind, matrix)
    dtype = x.dtype
    tiny = jnp.finfo(dtype).tiny
    n1, n2, n3 = x.shape
    lam = jnp.asarray(1.0 / np.sqrt(max(n1, n2) * n3) if lam is None else lam, dtype)
    norm_fro = jnp.maximum(jnp.linalg.norm(x.ravel()), tiny)
    norm_two = jnp.maximum(jnp.max(_slice_sigma(x, t, precision)), tiny)
    norm_inf = jnp.max(jnp.abs(x)) / jnp.maximum(lam, tiny)
    mu0 = 1.25 / norm_two if mu is None else jnp.asarray(mu, dtype)
    mu_cap = ADMM_MU_CAP * mu0
    y = x / jnp.maximum(norm_two, norm_inf)

    def step(state):
        low0, sparse0, y, mu = state
        low = _prox(x - sparse0 + y / mu, 1.0 / mu, t, precision).astype(dtype)
        sparse = _shrink(x - low + y / mu, lam / mu)
        resid = x - low - sparse
        y = y + mu * resid
        mu = jnp.minimum(ADMM_RHO * mu, mu_cap)
        err = jnp.maximum(jnp.linalg.norm(resid.ravel()),
                          jnp.maximum(jnp.linalg.norm((low - low0).ravel()),
                                      jnp.linalg.norm((sparse - sparse0).ravel()))) / norm_fro
        return (low, sparse, y, mu), err

    state = (jnp.zeros_like(x), jnp.zeros_like(x), y, jnp.asarray(mu0, dtype))
    state, n_done, errors, converged = iterate(step, state, n_iter=n_iter,
                                               tol=0 if fixed else tol, stop="below")
    low, sparse = state[0], state[1]
    if not return_info:
        return (low, sparse), n_nonfinite
    rel = jnp.linalg.norm((x - low - sparse).ravel()) / norm_fro
    return (low, sparse, FitInfo(n_done, errors, rel, converged)), n_nonfinite


# -------------------------------------------------------------------------------------------
# low-tubal-rank completion
# -------------------------------------------------------------------------------------------

def tubal_complete(x, mask, *, rank=None, method: str = "tnn", key=None, init: str = "svd",
                   n_iter: int = 500, tol: float = 1e-6, mu=None, l2: float = 0.0,
                   transform="fft", precision="highest", return_info: bool = False):
    """Low-tubal-rank completion of a partially observed third-order tensor.

    Let ``Ω`` be the observed entries (``mask`` True) and ``P_Ω`` zero the others.

    ``method="tnn"`` solves the convex program

        min_X ‖X‖_TNN   subject to   P_Ω(X) = P_Ω(M)

    (Zhang & Aeron, "Exact tensor completion using t-SVD", IEEE TSP 2017; with the TNN of Lu et
    al. 2019), which recovers an incoherent tensor of low tubal rank from enough random samples.
    It is solved by ADMM on the splitting ``X + E = P_Ω(M)``, ``P_Ω(E) = 0`` (Lu et al.'s
    ``lrtc_tnn``); eliminating ``E`` leaves, with the multiplier ``Y`` supported on ``Ω``:

        X ← prox_tnn(P_Ω(M + Y/μ) + P_Ω⊥(X), 1/μ)
        Y ← P_Ω(Y + μ (M − X)),    μ ← min(ρ μ, μ̄)

    from ``X = Y = 0`` and ``μ₀ = 1.25 / ‖P_Ω(M)‖`` (tensor spectral norm), ``ρ = 1.1``,
    ``μ̄ = 10⁷ μ₀``. It stops when the larger of the observed relative residual
    ``‖P_Ω(M − X)‖_F / ‖P_Ω(M)‖_F`` and the relative change of ``X`` falls below ``tol``. The
    result is the t-SVD of the last ``X`` (tubal rank ``min(n1, n2)``, with trailing singular
    tubes near zero), truncated to ``rank`` tubes when ``rank`` is given.

    ``method="factor"`` fits ``X = A * Bᵀ`` with ``A`` (``n1 × r × n3``) and ``B``
    (``n2 × r × n3``) at the tubal rank ``r = rank`` by alternating least squares,

        min_{A,B} ‖P_Ω(M − A * Bᵀ)‖²_F + λ(‖A‖²_F + ‖B‖²_F)

    (Liu, Aeron, Aggarwal & Wang, "Low-tubal-rank tensor completion using alternating
    minimization", 2016). ``A * Bᵀ`` is linear in each horizontal slice ``A[i]``:
    ``(A * Bᵀ)[i, j, :] = Σ_l T(B_jl) A[i, l, :]`` with ``T(b)`` the ``n3 × n3`` matrix of the
    tube product with ``b`` (a circulant for the FFT), so every slice ``A[i]`` (``r·n3``
    unknowns) solves its own ridge least-squares problem over its observed entries, all at once
    as for the matrix :func:`tensorfact.complete` (exact, in real arithmetic: it is Liu et al.'s
    frequency-domain least squares written in the original domain); then ``B`` likewise from
    ``Mᵀ ≈ B * Aᵀ``. The cost per sweep is ``O((n1 + n2) n2 n3 (r n3)²)`` and the memory
    ``O(max(n1, n2) n3 (r n3)²)``: it suits short tubes; for long tubes use ``"tnn"``. With
    ``l2=0`` a ridge of ``1e-6`` times the mean squared row norm of the design is used
    (``FACTOR_DEFAULT_RIDGE``), so rows with too few observations stay solvable. The start is the
    rank-``r`` t-SVD of ``P_Ω(M)/p`` (``p`` the observed fraction) or random (``init="random"``,
    needs ``key``). It stops when the observed relative error changes by less than ``tol``. The
    result is re-expressed as a t-SVD from the thin factors (slice-wise QR of ``L(A)``,
    ``L(B)`` and an ``r × r`` SVD), without decomposing a dense tensor.

    Args:
      x: ``(n1, n2, n3)`` real tensor (``jax.vmap`` for a batch). Entries where ``mask`` is
        False may hold anything, NaN included.
      mask: boolean (or 0/1) array of ``x.shape``, True where ``x`` is observed; ``None`` means
        fully observed.
      rank: tubal rank ``r ≤ min(n1, n2)``: required for ``"factor"``; for ``"tnn"`` it
        truncates the returned t-SVD (``None``: keep ``min(n1, n2)`` tubes).
      method: ``"tnn"`` or ``"factor"``.
      key: ``jax.random`` key, needed for ``init="random"``.
      init: ``"factor"``'s start, ``"svd"`` or ``"random"``.
      n_iter: maximum number of iterations (static: it sizes ``info.errors``).
      tol: stopping tolerance (above); a literal ``0`` runs exactly ``n_iter`` iterations.
      mu: ``"tnn"``'s initial penalty ``μ₀ > 0`` (default above).
      l2: ``"factor"``'s ridge ``λ ≥ 0`` (``0`` selects the small default above).
      transform: ``"fft"``, ``"dct"`` or a matrix (an orthogonal one for ``"tnn"``).
      precision: XLA precision of the products; ``"highest"`` (the default) is full float32,
        ``None`` JAX's default.
      return_info: also return a :class:`FitInfo` (``errors``: the stopping quantity of each
        iteration; ``rel_error``: the observed-entry relative error of the result).

    Returns:
      A :class:`TSVDTensor` (``.to_dense()`` for the completed tensor), or
      ``(TSVDTensor, FitInfo)`` with ``return_info=True``.

    Example:
      >>> import jax, jax.numpy as jnp, tensorfact as tfa
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> x = tfa.tubal.product(jax.random.normal(k1, (20, 2, 5)), jax.random.normal(k2, (2, 20, 5)))
      >>> mask = jax.random.bernoulli(k3, 0.6, x.shape)
      >>> t = tfa.tubal.complete(jnp.where(mask, x, jnp.nan), mask, rank=2, method="factor")
      >>> bool(tfa.relative_error(x, t.to_dense()) < 1e-3)
      True

    Raises:
      ValueError: if ``x`` is not 3-way, ``mask`` has the wrong shape, ``rank`` is missing for
        ``"factor"``, not a positive int or above ``min(n1, n2)``, ``method``/``init`` is
        unknown, ``key`` is missing for ``init="random"``, ``mu`` is given with ``"factor"`` or
        a nonzero ``l2`` with ``"tnn"``, ``mu``/``l2``/``tol`` is out of range, the transform is
        bad (not orthogonal for ``"tnn"``), or (eager calls) an observed entry is NaN or Inf.
    """
    x = _check_tensor(x, batch=False)
    mask = check_mask(mask, x.shape)
    n1, n2, n3 = x.shape
    method = check_choice(method, _METHODS, "method")
    init = check_choice(init, _INITS, "init")
    rank = _check_rank(rank, n1, n2, required=method == "factor", method=method)
    n_iter, tol = check_iteration_args(n_iter, tol)
    check_nonneg_number(l2, "l2")
    mu = _check_mu(mu)
    if method == "tnn":
        t = _orthogonal_transform(transform, n3)
        if not is_traced(l2) and float(l2) != 0:
            raise ValueError(f"l2 is the ridge of method='factor'; it does not apply to "
                             f"method='tnn', got l2={l2!r}.")
    else:
        t = _tproduct.resolve_transform(transform, n3)
        if mu is not None:
            raise ValueError(f"mu is the ADMM penalty of method='tnn'; it does not apply to "
                             f"method='factor', got mu={mu!r}.")
        if init == "random":
            check_key(key, 'for init="random"')
    fixed = is_fixed_length(tol)
    tol = 0.0 if fixed else concrete_or_traced(tol)
    result, n_nonfinite = _complete_fit(
        x, mask, t.matrix, key if (method == "factor" and init == "random") else None, mu,
        concrete_or_traced(l2), tol, rank=rank, kind=t.kind, method=method, init=init,
        n_iter=n_iter, fixed=fixed, precision=precision, return_info=bool(return_info))
    report_nonfinite(n_nonfinite, "x (observed entries)")
    return result


@functools.partial(jax.jit, static_argnames=(
    "rank", "kind", "method", "init", "n_iter", "fixed", "precision", "return_info"))
def _complete_fit(x, mask, matrix, key, mu, l2, tol, *, rank, kind, method, init, n_iter, fixed,
                  precision, return_info):
    n_nonfinite = count_nonfinite(x, mask)
    t = _tproduct.Transform(kind, matrix)
    if mask is None:
        mask = jnp.ones(x.shape, bool)
    m0 = jnp.where(mask, x, 0)  # P_Ω(M); also removes NaN placeholders
    tol = 0 if fixed else tol
    if method == "tnn":
        result, n_done, errors, converged = _complete_tnn(m0, mask, mu, tol, t, n_iter,
                                                          precision, rank)
    else:
        result, n_done, errors, converged = _complete_factor(m0, mask, key, l2, tol, t, n_iter,
                                                             precision, rank, init)
    if not return_info:
        return result, n_nonfinite
    rel = relative_error(m0, result.to_dense(precision=precision), mask)
    return (result, FitInfo(n_done, errors, rel, converged)), n_nonfinite


def _complete_tnn(m0, mask, mu, tol, t, n_iter, precision, rank):
    dtype = m0.dtype
    tiny = jnp.finfo(dtype).tiny
    norm_obs = jnp.maximum(jnp.linalg.norm(m0.ravel()), tiny)
    mu0 = (1.25 / jnp.maximum(jnp.max(_slice_sigma(m0, t, precision)), tiny)
           if mu is None else jnp.asarray(mu, dtype))
    mu_cap = ADMM_MU_CAP * mu0

    def step(state):
        x0, y, mu = state
        x = _prox(jnp.where(mask, m0 + y / mu, x0), 1.0 / mu, t, precision).astype(dtype)
        resid = jnp.where(mask, m0 - x, 0)
        y = y + mu * resid
        mu = jnp.minimum(ADMM_RHO * mu, mu_cap)
        err = jnp.maximum(jnp.linalg.norm(resid.ravel()),
                          jnp.linalg.norm((x - x0).ravel())) / norm_obs
        return (x, y, mu), err

    state = (jnp.zeros_like(m0), jnp.zeros_like(m0), jnp.asarray(mu0, dtype))
    state, n_done, errors, converged = iterate(step, state, n_iter=n_iter, tol=tol, stop="below")
    return _tsvd_of(state[0], t, rank, precision), n_done, errors, converged


def _tube_design(f, t, precision):
    """The design of ``G ↦ G * Fᵀ`` for ``F`` of shape ``(n, r, n3)``: the ``(n·n3) × (r·n3)``
    matrix ``Φ`` with ``unfold(G * Fᵀ)[i] = Φ · vec(G[i])`` (rows ``(j, t)``, columns ``(l, s)``),
    ``Φ[(j, t), (l, s)] = (Fᵀ_lj ⋆ e_s)[t]`` with ``⋆`` the tube product under ``t``."""
    n, r, n3 = f.shape
    fh = _tproduct.to_transform_domain(f, t, precision=precision)          # (k, n, r)
    eh = _tproduct.to_transform_domain(jnp.eye(n3, dtype=f.dtype)[:, None, :], t,
                                      precision=precision)[..., 0]        # (k, n3): tubes e_s
    # L(Fᵀ)_k = L(F)_kᴴ, so the tube of Fᵀ at (l, j) has transform conj(L(F)[k, j, l]).
    dh = jnp.conj(fh)[..., None] * eh[:, None, None, :]                   # (k, n, r, n3_s)
    d = _tproduct.from_transform_domain(dh.reshape(dh.shape[0], n, r * n3), n3, t)
    d = d.reshape(n, r, n3, n3).astype(f.dtype)                           # (j, l, s, t)
    return jnp.transpose(d, (0, 3, 1, 2)).reshape(n * n3, r * n3)


def _factor_half(m0_flat, maskf_flat, f, l2, t, precision):
    """Row-wise ridge least squares: the ``G`` minimising ``‖P_Ω(M − G * Fᵀ)‖² + λ‖G‖²``."""
    hp = algebra.resolve_precision(precision)
    n, r, n3 = f.shape
    phi = _tube_design(f, t, precision)                                   # (n·n3, R)
    rr = r * n3
    numer = jnp.matmul(m0_flat, phi, precision=hp)                        # m0 is zero off Ω
    squares = (phi[:, :, None] * phi[:, None, :]).reshape(n * n3, rr * rr)
    gram = jnp.matmul(maskf_flat, squares, precision=hp).reshape(-1, rr, rr)
    default = FACTOR_DEFAULT_RIDGE * jnp.sum(phi * phi) / (n * n3)
    ridge = jnp.where(l2 > 0, l2, default) + jnp.finfo(f.dtype).tiny
    g = solve_normal_equations(numer, gram, ridge, precision)
    return g.reshape(-1, r, n3)


def _complete_factor(m0, mask, key, l2, tol, t, n_iter, precision, rank, init):
    n1, n2, n3 = m0.shape
    dtype = m0.dtype
    maskf = mask.astype(dtype)
    m0t = _tproduct.ttranspose(m0, transform=t)
    maskt = _tproduct.ttranspose(maskf, transform=t)
    flat = (m0.reshape(n1, n2 * n3), maskf.reshape(n1, n2 * n3))
    flat_t = (m0t.reshape(n2, n1 * n3), maskt.reshape(n2, n1 * n3))
    l2 = jnp.asarray(l2, dtype)

    if init == "random":
        b = jax.random.normal(key, (n2, rank, n3), dtype) / np.sqrt(n2 * n3)
    else:
        p = jnp.maximum(jnp.mean(maskf), jnp.finfo(dtype).tiny)
        hat = _tproduct.to_transform_domain(m0 / p, t, precision=precision)
        _, s, vh = _svd_hat(hat, t, n3)
        bh = jnp.conj(jnp.swapaxes(vh[..., :rank, :], -1, -2)) * jnp.sqrt(s[..., None, :rank])
        b = _tproduct.from_transform_domain(bh, n3, t).astype(dtype)

    def step(state):
        _, b = state
        a = _factor_half(*flat, b, l2, t, precision)
        b = _factor_half(*flat_t, a, l2, t, precision)
        approx = _tproduct.tprod(a, _tproduct.ttranspose(b, transform=t), transform=t,
                                precision=precision)
        return (a, b), relative_error(m0, approx, mask)

    a0 = jnp.zeros((n1, rank, n3), dtype)
    (a, b), n_done, errors, converged = iterate(step, (a0, b), n_iter=n_iter, tol=tol)
    return _product_to_tsvd(a, b, t, precision), n_done, errors, converged


def _product_to_tsvd(a, b, t, precision) -> TSVDTensor:
    """``A * Bᵀ`` as a t-SVD, slice-wise: ``L(A)_k = Q_a R_a``, ``L(B)_k = Q_b R_b`` (QR),
    ``R_a R_bᴴ = W Σ Zᴴ`` (an ``r × r`` SVD); ``Û = Q_a W``, ``V̂ = Q_b Z``."""
    n3 = a.shape[-1]
    ah = _tproduct.to_transform_domain(a, t, precision=precision)
    bh = _tproduct.to_transform_domain(b, t, precision=precision)
    qa, ra = _slicewise(jnp.linalg.qr, ah, t, n3)
    qb, rb = _slicewise(jnp.linalg.qr, bh, t, n3)
    core = _tproduct.facewise(ra, jnp.conj(jnp.swapaxes(rb, -1, -2)), precision=precision)
    w, s, zh = _svd_hat(core, t, n3)
    uh = _tproduct.facewise(qa, w, precision=precision)
    vh = _tproduct.facewise(qb, jnp.conj(jnp.swapaxes(zh, -1, -2)), precision=precision)
    return _tsvd_from_hat(uh, s, vh, t, n3)
