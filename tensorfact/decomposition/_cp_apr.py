"""CP-APR: nonnegative CP of count data under the Poisson likelihood, by multiplicative updates
(Chi & Kolda, "On tensors, sparsity, and nonnegative factorizations", SIMAX 33(4), 2012).

The model ``m = [[λ; A_0, …, A_{N-1}]]`` has nonnegative factors whose columns sum to one and
minimises ``Σ_i m_i − x_i log m_i`` (the Poisson loss of :func:`tensorfact.gcp`, summed). Each
outer iteration visits every mode ``n`` and solves the subproblem in ``B = A_n Λ`` by up to
``inner_iter`` multiplicative updates

    Φ = (X_(n) ⊘ max(B Πᵀ, ε)) Π,    B ← B ⊛ Φ,

with ``Π`` the Khatri–Rao product of the other factors (``Φ`` is an MTTKRP of ``x ⊘ m``), until
the subproblem's KKT violation ``max |min(B, 1 − Φ)|`` is below ``tol``; then ``λ = 1ᵀB`` and
``A_n = B Λ⁻¹``. Entries of ``A_n`` that are (nearly) zero while ``Φ > 1`` are inadmissible
zeros that a multiplicative update cannot leave: they are "scooched" by ``κ`` first (the
paper's §4.3, ``κ = 0.01``, ``κ_tol = 1e-10``). The fit stops when every mode met the KKT test
at its first inner update, or after ``n_iter`` outer iterations. pyttb's ``cp_apr(algorithm=
"mu")`` and the Tensor Toolbox's ``cp_apr`` are this algorithm; :func:`tensorfact.gcp` with
``loss="poisson"`` minimises the same objective by projected L-BFGS.

Scale: the fit runs on ``x / 2^k`` and multiplies ``λ`` back, so ``cp_apr(c·x) = c·cp_apr(x)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from tensorfact import algebra
from tensorfact._checks import (Precision, as_float_array, check_nonneg_number,
                                check_positive_int, finite_part, poison, report_nonfinite)
from tensorfact._numerics import pow2_scale
from tensorfact.decomposition._common import check_cp_init, resolve_init
from tensorfact.decomposition._loop import FitInfo, relative_error
from tensorfact.decomposition._sweeps import cp_initial_factors
from tensorfact.tensors import CPTensor

__all__ = ["cp_apr"]

EPS = 1e-10
KAPPA = 0.01
KAPPA_TOL = 1e-10


def cp_apr(x, rank: int, *, key=None, init="svd", n_iter: int = 200, tol: float = 1e-4,
           inner_iter: int = 10, precision: Precision = "highest", return_info: bool = False):
    """Nonnegative CP of counts by CP-APR multiplicative updates (Chi & Kolda 2012).

    Args:
      x: nonnegative array (counts) with at least 2 dimensions, none of size zero.
      rank: number of components ``R``.
      key: ``jax.random`` key; needed for ``init="random"`` only.
      init: ``"svd"`` (absolute values of the leading singular vectors, plus ``0.1`` so no
        entry starts at an inadmissible zero; deterministic), ``"random"`` (uniform; needs
        ``key``), or a nonnegative ``CPTensor`` of matching shape and rank.
      n_iter: most outer iterations (static: it sizes ``info.errors``).
      tol: KKT tolerance of every subproblem (pyttb's ``stoptol``, default 1e-4); the fit
        stops when every mode meets it at once.
      inner_iter: most multiplicative updates per subproblem (pyttb's ``maxinneriters``).
      precision: XLA precision of the contractions.
      return_info: also return a :class:`~tensorfact.FitInfo` (``errors``: ``‖x − m‖/‖x‖``
        after each outer iteration).

    Returns:
      A :class:`CPTensor` with nonnegative factors whose columns sum to one (``λ`` in
      ``weights``), or ``(CPTensor, FitInfo)``.

    Raises:
      ValueError: negative values in ``x`` (eager calls), NaN/Inf in ``x`` (eager calls; under
        ``jit`` the result is NaN), a bad ``rank``/``n_iter``/``tol``/``init``/``key``.

    Example:
      >>> import jax, tensorfact as tfa
      >>> x = jax.random.poisson(jax.random.key(0), 4.0, (6, 7, 8)).astype(float)
      >>> fit = tfa.cp_apr(x, 2)
      >>> bool(fit.to_dense().min() >= 0)
      True
    """
    x = as_float_array(x, "x", min_ndim=2, nonempty=True)
    rank = check_positive_int(rank, "rank")
    n_iter = check_positive_int(n_iter, "n_iter")
    inner_iter = check_positive_int(inner_iter, "inner_iter")
    check_nonneg_number(tol, "tol")
    init_tensor, init_kind = resolve_init(init, CPTensor, key,
                                          lambda t: check_cp_init(t, x.shape, rank))
    if not isinstance(x, jax.core.Tracer):
        import numpy as np
        values = np.asarray(x)
        values = values[np.isfinite(values)]
        if np.any(values < 0):
            raise ValueError(f"x must be nonnegative counts for cp_apr, got "
                             f"{int(np.sum(values < 0))} negative value(s) (min "
                             f"{values.min()}).")
    result, n_nonfinite = _cp_apr_fit(x, key, init_tensor, float(tol), rank=rank,
                                      n_iter=n_iter, inner_iter=inner_iter, init=init_kind,
                                      precision=precision, return_info=bool(return_info))
    report_nonfinite(n_nonfinite, "x")
    return result


def _column_stochastic(a):
    sums = jnp.sum(a, axis=0)
    return sums, a / jnp.where(sums > 0, sums, 1)


@functools.partial(jax.jit, static_argnames=("rank", "n_iter", "inner_iter", "init",
                                             "precision", "return_info"))
def _cp_apr_fit(x, key, init_tensor, tol, *, rank, n_iter, inner_iter, init, precision,
                return_info):
    dtype = x.dtype
    x, n_nonfinite = finite_part(x)
    s = lax.stop_gradient(pow2_scale(x))
    x = x / s
    if init == "given":
        weights = jnp.abs(init_tensor.weights.astype(dtype)) / s
        factors = [jnp.abs(a.astype(dtype)) for a in init_tensor.factors]
    else:
        weights, factors = cp_initial_factors(x, rank, key, init, True, precision)
        if init == "svd":
            factors = [a + 0.1 for a in factors]
        weights = weights * jnp.sum(x) / rank
    for n, a in enumerate(factors):
        sums, factors[n] = _column_stochastic(a)
        weights = weights * sums
    factors = tuple(factors)

    def update_mode(n, weights, factors, first):
        a = factors[n]

        def phi_of(b):
            model = CPTensor(jnp.ones((rank,), dtype), factors[:n] + (b,) + factors[n + 1:])
            ratio = x / jnp.maximum(model.to_dense(precision=precision), EPS)
            return algebra.mttkrp(ratio, list(factors), n, precision=precision)

        b = a * weights
        # scooch inadmissible zeros (from the second outer iteration on; Φ at the subproblem's
        # start, where the paper keeps the previous iteration's)
        phi0 = phi_of(b)
        b = jnp.where(first, b, jnp.where((a < KAPPA_TOL) & (phi0 > 1), b + KAPPA, b))

        def cond(carry):
            i, _, done = carry
            return (i < inner_iter) & ~done

        def body(carry):
            i, b, _ = carry
            phi = phi_of(b)
            kkt = jnp.max(jnp.abs(jnp.minimum(b, 1 - phi)))
            done = kkt < tol
            return i + 1, jnp.where(done, b, b * phi), done

        i, b, done = lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), b,
                                                 jnp.zeros((), bool)))
        weights, a = _column_stochastic(b)
        converged_first = done & (i == 1)
        return weights, factors[:n] + (a,) + factors[n + 1:], converged_first

    def cond(carry):
        k, _, _, _, done = carry
        return (k < n_iter) & ~done

    def body(carry):
        k, weights, factors, errors, _ = carry
        all_done = jnp.ones((), bool)
        for n in range(x.ndim):
            weights, factors, ok = update_mode(n, weights, factors, k == 0)
            all_done = all_done & ok
        err = relative_error(x, CPTensor(weights, factors).to_dense(precision=precision))
        return k + 1, weights, factors, errors.at[k].set(err), all_done

    errors0 = jnp.full((n_iter,), jnp.nan, dtype)
    k, weights, factors, errors, converged = lax.while_loop(
        cond, body, (jnp.zeros((), jnp.int32), weights, factors, errors0, jnp.zeros((), bool)))
    result = poison(CPTensor(weights * s, factors), n_nonfinite)
    if not return_info:
        return result, n_nonfinite
    rel = relative_error(x, CPTensor(weights, factors).to_dense(precision=precision))
    return (result, poison(FitInfo(k, errors, rel, converged), n_nonfinite)), n_nonfinite
