"""Tucker decomposition: HOOI (by QR subspace iteration), HOSVD, ST-HOSVD, nonnegative Tucker.

Finds ``x ≈ G ×_0 U_0 ×_1 U_1 ... ×_{N-1} U_{N-1}`` with a small core ``G`` of shape
``(r_0, ..., r_{N-1})``.

* **HOSVD** (De Lathauwer, De Moor & Vandewalle 2000a): ``U_n`` spans the ``r_n`` leading left
  singular vectors of ``unfold(x, n)``; ``G = x ×_n U_nᵀ``.
* **ST-HOSVD** (Vannieuwenhoven, Vandebril & Meerbergen 2012): the same, one mode at a time on
  the already-truncated tensor, which is cheaper and usually no less accurate.
* **HOOI** (De Lathauwer et al. 2000b): alternately, ``U_n ← leading r_n left singular
  vectors of unfold(Y_n, n)`` with ``Y_n = x ×_{k≠n} U_kᵀ``. Taking an SVD at every step is
  the expensive part; following HOQRI (Sun, Guo, Luo, Wang & Huang, ICASSP 2020) we replace it
  by ``subspace_iter`` steps of orthogonal iteration warm-started at the current factor,
  ``U_n ← qr((Y_(n) Y_(n)ᵀ + δI) U_n)``, which has the same fixed points at a fraction of the
  cost (the shift ``δ = sqrt(eps)‖Y‖²`` keeps the QR of full rank, and its derivative finite,
  when the data have a lower rank than ``r_n``).
  The ``Y_n`` of a sweep share work through a dimension tree (the data are read twice per
  sweep whatever the order). Factors stay orthonormal, so the error follows from the core:
  ``‖x − x̂‖² = ‖x‖² − ‖G‖²``.
* **Nonnegative Tucker** (``nonneg=True``): the factors by HALS (Phan & Cichocki, NOLTA
  2011), i.e. the exact nonnegative least-squares update of one column at a time, from
  ``Y_(n) G_(n)ᵀ`` and ``G_(n) (⊗_{k≠n} U_kᵀU_k) G_(n)ᵀ`` (both in the compressed domain);
  the core by 50 steps of accelerated projected gradient (FISTA, Beck & Teboulle 2009) on
  ``½‖x − G ×_k U_k‖²`` over ``G ≥ 0``, whose gradient ``G ×_k U_kᵀU_k − x ×_k U_kᵀ`` also
  lives in the core space.

Missing data (``mask``, HOOI only) are handled by EM imputation: every sweep fits the data with
the missing entries filled in by the current model (the HOSVD of the zero-filled data to
start), which never increases the error on the observed entries. (CP uses weighted ALS
instead, whose row-wise least-squares updates have no counterpart for orthonormal factors.)

Scale: the fit runs on ``x / 2^k`` with ``2^k`` near ``max |x|`` and scales the core back, so
``tucker(c·x) = c·tucker(x)`` for data of any magnitude and ``rel_error`` is the true one.
"""

from __future__ import annotations

import functools
from typing import Literal, Union

import jax
import jax.numpy as jnp
from jax import lax

from tensorfact import algebra, sharding
from tensorfact._checks import (Init, Precision, as_float_array, check_choice, check_mask,
                                check_modes, check_positive_int, check_ranks, count_nonfinite,
                                report_nonfinite)
from tensorfact._numerics import pow2_scale
from tensorfact.decomposition import _sharded
from tensorfact.decomposition._common import (check_finite_init, check_iteration_args,
                                              hals_columns, leading_subspace, positive_floor,
                                              random_orthonormal, resolve_init, resolve_tol)
from tensorfact.decomposition._loop import (DEFAULT_TOL, FitInfo, iterate,
                                            refine_error, relative_error, relative_from_squares)
from tensorfact.decomposition._sweeps import hoqri_update, tucker_sweep_modes
from tensorfact.tensors import TuckerTensor

__all__ = ["tucker", "Method"]

#: The Tucker algorithms (``method=``).
Method = Literal["hooi", "hosvd", "st_hosvd"]


