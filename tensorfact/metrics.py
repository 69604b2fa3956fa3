"""Error measures used by the fits and their tests."""

from __future__ import annotations

import jax.numpy as jnp

from tensorfact._checks import as_float_array, check_mask
from tensorfact._numerics import safe_divide, safe_norm

__all__ = ["relative_error", "fit"]


def relative_error(x, approx, mask=None):
    """``‖x − approx‖_F / ‖x‖_F``, over the observed entries only when ``mask`` is given.

    Both norms are taken of rescaled arrays (:func:`tensorfact._numerics.safe_norm`), so the
    ratio is right for data of any representable magnitude (1e-30 … 1e30 in float32) and its
    derivative is finite where ``approx`` equals ``x``. ``x = 0`` gives 0 if ``approx`` is 0
    too and ``inf`` otherwise.

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> x = jnp.array([3e20, 4e20])
      >>> round(float(tfa.relative_error(x, jnp.array([3e20, 0.0]))), 6)
      0.8
    """
    x = as_float_array(x, "x")
    approx = as_float_array(approx, "approx")
    if x.shape != approx.shape:
        raise ValueError(f"approx must have the shape of x {tuple(x.shape)}, got "
                         f"{tuple(approx.shape)}.")
    mask = check_mask(mask, x.shape)
    diff = x - approx
    if mask is not None:
        diff = jnp.where(mask, diff, 0)
        x = jnp.where(mask, x, 0)
    norm_x = safe_norm(x)
    norm_diff = safe_norm(diff)
    return jnp.where(norm_diff > 0, safe_divide(norm_diff, norm_x) + jnp.where(
        norm_x > 0, 0, jnp.inf), 0)


def fit(x, approx, mask=None):
    """``1 − relative_error(x, approx)``: 1 is a perfect fit (TensorLy's convention), 0 no
    better than the zero tensor; over the observed entries when ``mask`` is given.

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> x = jnp.array([3e-30, 4e-30])
      >>> round(float(tfa.fit(x, jnp.array([3e-30, 0.0]))), 6)
      0.2
    """
    return 1.0 - relative_error(x, approx, mask)
