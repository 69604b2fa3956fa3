"""Tubal factors: a third-order tensor ``X = L * Rᵀ`` (or ``L * Lᵀ``) held as its t-product
factors, the result of :func:`tensorfact.tubal.factorize_gd`."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from tensorfact import _tproduct
from tensorfact._numerics import resolve_precision, safe_norm, safe_sqrt
from tensorfact.tensors._base import FactorizedTensor, as_leaf


@jax.tree_util.register_pytree_node_class
class TubalFactors(FactorizedTensor):
    """A tensor ``X = L * Rᵀ`` held as its t-product factors (``X = L * Lᵀ`` when symmetric).

    In the transform domain every frontal slice is a matrix product, ``L(X)_k = L(L)_k
    L(R)_kᴴ`` (Kilmer & Martin 2011), so ``R`` (the inner size) bounds the tubal rank.

    Args:
      left: ``L`` of shape ``(n1, R, n3)``.
      right: ``R`` of shape ``(n2, R, n3)``, or ``None`` for the symmetric ``X = L * Lᵀ``.
      transform: the transform along the tubes that defines the t-product: ``"fft"`` (Kilmer &
        Martin's t-product), ``"dct"``, an invertible ``n3 × n3`` matrix or a
        :class:`tensorfact.tubal.Transform`.

    A ``jax.vmap``-ed fit returns factors with leading batch axes; ``shape`` and ``rank``
    describe one tensor and the methods map over the batch. A transform matrix is a leaf (it
    may be traced) but not a parameter: no gradient flows into it, so an Optax step on
    ``TubalFactors`` leaves it unchanged.

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> f = tfa.TubalFactors(jnp.ones((4, 2, 3)), jnp.ones((5, 2, 3)))
      >>> f.shape, f.rank, f.n_params
      ((4, 5, 3), 2, 54)
      >>> x = tfa.tubal.product(f.left, tfa.tubal.transpose(f.right))
      >>> bool(jnp.allclose(f.to_dense(), x))
      True
    """

    _leaves = ("left", "right", "matrix")
    _static = ("kind",)

    def __init__(self, left, right=None, transform: _tproduct.TransformLike = "fft"):
        left = as_leaf(left, "left")
        if left.ndim != 3:
            raise ValueError(f"left must have shape (n1, R, n3), got {tuple(left.shape)}.")
        if right is not None:
            right = as_leaf(right, "right")
            if right.ndim != 3 or right.shape[1:] != left.shape[1:]:
                raise ValueError(f"right must have shape (n2, {left.shape[1]}, {left.shape[2]}) "
                                 f"to match left of shape {tuple(left.shape)}, got "
                                 f"{tuple(right.shape)}.")
        t = _tproduct.resolve_transform(transform, int(left.shape[2]))
        self._set(left=left, right=right, matrix=t.matrix, kind=t.kind)

    @property
    def symmetric(self) -> bool:
        """Whether this is ``L * Lᵀ``."""
        return self.right is None

    @property
    def transform(self) -> _tproduct.Transform:
        """The transform along the tubes."""
        return _tproduct.Transform(self.kind, self.matrix)

    @property
    def shape(self):
        right = self.left if self.right is None else self.right
        return (int(self.left.shape[-3]), int(right.shape[-3]), int(self.left.shape[-1]))

    @property
    def rank(self) -> int:
        """The inner size ``R`` (an upper bound on the tubal rank)."""
        return int(self.left.shape[-2])

    @property
    def n_params(self) -> int:
        """Stored scalars of the factors (``L`` only when symmetric; not the transform)."""
        return int(self.left.size) + (0 if self.right is None else int(self.right.size))

    def _mapped(self, fn):
        """``fn(left, right, transform)`` on one tensor, mapped over the leading batch axes."""
        batch = self.left.shape[:-3]
        matrix = self.matrix
        if matrix is not None:
            # stop_gradient: the transform is not a parameter (see the class docstring).
            matrix = jax.lax.stop_gradient(matrix)
            if batch:
                matrix = jnp.broadcast_to(matrix, batch + matrix.shape[-2:])
        kind = self.kind

        def one(left, right, matrix):
            return fn(left, right, _tproduct.Transform(kind, matrix))
        return _tproduct.map_batch(one, len(batch))(self.left, self.right, matrix)

    def transformed(self, *, precision="highest"):
        """``(L(L), L(R))`` in the transform domain, ``(..., k, n, R)`` each (``L(R)`` is
        ``L(L)`` when symmetric)."""
        return self._mapped(lambda left, right, t: factor_hats(left, right, t, precision))

    def to_dense(self, *, precision="highest"):
        """``L * Rᵀ``, computed slice-wise in the transform domain: ``X̂_k = L̂_k R̂_kᴴ``."""
        return _to_dense(self, precision=precision)

    def norm(self, *, precision="highest"):
        """``‖X‖_F`` from ``‖X̂_k‖²_F = tr(L̂_kᴴL̂_k (R̂_kᴴR̂_k)ᵀ)`` without the dense tensor (FFT,
        DCT), on factors rescaled by powers of two, so the result is finite whenever the norm is
        representable; a matrix transform densifies (its weights are exact only for orthogonal
        matrices)."""
        return _norm(self, precision=precision)


def factor_hats(left, right, t, precision="highest"):
    """``(L(L), L(R))`` of one pair of factors (``right=None``: symmetric)."""
    la = _tproduct.to_transform_domain(left, t, precision=precision)
    lb = la if right is None else _tproduct.to_transform_domain(right, t, precision=precision)
    return la, lb


def hat_product(la, lb, precision="highest"):
    """``L̂_k R̂_kᴴ`` for every transformed slice (the t-product with a t-transpose)."""
    return jnp.matmul(la, jnp.conj(jnp.swapaxes(lb, -1, -2)),
                      precision=resolve_precision(precision))


@functools.partial(jax.jit, static_argnames="precision")
def _to_dense(f: TubalFactors, *, precision):
    def one(left, right, t):
        x = hat_product(*factor_hats(left, right, t, precision), precision)
        return _tproduct.from_transform_domain(x, left.shape[-1], t).astype(left.dtype)
    return f._mapped(one)


@functools.partial(jax.jit, static_argnames="precision")
def _norm(f: TubalFactors, *, precision):
    if f.kind == "matrix":
        return f._mapped(lambda left, right, t: jnp.ldexp(*_dense_norm(left, right, t, precision)))
    prec = resolve_precision(precision)

    def one(left, right, t):
        (left, *rest), exponent = _tproduct.unit_scaled(left, *(() if right is None else (right,)))
        la, lb = factor_hats(left, rest[0] if rest else None, t, precision)
        ga = jnp.matmul(jnp.conj(jnp.swapaxes(la, -1, -2)), la, precision=prec)
        gb = jnp.matmul(jnp.conj(jnp.swapaxes(lb, -1, -2)), lb, precision=prec)
        per_slice = jnp.real(jnp.sum(ga * jnp.conj(gb), axis=(-2, -1)))
        w = _tproduct.frequency_weights(left.shape[-1], t.kind, per_slice.dtype)
        norm = safe_sqrt(jnp.sum(w * per_slice)).astype(left.dtype)
        # symmetric: X = L * Lᵀ carries the scale of L twice
        return jnp.ldexp(norm, exponent if rest else 2 * exponent)
    return f._mapped(one)


def _dense_norm(left, right, t, precision):
    (left, *rest), exponent = _tproduct.unit_scaled(left, *(() if right is None else (right,)))
    x = hat_product(*factor_hats(left, rest[0] if rest else None, t, precision), precision)
    dense = _tproduct.from_transform_domain(x, left.shape[-1], t)
    return safe_norm(dense).astype(left.dtype), exponent if rest else 2 * exponent
