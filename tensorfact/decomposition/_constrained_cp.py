"""Constrained CP by AO-ADMM (Huang, Sidiropoulos & Liavas, IEEE TSP 2016).

Minimises ``½‖x − [[A_0, …, A_{N-1}]]‖² + Σ_n r_n(A_n)`` where each ``r_n`` is a constraint or
penalty from :mod:`tensorfact.constraints` (or nothing). Alternating optimisation over the
factors; each factor's subproblem ``min_A ½‖M − A Gᵀ‖-type LS + r(A)`` is solved approximately
by ``inner_iter`` ADMM steps on the split ``A = Ã``:

    Ã ← (M + ρ(A + U)) (G + ρI)⁻¹,    A ← prox_{r/ρ}(Ã − U),    U ← U + A − Ã,

with ``M = MTTKRP_n(x)``, ``G = ⊛_{k≠n} A_kᵀA_k``, ``ρ = trace(G)/R`` and one Cholesky
factorization of ``G + ρI`` per factor update. The scaled duals ``U_n`` are carried from one
outer iteration to the next (warm start), as the paper recommends.
"""

from __future__ import annotations

import functools
from typing import Union

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import cho_factor, cho_solve

from tensorfact import algebra
from tensorfact._checks import (Init, Precision, as_float_array, check_positive_int,
                                count_nonfinite, report_nonfinite)
from tensorfact._numerics import pow2_scale
from tensorfact.decomposition._common import (check_cp_init, check_iteration_args,
                                              resolve_init, resolve_tol,
                                              solve_normal_equations)
from tensorfact.decomposition._constraints import (L1, Box, Nonneg, Simplex, Smooth,
                                                   Unimodal, resolve_constraints)
from tensorfact.decomposition._loop import (DEFAULT_TOL, FitInfo, cp_info, error_from_norms,
                                            iterate, refine_error, relative_error)
from tensorfact.decomposition._sweeps import cp_initial_factors, scaled_to_data
from tensorfact.tensors import CPTensor

__all__ = ["constrained_cp"]

#: ADMM iterations per factor update (TensorLy's ``n_iter_max_inner`` default).
DEFAULT_INNER_ITER = 10


