"""TT-cross: a tensor train of a black-box function on a grid, from a few of its values.

The tensor ``x[i_0, ..., i_{d-1}] = fn(i)`` is never formed. Its TT interpolant is built from
*fibers* ``C_k[α, i, β] = fn(I_k[α], i, J_{k+1}[β])`` (``r_k · n_k · r_{k+1}`` values each),
where ``I_k`` are ``r_k`` left multi-indices ``(i_0, ..., i_{k-1})`` and ``J_{k+1}`` are
``r_{k+1}`` right multi-indices ``(i_{k+1}, ..., i_{d-1})``, nested from one bond to the next.

Alternating sweeps refine the index sets (Oseledets & Tyrtyshnikov 2010, with the QR +
maxvol stabilisation of their Algorithm 2):

* left to right, for ``k = 0, ..., d−2``: ``C_k`` reshaped to ``(r_k n_k) × r_{k+1}`` is
  orthogonalised (``C_k = QR``) and the ``r_{k+1}`` rows of ``Q`` of (locally) maximal volume,
  found by :func:`maxvol`, extend ``I_k`` to ``I_{k+1}``;
* right to left, for ``k = d−1, ..., 1``: the same on ``C_kᵀ`` (``(n_k r_{k+1}) × r_k``) gives
  ``J_k`` from ``J_{k+1}``, and the core ``G_k = (Q Q[J]⁻¹)ᵀ`` (entries bounded by about 1,
  thanks to maxvol);
* at the end of each sweep ``G_0 = C_0``, and ``x ≈ G_0 G_1 ··· G_{d-1}`` interpolates ``fn``
  exactly on the current cross. A tensor of TT ranks at most ``ranks`` is recovered exactly.

Using ``Q`` rather than ``C_k`` itself keeps the steps well defined when ``C_k`` is rank
deficient (a function of lower rank than asked for), and the interpolation never inverts the
cross matrices ``fn(I_k, J_k)``.

The first right index sets are random (nested, distinct; no function values). Ranks are
fixed, so a sweep costs a known number of function evaluations,
``Σ_{k<d-1} r_k n_k r_{k+1} + Σ_{k>0} r_k n_k r_{k+1} + n_0 r_1``, about ``2 d n r²``, against
``∏ n`` for the dense tensor. The error is estimated after each sweep on a check set of
:data:`N_CHECK` random grid points (the whole grid if it is smaller), evaluated once: it is
what the stopping test ``tol`` and :class:`TTCrossInfo` report.

References: I. Oseledets and E. Tyrtyshnikov, "TT-cross approximation of multidimensional
arrays", Linear Algebra and its Applications 432(1), 70–88, 2010; S. A. Goreinov,
I. V. Oseledets, D. V. Savostyanov, E. E. Tyrtyshnikov and N. L. Zamarashkin, "How to find a
good submatrix", in Matrix Methods: Theory, Algorithms and Applications, World Scientific, 2010.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from tensorfact._checks import (Precision, check_key, check_nonneg_number, check_positive_int,
                                count_nonfinite, is_traced)
from tensorfact._numerics import safe_norm
from tensorfact.decomposition._common import concrete_or_traced, tt_rank_list
from tensorfact.decomposition._loop import is_fixed_length, iterate
from tensorfact.tensors._tt import TTTensor, tt_gather

__all__ = ["tt_cross", "maxvol", "TTCrossInfo"]

MAXVOL_TOL = 1.05  # stop when no entry of A·A[rows]⁻¹ exceeds this in modulus (Goreinov et al.)
MAXVOL_MAX_ITERS = 100
N_CHECK = 1024  # grid points on which the error is estimated (the whole grid if smaller)


class TTCrossInfo(NamedTuple):
    """Diagnostics of :func:`tt_cross` (returned with ``return_info=True``).

    The first four fields are :class:`~tensorfact.decomposition.FitInfo`'s. The errors are
    *estimates*: the tensor is never formed, so they are measured on a check set of
    :data:`N_CHECK` grid points drawn uniformly at random with the key (independently of the
    cross), or on the whole grid when it has at most that many points (then they are exact).

    Attributes:
      n_iter: sweeps run.
      errors: ``‖x − t‖ / ‖x‖`` on the check set after each sweep, length ``n_iter`` as
        requested; NaN past the last sweep run.
      rel_error: that estimate for the returned tensor (the last entry run of ``errors``).
      converged: whether the estimate changed by less than ``tol`` between two sweeps.
      n_evals: the number of values of ``fn`` used, check set included:
        ``N_check + n_iter · (Σ_{k<d−1} s_k + Σ_{k>0} s_k + s_0)`` with
        ``s_k = r_k n_k r_{k+1}`` the size of core ``k``'s fiber.
    """

    n_iter: jax.Array
    errors: jax.Array
    rel_error: jax.Array
    converged: jax.Array
    n_evals: jax.Array


def tt_cross(fn: Callable[[jax.Array], jax.Array], shape, ranks, *, key, n_iter: int = 4,
             tol: float = 1e-8, precision: Precision = "highest", return_info: bool = False):
    """TT approximation of ``x[i] = fn(i)`` on the grid ``shape``, by cross interpolation.

    Args:
      fn: maps an int32 array of multi-indices of shape ``(batch, d)`` to the values, shape
        ``(batch,)`` (float32 or float64; the result has that dtype). It is traced by JAX, so
        it must be written with ``jax.numpy`` (a gather from an array, a closed-form formula,
        a small network, ...). It is a static argument of the compiled program, keyed by
        identity: calling again with the same function object reuses the compilation, a new
        ``lambda`` compiles anew (close over arrays, or wrap the call in ``jax.jit``, to vary
        data without recompiling).
      shape: the grid ``(n_0, ..., n_{d-1})``, ``d ≥ 1`` positive ints.
      ranks: the TT ranks ``(1, r_1, ..., r_{d-1}, 1)`` (or the ``d − 1`` inner ones), or an
        int: the same rank at every bond, lowered to what the bond admits
        (``r_k ≤ min(∏_{j<k} n_j, ∏_{j≥k} n_j)``). Explicit
        ranks must satisfy that bound and ``r_{k+1} ≤ r_k n_k``, ``r_k ≤ n_k r_{k+1}``.
      key: ``jax.random`` key (required): the random start of the right index sets, and the
        check set on which the error is estimated.
      n_iter, tol: at most ``n_iter`` left-to-right + right-to-left sweeps (static), stopping
        when the error estimate (see :class:`TTCrossInfo`) changes by less than ``tol``
        between two sweeps (default ``1e-8``: in float32, until it stops changing). A literal
        ``tol=0`` runs exactly ``n_iter`` sweeps and, without ``return_info``, evaluates no
        check set.
      precision: XLA precision of the contractions that evaluate the train on the check set
        (the sweeps themselves are QRs, rank-one updates and ``fn``).
      return_info: also return a :class:`TTCrossInfo` (errors and the number of values of
        ``fn`` used).

    Returns:
      A :class:`TTTensor` of shape ``shape`` and ranks ``ranks``, or ``(TTTensor,
      TTCrossInfo)`` with ``return_info=True``.

    Example:
      >>> import jax, jax.numpy as jnp, tensorfact as tfa
      >>> fn = lambda idx: 1.0 / (1.0 + idx.sum(axis=1))
      >>> t, info = tfa.tt_cross(fn, (10,) * 10, 8, key=jax.random.key(0), return_info=True)
      >>> idx = jax.random.randint(jax.random.key(1), (1000, 10), 0, 10)
      >>> err = jnp.linalg.norm(t.gather(idx) - fn(idx)) / jnp.linalg.norm(fn(idx))
      >>> bool(err < 1e-4), bool(info.rel_error < 1e-4)  # the estimate agrees
      (True, True)
      >>> int(info.n_evals) < 50_000  # values of fn used, of the 10^10 of the grid
      True

    Raises:
      ValueError: for a bad ``shape``, ``ranks`` (wrong length, not 1 at the ends,
        non-positive, above a bond's bound), ``n_iter`` or ``tol``, a missing ``key``, an
        ``fn`` whose output is not of shape ``(batch,)``, or (in an eager call) an ``fn`` that
        returned NaN or Inf.
      TypeError: for an ``fn`` that is not callable or returns complex values, or a ``key``
        that is not a key.

    References: Oseledets & Tyrtyshnikov, "TT-cross approximation of multidimensional arrays",
    Linear Algebra Appl. 432, 2010; Goreinov et al., "How to find a good submatrix", 2010.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}.")
    shape = _check_shape(shape)
    ranks = _check_tt_ranks(ranks, shape)
    n_iter = check_positive_int(n_iter, "n_iter")
    check_nonneg_number(tol, "tol")
    check_key(key, "for the random start of tt_cross")
    dtype = _check_fn(fn, shape)
    fixed = is_fixed_length(tol)
    check = bool(return_info) or not fixed
    cores, info, n_bad = _tt_cross(fn, key, 0.0 if fixed else concrete_or_traced(tol),
                                   shape=shape, ranks=ranks, n_iter=n_iter, fixed=fixed,
                                   check=check, dtype=dtype, precision=precision)
    if not is_traced(n_bad) and int(n_bad):
        raise ValueError(f"fn returned {int(n_bad)} NaN or Inf value(s) on the grid points it "
                         "was evaluated at; tt_cross interpolates a finite function.")
    result = TTTensor(cores)
    return (result, info) if return_info else result


