"""The fit loop shared by the iterative decompositions, and the info they return."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from tensorfact._checks import is_zero
from tensorfact.metrics import relative_error  # noqa: F401  (re-exported for the fits)


class FitInfo(NamedTuple):
    """Diagnostics of an iterative fit (returned with ``return_info=True``).

    Attributes:
      n_iter: number of iterations run.
      errors: relative error after each iteration, length ``n_iter`` as requested (a static
        shape); entries past the last iteration run are NaN. These are computed cheaply from
        the factors, so below about ``sqrt(eps)`` (3e-4 in float32) they are rounding noise.
      rel_error: ``‖x − x̂‖ / ‖x‖`` of the returned fit, computed from the dense
        reconstruction (on the observed entries when a mask was given).
      converged: whether the stopping test ``|e_{k-1} − e_k| < tol`` was met.
    """

    n_iter: jax.Array
    errors: jax.Array
    rel_error: jax.Array
    converged: jax.Array


def is_fixed_length(tol) -> bool:
    """A concrete ``tol=0`` (Python, NumPy or JAX scalar) asks for exactly ``n_iter``
    iterations (a differentiable scan)."""
    return is_zero(tol)


def iterate(step: Callable[[Any], tuple[Any, jax.Array]], state, *, n_iter: int, tol,
            stop: str = "change"):
    """Runs ``state, err = step(state)`` until ``n_iter`` steps or the stopping rule holds:
    ``|Δerr| < tol`` (``stop="change"``, for an objective) or ``err < tol`` (``stop="below"``, for
    a residual that must vanish, as in augmented-Lagrangian methods).

    With a literal ``tol == 0`` the loop is a ``lax.scan`` of fixed length, which reverse-mode
    autodiff can traverse; otherwise it is a ``lax.while_loop`` whose stopping test runs on
    the device, so a fit with a tolerance still compiles to one XLA program.

    Returns ``(state, n_done, errors, converged)``.
    """
    if is_fixed_length(tol):
        state, errors = lax.scan(lambda s, _: step(s), state, None, length=n_iter)
        converged = jnp.zeros((), bool)
        return state, jnp.asarray(n_iter, jnp.int32), errors, converged

    probe = jax.eval_shape(step, state)[1]
    errors0 = jnp.full((n_iter,), jnp.nan, probe.dtype)

    def cond(carry):
        _, i, _, _, done = carry
        return (i < n_iter) & ~done

    def body(carry):
        state, i, errors, prev, _ = carry
        state, err = step(state)
        done = (err < tol) if stop == "below" else (jnp.abs(prev - err) < tol)
        return state, i + 1, errors.at[i].set(err), err, done

    carry = (state, jnp.zeros((), jnp.int32), errors0, jnp.asarray(jnp.inf, probe.dtype),
             jnp.zeros((), bool))
    state, n_done, errors, _, converged = lax.while_loop(cond, body, carry)
    return state, n_done, errors, converged


def error_from_norms(norm_x_sq, inner, approx_norm_sq):
    """Relative error from ``‖x‖², ⟨x, x̂⟩, ‖x̂‖²`` without forming ``x̂`` (clamped at 0)."""
    sq = jnp.maximum(norm_x_sq - 2 * inner + approx_norm_sq, 0.0)
    return jnp.sqrt(sq / jnp.maximum(norm_x_sq, jnp.finfo(jnp.result_type(norm_x_sq)).tiny))


def refine_error(estimate, exact: Callable[[], jax.Array]):
    """Replaces a norm-formula error estimate by the exact one where the formula is unreliable.

    ``‖x‖² − 2⟨x, x̂⟩ + ‖x̂‖²`` cancels catastrophically: it cannot resolve relative errors
    below about ``sqrt(eps)`` (3e-4 in float32), and a tolerance test on it would stop a fit
    that is still improving. Below ``sqrt(1000·eps)`` the exact error is computed from the
    dense reconstruction instead (one extra pass over the data, only in that regime).
    """
    threshold = jnp.sqrt(1e3 * jnp.finfo(estimate.dtype).eps).astype(estimate.dtype)
    return lax.cond(estimate < threshold, exact, lambda: estimate)
