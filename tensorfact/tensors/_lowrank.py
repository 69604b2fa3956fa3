"""Low-rank matrices ``M = U diag(s) Vᵀ`` (truncated SVDs, NMF pairs, completions)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tensorfact import algebra
from tensorfact.tensors._base import FactorizedTensor, as_leaf


@jax.tree_util.register_pytree_node_class
class LowRankMatrix(FactorizedTensor):
    """A rank-``r`` matrix ``U · diag(s) · Vᵀ`` with ``u`` of shape ``(m, r)``, ``s`` of shape
    ``(r,)`` and ``vt`` of shape ``(r, n)``.

    A truncated SVD has orthonormal ``u`` and ``vtᵀ`` and nonincreasing ``s ≥ 0``; other
    factorizations (NMF's ``W H``) use ``s = 1``. ``lr @ x`` and ``x @ lr`` multiply without
    forming the dense matrix; ``lr.T`` is the transpose; ``left, right = lr.factors()`` gives
    the two-factor form ``(U diag(s), Vᵀ)``.
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
        return jnp.matmul(self.u * self.s, self.vt, precision=algebra.resolve_precision(precision))

    def norm(self, *, precision="highest"):
        """``sqrt(Σ_ij s_i s_j (UᵀU)_ij (VᵀV)_ij)``: exact for any factors, ``‖s‖`` for an SVD."""
        precision = algebra.resolve_precision(precision)
        gram_u = jnp.matmul(self.u.T, self.u, precision=precision)
        gram_v = jnp.matmul(self.vt, self.vt.T, precision=precision)
        sq = jnp.einsum("i,ij,j->", self.s, gram_u * gram_v, self.s, precision=precision)
        return jnp.sqrt(jnp.maximum(sq, 0.0))

    def matmul(self, x, *, precision="highest"):
        """``self @ x`` for a vector or matrix ``x``, as ``U (s ⊙ (Vᵀ x))``."""
        x = jnp.asarray(x)
        if x.shape[0] != self.shape[1]:
            raise ValueError(f"x must have {self.shape[1]} rows to multiply a {self.shape} "
                             f"LowRankMatrix, got shape {tuple(x.shape)}.")
        precision = algebra.resolve_precision(precision)
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
