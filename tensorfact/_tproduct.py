"""The t-product algebra of third-order tensors (tubal algebra).

A third-order tensor ``A`` of shape ``(n1, n2, n3)`` is read as an ``n1 × n2`` matrix whose
entries are *tubes* (vectors of length ``n3`` along the last axis). Kilmer & Martin's t-product
multiplies tubes by circular convolution; after a discrete Fourier transform along the tubes
that becomes a product of the frontal slices, one slice at a time:

    C = A * B   ⇔   Ĉ_k = Â_k B̂_k   for every frequency k,   Â = fft(A, axis=-1).

Kernfeld, Kilmer & Aeron generalise the FFT to any invertible transform ``L`` along the tubes
(``A *_L B = L⁻¹(L(A) △ L(B))``, △ the slice-wise product); this module offers the FFT (the
original t-product), the orthonormal DCT-II, and a user-supplied invertible ``n3 × n3`` matrix.

Every function takes tensors of shape ``(..., n1, n2, n3)``: leading axes are a batch. In the
transform domain a tensor is held as ``(..., k, n1, n2)`` (the tube axis moved in front of the
matrix axes, so the slice-wise products are batched matmuls). For the FFT only the
``n3 // 2 + 1`` non-redundant frequencies of the real FFT are stored and factorised: the others
are their complex conjugates, since the input is real.

Conventions for transposes: the t-transpose ``Aᵀ`` satisfies ``L(Aᵀ)_k = L(A)_kᴴ`` (conjugate
transpose; for the FFT this is the slice-wise transpose with slices ``2 … n3`` reversed, as in
Kilmer & Martin). For a real transform (DCT, real matrix) it is the plain slice-wise transpose.

References:
  M. E. Kilmer and C. D. Martin, "Factorization strategies for third-order tensors", Linear
  Algebra and its Applications 435(3), 2011.
  E. Kernfeld, M. Kilmer and S. Aeron, "Tensor–tensor products with invertible linear
  transforms", Linear Algebra and its Applications 485, 2015.
  C. Lu, J. Feng, Y. Chen, W. Liu, Z. Lin and S. Yan, "Tensor robust principal component analysis
  with a new tensor nuclear norm", IEEE TPAMI 42(4), 2019.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from tensorfact._checks import as_float_array, check_positive_int, is_traced
from tensorfact.algebra import resolve_precision

__all__ = [
    "Transform", "resolve_transform", "to_transform_domain", "from_transform_domain",
    "frequency_weights", "facewise", "tprod", "ttranspose", "tidentity", "tinv", "tnorm",
]


class Transform(NamedTuple):
    """A resolved transform along the tubes: ``kind`` is "fft", "dct" or "matrix".

    ``matrix`` (only for "matrix") is the ``n3 × n3`` matrix ``M`` with ``L(a) = a ×₃ M``, i.e.
    ``L(a)[..., k] = Σ_j M[k, j] a[..., j]``.
    """

    kind: str
    matrix: jax.Array | None = None


def resolve_transform(transform, n3: int) -> Transform:
    """Checks ``transform`` ("fft", "dct", an ``n3 × n3`` matrix or a :class:`Transform`)."""
    if isinstance(transform, Transform):
        if transform.kind == "matrix":
            return resolve_transform(transform.matrix, n3)
        transform = transform.kind
    if isinstance(transform, str):
        if transform not in ("fft", "dct"):
            raise ValueError(f"transform must be 'fft', 'dct' or an invertible {n3} × {n3} "
                             f"matrix, got {transform!r}.")
        return Transform(transform)
    if not hasattr(transform, "shape"):
        raise ValueError(f"transform must be 'fft', 'dct' or an invertible {n3} × {n3} matrix, "
                         f"got {type(transform).__name__}.")
    m = as_float_array(transform, "transform")
    if m.shape != (n3, n3):
        raise ValueError(f"transform matrix must have shape ({n3}, {n3}) to act on tubes of "
                         f"length {n3}, got {tuple(m.shape)}.")
    if not is_traced(m):
        cond = np.linalg.cond(np.asarray(m, np.float64))
        if not np.isfinite(cond) or cond > 1e12:
            raise ValueError(f"transform matrix must be invertible, got one with condition "
                             f"number {cond:.3g}.")
    return Transform("matrix", m)


def _along_tubes(fn, x, *args, **kwargs):
    """``fn`` (an FFT or DCT) along the last axis of ``x``, viewed as a 2-D ``(rows, n)`` array
    with at least two rows.

    XLA's CPU FFT requires a row-major operand. On arrays with size-1 axes (e.g. ``(1, 1, n3)``)
    several layouts are equivalent, and when the result feeds a LAPACK call (SVD, inverse) under
    ``jit`` layout assignment can pick one the FFT rejects at run time (``fft_thunk.cc``:
    "IsMonotonicWithDim0Major"). A 2-D view with two or more rows has no such ambiguity (the
    callers skip the transform when ``n == 1``); a single row is padded with a zero row.
    """
    n = x.shape[-1]
    flat = x.reshape(-1, n)
    rows = flat.shape[0]
    if rows == 1:
        flat = jnp.concatenate([flat, jnp.zeros_like(flat)])
    out = fn(flat, *args, axis=-1, **kwargs)[:rows]
    return out.reshape(x.shape[:-1] + out.shape[-1:])


# One compiled program each: jax.scipy.fft's DCT is a dozen primitives, which called eagerly
# would each be compiled on their own (seconds on the first call of every shape).
@jax.jit
def _dct(x):
    return _along_tubes(jax.scipy.fft.dct, x, type=2, norm="ortho")


@jax.jit
def _idct(x):
    return _along_tubes(jax.scipy.fft.idct, x, type=2, norm="ortho")


def _check_tensor(x, name: str) -> jax.Array:
    x = as_float_array(x, name)
    if x.ndim < 3:
        raise ValueError(f"{name} must be a third-order tensor (n1, n2, n3), optionally with "
                         f"leading batch axes, got shape {tuple(x.shape)}.")
    return x


def to_transform_domain(x: jax.Array, transform="fft", *, precision="highest") -> jax.Array:
    """``L(x)`` with the tube axis moved in front: ``(..., n1, n2, n3) → (..., k, n1, n2)``.

    For the FFT, ``k = n3 // 2 + 1`` complex slices (the real FFT's non-redundant half); for the
    DCT or a matrix, ``k = n3`` real slices. ``precision`` is that of the product with a
    transform matrix (``None``: full float32); the FFT and DCT do not use it.
    """
    x = _check_tensor(x, "x")
    t = resolve_transform(transform, x.shape[-1])
    if x.shape[-1] == 1 and t.kind != "matrix":
        # Tubes of length 1: both transforms are the identity (and skipping them avoids the
        # degenerate FFT layouts of _along_tubes).
        hat = x.astype(jnp.result_type(x, jnp.complex64)) if t.kind == "fft" else x
    elif t.kind == "fft":
        hat = _along_tubes(jnp.fft.rfft, x)
    elif t.kind == "dct":
        hat = _dct(x)
    else:
        hat = jnp.einsum("kj,...j->...k", t.matrix.astype(x.dtype), x,
                         precision=resolve_precision(precision))
    return jnp.moveaxis(hat, -1, -3)


def from_transform_domain(hat: jax.Array, n3: int, transform="fft") -> jax.Array:
    """Inverse of :func:`to_transform_domain`: ``(..., k, n1, n2) → (..., n1, n2, n3)``, real."""
    n3 = check_positive_int(n3, "n3")
    t = resolve_transform(transform, n3)
    hat = jnp.moveaxis(hat, -3, -1)
    if t.kind == "fft":
        if hat.shape[-1] != n3 // 2 + 1:
            raise ValueError(f"hat must hold n3 // 2 + 1 = {n3 // 2 + 1} frequencies for n3 = "
                             f"{n3}, got {hat.shape[-1]}.")
        return jnp.real(hat) if n3 == 1 else _along_tubes(jnp.fft.irfft, hat, n=n3)
    if hat.shape[-1] != n3:
        raise ValueError(f"hat must hold n3 = {n3} transformed slices, got {hat.shape[-1]}.")
    if t.kind == "dct":
        return hat if n3 == 1 else _idct(hat)
    # Solve instead of forming M⁻¹: L⁻¹(ĥ)[..., j] = Σ_k (M⁻¹)[j, k] ĥ[..., k].
    m = t.matrix.astype(hat.dtype)
    flat = hat.reshape(-1, n3).T
    return jnp.linalg.solve(m, flat).T.reshape(hat.shape)


def frequency_weights(n3: int, transform="fft", dtype=jnp.float32) -> jax.Array:
    """Weights ``w_k`` with ``‖x‖²_F = Σ_k w_k ‖L(x)_k‖²_F`` over the stored slices.

    For the real FFT, ``w_k = 1/n3`` for the zero frequency (and the Nyquist one when ``n3`` is
    even) and ``2/n3`` for the others, whose conjugate twins are not stored (Parseval). For the
    orthonormal DCT, ``w_k = 1``. A general matrix transform does not preserve the norm; its
    weights are those of an orthogonal ``M`` and are only exact then.
    """
    t = resolve_transform(transform, n3)
    if t.kind != "fft":
        return jnp.ones((n3,), dtype)
    w = np.full(n3 // 2 + 1, 2.0 / n3)
    w[0] = 1.0 / n3
    if n3 % 2 == 0:
        w[-1] = 1.0 / n3
    return jnp.asarray(w, dtype)


def facewise(a_hat: jax.Array, b_hat: jax.Array, *, precision="highest") -> jax.Array:
    """Slice-wise matrix product in the transform domain.

    ``(..., k, n1, n2) @ (..., k, n2, n4) → (..., k, n1, n4)``, batched over the slices ``k``.
    """
    return jnp.matmul(a_hat, b_hat, precision=resolve_precision(precision))


def tprod(a: jax.Array, b: jax.Array, *, transform="fft", precision="highest") -> jax.Array:
    """The t-product ``A * B`` of ``(..., n1, n2, n3)`` and ``(..., n2, n4, n3)`` tensors.

    ``A *_L B = L⁻¹(L(A) △ L(B))`` (Kilmer & Martin 2011; Kernfeld et al. 2015): for the FFT it
    is the block-circulant product ``fold(bcirc(A) · unfold(B))``, i.e. ``C[i, j, :] = Σ_l
    A[i, l, :] ⊛ B[l, j, :]`` with ⊛ the circular convolution of tubes. Cost with the FFT:
    ``O(n1 n2 n4 n3 / 2)`` multiply-adds plus the transforms, instead of ``O(n1 n2 n4 n3²)``.

    Leading batch axes broadcast as in ``jnp.matmul``.

    Example::

        c = tfa.tubal.product(a, b)          # a: (4, 3, 5), b: (3, 2, 5) → c: (4, 2, 5)
    """
    a = _check_tensor(a, "a")
    b = _check_tensor(b, "b")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"a and b must have tubes of the same length (last axis), got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}.")
    if a.shape[-2] != b.shape[-3]:
        raise ValueError(f"inner sizes must match for a * b: a is (..., n1, {a.shape[-2]}, n3) "
                         f"but b is (..., {b.shape[-3]}, n4, n3); got shapes {tuple(a.shape)} "
                         f"and {tuple(b.shape)}.")
    t = resolve_transform(transform, a.shape[-1])
    dtype = jnp.result_type(a, b)
    return _tprod(a.astype(dtype), b.astype(dtype), t.matrix, kind=t.kind, precision=precision)


# The t-product, t-inverse and spectral norm are each one compiled program (an eager call would
# otherwise dispatch, and the first time compile, every primitive on its own); under a user's
# jit they are inlined. The transform's kind is static, its matrix (if any) an argument.
@functools.partial(jax.jit, static_argnames=("kind", "precision"))
def _tprod(a, b, matrix, *, kind, precision):
    t = Transform(kind, matrix)
    c_hat = facewise(to_transform_domain(a, t, precision=precision),
                     to_transform_domain(b, t, precision=precision), precision=precision)
    return from_transform_domain(c_hat, a.shape[-1], t).astype(a.dtype)


def ttranspose(a: jax.Array, *, transform="fft") -> jax.Array:
    """The t-transpose ``Aᵀ``, with ``(A * B)ᵀ = Bᵀ * Aᵀ``.

    FFT: transpose each frontal slice and reverse the order of slices ``2 … n3`` (Kilmer &
    Martin 2011). A real transform (DCT, real matrix): the plain slice-wise transpose.
    """
    a = _check_tensor(a, "a")
    t = resolve_transform(transform, a.shape[-1])
    at = jnp.swapaxes(a, -3, -2)
    if t.kind == "fft":
        # Index k ↦ −k mod n3: keep slice 0, reverse the rest.
        at = jnp.concatenate([at[..., :1], jnp.flip(at[..., 1:], axis=-1)], axis=-1)
    return at


def tidentity(n: int, n3: int, *, transform="fft", dtype=jnp.float32) -> jax.Array:
    """The ``n × n × n3`` identity of the t-product: ``I * A = A * I = A``.

    Every transformed slice of it is the identity matrix. For the FFT that is the identity in
    the first frontal slice and zeros elsewhere.
    """
    n = check_positive_int(n, "n")
    n3 = check_positive_int(n3, "n3")
    t = resolve_transform(transform, n3)
    k = n3 // 2 + 1 if t.kind == "fft" else n3
    hat = jnp.broadcast_to(jnp.eye(n, dtype=dtype), (k, n, n))
    if t.kind == "fft":
        hat = hat.astype(jnp.result_type(dtype, jnp.complex64))
    return from_transform_domain(hat, n3, t).astype(dtype)


def tinv(a: jax.Array, *, transform="fft") -> jax.Array:
    """The t-inverse ``A⁻¹`` of an ``(..., n, n, n3)`` tensor: ``A * A⁻¹ = A⁻¹ * A = I``.

    Exists when every transformed slice is invertible; singular slices give Inf/NaN as
    ``jnp.linalg.inv`` does.
    """
    a = _check_tensor(a, "a")
    if a.shape[-3] != a.shape[-2]:
        raise ValueError(f"a must have square frontal slices (n, n, n3) to be inverted, got "
                         f"shape {tuple(a.shape)}.")
    t = resolve_transform(transform, a.shape[-1])
    return _tinv(a, t.matrix, kind=t.kind)


@functools.partial(jax.jit, static_argnames=("kind",))
def _tinv(a, matrix, *, kind):
    t = Transform(kind, matrix)
    hat = jnp.linalg.inv(to_transform_domain(a, t))
    return from_transform_domain(hat, a.shape[-1], t).astype(a.dtype)


def tnorm(a: jax.Array, ord: str = "fro", *, transform="fft") -> jax.Array:
    """Norm of a third-order tensor (over its last three axes; batch axes are kept).

    ``ord="fro"``: the Frobenius norm ``‖A‖_F``. ``ord="spectral"``: the tensor spectral norm
    ``‖A‖ = max_k σ_max(L(A)_k)`` (the operator norm of the t-product map ``B ↦ A * B``; for the
    FFT it is the spectral norm of ``bcirc(A)``; Lu et al. 2019).
    """
    a = _check_tensor(a, "a")
    if ord == "fro":
        return jnp.sqrt(jnp.sum(jnp.square(a), axis=(-3, -2, -1)))
    if ord == "spectral":
        t = resolve_transform(transform, a.shape[-1])
        return _spectral_norm(a, t.matrix, kind=t.kind)
    raise ValueError(f"ord must be 'fro' or 'spectral', got {ord!r}.")


@functools.partial(jax.jit, static_argnames=("kind",))
def _spectral_norm(a, matrix, *, kind):
    s = jnp.linalg.svd(to_transform_domain(a, Transform(kind, matrix)), compute_uv=False)
    return jnp.max(s, axis=(-2, -1)).astype(a.dtype)
