"""The tensor nuclear norm and its proximal operator (Lu et al. 2019).

References:
  C. Lu, J. Feng, Y. Chen, W. Liu, Z. Lin and S. Yan, "Tensor robust principal component analysis
  with a new tensor nuclear norm", IEEE TPAMI 42(4), 2019.
  C. Lu, X. Peng and Y. Wei, "Low-rank tensor completion with a new tensor nuclear norm induced
  by invertible linear transforms", CVPR 2019.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from tensorfact import _tproduct
from tensorfact._checks import check_nonneg_number
from tensorfact._numerics import pow2_scale
from tensorfact.decomposition._common import concrete_or_traced
from tensorfact.tubal._common import check_tensor, orthogonal_transform, slice_sigma, svt

__all__ = ["tnn", "prox"]


def tnn(x, *, transform: _tproduct.TransformLike = "fft"):
    """The tensor nuclear norm ``‖X‖_TNN = (1/n3) Σ_{k=1}^{n3} ‖X̂_k‖_*`` (Lu et al. 2019), the
    mean over all ``n3`` frequencies of the nuclear norms of the transformed slices (conjugate
    twins of the real FFT counted twice, through :func:`frequency_weights`).

    It is the convex envelope of the tubal average rank on the unit ball of the tensor spectral
    norm, its dual norm. Under the DCT or an orthogonal matrix it is ``Σ_k ‖L(X)_k‖_*`` (Lu, Peng
    & Wei, CVPR 2019, with ``L Lᵀ = I``). Differentiable where the slices have distinct nonzero
    singular values: the gradient is ``U * Vᵀ`` from the t-SVD.

    Args:
      x: ``(n1, n2, n3)`` real tensor (``jax.vmap`` for a batch).
      transform: ``"fft"``, ``"dct"`` or an orthogonal ``n3 × n3`` matrix.

    Returns:
      A scalar.

    Example:
      >>> import tensorfact as tfa
      >>> float(tfa.tubal.tnn(tfa.tubal.identity(3, 4)))     # every slice of I is I₃
      3.0

    Raises:
      ValueError: if ``x`` is not one third-order tensor or the transform is not orthogonal.
    """
    x = check_tensor(x)
    t = orthogonal_transform(transform, x.shape[-1])
    return _tnn(x, t.matrix, kind=t.kind)


@functools.partial(jax.jit, static_argnames=("kind",))
def _tnn(x, matrix, *, kind):
    s, w, scale = slice_sigma(x, _tproduct.Transform(kind, matrix))
    return (jnp.sum(w * jnp.sum(s, axis=-1)) * scale).astype(x.dtype)


def prox(x, tau, *, transform: _tproduct.TransformLike = "fft", precision="highest"):
    """The proximal operator of ``τ‖·‖_TNN``: ``argmin_Z τ‖Z‖_TNN + ½‖Z − X‖²_F``.

    It is tubal singular value thresholding (Lu et al. 2019, Thm 4.2): with the SVD of every
    transformed slice ``X̂_k = Û_k Σ_k V̂_kᴴ``, ``Ẑ_k = Û_k max(Σ_k − τ, 0) V̂_kᴴ`` (the threshold
    is ``τ`` itself, because both the TNN and the squared Frobenius norm carry the same
    ``1/n3`` in the Fourier domain).

    Args:
      x: ``(n1, n2, n3)`` real tensor (``jax.vmap`` for a batch).
      tau: threshold ``τ ≥ 0``, finite (may be traced).
      transform: ``"fft"``, ``"dct"`` or an orthogonal ``n3 × n3`` matrix.
      precision: XLA precision of the slice products; ``"highest"`` (the default) is full
        float32, ``None`` JAX's default.

    Returns:
      The real tensor ``Z`` of ``x``'s shape.

    Example:
      >>> import jax, tensorfact as tfa
      >>> x = jax.random.normal(jax.random.key(0), (6, 5, 4))
      >>> z = tfa.tubal.prox(x, 1.0)
      >>> bool(tfa.tubal.tnn(z) < tfa.tubal.tnn(x))
      True

    Raises:
      ValueError: if ``x`` is not one third-order tensor, ``tau`` is negative, infinite or not a
        scalar, or the transform is not orthogonal.
    """
    x = check_tensor(x)
    t = orthogonal_transform(transform, x.shape[-1])
    check_nonneg_number(tau, "tau")
    return _prox(x, t.matrix, concrete_or_traced(tau), kind=t.kind, precision=precision)


@functools.partial(jax.jit, static_argnames=("kind", "precision"))
def _prox(x, matrix, tau, *, kind, precision):
    # prox_{τ‖·‖}(x) = s · prox_{(τ/s)‖·‖}(x / s) for s > 0 (the TNN is 1-homogeneous)
    scale = jax.lax.stop_gradient(pow2_scale(x))
    tau = jnp.asarray(tau, x.dtype) / scale
    return svt(x / scale, tau, _tproduct.Transform(kind, matrix), precision) * scale
