"""Tensor algebra: unfoldings, mode products, Khatri–Rao and Kronecker products, MTTKRP.

Unfolding convention (the same as TensorLy's and Kolda & Bader's up to column order): the
mode-``n`` unfolding of ``x`` with shape ``(I_0, ..., I_{N-1})`` is the ``I_n × ∏_{k≠n} I_k``
matrix ``moveaxis(x, n, 0).reshape(I_n, -1)``: the remaining modes keep their order and the
last one varies fastest (C order). With this convention a CP tensor unfolds as

    unfold([[w; A_0, ..., A_{N-1}]], n) = A_n · diag(w) · khatri_rao([A_k for k ≠ n])ᵀ,

where ``khatri_rao`` also lets its last factor vary fastest.

Every contraction takes ``precision``, by default ``"highest"`` (true float32 on GPUs and TPUs,
where JAX would otherwise use TF32 or bfloat16 passes); ``None`` is JAX's default, as everywhere
in the library.

Reference: T. G. Kolda and B. W. Bader, "Tensor Decompositions and Applications",
SIAM Review 51(3), 2009.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from tensorfact import kernels
from tensorfact._arrays import (as_tensor, check_factors, check_index, check_mode, check_sequence,
                                check_shape)
from tensorfact._checks import Impl, Precision, check_choice, check_modes
from tensorfact._numerics import resolve_precision
from tensorfact._sparse import check_sparse, is_sparse, sparse_mttkrp

__all__ = [
    "unfold", "fold", "mode_dot", "multi_mode_dot", "khatri_rao", "kronecker",
    "mttkrp", "partial_mttkrp", "natural_rank_axis", "contract_with_rank", "resolve_precision",
]


def unfold(x: jax.Array, mode: int) -> jax.Array:
    """Mode-``mode`` unfolding: ``moveaxis(x, mode, 0).reshape(x.shape[mode], -1)``.

    Args:
      x: an array with at least one mode (lists and NumPy arrays are accepted).
      mode: the mode ``n``; negative counts from the end.

    Returns:
      The ``I_n × ∏_{k≠n} I_k`` matrix, the remaining modes in order, the last fastest.

    Example:
      >>> import jax.numpy as jnp
      >>> from tensorfact.algebra import unfold
      >>> unfold(jnp.arange(8.0).reshape(2, 2, 2), 1)
      Array([[0., 1., 4., 5.],
             [2., 3., 6., 7.]], dtype=float32)
    """
    x = as_tensor(x, "x", min_ndim=1)
    mode = check_mode(mode, x.ndim, shape=x.shape)
    rest = math.prod(x.shape[:mode] + x.shape[mode + 1:])  # not -1: sizes may be zero
    return jnp.moveaxis(x, mode, 0).reshape(x.shape[mode], rest)


def fold(matrix: jax.Array, mode: int, shape: Sequence[int]) -> jax.Array:
    """Inverse of :func:`unfold`: refolds the ``I_mode × ∏_{k≠mode} I_k`` matrix into ``shape``.

    Example:
      >>> import jax.numpy as jnp
      >>> from tensorfact.algebra import fold, unfold
      >>> x = jnp.arange(24.0).reshape(2, 3, 4)
      >>> bool((fold(unfold(x, 2), 2, x.shape) == x).all())
      True
    """
    shape = check_shape(shape)
    if not shape:
        raise ValueError("shape must have at least one mode, got ().")
    mode = check_mode(mode, len(shape), shape=shape)
    matrix = as_tensor(matrix, "matrix")
    unfolded = (shape[mode], math.prod(shape[:mode] + shape[mode + 1:]))
    if tuple(matrix.shape) != unfolded:
        raise ValueError(f"matrix of shape {tuple(matrix.shape)} cannot be folded into shape "
                         f"{shape} along mode {mode}: that unfolding has shape {unfolded}.")
    moved = (shape[mode],) + shape[:mode] + shape[mode + 1:]
    return jnp.moveaxis(matrix.reshape(moved), 0, mode)


def _check_operator(m, shape, mode: int, transpose: bool, name: str) -> jax.Array:
    """The matrix ``(J, I_mode)`` (``(I_mode, J)`` transposed) or vector ``(I_mode,)`` of a mode
    product with a tensor of ``shape``."""
    m = as_tensor(m, name)
    if m.ndim not in (1, 2):
        raise ValueError(f"{name} must be 1-D (a vector) or 2-D (a matrix), got shape "
                         f"{tuple(m.shape)}.")
    contract = 0 if m.ndim == 1 or transpose else 1
    if m.shape[contract] != shape[mode]:
        what = ("vector of length" if m.ndim == 1
                else f"matrix of shape{' (transposed)' if transpose else ''}")
        size = m.shape[0] if m.ndim == 1 else tuple(m.shape)
        raise ValueError(f"{name}: {what} {size} does not match mode {mode} of size "
                         f"{shape[mode]} (x has shape {tuple(shape)}).")
    return m


def mode_dot(x: jax.Array, matrix_or_vector: jax.Array, mode: int, *,
             transpose: bool = False, precision: Precision = "highest") -> jax.Array:
    """Mode-``n`` product ``x ×_n M``.

    For a matrix ``M`` of shape ``(J, I_n)`` the result has ``J`` in place of mode ``n``:
    ``unfold(x ×_n M, n) = M · unfold(x, n)``. With ``transpose=True`` ``Mᵀ`` is applied
    (``M`` of shape ``(I_n, J)``). A vector of length ``I_n`` contracts the mode away. Modes of
    size zero give an empty result of the right shape (a contracted one, zeros).

    Example:
      >>> import jax.numpy as jnp
      >>> from tensorfact.algebra import mode_dot
      >>> x = jnp.ones((2, 3, 4))
      >>> mode_dot(x, jnp.ones((5, 3)), 1).shape
      (2, 5, 4)
      >>> mode_dot(x, jnp.arange(4.0), 2)          # sums 0 + 1 + 2 + 3 along mode 2
      Array([[6., 6., 6.],
             [6., 6., 6.]], dtype=float32)
    """
    x = as_tensor(x, "x", min_ndim=1)
    mode = check_mode(mode, x.ndim, shape=x.shape)
    m = _check_operator(matrix_or_vector, x.shape, mode, transpose, "matrix_or_vector")
    return _mode_dot(x, m, mode, transpose, resolve_precision(precision))


def _mode_dot(x, m, mode, transpose, precision):
    """:func:`mode_dot` on checked arguments."""
    if m.ndim == 1:
        return jnp.tensordot(x, m, axes=(mode, 0), precision=precision)
    # outer modes contract in the layout the product arrives in (no transposition of x or of
    # the result: XLA-CPU is several times slower on the transposed forms)
    if mode == x.ndim - 1:
        return jnp.tensordot(x, m, axes=(mode, 0 if transpose else 1), precision=precision)
    # other modes: a batched product M · x[b] over x viewed as (before, I_mode, after); the
    # sizes are spelled out since -1 cannot be inferred when one of them is zero
    before, after = math.prod(x.shape[:mode]), math.prod(x.shape[mode + 1:])
    left = m.T if transpose else m
    out = jnp.matmul(left, x.reshape(before, x.shape[mode], after), precision=precision)
    return out.reshape(x.shape[:mode] + (left.shape[0],) + x.shape[mode + 1:])


def multi_mode_dot(x: jax.Array, matrices: Sequence[jax.Array], modes=None, *, skip=None,
                   transpose: bool = False, precision: Precision = "highest") -> jax.Array:
    """Chain of mode products ``x ×_{m_0} M_0 ×_{m_1} M_1 ...``.

    ``modes`` defaults to ``range(len(matrices))``; ``skip`` leaves out the matrix (and mode)
    at that position. The products are applied largest shrinkage first, which is cheapest and
    gives the same result (mode products on distinct modes commute). Matrices and vectors may
    be mixed, as in :func:`mode_dot`.

    Example:
      >>> import jax.numpy as jnp
      >>> from tensorfact.algebra import multi_mode_dot
      >>> x = jnp.ones((2, 3, 4))
      >>> multi_mode_dot(x, [jnp.ones((5, 2)), jnp.ones((6, 4))], [0, 2]).shape
      (5, 3, 6)
    """
    x = as_tensor(x, "x")
    matrices = check_sequence(matrices, "matrices")
    if not matrices:
        return x
    if modes is None:
        if len(matrices) > x.ndim:
            raise ValueError(f"matrices holds {len(matrices)} matrices, but x has only {x.ndim} "
                             f"modes (shape {tuple(x.shape)}); pass modes to say which.")
        modes = tuple(range(len(matrices)))
    else:
        modes = check_modes(modes, x.ndim)
    if len(modes) != len(matrices):
        raise ValueError(f"got {len(matrices)} matrices for {len(modes)} modes {modes}.")
    skip = check_index(skip, len(matrices), "skip")
    pairs = [(m, _check_operator(a, x.shape, m, transpose, f"matrices[{i}]"))
             for i, (m, a) in enumerate(zip(modes, matrices)) if i != skip]
    precision = resolve_precision(precision)

    def shrink(pair):
        m, a = pair
        return a.shape[1 if transpose else 0] / max(x.shape[m], 1)

    out = x
    for m, a in sorted((p for p in pairs if p[1].ndim == 2), key=shrink):
        out = _mode_dot(out, a, m, transpose, precision)
    # vectors remove modes, so apply them last, highest mode first, to keep indices valid
    for m, a in sorted((p for p in pairs if p[1].ndim == 1), key=lambda p: -p[0]):
        out = _mode_dot(out, a, m, False, precision)
    return out


def _check_matrices(matrices, skip, name: str = "matrices") -> list:
    """The 2-D matrices of ``matrices`` but the one at ``skip``; at least one."""
    matrices = check_sequence(matrices, name)
    skip = check_index(skip, len(matrices), "skip") if matrices else None
    kept = []
    for i, a in enumerate(matrices):
        if i == skip:
            continue
        a = as_tensor(a, f"{name}[{i}]")
        if a.ndim != 2:
            raise ValueError(f"{name}[{i}] must be 2-D (a matrix), got shape {tuple(a.shape)}.")
        kept.append(a)
    if not kept:
        raise ValueError(f"{name} must hold at least one matrix (besides skip={skip!r}), got "
                         f"{len(matrices)}.")
    return kept


def khatri_rao(matrices: Sequence[jax.Array], *, weights=None, skip=None) -> jax.Array:
    """Column-wise Kronecker product of matrices ``(I_k, R)`` → ``(∏ I_k, R)``.

    The last matrix's row index varies fastest, matching :func:`unfold`. ``weights`` (length
    ``R``) scale the columns; ``skip`` leaves out one matrix.

    Example:
      >>> import jax.numpy as jnp
      >>> from tensorfact.algebra import khatri_rao
      >>> khatri_rao([jnp.array([[1.0], [2.0]]), jnp.array([[1.0], [10.0]])])[:, 0]
      Array([ 1., 10.,  2., 20.], dtype=float32)
    """
    mats = _check_matrices(matrices, skip)
    rank = mats[0].shape[1]
    if any(a.shape[1] != rank for a in mats):
        raise ValueError(f"matrices must have a common number of columns, got shapes "
                         f"{[tuple(a.shape) for a in mats]}.")
    out = mats[0]
    for a in mats[1:]:
        out = (out[:, None, :] * a[None, :, :]).reshape(out.shape[0] * a.shape[0], rank)
    if weights is not None:
        weights = as_tensor(weights, "weights")
        if weights.shape != (rank,):
            raise ValueError(f"weights must have one entry per column ({rank}), got shape "
                             f"{tuple(weights.shape)}.")
        out = out * weights
    return out


def kronecker(matrices: Sequence[jax.Array], *, skip=None) -> jax.Array:
    """Kronecker product ``M_0 ⊗ M_1 ⊗ ...`` of matrices (``skip`` leaves out one).

    Example:
      >>> import jax.numpy as jnp
      >>> from tensorfact.algebra import kronecker
      >>> kronecker([jnp.eye(2), jnp.ones((1, 3))]).shape
      (2, 6)
    """
    mats = _check_matrices(matrices, skip)
    out = mats[0]
    for a in mats[1:]:
        out = jnp.kron(out, a)
    return out


def _check_rank_axis(rank_axis) -> int:
    if isinstance(rank_axis, bool) or rank_axis not in (0, -1) or not isinstance(rank_axis, int):
        raise ValueError(f"rank_axis must be 0 or -1, got {rank_axis!r}.")
    return rank_axis


def partial_mttkrp(x: jax.Array, factors: Sequence[jax.Array], modes: Sequence[int], *,
                   rank_axis: int = -1, precision: Precision = "highest") -> jax.Array:
    """Contracts ``modes`` of ``x`` against factor matrices that share one rank index.

    Returns the array ``T`` with the remaining modes of ``x`` (in order) and the rank axis
    (last, or first with ``rank_axis=0``):
    ``T[i_rest, r] = Σ_{i_modes} x[i] ∏_k factors[k][i_{modes[k]}, r]``. With every mode but
    one this is the MTTKRP; with half the modes it is the shared intermediate of a dimension
    tree (Phan, Tichavský & Cichocki, IEEE TSP 61(19), 2013).

    The first contraction is one matrix product over an outer axis of ``x``, so ``x`` is read
    once and never transposed: over the last axis (``x·A``, rank axis last) when it is among
    ``modes``, else over the first (``Aᵀx``, rank axis first). The rest run on the smaller
    intermediate with the rank index batched; the Khatri–Rao product is never formed. Asking
    for the rank axis where it arrives (see :func:`natural_rank_axis`) avoids one transpose of
    the intermediate.

    Example:
      >>> import jax.numpy as jnp
      >>> from tensorfact.algebra import partial_mttkrp
      >>> x = jnp.ones((2, 3, 4))
      >>> partial_mttkrp(x, [jnp.ones((4, 5))], [2]).shape        # modes 0, 1 and the rank
      (2, 3, 5)
    """
    x = as_tensor(x, "x", min_ndim=1)
    modes = check_modes(modes, x.ndim)
    factors = check_factors(factors, x.shape, modes)
    rank_axis = _check_rank_axis(rank_axis)
    precision = resolve_precision(precision)
    by_mode = dict(zip(modes, factors))
    natural = natural_rank_axis(x.ndim, modes)
    if natural == -1:
        first = x.ndim - 1 if x.ndim - 1 in by_mode else max(by_mode, key=lambda m: x.shape[m])
        out = jnp.tensordot(x, by_mode.pop(first), axes=(first, 0), precision=precision)
    else:
        first = 0
        out = jnp.tensordot(by_mode.pop(first), x, axes=(0, 0), precision=precision)
    rest = tuple(m for m in range(x.ndim) if m != first)
    out = _contract_with_rank(out, rest, list(by_mode.values()), list(by_mode), natural,
                              precision)
    return out if rank_axis == natural else jnp.moveaxis(out, natural, rank_axis)


def natural_rank_axis(ndim: int, modes: Sequence[int]) -> int:
    """Where :func:`partial_mttkrp` produces the rank axis without a transpose: first when
    mode 0 is contracted and the last mode is not, last otherwise.

    Example:
      >>> from tensorfact.algebra import natural_rank_axis
      >>> natural_rank_axis(3, [0, 1]), natural_rank_axis(3, [1, 2])
      (0, -1)
    """
    modes = check_modes(modes, ndim)
    return 0 if (0 in modes and ndim - 1 not in modes) else -1


def contract_with_rank(t: jax.Array, t_modes: Sequence[int], factors: Sequence[jax.Array],
                       modes: Sequence[int], *, rank_axis: int = -1,
                       precision: Precision = "highest") -> jax.Array:
    """Contracts an intermediate that already carries a rank axis (last, or first with
    ``rank_axis=0``).

    ``t`` has one axis per entry of ``t_modes`` (their mode labels) plus the rank axis of size
    ``R``; each ``factors[k]`` (shape ``(I, R)``) is contracted against the axis labelled
    ``modes[k]``, with the rank index shared (batched), largest mode first. Returns the
    remaining labelled axes, in order, with the rank axis where it was.

    Example:
      >>> import jax.numpy as jnp
      >>> from tensorfact.algebra import contract_with_rank
      >>> t = jnp.ones((2, 3, 5))                  # modes labelled 0 and 2, then rank 5
      >>> contract_with_rank(t, (0, 2), [jnp.ones((3, 5))], [2]).shape
      (2, 5)
    """
    rank_axis = _check_rank_axis(rank_axis)
    t = as_tensor(t, "t", min_ndim=1)
    labels = check_shape(t_modes, "t_modes")
    if len(labels) != t.ndim - 1 or len(set(labels)) != len(labels):
        raise ValueError(f"t_modes must hold one distinct label per axis of t but the rank axis "
                         f"({t.ndim - 1}: t has shape {tuple(t.shape)}), got {tuple(t_modes)!r}.")
    modes = check_shape(modes, "modes")
    if any(m not in labels for m in modes) or len(set(modes)) != len(modes):
        raise ValueError(f"modes must hold distinct labels among t_modes {tuple(labels)}, got "
                         f"{tuple(modes)!r}.")
    sizes = dict(zip(labels, t.shape[1:] if rank_axis == 0 else t.shape[:-1]))
    factors = check_factors(factors, sizes, modes, tensor="t")
    rank = t.shape[rank_axis]
    if any(a.shape[1] != rank for a in factors):
        raise ValueError(f"factors must have {rank} columns, the size of the rank axis of t "
                         f"(shape {tuple(t.shape)}), got shapes "
                         f"{[tuple(a.shape) for a in factors]}.")
    return _contract_with_rank(t, labels, factors, modes, rank_axis, resolve_precision(precision))


def _contract_with_rank(t, t_modes, factors, modes, rank_axis, precision):
    """:func:`contract_with_rank` on checked arguments."""
    axes = list(t_modes)
    sizes = dict(zip(axes, t.shape[1:] if rank_axis == 0 else t.shape[:-1]))
    letters = string.ascii_letters
    for m, a in sorted(zip(modes, factors), key=lambda p: -sizes[p[0]]):
        pos = axes.index(m)
        src = letters[:len(axes)]
        dst = src[:pos] + src[pos + 1:]
        if rank_axis == 0:
            spec = f"Z{src},{src[pos]}Z->Z{dst}"
        else:
            spec = f"{src}Z,{src[pos]}Z->{dst}Z"
        t = jnp.einsum(spec, t, a, precision=precision)
        axes.pop(pos)
    return t


def mttkrp(x: jax.Array, factors: Sequence[jax.Array], mode: int, *, impl: Impl = "auto",
           precision: Precision = "highest") -> jax.Array:
    """Matricised tensor times Khatri–Rao product for ``mode``.

    ``mttkrp(x, factors, n) = unfold(x, n) · khatri_rao(factors, skip=n)``, shape ``(I_n, R)``;
    ``factors[n]`` is not read (it may be anything, ``None`` included). The XLA path is
    :func:`partial_mttkrp`: no Khatri–Rao product, ``x`` read once. A mode of size zero gives an
    empty (``I_n = 0``) or zero (another mode) result.

    A sparse ``x`` (a ``jax.experimental.sparse.BCOO``, e.g. from
    :func:`tensorfact.sparse_tensor`) is contracted over its stored entries alone: each entry's
    factor rows gathered, multiplied and summed into the rows of the result
    (``jax.ops.segment_sum``), in ``O(nnz · R)`` memory; ``impl`` and ``precision`` do not apply
    (the products are elementwise) and ``impl="pallas"`` is an error.

    ``impl``: ``"xla"`` (that path), ``"pallas"`` (the kernel
    :func:`tensorfact.kernels.mttkrp_pallas`, in interpret mode off GPUs) or ``"auto"`` (the
    kernel on a GPU where dtype, size and rank suit it and a GPU benchmark has shown it to pay,
    else XLA; ``TENSORFACT_DEBUG_DISPATCH=1`` logs why it fell back). No GPU timing exists yet,
    so ``"auto"`` is XLA everywhere for now.

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> x = jnp.arange(24.0).reshape(2, 3, 4)
      >>> fs = [jnp.ones((2, 2)), jnp.ones((3, 2)), jnp.ones((4, 2))]
      >>> tfa.mttkrp(x, fs, 0)[:, 0]          # sums of the two slices
      Array([ 66., 210.], dtype=float32)
    """
    if is_sparse(x):
        return _sparse_mttkrp(x, factors, mode, impl)
    x = as_tensor(x, "x", min_ndim=2)
    mode = check_mode(mode, x.ndim, shape=x.shape)
    factors = check_factors(factors, x.shape, skip=mode)
    rank = factors[1 if mode == 0 else 0].shape[1]
    if kernels.resolve_mttkrp_impl(x, rank, impl) == "pallas":
        return kernels.mttkrp(x, factors, mode, impl="pallas", precision=precision)
    others = [m for m in range(x.ndim) if m != mode]
    return partial_mttkrp(x, [factors[m] for m in others], others, precision=precision)


def _sparse_mttkrp(x, factors, mode, impl):
    x = check_sparse(x, "x", min_ndim=2, keep_low_floats=True)
    mode = check_mode(mode, x.ndim, shape=x.shape)
    factors = check_factors(factors, x.shape, skip=mode)
    if check_choice(impl, Impl, "impl") == "pallas":
        raise ValueError('impl="pallas" has no kernel for a sparse x (a BCOO): use "auto" or '
                         '"xla" (the MTTKRP over its stored entries).')
    return sparse_mttkrp(x, factors, mode)
