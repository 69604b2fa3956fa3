"""Tensor-train decompositions: TT-SVD of a dense tensor, TT-rounding, TT-matrices.

* **TT-SVD** (Oseledets 2011, Alg. 1): for ``k = 1..d−1`` the current remainder, reshaped to
  ``(r_{k-1} n_k) × (n_{k+1} ⋯ n_d)``, is projected on its ``r_k`` leading left singular
  vectors ``U_k``, which become core ``k``; the projection ``U_kᵀ C`` is carried on.
* **TT-rounding** (ibid., Alg. 2): right-to-left QR orthogonalisation, then the same truncation
  from left to right on the small ``(r_{k-1} n_k) × r_k`` core matrices. Costs ``O(d n r³)``.

Ranks are given as a full list ``(1, r_1, ..., r_{d-1}, 1)`` or as an int (a maximum rank, clipped
by the sizes of the unfoldings), or chosen from a relative accuracy ``eps``: step ``k`` keeps
the fewest directions whose discarded part has norm ``≤ δ = eps‖x‖/√(d−1)``, which gives
``‖x − tt‖ ≤ eps‖x‖`` (ibid., Thm. 2.2). Eagerly the ranks follow the data. Under ``jax.jit``
(or ``vmap``) shapes must be static, so a ``max_rank`` is required: the cores keep that size and
the columns beyond each step's chosen rank are set to zero (``TTTensor.trim()`` removes them
afterwards, eagerly).

Each step takes the leading subspace from the eigenvectors of the smaller Gram matrix of the
unfolding (``C Cᵀ``, or ``CᵀC`` followed by a thin QR of ``C V``), a product that runs at matmul
speed where an SVD of the wide unfolding would not; the truncation error used for ``eps`` is then
measured on the projection actually kept, ``‖C − U Uᵀ C‖² = ‖C − U_R U_Rᵀ C‖² + Σ_{j ≥ r}
‖u_jᵀ C‖²``, so the bound holds for the returned tensor, not only for exact singular values.

Scale: TT-SVD runs on ``x / 2^k`` with ``2^k`` near ``max |x|`` (exact in binary floating
point) and the last core, the one that is not orthonormal, takes ``2^k`` back; rounding
normalises each core by its own power of two the same way. So ``tt(c·x) = c·tt(x)``, the Gram
matrices and the ``eps`` threshold never over- or underflow, and the ``eps`` bound holds for
data of any representable magnitude (1e-30 … 1e30 in float32).

Reference: I. V. Oseledets, "Tensor-Train Decomposition", SIAM Journal on Scientific Computing
33(5), 2295–2317, 2011.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tensorfact import algebra, sharding
from tensorfact._checks import (Precision, as_float_array, as_matrix, check_nonneg_number,
                                check_positive_int, count_nonfinite, is_traced, report_nonfinite)
from tensorfact._numerics import pow2_restore, pow2_scale
from tensorfact.decomposition import _sharded
from tensorfact.decomposition._common import tt_rank_list
from tensorfact.tensors._tt import (TTMatrix, TTTensor, flat_cores, from_flat_cores,
                                    orthogonalize_scaled)

__all__ = ["tt", "tt_round", "tt_matrix"]


# ---------------------------------------------------------------------------------------------
# public functions


def tt(x, ranks=None, *, eps=None, max_rank=None,
       precision: Precision = "highest") -> TTTensor:
    """TT-SVD: a tensor train of ``x`` with given ranks or to a relative accuracy ``eps``.

    Args:
      x: array with at least one dimension, none of size zero, shape ``(n_1, ..., n_d)``
        (integers and booleans are cast to float32). A ``jax.Array`` split
        over a device mesh (see :mod:`tensorfact.sharding`) is decomposed where it lies, with
        fixed ``ranks``; the cores are replicated on the mesh (details: the design notes,
        "Sharding").
      ranks: the TT ranks, a full list ``(1, r_1, ..., r_{d-1}, 1)`` or the ``d − 1`` inner
        ones ``(r_1, ..., r_{d-1})`` (each ``r_k`` at most ``r_{k-1} n_k`` and
        ``n_{k+1} r_{k+1}``), or an int: the largest rank, clipped per bond by the sizes of the
        unfolding (so a large int gives an exact decomposition).
      eps: instead of ``ranks``, a relative error bound: the result has ``‖x − tt‖ ≤ eps‖x‖``
        with the smallest ranks the truncation finds (unless ``max_rank`` caps them).
      max_rank: with ``eps``, a cap on the ranks (an int or a full list as for ``ranks``).
        Required under ``jax.jit``/``vmap``, where it fixes the core shapes: ranks that ``eps``
        does not need are zero padding (drop it eagerly with ``TTTensor.trim()``).
      precision: XLA precision of the contractions; ``"highest"`` (the default) is full float32,
        ``None`` JAX's default.

    Returns:
      A :class:`TTTensor` whose cores ``1..d−1`` have orthonormal columns when reshaped to
      ``(r_{k-1} n_k) × r_k`` (zero columns where ``eps`` padding was masked).

    Cost: per step, a Gram matrix of the ``p × q`` unfolding and its eigendecomposition,
    ``O(p q min(p, q))``: ``O(n^{d+1})`` in the first step for ``d`` modes of size ``n``, at most
    ``O(r² n^d)`` in the others; with ``eps``, one product of order ``O(p q r)`` more per step
    to measure the discarded part. Without ``max_rank``, ``eps`` runs at the full ranks and cuts
    afterwards, so a ``max_rank`` also bounds the work.

    Example:
      >>> import jax, tensorfact as tfa
      >>> x = jax.random.normal(jax.random.key(0), (6, 7, 8, 9))
      >>> t = tfa.tt(x, [1, 3, 5, 4, 1])
      >>> t.rank
      (1, 3, 5, 4, 1)
      >>> t = tfa.tt(x, eps=0.3)
      >>> bool(tfa.relative_error(x, t.to_dense()) <= 0.3)
      True

    Raises:
      ValueError: for a mode of size zero, neither or both of ``ranks`` and ``eps``,
        ``max_rank`` without ``eps``, ``eps`` under ``jit`` without ``max_rank``, ranks that are
        not positive integers, do not start and end with 1, have the wrong length or exceed
        what the shape allows, a negative ``eps``, or NaN/Inf in an eager call.

    Reference: I. V. Oseledets, "Tensor-Train Decomposition", SIAM J. Sci. Comput. 33(5), 2011.
    """
    x = as_float_array(x, "x", min_ndim=1, nonempty=True)
    caps, eps = _rank_args(ranks, eps, max_rank, x.shape, strict=True)
    if sharding.is_mode_sharded(x):  # split over a device mesh: keep it distributed
        return _sharded.tt(x, caps, eps=eps, precision=precision)
    return _decompose(x, caps, eps, max_rank is not None, precision)


def tt_matrix(w, row_shape, col_shape, ranks=None, *, eps=None, max_rank=None,
              precision: Precision = "highest") -> TTMatrix:
    """A TT-matrix of the matrix ``w`` of shape ``(∏ m_k, ∏ n_k)``.

    ``w`` is reshaped to ``(m_1, ..., m_d, n_1, ..., n_d)``, its axes interleaved to
    ``(m_1, n_1, ..., m_d, n_d)`` and merged pairwise into a ``d``-way tensor of shape
    ``(m_1 n_1, ..., m_d n_d)``, whose TT-SVD gives the cores ``(r_{k-1}, m_k, n_k, r_k)``
    (Oseledets 2010; Novikov et al. 2015). With ``ranks`` large enough (e.g. a large int) the
    result is exact; ``ranks``, ``eps`` and ``max_rank`` act as in :func:`tt` on that tensor.

    Args:
      w: 2-D array of shape ``(∏ row_shape, ∏ col_shape)``; in a layer ``y = x @ w`` this is
        ``(in, out)``.
      row_shape, col_shape: the factorisations ``(m_1..m_d)`` and ``(n_1..n_d)`` of the
        numbers of rows and columns. They may differ in length (as TensorLy's and
        tensorly-torch's tensorized shapes may): the shorter is padded with 1s at the end, so
        ``(4, 8, 2), (16, 16)`` gives cores ``(·, 4, 16, ·), (·, 8, 16, ·), (·, 2, 1, ·)``.
      ranks, eps, max_rank, precision: as in :func:`tt`.

    Returns:
      A :class:`TTMatrix`; multiply with ``x @ tm`` or :func:`tensorfact.tt_matmul`.

    Example:
      >>> import jax, jax.numpy as jnp, tensorfact as tfa
      >>> w = jax.random.normal(jax.random.key(0), (12, 20))
      >>> tm = tfa.tt_matrix(w, (3, 4), (4, 5), ranks=100)   # clipped to full rank: exact
      >>> tm.rank, bool(jnp.allclose(tm.to_dense(), w, atol=1e-5))
      ((1, 12, 1), True)

    Raises:
      ValueError: when the shapes hold non-positive sizes or do not multiply to ``w``'s shape,
        for a ``w`` with a dimension of size zero, for the rank arguments as in :func:`tt`, and
        for NaN/Inf in ``w`` in an eager call.

    References: I. V. Oseledets, "Approximation of 2^d × 2^d matrices using tensor
    decomposition", SIAM J. Matrix Anal. Appl. 31(4), 2010; A. Novikov, D. Podoprikhin,
    A. Osokin and D. Vetrov, "Tensorizing Neural Networks", NeurIPS 2015.
    """
    w = as_matrix(w, "w")
    row_shape = _check_shape(row_shape, "row_shape")
    col_shape = _check_shape(col_shape, "col_shape")
    d = max(len(row_shape), len(col_shape))  # the shorter factorisation is padded with 1s
    row_shape, col_shape = (s + (1,) * (d - len(s)) for s in (row_shape, col_shape))
    for name, shape, size in (("row_shape", row_shape, w.shape[0]),
                              ("col_shape", col_shape, w.shape[1])):
        if math.prod(shape) != size:
            raise ValueError(f"{name} {shape} multiplies to {math.prod(shape)}, but w of shape "
                             f"{tuple(w.shape)} has {size} {name[:3]}s.")
    merged = tuple(m * n for m, n in zip(row_shape, col_shape))
    caps, eps = _rank_args(ranks, eps, max_rank, merged, strict=True)
    cores = _decompose(w, caps, eps, max_rank is not None, precision, "tt_matrix",
                       split=(row_shape, col_shape))
    return TTMatrix(cores)


def tt_round(t, ranks=None, *, eps=None, max_rank=None, precision: Precision = "highest"):
    """TT-rounding: the same tensor (or TT-matrix) at smaller ranks, in the format.

    Right-to-left QR orthogonalisation, then left to right a truncated decomposition of each
    core reshaped to ``(r_{k-1} n_k) × r_k`` with the remainder moved into the next core
    (Oseledets 2011, Alg. 2). ``O(d n r³)``: the dense tensor is never formed, so this is how
    sums, Hadamard products and TT-matrix products come back to small ranks.

    Args:
      t: a :class:`TTTensor` or :class:`TTMatrix`.
      ranks: target ranks: an int (largest rank), a full list ``(1, r_1, ..., 1)`` or the
        inner ranks; each is an upper bound (bonds already smaller stay as they are).
      eps: instead of ``ranks``, a relative error bound ``‖t − round(t)‖ ≤ eps‖t‖``.
      max_rank: with ``eps``, a cap on the ranks; required under ``jax.jit``/``vmap``, where the
        cores keep that size and the unused part is zero (``trim()`` drops it eagerly).
      precision: XLA precision of the contractions; ``"highest"`` (the default) is full float32,
        ``None`` JAX's default.

    Returns:
      A tensor of ``t``'s type, its cores ``1..d−1`` left-orthonormal.

    Example:
      >>> import jax, tensorfact as tfa
      >>> a = tfa.tt(jax.random.normal(jax.random.key(0), (5, 6, 7)), 3)
      >>> (a + a).rank, tfa.tt_round(a + a, eps=1e-5).rank
      ((1, 6, 6, 1), (1, 3, 3, 1))

    Raises:
      TypeError: when ``t`` is not a TT tensor or matrix.
      ValueError: for the rank arguments as in :func:`tt`.

    Reference: I. V. Oseledets, "Tensor-Train Decomposition", SIAM J. Sci. Comput. 33(5), 2011.
    """
    if not isinstance(t, (TTTensor, TTMatrix)):
        raise TypeError(f"t must be a TTTensor or TTMatrix, got {type(t).__name__}.")
    modes = tuple(g.shape[1] for g in flat_cores(t))
    caps, eps = _rank_args(ranks, eps, max_rank, modes, strict=False)
    eager = _eager(t.cores, eps)
    if eps is not None and not eager and max_rank is None:
        raise ValueError(_NEED_MAX_RANK.format(name="tt_round"))
    cores, keeps = _round_jit(flat_cores(t), eps, caps=caps, precision=precision)
    if keeps is not None and eager:
        cores = _cut(cores, keeps)
    return from_flat_cores(t, cores)


# ---------------------------------------------------------------------------------------------
# argument checks


_NEED_MAX_RANK = ("{name}(..., eps=...) under jax.jit or vmap needs a static max_rank (an int or "
                  "a full rank list) to fix the core shapes; the ranks eps does not need are "
                  "zero-padded (drop them eagerly with .trim()).")


def _check_shape(shape, name):
    if isinstance(shape, numbers.Integral) or not isinstance(shape, (Sequence, np.ndarray)):
        raise ValueError(f"{name} must be a sequence of positive ints, got {shape!r}.")
    shape = tuple(shape)
    if not shape:
        raise ValueError(f"{name} must not be empty.")
    return tuple(check_positive_int(s, f"{name}[{i}]") for i, s in enumerate(shape))


def _rank_args(ranks, eps, max_rank, shape, *, strict):
    """Validates the rank arguments; returns static per-bond caps and ``eps`` (or None)."""
    if eps is None:
        if ranks is None:
            raise ValueError("give ranks (a full list (1, r_1, ..., 1) or an int max rank) or "
                             "eps (a relative error bound).")
        if max_rank is not None:
            raise ValueError("max_rank caps the ranks chosen by eps; with fixed ranks, pass "
                             "them as ranks.")
        return _bond_caps(ranks, shape, "ranks", strict=strict), None
    if ranks is not None:
        raise ValueError("pass either ranks or eps, not both (to cap the ranks eps picks, use "
                         "max_rank).")
    check_nonneg_number(eps, "eps")
    if max_rank is None:
        return _bond_caps(_FULL, shape, "max_rank", strict=False), eps
    return _bond_caps(max_rank, shape, "max_rank", strict=strict), eps


_FULL = object()  # no cap: each bond as large as its unfolding


def _bond_caps(ranks, shape, name, *, strict) -> tuple[int, ...]:
    """The ``d − 1`` inner ranks: an int is a cap clipped bond by bond; a full list is checked
    (``strict``: each rank must be reachable by TT-SVD from the shape and its neighbours)."""
    d = len(shape)
    if ranks is _FULL or (isinstance(ranks, numbers.Integral) and not isinstance(ranks, bool)):
        cap = None if ranks is _FULL else check_positive_int(ranks, name)
        out, left = [], 1
        for k in range(d - 1):
            right = math.prod(shape[k + 1:])
            r = min(left * shape[k], right) if cap is None else min(cap, left * shape[k], right)
            out.append(r)
            left = r
        return tuple(out)
    ranks = tt_rank_list(ranks, shape, name)
    if strict:
        for k in range(1, d):
            limit = min(ranks[k - 1] * shape[k - 1], shape[k] * ranks[k + 1])
            if ranks[k] > limit:
                raise ValueError(
                    f"{name}[{k}] = {ranks[k]} is larger than a tensor train of shape "
                    f"{tuple(shape)} allows there: at most {name}[{k - 1}]·shape[{k - 1}] = "
                    f"{ranks[k - 1] * shape[k - 1]} and shape[{k}]·{name}[{k + 1}] = "
                    f"{shape[k] * ranks[k + 1]} (got {ranks!r}).")
    return ranks[1:-1]


def _eager(leaves, eps) -> bool:
    """True outside of any tracing: ranks may then be read from the data."""
    if is_traced(eps) or any(is_traced(v) for v in leaves):
        return False
    return not is_traced(jnp.zeros(()))  # a constant inside jit is staged too


# ---------------------------------------------------------------------------------------------
# the truncation step shared by TT-SVD and rounding


def _truncate(c, cap: int, delta_sq, precision):
    """Leading ``cap``-dimensional left subspace of ``c`` (``rows × cols``) and the projection.

    Returns ``u`` (``rows × cap``, orthonormal columns, ordered by decreasing energy),
    ``b = uᵀ c`` and, when ``delta_sq`` is given, ``keep``: the smallest ``r ≤ cap`` with
    ``‖c − u_r u_rᵀ c‖² ≤ delta_sq`` (or ``cap`` when none is), at least 1.
    """
    prec = algebra.resolve_precision(precision)
    rows, cols = c.shape
    if rows <= cols:  # eigenvectors of the small Gram matrix c cᵀ
        _, vecs = jnp.linalg.eigh(jnp.matmul(c, c.T, precision=prec))
        u = vecs[:, ::-1][:, :cap]
    else:  # right subspace from cᵀc, mapped back and re-orthonormalised
        _, vecs = jnp.linalg.eigh(jnp.matmul(c.T, c, precision=prec))
        u, _ = jnp.linalg.qr(jnp.matmul(c, vecs[:, ::-1][:, :cap], precision=prec))
    b = jnp.matmul(u.T, c, precision=prec)
    if delta_sq is None:
        return u, b, None
    resid = c - jnp.matmul(u, b, precision=prec)
    # tail[r] = ‖c − u_r u_rᵀ c‖², r = 0..cap (Pythagoras: u has orthonormal columns)
    energy = jnp.sum(b * b, axis=1)
    upper = jnp.triu(jnp.ones((cap + 1, cap), c.dtype))  # tail sums as one small product
    tail = jnp.matmul(upper, energy, precision=prec) + jnp.vdot(resid, resid, precision=prec)
    keep = jnp.clip(jnp.sum(tail > delta_sq), 1, cap).astype(jnp.int32)
    return u, b, keep


def _sweep(c, nxt, caps, delta_sq, precision):
    """Left-to-right truncation: ``c`` is the current ``(r, n_k, s)`` remainder; ``nxt(b, k)``
    turns the projection ``b`` into the next remainder. Returns the cores and, with
    ``delta_sq``, the rank each step chose (the columns past it are zeroed: static shapes)."""
    cores, keeps = [], []
    for k, cap in enumerate(caps):
        r, n, s = c.shape
        u, b, keep = _truncate(c.reshape(r * n, s), min(cap, r * n, s), delta_sq, precision)
        if keep is not None:
            mask = (jnp.arange(u.shape[1]) < keep).astype(u.dtype)
            u, b = u * mask, b * mask[:, None]
            keeps.append(keep)
        cores.append(u.reshape(r, n, u.shape[1]))
        c = nxt(b, k)
    cores.append(c)
    return cores, (jnp.stack(keeps) if keeps else None)


def _cut(cores, keeps):
    """Eagerly slices the cores to the ranks the masked sweep chose (drops the zero padding)."""
    cores = [np.asarray(g) for g in cores]  # host slicing: no compilation per new shape
    for k, r in enumerate(np.asarray(keeps).tolist()):
        cores[k] = cores[k][..., :r]
        cores[k + 1] = cores[k + 1][:r]
    return [jnp.asarray(g) for g in cores]


def _delta_sq(norm_sq, eps, d):
    return None if eps is None else (eps * eps) * norm_sq / max(d - 1, 1)


# ---------------------------------------------------------------------------------------------
# TT-SVD


def _decompose(x, caps, eps, capped, precision, name="tt", split=None):
    """TT-SVD cores of ``x`` (of the matrix ``x`` tensorised by ``split = (rows, cols)``)."""
    eager = _eager((x,), eps)
    if eps is not None and not eager and not capped:
        raise ValueError(_NEED_MAX_RANK.format(name=name))
    cores, keeps, n_bad = _tt_svd_jit(x, eps, caps=caps, split=split, precision=precision)
    report_nonfinite(n_bad, "x" if split is None else "w")  # counted in the compiled program
    if keeps is not None and eager:
        cores = _cut(cores, keeps)
    return cores if split is not None else TTTensor(cores)


@functools.partial(jax.jit, static_argnames=("caps", "split", "precision"))
def _tt_svd_jit(x, eps, *, caps, split, precision):
    n_bad = count_nonfinite(x)
    # Scale: the sweep runs on x / 2^k (exact), entries of at most 1, so that its Gram matrices
    # and the eps threshold neither over- nor underflow; the last core (the one that is not
    # orthonormal) takes 2^k back.
    scale = jax.lax.stop_gradient(pow2_scale(x))
    x = x / scale
    if split is not None:  # (M, N) → (m_1 n_1, ..., m_d n_d), row and column indices paired
        rows, cols = split
        d = len(rows)
        x = x.reshape(rows + cols).transpose(tuple(i for k in range(d) for i in (k, d + k)))
        x = x.reshape(tuple(m * n for m, n in zip(rows, cols)))
    shape = x.shape
    norm_sq = jnp.vdot(x, x, precision=algebra.resolve_precision(precision))
    delta_sq = _delta_sq(norm_sq, eps, len(shape))

    def nxt(b, k):
        return b.reshape(b.shape[0], shape[k + 1], -1)

    cores, keeps = _sweep(x.reshape(1, shape[0], -1), nxt, caps, delta_sq, precision)
    cores[-1] = cores[-1] * scale
    if split is not None:
        cores = [g.reshape(g.shape[0], m, n, g.shape[-1]) for g, m, n in zip(cores, *split)]
    return cores, keeps, n_bad


# ---------------------------------------------------------------------------------------------
# rounding


@functools.partial(jax.jit, static_argnames=("caps", "precision"))
def _round_jit(cores, eps, *, caps, precision):
    prec = algebra.resolve_precision(precision)
    # Scale: the orthogonalisation normalises the cores by powers of two (exact) and returns
    # the exponent apart, which goes back into the last core at the end, so the QRs and the
    # sweep see entries of at most 1 however the tensor's scale is spread over its cores.
    cores, exponent = orthogonalize_scaled(cores, "right", precision=precision)
    norm_sq = jnp.vdot(cores[0], cores[0], precision=prec)  # ‖t‖ = ‖G_1‖ now
    delta_sq = _delta_sq(norm_sq, eps, len(cores))

    def nxt(b, k):
        return jnp.einsum("ab,bic->aic", b, cores[k + 1], precision=prec)

    out, keeps = _sweep(cores[0], nxt, caps, delta_sq, precision)
    out[-1] = pow2_restore(out[-1], exponent)
    return out, keeps
