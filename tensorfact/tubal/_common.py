"""What the tubal modules share: argument checks, and the slice-wise linear algebra of the
transform domain (SVDs, singular value thresholding, t-SVD assembly) as traceable functions.

Real in, real out. With the FFT, only the ``n3 // 2 + 1`` frequencies of the real FFT are
factorised (the others are their complex conjugates). The zero frequency (and the Nyquist one
for even ``n3``) of a real tensor is a real slice; those slices are factorised in real
arithmetic, because an SVD computed in complex arithmetic may give them factors with arbitrary
complex phases, which the inverse real FFT would silently drop (``U * S * Vᵀ ≠ X``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tensorfact import _tproduct
from tensorfact._checks import check_positive_int, check_positive_number, is_traced
from tensorfact._numerics import pow2_scale
from tensorfact.decomposition._common import concrete_or_traced
from tensorfact.tensors import TSVDTensor

#: ADMM (``rpca`` and ``complete(method="tnn")``): growth factor of the penalty ``μ`` (Lu et
#: al.'s value; a faster growth, e.g. the matrix RPCA's 1.5, freezes the completion iteration at
#: a feasible point before it reaches the minimiser) and its cap relative to the initial ``μ``.
ADMM_RHO = 1.1
ADMM_MU_CAP = 1e7


def check_tensor(x, name: str = "x") -> jax.Array:
    """One real ``(n1, n2, n3)`` tensor with no empty mode (what every decomposition takes)."""
    return _tproduct.check_tensor(x, name, nonempty=True)


def check_rank(rank, n1: int, n2: int, *, required: bool, method=None) -> int:
    """A tubal rank in ``[1, min(n1, n2)]``; ``None`` is ``min(n1, n2)`` unless ``required``."""
    if rank is None:
        if required:
            raise ValueError(f"rank is required for method={method!r}: pass the tubal rank "
                             f"(an int in [1, {min(n1, n2)}]).")
        return min(n1, n2)
    rank = check_positive_int(rank, "rank")
    if rank > min(n1, n2):
        raise ValueError(f"rank must be at most min(n1, n2) = {min(n1, n2)} for a tensor with "
                         f"n1 = {n1}, n2 = {n2}, got {rank}.")
    return rank


def check_mu(mu):
    """The ADMM penalty ``μ₀``: None (the default) or a finite scalar > 0."""
    if mu is None:
        return None
    check_positive_number(mu, "mu")
    return concrete_or_traced(mu)


def orthogonal_transform(transform, n3: int) -> _tproduct.Transform:
    """Resolves a transform for the tensor nuclear norm, which needs an orthogonal one (up to the
    FFT's known scale): "fft", "dct", or a matrix with ``M Mᵀ = I`` (checked when concrete)."""
    t = _tproduct.resolve_transform(transform, n3)
    if t.kind == "matrix" and not is_traced(t.matrix):
        m = np.asarray(t.matrix, np.float64)
        dev = float(np.max(np.abs(m @ m.T - np.eye(n3))))
        if dev > 1e-4:
            raise ValueError(f"transform matrix must be orthogonal (M Mᵀ = I) for the tensor "
                             f"nuclear norm and its prox, got max |M Mᵀ − I| = {dev:.3g}; use "
                             f"'fft', 'dct' or an orthogonal matrix.")
    return t


def slicewise(fn, hat, t: _tproduct.Transform, n3: int):
    """Applies a slice-batched factorisation ``fn`` (returning a tuple of arrays batched over
    the slices, axis 0) to the transformed slices ``hat (k, n1, n2)``, in real arithmetic for the
    real ones (the FFT's zero and, for even ``n3``, Nyquist frequencies; every slice of a real
    transform) and complex arithmetic for the others."""
    if t.kind != "fft":
        return fn(hat)
    k = hat.shape[0]
    last_real = n3 % 2 == 0 and n3 > 1
    stop = k - 1 if last_real else k
    parts = [fn(jnp.real(hat[:1]))]
    if stop > 1:
        parts.append(fn(hat[1:stop]))
    if last_real:
        parts.append(fn(jnp.real(hat[k - 1:])))
    out = []
    for pieces in zip(*parts):
        dtype = jnp.result_type(*pieces)
        out.append(jnp.concatenate([p.astype(dtype) for p in pieces], axis=0))
    return tuple(out)


def svd_hat(hat, t, n3):
    """Thin SVD of every transformed slice: ``(Û, σ, V̂ᴴ)``, σ real and nonincreasing."""
    return slicewise(functools.partial(jnp.linalg.svd, full_matrices=False), hat, t, n3)


def slice_sigma(x, t, precision="highest"):
    """``(σ, w, 2^j)``: the singular values ``σ (k, min(n1, n2))`` of the transformed slices of
    ``x / 2^j`` (``2^j`` near ``max |x|``, so that sums of their squares neither over- nor
    underflow; multiply by ``2^j`` for those of ``x``), the Parseval weights ``w (k,)`` of the
    slices, and ``2^j`` (constant under differentiation)."""
    scale = jax.lax.stop_gradient(pow2_scale(x))
    hat = _tproduct.to_transform_domain(x / scale, t, precision=precision)
    sigma = jnp.linalg.svd(hat, compute_uv=False)
    return sigma, _tproduct.frequency_weights(x.shape[-1], t, sigma.dtype), scale


def tsvd_from_hat(uh, sigma, vh, t, n3) -> TSVDTensor:
    """A :class:`TSVDTensor` from transform-domain factors ``uh (k, n1, r)``, singular values
    ``sigma (k, r)`` and ``vh (k, n2, r)``."""
    u = _tproduct.from_transform_domain(uh, n3, t)
    v = _tproduct.from_transform_domain(vh, n3, t)
    s = _tproduct.from_transform_domain(sigma[..., None], n3, t)[..., 0, :]
    dtype = u.dtype
    return TSVDTensor(u, s.astype(dtype), v.astype(dtype), t)


def truncated_tsvd(x, t, rank, precision) -> TSVDTensor:
    """The t-SVD of ``x`` truncated to ``rank`` tubes (traceable; no argument checks)."""
    n3 = x.shape[-1]
    hat = _tproduct.to_transform_domain(x, t, precision=precision)
    u, s, vh = svd_hat(hat, t, n3)
    u, s, vh = u[..., :rank], s[..., :rank], vh[..., :rank, :]
    return tsvd_from_hat(u, s, jnp.conj(jnp.swapaxes(vh, -1, -2)), t, n3)


def svt(x, tau, t, precision):
    """Tubal singular value thresholding, the prox of ``τ‖·‖_TNN`` (traceable): every
    transformed slice ``Û Σ V̂ᴴ`` becomes ``Û max(Σ − τ, 0) V̂ᴴ``."""
    n3 = x.shape[-1]
    hat = _tproduct.to_transform_domain(x, t, precision=precision)
    # A slice with ‖X̂_k‖_F ≤ τ is thresholded to zero (and so is its neighbourhood: zero
    # derivative), but the SVD's derivative at its repeated singular values (a zero slice) is
    # NaN. Such slices are factorised as a harmless matrix with distinct singular values and
    # their result zeroed: the where() trick, so gradients stay finite (e.g. at x = 0).
    n1, n2 = hat.shape[1:]
    vanishes = jax.lax.stop_gradient(
        jnp.sqrt(jnp.sum(jnp.abs(hat) ** 2, axis=(1, 2))) <= tau)[:, None, None]
    harmless = (jnp.eye(n1, n2) * jnp.arange(1, n2 + 1)).astype(hat.dtype)
    u, s, vh = svd_hat(jnp.where(vanishes, harmless, hat), t, n3)
    shrunk = jnp.maximum(s - tau, 0).astype(s.dtype)
    z = _tproduct.facewise(u * shrunk[..., None, :], vh, precision=precision)
    z = jnp.where(vanishes, 0, z)
    return _tproduct.from_transform_domain(z, n3, t).astype(x.dtype)


def scaled_tsvd(t: TSVDTensor, scale) -> TSVDTensor:
    """``t`` with its singular tubes multiplied by ``scale`` (a fit on ``x / scale`` scaled
    back)."""
    return TSVDTensor.tree_unflatten((t.kind,), (t.u, t.s * scale, t.v, t.matrix))