def tucker(x, ranks, *, key=None, method: Method = "hooi",
           init: Union[Init, TuckerTensor] = "svd", n_iter: int = 100, tol: float = DEFAULT_TOL,
           mask=None, nonneg: bool = False, modes=None, subspace_iter: int = 1,
           precision: Precision = "highest", return_info: bool = False):
    """Tucker decomposition of an N-way array.

    Args:
      x: array with at least 2 dimensions, none of size zero. A ``jax.Array`` split over a
        device mesh (see :mod:`tensorfact.sharding`) is fitted where it lies (HOOI or HOSVD,
        all modes), never gathered; the result is replicated on the mesh (details: the design
        notes, "Sharding").
      ranks: the multilinear ranks, one per decomposed mode (``ranks[i]`` for ``modes[i]``; an
        int means the same for all); each at most the size of its mode.
      key: ``jax.random`` key; needed for ``init="random"`` only.
      method: ``"hooi"`` (iterative, default), ``"hosvd"`` or ``"st_hosvd"`` (one pass).
      init: HOOI's start: ``"svd"`` (the HOSVD), ``"random"`` (random orthonormal factors;
        needs ``key``), or a finite ``TuckerTensor`` of matching shapes.
      n_iter: at most ``n_iter`` sweeps (static: it sizes ``info.errors``).
      tol: stop when the relative error changes by less than ``tol`` between sweeps (the
        default, 1e-8, runs until the error stops changing in float32); a concrete ``tol=0``
        runs exactly ``n_iter`` sweeps as a ``lax.scan``, through which ``jax.grad`` can
        differentiate.
      mask: optional boolean (or 0/1) array of ``x.shape`` (True = observed), fitted by EM
        imputation; needs ``method="hooi"``. Missing entries may hold anything, NaN included.
      nonneg: nonnegative core and factors (HALS factors, FISTA core).
      modes: decompose only these modes (partial Tucker, e.g. ``modes=(0, 1)`` for Tucker-2);
        the core keeps the full size of the other modes.
      subspace_iter: orthogonal-iteration steps per factor update in HOOI (1 is HOQRI).
      precision: XLA precision of the contractions: ``"highest"`` (the default) is true
        float32; ``None`` is JAX's default (TF32 or bfloat16 passes on recent GPUs and TPUs);
        also ``"default"``, ``"high"`` or a ``jax.lax.Precision``.
      return_info: also return a :class:`FitInfo` (for one-pass methods ``n_iter`` is 0 and
        ``errors`` is empty).

    Returns:
      A :class:`TuckerTensor` (orthonormal factors unless ``nonneg``), or
      ``(TuckerTensor, FitInfo)``.

    Example:
      >>> import jax, tensorfact as tfa
      >>> x = tfa.random_tucker(jax.random.key(0), (20, 21, 22), ranks=(3, 4, 5)).to_dense()
      >>> approx, info = tfa.tucker(x, (3, 4, 5), return_info=True)
      >>> bool(info.rel_error < 1e-4)
      True
      >>> tiny = tfa.tucker(1e-30 * x, (3, 4, 5))  # scale-equivariant
      >>> bool(tfa.relative_error(1e-30 * x, tiny.to_dense()) < 1e-4)
      True

    Raises:
      ValueError: for fewer than 2 dimensions or a mode of size zero, ranks that are not
        positive integers, exceed their mode or do not match the number of modes, a bad
        ``method``/``init``/``mask``, a mask or ``nonneg`` with a one-pass method, a missing
        key for ``init="random"``, NaN/Inf in ``init``, or NaN/Inf in the observed entries of
        ``x`` (eager calls).
    """
    x = as_float_array(x, "x", min_ndim=2, nonempty=True)
    modes = tuple(range(x.ndim)) if modes is None else check_modes(modes, x.ndim)
    ranks = check_ranks(ranks, x.shape, modes=modes)
    modes, ranks = zip(*sorted(zip(modes, ranks)))  # ranks[i] belongs to modes[i]
    method = check_choice(method, Method, "method")
    n_iter, tol = check_iteration_args(n_iter, tol)
    subspace_iter = check_positive_int(subspace_iter, "subspace_iter")
    mask = check_mask(mask, x.shape)
    if method != "hooi" and (mask is not None or nonneg):
        what = "mask" if mask is not None else "nonneg=True"
        raise ValueError(f"{what} needs the iterative method='hooi', got method={method!r}.")
    init_tensor, init_kind = resolve_init(init, TuckerTensor, key,
                                          lambda t: _check_init(t, x.shape, ranks, modes))
    fixed, tol = resolve_tol(tol)
    if sharding.is_mode_sharded(x):  # split over a device mesh: keep it distributed
        return _sharded.tucker(x, mask, key, init_tensor, tol, ranks=ranks, modes=modes,
                               method=method, n_iter=n_iter, fixed=fixed, init=init_kind,
                               nonneg=bool(nonneg), subspace_iter=subspace_iter,
                               precision=precision, return_info=bool(return_info))
    result, n_nonfinite = _tucker_fit(
        x, mask, key, init_tensor, tol, ranks=ranks, modes=modes, method=method, n_iter=n_iter,
        fixed=fixed, init=init_kind, nonneg=bool(nonneg), subspace_iter=subspace_iter,
        precision=precision, return_info=bool(return_info))
    report_nonfinite(n_nonfinite, "x", maskable=True)  # counted in the fit: no extra pass
    return result


