"""CUR matrices ``M ≈ C · U · R`` built from actual columns and rows of a matrix."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from tensorfact._checks import is_traced
from tensorfact._numerics import resolve_precision
from tensorfact.tensors._base import FactorizedTensor, as_leaf
from tensorfact.tensors._matrix_common import norm_of_scaled


@jax.tree_util.register_pytree_node_class
class CURMatrix(FactorizedTensor):
    """A matrix ``C · U · R`` whose outer factors are columns and rows of a data matrix ``M``.

    Args:
      c: ``(m, k)`` array, the selected columns ``C = M[:, col_index]``.
      u: ``(k, l)`` middle matrix (for :func:`tensorfact.decomposition.cur.cur`, the optimal
        ``U = C⁺ M R⁺``).
      r: ``(l, n)`` array, the selected rows ``R = M[row_index, :]``.
      col_index: integer vector of length ``k``: which columns of ``M`` ``c`` holds.
      row_index: integer vector of length ``l``: which rows of ``M`` ``r`` holds.

    The indices are pytree leaves (they are data: under ``vmap`` each matrix of a batch selects
    its own), but :attr:`n_params` counts only the floating-point leaves ``c``, ``u``, ``r``.
    The constructor checks the shapes, that the indices are integers and, when they are
    concrete, that they lie in ``[0, n)`` and ``[0, m)``. It does not check that ``c`` and ``r``
    really are columns and rows of some matrix (it does not see ``M``).

    Unpacks as ``c, u, r = cur``.

    Example:
      >>> import jax.numpy as jnp
      >>> from tensorfact.tensors._cur import CURMatrix
      >>> m = jnp.arange(12.0).reshape(3, 4)
      >>> c, r = m[:, [0, 1]], m[[0, 2], :]
      >>> cur = CURMatrix(c, jnp.linalg.pinv(c) @ m @ jnp.linalg.pinv(r), r, [0, 1], [0, 2])
      >>> cur.shape, cur.rank, cur.n_params
      ((3, 4), 2, 18)
    """

    _leaves = ("c", "u", "r", "col_index", "row_index")

    def __init__(self, c, u, r, col_index, row_index):
        c, u, r = as_leaf(c, "c"), as_leaf(u, "u"), as_leaf(r, "r")
        col_index, row_index = as_leaf(col_index, "col_index"), as_leaf(row_index, "row_index")
        if c.ndim != 2 or u.ndim != 2 or r.ndim != 2:
            raise ValueError(f"c, u and r must be 2-D, got shapes {tuple(c.shape)}, "
                             f"{tuple(u.shape)} and {tuple(r.shape)}.")
        if c.shape[1] != u.shape[0] or u.shape[1] != r.shape[0]:
            raise ValueError(f"c must be (m, k), u (k, l) and r (l, n) with matching k and l, got "
                             f"shapes {tuple(c.shape)}, {tuple(u.shape)} and {tuple(r.shape)}.")
        k, l = (int(s) for s in u.shape)
        for name, index, size, dim, label in ((
                "col_index", col_index, k, int(r.shape[1]), "columns"), (
                "row_index", row_index, l, int(c.shape[0]), "rows")):
            if index.shape != (size,):
                raise ValueError(f"{name} must have shape ({size},) to match u {tuple(u.shape)}, "
                                 f"got {tuple(index.shape)}.")
            if not jnp.issubdtype(index.dtype, jnp.integer):
                raise ValueError(f"{name} must hold integers, got dtype {index.dtype}.")
            if not is_traced(index) and size:
                values = np.asarray(index)
                if values.min() < 0 or values.max() >= dim:
                    raise ValueError(f"{name} must lie in [0, {dim}) (the matrix has {dim} "
                                     f"{label}), got {values.tolist()}.")
        self._set(c=c, u=u, r=r, col_index=col_index, row_index=row_index)

    def __iter__(self):
        return iter((self.c, self.u, self.r))

    @property
    def shape(self):
        return (int(self.c.shape[0]), int(self.r.shape[1]))

    @property
    def rank(self) -> int:
        """``min(k, l)``: the size of the middle matrix, an upper bound on the rank of ``CUR``."""
        return int(min(self.u.shape))

    @property
    def dtype(self):
        """Common dtype of ``c``, ``u`` and ``r`` (the integer indices do not count)."""
        return jnp.result_type(self.c, self.u, self.r)

    @property
    def n_params(self) -> int:
        """``mk + kl + ln``: the floating-point scalars stored. The ``k + l`` integer indices
        are leaves too but are not counted (they are bookkeeping, not parameters)."""
        return int(self.c.size + self.u.size + self.r.size)

    def to_dense(self, *, precision="highest"):
        """``C · U · R``, multiplied in the cheaper order."""
        precision = resolve_precision(precision)
        (m, k), (l, n) = self.c.shape, self.r.shape
        if m * l * (k + n) <= k * n * (l + m):  # (CU)R costs mkl + mln; C(UR) kln + mkn
            return jnp.matmul(jnp.matmul(self.c, self.u, precision=precision), self.r,
                              precision=precision)
        return jnp.matmul(self.c, jnp.matmul(self.u, self.r, precision=precision),
                          precision=precision)

    def norm(self, *, precision="highest"):
        """``sqrt(tr(Uᵀ (CᵀC) U (RRᵀ)))`` from the ``k × k`` and ``l × l`` Gram matrices.

        Computed as ``Σ_ij ((CᵀC) U)_ij (U (RRᵀ))_ij``, without forming the ``m × n`` matrix,
        from ``c``, ``u`` and ``r`` each divided by a power of two near its largest entry
        (exact; the powers are multiplied back at the end), so it is finite whenever the norm
        is representable; its gradient at a zero matrix is zero, not NaN.
        """
        return norm_of_scaled((self.c, self.u, self.r), _cur_norm_sq,
                              resolve_precision(precision))


def _cur_norm_sq(c, u, r, precision):
    gram_c = jnp.matmul(c.T, c, precision=precision)
    gram_r = jnp.matmul(r, r.T, precision=precision)
    left = jnp.matmul(gram_c, u, precision=precision)
    right = jnp.matmul(u, gram_r, precision=precision)
    return jnp.sum(left * right)
