"""Tucker tensors: ``x = G ×_{m_0} U_0 ×_{m_1} U_1 ...`` (a core times a factor per mode)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from tensorfact import algebra
from tensorfact._checks import check_modes
from tensorfact._numerics import pow2_scale
from tensorfact.tensors._base import FactorizedTensor, as_leaf


@jax.tree_util.register_pytree_node_class
class TuckerTensor(FactorizedTensor):
    """A Tucker tensor ``[[G; U_0, ..., U_{N-1}]]``: core ``G``, factors ``U_m`` of ``(I_m, r_m)``.

    Args:
      core: array of shape ``(r_0, ..., r_{N-1})`` (with ``modes``: the core's own size on the
        modes that are not factorized).
      factors: one ``(I_m, r_m)`` matrix per factorized mode.
      modes: the factorized modes (default: all). A partial Tucker (e.g. Tucker-2 over the
        channel modes of a convolution kernel) leaves the other modes of the core as they are.

    Unpacks like TensorLy's: ``core, factors = tucker``.

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> t = tfa.TuckerTensor(jnp.full((2, 2), 1e20), [jnp.eye(3, 2), jnp.eye(4, 2)])
      >>> t.shape, t.rank, f"{float(t.norm()):.3g}"
      ((3, 4), (2, 2), '2e+20')
    """

    _leaves = ("core", "factors")
    _static = ("modes",)

    def __init__(self, core, factors: Sequence[jax.Array], modes=None):
        core = as_leaf(core, "core")
        if isinstance(factors, jax.Array) or not isinstance(factors, Sequence):
            raise ValueError(f"factors must be a sequence of 2-D arrays, got "
                             f"{type(factors).__name__}.")
        factors = tuple(as_leaf(u, f"factors[{k}]") for k, u in enumerate(factors))
        modes = tuple(range(core.ndim)) if modes is None else check_modes(modes, core.ndim)
        if len(factors) != len(modes):
            raise ValueError(f"factors must hold one matrix per factorized mode ({len(modes)} for "
                             f"modes {modes}), got {len(factors)}.")
        for k, (m, u) in enumerate(zip(modes, factors)):
            if u.ndim != 2 or u.shape[1] != core.shape[m]:
                raise ValueError(f"factors[{k}] must have shape (I, {core.shape[m]}) to match core "
                                 f"mode {m} (core shape {tuple(core.shape)}), got "
                                 f"{tuple(u.shape)}.")
        self._set(core=core, factors=factors, modes=modes)

    def __iter__(self):
        return iter((self.core, self.factors))

    @property
    def shape(self):
        shape = list(self.core.shape)
        for m, u in zip(self.modes, self.factors):
            shape[m] = u.shape[0]
        return tuple(int(s) for s in shape)

    @property
    def rank(self) -> tuple[int, ...]:
        """The multilinear ranks ``(r_m)`` of the factorized modes."""
        return tuple(int(self.core.shape[m]) for m in self.modes)

    def to_dense(self, *, precision="highest"):
        """``G ×_{m} U_m`` over the factorized modes."""
        return algebra.multi_mode_dot(self.core, self.factors, self.modes, precision=precision)

    def norm(self, *, precision="highest"):
        """``sqrt(⟨G, G ×_m U_mᵀU_m⟩)``: computed on the core, no dense tensor.

        The core and each factor are first divided by a power of two near their largest entry
        (exact) and the exponents added back at the end, so the result is finite whenever the
        norm itself is representable; the derivative is finite at a zero tensor.
        """
        precision = algebra.resolve_precision(precision)
        leaves = [self.core, *self.factors]
        scales = [lax.stop_gradient(pow2_scale(a)) for a in leaves]
        core = self.core / scales[0]
        grams = [jnp.matmul((u / s).T, u / s, precision=precision)
                 for u, s in zip(self.factors, scales[1:])]
        mixed = algebra.multi_mode_dot(core, grams, self.modes, precision=precision)
        sq = jnp.vdot(core, mixed, precision=precision)
        positive = sq > 0
        root = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1)), 0)
        exponent = sum(jnp.frexp(s)[1] - 1 for s in scales)  # s = 2^(e − 1)
        return jnp.ldexp(root, exponent)