def constrained_cp(x, rank: int, *, constraints, key=None, init: Union[Init, CPTensor] = "svd",
                   n_iter: int = 100, tol: float = DEFAULT_TOL,
                   inner_iter: int = DEFAULT_INNER_ITER, precision: Precision = "highest",
                   return_info: bool = False):
    """CP decomposition with constrained or penalised factors, by AO-ADMM.

    Solves ``min ½‖x − [[A_0, …, A_{N-1}]]‖² + Σ_n r_n(A_n)`` (Huang, Sidiropoulos & Liavas,
    "A flexible and efficient algorithmic framework for constrained matrix and tensor
    factorization", IEEE TSP 2016). Each outer iteration updates every factor in turn; a
    constrained factor takes ``inner_iter`` ADMM steps on the split ``A = Ã``:

        Ã ← (M + ρ(A + U)) (G + ρI)⁻¹,   A ← prox_{r_n/ρ}(Ã − U),   U ← U + A − Ã,

    with ``M = MTTKRP_n(x)``, ``G = ⊛_{k≠n} A_kᵀA_k``, ``ρ = trace(G)/R`` and one Cholesky
    factorization of ``G + ρI`` per update; the scaled duals ``U`` are warm-started across outer
    iterations. An unconstrained mode (``None``) takes the plain ALS update. The returned factor
    is ``A`` (the prox output), so constraints hold exactly on the result.

    A separate fit rather than an option of :func:`~tensorfact.cp`: AO-ADMM is a different
    algorithm with its own state (the duals) and hyper-parameters (``inner_iter``, the
    constraints), as in TensorLy (``constrained_parafac`` beside ``parafac``). The whole fit is
    one ``jax.jit`` program; ``constraints`` and ``inner_iter`` are static.

    Scale: the factors carry the scale and the weights are ones (as TensorLy), so constraints
    are stated on the returned factors. The fit runs on ``x / s`` (``s`` a power of two near
    ``max|x|``) with ``s`` carried by one *carrier* factor, ``A_c = s·B_c``: the first
    unconstrained mode, else the first ``Nonneg`` or ``Unimodal`` mode, then ``L1`` or
    ``Smooth``, else mode 0. Each constraint is rescaled so that the problem solved is exactly
    the one stated on ``x`` (:meth:`~tensorfact.constraints.Constraint.for_scaled_fit`: an
    ``L1`` strength ``λ`` becomes ``λ f/s²``, a ``Smooth`` strength ``λ f²/s²``, ``Box`` bounds
    ``/f`` and the simplex total ``1/f``, with ``f = s`` on the carrier and ``1`` elsewhere).
    Hence ``constrained_cp(c·x) = c·constrained_cp(x)`` for scale-free constraints (``None``,
    ``Nonneg``, ``Unimodal``, and ``Simplex`` or ``Box`` away from the carrier), while penalties
    and carrier bounds, which are not scale-free, solve the problem with the data as given at
    any magnitude: scaling ``x`` by ``c`` is matched by ``L1`` strengths ``×c`` on the carrier
    and ``×c²`` elsewhere, and carrier ``Box`` bounds ``×c``. A penalty on some modes with an
    unpenalised mode elsewhere can be made arbitrarily small by moving scale into the
    unpenalised mode (the infimum is not attained); penalise every mode to avoid it.

    Args:
      x: array with at least 2 dimensions, none of size zero.
      rank: number of components ``R``.
      constraints: one constraint for every mode, or a sequence of one per mode: a
        :mod:`tensorfact.constraints` object (``Nonneg()``, ``L1(strength)``, ``Simplex()``,
        ``Box(lower, upper)``, ``Smooth(strength)``, ``Unimodal()``), ``"nonneg"``,
        ``"simplex"`` or ``"unimodal"``, or
        ``None`` (unconstrained). Required (keyword-only).
      key: ``jax.random`` key; needed for ``init="random"`` only.
      init: ``"svd"`` (as :func:`~tensorfact.cp`), ``"random"`` (needs ``key``), or a finite
        ``CPTensor`` (its weights are absorbed into the carrier factor). A start from an option
        is made nonnegative on ``Nonneg``/``Simplex``/nonnegative-``Box`` modes, matched to the
        norm of the data by scaling the carrier factor, then projected onto each mode's set
        (the prox at ``ρ = 1/eps``: penalties are not applied to the start).
      n_iter: maximum number of outer (AO) iterations (static).
      tol: stop when the relative error changes by less than ``tol`` between outer iterations;
        a concrete ``0`` runs exactly ``n_iter`` (a differentiable ``lax.scan``).
      inner_iter: ADMM iterations per factor update (static; TensorLy's default 10).
      precision: XLA precision of the contractions (default ``"highest"``).
      return_info: also return a :class:`~tensorfact.decomposition.CPInfo` (``rel_error`` is the
        data-fit error ``‖x − x̂‖/‖x‖``, penalties excluded).

    Returns:
      A :class:`CPTensor` with unit weights, or ``(CPTensor, CPInfo)`` with ``return_info=True``.

    Raises:
      ValueError: for bad ``x``, ``rank``, ``n_iter``, ``tol``, ``inner_iter``, ``init``, an
        unknown constraint string, a wrong number of per-mode constraints, or NaN/Inf in ``x``
        (eager calls). TypeError for a constraint that is not one.

    Example:
      >>> import jax, jax.numpy as jnp, tensorfact as tfa
      >>> x = jnp.abs(tfa.random_cp(jax.random.key(0), (8, 9, 10), rank=2).to_dense())
      >>> fit = tfa.constrained_cp(x, 2, constraints="nonneg", n_iter=30)
      >>> all(bool((a >= 0).all()) for a in fit.factors)
      True
    """
    x = as_float_array(x, "x", min_ndim=2, nonempty=True)
    rank = check_positive_int(rank, "rank")
    n_iter, tol = check_iteration_args(n_iter, tol)
    inner_iter = check_positive_int(inner_iter, "inner_iter")
    cons = resolve_constraints(constraints, x.ndim)
    init_tensor, init_kind = resolve_init(init, CPTensor, key,
                                          lambda t: check_cp_init(t, x.shape, rank))
    fixed, tol = resolve_tol(tol)
    result, n_nonfinite = _fit(x, key, init_tensor, tol, rank=rank, n_iter=n_iter, fixed=fixed,
                               init=init_kind, constraints=cons, inner_iter=inner_iter,
                               precision=precision, return_info=bool(return_info))
    report_nonfinite(n_nonfinite, "x")
    return result


def carrier_mode(constraints) -> int:
    """The mode whose factor carries the data's scale: the first unconstrained one, else the
    first cone (``Nonneg``, ``Unimodal``), then penalty (``L1``, ``Smooth``), else mode 0."""
    for kinds in ((type(None),), (Nonneg, Unimodal), (L1, Smooth)):
        for n, c in enumerate(constraints):
            if isinstance(c, kinds):
                return n
    return 0


