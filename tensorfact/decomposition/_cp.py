"""CP (CANDECOMP/PARAFAC) decomposition by alternating least squares.

Finds ``x ≈ [[w; A_0, ..., A_{N-1}]] = Σ_r w_r a_0r ∘ ... ∘ a_{N-1,r}``. Each ALS step solves
for one factor with the others fixed:

    A_n ← MTTKRP_n(x) · (⊛_{k≠n} A_kᵀA_k + λI)⁺,

where ``MTTKRP_n(x) = unfold(x, n) · khatri_rao(A_k, k≠n)`` and ``⊛`` is the elementwise
product (Carroll & Chang 1970; Harshman 1970; Kolda & Bader 2009, §3.4). The pseudo-inverse
(small eigenvalues dropped, see :func:`tensorfact.decomposition._common.solve_normal_equations`)
gives the minimum-norm update when the Gram matrix is singular, so a rank above what the data
hold only wastes work. The MTTKRPs of a sweep share work through a dimension tree (Phan,
Tichavský & Cichocki 2013): the data are contracted with one half of the factors to update the
other half, so one sweep reads the tensor twice for any order instead of once per mode.

Nonnegative CP uses hierarchical ALS (HALS, Cichocki & Phan 2009), which updates one column
at a time with the exact nonnegative minimiser.

Missing data (``mask``) are fitted by weighted ALS (Tomasi & Bro 2005): every row of a factor
solves its own least-squares problem over the observed entries alone, so each update is exact
on the data that exist. The first sweep is plain ALS on the data with zeros in the gaps (the
first sweep of TensorLy's masked ``parafac``, which goes on by EM imputation). Weighted ALS
straight from the SVD start, whose unit-norm columns carry no scale, lets the rows next to a
missing block take any value inside it: on TensorLy's IL2 tensor it ran into a degenerate
solution (two components with congruence −0.997, predictions of 1e4 in the gaps) with a worse
fit than TensorLy's. After the zero-filled sweep it matches TensorLy's fit there and stays far
from degeneracy, and on random missing entries it keeps weighted ALS's speed, where EM
imputation converges far more slowly or stalls (80% missing). Where the best rank-``R`` fit
itself is degenerate, any method that keeps lowering the error drifts toward it:
:class:`~tensorfact.decomposition.CPInfo` shows it, and ``l2 > 0`` prevents it.

Scale: the fit runs on ``x / 2^k`` with ``2^k`` near ``max |x|`` and scales the weights back, so
``cp(c·x) = c·cp(x)`` for data of any magnitude (1e-30 … 1e30 in float32) and ``rel_error`` is
the true one.
"""

from __future__ import annotations

import functools
from typing import Union

import jax
import jax.numpy as jnp
from jax import lax

from tensorfact import algebra, kernels, sharding
from tensorfact._checks import (Impl, Init, Precision, as_float_array, check_choice, check_mask,
                                check_nonneg_number, check_positive_int, count_nonfinite,
                                report_nonfinite)
from tensorfact._numerics import pow2_scale
from tensorfact._sparse import is_sparse
from tensorfact.decomposition import _sharded, _sparse_cp
from tensorfact.decomposition._common import (check_cp_init, check_iteration_args,
                                              concrete_or_traced, hals_columns,
                                              normalize_columns, resolve_init, resolve_tol,
                                              solve_normal_equations)
from tensorfact.decomposition._loop import (DEFAULT_TOL, FitInfo, cp_info,
                                            error_from_norms, iterate,
                                            refine_error, relative_error)
from tensorfact.decomposition._sweeps import (cp_initial_factors, cp_penalties, cp_scale_back,
                                              cp_sweep, scaled_to_data)
from tensorfact.tensors import CPTensor

__all__ = ["cp"]


