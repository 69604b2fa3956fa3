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
from tensorfact._checks import check_choice, check_modes
from tensorfact._numerics import resolve_precision

__all__ = [
    "unfold", "fold", "mode_dot", "multi_mode_dot", "khatri_rao", "kronecker",
    "mttkrp", "partial_mttkrp", "natural_rank_axis", "contract_with_rank", "resolve_precision",
]


def unfold(x: jax.Array, mode: int) -> jax.Array:
    """Mode-``mode`` unfolding: ``moveaxis(x, mode, 0).reshape(x.shape[mode], -1)``."""
    (mode,) = check_modes(mode, x.ndim, "mode")
    return jnp.moveaxis(x, mode, 0).reshape(x.shape[mode], -1)


def fold(matrix: jax.Array, mode: int, shape: Sequence[int]) -> jax.Array:
    """Inverse of :func:`unfold`: refolds an ``I_mode × ∏ I_k`` matrix into ``shape``."""
    shape = tuple(int(s) for s in shape)
    (mode,) = check_modes(mode, len(shape), "mode")
    moved = (shape[mode],) + shape[:mode] + shape[mode + 1:]
    if matrix.size != math.prod(shape) or matrix.shape[0] != shape[mode]:
        raise ValueError(f"matrix of shape {tuple(matrix.shape)} cannot be folded into shape "
                         f"{shape} along mode {mode}.")
    return jnp.moveaxis(matrix.reshape(moved), 0, mode)


def mode_dot(x: jax.Array, matrix_or_vector: jax.Array, mode: int, *,
             transpose: bool = False, precision="highest") -> jax.Array:
    """Mode-``n`` product ``x ×_n M``.

    For a matrix ``M`` of shape ``(J, I_n)`` the result has ``J`` in place of mode ``n``:
    ``unfold(x ×_n M, n) = M · unfold(x, n)``. With ``transpose=True`` ``Mᵀ`` is applied
    (``M`` of shape ``(I_n, J)``). A vector of length ``I_n`` contracts the mode away.
    """
    (mode,) = check_modes(mode, x.ndim, "mode")
    m = matrix_or_vector
    precision = resolve_precision(precision)
    if m.ndim == 1:
        if m.shape[0] != x.shape[mode]:
            raise ValueError(f"vector of length {m.shape[0]} does not match mode {mode} of size "
                             f"{x.shape[mode]} (shape {tuple(x.shape)}).")
        return jnp.tensordot(x, m, axes=(mode, 0), precision=precision)
    if m.ndim != 2:
        raise ValueError(f"matrix_or_vector must be 1-D or 2-D, got shape {tuple(m.shape)}.")
    contract = 0 if transpose else 1
    if m.shape[contract] != x.shape[mode]:
        raise ValueError(
            f"matrix of shape {tuple(m.shape)}{' (transposed)' if transpose else ''} does not "
            f"match mode {mode} of size {x.shape[mode]} (shape {tuple(x.shape)})."
        )
    # outer modes contract in the layout the product arrives in (no transposition of x or of
    # the result: XLA-CPU is several times slower on the transposed forms)
    if mode == x.ndim - 1:
        return jnp.tensordot(x, m, axes=(mode, contract), precision=precision)
    # other modes: a batched product M · x[b] over x viewed as (before, I_mode, after)
    before = math.prod(x.shape[:mode])
    left = m.T if transpose else m
    out = jnp.matmul(left, x.reshape(before, x.shape[mode], -1), precision=precision)
    return out.reshape(x.shape[:mode] + (left.shape[0],) + x.shape[mode + 1:])


def multi_mode_dot(x: jax.Array, matrices: Sequence[jax.Array], modes=None, *, skip=None,
                   transpose: bool = False, precision="highest") -> jax.Array:
    """Chain of mode products ``x ×_{m_0} M_0 ×_{m_1} M_1 ...``.

    ``modes`` defaults to ``range(len(matrices))``; ``skip`` leaves out the matrix (and mode)
    at that position. The products are applied largest shrinkage first, which is cheapest and
    gives the same result (mode products on distinct modes commute).
    """
    matrices = list(matrices)
    if not matrices:
        return x
    modes = tuple(range(len(matrices))) if modes is None else check_modes(modes, x.ndim)
    if len(modes) != len(matrices):
        raise ValueError(f"got {len(matrices)} matrices for {len(modes)} modes {modes}.")
    pairs = [(m, a) for i, (m, a) in enumerate(zip(modes, matrices)) if i != skip]

    def shrink(pair):
        m, a = pair
        new = 1 if a.ndim == 1 else a.shape[1 if transpose else 0]
        return new / x.shape[m]

    out = x
    for m, a in sorted((p for p in pairs if p[1].ndim != 1), key=shrink):
        out = mode_dot(out, a, m, transpose=transpose, precision=precision)
    # vectors remove modes, so apply them last, highest mode first, to keep indices valid
    for m, a in sorted((p for p in pairs if p[1].ndim == 1), key=lambda p: -p[0]):
        out = mode_dot(out, a, m, precision=precision)
    return out


def _check_factor_columns(matrices, name="matrices"):
    if any(a.ndim != 2 for a in matrices) or len({int(a.shape[1]) for a in matrices}) != 1:
        raise ValueError(f"{name} must be 2-D with a common number of columns, got shapes "
                         f"{[tuple(a.shape) for a in matrices]}.")