def _nonneg_start(c) -> bool:
    return isinstance(c, (Nonneg, Simplex)) or (isinstance(c, Box) and c.lower >= 0)


def admm_factor_update(m, gram, a, u, constraint, inner_iter):
    """``inner_iter`` ADMM steps for ``min_A ½‖·‖ + r(A)`` with normal equations ``(M, G)``,
    from ``(A, U)``; returns the new ``(A, U)`` (Huang et al. 2016, Alg. 1)."""
    r = gram.shape[0]
    rho = jnp.trace(gram) / r
    rho = jnp.where(rho > 0, rho, 1)  # all-zero other factors: any ρ > 0 will do
    chol = cho_factor(gram + rho * jnp.eye(r, dtype=gram.dtype), lower=True)

    def body(_, carry):
        a, u = carry
        a_split = cho_solve(chol, (m + rho * (a + u)).T).T  # G symmetric: solve on the right
        a_new = constraint.prox(a_split - u, rho)
        return a_new, u + a_new - a_split

    return lax.fori_loop(0, inner_iter, body, (a, u))


@functools.partial(jax.jit, static_argnames=("rank", "n_iter", "fixed", "init", "constraints",
                                             "inner_iter", "precision", "return_info"))
def _fit(x, key, init_tensor, tol, *, rank, n_iter, fixed, init, constraints, inner_iter,
         precision, return_info):
    dtype = x.dtype
    prec = algebra.resolve_precision(precision)
    n_nonfinite = count_nonfinite(x)
    scale = lax.stop_gradient(pow2_scale(x))
    x = x / scale
    ndim = x.ndim
    carrier = carrier_mode(constraints)
    cons = [None if c is None else c.for_scaled_fit(scale if n == carrier else 1, scale)
            for n, c in enumerate(constraints)]
    norm_x_sq = jnp.vdot(x, x, precision=prec)

    if init == "given":
        factors = [a.astype(dtype) for a in init_tensor.factors]
        factors[carrier] = factors[carrier] * (init_tensor.weights.astype(dtype) / scale)
    else:
        weights, factors = cp_initial_factors(x, rank, key, init, False, precision)
        factors = [jnp.abs(a) if _nonneg_start(c) else a for a, c in zip(factors, constraints)]
        weights, factors = scaled_to_data(weights, factors, norm_x_sq, precision)
        # the start's scale on the carrier alone: the other modes start from unit columns
        # whatever the data's magnitude, so the path is scale-equivariant
        factors[carrier] = factors[carrier] * weights
        # projected onto the sets; penalties left out (ρ → ∞: a prox at ρ = 1 would threshold
        # unit columns against a penalty stated for the data's scale, and can zero them)
        big = 1 / jnp.finfo(dtype).eps
        factors = [a if c is None else c.prox(a, big) for a, c in zip(factors, cons)]
    duals = [jnp.zeros_like(a) for a in factors]

    def step(state):
        factors, duals = list(state[0]), list(state[1])
        grams = [jnp.matmul(a.T, a, precision=prec) for a in factors]
        for n in range(ndim):
            gram = functools.reduce(lambda p, q: p * q,
                                    [grams[k] for k in range(ndim) if k != n],
                                    jnp.ones((rank, rank), dtype))
            m = algebra.mttkrp(x, factors, n, impl="xla", precision=precision)
            if cons[n] is None:
                factors[n] = solve_normal_equations(m, gram, 0.0, precision)
            else:
                factors[n], duals[n] = admm_factor_update(m, gram, factors[n], duals[n],
                                                          cons[n], inner_iter)
            grams[n] = jnp.matmul(factors[n].T, factors[n], precision=prec)
        inner = jnp.sum(factors[-1] * m)
        approx_sq = jnp.sum(functools.reduce(lambda p, q: p * q, grams))
        err = refine_error(error_from_norms(norm_x_sq, inner, approx_sq), lambda: relative_error(
            x, CPTensor(jnp.ones((rank,), dtype), factors).to_dense(precision=precision)))
        return (tuple(factors), tuple(duals)), err

    state, n_done, errors, converged = iterate(step, (tuple(factors), tuple(duals)),
                                               n_iter=n_iter, tol=0 if fixed else tol)
    fitted = list(state[0])
    ones = jnp.ones((rank,), dtype)
    out = list(fitted)
    out[carrier] = out[carrier] * scale
    result = CPTensor(ones, tuple(out))
    if not return_info:
        return result, n_nonfinite
    rel = relative_error(x, CPTensor(ones, fitted).to_dense(precision=precision))
    return (result, cp_info(FitInfo(n_done, errors, rel, converged), ones, out)), n_nonfinite
