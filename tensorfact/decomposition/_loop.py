"""The fit loop shared by the iterative decompositions, the defaults of its stopping rule, and
the info types the fits return.

The info family (see ``docs/glossary.md``): every ``info`` is a ``NamedTuple`` whose first four
fields are those of :class:`FitInfo` (``n_iter``, ``errors``, ``rel_error``, ``converged``), so
code written against :class:`FitInfo` reads any of them. A family with more to say adds fields
after these four: :class:`CPInfo` (component congruence and norms, the signs of a degenerate
CP fit). A new family adds its own type here, after the same four fields.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from tensorfact._checks import is_zero
from tensorfact._numerics import resolve_precision, safe_divide, safe_norm, safe_sqrt
from tensorfact.metrics import relative_error  # noqa: F401  (re-exported for the fits)

__all__ = ["DEFAULT_TOL", "DEFAULT_RESIDUAL_TOL", "FitInfo", "CPInfo", "cp_info",
           "component_congruence", "min_congruence", "iterate", "is_fixed_length",
           "error_from_norms", "relative_from_squares", "refine_error",
           "relative_error"]

#: Default ``tol`` of the fits of an objective (ALS, HALS, MU, HOOI, TR-ALS): stop when the
#: relative error changes by less than this between iterations. In float32 (eps ≈ 1.2e-7) it
#: means "until the error stops changing".
DEFAULT_TOL = 1e-8

#: Default ``tol`` of the splitting methods (ADMM/ALM): stop when the relative residual falls
#: below this. float32 cannot resolve much less than 1e-6 reliably.
DEFAULT_RESIDUAL_TOL = 1e-6


class FitInfo(NamedTuple):
    """Diagnostics of an iterative fit (returned with ``return_info=True``).

    Attributes:
      n_iter: number of iterations run.
      errors: relative error after each iteration, length ``n_iter`` as requested (a static
        shape); entries past the last iteration run are NaN. These are computed cheaply from
        the factors, so below about ``sqrt(eps)`` (3e-4 in float32) they are rounding noise
        unless the fit refines them (CP and Tucker do).
      rel_error: ``‖x − x̂‖ / ‖x‖`` of the returned fit, computed from the dense
        reconstruction (on the observed entries when a mask was given).
      converged: whether the stopping test was met (``|e_{k-1} − e_k| < tol`` for a fit of an
        objective, ``e_k < tol`` for a splitting method).
    """

    n_iter: jax.Array
    errors: jax.Array
    rel_error: jax.Array
    converged: jax.Array


class CPInfo(NamedTuple):
    """Diagnostics of a CP fit: the four fields of :class:`FitInfo`, then what shows whether the
    fit is degenerate.

    A rank-``R`` CP fit is *degenerate* when two or more components grow without bound while
    cancelling each other: the error keeps falling, ever more slowly, toward an infimum that no
    rank-``R`` tensor attains (Kruskal, Harshman & Lundy 1989; De Silva & Lim, SIMAX 2008).
    The signs are a component congruence near −1 and component norms far above ``‖x‖``;
    ``l2 > 0`` or a lower rank gives a fit that exists.

    Attributes:
      n_iter, errors, rel_error, converged: as in :class:`FitInfo`.
      min_congruence: the smallest congruence ``∏_n cos(a_nr, a_ns)`` over pairs of components
        ``r ≠ s`` (the cosine between the rank-one tensors; ``0`` for rank 1). Near ``−1``:
        degenerate.
      component_norms: ``‖w_r a_0r ∘ ⋯ ∘ a_{N-1,r}‖`` for each component ``r`` (length ``R``).
    """

    n_iter: jax.Array
    errors: jax.Array
    rel_error: jax.Array
    converged: jax.Array
    min_congruence: jax.Array
    component_norms: jax.Array


def cp_info(fit: FitInfo, weights, factors) -> CPInfo:
    """:class:`CPInfo` of a fitted CP tensor ``[[weights; factors]]`` (traceable; the norms are
    safe at zero columns and do not overflow)."""
    column_norms = [safe_norm(a, axis=0) for a in factors]
    component_norms = jnp.abs(weights)
    for norms in column_norms:
        component_norms = component_norms * norms
    return CPInfo(*fit, min_congruence(factors), component_norms)


def component_congruence(factors_a, factors_b, precision="highest"):
    """The ``R_a × R_b`` matrix of congruences ``∏_n cos(a_nr, b_ns)`` between the components
    of two CP models of the same shape (the cosine between their rank-one tensors); a zero
    column has cosine 0 with everything. Traceable; the cosines are of unit columns, so no
    scale over- or underflows."""
    precision = resolve_precision(precision)
    cosines = None
    for a, b in zip(factors_a, factors_b):
        unit_a = safe_divide(a, safe_norm(a, axis=0))
        unit_b = safe_divide(b, safe_norm(b, axis=0))
        c = jnp.matmul(unit_a.T, unit_b, precision=precision)
        cosines = c if cosines is None else cosines * c
    return cosines


def min_congruence(factors, precision="highest"):
    """The smallest :func:`component_congruence` between two different components of one CP
    model (``0`` for rank 1): near ``−1``, two components cancel (a degenerate fit)."""
    cosines = component_congruence(factors, factors, precision)
    rank = cosines.shape[0]
    if rank == 1:
        return jnp.zeros((), cosines.dtype)
    off_diagonal = ~jnp.eye(rank, dtype=bool)
    return jnp.min(jnp.where(off_diagonal, cosines, jnp.inf))


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
    """Relative error from ``‖x‖², ⟨x, x̂⟩, ‖x̂‖²`` without forming ``x̂`` (clamped at 0).

    The square root has a zero (not infinite) derivative where the error is 0, so ``jax.grad``
    through a fit of exact data stays finite. The fits call it on data scaled to
    ``max |x| ≈ 1`` (:func:`tensorfact._numerics.pow2_scale`), where the squares cannot under- or
    overflow.
    """
    return relative_from_squares(norm_x_sq - 2 * inner + approx_norm_sq, norm_x_sq)


def relative_from_squares(err_sq, norm_x_sq):
    """``sqrt(max(err_sq, 0) / norm_x_sq)`` (0 where ``norm_x_sq`` is 0), with a finite
    derivative where the error is 0."""
    return safe_sqrt(safe_divide(jnp.maximum(err_sq, 0.0), norm_x_sq))


def refine_error(estimate, exact: Callable[[], jax.Array]):
    """Replaces a norm-formula error estimate by the exact one where the formula is unreliable.

    ``‖x‖² − 2⟨x, x̂⟩ + ‖x̂‖²`` cancels catastrophically: it cannot resolve relative errors
    below about ``sqrt(eps)`` (3e-4 in float32), and a tolerance test on it would stop a fit
    that is still improving. Below ``sqrt(1000·eps)`` the exact error is computed from the
    dense reconstruction instead (one extra pass over the data, only in that regime).
    """
    threshold = jnp.sqrt(1e3 * jnp.finfo(estimate.dtype).eps).astype(estimate.dtype)
    return lax.cond(estimate < threshold, exact, lambda: estimate)