def khatri_rao(matrices: Sequence[jax.Array], *, weights=None, skip=None) -> jax.Array:
    """Column-wise Kronecker product of matrices ``(I_k, R)`` → ``(∏ I_k, R)``.

    The last matrix's row index varies fastest, matching :func:`unfold`. ``weights`` (length
    ``R``) scale the columns; ``skip`` leaves out one matrix.
    """
    mats = [a for i, a in enumerate(matrices) if i != skip]
    if not mats:
        raise ValueError("khatri_rao needs at least one matrix.")
    _check_factor_columns(mats)
    out = mats[0]
    for a in mats[1:]:
        out = (out[:, None, :] * a[None, :, :]).reshape(-1, out.shape[1])
    if weights is not None:
        out = out * weights
    return out


def kronecker(matrices: Sequence[jax.Array], *, skip=None) -> jax.Array:
    """Kronecker product ``M_0 ⊗ M_1 ⊗ ...`` (``skip`` leaves out one matrix)."""
    mats = [a for i, a in enumerate(matrices) if i != skip]
    if not mats:
        raise ValueError("kronecker needs at least one matrix.")
    out = mats[0]
    for a in mats[1:]:
        out = jnp.kron(out, a)
    return out


def partial_mttkrp(x: jax.Array, factors: Sequence[jax.Array], modes: Sequence[int], *,
                   rank_axis: int = -1, precision="highest") -> jax.Array:
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
    """
    modes = check_modes(modes, x.ndim)
    if len(factors) != len(modes):
        raise ValueError(f"got {len(factors)} factors for {len(modes)} modes {modes}.")
    _check_factor_columns(factors, "factors")
    for m, a in zip(modes, factors):
        if a.shape[0] != x.shape[m]:
            raise ValueError(f"factor for mode {m} has {a.shape[0]} rows; the tensor's mode {m} "
                             f"has size {x.shape[m]} (shape {tuple(x.shape)}).")
    if rank_axis not in (0, -1):
        raise ValueError(f"rank_axis must be 0 or -1, got {rank_axis!r}.")
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
    out = contract_with_rank(out, rest, list(by_mode.values()), list(by_mode),
                             rank_axis=natural, precision=precision)
    return out if rank_axis == natural else jnp.moveaxis(out, natural, rank_axis)


def natural_rank_axis(ndim: int, modes: Sequence[int]) -> int:
    """Where :func:`partial_mttkrp` produces the rank axis without a transpose: first when
    mode 0 is contracted and the last mode is not, last otherwise."""
    modes = {m % ndim for m in modes}
    return 0 if (0 in modes and ndim - 1 not in modes) else -1


def contract_with_rank(t: jax.Array, t_modes: Sequence[int], factors: Sequence[jax.Array],
                       modes: Sequence[int], *, rank_axis: int = -1,
                       precision="highest") -> jax.Array:
    """Contracts an intermediate that already carries a rank axis (last, or first with
    ``rank_axis=0``).

    ``t`` has one axis per entry of ``t_modes`` (their mode labels) plus the rank axis of size
    ``R``; each ``factors[k]`` (shape ``(I, R)``) is contracted against the axis labelled
    ``modes[k]``, with the rank index shared (batched), largest mode first. Returns the
    remaining labelled axes, in order, with the rank axis where it was.
    """
    precision = resolve_precision(precision)
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


def mttkrp(x: jax.Array, factors: Sequence[jax.Array], mode: int, *, impl: str = "auto",
           precision="highest") -> jax.Array:
    """Matricised tensor times Khatri–Rao product for ``mode``.

    ``mttkrp(x, factors, n) = unfold(x, n) · khatri_rao(factors, skip=n)``, shape ``(I_n, R)``;
    ``factors[n]`` is ignored. The XLA path is :func:`partial_mttkrp`: no Khatri–Rao product,
    ``x`` read once.

    ``impl``: ``"xla"`` (that path), ``"pallas"`` (the kernel of :mod:`tensorfact.kernels.mttkrp`,
    in interpret mode off GPUs) or ``"auto"`` (the kernel on a GPU where dtype, size and rank
    suit it and a GPU benchmark has shown it to pay, else XLA; ``TENSORFACT_DEBUG_DISPATCH=1``
    logs why it fell back). No GPU timing exists yet, so ``"auto"`` is XLA everywhere for now.

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> x = jnp.arange(24.0).reshape(2, 3, 4)
      >>> fs = [jnp.ones((2, 2)), jnp.ones((3, 2)), jnp.ones((4, 2))]
      >>> tfa.mttkrp(x, fs, 0)[:, 0]          # sums of the two slices
      Array([ 66., 210.], dtype=float32)
    """
    check_choice(impl, ("auto", "pallas", "xla"), "impl")
    if len(factors) != x.ndim:
        raise ValueError(f"factors must hold one matrix per mode ({x.ndim}), got {len(factors)}.")
    (mode,) = check_modes(mode, x.ndim, "mode")
    if kernels.resolve_mttkrp_impl(x, factors[0].shape[1], impl) == "pallas":
        return kernels.mttkrp(x, factors, mode, impl="pallas", precision=precision)
    others = [m for m in range(x.ndim) if m != mode]
    return partial_mttkrp(x, [factors[m] for m in others], others, precision=precision)
