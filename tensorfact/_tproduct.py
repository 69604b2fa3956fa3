"""The t-product algebra of third-order tensors (tubal algebra), below the types.

A third-order tensor ``A`` of shape ``(n1, n2, n3)`` is read as an ``n1 × n2`` matrix whose
entries are *tubes* (vectors of length ``n3`` along the last axis). Kilmer & Martin's t-product
multiplies tubes by circular convolution; after a discrete Fourier transform along the tubes
that becomes a product of the frontal slices, one slice at a time:

    C = A * B   ⇔   Ĉ_k = Â_k B̂_k   for every frequency k,   Â = fft(A, axis=-1).

Kernfeld, Kilmer & Aeron generalise the FFT to any invertible transform ``L`` along the tubes
(``A *_L B = L⁻¹(L(A) △ L(B))``, △ the slice-wise product); this module offers the FFT (the
original t-product), the orthonormal DCT-II, and a user-supplied invertible ``n3 × n3`` matrix.

Every function takes one tensor of shape ``(n1, n2, n3)`` (``jax.vmap`` maps over a batch). In
the transform domain a tensor is held as ``(k, n1, n2)`` (the tube axis moved in front of the
matrix axes, so the slice-wise products are batched matmuls). For the FFT only the
``n3 // 2 + 1`` non-redundant frequencies of the real FFT are stored and factorised: the others
are their complex conjugates, since the input is real.

Conventions for transposes: the t-transpose ``Aᵀ`` satisfies ``L(Aᵀ)_k = L(A)_kᴴ`` (conjugate
transpose; for the FFT this is the slice-wise transpose with slices ``2 … n3`` reversed, as in
Kilmer & Martin). For a real transform (DCT, real matrix) it is the plain slice-wise transpose.

The public names are re-exported by :mod:`tensorfact.tubal`; this module sits below the types
(:class:`~tensorfact.TSVDTensor` and :class:`~tensorfact.TubalFactors` compute with it), so it
imports nothing from the tubal package.

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
from typing import Literal, NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from tensorfact._checks import (as_float_array, check_choice, check_positive_int,
                                count_nonfinite, is_traced, report_nonfinite)
from tensorfact._numerics import pow2_normalize, pow2_scale, resolve_precision, safe_norm

__all__ = [
    "Transform", "TransformLike", "resolve_transform", "check_tensor", "map_batch",
    "unit_scaled",
    "to_transform_domain", "from_transform_domain", "frequency_weights", "facewise",
    "product", "transpose", "identity", "inverse", "norm",
]


class Transform(NamedTuple):
    """A resolved transform along the tubes: ``kind`` is "fft", "dct" or "matrix".

    ``matrix`` (only for "matrix") is the ``n3 × n3`` matrix ``M`` with ``L(a) = a ×₃ M``, i.e.
    ``L(a)[..., k] = Σ_j M[k, j] a[..., j]``.
    """

    kind: str
    matrix: jax.Array | None = None


#: What ``transform=`` accepts: ``"fft"`` (Kilmer & Martin's t-product), ``"dct"`` (the
#: orthonormal DCT-II), an invertible ``n3 × n3`` matrix, or a :class:`Transform`.
TransformLike = Union[Literal["fft", "dct"], jax.Array, np.ndarray, Transform]


def resolve_transform(transform: TransformLike, n3: int) -> Transform:
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


def check_tensor(x, name: str, *, nonempty: bool = False) -> jax.Array:
    """``x`` as one real floating ``(n1, n2, n3)`` tensor, or an error naming ``name`` and its
    shape (a batch is refused: map over it with ``jax.vmap``). Tubes of length zero are always
    refused; ``nonempty=True`` (the decompositions) refuses any mode of size zero."""
    x = as_float_array(x, name, nonempty=nonempty)
    if x.ndim != 3:
        hint = "; map over a batch with jax.vmap" if x.ndim > 3 else ""
        raise ValueError(f"{name} must be a third-order tensor (n1, n2, n3), got shape "
                         f"{tuple(x.shape)}{hint}.")
    if x.shape[-1] == 0:
        raise ValueError(f"{name} has tubes of length zero (shape {tuple(x.shape)}).")
    return x


def _check_hat(hat, name: str) -> jax.Array:
    """A transform-domain tensor ``(k, n1, n2)`` (real or complex)."""
    hat = jnp.asarray(hat)
    if hat.ndim != 3:
        hint = "; map over a batch with jax.vmap" if hat.ndim > 3 else ""
        raise ValueError(f"{name} must be a transform-domain tensor (k, n1, n2), got shape "
                         f"{tuple(hat.shape)}{hint}.")
    return hat


def map_batch(fn, n_batch: int):
    """``fn`` mapped with ``jax.vmap`` over ``n_batch`` leading axes of every argument (the
    types, whose leaves carry a batch after a vmapped fit, compute one tensor at a time)."""
    for _ in range(n_batch):
        fn = jax.vmap(fn)
    return fn


def unit_scaled(*arrays):
    """``(arrays / 2^{k_i}, Σ_i k_i)``: each array divided by a power of two near its largest
    entry (exact, :func:`tensorfact._numerics.pow2_scale`), and the total exponent, so that a
    norm computed from the scaled factors of a product is ``ldexp(norm, Σ k_i)``: no square
    over- or underflows for entries anywhere in the floating range."""
    mantissas, exponents = zip(*(pow2_normalize(x) for x in arrays))
    return mantissas, sum(exponents)


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


def to_transform_domain(x, transform: TransformLike = "fft", *,
                        precision="highest") -> jax.Array:
    """``L(x)`` with the tube axis moved in front: ``(n1, n2, n3) → (k, n1, n2)``.

    For the FFT, ``k = n3 // 2 + 1`` complex slices (the real FFT's non-redundant half); for the
    DCT or a matrix, ``k = n3`` real slices. ``precision`` is that of the product with a
    transform matrix; the FFT and DCT do not use it.

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> tfa.tubal.to_transform_domain(jnp.ones((2, 3, 4))).shape     # 4 // 2 + 1 frequencies
      (3, 2, 3)
    """
    x = check_tensor(x, "x")
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
        hat = jnp.einsum("kj,abj->abk", t.matrix.astype(x.dtype), x,
                         precision=resolve_precision(precision))
    return jnp.moveaxis(hat, -1, 0)


def from_transform_domain(hat, n3: int, transform: TransformLike = "fft") -> jax.Array:
    """Inverse of :func:`to_transform_domain`: ``(k, n1, n2) → (n1, n2, n3)``, real.

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> x = jnp.arange(24.0).reshape(2, 3, 4)
      >>> back = tfa.tubal.from_transform_domain(tfa.tubal.to_transform_domain(x), 4)
      >>> bool(jnp.allclose(back, x, atol=1e-5))
      True
    """
    n3 = check_positive_int(n3, "n3")
    t = resolve_transform(transform, n3)
    hat = jnp.moveaxis(_check_hat(hat, "hat"), 0, -1)
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


def frequency_weights(n3: int, transform: TransformLike = "fft", dtype=jnp.float32) -> jax.Array:
    """Weights ``w_k`` with ``‖x‖²_F = Σ_k w_k ‖L(x)_k‖²_F`` over the stored slices.

    For the real FFT, ``w_k = 1/n3`` for the zero frequency (and the Nyquist one when ``n3`` is
    even) and ``2/n3`` for the others, whose conjugate twins are not stored (Parseval). For the
    orthonormal DCT, ``w_k = 1``. A general matrix transform does not preserve the norm; its
    weights are those of an orthogonal ``M`` and are only exact then.

    Example:
      >>> import tensorfact as tfa
      >>> [round(float(w), 3) for w in tfa.tubal.frequency_weights(4)]
      [0.25, 0.5, 0.25]
    """
    t = resolve_transform(transform, n3)
    if t.kind != "fft":
        return jnp.ones((n3,), dtype)
    w = np.full(n3 // 2 + 1, 2.0 / n3)
    w[0] = 1.0 / n3
    if n3 % 2 == 0:
        w[-1] = 1.0 / n3
    return jnp.asarray(w, dtype)


def facewise(a_hat, b_hat, *, precision="highest") -> jax.Array:
    """Slice-wise matrix product in the transform domain:
    ``(k, n1, n2) @ (k, n2, n4) → (k, n1, n4)``, batched over the slices ``k``.

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> tfa.tubal.facewise(jnp.ones((3, 4, 2)), jnp.ones((3, 2, 5))).shape
      (3, 4, 5)
    """
    a_hat, b_hat = _check_hat(a_hat, "a_hat"), _check_hat(b_hat, "b_hat")
    if a_hat.shape[0] != b_hat.shape[0] or a_hat.shape[2] != b_hat.shape[1]:
        raise ValueError(f"a_hat (k, n1, n2) and b_hat (k, n2, n4) must agree on k and n2, got "
                         f"shapes {tuple(a_hat.shape)} and {tuple(b_hat.shape)}.")
    return jnp.matmul(a_hat, b_hat, precision=resolve_precision(precision))


def product(a, b, *, transform: TransformLike = "fft", precision="highest") -> jax.Array:
    """The t-product ``A * B`` of an ``(n1, n2, n3)`` and an ``(n2, n4, n3)`` tensor.

    ``A *_L B = L⁻¹(L(A) △ L(B))`` (Kilmer & Martin 2011; Kernfeld et al. 2015): for the FFT it
    is the block-circulant product ``fold(bcirc(A) · unfold(B))``, i.e. ``C[i, j, :] = Σ_l
    A[i, l, :] ⊛ B[l, j, :]`` with ⊛ the circular convolution of tubes. Cost with the FFT:
    ``O(n1 n2 n4 n3 / 2)`` multiply-adds plus the transforms, instead of ``O(n1 n2 n4 n3²)``.
    One product per call: map over a batch with ``jax.vmap``.

    Example:
      >>> import jax, tensorfact as tfa
      >>> a = jax.random.normal(jax.random.key(0), (4, 3, 5))
      >>> b = jax.random.normal(jax.random.key(1), (3, 2, 5))
      >>> tfa.tubal.product(a, b).shape
      (4, 2, 5)
      >>> jax.vmap(tfa.tubal.product, in_axes=(None, 0))(a, b[None].repeat(6, 0)).shape
      (6, 4, 2, 5)

    Raises:
      ValueError: if ``a`` or ``b`` is not a third-order tensor (a batch included), their tubes
        differ in length, their inner sizes differ, or ``transform`` is bad.
    """
    a = check_tensor(a, "a")
    b = check_tensor(b, "b")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"a and b must have tubes of the same length (last axis), got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}.")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner sizes must match for a * b: a is (n1, {a.shape[1]}, n3) but b "
                         f"is ({b.shape[0]}, n4, n3); got shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}.")
    t = resolve_transform(transform, a.shape[-1])
    dtype = jnp.result_type(a, b)
    return _product(a.astype(dtype), b.astype(dtype), t.matrix, kind=t.kind, precision=precision)


# The t-product, t-inverse and spectral norm are each one compiled program (an eager call would
# otherwise dispatch, and the first time compile, every primitive on its own); under a user's
# jit they are inlined. The transform's kind is static, its matrix (if any) an argument.
@functools.partial(jax.jit, static_argnames=("kind", "precision"))
def _product(a, b, matrix, *, kind, precision):
    t = Transform(kind, matrix)
    c_hat = facewise(to_transform_domain(a, t, precision=precision),
                     to_transform_domain(b, t, precision=precision), precision=precision)
    return from_transform_domain(c_hat, a.shape[-1], t).astype(a.dtype)


def transpose(a, *, transform: TransformLike = "fft") -> jax.Array:
    """The t-transpose ``Aᵀ`` of an ``(n1, n2, n3)`` tensor, with ``(A * B)ᵀ = Bᵀ * Aᵀ``.

    FFT: transpose each frontal slice and reverse the order of slices ``2 … n3`` (Kilmer &
    Martin 2011). A real transform (DCT, real matrix): the plain slice-wise transpose.

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> a = jnp.arange(12.0).reshape(2, 2, 3)
      >>> tfa.tubal.transpose(a)[0, 1].tolist()           # tube a[1, 0] = [6, 7, 8], reversed
      [6.0, 8.0, 7.0]
    """
    a = check_tensor(a, "a")
    t = resolve_transform(transform, a.shape[-1])
    at = jnp.swapaxes(a, 0, 1)
    if t.kind == "fft":
        # Index k ↦ −k mod n3: keep slice 0, reverse the rest.
        at = jnp.concatenate([at[..., :1], jnp.flip(at[..., 1:], axis=-1)], axis=-1)
    return at


def identity(n: int, n3: int, *, transform: TransformLike = "fft",
             dtype=jnp.float32) -> jax.Array:
    """The ``n × n × n3`` identity of the t-product: ``I * A = A * I = A``.

    Every transformed slice of it is the identity matrix. For the FFT that is the identity in
    the first frontal slice and zeros elsewhere.

    Example:
      >>> import tensorfact as tfa
      >>> eye = tfa.tubal.identity(2, 3)
      >>> eye[:, :, 0].tolist(), float(abs(eye[:, :, 1:]).max())
      ([[1.0, 0.0], [0.0, 1.0]], 0.0)
    """
    n = check_positive_int(n, "n")
    n3 = check_positive_int(n3, "n3")
    t = resolve_transform(transform, n3)
    k = n3 // 2 + 1 if t.kind == "fft" else n3
    hat = jnp.broadcast_to(jnp.eye(n, dtype=dtype), (k, n, n))
    if t.kind == "fft":
        hat = hat.astype(jnp.result_type(dtype, jnp.complex64))
    return from_transform_domain(hat, n3, t).astype(dtype)


def inverse(a, *, transform: TransformLike = "fft") -> jax.Array:
    """The t-inverse ``A⁻¹`` of an ``(n, n, n3)`` tensor: ``A * A⁻¹ = A⁻¹ * A = I``.

    It exists when every transformed slice ``L(A)_k`` is invertible, and is computed slice by
    slice, ``L(A⁻¹)_k = L(A)_k⁻¹``. A slice that is singular to working precision (1-norm
    condition number ``≥ 1/eps``, or a non-finite inverse) makes an eager call raise a
    ``ValueError`` naming ``a``. Under ``jit``/``vmap`` the values are unknown and nothing is
    raised: such slices give Inf, NaN or meaningless large entries, as ``jnp.linalg.inv`` does
    (wrap the call with ``jax.experimental.checkify`` or test the result if that can happen).

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> a = 2.0 * tfa.tubal.identity(3, 4)
      >>> float(tfa.tubal.inverse(a)[0, 0, 0])
      0.5

    Raises:
      ValueError: if ``a`` does not have square frontal slices, the transform is bad, or (eager
        calls) ``a`` holds NaN/Inf or is singular.
    """
    a = check_tensor(a, "a")
    if a.shape[0] != a.shape[1]:
        raise ValueError(f"a must have square frontal slices (n, n, n3) to be inverted, got "
                         f"shape {tuple(a.shape)}.")
    t = resolve_transform(transform, a.shape[-1])
    if a.size == 0:  # the inverse of a 0 × 0 × n3 tensor is itself
        return a
    inv, n_nonfinite, singular = _inverse(a, t.matrix, kind=t.kind)
    report_nonfinite(n_nonfinite, "a")
    if not is_traced(singular):
        bad = np.flatnonzero(np.asarray(singular))
        if bad.size:
            raise ValueError(f"a is singular to working precision: transformed frontal "
                             f"slice(s) {bad.tolist()} (of {singular.shape[0]}) have condition "
                             f"number >= 1/eps, so the t-inverse does not exist.")
    return inv


@functools.partial(jax.jit, static_argnames=("kind",))
def _inverse(a, matrix, *, kind):
    t = Transform(kind, matrix)
    hat = to_transform_domain(a, t)
    inv = jnp.linalg.inv(hat)
    # 1-norm condition number of each slice: past 1/eps the inverse carries no digits.
    cond = (jnp.max(jnp.sum(jnp.abs(hat), axis=-2), axis=-1)
            * jnp.max(jnp.sum(jnp.abs(inv), axis=-2), axis=-1))
    eps = jnp.finfo(a.dtype).eps
    singular = ~(jnp.isfinite(cond) & (cond * eps < 1))
    return (from_transform_domain(inv, a.shape[-1], t).astype(a.dtype), count_nonfinite(a),
            singular)


def norm(a, ord: Literal["fro", "spectral"] = "fro", *,
         transform: TransformLike = "fft") -> jax.Array:
    """Norm of a third-order tensor ``(n1, n2, n3)``.

    ``ord="fro"``: the Frobenius norm ``‖A‖_F``. ``ord="spectral"``: the tensor spectral norm
    ``‖A‖ = max_k σ_max(L(A)_k)`` (the operator norm of the t-product map ``B ↦ A * B``; for the
    FFT it is the spectral norm of ``bcirc(A)``; Lu et al. 2019). Both are computed on ``A``
    divided by a power of two near its largest entry, so they neither overflow nor underflow
    for entries anywhere in the floating range.

    Example:
      >>> import tensorfact as tfa
      >>> eye = tfa.tubal.identity(3, 4)
      >>> round(float(tfa.tubal.norm(eye)), 4), round(float(tfa.tubal.norm(eye, "spectral")), 4)
      (1.7321, 1.0)
    """
    a = check_tensor(a, "a")
    ord = check_choice(ord, ("fro", "spectral"), "ord")
    if ord == "fro":
        return safe_norm(a)
    t = resolve_transform(transform, a.shape[-1])
    if a.size == 0:  # the operator norm of a map from or to a zero-dimensional space
        return jnp.zeros((), a.dtype)
    return _spectral_norm(a, t.matrix, kind=t.kind)


@functools.partial(jax.jit, static_argnames=("kind",))
def _spectral_norm(a, matrix, *, kind):
    scale = jax.lax.stop_gradient(pow2_scale(a))
    s = jnp.linalg.svd(to_transform_domain(a / scale, Transform(kind, matrix)), compute_uv=False)
    return (jnp.max(s) * scale).astype(a.dtype)
