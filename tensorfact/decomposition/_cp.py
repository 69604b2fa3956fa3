"""CP (CANDECOMP/PARAFAC) decomposition by alternating least squares.

Finds ``x ≈ [[w; A_0, ..., A_{N-1}]] = Σ_r w_r a_0r ∘ ... ∘ a_{N-1,r}``. Each ALS step solves
for one factor with the others fixed:

    A_n ← MTTKRP_n(x) · (⊛_{k≠n} A_kᵀA_k + λI)⁻¹,

where ``MTTKRP_n(x) = unfold(x, n) · khatri_rao(A_k, k≠n)`` and ``⊛`` is the elementwise
product (Carroll & Chang 1970; Harshman 1970; Kolda & Bader 2009, §3.4). The MTTKRPs of a
sweep share work through a dimension tree (Phan, Tichavský & Cichocki 2013): the data are
contracted with one half of the factors to update the other half, so one sweep reads the
tensor twice for any order instead of once per mode.

Nonnegative CP uses hierarchical ALS (HALS, Cichocki & Phan 2009), which updates one column
at a time with the exact nonnegative minimiser. Missing data (``mask``) are handled by
weighted ALS (Tomasi & Bro 2005): every row of a factor solves its own least-squares problem
over the observed entries alone, so each update is exact on the data that exist (EM imputation,
which refills the gaps with the current model, converges far more slowly once many entries are
missing).
"""

from __future__ import annotations

import functools
from typing import Union

import jax
import jax.numpy as jnp

from tensorfact import algebra, kernels, sharding
from tensorfact._checks import (as_float_array, check_choice, check_mask, count_nonfinite,
                                check_nonneg_number, check_positive_int, report_nonfinite,
                                check_key)
from tensorfact.decomposition import _sharded
from tensorfact.decomposition._common import (check_iteration_args, concrete_or_traced,
                                              hals_columns, solve_normal_equations)
from tensorfact.decomposition._sweeps import cp_initial_factors, cp_sweep
from tensorfact.decomposition._loop import (FitInfo, error_from_norms, is_fixed_length, iterate,
                                            refine_error, relative_error)
from tensorfact.tensors import CPTensor

__all__ = ["cp"]

_INITS = ("svd", "random")


