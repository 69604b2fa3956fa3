"""Numerical building blocks shared by every layer: the one meaning of ``precision``, norms that
neither overflow nor give NaN gradients, and exact power-of-two rescaling.

* ``precision``: ``None`` is JAX's default everywhere (as in ``jax.lax`` and Flax: TF32 or
  bfloat16 passes for float32 matmuls on recent GPUs and TPUs). The decompositions, types and
  algebra default to ``"highest"`` (true float32) and say so in their signatures; the Flax
  layers default to ``None``, as Flax's do.
* Scale: a fit of ``x`` runs on ``x / 2^k`` with ``2^k`` near ``max |x|`` and scales the result
  back. Multiplying by a power of two is exact in binary floating point (barring underflow to
  subnormals), so ``fit(s·x) = s·fit(x)`` up to the rounding of ``s·x`` itself, and squared
  norms, Gram matrices and error estimates never under- or overflow on data of any
  representable magnitude (1e-30 … 1e30 in float32).
* Safe norms: ``‖v‖`` is not differentiable at ``v = 0`` (the derivative of ``sqrt`` is
  infinite there, and ``0·∞`` gives NaN through the chain rule). :func:`safe_norm` uses the
  double-``where`` trick so the gradient at zero is zero, and computes the norm of a rescaled
  vector so that entries of 1e20 do not overflow the square.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["resolve_precision", "PRECISIONS", "pow2_scale", "pow2_normalize", "pow2_restore",
           "pow2_sqrt", "safe_norm", "safe_sqrt", "safe_divide"]

#: The strings ``precision=`` accepts (besides ``None`` and a ``jax.lax.Precision``).
PRECISIONS = ("default", "high", "highest")


def resolve_precision(precision):
    """``precision`` as XLA takes it: ``None`` stays ``None`` (JAX's default), the strings of
    :data:`PRECISIONS` become :class:`jax.lax.Precision` values, and a ``Precision`` (or a pair
    of them, one per operand) passes through. Anything else is a ``ValueError`` naming
    ``precision``."""
    if precision is None or isinstance(precision, lax.Precision):
        return precision
    if isinstance(precision, str):
        if precision.lower() not in PRECISIONS:
            raise ValueError(f"precision must be None, one of {list(PRECISIONS)} or a "
                             f"jax.lax.Precision, got {precision!r}.")
        return lax.Precision(precision.lower())
    if isinstance(precision, tuple) and len(precision) == 2:
        return tuple(resolve_precision(p) for p in precision)
    raise ValueError(f"precision must be None, one of {list(PRECISIONS)} or a jax.lax.Precision, "
                     f"got {precision!r}.")


def pow2_scale(x, where=None) -> jax.Array:
    """The power of two ``2^k ≤ max |x| < 2^(k+1)`` (over the entries where ``where`` is True),
    or 1 when that maximum is zero or not finite; traceable.

    Dividing by it maps the largest entry into ``[1, 2)`` exactly (no rounding), so a fit can
    run on ``x / s`` and scale its result back by ``s``.
    """
    a = jnp.abs(x)
    if where is not None:
        a = jnp.where(where, a, 0)
    peak = jnp.max(a) if a.size else jnp.zeros((), a.dtype)
    ok = jnp.isfinite(peak) & (peak > 0)
    # peak = m·2^e with m in [0.5, 1): 2^(e−1) ≤ peak < 2^e, and 2^(e−1) is representable
    # even for the largest finite numbers
    _, exponent = jnp.frexp(jnp.where(ok, peak, 1))
    return jnp.where(ok, jnp.ldexp(jnp.ones((), x.dtype), exponent - 1), 1).astype(x.dtype)


def safe_norm(x, axis=None, keepdims: bool = False) -> jax.Array:
    """Euclidean norm along ``axis`` that is finite for entries up to the dtype's maximum and
    has a zero (not NaN) gradient where the norm is zero."""
    x = jnp.asarray(x)
    peak = jnp.max(jnp.abs(x), axis=axis, keepdims=True) if x.size else jnp.zeros((), x.dtype)
    peak = lax.stop_gradient(peak)
    scale = jnp.where((peak > 0) & jnp.isfinite(peak), peak, 1)  # NaN and Inf pass through
    y = x / scale
    sq = jnp.sum(y * y, axis=axis, keepdims=True)
    zero = sq == 0  # False for NaN, so a NaN entry gives a NaN norm
    norm = jnp.where(zero, 0, jnp.sqrt(jnp.where(zero, 1, sq))) * scale
    if not keepdims:
        norm = jnp.squeeze(norm, axis=axis) if axis is not None else norm.reshape(())
    return norm


def safe_divide(numer, denom) -> jax.Array:
    """``numer / denom`` where ``denom ≠ 0`` and 0 elsewhere, with finite gradients on both
    sides (the ``where`` is applied to the denominator before dividing)."""
    nonzero = denom != 0
    return jnp.where(nonzero, numer / jnp.where(nonzero, denom, 1), 0)


def safe_sqrt(sq) -> jax.Array:
    """``sqrt(sq)`` for ``sq ≥ 0`` with a zero (not infinite) derivative at 0; a negative ``sq``
    (rounding in a difference of squares) gives 0, and NaN stays NaN (a diverged fit must not
    read as a perfect one)."""
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1)), jnp.where(sq == sq, 0, sq))


# A chain of d factors multiplies d scales: cores of entries 1e10 give a norm of 1e50 in the
# middle of a contraction even when the result is representable. The types therefore contract
# normalised factors and carry the powers of two apart, as an int32 exponent
# (``value = mantissa · 2^exponent``). Dividing by a power of two is exact, and the scales are
# constants to autodiff (a multilinear product of normalised factors times the scales is the same
# function), so gradients are unchanged.


def pow2_normalize(value):
    """``(value / 2^k, k)``: ``value`` rescaled exactly so that its largest entry lies in
    ``[1, 2)`` (by :func:`pow2_scale`), and the int32 exponent ``k`` taken out."""
    scale = lax.stop_gradient(pow2_scale(value))
    _, exponent = jnp.frexp(scale)  # scale = 0.5 · 2^exponent
    return value / scale, exponent.astype(jnp.int32) - 1


def pow2_restore(mantissa, exponent):
    """``mantissa · 2^exponent`` (``jnp.ldexp``: representable whenever the product is)."""
    return jnp.ldexp(mantissa, exponent)


def pow2_sqrt(mantissa, exponent):
    """``sqrt(max(mantissa, 0) · 2^exponent)`` without forming the (possibly unrepresentable)
    square ``mantissa · 2^exponent``; the gradient at 0 is 0, and NaN stays NaN."""
    odd = exponent % 2  # exponent = 2q + odd with q = floor(exponent / 2)
    return pow2_restore(safe_sqrt(pow2_restore(mantissa, odd)), (exponent - odd) // 2)