def cp(x, rank: int, *, key=None, init: Union[Init, CPTensor] = "svd", n_iter: int = 100,
       tol: float = DEFAULT_TOL, mask=None, nonneg: bool = False, l2: float = 0.0,
       normalize: bool = True, precision: Precision = "highest", impl: Impl = "auto",
       return_info: bool = False):
    r"""CP decomposition of an N-way array by ALS (or HALS when ``nonneg=True``).

    Fits ``R`` rank-one terms, factor matrices :math:`A_n = [a^{(n)}_1, \dots, a^{(n)}_R]`
    with unit-norm columns (``normalize=True``) and weights :math:`w`:

    .. math::

       x \approx \sum_{r=1}^{R} w_r \; a^{(0)}_r \circ a^{(1)}_r \circ \cdots \circ
       a^{(N-1)}_r ,

    minimising :math:`\lVert x - \hat{x} \rVert_F` over one factor at a time (Kolda & Bader,
    "Tensor Decompositions and Applications", SIAM Review 51(3), 2009, §3.4).

    Args:
      x: array with at least 2 dimensions, none of size zero (float32 or float64; other real
        dtypes are cast to float32). A ``jax.Array`` split over a device mesh (see
        :mod:`tensorfact.sharding`) is fitted where it lies, never gathered; the result is
        replicated on the mesh (what moves between devices: the design notes, "Sharding"). A
        sparse tensor (a ``jax.experimental.sparse.BCOO``, e.g. from
        :func:`tensorfact.sparse_tensor`) is fitted over its stored entries, never densified
        (``mask`` does not apply).
      rank: number of rank-one components ``R`` (a positive int; may exceed the mode sizes:
        the redundant directions then get the minimum-norm share).
      key: ``jax.random`` key; needed for ``init="random"`` only.
      init: ``"svd"`` (leading left singular vectors of each unfolding, completed
        deterministically beyond a mode's size: no key at any rank), ``"random"`` (Gaussian,
        uniform for ``nonneg``; needs ``key``), or a finite ``CPTensor`` of matching shape and
        rank to start from.
      n_iter: maximum number of ALS sweeps (static: it sizes ``info.errors``).
      tol: stop when the relative error changes by less than ``tol`` between sweeps (the
        default, 1e-8, runs until the error stops changing in float32). A concrete ``0`` runs
        exactly ``n_iter`` sweeps as a ``lax.scan``, through which ``jax.grad`` can
        differentiate; otherwise the test runs inside a ``lax.while_loop``.
      mask: optional boolean (or 0/1) array of ``x.shape``, True where ``x`` is observed.
        Missing entries may hold anything (NaN included); the fit is weighted ALS over the
        observed entries after one sweep on the zero-filled data (for ``nonneg=True``, HALS
        with per-row Gram matrices).
      nonneg: fit nonnegative factors by HALS.
      l2: ridge penalty ``λ‖A_n‖²`` added to every factor update (for ``x`` as given: the
        rescaled fit adjusts it). ``l2 > 0`` makes a best fit exist where the rank-``R``
        problem is degenerate (see :class:`CPInfo`).
      normalize: return unit-norm factor columns with the scales in ``weights``; otherwise the
        weights are ones and the factors carry the scale.
      precision: XLA precision of the contractions: ``"highest"`` (the default) is true
        float32; ``None`` is JAX's default (TF32 or bfloat16 passes on recent GPUs and TPUs);
        also ``"default"``, ``"high"`` or a ``jax.lax.Precision``.
      impl: MTTKRP implementation. ``"xla"``: the dimension tree (two reads of ``x`` per
        sweep); ``"pallas"``: one MTTKRP per mode with the kernel of
        :func:`tensorfact.kernels.mttkrp` (``N`` reads of ``x`` per sweep, each at close to the
        memory bandwidth; the Triton kernel on a GPU, the Mosaic kernel on a TPU, interpret
        mode on a CPU); ``"auto"``: the kernel on a GPU or TPU where it suits ``x`` and
        ``rank`` and has been measured to pay there (not yet: ``"auto"`` is XLA everywhere
        until a benchmark lists it in ``kernels.MEASURED_ON_GPU`` / ``MEASURED_ON_TPU``), else
        XLA. Results agree to float
        tolerance. For a sharded ``x`` each device runs the chosen path on its own block
        (``"auto"`` judged on the block's size) before the usual ``psum``.
      return_info: also return a :class:`CPInfo` (the four fields of ``FitInfo``, then the
        smallest component congruence and the component norms, which show a degenerate fit).

    Returns:
      A :class:`CPTensor`, or ``(CPTensor, CPInfo)`` with ``return_info=True``.

    Example:
      >>> import jax, tensorfact as tfa
      >>> x = tfa.random_cp(jax.random.key(0), (10, 11, 12), rank=3).to_dense()
      >>> approx, info = tfa.cp(x, 3, return_info=True)
      >>> bool(info.rel_error < 1e-5)
      True
      >>> big = tfa.cp(1e30 * x, 3)  # scale-equivariant: the same fit, scaled
      >>> bool(tfa.relative_error(1e30 * x, big.to_dense()) < 1e-5)
      True

    Raises:
      ValueError: for fewer than 2 dimensions or a mode of size zero, a non-positive or
        non-integer rank, a mask or ``init`` of the wrong shape, negative ``tol``/``l2``, a
        missing key for ``init="random"``, NaN/Inf in ``init``, or NaN/Inf in the observed
        entries of ``x`` (eager calls).
    """
    if is_sparse(x):  # a BCOO: ALS over the stored entries, never densified
        return _sparse_cp.sparse_cp(x, rank, key=key, init=init, n_iter=n_iter, tol=tol,
                                    mask=mask, nonneg=nonneg, l2=l2, normalize=normalize,
                                    precision=precision, impl=impl, return_info=return_info)
    x = as_float_array(x, "x", min_ndim=2, nonempty=True)
    rank = check_positive_int(rank, "rank")
    n_iter, tol = check_iteration_args(n_iter, tol)
    check_nonneg_number(l2, "l2")
    sharded = sharding.is_mode_sharded(x)
    # "auto" is decided for the tensor the kernel would read: x, or one device's block of a
    # sharded x (by _sharded.cp)
    impl = (check_choice(impl, Impl, "impl") if sharded
            else kernels.resolve_mttkrp_impl(x, rank, impl))
    mask = check_mask(mask, x.shape)
    init_tensor, init_kind = resolve_init(init, CPTensor, key,
                                          lambda t: check_cp_init(t, x.shape, rank))
    fixed, tol = resolve_tol(tol)
    if sharded:  # split over a device mesh: keep it distributed
        return _sharded.cp(x, mask, key, init_tensor, concrete_or_traced(l2), tol, rank=rank,
                           n_iter=n_iter, fixed=fixed, init=init_kind, nonneg=bool(nonneg),
                           normalize=bool(normalize), precision=precision, impl=impl,
                           return_info=bool(return_info))
    result, n_nonfinite = _cp_fit(
        x, mask, key, init_tensor, concrete_or_traced(l2), tol, rank=rank, n_iter=n_iter,
        fixed=fixed, init=init_kind, nonneg=bool(nonneg), normalize=bool(normalize),
        precision=precision, impl=impl, return_info=bool(return_info))
    report_nonfinite(n_nonfinite, "x", maskable=True)  # counted in the fit: no extra pass
    return result


