"""Gradient descent on a factorization ``X = L Rᵀ`` (or ``L Lᵀ``): the engine shared by matrix
sensing (:func:`tensorfact.factorize_gd`) and its tubal counterpart
(:func:`tensorfact.tubal.factorize_gd`), and the info type they return.

A family supplies the factor shapes and two traceable functions of the factors: ``dense`` (the
product ``X``) and ``spectrum`` (its singular values, or singular-tube norms, decreasing). The
engine owns everything else: the argument checks, the observation models and their loss, the
normalisation that makes the fit scale-equivariant, the default step, the Optax loop (one
``lax.scan``), the per-step record and the non-finite report.

Observation models, both normalised so that ``E L = ½‖X − X*‖²_F`` (Gaussian ``A_i``, or
entries observed uniformly at random) and step sizes depend neither on ``N``, ``p`` nor the
size of ``X``:

* measurements ``y_i = ⟨A_i, X*⟩``: ``L = 1/(2N) Σ_i (⟨A_i, X⟩ − y_i)²``;
* observed entries (``a=None``, ``mask`` True where observed):
  ``L = 1/(2p) Σ_Ω (X_ij… − Y_ij…)²`` with ``p = |Ω| / size``.

Scale. The fit runs on ``y / ŝ`` with ``ŝ`` the estimate of ``‖X*‖_F`` (``‖y‖/√N`` for
measurements, ``‖P_Ω(Y)‖_F/√p`` for entries, computed without overflow), so that the
normalised target has ``‖X*‖_F ≈ 1``, and multiplies the factors by ``√ŝ`` at the end.
``init_scale``, ``learning_rate`` and a custom optimizer act on this normalised problem, which
is the same for ``c·y`` as for ``y``: ``fit(c·y) = √c·fit(y)`` factor-wise (up to rounding) and
the relative errors are the same for data of any magnitude, 1e-30 to 1e30 in float32. (Unlike
the ALS and ADMM fits, gradient descent from a fixed ``init_scale`` is not homogeneous, so the
scale is the estimate itself, not a power of two near it.)
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from tensorfact._checks import (as_float_array, check_key, check_nonneg_number,
                                check_optimizer_args, check_positive_int, count_nonfinite,
                                is_traced, report_nonfinite)
from tensorfact._numerics import resolve_precision, safe_divide, safe_norm
from tensorfact.decomposition._loop import FitInfo

__all__ = ["GDInfo", "DEFAULT_LEARNING_RATE", "DEFAULT_RANK_TOL", "check_fit_args",
           "check_rank_tol", "check_measurements", "check_x_true", "gaussian", "measure",
           "measure_dense",
           "data_loss", "product_spectrum", "rank_from_norms", "descend", "report"]

#: Default SGD step of the normalised loss: ``0.2 / ŝ`` (halved for a symmetric fit, whose
#: gradient is twice as large), with ``ŝ`` the ``‖X*‖_F`` estimate; a family may also bound it
#: by the norm of the initial product (``init_bounds_step``), so that a large ``init_scale``
#: does not diverge.
DEFAULT_LEARNING_RATE = 0.2
#: Default relative threshold ``τ`` of the effective rank: singular values (tube norms) above
#: ``τ`` times the largest count.
DEFAULT_RANK_TOL = 1e-2


class GDInfo(NamedTuple):
    """Diagnostics of a gradient-descent factorization (``return_info=True``): the four fields
    of :class:`~tensorfact.FitInfo`, then the per-step record. Entry ``t`` of every per-step
    field describes the iterate after step ``t + 1``, so the last one is the returned result.

    Attributes:
      n_iter: number of steps run (always the ``n_iter`` requested).
      errors: ``(n_iter,)`` relative error on the data after each step: ``‖A(X) − y‖ / ‖y‖``
        for measurements, ``‖P_Ω(X − Y)‖_F / ‖P_Ω(Y)‖_F`` for observed entries.
      rel_error: the same for the returned result (``errors[-1]``).
      converged: always False: gradient descent runs exactly ``n_iter`` steps (there is no
        stopping test).
      losses: ``(n_iter,)`` the loss minimised, after each step.
      true_errors: ``(n_iter,)`` ``‖X − X*‖_F / ‖X*‖_F`` when ``x_true`` is given (the test
        error, on every entry), else NaN.
      ranks: ``(n_iter,)`` int32 effective rank at the relative tolerance ``rank_tol``.
      spectra: ``(n_iter, q)`` the singular values of ``X`` (the singular-tube norms of a tubal
        ``X``), decreasing, ``q = min(n1, n2, rank)``.
    """

    n_iter: jax.Array
    errors: jax.Array
    rel_error: jax.Array
    converged: jax.Array
    losses: jax.Array
    true_errors: jax.Array
    ranks: jax.Array
    spectra: jax.Array


assert GDInfo._fields[:4] == FitInfo._fields  # the one info convention (docs/glossary.md)


# -- argument checks -------------------------------------------------------------------------

def check_rank_tol(tol, name: str = "rank_tol"):
    """``τ ∈ [0, 1)`` as a float (traced values pass)."""
    if is_traced(tol):
        return tol
    check_nonneg_number(tol, name)
    if not float(tol) < 1:
        raise ValueError(f"{name} must be in [0, 1), got {tol!r}.")
    return float(tol)


def check_fit_args(rank, n_iter, key, init_scale, optimizer, learning_rate, rank_tol):
    """The checks every gradient-descent fit makes; returns ``(rank, n_iter, rank_tol)``."""
    rank = check_positive_int(rank, "rank")
    n_iter = check_positive_int(n_iter, "n_iter")
    check_key(key, "for the random initialisation")
    check_nonneg_number(init_scale, "init_scale")
    check_optimizer_args(optimizer, learning_rate)
    return rank, n_iter, check_rank_tol(rank_tol)


def check_measurements(y, a, shape_names: str):
    """``y (N,)`` and sensing arrays ``a (N, *shape)``; ``shape_names`` reads e.g. "m, n"."""
    ndim = 1 + len(shape_names.split(","))
    a = as_float_array(a, "a", nonempty=True)
    y = as_float_array(y, "y")
    if a.ndim != ndim:
        raise ValueError(f"a must have shape (N, {shape_names}), got {tuple(a.shape)}.")
    if y.ndim != 1 or y.shape[0] != a.shape[0]:
        raise ValueError(f"y must have shape ({a.shape[0]},) to match a of shape "
                         f"{tuple(a.shape)}, got {tuple(y.shape)}.")
    return y, a


def check_x_true(x_true, shape):
    """``x_true`` as an array of the model's shape (or None)."""
    if x_true is None:
        return None
    x_true = as_float_array(x_true, "x_true")
    if tuple(x_true.shape) != tuple(shape):
        raise ValueError(f"x_true must have shape {tuple(shape)}, got {tuple(x_true.shape)}.")
    return x_true