def _check_init(init: TuckerTensor, shape, ranks, modes) -> TuckerTensor:
    """Checks a starting TuckerTensor and returns it with its factors in ascending mode order."""
    if init.shape != tuple(shape) or sorted(init.modes) != list(modes) or dict(
            zip(init.modes, init.rank)) != dict(zip(modes, ranks)):
        raise ValueError(f"init must be a TuckerTensor of shape {tuple(shape)}, ranks {ranks} "
                         f"over modes {modes}; got shape {init.shape}, ranks {init.rank} over "
                         f"modes {init.modes}.")
    check_finite_init(init)
    by_mode = dict(zip(init.modes, init.factors))
    return TuckerTensor(init.core, [by_mode[m] for m in modes], modes)


@functools.partial(jax.jit, static_argnames=(
    "ranks", "modes", "method", "n_iter", "fixed", "init", "nonneg", "subspace_iter",
    "precision", "return_info"))
def _tucker_fit(x, mask, key, init_tensor, tol, *, ranks, modes, method, n_iter, fixed, init,
                nonneg, subspace_iter, precision, return_info):
    n_nonfinite = count_nonfinite(x, mask)  # fused with the first pass over x
    if mask is not None:
        x = jnp.where(mask, x, 0)
    scale = lax.stop_gradient(pow2_scale(x))  # fit x / 2^k: exact, and no square overflows
    x = x / scale
    mmd = functools.partial(algebra.multi_mode_dot, precision=precision)

    if method != "hooi":
        factors = (_st_hosvd if method == "st_hosvd" else _hosvd)(x, ranks, modes, precision)
        core = mmd(x, factors, modes, transpose=True)
        result = TuckerTensor(core * scale, factors, modes)
        if not return_info:
            return result, n_nonfinite
        rel = relative_error(x, TuckerTensor(core, factors, modes).to_dense(precision=precision))
        empty = jnp.zeros((0,), x.dtype)
        info = FitInfo(jnp.asarray(0, jnp.int32), empty, rel, jnp.ones((), bool))
        return (result, info), n_nonfinite

    if init == "given":
        factors = tuple(u.astype(x.dtype) for u in init_tensor.factors)
        core = init_tensor.core.astype(x.dtype) / scale
    else:
        if init == "svd":
            factors = _hosvd(x, ranks, modes, precision)
        else:
            keys = jax.random.split(key, len(modes))
            factors = tuple(random_orthonormal(k, x.shape[m], r, x.dtype)
                            for k, m, r in zip(keys, modes, ranks))
        if nonneg:
            factors = tuple(jnp.abs(u) for u in factors)
        core = mmd(x, factors, modes, transpose=True)
        if nonneg:
            core = jnp.abs(core)

    sweep = functools.partial(_nonneg_sweep if nonneg else _hooi_sweep, modes=modes,
                              subspace_iter=subspace_iter, precision=precision)
    norm_x_sq = jnp.vdot(x, x, precision=algebra.resolve_precision(precision))

    if mask is None:
        def step(state):
            factors, core, err_sq = sweep(x, *state, norm_x_sq=norm_x_sq)
            dense = lambda: TuckerTensor(core, factors, modes).to_dense(precision=precision)  # noqa: E731
            err = refine_error(relative_from_squares(err_sq, norm_x_sq),
                               lambda: relative_error(x, dense()))
            return (factors, core), err

        state = (factors, core)
    else:
        def step(state):
            factors, core, approx = state
            filled = jnp.where(mask, x, approx)
            filled_sq = jnp.vdot(filled, filled, precision=algebra.resolve_precision(precision))
            factors, core, _ = sweep(filled, factors, core, norm_x_sq=filled_sq)
            approx = TuckerTensor(core, factors, modes).to_dense(precision=precision)
            return (factors, core, approx), relative_error(x, approx, mask)

        state = (factors, core, TuckerTensor(core, factors, modes).to_dense(precision=precision))

    state, n_done, errors, converged = iterate(step, state, n_iter=n_iter,
                                               tol=0 if fixed else tol)
    result = TuckerTensor(state[1] * scale, state[0], modes)
    if not return_info:
        return result, n_nonfinite
    rel = relative_error(x, TuckerTensor(state[1], state[0], modes).to_dense(
        precision=precision), mask)
    return (result, FitInfo(n_done, errors, rel, converged)), n_nonfinite


