"""CP (CANDECOMP/PARAFAC) tensors: ``x = Σ_r w_r · a_0[:, r] ∘ a_1[:, r] ∘ ... ∘ a_{N-1}[:, r]``."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from tensorfact import algebra
from tensorfact._numerics import pow2_scale, safe_divide, safe_norm
from tensorfact.tensors._base import FactorizedTensor, as_leaf


@jax.tree_util.register_pytree_node_class
class CPTensor(FactorizedTensor):
    """A rank-``R`` CP tensor ``[[w; A_0, ..., A_{N-1}]]``, factors ``A_k`` of shape ``(I_k, R)``.

    Args:
      weights: length-``R`` vector, or ``None`` for all ones.
      factors: one ``(I_k, R)`` matrix per mode.

    Unpacks like TensorLy's: ``weights, factors = cp``.

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> t = tfa.CPTensor(jnp.array([1e20, 1.0]), [jnp.eye(3, 2), jnp.eye(4, 2)])
      >>> t.shape, t.rank, f"{float(t.norm()):.3g}"  # no overflow of the squared weights
      ((3, 4), 2, '1e+20')
    """

    _leaves = ("weights", "factors")

    def __init__(self, weights, factors: Sequence[jax.Array]):
        if isinstance(factors, (jax.Array,)) or not isinstance(factors, Sequence) or not factors:
            raise ValueError("factors must be a non-empty sequence of 2-D arrays, got "
                             f"{type(factors).__name__}.")
        factors = tuple(as_leaf(a, f"factors[{k}]") for k, a in enumerate(factors))
        for k, a in enumerate(factors):
            if a.ndim != 2:
                raise ValueError(f"factors[{k}] must be 2-D (I_k, rank), got shape "
                                 f"{tuple(a.shape)}.")
        ranks = [a.shape[1] for a in factors]
        if len(set(ranks)) != 1:
            raise ValueError(f"factors must share their number of columns (the CP rank), got "
                             f"shapes {[tuple(a.shape) for a in factors]}.")
        rank = ranks[0]
        if weights is None:
            weights = jnp.ones((rank,), jnp.result_type(*factors))
        weights = as_leaf(weights, "weights")
        if weights.shape != (rank,):
            raise ValueError(f"weights must have shape ({rank},) to match the factors' rank, got "
                             f"{tuple(weights.shape)}.")
        self._set(weights=weights, factors=factors)

    def __iter__(self):
        return iter((self.weights, self.factors))

    @property
    def shape(self):
        return tuple(int(a.shape[0]) for a in self.factors)

    @property
    def rank(self) -> int:
        """The CP rank ``R``."""
        return int(self.weights.shape[0])

    def to_dense(self, *, precision="highest"):
        """``A_0 · diag(w) · khatri_rao(A_1, ..., A_{N-1})ᵀ``, refolded."""
        a0, rest = self.factors[0], self.factors[1:]
        if not rest:
            return a0 @ self.weights
        kr = algebra.khatri_rao(rest, weights=self.weights)
        dense = jnp.matmul(a0, kr.T, precision=algebra.resolve_precision(precision))
        return dense.reshape(self.shape)

    def norm(self, *, precision="highest"):
        """``sqrt(wᵀ (⊛_k A_kᵀ A_k) w)``: an ``R × R`` computation, no dense tensor.

        Each factor and the weights are first divided by a power of two near their largest
        entry (exact), and the exponents are added back at the end, so the result is finite
        whenever the norm itself is representable (weights of 1e20 in float32, say); the
        derivative is finite at a zero tensor.
        """
        precision = algebra.resolve_precision(precision)
        leaves = [self.weights, *self.factors]
        scales = [lax.stop_gradient(pow2_scale(a)) for a in leaves]
        weights = self.weights / scales[0]
        gram = 1.0
        for a, s in zip(self.factors, scales[1:]):
            a = a / s
            gram = gram * jnp.matmul(a.T, a, precision=precision)
        sq = jnp.einsum("r,rs,s->", weights, gram, weights, precision=precision)
        positive = sq > 0
        root = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1)), 0)
        exponent = sum(jnp.frexp(s)[1] - 1 for s in scales)  # s = 2^(e − 1)
        return jnp.ldexp(root, exponent)

    def normalize(self) -> "CPTensor":
        """Returns the same tensor with unit-norm factor columns, the scales moved to weights
        (a zero column stays zero, with a zero weight and a finite derivative)."""
        weights = self.weights
        factors = []
        for a in self.factors:
            scale = safe_norm(a, axis=0)
            factors.append(safe_divide(a, scale))
            weights = weights * scale
        return CPTensor(weights, factors)