def gaussian(key, shape, n_measurements, dtype, shape_names: str):
    """``n_measurements`` i.i.d. ``N(0, 1)`` sensing arrays of ``shape``, after the checks."""
    check_key(key, "to draw measurements")
    shape = tuple(shape)
    if len(shape) != len(shape_names.split(",")):
        raise ValueError(f"shape must be ({shape_names}), got {shape!r}.")
    shape = tuple(check_positive_int(s, f"shape[{i}]") for i, s in enumerate(shape))
    n_measurements = check_positive_int(n_measurements, "n_measurements")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype, got {dtype!r}.")
    return jax.random.normal(key, (n_measurements, *shape), dtype)


# -- the loss and the spectrum ---------------------------------------------------------------

def measure_dense(a, x, precision="highest"):
    """``y_i = ⟨A_i, X⟩`` for a dense ``x`` (a contraction over all of ``x``'s axes)."""
    return jnp.tensordot(a, x, axes=x.ndim, precision=resolve_precision(precision))


def measure(a, x, shape_names: str, precision="highest"):
    """:func:`measure_dense` after the checks of the public ``measure`` functions (``x`` is
    dense; ``shape_names`` reads e.g. "m, n")."""
    a = as_float_array(a, "a")
    x = as_float_array(x, "x")
    if a.ndim != 1 + len(shape_names.split(",")):
        raise ValueError(f"a must have shape (N, {shape_names}), got {tuple(a.shape)}.")
    if tuple(x.shape) != tuple(a.shape[1:]):
        raise ValueError(f"x must have shape {tuple(a.shape[1:])} to match a, got "
                         f"{tuple(x.shape)}.")
    return measure_dense(a, x, precision)