def _hosvd(x, ranks, modes, precision):
    return tuple(leading_subspace(algebra.unfold(x, m), r, precision=precision)
                 for m, r in zip(modes, ranks))


def _st_hosvd(x, ranks, modes, precision):
    factors, y = [], x
    for m, r in zip(modes, ranks):
        u = leading_subspace(algebra.unfold(y, m), r, precision=precision)
        y = algebra.mode_dot(y, u, m, transpose=True, precision=precision)
        factors.append(u)
    return tuple(factors)


def _hooi_sweep(x, factors, core, *, modes, subspace_iter, precision, norm_x_sq):
    """One HOQRI sweep; returns factors, core and the squared error ``‖x‖² − ‖G‖²``."""
    del core  # HOOI's update depends on the factors alone
    prec = algebra.resolve_precision(precision)
    current, n, y = tucker_sweep_modes(x, factors, modes, hoqri_update(subspace_iter, precision),
                                 precision)
    core = algebra.mode_dot(y, current[n], n, transpose=True, precision=precision)
    err_sq = norm_x_sq - jnp.vdot(core, core, precision=prec)
    return tuple(current[m] for m in modes), core, err_sq


def _nonneg_sweep(x, factors, core, *, modes, subspace_iter, precision, norm_x_sq):
    """One nonnegative Tucker sweep: HALS on the factor columns (the exact nonnegative
    minimiser per column, with ``B_n = G_(n)(⊗_{k≠n} U_k)ᵀ``: ``numer = X_(n)B_nᵀ`` and
    ``B_nB_nᵀ`` both formed in the compressed domain), then projected-gradient steps on the
    core. Returns factors, core, error²."""
    del subspace_iter
    prec = algebra.resolve_precision(precision)
    grams = {m: jnp.matmul(u.T, u, precision=prec) for m, u in zip(modes, factors)}

    def update(n, y, current):
        core_n = algebra.unfold(core, n)
        numer = jnp.matmul(algebra.unfold(y, n), core_n.T, precision=prec)
        rest = [m for m in modes if m != n]
        mixed = algebra.multi_mode_dot(core, [grams[m] for m in rest], rest, precision=precision)
        gram_n = jnp.matmul(algebra.unfold(mixed, n), core_n.T, precision=prec)
        u = hals_columns(current[n], numer, gram_n, 0.0, precision)
        grams[n] = jnp.matmul(u.T, u, precision=prec)
        return u

    current, n, y = tucker_sweep_modes(x, factors, modes, update, precision)
    projected = algebra.mode_dot(y, current[n], n, transpose=True, precision=precision)
    all_grams = [grams[m] for m in modes]  # x ×_k U_kᵀ above uses the current factors
    core = _core_nnls(core, projected, all_grams, modes, precision)
    approx_sq = jnp.vdot(core, algebra.multi_mode_dot(core, all_grams, modes, precision=precision),
                         precision=prec)
    err_sq = norm_x_sq - 2 * jnp.vdot(projected, core, precision=prec) + approx_sq
    return tuple(current[m] for m in modes), core, err_sq


def _core_nnls(core, projected, grams, modes, precision, n_steps: int = 50):
    """A few accelerated projected-gradient (FISTA, Beck & Teboulle 2009) steps on the core for
    ``min_{G ≥ 0} ½‖x − G ×_k U_k‖²``, whose gradient ``G ×_k U_kᵀU_k − x ×_k U_kᵀ`` and
    Lipschitz constant ``∏_k λ_max(U_kᵀU_k)`` live entirely in the small core space."""
    lipschitz = functools.reduce(lambda a, g: a * jnp.linalg.eigvalsh(g)[-1], grams, 1.0)
    step = 1.0 / jnp.maximum(lipschitz, positive_floor(core.dtype))

    def body(_, carry):
        g, y, t = carry
        grad = algebra.multi_mode_dot(y, grams, modes, precision=precision) - projected
        g_new = jnp.maximum(y - step * grad, 0.0)
        t_new = (1 + jnp.sqrt(1 + 4 * t * t)) / 2
        return g_new, g_new + ((t - 1) / t_new) * (g_new - g), t_new

    one = jnp.ones((), core.dtype)
    return jax.lax.fori_loop(0, n_steps, body, (core, core, one))[0]
