"""Error measures used by the fits and their tests."""

from __future__ import annotations

import jax.numpy as jnp

from tensorfact._checks import as_float_array, check_mask

__all__ = ["relative_error", "fit"]


def relative_error(x, approx, mask=None):
    """``‖x − approx‖_F / ‖x‖_F``, over the observed entries only when ``mask`` is given."""
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
    norm_x = jnp.linalg.norm(x.ravel())
    return jnp.linalg.norm(diff.ravel()) / jnp.maximum(norm_x, jnp.finfo(diff.dtype).tiny)


def fit(x, approx, mask=None):
    """``1 − relative_error(x, approx)``: 1 is a perfect fit (TensorLy's convention)."""
    return 1.0 - relative_error(x, approx, mask)