def data_loss(x, y, a, mask, precision="highest"):
    """The normalised loss of a dense ``x`` (module docstring); ``y`` is zero off ``mask``."""
    if a is not None:
        r = measure_dense(a, x, precision) - y
        return 0.5 * jnp.mean(r * r)
    d = x - y
    if mask is None:
        return 0.5 * jnp.sum(d * d)
    # size / (2 |Ω|) Σ_Ω d²; where() instead of a product so NaN placeholders cannot leak.
    d = jnp.where(mask, d, 0)
    n_obs = jnp.maximum(jnp.sum(mask), 1).astype(x.dtype)
    return 0.5 * (x.size / n_obs) * jnp.sum(d * d)


def product_spectrum(la, lb, weights, symmetric: bool):
    """``sqrt(Σ_k w_k σ_j(L_k R_kᴴ)²)`` over slices ``k`` of factors ``la (k, n1, R)`` and
    ``lb (k, n2, R)``, decreasing, for ``j < min(n1, n2, R)``: the singular values of a matrix
    product (one slice, ``w = 1``) or the singular-tube norms of a tubal one.

    Computed from the thin factors: ``σ(L Lᴴ) = σ(L)²``; otherwise ``σ(L Rᴴ) = σ(R_a R_bᴴ)`` for
    ``L = Q_a R_a``, ``R = Q_b R_b`` (two QRs and an ``R × R`` SVD, never the dense product).
    """
    if symmetric:
        s = jnp.square(jnp.linalg.svd(la, compute_uv=False))
    else:
        _, ra = jnp.linalg.qr(la)
        _, rb = jnp.linalg.qr(lb)
        core = jnp.matmul(ra, jnp.conj(jnp.swapaxes(rb, -1, -2)),
                          precision=jax.lax.Precision.HIGHEST)
        s = jnp.linalg.svd(core, compute_uv=False)
    q = min(la.shape[-2], lb.shape[-2], la.shape[-1])
    s = s[..., :q]
    return jnp.sqrt(jnp.sum(weights[:, None] * jnp.square(s), axis=-2))


def rank_from_norms(norms, tol):
    """Number of ``norms`` (decreasing) above ``tol`` times the first; 0 for all zeros."""
    return jnp.sum(norms > tol * norms[..., :1], axis=-1).astype(jnp.int32)


# -- the fit -----------------------------------------------------------------------------------

def _relative(numer, denom):
    """``numer / denom`` for norms, with ``x / 0 = inf`` for ``x > 0`` and ``0 / 0 = 0``: a
    residual relative to zero data is not a perfect fit."""
    return jnp.where(denom > 0, safe_divide(numer, denom), jnp.where(numer > 0, jnp.inf, 0))


def _data_scale(estimate):
    """``(s, √s)``: the ``‖X*‖_F`` estimate, or 1 when it is zero or not finite."""
    ok = jnp.isfinite(estimate) & (estimate > 0)
    scale = jnp.where(ok, estimate, 1)
    return scale, jnp.sqrt(scale)