@functools.partial(jax.jit, static_argnames=(
    "rank", "n_iter", "fixed", "init", "nonneg", "normalize", "precision", "impl",
    "return_info"))
def _cp_fit(x, mask, key, init_tensor, l2, tol, *, rank, n_iter, fixed, init, nonneg, normalize,
            precision, return_info, impl="xla"):
    dtype = x.dtype
    n_nonfinite = count_nonfinite(x, mask)  # fused with the first pass over x
    if mask is not None:
        x = jnp.where(mask, x, 0)
    scale = lax.stop_gradient(pow2_scale(x))  # fit x / 2^k: exact, and no square overflows
    x = x / scale
    if init == "given":
        weights = init_tensor.weights.astype(dtype) / scale
        factors = [a.astype(dtype) for a in init_tensor.factors]
    else:
        weights, factors = cp_initial_factors(x, rank, key, init, nonneg, precision)
        if nonneg:  # HALS's path depends on the start's scale: match the data's
            weights, factors = scaled_to_data(weights, factors, jnp.vdot(
                x, x, precision=algebra.resolve_precision(precision)), precision)
    if not normalize:  # the factors carry the scale; the weights stay at one
        factors = [factors[0] * weights] + list(factors[1:])
        weights = jnp.ones_like(weights)
    state = (weights, tuple(factors))
    l2 = cp_penalties(l2, scale, x.ndim, normalize)

    sweep = functools.partial(cp_sweep, l2=l2, nonneg=nonneg, normalize=normalize,
                              precision=precision, impl=impl)
    if mask is None:
        norm_x_sq = jnp.vdot(x, x, precision=algebra.resolve_precision(precision))

        def step(state):
            weights, factors, parts = sweep(x, *state)
            err = refine_error(error_from_norms(norm_x_sq, *parts), lambda: relative_error(
                x, CPTensor(weights, factors).to_dense(precision=precision)))
            return (weights, factors), err

        state, n_done, errors, converged = iterate(step, state, n_iter=n_iter,
                                                   tol=0 if fixed else tol)
    else:
        state, n_done, errors, converged = _masked_iterations(
            x, mask, state, sweep, l2=l2, tol=0 if fixed else tol, n_iter=n_iter,
            nonneg=nonneg, normalize=normalize, precision=precision, impl=impl)

    weights, factors = cp_scale_back(*state, scale, normalize)
    result = CPTensor(weights, factors)
    if not return_info:
        return result, n_nonfinite
    rel = relative_error(x, CPTensor(*state).to_dense(precision=precision), mask)
    return (result, cp_info(FitInfo(n_done, errors, rel, converged), weights, factors)
            ), n_nonfinite


def _masked_iterations(x, mask, state, sweep, *, l2, tol, n_iter, nonneg, normalize, precision,
                       impl):
    """One sweep of plain ALS on the zero-filled ``x``, then weighted ALS; the observed-entry
    error after each sweep in one ``errors`` record."""
    maskf = mask.astype(x.dtype)

    def observed_error(weights, factors):
        approx = CPTensor(weights, factors).to_dense(precision=precision)
        return relative_error(x, approx, mask)

    def weighted_step(state):
        weights, factors = _weighted_sweep(x, maskf, *state, l2=l2, nonneg=nonneg,
                                           normalize=normalize, precision=precision, impl=impl)
        return (weights, factors), observed_error(weights, factors)

    weights, factors, _ = sweep(x, *state)  # x is zero where mask is False
    state, first_error = (weights, factors), observed_error(weights, factors)
    if n_iter == 1:
        return state, jnp.asarray(1, jnp.int32), first_error[None], jnp.zeros((), bool)
    state, n_done, errors, converged = iterate(weighted_step, state, n_iter=n_iter - 1, tol=tol)
    return state, n_done + 1, jnp.concatenate([first_error[None], errors]), converged


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
            a_n = hals_columns(factors[n] * weights, numer, gram, l2[n], precision)
        else:
            a_n = solve_normal_equations(numer, gram, l2[n], precision)
        if normalize:
            weights, a_n = normalize_columns(a_n)
        factors[n] = a_n
    return weights, tuple(factors)

