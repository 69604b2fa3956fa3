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
  ``U_n ← qr(Y_(n) · Y_(n)ᵀ U_n)``, which has the same fixed points at a fraction of the cost.
  The ``Y_n`` of a sweep share work through a dimension tree (the data are read twice per
  sweep whatever the order). Factors stay orthonormal, so the error follows from the core:
  ``‖x − x̂‖² = ‖x‖² − ‖G‖²``.
* **Nonnegative Tucker** (``nonneg=True``): the factors by HALS (Phan & Cichocki, NOLTA
  2011), i.e. the exact nonnegative least-squares update of one column at a time, from
  ``Y_(n) G_(n)ᵀ`` and ``G_(n) (⊗_{k≠n} U_kᵀU_k) G_(n)ᵀ`` (both in the compressed domain);
  the core by the multiplicative update of Kim & Choi (CVPR 2007),
  ``G ← G ⊛ (x ×_k U_kᵀ) ⊘ (G ×_k U_kᵀU_k)``.

Missing data (``mask``) are handled by EM imputation as in :func:`tensorfact.cp`.
"""

from __future__ import annotations

import functools
from typing import Union

import jax
import jax.numpy as jnp

from tensorfact import algebra, sharding
from tensorfact._checks import (as_float_array, check_choice, check_mask, count_nonfinite,
                                check_modes, check_positive_int, check_ranks, report_nonfinite,
                                check_key)
from tensorfact.decomposition import _sharded
from tensorfact.decomposition._common import (check_iteration_args, concrete_or_traced,
                                              hals_columns, leading_subspace, positive_floor,
                                              random_orthonormal)
from tensorfact.decomposition._sweeps import hoqri_update, tucker_sweep_modes
from tensorfact.decomposition._loop import (FitInfo, is_fixed_length, iterate, refine_error,
                                            relative_error)
from tensorfact.tensors import TuckerTensor

__all__ = ["tucker"]

_METHODS = ("hooi", "hosvd", "st_hosvd")
_INITS = ("svd", "random")


def tucker(x, ranks, *, method: str = "hooi", key=None, init: Union[str, TuckerTensor] = "svd",
           n_iter: int = 100, tol: float = 1e-8, mask=None, nonneg: bool = False, modes=None,
           subspace_iter: int = 1, precision="highest", return_info: bool = False):
    """Tucker decomposition of an N-way array.

    Args:
      x: array with at least 2 dimensions. A ``jax.Array`` split over a device mesh (see
        :mod:`tensorfact.sharding`) is fitted where it lies (HOOI or HOSVD, all modes), never
        gathered; the result is replicated on the mesh (details:
        :func:`tensorfact.decomposition._sharded.tucker`).
      ranks: the multilinear ranks, one per decomposed mode (``ranks[i]`` for ``modes[i]``; an
        int means the same for all); each at most the size of its mode.
      method: ``"hooi"`` (iterative, default), ``"hosvd"`` or ``"st_hosvd"`` (one pass).
      key: ``jax.random`` key, needed for ``init="random"``.
      init: HOOI's start: ``"svd"`` (the HOSVD), ``"random"`` (random orthonormal factors), or
        a ``TuckerTensor`` of matching shapes.
      n_iter, tol: at most ``n_iter`` sweeps, stopping when the relative error changes by less
        than ``tol``; a literal ``tol=0`` runs exactly ``n_iter`` sweeps as a differentiable
        ``lax.scan``.
      mask: optional boolean array of ``x.shape`` (True = observed); needs an iterative method.
      nonneg: nonnegative core and factors (HALS factors, projected-gradient core).
      modes: decompose only these modes (partial Tucker, e.g. ``modes=(0, 1)`` for Tucker-2);
        the core keeps the full size of the other modes.
      subspace_iter: orthogonal-iteration steps per factor update in HOOI (1 is HOQRI).
      precision: XLA precision of the contractions; ``"highest"`` (the default) is full float32,
        ``None`` JAX's default.
      return_info: also return a :class:`FitInfo` (for one-pass methods ``n_iter`` is 0 and
        ``errors`` is empty).

    Returns:
      A :class:`TuckerTensor` (orthonormal factors unless ``nonneg``), or
      ``(TuckerTensor, FitInfo)``.

    Example:
      >>> import jax, tensorfact as tfa
      >>> x = tfa.random_tucker(jax.random.key(0), (20, 21, 22), ranks=(3, 4, 5)).to_dense()
      >>> approx = tfa.tucker(x, (3, 4, 5))
      >>> bool(tfa.relative_error(x, approx.to_dense()) < 1e-4)
      True

    Raises:
      ValueError: for fewer than 2 dimensions, ranks that are not positive integers, exceed
        their mode or do not match the number of modes, a bad ``method``/``init``/``mask``,
        a mask or ``nonneg`` with a one-pass method, or NaN/Inf in an eager call.
    """
    x = as_float_array(x, "x", min_ndim=2)
    modes = tuple(range(x.ndim)) if modes is None else check_modes(modes, x.ndim)
    ranks = check_ranks(ranks, x.shape, modes=modes)
    modes, ranks = zip(*sorted(zip(modes, ranks)))  # ranks[i] belongs to modes[i]
    method = check_choice(method, _METHODS, "method")
    n_iter, tol = check_iteration_args(n_iter, tol)
    subspace_iter = check_positive_int(subspace_iter, "subspace_iter")
    mask = check_mask(mask, x.shape)
    if method != "hooi" and (mask is not None or nonneg):
        what = "mask" if mask is not None else "nonneg=True"
        raise ValueError(f"{what} needs the iterative method='hooi', got method={method!r}.")
    if isinstance(init, TuckerTensor):
        init_tensor, init_kind = _check_init(init, x.shape, ranks, modes), "given"
    else:
        init_kind = check_choice(init, _INITS, "init")
        init_tensor = None
        if init == "random":
            check_key(key, 'for init="random"')
    fixed = is_fixed_length(tol)
    tol = 0.0 if fixed else concrete_or_traced(tol)
    if sharding.is_mode_sharded(x):  # split over a device mesh: keep it distributed
        return _sharded.tucker(x, mask, key, init_tensor, tol, ranks=ranks, modes=modes,
                               method=method, n_iter=n_iter, fixed=fixed, init=init_kind,
                               nonneg=bool(nonneg), subspace_iter=subspace_iter,
                               precision=precision, return_info=bool(return_info))
    result, n_nonfinite = _tucker_fit(
        x, mask, key, init_tensor, tol, ranks=ranks, modes=modes, method=method, n_iter=n_iter,
        fixed=fixed, init=init_kind, nonneg=bool(nonneg), subspace_iter=subspace_iter,
        precision=precision, return_info=bool(return_info))
    report_nonfinite(n_nonfinite, "x")  # counted inside the fit: no extra pass
    return result


def _check_init(init: TuckerTensor, shape, ranks, modes) -> TuckerTensor:
    """Checks a starting TuckerTensor and returns it with its factors in ascending mode order."""
    if init.shape != tuple(shape) or sorted(init.modes) != list(modes) or dict(
            zip(init.modes, init.rank)) != dict(zip(modes, ranks)):
        raise ValueError(f"init must be a TuckerTensor of shape {tuple(shape)}, ranks {ranks} "
                         f"over modes {modes}; got shape {init.shape}, ranks {init.rank} over "
                         f"modes {init.modes}.")
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
    mmd = functools.partial(algebra.multi_mode_dot, precision=precision)

    if method != "hooi":
        factors = (_st_hosvd if method == "st_hosvd" else _hosvd)(x, ranks, modes, precision)
        result = TuckerTensor(mmd(x, factors, modes, transpose=True), factors, modes)
        if not return_info:
            return result, n_nonfinite
        rel = relative_error(x, result.to_dense(precision=precision))
        empty = jnp.zeros((0,), x.dtype)
        info = FitInfo(jnp.asarray(0, jnp.int32), empty, rel, jnp.ones((), bool))
        return (result, info), n_nonfinite

    if init == "given":
        factors = tuple(u.astype(x.dtype) for u in init_tensor.factors)
        core = init_tensor.core.astype(x.dtype)
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
    tiny = jnp.finfo(x.dtype).tiny

    if mask is None:
        def step(state):
            factors, core, err_sq = sweep(x, *state, norm_x_sq=norm_x_sq)
            dense = lambda: TuckerTensor(core, factors, modes).to_dense(precision=precision)  # noqa: E731
            err = refine_error(jnp.sqrt(err_sq / jnp.maximum(norm_x_sq, tiny)),
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
    result = TuckerTensor(state[1], state[0], modes)
    if not return_info:
        return result, n_nonfinite
    rel = relative_error(x, result.to_dense(precision=precision), mask)
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
    err_sq = jnp.maximum(norm_x_sq - jnp.vdot(core, core, precision=prec), 0.0)
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
    err_sq = jnp.maximum(norm_x_sq - 2 * jnp.vdot(projected, core, precision=prec) + approx_sq, 0.0)
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