def _n_evals_per_sweep(shape, ranks) -> int:
    """Values of ``fn`` one sweep uses: both passes' fibers, and the first core's."""
    sizes = [ranks[k] * shape[k] * ranks[k + 1] for k in range(len(shape))]
    return sum(sizes[:-1]) + sum(sizes[1:]) + sizes[0]


# ---------------------------------------------------------------------------------------------
# argument checks


def _check_shape(shape) -> tuple[int, ...]:
    if isinstance(shape, (numbers.Integral, str)) or not isinstance(shape, (Sequence,
                                                                           np.ndarray)):
        raise ValueError(f"shape must be a sequence of positive ints, got {shape!r}.")
    shape = tuple(shape)
    if not shape:
        raise ValueError("shape must have at least one mode, got ().")
    return tuple(check_positive_int(n, f"shape[{k}]") for k, n in enumerate(shape))


def _bond_bounds(shape):
    """``min(∏_{j<k} n_j, ∏_{j≥k} n_j)`` for the bonds ``k = 0, ..., d`` (1 at the ends)."""
    d = len(shape)
    return [min(math.prod(shape[:k]), math.prod(shape[k:])) for k in range(d + 1)]


def _check_tt_ranks(ranks, shape) -> tuple[int, ...]:
    d = len(shape)
    bounds = _bond_bounds(shape)
    if isinstance(ranks, numbers.Integral) and not isinstance(ranks, bool):
        r = check_positive_int(ranks, "ranks")
        return tuple(min(r, b) for b in bounds)
    ranks = tt_rank_list(ranks, shape)
    for k in range(1, d):
        if ranks[k] > bounds[k]:
            raise ValueError(f"ranks[{k}] = {ranks[k]} exceeds {bounds[k]}, the largest rank of "
                             f"the unfolding of a tensor of shape {shape} at bond {k}.")
    for k in range(d):
        if ranks[k + 1] > ranks[k] * shape[k] or ranks[k] > shape[k] * ranks[k + 1]:
            raise ValueError(f"ranks[{k}] = {ranks[k]} and ranks[{k + 1}] = {ranks[k + 1]} do not "
                             f"fit mode {k} of size {shape[k]}: each may be at most the other "
                             f"times {shape[k]}.")
    return ranks