def descend(y, a, mask, x_true, key, init_scale, learning_rate, rank_tol, *,
            factor_shapes, dense: Callable, spectrum: Callable, optimizer, n_iter: int,
            symmetric: bool, precision, init_bounds_step: bool = False):
    """Gradient descent from ``α · N(0, 1)`` factors of ``factor_shapes`` (the first only when
    ``symmetric``) on the loss of ``dense(factors)``; traceable (call it inside a jitted core).

    ``learning_rate`` is NaN for the default step (see :data:`DEFAULT_LEARNING_RATE`; with
    ``init_bounds_step`` the norm of the initial product bounds it too). Returns
    ``(factors, info, counts)``: the factors scaled back to the data, a :class:`GDInfo` and the
    non-finite counts of ``y``, ``a`` and ``x_true`` for :func:`report`.
    """
    dtype = y.dtype
    counts = (count_nonfinite(y, mask), jnp.zeros((), jnp.int32) if a is None else
              count_nonfinite(a), jnp.zeros((), jnp.int32) if x_true is None else
              count_nonfinite(x_true))
    if mask is not None:
        y = jnp.where(mask, y, 0)                        # P_Ω(Y); drops NaN placeholders
    # ŝ ≈ ‖X*‖_F: E‖y‖²/N = ‖X*‖²_F; E‖P_Ω(Y)‖²/p = ‖X*‖²_F.
    if a is not None:
        n_data = jnp.asarray(y.shape[0], dtype)
        estimate = safe_norm(y) / jnp.sqrt(n_data)
    else:
        n_data = (jnp.asarray(y.size, dtype) if mask is None else
                  jnp.maximum(jnp.sum(mask), 1).astype(dtype))
        estimate = safe_norm(y) * jnp.sqrt(y.size / n_data)
    scale, root = _data_scale(estimate)
    y = y / scale
    if x_true is not None:
        x_true = x_true / scale
        norm_true = safe_norm(x_true)
    norm_y = safe_norm(y)
    # ‖residual‖ from the loss: 2N·L for measurements, 2|Ω|·L/size for entries.
    resid_sq_per_loss = 2 * n_data if a is not None else 2 * n_data / y.size

    keys = jax.random.split(key)
    params = tuple(init_scale * jax.random.normal(k, shape, dtype)
                   for k, shape in zip(keys, factor_shapes[:1] if symmetric else factor_shapes))

    def loss_fn(p):
        return data_loss(dense(p), y, a, mask, precision)

    if optimizer is None:
        size = jnp.where(estimate > 0, 1, 0).astype(dtype)     # the normalised estimate
        if init_bounds_step:
            # The Hessian of the loss scales with ‖X‖: a large initial product lowers the step.
            size = jnp.maximum(size, safe_norm(dense(params)))
        default = safe_divide(DEFAULT_LEARNING_RATE, size)
        default = jnp.where(size > 0, default, DEFAULT_LEARNING_RATE)  # all zero: nothing moves
        default = default / 2 if symmetric else default
        optimizer = optax.sgd(jnp.where(jnp.isnan(learning_rate), default, learning_rate))

    def record(p, loss):
        p = jax.lax.stop_gradient(p)
        err = _relative(jnp.sqrt(jnp.maximum(resid_sq_per_loss * loss, 0)), norm_y)
        if x_true is None:
            true_err = jnp.asarray(jnp.nan, dtype)
        else:
            true_err = _relative(safe_norm(dense(p) - x_true), norm_true)
        norms = spectrum(p).astype(dtype)
        return loss, err.astype(dtype), true_err, rank_from_norms(norms, rank_tol), norms

    def step(carry, _):
        p, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), record(p, loss)

    (params, _), before = jax.lax.scan(step, (params, optimizer.init(params)), None,
                                       length=n_iter)
    # Entry t of the scan describes the iterate before step t; shift by one so that it
    # describes the iterate after it, ending with the returned result.
    last = record(params, loss_fn(params))
    losses, errors, true_errors, ranks, spectra = (
        jnp.concatenate([b[1:], l[None]]) for b, l in zip(before, last))
    info = GDInfo(jnp.asarray(n_iter, jnp.int32), errors, errors[-1], jnp.zeros((), bool),
                  losses * scale * scale, true_errors, ranks, spectra * scale)
    return tuple(p * root for p in params), info, counts


def report(counts, *, entries: bool):
    """Raises for non-finite ``y``, ``a`` or ``x_true`` after an eager call."""
    n_y, n_a, n_true = counts
    report_nonfinite(n_y, "y (observed entries)" if entries else "y")
    report_nonfinite(n_a, "a")
    report_nonfinite(n_true, "x_true")

