"""Tensor ring decomposition: TR-SVD and TR-ALS (Zhao, Zhou, Xie, Zhang & Cichocki 2016).

Finds ``x[i_0, ..., i_{d-1}] ≈ Tr(G_0[:, i_0, :] ··· G_{d-1}[:, i_{d-1}, :])`` with cores
``G_k`` of shape ``(r_k, n_k, r_{k+1})``, ``r_d = r_0``.

* **TR-SVD** (Algorithm 1 of the paper): the first unfolding ``X_(0)`` (``n_0 × ∏_{k>0} n_k``)
  is truncated to rank ``r_0 r_1``, ``X_(0) ≈ U W``; the columns of ``U`` are split into the
  two bonds of the first core, ``G_0[a, i, b] = U[i, a r_1 + b]``, and ``W``, reshaped to
  ``(r_1, n_1 ··· n_{d-1}, r_0)``, is factorized by a TT-SVD that carries the ``r_0`` bond
  along to the last core. One pass, no iteration; quasi-optimal only at the first bond. The
  split of ``U`` into two bonds is arbitrary (it depends on the singular vectors' signs, fixed
  here as in scikit-learn and TensorLy: largest entry positive), and it mixes the ``r_0`` bond
  into the rest: a planted ring of ranks ``r`` is recovered exactly only with middle ranks up
  to ``r_0² r_k``. TR-ALS removes that.
* **TR-ALS** (Algorithm 2): each core in turn solves the linear least-squares problem
  ``min ‖X_[k] − G_k(2) · S_{≠k}(2)‖`` with the others fixed, where ``S_{≠k}`` is the
  subchain ``G_{k+1} ··· G_{d-1} G_0 ··· G_{k-1}`` (shape ``(r_{k+1}, ∏_{j≠k} n_j, r_k)``):
  ``G_k(2) = X_[k] S(2)ᵀ (S(2) S(2)ᵀ)⁻¹`` by a normal-equation solve (with a small proximal
  term that keeps it finite when the Gram matrix is singular; see
  :func:`_solve_normal_equations`). The Gram matrix
  ``S(2) S(2)ᵀ`` (``r_k r_{k+1}`` square) is the product of the other cores' transfer matrices
  ``Σ_i G_j[:, i, :] ⊗ G_j[:, i, :]``, so the subchain is only contracted once, with the data.
  After its update each core but the last of a sweep is scaled to unit norm (the next solve
  absorbs the scale), which keeps the Gram matrices well conditioned; the error then follows
  from ``‖x‖² − 2⟨x, x̂⟩ + ‖x̂‖²`` at the last core, without forming ``x̂``. Per core, the
  subchain costs ``O(r³ ∏_{j≠k} n_j)`` flops and ``r_k r_{k+1} ∏_{j≠k} n_j`` entries of memory
  (``r²/n_k`` times the data), its contraction with the data ``O(r² ∏ n)``.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from typing import Literal, Union

import jax
import jax.numpy as jnp
import numpy as np

from tensorfact import algebra
from tensorfact._checks import (Init, Precision, as_float_array, check_choice, check_key,
                                check_positive_int, count_nonfinite, report_nonfinite)
from tensorfact._numerics import pow2_scale
from tensorfact.decomposition._common import (check_iteration_args, concrete_or_traced,
                                              leading_subspace)
from tensorfact.decomposition._loop import (FitInfo, error_from_norms, is_fixed_length, iterate,
                                            refine_error, relative_error)
from tensorfact._numerics import pow2_normalize
from tensorfact.tensors._tr import TRTensor, chain, transfer_chain

__all__ = ["tensor_ring"]

Method = Literal["svd", "als"]


def tensor_ring(x, ranks, *, key=None, method: Method = "svd", init: Union[Init, TRTensor] = "svd",
                n_iter: int = 100, tol: float = 1e-8, precision: Precision = "highest",
                return_info: bool = False):
    """Tensor ring decomposition of a ``d``-way array (``d ≥ 2``).

    Args:
      x: array with at least 2 dimensions, none of size zero (float32 or float64; other real
        dtypes are cast to float32).
      ranks: the ``d`` bond sizes ``(r_0, ..., r_{d-1})`` (core ``k`` has shape
        ``(r_k, n_k, r_{k+1})``, ``r_d = r_0``), TensorLy's ``d + 1`` sizes
        ``(r_0, ..., r_{d-1}, r_0)`` that repeat ``r_0`` at the end, or one int for all. For
        TR-SVD (also the default start of TR-ALS) ``r_0 r_1`` must not exceed
        ``min(n_0, ∏_{k>0} n_k)``, the rank bound of the first unfolding. A later bond larger
        than its unfolding's rank is padded with zero slices (an exact representation, but a
        padded bond stays zero under ALS: use ``init="random"`` to use it).
      key: ``jax.random`` key, needed for ``init="random"`` (and only there).
      method: ``"svd"`` (TR-SVD, one pass, default) or ``"als"`` (TR-ALS).
      init: TR-ALS's start: ``"svd"`` (the TR-SVD), ``"random"`` (Gaussian cores), or a
        :class:`TRTensor` of the same shape and ranks. TR-ALS has local minima (TensorLy's
        stalls at the same ones): if the error stays high, try the other start or another key.
      n_iter, tol: at most ``n_iter`` ALS sweeps, stopping when the relative error changes by
        less than ``tol`` (default ``1e-8``: in float32, until it stops changing); a literal
        ``tol=0`` runs exactly ``n_iter`` sweeps as a ``lax.scan`` (differentiable with
        ``jax.grad``).
      precision: XLA precision of the contractions; ``"highest"`` (the default) is full float32,
        ``None`` JAX's default.
      return_info: also return a :class:`FitInfo` (for ``"svd"``, ``n_iter`` is 0 and
        ``errors`` is empty).

    Returns:
      A :class:`TRTensor`, or ``(TRTensor, FitInfo)`` with ``return_info=True``.

    Scale: the fit runs on ``x / 2^k`` with ``2^k`` near ``max |x|`` (exact) and the last core
    takes ``2^k`` back, so ``tensor_ring(c·x) = c·tensor_ring(x)`` and ``info.rel_error`` is
    the true error for data of any representable magnitude.

    Example:
      >>> import jax, tensorfact as tfa
      >>> keys = jax.random.split(jax.random.key(0), 3)
      >>> cores = [jax.random.normal(k, (2, n, 2)) for k, n in zip(keys, (6, 7, 8))]
      >>> x = tfa.TRTensor(cores).to_dense()
      >>> approx = tfa.tensor_ring(x, 2, key=jax.random.key(1), method="als", init="random")
      >>> bool(tfa.relative_error(x, approx.to_dense()) < 1e-4)
      True

    Raises:
      ValueError: for fewer than 2 dimensions or a mode of size zero, ranks that are not
        positive integers or not one per mode (or ``d + 1`` with ``r_d ≠ r_0``), ``r_0 r_1``
        above the first unfolding's rank bound (TR-SVD start), a bad ``method``/``init``, a
        missing ``key`` for ``init="random"``, an ``init`` of the wrong shape or ranks, or
        NaN/Inf in ``x`` or a given ``init`` in an eager call.

    Reference: Q. Zhao, G. Zhou, S. Xie, L. Zhang and A. Cichocki, "Tensor Ring Decomposition",
    arXiv:1606.05535, 2016.
    """
    x = as_float_array(x, "x", min_ndim=2, nonempty=True)
    ranks = _check_tr_ranks(ranks, x.ndim)
    method = check_choice(method, Method, "method")
    n_iter, tol = check_iteration_args(n_iter, tol)
    if isinstance(init, TRTensor):
        init_tensor, init_kind = _check_init(init, x.shape, ranks), "given"
    else:
        init_kind = check_choice(init, Init, "init")
        init_tensor = None
        if method == "als" and init_kind == "random":
            check_key(key, 'for init="random"')
    if method == "svd" or init_kind == "svd":
        _check_svd_ranks(ranks, x.shape)
    fixed = is_fixed_length(tol)
    tol = 0.0 if fixed else concrete_or_traced(tol)
    result, n_nonfinite, n_nonfinite_init = _tr_fit(
        x, key, init_tensor, tol, ranks=ranks, method=method, n_iter=n_iter, fixed=fixed,
        init=init_kind, precision=precision, return_info=bool(return_info))
    report_nonfinite(n_nonfinite, "x")
    report_nonfinite(n_nonfinite_init, "init")
    return result


def _check_tr_ranks(ranks, ndim: int) -> tuple[int, ...]:
    """One positive bond size per mode (an int for all), or TensorLy's ``d + 1`` with the
    closing ``r_d = r_0`` repeated."""
    if isinstance(ranks, numbers.Integral) and not isinstance(ranks, bool):
        ranks = (ranks,) * ndim
    if isinstance(ranks, str) or not isinstance(ranks, (Sequence, np.ndarray)):
        raise ValueError(f"ranks must be an int or a sequence of ints, got {ranks!r}.")
    ranks = tuple(ranks)
    if len(ranks) not in (ndim, ndim + 1):
        raise ValueError(f"ranks must hold one bond size per mode ({ndim}: r_0, ..., r_{ndim - 1},"
                         f" with r_{ndim} = r_0 closing the ring), or {ndim + 1} with r_{ndim} = "
                         f"r_0 repeated, got {len(ranks)}: {ranks!r}.")
    checked = tuple(check_positive_int(r, f"ranks[{k}]") for k, r in enumerate(ranks))
    if len(checked) == ndim + 1:
        if checked[0] != checked[-1]:
            raise ValueError(f"ranks of length {ndim + 1} (TensorLy's convention) must close the "
                             f"ring with ranks[{ndim}] = ranks[0], got ranks[0] = {checked[0]} "
                             f"and ranks[{ndim}] = {checked[-1]}: {ranks!r}.")
        checked = checked[:-1]
    return checked


def _check_svd_ranks(ranks, shape):
    bound = min(shape[0], math.prod(shape[1:]))
    if ranks[0] * ranks[1] > bound:
        raise ValueError(
            f"ranks[0] * ranks[1] = {ranks[0]} * {ranks[1]} = {ranks[0] * ranks[1]} exceeds "
            f"{bound}, the rank bound of the first unfolding of shape ({shape[0]}, "
            f"{math.prod(shape[1:])}) that TR-SVD splits into the first two bonds; lower them, "
            "permute the modes, or use method='als' with init='random'.")


def _check_init(init: TRTensor, shape, ranks) -> TRTensor:
    if init.shape != tuple(shape) or init.rank != ranks:
        raise ValueError(f"init must be a TRTensor of shape {tuple(shape)} and ranks {ranks}; "
                         f"got shape {init.shape} and ranks {init.rank}.")
    return init


@functools.partial(jax.jit, static_argnames=(
    "ranks", "method", "n_iter", "fixed", "init", "precision", "return_info"))
def _tr_fit(x, key, init_tensor, tol, *, ranks, method, n_iter, fixed, init, precision,
            return_info):
    n_nonfinite = count_nonfinite(x)
    n_nonfinite_init = jnp.zeros((), jnp.int32)
    # Scale: fit x / 2^k (exact, entries of at most 1: no Gram matrix or squared norm over- or
    # underflows) and give 2^k back to the last core; errors are ratios, the same either way.
    scale = jax.lax.stop_gradient(pow2_scale(x))
    x = x / scale
    if method == "svd":
        cores = _tr_svd(x, ranks, precision)
        result = _rescaled(cores, scale)
        if not return_info:
            return result, n_nonfinite, n_nonfinite_init
        rel = relative_error(x, TRTensor(cores).to_dense(precision=precision))
        info = FitInfo(jnp.asarray(0, jnp.int32), jnp.zeros((0,), x.dtype), rel,
                       jnp.ones((), bool))
        return (result, info), n_nonfinite, n_nonfinite_init

    if init == "given":
        n_nonfinite_init = sum(count_nonfinite(g) for g in init_tensor.cores)
        # Each core normalised by its own power of two: ALS solves core 0 first from the others
        # alone, so the start's overall scale never mattered; this keeps it from overflowing.
        cores = tuple(pow2_normalize(g.astype(x.dtype))[0] for g in init_tensor.cores)
    elif init == "svd":
        cores = _tr_svd(x, ranks, precision)
    else:
        cores = _random_cores(key, x.shape, ranks, x.dtype)

    norm_x_sq = jnp.vdot(x, x, precision=algebra.resolve_precision(precision))

    def step(cores):
        cores, inner, approx_sq = _als_sweep(x, cores, precision)
        estimate = error_from_norms(norm_x_sq, inner, approx_sq)
        err = refine_error(estimate, lambda: relative_error(
            x, TRTensor(cores).to_dense(precision=precision)))
        return cores, err

    cores, n_done, errors, converged = iterate(step, cores, n_iter=n_iter,
                                               tol=0 if fixed else tol)
    result = _rescaled(cores, scale)
    if not return_info:
        return result, n_nonfinite, n_nonfinite_init
    rel = relative_error(x, TRTensor(cores).to_dense(precision=precision))
    return (result, FitInfo(n_done, errors, rel, converged)), n_nonfinite, n_nonfinite_init


def _rescaled(cores, scale) -> TRTensor:
    """The ring with its last core (the one that carries the norm) multiplied by ``scale``."""
    return TRTensor(tuple(cores[:-1]) + (cores[-1] * scale,))


def _truncated(matrix, r: int, precision):
    """``matrix ≈ U W`` with ``U`` (``m × r``, orthonormal columns) the ``r`` leading left
    singular vectors and ``W = Uᵀ matrix``. Past the matrix's rank bound ``min(m, p)``
    the factors are padded with zeros, which changes nothing in ``U W``."""
    rows, cols = matrix.shape
    r_eff = min(r, rows, cols)
    u = leading_subspace(matrix, r_eff, precision=precision)
    # The signs of singular vectors are arbitrary, and at the first bond they matter: flipping
    # one column of U flips one (a, b) slice of the remainder, which changes the ranks of its
    # later unfoldings. Fix them as scikit-learn and TensorLy do (largest entry positive), so
    # the result is deterministic and the same as theirs.
    pivots = u[jnp.argmax(jnp.abs(u), axis=0), jnp.arange(r_eff)]
    u = u * jnp.where(pivots < 0, -1, 1).astype(u.dtype)
    w = jnp.matmul(u.T, matrix, precision=algebra.resolve_precision(precision))
    if r_eff < r:
        u = jnp.pad(u, ((0, 0), (0, r - r_eff)))
        w = jnp.pad(w, ((0, r - r_eff), (0, 0)))
    return u, w


def _tr_svd(x, ranks, precision):
    """TR-SVD with fixed ranks: split the first truncated unfolding into bonds ``r_0 × r_1``,
    then a TT-SVD of the rest with the ``r_0`` bond carried to the last core."""
    shape, d = x.shape, x.ndim
    u, w = _truncated(x.reshape(shape[0], -1), ranks[0] * ranks[1], precision)
    cores = [u.reshape(shape[0], ranks[0], ranks[1]).transpose(1, 0, 2)]
    # rest[b, (i_1 ... i_{d-1}), a]: the r_0 bond moves to the end and travels with the train
    rest = w.reshape(ranks[0], ranks[1], -1).transpose(1, 2, 0)
    for k in range(1, d - 1):
        u, rest = _truncated(rest.reshape(ranks[k] * shape[k], -1), ranks[k + 1], precision)
        cores.append(u.reshape(ranks[k], shape[k], ranks[k + 1]))
    cores.append(rest.reshape(ranks[d - 1], shape[d - 1], ranks[0]))
    return tuple(cores)


def _random_cores(key, shape, ranks, dtype):
    """Gaussian cores scaled to unit Frobenius norm (the first ALS solve sets the scale), cut
    from one draw (one random-bits kernel to compile, not one per core)."""
    d = len(shape)
    sizes = [(ranks[k], shape[k], ranks[(k + 1) % d]) for k in range(d)]
    draw = jax.random.normal(key, (sum(math.prod(s) for s in sizes),), dtype)
    cores, start = [], 0
    for s in sizes:
        g = draw[start:start + math.prod(s)].reshape(s)
        cores.append(g / jnp.linalg.norm(g))
        start += math.prod(s)
    return tuple(cores)


def _als_sweep(x, cores, precision):
    """One TR-ALS sweep over the cores. Returns the cores, ``⟨x, x̂⟩`` and ``‖x̂‖²``."""
    d = x.ndim
    prec = algebra.resolve_precision(precision)
    cores = list(cores)
    for k in range(d):
        order = [(k + j) % d for j in range(1, d)]  # the subchain G_{k+1} ... G_{k-1}
        others = [cores[j] for j in order]
        r_k, n_k, r_next = cores[k].shape
        sub = chain(others, precision=precision)
        sub = sub.reshape((r_next,) + tuple(x.shape[j] for j in order) + (r_k,))
        # rhs[i, a, b] = Σ_J X[i, J] S[b, J, a]: the data meet the subchain once
        rhs = jnp.einsum(x, list(range(d)), sub, [d] + order + [d + 1], [k, d + 1, d],
                         precision=prec).reshape(n_k, r_k * r_next)
        w = transfer_chain(others, precision=precision)  # (b, b', a, a')
        gram = w.transpose(2, 0, 3, 1).reshape(r_k * r_next, r_k * r_next)
        previous = cores[k].transpose(1, 0, 2).reshape(n_k, r_k * r_next)
        unfolded = _solve_normal_equations(rhs, gram, previous)
        core = unfolded.reshape(n_k, r_k, r_next).transpose(1, 0, 2)
        if k < d - 1:
            scale = jnp.linalg.norm(core)
            core = core / jnp.where(scale > 0, scale, 1.0)
        cores[k] = core
    inner = jnp.vdot(rhs, unfolded, precision=prec)
    approx_sq = jnp.einsum("ip,pq,iq->", unfolded, gram, unfolded, precision=prec)
    return tuple(cores), inner, approx_sq


#: The proximal weight of a TR-ALS core solve, relative to the trace of its Gram matrix.
PROXIMAL = 16


def _solve_normal_equations(rhs, gram, previous):
    """The core update ``(rhs + λ G_old) (gram + λ I)⁻¹``: least squares with a proximal term
    ``λ‖G − G_old‖²``, ``λ = PROXIMAL · ε · tr(gram)`` (ε the dtype's machine epsilon).

    The Gram matrix is singular whenever a bond is more than the data can fill (a random start
    at a rank above the subchain's, a padded bond), and, formed from transfer matrices, it may
    even have slightly negative rounding-level eigenvalues: a plain Cholesky solve then returns
    NaN from the first sweep. The proximal term keeps ``gram + λI`` positive definite by a
    margin above float rounding, leaves the directions the data do not determine at their
    previous value instead of sending them to infinity, and, unlike a ridge penalty, has the
    same fixed points as ALS itself (a stationary core is its own update), so it costs no
    accuracy; the objective still decreases at every step (Li, Kindermann & Navasca,
    "Some convergence results on the regularized alternating least-squares method for tensor
    decomposition", Linear Algebra Appl. 438, 2013).

    The Gram matrices are ``r_k r_{k+1}`` square (64 for ranks 8), past the size where the
    shared unrolled small-matrix inverse of the CP fits compiles quickly; the solve is cheap
    next to the subchain contraction that precedes it."""
    r = gram.shape[0]
    eps = jnp.finfo(gram.dtype).eps
    lam = PROXIMAL * eps * jnp.maximum(jnp.trace(gram), 0) + jnp.finfo(gram.dtype).tiny
    factor = jax.scipy.linalg.cho_factor(gram + lam * jnp.eye(r, dtype=gram.dtype))
    return jax.scipy.linalg.cho_solve(factor, (rhs + lam * previous).T).T