def _check_fn(fn, shape):
    """Traces ``fn`` on a small batch (no evaluation) to check its output; returns its dtype."""
    batch = 2
    probe = jax.ShapeDtypeStruct((batch, len(shape)), jnp.int32)
    out = jax.eval_shape(fn, probe)  # fn's own errors surface here, at trace time
    if not hasattr(out, "shape") or tuple(out.shape) != (batch,):
        got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
        raise ValueError(f"fn must map int32 indices of shape (batch, {len(shape)}) to values of "
                         f"shape (batch,); on shape {(batch, len(shape))} it returned {got}.")
    if jnp.issubdtype(out.dtype, jnp.complexfloating):
        raise TypeError(f"fn must return real values, got dtype {out.dtype}.")
    return jnp.float64 if out.dtype == jnp.float64 else jnp.float32


# ---------------------------------------------------------------------------------------------
# maxvol


@functools.partial(jax.jit, static_argnames=("max_iters",))
def maxvol(a, *, tol=MAXVOL_TOL, max_iters: int = MAXVOL_MAX_ITERS):
    """Rows of a tall ``n × r`` matrix ``A`` of full column rank spanning a (locally)
    maximal-volume ``r × r`` submatrix.

    ``B = A · A[rows]⁻¹`` is built by Gauss–Jordan elimination with partial pivoting (``r``
    steps; the pivots are the rows of LU with partial pivoting). Then, while some
    ``|B[i, j]| > tol``, row ``i`` replaces ``rows[j]``, which multiplies ``|det A[rows]|`` by
    ``|B[i, j]|``; both phases update ``B`` by the same rank-one correction
    ``B ← B − B[:, j] (B[i, :] − e_jᵀ) / B[i, j]`` (Goreinov, Oseledets, Savostyanov, Tyrtyshnikov
    & Zamarashkin, "How to find a good submatrix", 2010). At most ``max_iters`` swaps (a
    ``lax.while_loop`` with a cap); no factorisation or solve, so it compiles small.

    Returns:
      ``(rows, b)``: ``r`` distinct int32 row indices and ``B = A · A[rows]⁻¹`` (``n × r``,
      ``B[rows] = I``, every entry at most ``tol`` in modulus unless the cap was reached).

    Example:
      >>> import jax.numpy as jnp
      >>> a = jnp.array([[1.0, 0.0], [0.0, 1.0], [3.0, 1.0], [1.0, 2.0]])
      >>> rows, b = maxvol(a)
      >>> sorted(rows.tolist()), bool(jnp.abs(b).max() <= 1.05)
      ([2, 3], True)
    """
    n, r = a.shape
    if n < r:
        raise ValueError(f"maxvol needs a tall matrix (n >= r), got shape {tuple(a.shape)}.")
    eye = jnp.eye(r, dtype=a.dtype)

    # One loop for both phases: the first r steps eliminate column `it` (its largest entry is
    # the pivot; rows already chosen hold unit rows there, so they are not picked again), the
    # later ones swap in the largest entry of all.
    def cond(state):
        it, b, _ = state
        return (it < r) | ((it < r + max_iters) & (jnp.abs(b).max() > tol))

    def step(state):
        it, b, rows = state
        eliminating = it < r
        flat = jnp.argmax(jnp.abs(b))
        j = jnp.where(eliminating, it, flat % r)
        i = jnp.where(eliminating, jnp.argmax(jnp.abs(b[:, jnp.minimum(it, r - 1)])), flat // r)
        rows = rows.at[j].set(i.astype(jnp.int32))
        return it + 1, b - jnp.outer(b[:, j], b[i, :] - eye[j]) / b[i, j], rows

    _, b, rows = lax.while_loop(cond, step, (jnp.zeros((), jnp.int32), a,
                                             jnp.zeros((r,), jnp.int32)))
    return rows, b


# ---------------------------------------------------------------------------------------------
# the sweeps


@functools.partial(jax.jit, static_argnames=("fn", "shape", "ranks", "n_iter", "fixed", "check",
                                             "dtype", "precision"))
def _tt_cross(fn, key, tol, *, shape, ranks, n_iter, fixed, check, dtype, precision):
    # Index sets are stored as full multi-indices of length d, zero outside their own modes
    # (I_k on the modes < k, J_k on the modes >= k): a fiber's indices are then the sums
    # I_k[α] + i·e_k + J_{k+1}[β], and all the steps of a run of cores of equal sizes have the
    # same shapes, so that each run compiles once, as a lax.scan over its cores. Every fiber
    # also counts its non-finite values of fn, reported after the call.
    d = len(shape)
    fiber = functools.partial(_fiber, fn, d=d, dtype=dtype)

    def left_step(sizes, index, xs):  # I_{k+1} from I_k, given J_{k+1}
        (_, n, r_next), (k, right_next) = sizes, xs
        c, bad = fiber(index, right_next, k, n)
        q, _ = jnp.linalg.qr(c.reshape(-1, r_next))
        rows, _ = maxvol(q)
        new = index[rows // n] + (rows % n)[:, None] * _unit(k, d)
        return new, (new, bad)

    def right_step(sizes, index, xs):  # J_k from J_{k+1}, given I_k; and the core G_k
        (r_k, n, r_next), (k, left_k) = sizes, xs
        c, bad = fiber(left_k, index, k, n)
        q, _ = jnp.linalg.qr(c.transpose(1, 2, 0).reshape(n * r_next, r_k))
        cols, b = maxvol(q)
        new = index[cols % r_next] + (cols // r_next)[:, None] * _unit(k, d)
        return new, (new, b.reshape(n, r_next, r_k).transpose(2, 0, 1), bad)

    def sweep(state):
        left, right, cores, n_bad = state
        left, right, cores = list(left), list(right), list(cores)
        for run in _runs(range(d - 1), ranks, shape):
            step = functools.partial(left_step, _sizes(run[0], ranks, shape))
            xs = (jnp.asarray(run, jnp.int32), jnp.stack([right[k + 1] for k in run]))
            _, (sets, bad) = _scan(step, left[run[0]], xs)
            n_bad = n_bad + jnp.sum(bad, dtype=jnp.int32)
            for j, k in enumerate(run):
                left[k + 1] = sets[j]
        for run in _runs(range(d - 1, 0, -1), ranks, shape):
            step = functools.partial(right_step, _sizes(run[0], ranks, shape))
            xs = (jnp.asarray(run, jnp.int32), jnp.stack([left[k] for k in run]))
            _, (sets, blocks, bad) = _scan(step, right[run[0] + 1], xs)
            n_bad = n_bad + jnp.sum(bad, dtype=jnp.int32)
            for j, k in enumerate(run):
                right[k], cores[k] = sets[j], blocks[j]
        cores[0], bad = fiber(left[0], right[1], 0, shape[0])  # G_0 = C_0 on the new cross
        return tuple(left), tuple(right), tuple(cores), n_bad + bad

    start_key, check_key_ = jax.random.split(key)
    n_bad = jnp.zeros((), jnp.int32)
    if check:  # the check set: its values once, the train's at every sweep
        points = _check_points(check_key_, shape)
        values, n_bad = fiber(points, jnp.zeros((1, d), jnp.int32), 0, 1)
        values = values.reshape(-1)

        def step(state):
            state = sweep(state)
            approx = tt_gather(TTTensor(state[2]), points, precision=precision)
            return state, _relative_error(values, approx)
    else:
        def step(state):
            return sweep(state), jnp.zeros((), dtype)

    left = tuple(jnp.zeros((ranks[k], d), jnp.int32) for k in range(d))
    right = _initial_right_sets(start_key, shape, ranks)
    cores = tuple(jnp.zeros((ranks[k], shape[k], ranks[k + 1]), dtype) for k in range(d))
    state, n_done, errors, converged = iterate(step, (left, right, cores, n_bad), n_iter=n_iter,
                                               tol=0 if fixed else tol)
    cores, n_bad = state[2], state[3]
    if not check:
        return cores, None, n_bad
    n_evals = len(points) + n_done * _n_evals_per_sweep(shape, ranks)
    rel = errors[jnp.maximum(n_done - 1, 0)]
    return cores, TTCrossInfo(n_done, errors, rel, converged, n_evals), n_bad


def _check_points(key, shape):
    """The check set: the whole grid when it has at most :data:`N_CHECK` points, else that
    many drawn uniformly (with replacement) with ``key``; int32 ``(N, d)``."""
    size = math.prod(shape)
    if size <= N_CHECK:
        return jnp.stack(jnp.unravel_index(jnp.arange(size, dtype=jnp.int32), shape), axis=1)
    return jax.random.randint(key, (N_CHECK, len(shape)), 0, jnp.asarray(shape, jnp.int32),
                              dtype=jnp.int32)


def _relative_error(values, approx):
    """``‖values − approx‖ / ‖values‖`` without over- or underflow (safe norms); ``inf`` if the
    values are all zero and the approximation is not (never a reported 0 for a wrong fit)."""
    num, den = safe_norm(values - approx), safe_norm(values)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1), jnp.where(num > 0, jnp.inf, 0))


def _unit(k, d):
    """The ``k``-th unit vector of length ``d`` (``k`` may be traced), as int32."""
    return (jnp.arange(d) == k).astype(jnp.int32)


def _sizes(k, ranks, shape):
    return ranks[k], shape[k], ranks[k + 1]


def _runs(cores, ranks, shape):
    """Splits a visiting order of the cores into runs of consecutive cores of equal sizes
    ``(r_k, n_k, r_{k+1})``."""
    runs = []
    for k in cores:
        if runs and _sizes(runs[-1][-1], ranks, shape) == _sizes(k, ranks, shape):
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs


def _scan(step, carry, xs):
    """``lax.scan`` over a run; a run of one core is called directly (its carry may change
    shape, which a scan does not allow)."""
    if jax.tree_util.tree_leaves(xs)[0].shape[0] == 1:
        carry, out = step(carry, jax.tree_util.tree_map(lambda a: a[0], xs))
        return carry, jax.tree_util.tree_map(lambda a: a[None], out)
    return lax.scan(step, carry, xs)


def _fiber(fn, left, right, k, n, *, d, dtype):
    """``fn(I_k[α] + i·e_k + J_{k+1}[β])`` for all ``α, i, β``: shape ``(r_k, n_k, r_{k+1})``,
    and the number of those values that are NaN or Inf."""
    idx = (left[:, None, None, :]
           + jnp.arange(n, dtype=jnp.int32)[None, :, None, None] * _unit(k, d)
           + right[None, None, :, :])
    values = jnp.asarray(fn(idx.reshape(-1, d))).astype(dtype)
    return values.reshape(left.shape[0], n, right.shape[0]), count_nonfinite(values)


def _initial_right_sets(key, shape, ranks):
    """Random nested right index sets ``J_1, ..., J_d`` (no function values): right to left,
    ``J_k`` is ``r_k`` distinct pairs ``(i_k, β)`` drawn from ``[n_k] × J_{k+1}`` (the largest
    of uniform scores: one draw for all bonds)."""
    d = len(shape)
    right = [None] * (d + 1)
    right[d] = jnp.zeros((1, d), jnp.int32)
    if d == 1:
        return tuple(right)
    width = max(shape[k] * ranks[k + 1] for k in range(1, d))
    scores = jax.random.uniform(key, (d, width))
    for k in range(d - 1, 0, -1):
        r_k, n, r_next = _sizes(k, ranks, shape)
        picks = lax.top_k(scores[k, :n * r_next], r_k)[1].astype(jnp.int32)
        right[k] = right[k + 1][picks % r_next] + (picks // r_next)[:, None] * _unit(k, d)
    return tuple(right)
