"""Tubal t-SVD tensors: ``x = U * S * Vᵀ`` under the t-product (Kilmer & Martin 2011)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from tensorfact import _tproduct
from tensorfact._numerics import resolve_precision, safe_sqrt
from tensorfact.tensors._base import FactorizedTensor, as_leaf


@jax.tree_util.register_pytree_node_class
class TSVDTensor(FactorizedTensor):
    """A third-order tensor in t-SVD form ``X = U * S * Vᵀ`` (``*`` the t-product, ``ᵀ`` the
    t-transpose, both under ``transform``; see :mod:`tensorfact.tubal`).

    Args:
      u: ``(..., n1, r, n3)``: the left singular tensor (t-orthogonal, ``Uᵀ * U = I``, for a
        t-SVD; any tensor is accepted).
      s: ``(..., r, n3)``: the f-diagonal core ``S`` (``r × r × n3``, nonzero only on its
        diagonal tubes), stored compactly as its ``r`` diagonal tubes, ``S[i, i, :] = s[i]``, in
        the original (not the transformed) domain, so it is real. Its transform ``L(s)`` along
        the tubes holds the singular values of the transformed frontal slices:
        ``L(X)_k = L(U)_k · diag(L(s)[:, k]) · L(V)_kᴴ``.
      v: ``(..., n2, r, n3)``: the right singular tensor.
      transform: the transform along the tubes: ``"fft"`` (the t-product of Kilmer & Martin),
        ``"dct"`` or an invertible ``n3 × n3`` matrix (Kernfeld, Kilmer & Aeron 2015), or a
        :class:`tensorfact.tubal.Transform`. ``"fft"``/``"dct"`` are static metadata; a
        matrix is carried as a leaf (so it may be traced, and ``vmap`` broadcasts it with the
        factors).

    Leading axes ``...`` are a batch (the same on ``u``, ``s`` and ``v``), as a ``jax.vmap``-ed
    :func:`tensorfact.tubal.svd` returns them; the methods map over it. ``rank`` is the tubal
    rank ``r``; ``n_params`` counts ``u``, ``s`` and ``v`` (not a transform matrix).
    Unpacks as ``u, s, v = t``.

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> t = tfa.TSVDTensor(jnp.ones((4, 2, 3)), jnp.ones((2, 3)), jnp.ones((5, 2, 3)))
      >>> t.shape, t.rank, t.to_dense().shape
      ((4, 5, 3), 2, (4, 5, 3))

    Reference: M. E. Kilmer and C. D. Martin, "Factorization strategies for third-order
    tensors", Linear Algebra and its Applications 435(3), 2011.
    """

    _leaves = ("u", "s", "v", "matrix")
    _static = ("kind",)

    def __init__(self, u, s, v, transform="fft"):
        u, s, v = as_leaf(u, "u"), as_leaf(s, "s"), as_leaf(v, "v")
        for name, leaf in (("u", u), ("s", s), ("v", v)):
            if not jnp.issubdtype(leaf.dtype, jnp.floating):
                raise TypeError(f"{name} must be a real floating array, got dtype {leaf.dtype}.")
        if u.ndim < 3 or v.ndim != u.ndim or s.ndim != u.ndim - 1:
            raise ValueError(f"u must be (..., n1, r, n3), s (..., r, n3) and v (..., n2, r, n3), "
                             f"got shapes {tuple(u.shape)}, {tuple(s.shape)} and "
                             f"{tuple(v.shape)}.")
        batch, (r, n3) = u.shape[:-3], u.shape[-2:]
        if (v.shape[:-3] != batch or v.shape[-2:] != (r, n3) or s.shape != batch + (r, n3)):
            raise ValueError(f"u (..., n1, r, n3), s (..., r, n3) and v (..., n2, r, n3) must "
                             f"agree on the batch, r and n3, got shapes {tuple(u.shape)}, "
                             f"{tuple(s.shape)} and {tuple(v.shape)}.")
        t = _tproduct.resolve_transform(transform, n3)
        self._set(u=u, s=s, v=v, kind=t.kind, matrix=t.matrix)

    def __iter__(self):
        return iter((self.u, self.s, self.v))

    @property
    def transform(self) -> _tproduct.Transform:
        """The transform along the tubes."""
        return _tproduct.Transform(self.kind, self.matrix)

    @property
    def shape(self):
        return tuple(int(d) for d in self.u.shape[:-3] + (self.u.shape[-3], self.v.shape[-3],
                                                          self.u.shape[-1]))

    @property
    def rank(self) -> int:
        """The tubal rank ``r`` (number of singular tubes)."""
        return int(self.s.shape[-2])

    @property
    def n_params(self) -> int:
        """Stored scalars of ``u``, ``s`` and ``v``: ``r (n1 + n2 + 1) n3`` per tensor."""
        return int(self.u.size + self.s.size + self.v.size)

    def _mapped(self, fn):
        """``fn(u, s, v, matrix)`` on one tensor, mapped with ``jax.vmap`` over the leading
        batch axes (a transform matrix that ``vmap`` batched along with the factors is mapped
        too; an unbatched one is shared)."""
        batch = self.u.shape[:-3]
        matrix = self.matrix
        if matrix is not None and batch:
            matrix = jnp.broadcast_to(matrix, batch + matrix.shape[-2:])
        return _tproduct.map_batch(fn, len(batch))(self.u, self.s, self.v, matrix)

    def transformed(self, *, precision="highest"):
        """``(L(U), L(s), L(V))`` in the transform domain: ``(..., k, n1, r)``, ``(..., k, r)``
        and ``(..., k, n2, r)`` (complex for the FFT, whose ``k = n3 // 2 + 1`` stored
        frequencies are those of the real FFT)."""
        kind = self.kind
        return self._mapped(lambda u, s, v, m: _transformed(u, s, v, _tproduct.Transform(kind, m),
                                                            precision))

    def to_dense(self, *, precision="highest"):
        """``U * S * Vᵀ``, as ``L⁻¹(L(U)_k · diag(L(s)_k) · L(V)_kᴴ)`` slice by slice."""
        return _to_dense(self, precision=precision)

    def norm(self, *, precision="highest"):
        """Frobenius norm from the factors, without the dense tensor.

        In the transform domain ``‖L(X)_k‖²_F = Σ_ij σ̄_i σ_j (ÛᴴÛ)_ij conj(V̂ᴴV̂)_ij`` (with
        ``σ = L(s)_k``, ``Û = L(U)_k``, ``V̂ = L(V)_k``), and ``‖X‖²_F = Σ_k w_k ‖L(X)_k‖²_F`` with
        the Parseval weights of :func:`tensorfact.tubal.frequency_weights`. For a t-SVD
        (t-orthogonal ``U``, ``V``) this is ``sqrt(Σ_k w_k ‖σ_k‖²)``; the Gram form is exact for
        any factors. A general (non-orthogonal) matrix transform couples the slices:
        ``‖X‖²_F = Σ_{k,l} Q_kl ⟨L(X)_k, L(X)_l⟩`` with ``Q = M⁻ᵀ M⁻¹``, computed from
        cross-slice Gram matrices (``O(n3² (n1 + n2) r²)``). The factors are rescaled by powers
        of two first, so the result is finite whenever the norm is representable.
        """
        return _norm(self, precision=precision)


def _transformed(u, s, v, t, precision):
    uh = _tproduct.to_transform_domain(u, t, precision=precision)
    vh = _tproduct.to_transform_domain(v, t, precision=precision)
    sh = _tproduct.to_transform_domain(s[:, None, :], t, precision=precision)
    return uh, sh[..., 0], vh


# One compiled program per shape (called eagerly, the transforms' primitives would otherwise be
# compiled one by one); inside a user's jit these are inlined.
@functools.partial(jax.jit, static_argnames="precision")
def _to_dense(t: TSVDTensor, *, precision):
    def one(u, s, v, matrix):
        tr = _tproduct.Transform(t.kind, matrix)
        uh, sh, vh = _transformed(u, s, v, tr, precision)
        xh = _tproduct.facewise(uh * sh[:, None, :], jnp.conj(jnp.swapaxes(vh, -1, -2)),
                                precision=precision)
        return _tproduct.from_transform_domain(xh, u.shape[-1], tr)
    return t._mapped(one)


@functools.partial(jax.jit, static_argnames="precision")
def _norm(t: TSVDTensor, *, precision):
    hp = resolve_precision(precision)
    real = jnp.result_type(t.u, t.s, t.v)

    def one(u, s, v, matrix):
        (u, s, v), exponent = _tproduct.unit_scaled(u, s, v)
        tr = _tproduct.Transform(t.kind, matrix)
        uh, sh, vh = _transformed(u, s, v, tr, precision)
        n3 = u.shape[-1]
        if t.kind == "matrix":
            m = matrix.astype(real)
            m_inv = jnp.linalg.solve(m, jnp.eye(n3, dtype=real))
            q = jnp.matmul(m_inv.T, m_inv, precision=hp)
            gu = jnp.einsum("kai,laj->klij", uh, uh, precision=hp)
            gv = jnp.einsum("kai,laj->klij", vh, vh, precision=hp)
            sq = jnp.einsum("kl,ki,lj,klij->", q, sh, sh, gu * gv, precision=hp)
        else:
            w = _tproduct.frequency_weights(n3, t.kind, real)
            gu = jnp.einsum("kai,kaj->kij", jnp.conj(uh), uh, precision=hp)
            gv = jnp.einsum("kai,kaj->kij", jnp.conj(vh), vh, precision=hp)
            per_slice = jnp.einsum("ki,kj,kij->k", jnp.conj(sh), sh, gu * jnp.conj(gv),
                                   precision=hp)
            sq = jnp.sum(w * jnp.real(per_slice))
        return jnp.ldexp(safe_sqrt(jnp.real(sq)).astype(real), exponent)

    return t._mapped(one)