def cp(x, rank: int, *, key=None, init: Union[str, CPTensor] = "svd", n_iter: int = 100,
       tol: float = 1e-8, mask=None, nonneg: bool = False, l2: float = 0.0,
       normalize: bool = True, precision="highest", impl: str = "auto", return_info: bool = False):
    """CP decomposition of an N-way array by ALS (or HALS when ``nonneg=True``).

    Args:
      x: array with at least 2 dimensions (float32 or float64; other real dtypes are cast
        to float32). A ``jax.Array`` split over a device mesh (see :mod:`tensorfact.sharding`)
        is fitted where it lies, never gathered; the result is replicated on the mesh (what
        moves between devices: :func:`tensorfact.decomposition._sharded.cp`).
      rank: number of rank-one components ``R`` (a positive int; may exceed the mode sizes).
      key: ``jax.random`` key; needed for ``init="random"`` and for ``init="svd"`` when
        ``rank`` exceeds a mode size (the missing columns are random).
      init: ``"svd"`` (leading left singular vectors of each unfolding), ``"random"``, or a
        ``CPTensor`` of matching shape and rank to start from.
      n_iter: maximum number of ALS sweeps (static: it sizes ``info.errors``).
      tol: stop when the relative error changes by less than ``tol`` between sweeps. A literal
        ``0`` runs exactly ``n_iter`` sweeps as a ``lax.scan``, through which ``jax.grad``
        can differentiate; otherwise the test runs inside a ``lax.while_loop``.
      mask: optional boolean array of ``x.shape``, True (1) where ``x`` is observed. Missing
        entries may hold anything (NaN included); the fit is weighted ALS over the observed
        entries (for ``nonneg=True``, HALS with per-row Gram matrices).
      nonneg: fit nonnegative factors by HALS.
      l2: ridge penalty ``λ‖A_n‖²`` added to every factor update.
      normalize: return unit-norm factor columns with the scales in ``weights``; otherwise the
        weights are ones and the factors carry the scale.
      precision: XLA precision of the contractions; ``"highest"`` (the default) is full float32,
        ``None`` JAX's default.
        Pass ``"default"`` to allow TF32/bfloat16 passes on GPUs and TPUs.
      impl: MTTKRP implementation. ``"xla"``: the dimension tree (two reads of ``x`` per
        sweep); ``"pallas"``: one MTTKRP per mode with the kernel of
        :mod:`tensorfact.kernels.mttkrp` (``N`` reads of ``x`` per sweep, each at close to the
        memory bandwidth; interpret mode off GPUs); ``"auto"``: the kernel on a GPU where it
        suits ``x`` and ``rank`` and has been measured to pay (not yet: ``"auto"`` is XLA
        everywhere until a GPU benchmark lists it), else XLA. Results agree to float
        tolerance.
      return_info: also return a :class:`FitInfo`.

    Returns:
      A :class:`CPTensor`, or ``(CPTensor, FitInfo)`` with ``return_info=True``.

    Example:
      >>> import jax, tensorfact as tfa
      >>> x = tfa.random_cp(jax.random.key(0), (10, 11, 12), rank=3).to_dense()
      >>> approx = tfa.cp(x, 3, n_iter=200)
      >>> bool(tfa.relative_error(x, approx.to_dense()) < 1e-4)
      True

    Raises:
      ValueError: for fewer than 2 dimensions, a non-positive or non-integer rank, a mask or
        ``init`` of the wrong shape, negative ``tol``/``l2``, a missing key, or NaN/Inf in the
        observed entries of an eager call.
    """
    x = as_float_array(x, "x", min_ndim=2)
    rank = check_positive_int(rank, "rank")
    n_iter, tol = check_iteration_args(n_iter, tol)
    check_nonneg_number(l2, "l2")
    mttkrp_impl = kernels.resolve_mttkrp_impl(x, rank, impl)
    mask = check_mask(mask, x.shape)
    if isinstance(init, CPTensor):
        _check_init(init, x.shape, rank)
        init_tensor, init_kind = init, "given"
    else:
        init_kind = check_choice(init, _INITS, "init")
        init_tensor = None
        if init == "random":
            check_key(key, 'for init="random"')
        elif rank > min(x.shape):
            check_key(key, f"for init=\"svd\" when rank ({rank}) exceeds a mode size "
                        f"(shape {tuple(x.shape)})")
    fixed = is_fixed_length(tol)
    tol = 0.0 if fixed else concrete_or_traced(tol)
    if sharding.is_mode_sharded(x):  # split over a device mesh: keep it distributed
        return _sharded.cp(x, mask, key, init_tensor, concrete_or_traced(l2), tol, rank=rank,
                           n_iter=n_iter, fixed=fixed, init=init_kind, nonneg=bool(nonneg),
                           normalize=bool(normalize), precision=precision,
                           return_info=bool(return_info))
    result, n_nonfinite = _cp_fit(
        x, mask, key, init_tensor, concrete_or_traced(l2), tol, rank=rank, n_iter=n_iter,
        fixed=fixed, init=init_kind, nonneg=bool(nonneg), normalize=bool(normalize),
        precision=precision, impl=mttkrp_impl, return_info=bool(return_info))
    report_nonfinite(n_nonfinite, "x")  # counted inside the fit: no extra pass
    return result


def _check_init(init: CPTensor, shape, rank):
    if init.shape != tuple(shape) or init.rank != rank:
        raise ValueError(f"init must be a CPTensor of shape {tuple(shape)} and rank {rank}, got "
                         f"shape {init.shape} and rank {init.rank}.")


