"""PARAFAC2 tensors: slices ``X_k = P_k B diag(w ⊙ a_k) Cᵀ`` with ``P_k`` of orthonormal columns.

A PARAFAC2 model (Harshman 1972; Kiers, ten Berge & Bro, J. Chemometrics 1999) describes ``K``
matrices ``X_k`` of ``I_k × J`` whose row counts ``I_k`` may differ. The slices share ``C``
(``J × R``), the blueprint ``B`` (``R × R``) and the weights ``w``; row ``a_k`` of ``A``
(``K × R``) scales slice ``k``; the evolving factor of slice ``k`` is ``P_k B``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from tensorfact import algebra
from tensorfact._numerics import pow2_scale
from tensorfact.tensors._base import FactorizedTensor, as_leaf


@jax.tree_util.register_pytree_node_class
class Parafac2Tensor(FactorizedTensor):
    """A rank-``R`` PARAFAC2 tensor: ``K`` slices ``X_k = P_k B diag(w ⊙ a_k) Cᵀ``.

    The projections are held padded, as one ``(K, I_max, R)`` array whose rows ``I_k`` and
    beyond are zero, and the true row counts as static metadata (a tuple of ints: shapes are
    static under ``jit``, and a ``vmap`` over a batch of tensors shares them). The dense form is
    therefore the padded ``(K, I_max, J)`` array, zero beyond row ``I_k`` of slice ``k``;
    :meth:`to_slices` gives the true-size slices.

    Args:
      weights: length-``R`` vector ``w``, or ``None`` for all ones.
      factors: ``(A, B, C)`` of shapes ``(K, R)``, ``(R, R)``, ``(J, R)``.
      projections: a ``(K, I_max, R)`` array, or a sequence of ``K`` matrices ``(I_k, R)``
        (padded here with zero rows).
      row_counts: the ``I_k`` (ints in ``1..I_max``); default: the rows of each given
        projection matrix, or ``I_max`` for every slice of an array. Rows of the projections
        at and beyond ``I_k`` are set to zero.

    Unpacks like TensorLy's: ``weights, (A, B, C), projections = t`` (``projections`` padded;
    :attr:`projection_list` gives the true-size matrices).

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> p = [jnp.eye(3, 2), jnp.eye(5, 2)]  # two slices of 3 and 5 rows
      >>> t = tfa.Parafac2Tensor(None, (jnp.ones((2, 2)), jnp.eye(2), jnp.ones((4, 2))), p)
      >>> t.shape, t.row_counts, t.rank, [s.shape for s in t.to_slices()]
      ((2, 5, 4), (3, 5), 2, [(3, 4), (5, 4)])
      >>> float(t.norm())  # each slice: two rows of four ones
      4.0
    """

    _leaves = ("weights", "factors", "projections")
    _static = ("row_counts",)

    def __init__(self, weights, factors: Sequence[jax.Array], projections, row_counts=None):
        if (isinstance(factors, (jax.Array, np.ndarray)) or not isinstance(factors, Sequence)
                or len(factors) != 3):
            raise ValueError("factors must be a sequence (A, B, C) of three 2-D arrays, got "
                             f"{type(factors).__name__}.")
        a, b, c = (as_leaf(f, f"factors[{n}]") for n, f in enumerate(factors))
        for n, f in enumerate((a, b, c)):
            if f.ndim != 2:
                raise ValueError(f"factors[{n}] must be 2-D, got shape {tuple(f.shape)}.")
        rank = int(b.shape[1])
        if b.shape != (rank, rank) or a.shape[1] != rank or c.shape[1] != rank:
            raise ValueError(f"factors must have shapes (K, R), (R, R), (J, R) for one rank R, "
                             f"got {[tuple(f.shape) for f in (a, b, c)]}.")
        n_slices = int(a.shape[0])
        if isinstance(projections, (jax.Array, np.ndarray)) or not isinstance(projections,
                                                                              Sequence):
            projections = as_leaf(projections, "projections")
            if projections.ndim != 3:
                raise ValueError("projections must be a (K, I_max, R) array or a sequence of "
                                 f"(I_k, R) matrices, got shape {tuple(projections.shape)}.")
            given_rows = (int(projections.shape[1]),) * int(projections.shape[0])
        else:
            mats = [as_leaf(p, f"projections[{k}]") for k, p in enumerate(projections)]
            for k, p in enumerate(mats):
                if p.ndim != 2 or p.shape[1] != rank:
                    raise ValueError(f"projections[{k}] must be ({'I_k'}, {rank}), got shape "
                                     f"{tuple(p.shape)}.")
            given_rows = tuple(int(p.shape[0]) for p in mats)
            if not mats:
                raise ValueError("projections must not be empty.")
            top = max(given_rows)
            projections = jnp.stack([jnp.pad(p, ((0, top - p.shape[0]), (0, 0))) for p in mats])
        if projections.shape[0] != n_slices or projections.shape[2] != rank:
            raise ValueError(f"projections must have shape ({n_slices}, I_max, {rank}) to match "
                             f"A {tuple(a.shape)} and the rank, got {tuple(projections.shape)}.")
        i_max = int(projections.shape[1])
        if row_counts is None:
            row_counts = given_rows
        row_counts = tuple(int(n) for n in row_counts)
        if len(row_counts) != n_slices or any(not 1 <= n <= i_max for n in row_counts):
            raise ValueError(f"row_counts must be {n_slices} integers in 1..{i_max}, got "
                             f"{row_counts}.")
        if min(row_counts) < i_max:
            projections = projections * row_mask(row_counts, i_max, projections.dtype)[..., None]
        if weights is None:
            weights = jnp.ones((rank,), jnp.result_type(a, b, c))
        weights = as_leaf(weights, "weights")
        if weights.shape != (rank,):
            raise ValueError(f"weights must have shape ({rank},), got {tuple(weights.shape)}.")
        self._set(weights=weights, factors=(a, b, c), projections=projections,
                  row_counts=row_counts)

    def __iter__(self):
        return iter((self.weights, self.factors, self.projections))

    @property
    def shape(self):
        """``(K, I_max, J)``: the padded dense shape."""
        return (int(self.projections.shape[-3]), int(self.projections.shape[-2]),
                int(self.factors[2].shape[-2]))

    @property
    def rank(self) -> int:
        """The PARAFAC2 rank ``R``."""
        return int(self.weights.shape[-1])

    @property
    def n_params(self) -> int:
        """Stored scalars without the padding: ``R + KR + R² + JR + Σ_k I_k R``."""
        k, _, j = self.shape
        r = self.rank
        return r + k * r + r * r + j * r + sum(self.row_counts) * r

    @property
    def projection_list(self) -> list:
        """The true-size projections ``P_k`` (``I_k × R``), as TensorLy holds them."""
        return [self.projections[k, :n] for k, n in enumerate(self.row_counts)]

    def slice(self, k: int, *, precision="highest"):
        """Slice ``k`` at its true size ``I_k × J``."""
        k = int(k)
        if not -len(self.row_counts) <= k < len(self.row_counts):
            raise IndexError(f"slice index {k} out of range for {len(self.row_counts)} slices.")
        k %= len(self.row_counts)
        a, b, c = self.factors
        prec = algebra.resolve_precision(precision)
        left = jnp.matmul(self.projections[k, :self.row_counts[k]], b * (self.weights * a[k]),
                          precision=prec)
        return jnp.matmul(left, c.T, precision=prec)

    def to_slices(self, *, precision="highest") -> list:
        """The ``K`` slices at their true sizes (a Python list: host-side, for eager use)."""
        return [self.slice(k, precision=precision) for k in range(len(self.row_counts))]

    def to_dense(self, *, precision="highest"):
        """The padded ``(K, I_max, J)`` array ``X[k] = P_k B diag(w ⊙ a_k) Cᵀ``, zero in the
        rows beyond ``I_k`` (the projections are zero there)."""
        a, b, c = self.factors
        prec = algebra.resolve_precision(precision)
        evolving = jnp.matmul(self.projections, b, precision=prec)  # P_k B: (K, I_max, R)
        evolving = evolving * (self.weights * a)[..., None, :]
        return jnp.matmul(evolving, jnp.swapaxes(c, -1, -2), precision=prec)

    def norm(self, *, precision="highest"):
        """``sqrt(Σ_k ⟨P_kᵀP_k, B D_k CᵀC D_k Bᵀ⟩)``, ``D_k = diag(w ⊙ a_k)``: ``R × R`` work per
        slice, no dense tensor (exact also for projections that are not orthonormal). Each leaf
        is divided by a power of two near its largest entry first and the exponents added back,
        so nothing overflows where the norm is representable."""
        prec = algebra.resolve_precision(precision)
        a, b, c = self.factors
        leaves = [self.weights, a, b, c, self.projections]
        scales = [lax.stop_gradient(pow2_scale(v)) for v in leaves]
        w, a, b, c, p = (v / s for v, s in zip(leaves, scales))
        scaled = w * a                                                     # (K, R)
        inner = jnp.matmul(c.T, c, precision=prec)[None] * (scaled[:, :, None]
                                                            * scaled[:, None, :])
        core = jnp.einsum("rs,kst,ut->kru", b, inner, b, precision=prec)  # B D CᵀC D Bᵀ
        gram_p = jnp.einsum("kir,kis->krs", p, p, precision=prec)
        sq = jnp.sum(gram_p * core)
        positive = sq > 0
        root = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1)), 0)
        exponent = sum(jnp.frexp(s)[1] - 1 for s in scales)
        return jnp.ldexp(root, exponent)


def row_mask(row_counts, i_max: int, dtype=bool):
    """``(K, I_max)``: 1 (True) in the rows ``i < I_k`` of slice ``k``, 0 in the padding."""
    counts = jnp.asarray(row_counts, jnp.int32)
    return (jnp.arange(i_max)[None, :] < counts[:, None]).astype(dtype)
