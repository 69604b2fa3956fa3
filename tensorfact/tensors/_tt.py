"""Tensor trains (TT) and TT-matrices (matrix product operators), and arithmetic in the format.

A TT tensor of shape ``(n_1, ..., n_d)`` holds ``d`` cores ``G_k`` of shape
``(r_{k-1}, n_k, r_k)`` with ``r_0 = r_d = 1``, and

    x[i_1, ..., i_d] = G_1[:, i_1, :] · G_2[:, i_2, :] ⋯ G_d[:, i_d, :].

A TT-matrix ``W`` of shape ``(M, N) = (∏ m_k, ∏ n_k)`` holds cores ``(r_{k-1}, m_k, n_k, r_k)``
and ``W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] ⋯ G_d[:, i_d, j_d, :]``, the row index
``(i_1..i_d)`` and the column index ``(j_1..j_d)`` each flattened in C order (``i_1``
slowest). Reshaped to ``(r_{k-1}, m_k·n_k, r_k)`` the cores of a TT-matrix are those of a TT
tensor of shape ``(m_1 n_1, ..., m_d n_d)``, so most operations below serve both types.

Everything here is done on the cores, never on the dense tensor (sums, Hadamard products and
inner products after Oseledets 2011, §4; orthogonalisation by QR, ibid. §3), and needs no SVD:
TT-SVD, TT-rounding and TT-matrices of a dense matrix are :func:`tensorfact.tt`,
:func:`tensorfact.tt_round` and :func:`tensorfact.tt_matrix`. The TT-matrix products
(:func:`tt_matmul`) are here because the ``@`` operator of the types delegates to them and a
type may not import from the decompositions above it; their dense case runs the chain of
:mod:`tensorfact.kernels` (the layer below the types).

Scale: a train multiplies ``d`` scales, so a tensor whose norm is representable can have
partial products that are not (cores of entries 1e20, or 1e30 and 1e-30). The norms, inner
products and orthogonalisations below rescale cores and running products by exact powers of
two and keep the exponents apart (``tensors/_base.py``).

Reference: I. V. Oseledets, "Tensor-Train Decomposition", SIAM Journal on Scientific
Computing 33(5), 2295–2317, 2011.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from tensorfact import algebra, kernels
from tensorfact._checks import Impl, Precision, check_choice, is_traced
from tensorfact._numerics import pow2_normalize, pow2_restore, pow2_sqrt
from tensorfact.tensors._base import CoreSequence, FactorizedTensor, as_leaf_sequence

__all__ = ["TTTensor", "TTMatrix", "tt_add", "tt_scale", "tt_hadamard", "tt_inner",
           "tt_orthogonalize", "tt_gather", "tt_matmul", "flat_cores", "from_flat_cores",
           "orthogonalize_scaled"]


def _as_cores(cores, ndim: int, kind: str) -> tuple[jax.Array, ...]:
    """Converts ``cores`` to a tuple of ``ndim``-D arrays with chained ranks, 1 at both ends."""
    layout = "(r_prev, n, r_next)" if ndim == 3 else "(r_prev, m, n, r_next)"
    cores = as_leaf_sequence(cores, "cores", ndim, layout, f" of a {kind}")
    for k in range(1, len(cores)):
        if cores[k].shape[0] != cores[k - 1].shape[-1]:
            raise ValueError(f"cores[{k}] must start with rank {cores[k - 1].shape[-1]} (the last "
                             f"axis of cores[{k - 1}]), got shape {tuple(cores[k].shape)}.")
    if cores[0].shape[0] != 1 or cores[-1].shape[-1] != 1:
        raise ValueError(f"the ranks of a {kind} must start and end with 1, got first core of "
                         f"shape {tuple(cores[0].shape)} and last core of shape "
                         f"{tuple(cores[-1].shape)}.")
    return cores


class _TrainBase(CoreSequence, FactorizedTensor):
    """What TT tensors and TT-matrices share: cores, ranks, operators, norm."""

    _leaves = ("cores",)
    __array_ufunc__ = None  # NumPy scalars and arrays defer to the operators below

    @property
    def rank(self) -> tuple[int, ...]:
        """The TT ranks ``(1, r_1, ..., r_{d-1}, 1)``."""
        return (int(self.cores[0].shape[0]),) + tuple(int(g.shape[-1]) for g in self.cores)

    def norm(self, *, precision: Precision = "highest") -> jax.Array:
        """``sqrt(⟨x, x⟩)`` by the sweep of :func:`tt_inner` on the cores (``O(d n r³)``), no
        dense tensor. The square is never formed, so the norm is finite whenever it is
        representable (cores of entries 1e20 included); the gradient at zero is zero."""
        return _norm_cores(flat_cores(self), precision=precision)

    def orthogonalize(self, side: Literal["left", "right"] = "left", *,
                      precision: Precision = "highest"):
        """Same tensor with left- or right-orthonormal cores; see :func:`tt_orthogonalize`."""
        return tt_orthogonalize(self, side, precision=precision)

    def trim(self):
        """Drops the rank indices that carry exact zeros (the padding of a jitted ``eps`` fit).

        ``tensorfact.tt(x, eps=..., max_rank=R)`` under ``jax.jit`` keeps every core at its
        static size and zeroes the columns beyond the rank each step chose. Outside of ``jit``
        this returns the same tensor at those ranks: index ``j`` of bond ``k`` is dropped when
        ``G_k[..., j]`` or ``G_{k+1}[j, ...]`` is entirely zero (at least one index is kept).
        The output shapes depend on the data, so this runs eagerly only.
        """
        if any(is_traced(g) for g in self.cores):
            raise ValueError("trim() picks shapes from the data and cannot run under jax.jit or "
                             "vmap; call it on the concrete result.")
        cores = [np.asarray(g) for g in self.cores]  # host slicing: no compile per shape
        for k in range(1, len(cores)):
            left, right = cores[k - 1], cores[k]
            used = (np.any(left != 0, axis=tuple(range(left.ndim - 1)))
                    & np.any(right != 0, axis=tuple(range(1, right.ndim))))
            keep = np.flatnonzero(used) if used.any() else np.array([0])
            cores[k - 1], cores[k] = left[..., keep], right[keep]
        return type(self)([jnp.asarray(g) for g in cores])

    # -- operators: thin wrappers over the functions below ---------------------------------
    def __add__(self, other):
        if not isinstance(other, _TrainBase):
            return NotImplemented
        return tt_add(self, other)

    def __sub__(self, other):
        if not isinstance(other, _TrainBase):
            return NotImplemented
        return tt_add(self, tt_scale(other, -1))

    def __neg__(self):
        return tt_scale(self, -1)

    def __pos__(self):
        return self

    def __mul__(self, other):
        if isinstance(other, _TrainBase):
            return tt_hadamard(self, other)
        if _is_scalar(other):
            return tt_scale(self, other)
        return NotImplemented

    def __rmul__(self, other):
        if _is_scalar(other):
            return tt_scale(self, other)
        return NotImplemented

    def __truediv__(self, other):
        if _is_scalar(other):
            return tt_scale(self, 1 / other)
        return NotImplemented


def _is_scalar(value) -> bool:
    return isinstance(value, numbers.Number) or (hasattr(value, "shape") and value.ndim == 0
                                                 and not isinstance(value, FactorizedTensor))


@jax.tree_util.register_pytree_node_class
class TTTensor(_TrainBase):
    """A tensor train ``x[i_1..i_d] = G_1[:, i_1, :] ⋯ G_d[:, i_d, :]``.

    Args:
      cores: ``d`` arrays, core ``k`` of shape ``(r_{k-1}, n_k, r_k)`` with ``r_0 = r_d = 1``.

    ``rank`` is the full tuple ``(1, r_1, ..., r_{d-1}, 1)``; iterating gives the cores.
    Operators work in the format: ``a + b``, ``a - b``, ``-a``, ``c * a``, ``a / c`` (scalar
    ``c``) and ``a * b`` (Hadamard product; ranks multiply). Round the result back to small
    ranks with :func:`tensorfact.tt_round`.

    Reference: I. V. Oseledets, "Tensor-Train Decomposition", SIAM J. Sci. Comput. 33(5), 2011.

    Example:
      >>> import jax.numpy as jnp
      >>> g = [jnp.ones((1, 2, 3)), jnp.ones((3, 4, 2)), jnp.ones((2, 5, 1))]
      >>> t = TTTensor(g)
      >>> t.shape, t.rank, float(t.to_dense()[0, 0, 0])
      ((2, 4, 5), (1, 3, 2, 1), 6.0)
      >>> float((t + t).norm()) == float(2 * t.norm())
      True
    """

    def __init__(self, cores: Sequence[jax.Array]):
        self._set(cores=_as_cores(cores, 3, "TTTensor"))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(g.shape[1]) for g in self.cores)

    def to_dense(self, *, precision: Precision = "highest") -> jax.Array:
        """Contracts the cores left to right (``d − 1`` matrix products)."""
        return _tt_dense(self.cores, precision=precision)

    def gather(self, indices, *, precision: Precision = "highest") -> jax.Array:
        """Entries at integer ``indices`` of shape ``(..., d)``; see :func:`tt_gather`."""
        return tt_gather(self, indices, precision=precision)


@jax.tree_util.register_pytree_node_class
class TTMatrix(_TrainBase):
    """A TT-matrix (matrix product operator) of shape ``(∏ m_k, ∏ n_k)``.

    ``W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] ⋯ G_d[:, i_d, j_d, :]``, row and column
    multi-indices flattened in C order.

    Args:
      cores: ``d`` arrays, core ``k`` of shape ``(r_{k-1}, m_k, n_k, r_k)``, ``r_0 = r_d = 1``.

    ``row_shape = (m_k)``, ``col_shape = (n_k)``, ``shape = (∏ m_k, ∏ n_k)``. Besides the
    operators of :class:`TTTensor`, ``W @ v`` and ``x @ W`` multiply dense arrays (see
    :func:`tt_matmul`), ``W @ V`` with another TT-matrix or a :class:`TTTensor` (of shape
    ``col_shape``) stays in the format, and ``W.T`` is the transpose.

    Reference: I. V. Oseledets, "Approximation of 2^d × 2^d matrices using tensor
    decomposition", SIAM J. Matrix Anal. Appl. 31(4), 2010; A. Novikov, D. Podoprikhin,
    A. Osokin and D. Vetrov, "Tensorizing Neural Networks", NeurIPS 2015.

    Example:
      >>> import jax.numpy as jnp
      >>> w = TTMatrix([jnp.ones((1, 2, 3, 2)), jnp.ones((2, 4, 5, 1))])
      >>> w.shape, w.row_shape, w.col_shape, w.rank
      ((8, 15), (2, 4), (3, 5), (1, 2, 1))
      >>> (jnp.ones((7, 8)) @ w).shape
      (7, 15)
    """

    def __init__(self, cores: Sequence[jax.Array]):
        self._set(cores=_as_cores(cores, 4, "TTMatrix"))

    @property
    def row_shape(self) -> tuple[int, ...]:
        """``(m_1, ..., m_d)``: the factorisation of the number of rows."""
        return tuple(int(g.shape[1]) for g in self.cores)

    @property
    def col_shape(self) -> tuple[int, ...]:
        """``(n_1, ..., n_d)``: the factorisation of the number of columns."""
        return tuple(int(g.shape[2]) for g in self.cores)

    @property
    def shape(self) -> tuple[int, int]:
        return (math.prod(self.row_shape), math.prod(self.col_shape))

    @property
    def T(self) -> "TTMatrix":  # noqa: N802 - NumPy's name
        """The transpose, by swapping the row and column axes of every core."""
        return TTMatrix([jnp.swapaxes(g, 1, 2) for g in self.cores])

    def to_dense(self, *, precision: Precision = "highest") -> jax.Array:
        """The ``(∏ m_k, ∏ n_k)`` matrix (contract the cores, then reorder the axes)."""
        return _ttm_dense(self.cores, precision=precision)

    def __matmul__(self, other):
        return tt_matmul(self, other)

    def __rmatmul__(self, other):
        return tt_matmul(other, self)


# ---------------------------------------------------------------------------------------------
# helpers on "flat" cores (r, n, r'): a TT-matrix's cores with (m, n) merged


def flat_cores(t: _TrainBase) -> tuple[jax.Array, ...]:
    """The cores of ``t`` as 3-D ``(r, n, r')`` arrays: a TT-matrix's ``(m, n)`` axes merged
    (the cores of a TT tensor of shape ``(m_1 n_1, ..., m_d n_d)``)."""
    if isinstance(t, TTMatrix):
        return tuple(g.reshape(g.shape[0], -1, g.shape[-1]) for g in t.cores)
    return t.cores


def from_flat_cores(t: _TrainBase, cores) -> _TrainBase:
    """A tensor of ``t``'s type and mode shapes from flat cores (of any ranks)."""
    if isinstance(t, TTMatrix):
        return TTMatrix([f.reshape(f.shape[0], m, n, f.shape[-1])
                         for f, m, n in zip(cores, t.row_shape, t.col_shape)])
    return TTTensor(cores)


# The core-level kernels below are jitted: an eager call then compiles one program per shape
# instead of one per operation (inside a user's jit they are simply inlined).
_jit = functools.partial(jax.jit, static_argnames=("precision",))


@_jit
def _contract_flat(cores, precision="highest") -> jax.Array:
    """``G_1 ⋯ G_d`` as an ``(n_1 ⋯ n_d)``-vector (row-major), by ``d − 1`` matmuls."""
    precision = algebra.resolve_precision(precision)
    out = cores[0].reshape(-1, cores[0].shape[-1])
    for g in cores[1:]:
        out = jnp.matmul(out, g.reshape(g.shape[0], -1), precision=precision)
        out = out.reshape(-1, g.shape[-1])
    return out.reshape(-1)


@_jit
def _tt_dense(cores, precision="highest") -> jax.Array:
    return _contract_flat(cores, precision=precision).reshape(tuple(g.shape[1] for g in cores))


@_jit
def _ttm_dense(cores, precision="highest") -> jax.Array:
    d = len(cores)
    flat = _contract_flat([g.reshape(g.shape[0], -1, g.shape[-1]) for g in cores],
                          precision=precision)
    t = flat.reshape(tuple(s for g in cores for s in g.shape[1:3]))
    t = t.transpose(tuple(range(0, 2 * d, 2)) + tuple(range(1, 2 * d, 2)))
    return t.reshape(math.prod(g.shape[1] for g in cores), -1)


def _check_train(t, name: str):
    if not isinstance(t, _TrainBase):
        raise TypeError(f"{name} must be a TTTensor or TTMatrix, got {type(t).__name__}.")
    return t


def _check_same_format(a, b, what: str):
    _check_train(a, "a")
    _check_train(b, "b")
    if type(a) is not type(b):
        raise TypeError(f"{what} needs two tensors of the same type, got {type(a).__name__} and "
                        f"{type(b).__name__}.")
    if isinstance(a, TTMatrix):
        if (a.row_shape, a.col_shape) != (b.row_shape, b.col_shape):
            raise ValueError(f"{what} needs TT-matrices with the same row and column shapes, got "
                             f"{a.row_shape}×{a.col_shape} and {b.row_shape}×{b.col_shape}.")
    elif a.shape != b.shape:
        raise ValueError(f"{what} needs tensors of the same shape, got {a.shape} and {b.shape}.")


# ---------------------------------------------------------------------------------------------
# arithmetic in the format


def tt_add(a, b):
    """``a + b`` in the format: block-diagonal cores, ranks add (``r_k^a + r_k^b``).

    The first cores are stacked side by side, the last ones on top of each other, the others
    block-diagonally (Oseledets 2011, §4.1), so the result is exact but not of minimal rank;
    follow with :func:`tensorfact.tt_round`. Works for two :class:`TTTensor` or two
    :class:`TTMatrix` of the same shape.

    Example:
      >>> import jax, tensorfact as tfa
      >>> a = tfa.tt(jax.random.normal(jax.random.key(0), (4, 5, 6)), 2)
      >>> (a + a).rank
      (1, 4, 4, 1)
    """
    _check_same_format(a, b, "tt_add")
    return from_flat_cores(a, _add_cores(flat_cores(a), flat_cores(b)))


@jax.jit
def _add_cores(fa, fb):
    dtype = jnp.result_type(*fa, *fb)
    d = len(fa)
    if d == 1:
        return [fa[0].astype(dtype) + fb[0].astype(dtype)]
    cores = []
    for k, (ga, gb) in enumerate(zip(fa, fb)):
        ga, gb = ga.astype(dtype), gb.astype(dtype)
        if k == 0:
            cores.append(jnp.concatenate([ga, gb], axis=2))
        elif k == d - 1:
            cores.append(jnp.concatenate([ga, gb], axis=0))
        else:
            (ra, n, sa), (rb, _, sb) = ga.shape, gb.shape
            top = jnp.concatenate([ga, jnp.zeros((ra, n, sb), dtype)], axis=2)
            bottom = jnp.concatenate([jnp.zeros((rb, n, sa), dtype), gb], axis=2)
            cores.append(jnp.concatenate([top, bottom], axis=0))
    return cores


def tt_scale(t, alpha):
    """``alpha · t`` for a scalar ``alpha`` (scales the first core; ranks unchanged).

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> t = tfa.TTTensor([jnp.ones((1, 2, 1)), jnp.ones((1, 3, 1))])
      >>> float(tfa.tt_scale(t, 3.0).to_dense()[0, 0])
      3.0
    """
    _check_train(t, "t")
    if not _is_scalar(alpha):
        raise TypeError(f"alpha must be a scalar, got {type(alpha).__name__} of shape "
                        f"{getattr(alpha, 'shape', None)}.")
    cores = list(t.cores)
    cores[0] = cores[0] * alpha
    return type(t)(cores)


def tt_hadamard(a, b, *, precision: Precision = "highest"):
    """Elementwise product ``a ⊙ b`` in the format: ``G_k = A_k[:, i, :] ⊗ B_k[:, i, :]``.

    The slices are Kronecker products, so the ranks multiply (``r_k^a · r_k^b``; Oseledets
    2011, §4.1); follow with :func:`tensorfact.tt_round`. Also ``a * b``.

    Example:
      >>> import jax, tensorfact as tfa
      >>> a = tfa.tt(jax.random.normal(jax.random.key(0), (4, 5, 6)), 2)
      >>> tfa.tt_hadamard(a, a).rank
      (1, 4, 4, 1)
    """
    _check_same_format(a, b, "tt_hadamard")
    return from_flat_cores(a, _hadamard_cores(flat_cores(a), flat_cores(b),
                                          precision=precision))


@_jit
def _hadamard_cores(fa, fb, precision="highest"):
    precision = algebra.resolve_precision(precision)
    cores = []
    for ga, gb in zip(fa, fb):
        g = jnp.einsum("aib,cid->acibd", ga, gb, precision=precision)
        cores.append(g.reshape(ga.shape[0] * gb.shape[0], ga.shape[1], -1))
    return cores


def tt_inner(a, b, *, precision: Precision = "highest") -> jax.Array:
    """``⟨a, b⟩ = Σ_i a[i] b[i]``, contracted core by core (``O(d n r³)``, no dense tensor).

    Sweeps left to right with the ``r_k^a × r_k^b`` matrix
    ``M_k = Σ_{i} A_k[:, i, :]ᵀ M_{k-1} B_k[:, i, :]`` (Oseledets 2011, §4.2). For two
    TT-matrices this is the Frobenius inner product ``tr(AᵀB)``. Differentiable.

    The cores and each ``M_k`` are rescaled by exact powers of two as the sweep goes, with the
    exponents summed apart, so no intermediate over- or underflows: the result is finite
    whenever it is representable, however the scale is spread over the cores.

    Example:
      >>> import jax, tensorfact as tfa
      >>> x = jax.random.normal(jax.random.key(0), (4, 5, 6))
      >>> a = tfa.tt(x, 30)   # full rank: exact
      >>> bool(abs(tfa.tt_inner(a, a) - (x * x).sum()) < 1e-3)
      True
    """
    _check_same_format(a, b, "tt_inner")
    return _inner_cores(flat_cores(a), flat_cores(b), precision=precision)


def _inner_scaled(fa, fb, precision):
    """``⟨a, b⟩`` as ``(mantissa, exponent)``: the sweep on cores and running products
    normalised by powers of two (:func:`~tensorfact._numerics.pow2_normalize`)."""
    precision = algebra.resolve_precision(precision)
    dtype = jnp.result_type(*fa, *fb)
    m, exponent = jnp.ones((1, 1), dtype), jnp.zeros((), jnp.int32)
    for ga, gb in zip(fa, fb):
        ga, ea = pow2_normalize(ga.astype(dtype))
        gb, eb = pow2_normalize(gb.astype(dtype))
        m = jnp.einsum("ab,aic->bic", m, ga, precision=precision)
        m, em = pow2_normalize(jnp.einsum("bic,bid->cd", m, gb, precision=precision))
        exponent = exponent + ea + eb + em
    return m[0, 0], exponent


@_jit
def _inner_cores(fa, fb, precision="highest"):
    return pow2_restore(*_inner_scaled(fa, fb, precision))


@_jit
def _norm_cores(cores, precision="highest"):
    return pow2_sqrt(*_inner_scaled(cores, cores, precision))


def tt_orthogonalize(t, side: Literal["left", "right"] = "left", *,
                     precision: Precision = "highest"):
    """The same tensor with left- (or right-) orthonormal cores, by a sweep of thin QRs.

    ``side="left"``: for ``k = 1..d−1``, ``G_k`` reshaped to ``(r_{k-1} n_k) × r_k`` is
    replaced by ``Q`` of its QR and ``R`` moves into ``G_{k+1}``; afterwards every core but
    the last has orthonormal columns, so ``‖t‖ = ‖G_d‖``. ``side="right"`` sweeps from the
    right with ``G_k`` reshaped to ``r_{k-1} × (n_k r_k)``; then ``‖t‖ = ‖G_1‖`` (Oseledets
    2011, §3). A rank larger than its core allows (``r_k > r_{k-1} n_k``) shrinks to that size.

    Example:
      >>> import jax, jax.numpy as jnp, tensorfact as tfa
      >>> t = tfa.tt(jax.random.normal(jax.random.key(0), (4, 5, 6)), 3)
      >>> q = tfa.tt_orthogonalize(t, "left").cores[0].reshape(4, -1)
      >>> bool(jnp.allclose(q.T @ q, jnp.eye(3), atol=1e-5))
      True
    """
    _check_train(t, "t")
    check_choice(side, ("left", "right"), "side")
    return from_flat_cores(t, _orthogonalize_cores(flat_cores(t), side, precision=precision))


@functools.partial(jax.jit, static_argnames=("side", "precision"))
def _orthogonalize_cores(cores, side, precision="highest"):
    cores, exponent = orthogonalize_scaled(cores, side, precision=precision)
    carrier = -1 if side == "left" else 0
    cores[carrier] = pow2_restore(cores[carrier], exponent)
    return cores


def orthogonalize_scaled(cores, side, *, precision="highest"):
    """The sweep of :func:`tt_orthogonalize` on flat cores, scale-safe: returns ``(cores,
    exponent)``, the same tensor divided by ``2^exponent``, with the carrier (the last core for
    ``"left"``, the first for ``"right"``) the only one not orthonormal.

    Every core is normalised by a power of two before its QR and the carrier again after each
    ``R`` moves into it, so no intermediate over- or underflows (a chain of ``d`` cores can
    hold a scale no single core could)."""
    precision = algebra.resolve_precision(precision)
    cores, exponents = (list(v) for v in zip(*(pow2_normalize(g) for g in cores)))
    d = len(cores)
    if side == "left":
        for k in range(d - 1):
            r0, n, r1 = cores[k].shape
            q, r = jnp.linalg.qr(cores[k].reshape(r0 * n, r1))
            cores[k] = q.reshape(r0, n, -1)
            cores[k + 1], e = pow2_normalize(
                jnp.einsum("ab,bic->aic", r, cores[k + 1], precision=precision))
            exponents.append(e)
    else:
        for k in range(d - 1, 0, -1):
            r0, n, r1 = cores[k].shape
            q, r = jnp.linalg.qr(cores[k].reshape(r0, n * r1).T)
            cores[k] = q.T.reshape(-1, n, r1)
            cores[k - 1], e = pow2_normalize(
                jnp.einsum("aib,cb->aic", cores[k - 1], r, precision=precision))
            exponents.append(e)
    return cores, sum(exponents)


def tt_gather(t: TTTensor, indices, *, precision: Precision = "highest") -> jax.Array:
    """Entries ``t[i_1, ..., i_d]`` at integer ``indices`` of shape ``(..., d)``, without the
    dense tensor: per index, ``d`` slices ``G_k[:, i_k, :]`` chained by vector-matrix products
    (``O(batch · d · r²)``).

    Indices follow NumPy's rules: negative ones count from the end; out-of-range ones give NaN
    (JAX's ``take(mode="fill")``; they cannot raise inside compiled code).

    Example:
      >>> import jax, jax.numpy as jnp, tensorfact as tfa
      >>> x = jax.random.normal(jax.random.key(0), (4, 5, 6))
      >>> t = tfa.tt(x, 30)
      >>> idx = jnp.array([[0, 1, 2], [3, 4, 5]])
      >>> bool(jnp.allclose(tfa.tt_gather(t, idx), x[idx[:, 0], idx[:, 1], idx[:, 2]],
      ...                   atol=1e-5))
      True
    """
    if not isinstance(t, TTTensor):
        raise TypeError(f"t must be a TTTensor, got {type(t).__name__}.")
    indices = jnp.asarray(indices)
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise TypeError(f"indices must be integers, got dtype {indices.dtype}.")
    d = len(t.cores)
    if indices.ndim < 1 or indices.shape[-1] != d:
        raise ValueError(f"indices must have shape (..., {d}) for a {d}-way TTTensor of shape "
                         f"{t.shape}, got {tuple(indices.shape)}.")
    return _gather_cores(t.cores, indices, precision=precision)


@_jit
def _gather_cores(cores, indices, precision="highest"):
    precision = algebra.resolve_precision(precision)
    idx = indices.reshape(-1, len(cores))
    v = jnp.take(cores[0], idx[:, 0], axis=1, mode="fill")[0]  # (B, r_1)
    for k in range(1, len(cores)):
        g = jnp.take(cores[k], idx[:, k], axis=1, mode="fill")  # (r_{k-1}, B, r_k)
        v = jnp.einsum("ba,abc->bc", v, g, precision=precision)
    return v[:, 0].reshape(indices.shape[:-1])


# ---------------------------------------------------------------------------------------------
# TT-matrix products


def tt_matmul(a, b, *, impl: Impl = "auto", precision: Precision = "highest"):
    """Matrix products with a :class:`TTMatrix`; the result's type depends on the operands.

    * ``tt_matmul(W, v)`` (``W @ v``), ``v`` dense of shape ``(N,)`` or ``(N, K)`` → dense
      ``(M,)`` or ``(M, K)``.
    * ``tt_matmul(x, W)`` (``x @ W``), ``x`` dense of shape ``(..., M)`` → dense ``(..., N)``:
      the forward pass of a TT layer with weight ``W`` of shape ``(in, out)``, as in Flax's
      ``x @ kernel`` convention.
    * ``tt_matmul(W, V)`` with a TT-matrix ``V`` (``W.col_shape == V.row_shape``) → TTMatrix
      with cores ``Σ_j W_k[:, i, j, :] ⊗ V_k[:, j, l, :]`` (ranks multiply).
    * ``tt_matmul(W, t)`` with a :class:`TTTensor` ``t`` of shape ``W.col_shape`` → TTTensor of
      shape ``W.row_shape`` (``W`` applied to the vectorised ``t``); ``tt_matmul(t, W)`` with
      ``t`` of shape ``W.row_shape`` gives ``Wᵀ t``.

    The dense product never forms ``W``: it contracts one core at a time, a chain of ``d``
    einsums ``'bmqa,amnc->bqnc'`` on the reshaped input (Novikov et al. 2015;
    :func:`tensorfact.kernels.tt_chain_xla`). Step ``k`` costs
    ``2 B r_{k-1} r_k (m_k ⋯ m_d)(n_1 ⋯ n_k)`` FLOPs for ``B`` input rows, against ``2 B M N``
    for the dense product. Differentiable in ``W`` and ``x``. Integer input is promoted to the
    floating dtype of the product; a batch of zero rows gives an empty result of the right
    shape.

    ``impl`` applies to the dense ``x @ W`` case (the TT layer's forward): ``"xla"`` runs the
    einsum chain above, ``"pallas"`` the fused kernel :func:`tensorfact.kernels.tt_chain_matmul`
    (intermediates kept on chip; interpret mode off GPUs; backward through the XLA chain), and
    ``"auto"`` the kernel on a GPU where it fits on chip once measured to pay (not yet), XLA
    elsewhere. The other cases have no kernel: they ignore ``"auto"``/``"xla"`` and reject
    ``"pallas"``.

    References: A. Novikov, D. Podoprikhin, A. Osokin and D. Vetrov, "Tensorizing Neural
    Networks", NeurIPS 2015; I. V. Oseledets, SIAM J. Sci. Comput. 33(5), 2011, §4.3.

    Example:
      >>> import jax, jax.numpy as jnp, tensorfact as tfa
      >>> w = jax.random.normal(jax.random.key(0), (12, 20))
      >>> tm = tfa.tt_matrix(w, (3, 4), (4, 5), 100)   # full rank: exact
      >>> x = jnp.ones((2, 12))
      >>> bool(jnp.allclose(x @ tm, x @ w, atol=1e-4))
      True
    """
    check_choice(impl, Impl, "impl")
    a_tm, b_tm = isinstance(a, TTMatrix), isinstance(b, TTMatrix)
    if impl == "pallas" and (a_tm or not b_tm or isinstance(a, FactorizedTensor)):
        raise ValueError("impl='pallas' applies to the dense product x @ W only (x an array, W a "
                         f"TTMatrix), got {type(a).__name__} @ {type(b).__name__}.")
    if not (a_tm or b_tm):
        raise TypeError(f"tt_matmul needs a TTMatrix on at least one side, got "
                        f"{type(a).__name__} and {type(b).__name__}.")
    if a_tm and b_tm:
        return _tm_tm(a, b, precision)
    if a_tm and isinstance(b, TTTensor):
        return _tm_tt(a, b, precision)
    if b_tm and isinstance(a, TTTensor):
        return _tm_tt(b.T, a, precision)
    other = b if a_tm else a
    if isinstance(other, FactorizedTensor):
        raise TypeError(f"tt_matmul multiplies a TTMatrix with a dense array, a TTTensor or a "
                        f"TTMatrix, got {type(other).__name__}.")
    # The dense products are the kernel module's chain (x @ W directly; W @ v as vᵀ @ Wᵀ), on
    # a floating operand: integer input is promoted as an einsum with the cores would.
    if a_tm:  # W @ v
        v = _as_dense_operand(b, "v")
        if v.ndim not in (1, 2) or v.shape[0] != a.shape[1]:
            raise ValueError(f"W @ v needs v of shape ({a.shape[1]},) or ({a.shape[1]}, K) for a "
                             f"TTMatrix of shape {a.shape}, got {tuple(v.shape)}.")
        cores = a.T.cores
        rows = v.reshape(1, -1) if v.ndim == 1 else v.T
        out = kernels.tt_chain_xla(_floating(rows, cores), cores, precision=precision)
        return out[0] if v.ndim == 1 else out.T
    x = _as_dense_operand(a, "x")  # x @ W
    if x.ndim < 1 or x.shape[-1] != b.shape[0]:
        raise ValueError(f"x @ W needs x of shape (..., {b.shape[0]}) for a TTMatrix of shape "
                         f"{b.shape}, got {tuple(x.shape)}.")
    lead = x.shape[:-1]
    flat = _floating(x.reshape(math.prod(lead), x.shape[-1]), b.cores)  # a zero-size batch too
    out = kernels.tt_chain_matmul(flat, b.cores, impl=impl, precision=precision)
    return out.reshape(lead + (b.shape[1],))


def _as_dense_operand(v, name):
    if not hasattr(v, "shape"):
        v = np.asarray(v)
    if not (jnp.issubdtype(v.dtype, jnp.floating) or jnp.issubdtype(v.dtype, jnp.integer)):
        raise TypeError(f"{name} must be a real numeric array, got dtype {v.dtype}.")
    return jnp.asarray(v)


def _floating(x, cores):
    """``x`` in the dtype of its product with the cores (float32 when all are integers)."""
    dtype = jnp.result_type(x, *cores)
    return x.astype(dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.float32)


def _tm_tm(a: TTMatrix, b: TTMatrix, precision) -> TTMatrix:
    if a.col_shape != b.row_shape:
        raise ValueError(f"TT-matrix product needs a.col_shape == b.row_shape, got "
                         f"{a.col_shape} and {b.row_shape}.")
    return TTMatrix(_tm_tm_cores(a.cores, b.cores, precision=precision))


@_jit
def _tm_tm_cores(fa, fb, precision="highest"):
    precision = algebra.resolve_precision(precision)
    cores = []
    for ga, gb in zip(fa, fb):
        g = jnp.einsum("aijb,cjld->acilbd", ga, gb, precision=precision)
        ra, m, _, sa = ga.shape
        rb, _, p, sb = gb.shape
        cores.append(g.reshape(ra * rb, m, p, sa * sb))
    return cores


def _tm_tt(a: TTMatrix, t: TTTensor, precision) -> TTTensor:
    if t.shape != a.col_shape:
        raise ValueError(f"TT-matrix × TTTensor needs the tensor's shape to equal the matrix's "
                         f"col_shape {a.col_shape}, got {t.shape}.")
    # t is the TT-matrix of one column (cores (r, n, 1, r')): the product of two TT-matrices
    as_matrix = [g[:, :, None, :] for g in t.cores]
    return TTTensor([g[:, :, 0, :] for g in _tm_tm_cores(a.cores, as_matrix,
                                                         precision=precision)])