@functools.partial(jax.jit, static_argnames=(
    "rank", "n_iter", "fixed", "init", "nonneg", "normalize", "precision", "impl",
    "return_info"))
def _cp_fit(x, mask, key, init_tensor, l2, tol, *, rank, n_iter, fixed, init, nonneg, normalize,
            precision, return_info, impl="xla"):
    dtype = x.dtype
    n_nonfinite = count_nonfinite(x, mask)  # fused with the first pass over x
    if mask is not None:
        x = jnp.where(mask, x, 0)
    if init == "given":
        weights, factors = init_tensor.weights.astype(dtype), [
            a.astype(dtype) for a in init_tensor.factors]
    else:
        weights, factors = cp_initial_factors(x, rank, key, init, nonneg, precision)
    if not normalize:  # the factors carry the scale; the weights stay at one
        factors = [factors[0] * weights] + list(factors[1:])
        weights = jnp.ones_like(weights)

    sweep = functools.partial(cp_sweep, l2=l2, nonneg=nonneg, normalize=normalize,
                              precision=precision, impl=impl)
    if mask is None:
        norm_x_sq = jnp.vdot(x, x, precision=algebra.resolve_precision(precision))

        def step(state):
            weights, factors = state
            weights, factors, parts = sweep(x, weights, factors)
            err = refine_error(error_from_norms(norm_x_sq, *parts), lambda: relative_error(
                x, CPTensor(weights, factors).to_dense(precision=precision)))
            return (weights, factors), err

        state = (weights, tuple(factors))
    else:
        maskf = mask.astype(dtype)

        def step(state):
            weights, factors = state
            weights, factors = _weighted_sweep(x, maskf, weights, factors, l2=l2, nonneg=nonneg,
                                               normalize=normalize, precision=precision,
                                               impl=impl)
            approx = CPTensor(weights, factors).to_dense(precision=precision)
            return (weights, factors), relative_error(x, approx, mask)

        state = (weights, tuple(factors))

    state, n_done, errors, converged = iterate(step, state, n_iter=n_iter,
                                               tol=0 if fixed else tol)
    result = CPTensor(state[0], state[1])
    if not return_info:
        return result, n_nonfinite
    rel = relative_error(x, result.to_dense(precision=precision), mask)
    return (result, FitInfo(n_done, errors, rel, converged)), n_nonfinite


def _weighted_sweep(x, maskf, weights, factors, *, l2, nonneg, normalize, precision,
                    impl="xla"):
    """One weighted-ALS pass for missing data: each row of ``A_n`` solves its own normal
    equations over the observed entries only,

        (Σ_j m_ij k_j k_jᵀ + λI) a_i = Σ_j m_ij x_ij k_j,   k_j = rows of khatri_rao(A_k, k≠n).

    The per-row Gram matrices are themselves an MTTKRP, of the mask against the row-wise
    Kronecker squares ``A_k[i] ⊗ A_k[i]`` of the factors, so no Khatri–Rao product is formed.
    """
    factors = list(factors)
    rank = weights.shape[0]
    for n in range(x.ndim):
        numer = algebra.mttkrp(x, factors, n, impl=impl, precision=precision)
        squares = [(a[:, :, None] * a[:, None, :]).reshape(a.shape[0], rank * rank)
                   for a in factors]
        gram = algebra.mttkrp(maskf, squares, n, impl=impl,
                              precision=precision).reshape(-1, rank, rank)
        if nonneg:
            a_n = hals_columns(factors[n] * weights, numer, gram, l2, precision)
        else:
            a_n = solve_normal_equations(numer, gram, l2)
        if normalize:
            weights = jnp.linalg.norm(a_n, axis=0)
            a_n = a_n / jnp.where(weights == 0, 1.0, weights)
        factors[n] = a_n
    return weights, tuple(factors)
