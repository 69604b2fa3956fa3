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
* after the last sweep ``G_0 = C_0``, and ``x ≈ G_0 G_1 ··· G_{d-1}`` interpolates ``fn``
  exactly on the final cross. A tensor of TT ranks at most ``ranks`` is recovered exactly.

Using ``Q`` rather than ``C_k`` itself keeps the steps well defined when ``C_k`` is rank
deficient (a function of lower rank than asked for), and the interpolation never inverts the
cross matrices ``fn(I_k, J_k)``.

The first right index sets are random (nested, distinct; no function values). Ranks are
fixed, so the number of function evaluations is known in advance,
``n_sweeps · (Σ_{k<d-1} r_k n_k r_{k+1} + Σ_{k>0} r_k n_k r_{k+1}) + n_0 r_1``, about
``2 n_sweeps d n r²``, against ``∏ n`` for the dense tensor.

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
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from tensorfact._checks import check_positive_int, check_key
from tensorfact.tensors._tt import TTTensor

__all__ = ["tt_cross", "maxvol", "tt_cross_n_evals"]

MAXVOL_TOL = 1.05  # stop when no entry of A·A[rows]⁻¹ exceeds this in modulus (Goreinov et al.)
MAXVOL_MAX_ITERS = 100


def tt_cross(fn: Callable[[jax.Array], jax.Array], shape, ranks, *, key, n_sweeps: int = 4,
             precision="highest") -> TTTensor:
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
      ranks: the TT ranks ``(1, r_1, ..., r_{d-1}, 1)``, or an int: the same rank at every bond,
        lowered to what the bond admits (``r_k ≤ min(∏_{j<k} n_j, ∏_{j≥k} n_j)``). Explicit
        ranks must satisfy that bound and ``r_{k+1} ≤ r_k n_k``, ``r_k ≤ n_k r_{k+1}``.
      key: ``jax.random`` key for the random start of the right index sets (required).
      n_sweeps: number of left-to-right + right-to-left sweeps (static).
      precision: accepted for uniformity with the other fits; TT-cross has no contraction to
        apply it to (QRs, rank-one updates and ``fn`` itself), so it changes nothing.

    Returns:
      A :class:`TTTensor` of shape ``shape`` and ranks ``ranks``. The number of ``fn``
      evaluations is :func:`tt_cross_n_evals` ``(shape, ranks, n_sweeps)``.

    Example:
      >>> import jax, jax.numpy as jnp, tensorfact as tfa
      >>> fn = lambda idx: 1.0 / (1.0 + idx.sum(axis=1))
      >>> t = tfa.tt_cross(fn, (10,) * 10, 8, key=jax.random.key(0))  # 10^10 entries
      >>> idx = jax.random.randint(jax.random.key(1), (1000, 10), 0, 10)
      >>> err = jnp.linalg.norm(t.gather(idx) - fn(idx)) / jnp.linalg.norm(fn(idx))
      >>> bool(err < 1e-4), tfa.tt_cross_n_evals((10,) * 10, 8)  # values of fn used
      (True, 41680)

    Raises:
      ValueError: for a bad ``shape``, ``ranks`` (wrong length, not 1 at the ends,
        non-positive, above a bond's bound), ``n_sweeps``, a missing ``key``, or an ``fn``
        whose output is not of shape ``(batch,)``.
      TypeError: for an ``fn`` that is not callable or returns complex values.

    References: Oseledets & Tyrtyshnikov, "TT-cross approximation of multidimensional arrays",
    Linear Algebra Appl. 432, 2010; Goreinov et al., "How to find a good submatrix", 2010.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}.")
    shape = _check_shape(shape)
    ranks = _check_tt_ranks(ranks, shape)
    n_sweeps = check_positive_int(n_sweeps, "n_sweeps")
    check_key(key, "for the random start of tt_cross")
    dtype = _check_fn(fn, shape)
    del precision
    return _tt_cross(fn, key, shape=shape, ranks=ranks, n_sweeps=n_sweeps, dtype=dtype)


