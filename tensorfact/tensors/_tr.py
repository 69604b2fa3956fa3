"""Tensor ring (TR) tensors: ``x[i_0, ..., i_{d-1}] = Tr(G_0[:, i_0, :] G_1[:, i_1, :] ···
G_{d-1}[:, i_{d-1}, :])``.

A tensor ring is a tensor train whose two boundary bonds are joined: core ``G_k`` has shape
``(r_k, n_k, r_{k+1})`` with ``r_d = r_0``, and the product of the matrices ``G_k[:, i_k, :]``
is closed by a trace. With ``r_0 = 1`` it is a tensor train. The representation is invariant
under cyclic shifts of the cores (with the same shift of the modes) and under the gauge
``G_k ← G_k ×_3 A_k, G_{k+1} ← A_k^{-1} ×_1 G_{k+1}``.

Reference: Q. Zhao, G. Zhou, S. Xie, L. Zhang and A. Cichocki, "Tensor Ring Decomposition",
arXiv:1606.05535, 2016.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from tensorfact import algebra
from tensorfact._checks import Precision
from tensorfact._numerics import pow2_normalize, pow2_restore, pow2_sqrt
from tensorfact.tensors._base import CoreSequence, FactorizedTensor, as_leaf_sequence

__all__ = ["TRTensor", "chain", "transfer_chain", "transfer_chain_scaled"]


@jax.tree_util.register_pytree_node_class
class TRTensor(CoreSequence, FactorizedTensor):
    """A tensor ring ``x[i_0, ..., i_{d-1}] = Tr(∏_k G_k[:, i_k, :])``.

    Args:
      cores: ``d ≥ 1`` three-way arrays, ``cores[k]`` of shape ``(r_k, n_k, r_{k+1})``, with
        ``cores[k].shape[2] == cores[k + 1].shape[0]`` and the ring closed by
        ``cores[d - 1].shape[2] == cores[0].shape[0]``.

    ``rank`` is the tuple of the ``d`` bond sizes ``(r_0, ..., r_{d-1})``; ``n_params`` is
    ``Σ_k r_k n_k r_{k+1}``. Unpacks like a list of cores: ``g0, g1, g2 = tr``.

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> ring = tfa.TRTensor([jnp.ones((2, 3, 2)), jnp.ones((2, 4, 2))])
      >>> ring.shape, ring.rank, ring.n_params
      ((3, 4), (2, 2), 28)
      >>> float(ring.to_dense()[0, 0])  # Tr([[2, 2], [2, 2]])
      4.0
    """

    _leaves = ("cores",)

    def __init__(self, cores: Sequence[jax.Array]):
        cores = as_leaf_sequence(cores, "cores", 3, "(r_k, n_k, r_k+1)")
        d = len(cores)
        for k in range(d):
            nxt = (k + 1) % d
            if cores[k].shape[2] != cores[nxt].shape[0]:
                where = "closes the ring with" if nxt == 0 else "must match"
                raise ValueError(
                    f"cores[{k}] of shape {tuple(cores[k].shape)} {where} cores[{nxt}] of shape "
                    f"{tuple(cores[nxt].shape)}: cores[{k}].shape[2] must equal "
                    f"cores[{nxt}].shape[0], got {cores[k].shape[2]} and {cores[nxt].shape[0]}.")
        self._set(cores=cores)

    @property
    def shape(self):
        return tuple(int(g.shape[1]) for g in self.cores)

    @property
    def rank(self) -> tuple[int, ...]:
        """The ``d`` bond sizes ``(r_0, ..., r_{d-1})``; ``r_k`` enters core ``k`` on the left."""
        return tuple(int(g.shape[0]) for g in self.cores)

    def to_dense(self, *, precision: Precision = "highest"):
        """The trace of the core chain.

        The chain is opened at the smallest bond (a cyclic shift of the cores, undone by a
        transpose at the end), so the intermediate holds ``min_k r_k² · ∏ n`` entries at most.
        """
        d = len(self.cores)
        start = min(range(d), key=lambda k: self.rank[k])
        order = [(start + j) % d for j in range(d)]
        open_chain = chain([self.cores[k] for k in order], precision=precision)
        dense = jnp.trace(open_chain, axis1=0, axis2=2).reshape([self.shape[k] for k in order])
        return jnp.transpose(dense, [order.index(k) for k in range(d)])

    def inner(self, other: "TRTensor", *, precision: Precision = "highest") -> jax.Array:
        """``⟨self, other⟩ = Σ_i self[i] · other[i]``, computed in the format.

        ``other`` is any tensor with ring-shaped ``cores`` of the same mode sizes (a
        :class:`TRTensor`, or a tensor train, whose boundary bonds are 1). The inner product is
        the trace of the product of the transfer matrices ``E_k = Σ_i A_k[:, i, :] ⊗ B_k[:, i, :]``
        of size ``r_k r'_k × r_{k+1} r'_{k+1}``; see :func:`transfer_chain` for the cost. The
        product is formed with the cores and the running product rescaled by powers of two
        (:func:`transfer_chain_scaled`), so it is finite whenever the result is representable.
        """
        other_cores = _ring_cores(other, "other")
        if tuple(int(g.shape[1]) for g in other_cores) != self.shape:
            raise ValueError(f"other must have the shape of this tensor {self.shape}, got "
                             f"{tuple(int(g.shape[1]) for g in other_cores)}.")
        return pow2_restore(*_inner_scaled(self.cores, other_cores, precision))

    def norm(self, *, precision: Precision = "highest"):
        """``sqrt(⟨x, x⟩)`` from the transfer matrices ``Σ_i G_k[:, i, :] ⊗ G_k[:, i, :]``.

        The dense tensor is never formed. The running product of transfer matrices has
        ``r_0² · r_k²`` entries (O(r⁴) memory) and each core is absorbed in two contractions of
        ``O(r_0² r_k r_{k+1} n_k (r_k + r_{k+1}))`` flops: O(d n r⁵) time for equal ranks,
        against O(r² ∏ n) for the dense route. The square ``⟨x, x⟩`` is never formed (its
        mantissa and power of two are kept apart), so the norm is finite whenever it is
        representable; the gradient at zero is zero.
        """
        return pow2_sqrt(*_inner_scaled(self.cores, self.cores, precision))


def _inner_scaled(cores_a, cores_b, precision):
    """``⟨A, B⟩`` of two rings as ``(mantissa, exponent)``, the chain opened at the smallest
    bond pair."""
    d = len(cores_a)
    start = min(range(d), key=lambda k: cores_a[k].shape[0] * cores_b[k].shape[0])
    order = [(start + j) % d for j in range(d)]
    w, exponent = transfer_chain_scaled([cores_a[k] for k in order],
                                        [cores_b[k] for k in order], precision=precision)
    return jnp.einsum("abab->", w), exponent


def _ring_cores(t, name):
    cores = getattr(t, "cores", None)
    if cores is None or any(getattr(g, "ndim", 0) != 3 for g in cores):
        raise TypeError(f"{name} must be a TRTensor (or a tensor with 3-D cores), got "
                        f"{type(t).__name__}.")
    return tuple(cores)


def chain(cores: Sequence[jax.Array], *, precision: Precision = "highest") -> jax.Array:
    """Contracts a train of cores ``(r_0, n_0, r_1), ..., (r_{m-1}, n_{m-1}, r_m)`` over the
    inner bonds into one array of shape ``(r_0, n_0 ··· n_{m-1}, r_m)`` (the middle index in C
    order, the last mode fastest). Cost ``O(r_0 r² ∏ n)``; memory ``r_0 r_m ∏ n``."""
    precision = algebra.resolve_precision(precision)
    out = cores[0]
    for g in cores[1:]:
        r0, m, r1 = out.shape
        out = jnp.einsum("amb,bic->amic", out, g, precision=precision)
        out = out.reshape(r0, m * g.shape[1], g.shape[2])
    return out


def transfer_chain(cores_a: Sequence[jax.Array], cores_b: Sequence[jax.Array] | None = None, *,
                   precision: Precision = "highest") -> jax.Array:
    """The product ``E_0 E_1 ··· E_{m-1}`` of the transfer matrices
    ``E_k = Σ_i A_k[:, i, :] ⊗ B_k[:, i, :]`` of two trains with the same mode sizes.

    Returns ``W`` of shape ``(p_0, q_0, p_m, q_m)`` (``p`` the bonds of ``A``, ``q`` of ``B``)
    with ``W[a, a', b, b'] = Σ_{i_0..i_{m-1}} chain(A)[a, i, b] · chain(B)[a', i, b']``: for a
    ring, ``⟨A, B⟩ = Σ_{a, a'} W[a, a', a, a']``; for ``B = A`` it is the Gram matrix of the
    contracted chain, without forming the chain. Memory ``p_0 q_0 p_k q_k``; each core costs
    ``O(p_0 q_0 n_k p_k q_k (p_{k+1} + q_{k+1}))`` flops.
    """
    return pow2_restore(*transfer_chain_scaled(cores_a, cores_b, precision=precision))


def transfer_chain_scaled(cores_a, cores_b=None, *, precision: Precision = "highest"):
    """:func:`transfer_chain` as ``(W / 2^e, e)``: the cores and the running product are
    rescaled by exact powers of two as the chain goes (the exponents summed apart), so no
    intermediate over- or underflows however the scale is spread over the cores."""
    cores_b = cores_a if cores_b is None else cores_b
    precision = algebra.resolve_precision(precision)
    exponent = jnp.zeros((), jnp.int32)
    w = None
    for core_a, core_b in zip(cores_a, cores_b):
        a, ea = pow2_normalize(core_a)
        b, eb = (a, ea) if core_b is core_a else pow2_normalize(core_b)
        if w is None:
            w = jnp.einsum("aib,cid->acbd", a, b, precision=precision)
        else:
            t = jnp.einsum("pqbd,bic->pqdic", w, a, precision=precision)
            w = jnp.einsum("pqdic,die->pqce", t, b, precision=precision)
        w, ew = pow2_normalize(w)
        exponent = exponent + ea + eb + ew
    return w, exponent
