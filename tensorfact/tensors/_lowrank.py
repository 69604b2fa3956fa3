"""Low-rank matrices ``M = U diag(s) Vᵀ`` (truncated SVDs, NMF pairs, completions)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tensorfact._numerics import resolve_precision
from tensorfact.tensors._base import FactorizedTensor, as_leaf
from tensorfact.tensors._matrix_common import norm_of_scaled


@jax.tree_util.register_pytree_node_class
class LowRankMatrix(FactorizedTensor):
    """A rank-``r`` matrix ``U · diag(s) · Vᵀ`` with ``u`` of shape ``(m, r)``, ``s`` of shape
    ``(r,)`` and ``vt`` of shape ``(r, n)``.

    A truncated SVD has orthonormal ``u`` and ``vtᵀ`` and nonincreasing ``s ≥ 0``; other
    factorizations (NMF's ``W H``) use ``s = 1``. ``lr @ x`` and ``x @ lr`` multiply without
    forming the dense matrix; ``lr.T`` is the transpose; ``left, right = lr.factors()`` gives
    the two-factor form ``(U diag(s), Vᵀ)``.

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> lr = tfa.LowRankMatrix(jnp.ones((4, 2)), jnp.array([2.0, 1.0]), jnp.ones((2, 3)))
      >>> lr.shape, lr.rank, lr.n_params
      ((4, 3), 2, 16)
      >>> bool(jnp.allclose(lr @ jnp.ones(3), lr.to_dense() @ jnp.ones(3)))
      True
    """

    _leaves = ("u", "s", "vt")
    __array_ufunc__ = None  # make NumPy's ``x @ lr`` defer to ``__rmatmul__``

    def __init__(self, u, s, vt):
        u, vt = as_leaf(u, "u"), as_leaf(vt, "vt")
        if u.ndim != 2 or vt.ndim != 2 or u.shape[1] != vt.shape[0]:
            raise ValueError(f"u must be (m, r) and vt (r, n) with the same r, got shapes "
                             f"{tuple(u.shape)} and {tuple(vt.shape)}.")
        s = jnp.ones((u.shape[1],), jnp.result_type(u, vt)) if s is None else as_leaf(s, "s")
        if s.shape != (u.shape[1],):
            raise ValueError(f"s must have shape ({u.shape[1]},) to match u and vt, got "
                             f"{tuple(s.shape)}.")
        self._set(u=u, s=s, vt=vt)

    def __iter__(self):
        return iter((self.u, self.s, self.vt))

    @property
    def shape(self):
        return (int(self.u.shape[0]), int(self.vt.shape[1]))

    @property
    def rank(self) -> int:
        """The number of components ``r``."""
        return int(self.s.shape[0])

    @property
    def T(self) -> "LowRankMatrix":  # noqa: N802  (the NumPy name)
        """The transpose ``V diag(s) Uᵀ``."""
        return LowRankMatrix(self.vt.T, self.s, self.u.T)

    def factors(self):
        """``(U diag(s), Vᵀ)``: the two-factor form."""
        return self.u * self.s, self.vt

    def to_dense(self, *, precision="highest"):
        """``U diag(s) Vᵀ``."""
        return jnp.matmul(self.u * self.s, self.vt, precision=resolve_precision(precision))

    def norm(self, *, precision="highest"):
        """``sqrt(Σ_ij s_i s_j (UᵀU)_ij (VᵀV)_ij)``: exact for any factors, ``‖s‖`` for an SVD.

        ``u``, ``s`` and ``vt`` are each divided by a power of two near their largest entry
        (exact) and the powers multiplied back at the end, so the norm is finite whenever it
        is representable (``s`` of 1e20 in float32 included); its gradient at a zero matrix
        is zero, not NaN.

        Example:
          >>> import jax.numpy as jnp, tensorfact as tfa
          >>> lr = tfa.LowRankMatrix(jnp.eye(3, 2), jnp.array([3e20, 4e20]), jnp.eye(2, 4))
          >>> print(f"{float(lr.norm()):.4g}")  # the squares (1e41) would overflow float32
          5e+20
        """
        return norm_of_scaled((self.u, self.s, self.vt), _low_rank_norm_sq,
                               resolve_precision(precision))

    def matmul(self, x, *, precision="highest"):
        """``self @ x`` for a vector or matrix ``x``, as ``U (s ⊙ (Vᵀ x))``."""
        x = jnp.asarray(x)
        if x.shape[0] != self.shape[1]:
            raise ValueError(f"x must have {self.shape[1]} rows to multiply a {self.shape} "
                             f"LowRankMatrix, got shape {tuple(x.shape)}.")
        precision = resolve_precision(precision)
        inner = jnp.matmul(self.vt, x, precision=precision)
        scale = self.s if x.ndim == 1 else self.s[:, None]
        return jnp.matmul(self.u, scale * inner, precision=precision)

    def __matmul__(self, x):
        return self.matmul(x)

    def __rmatmul__(self, x):
        x = jnp.asarray(x)
        if x.shape[-1] != self.shape[0]:
            raise ValueError(f"x must have {self.shape[0]} columns to multiply a {self.shape} "
                             f"LowRankMatrix from the left, got shape {tuple(x.shape)}.")
        return self.T.matmul(x.T).T if x.ndim == 2 else self.T.matmul(x)


def _low_rank_norm_sq(u, s, vt, precision):
    gram_u = jnp.matmul(u.T, u, precision=precision)
    gram_v = jnp.matmul(vt, vt.T, precision=precision)
    return jnp.einsum("i,ij,j->", s, gram_u * gram_v, s, precision=precision)