def tt_cross_n_evals(shape, ranks, n_sweeps: int = 4) -> int:
    """The number of ``fn`` evaluations :func:`tt_cross` makes with these arguments.

    Example:
      >>> tt_cross_n_evals((10,) * 10, 8, n_sweeps=4)  # of 10^10 grid points
      41680
    """
    shape = _check_shape(shape)
    ranks = _check_tt_ranks(ranks, shape)
    n_sweeps = check_positive_int(n_sweeps, "n_sweeps")
    sizes = [ranks[k] * shape[k] * ranks[k + 1] for k in range(len(shape))]
    return n_sweeps * (sum(sizes[:-1]) + sum(sizes[1:])) + sizes[0]


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
    if isinstance(ranks, str) or not isinstance(ranks, (Sequence, np.ndarray)):
        raise ValueError(f"ranks must be an int or a sequence of {d + 1} ints (1, r_1, ..., "
                         f"r_{d - 1}, 1), got {ranks!r}.")
    ranks = tuple(ranks)
    if len(ranks) != d + 1:
        raise ValueError(f"ranks must hold {d + 1} TT ranks (1, r_1, ..., r_{d - 1}, 1) for a "
                         f"{d}-way grid of shape {shape}, got {len(ranks)}: {ranks!r}.")
    ranks = tuple(check_positive_int(r, f"ranks[{k}]") for k, r in enumerate(ranks))
    if ranks[0] != 1 or ranks[-1] != 1:
        raise ValueError(f"ranks must start and end with 1, got {ranks!r}.")
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


@functools.partial(jax.jit, static_argnames=("fn", "shape", "ranks", "n_sweeps", "dtype"))
def _tt_cross(fn, key, *, shape, ranks, n_sweeps, dtype):
    # Index sets are stored as full multi-indices of length d, zero outside their own modes
    # (I_k on the modes < k, J_k on the modes >= k): a fiber's indices are then the sums
    # I_k[α] + i·e_k + J_{k+1}[β], and all the steps of a run of cores of equal sizes have the
    # same shapes, so that each run compiles once, as a lax.scan over its cores.
    d = len(shape)
    fiber = functools.partial(_fiber, fn, d=d, dtype=dtype)

    def left_step(sizes, index, xs):  # I_{k+1} from I_k, given J_{k+1}
        (_, n, r_next), (k, right_next) = sizes, xs
        q, _ = jnp.linalg.qr(fiber(index, right_next, k, n).reshape(-1, r_next))
        rows, _ = maxvol(q)
        new = index[rows // n] + (rows % n)[:, None] * _unit(k, d)
        return new, new

    def right_step(sizes, index, xs):  # J_k from J_{k+1}, given I_k; and the core G_k
        (r_k, n, r_next), (k, left_k) = sizes, xs
        c = fiber(left_k, index, k, n)
        q, _ = jnp.linalg.qr(c.transpose(1, 2, 0).reshape(n * r_next, r_k))
        cols, b = maxvol(q)
        new = index[cols % r_next] + (cols // r_next)[:, None] * _unit(k, d)
        return new, (new, b.reshape(n, r_next, r_k).transpose(2, 0, 1))

    def sweep(_, state):
        left, right, cores = (list(s) for s in state)
        for run in _runs(range(d - 1), ranks, shape):
            step = functools.partial(left_step, _sizes(run[0], ranks, shape))
            xs = (jnp.asarray(run, jnp.int32), jnp.stack([right[k + 1] for k in run]))
            _, sets = _scan(step, left[run[0]], xs)
            for j, k in enumerate(run):
                left[k + 1] = sets[j]
        for run in _runs(range(d - 1, 0, -1), ranks, shape):
            step = functools.partial(right_step, _sizes(run[0], ranks, shape))
            xs = (jnp.asarray(run, jnp.int32), jnp.stack([left[k] for k in run]))
            _, (sets, blocks) = _scan(step, right[run[0] + 1], xs)
            for j, k in enumerate(run):
                right[k], cores[k] = sets[j], blocks[j]
        return tuple(left), tuple(right), tuple(cores)

    left = tuple(jnp.zeros((ranks[k], d), jnp.int32) for k in range(d))
    right = _initial_right_sets(key, shape, ranks)
    cores = tuple(jnp.zeros((ranks[k], shape[k], ranks[k + 1]), dtype) for k in range(d))
    _, right, cores = lax.fori_loop(0, n_sweeps, sweep, (left, right, cores))
    first = fiber(left[0], right[1], 0, shape[0])
    return TTTensor((first,) + tuple(cores[1:]))


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
    """``fn(I_k[α] + i·e_k + J_{k+1}[β])`` for all ``α, i, β``: shape ``(r_k, n_k, r_{k+1})``."""
    idx = (left[:, None, None, :]
           + jnp.arange(n, dtype=jnp.int32)[None, :, None, None] * _unit(k, d)
           + right[None, None, :, :])
    values = fn(idx.reshape(-1, d))
    return jnp.asarray(values).astype(dtype).reshape(left.shape[0], n, right.shape[0])


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
