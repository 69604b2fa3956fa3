"""Low-tubal-rank completion: TNN minimisation by ADMM (Zhang & Aeron 2017; Lu et al. 2019)
or alternating least squares on the factors of ``X = A * Bᵀ`` (Liu et al. 2016).

References:
  Z. Zhang and S. Aeron, "Exact tensor completion using t-SVD", IEEE Transactions on Signal
  Processing 65(6), 2017.
  C. Lu, J. Feng, Y. Chen, W. Liu, Z. Lin and S. Yan, "Tensor robust principal component analysis
  with a new tensor nuclear norm", IEEE TPAMI 42(4), 2019.
  C. Lu, X. Peng and Y. Wei, "Low-rank tensor completion with a new tensor nuclear norm induced
  by invertible linear transforms", CVPR 2019.
  X.-Y. Liu, S. Aeron, V. Aggarwal and X. Wang, "Low-tubal-rank tensor completion using
  alternating minimization", arXiv:1610.01690, 2016 (IEEE Trans. Information Theory 2020).
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from tensorfact import _tproduct
from tensorfact._checks import finite_part, poison
from tensorfact._checks import (Init, check_choice, check_key, check_mask, check_nonneg_number,
                                is_traced, report_nonfinite)
from tensorfact._numerics import pow2_scale, resolve_precision, safe_norm
from tensorfact.decomposition._common import (check_iteration_args, concrete_or_traced,
                                              solve_normal_equations)
from tensorfact.decomposition._loop import FitInfo, is_fixed_length, iterate
from tensorfact.metrics import relative_error
from tensorfact.tensors import TSVDTensor
from tensorfact.tubal._common import (ADMM_MU_CAP, ADMM_RHO, check_mu, check_rank, check_tensor,
                                      orthogonal_transform, scaled_tsvd, slicewise,
                                      svd_hat, svt, truncated_tsvd, tsvd_from_hat)

__all__ = ["complete"]

Method = Literal["tnn", "factor"]

#: Factor ALS ridge used when ``l2 == 0``, relative to the mean squared row norm of the design.
FACTOR_DEFAULT_RIDGE = 1e-6


def complete(x, mask, *, key=None, rank=None, method: Method = "tnn", init: Init = "svd",
             n_iter: int = 500, tol: float = 1e-6, mu=None, l2: float = 0.0,
             transform: _tproduct.TransformLike = "fft", precision="highest",
             return_info: bool = False):
    """Low-tubal-rank completion of a partially observed third-order tensor.

    Let ``Ω`` be the observed entries (``mask`` True) and ``P_Ω`` zero the others.

    ``method="tnn"`` solves the convex program

        min_X ‖X‖_TNN   subject to   P_Ω(X) = P_Ω(M)

    (Zhang & Aeron, "Exact tensor completion using t-SVD", IEEE TSP 2017; with the TNN of Lu et
    al. 2019), which recovers an incoherent tensor of low tubal rank from enough random samples.
    It is solved by ADMM on the splitting ``X + E = P_Ω(M)``, ``P_Ω(E) = 0`` (Lu et al.'s
    ``lrtc_tnn``); eliminating ``E`` leaves, with the multiplier ``Y`` supported on ``Ω``:

        X ← prox(P_Ω(M + Y/μ) + P_Ω⊥(X), 1/μ)         (:func:`prox`, tubal SVT)
        Y ← P_Ω(Y + μ (M − X)),    μ ← min(ρ μ, μ̄)

    from ``X = Y = 0`` and ``μ₀ = 1.25 / ‖P_Ω(M)‖`` (tensor spectral norm), ``ρ = 1.1``,
    ``μ̄ = 10⁷ μ₀``. It stops when the relative primal and dual residuals, the observed
    ``‖P_Ω(M − X)‖_F / ‖P_Ω(M)‖_F`` and the change ``‖ΔX‖_F / ‖P_Ω(M)‖_F``, fall below ``tol``
    (default ``1e-6``, that of every splitting method). The
    result is the t-SVD of the last ``X`` (tubal rank ``min(n1, n2)``, with trailing singular
    tubes near zero), truncated to ``rank`` tubes when ``rank`` is given.

    ``method="factor"`` fits ``X = A * Bᵀ`` with ``A`` (``n1 × r × n3``) and ``B``
    (``n2 × r × n3``) at the tubal rank ``r = rank`` by alternating least squares,

        min_{A,B} ‖P_Ω(M − A * Bᵀ)‖²_F + λ(‖A‖²_F + ‖B‖²_F)

    (Liu, Aeron, Aggarwal & Wang, "Low-tubal-rank tensor completion using alternating
    minimization", 2016). ``A * Bᵀ`` is linear in each horizontal slice ``A[i]``:
    ``(A * Bᵀ)[i, j, :] = Σ_l T(B_jl) A[i, l, :]`` with ``T(b)`` the ``n3 × n3`` matrix of the
    tube product with ``b`` (a circulant for the FFT), so every slice ``A[i]`` (``r·n3``
    unknowns) solves its own ridge least-squares problem over its observed entries, all at once
    as for the matrix :func:`tensorfact.complete` (exact, in real arithmetic: it is Liu et al.'s
    frequency-domain least squares written in the original domain); then ``B`` likewise from
    ``Mᵀ ≈ B * Aᵀ``. The cost per sweep is ``O((n1 + n2) n2 n3 (r n3)²)`` and the memory
    ``O(max(n1, n2) n3 (r n3)²)``: it suits short tubes; for long tubes use ``"tnn"``. With
    ``l2=0`` a ridge of ``1e-6`` times the mean squared row norm of the design is used
    (``FACTOR_DEFAULT_RIDGE``), so rows with too few observations stay solvable. The start is the
    rank-``r`` t-SVD of ``P_Ω(M)/p`` (``p`` the observed fraction) or random (``init="random"``,
    needs ``key``). It stops when the observed relative error changes by less than ``tol``. The
    result is re-expressed as a t-SVD from the thin factors (slice-wise QR of ``L(A)``,
    ``L(B)`` and an ``r × r`` SVD), without decomposing a dense tensor.

    Scale: both methods run on ``P_Ω(M) / 2^k`` (``2^k`` near the largest observed ``|M|``;
    exact), with ``μ₀`` and ``λ`` scaled alike, and scale the singular tubes back, so
    ``complete(c·M) = c·complete(M)`` and ``info.rel_error`` is the same for data of any
    magnitude.

    Args:
      x: ``(n1, n2, n3)`` real tensor (``jax.vmap`` for a batch). Entries where ``mask`` is
        False may hold anything, NaN included.
      mask: boolean (or 0/1) array of ``x.shape``, True where ``x`` is observed; ``None`` means
        fully observed.
      rank: tubal rank ``r ≤ min(n1, n2)``: required for ``"factor"``; for ``"tnn"`` it
        truncates the returned t-SVD (``None``: keep ``min(n1, n2)`` tubes).
      method: ``"tnn"`` (ADMM) or ``"factor"`` (ALS).
      key: ``jax.random`` key, needed for ``init="random"`` (and only then).
      init: ``"factor"``'s start, ``"svd"`` or ``"random"``.
      n_iter: maximum number of iterations (static: it sizes ``info.errors``).
      tol: stopping tolerance (above), default ``1e-6``; a literal ``0`` runs exactly
        ``n_iter`` iterations as a ``lax.scan``, which ``jax.grad`` differentiates.
      mu: ``"tnn"``'s initial penalty ``μ₀ > 0``, finite (default above).
      l2: ``"factor"``'s ridge ``λ ≥ 0`` (``0`` selects the small default above).
      transform: ``"fft"``, ``"dct"`` or a matrix (an orthogonal one for ``"tnn"``).
      precision: XLA precision of the products; ``"highest"`` (the default) is full float32,
        ``None`` JAX's default.
      return_info: also return a :class:`~tensorfact.FitInfo` (``errors``: the stopping
        quantity of each iteration; ``rel_error``: the observed-entry relative error of the
        result).

    Returns:
      A :class:`~tensorfact.TSVDTensor` (``.to_dense()`` for the completed tensor), or
      ``(TSVDTensor, FitInfo)`` with ``return_info=True``.

    Example:
      >>> import jax, jax.numpy as jnp, tensorfact as tfa
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> a, b = jax.random.normal(k1, (20, 2, 5)), jax.random.normal(k2, (2, 20, 5))
      >>> x = tfa.tubal.product(a, b)                                     # tubal rank 2
      >>> mask = jax.random.bernoulli(k3, 0.6, x.shape)
      >>> t = tfa.tubal.complete(jnp.where(mask, x, jnp.nan), mask, rank=2, method="factor")
      >>> bool(tfa.relative_error(x, t.to_dense()) < 1e-3)
      True

    Raises:
      ValueError: if ``x`` is not one third-order tensor, ``mask`` has the wrong shape or holds
        values other than 0/1, ``rank`` is missing for
        ``"factor"``, not a positive int or above ``min(n1, n2)``, ``method``/``init`` is
        unknown, ``key`` is missing for ``init="random"``, ``mu`` is given with ``"factor"`` or
        a nonzero ``l2`` with ``"tnn"``, ``mu``/``l2``/``tol`` is out of range, the transform is
        bad (not orthogonal for ``"tnn"``), or (eager calls) an observed entry is NaN or Inf.
    """
    x = check_tensor(x)
    mask = check_mask(mask, x.shape)
    n1, n2, n3 = x.shape
    method = check_choice(method, Method, "method")
    init = check_choice(init, Init, "init")
    rank = check_rank(rank, n1, n2, required=method == "factor", method=method)
    n_iter, tol = check_iteration_args(n_iter, tol)
    check_nonneg_number(l2, "l2")
    mu = check_mu(mu)
    if method == "tnn":
        t = orthogonal_transform(transform, n3)
        if not is_traced(l2) and float(l2) != 0:
            raise ValueError(f"l2 is the ridge of method='factor'; it does not apply to "
                             f"method='tnn', got l2={l2!r}.")
    else:
        t = _tproduct.resolve_transform(transform, n3)
        if mu is not None:
            raise ValueError(f"mu is the ADMM penalty of method='tnn'; it does not apply to "
                             f"method='factor', got mu={mu!r}.")
        if init == "random":
            check_key(key, 'for init="random"')
    fixed = is_fixed_length(tol)
    tol = 0.0 if fixed else concrete_or_traced(tol)
    result, n_nonfinite = _complete(
        x, mask, t.matrix, key if (method == "factor" and init == "random") else None, mu,
        concrete_or_traced(l2), tol, rank=rank, kind=t.kind, method=method, init=init,
        n_iter=n_iter, fixed=fixed, precision=precision, return_info=bool(return_info))
    report_nonfinite(n_nonfinite, "x (observed entries)", maskable=True)
    return result


@functools.partial(jax.jit, static_argnames=(
    "rank", "kind", "method", "init", "n_iter", "fixed", "precision", "return_info"))
def _complete(x, mask, matrix, key, mu, l2, tol, *, rank, kind, method, init, n_iter, fixed,
              precision, return_info):
    x, n_nonfinite = finite_part(x, mask)  # LAPACK's SVD does not return on Inf
    t = _tproduct.Transform(kind, matrix)
    if mask is None:
        mask = jnp.ones(x.shape, bool)
    # The fit runs on P_Ω(M) / s (where() also removes NaN placeholders); μ has the units of
    # 1/x and the ridge λ those of x (‖P_Ω(M − A * Bᵀ)‖² is quadratic, ‖A‖² linear in x).
    scale = jax.lax.stop_gradient(pow2_scale(x, where=mask))
    m0 = jnp.where(mask, x, 0) / scale
    tol = 0 if fixed else tol
    if method == "tnn":
        mu = None if mu is None else jnp.asarray(mu, x.dtype) * scale
        result, n_done, errors, converged = _complete_tnn(m0, mask, mu, tol, t, n_iter,
                                                          precision, rank)
    else:
        result, n_done, errors, converged = _complete_factor(m0, mask, key, l2 / scale, tol, t,
                                                             n_iter, precision, rank, init)
    scaled = poison(scaled_tsvd(result, scale), n_nonfinite)
    if not return_info:
        return scaled, n_nonfinite
    rel = relative_error(m0, result.to_dense(precision=precision), mask)
    return (scaled, FitInfo(n_done, errors, rel, converged)), n_nonfinite


def _complete_tnn(m0, mask, mu, tol, t, n_iter, precision, rank):
    dtype = m0.dtype
    tiny = jnp.finfo(dtype).tiny
    norm_obs = jnp.maximum(safe_norm(m0), tiny)
    mu0 = (1.25 / jnp.maximum(_tproduct.norm(m0, "spectral", transform=t), tiny)
           if mu is None else jnp.asarray(mu, dtype))
    mu_cap = ADMM_MU_CAP * mu0

    def step(state):
        x0, y, mu = state
        x = svt(jnp.where(mask, m0 + y / mu, x0), 1.0 / mu, t, precision)
        resid = jnp.where(mask, m0 - x, 0)
        y = y + mu * resid
        mu = jnp.minimum(ADMM_RHO * mu, mu_cap)
        err = jnp.maximum(safe_norm(resid),
                          safe_norm(x - x0)) / norm_obs
        return (x, y, mu), err

    state = (jnp.zeros_like(m0), jnp.zeros_like(m0), jnp.asarray(mu0, dtype))
    state, n_done, errors, converged = iterate(step, state, n_iter=n_iter, tol=tol, stop="below")
    return truncated_tsvd(state[0], t, rank, precision), n_done, errors, converged


def _tube_design(f, t, precision):
    """The design of ``G ↦ G * Fᵀ`` for ``F`` of shape ``(n, r, n3)``: the ``(n·n3) × (r·n3)``
    matrix ``Φ`` with ``unfold(G * Fᵀ)[i] = Φ · vec(G[i])`` (rows ``(j, t)``, columns ``(l, s)``),
    ``Φ[(j, t), (l, s)] = (Fᵀ_lj ⋆ e_s)[t]`` with ``⋆`` the tube product under ``t``."""
    n, r, n3 = f.shape
    fh = _tproduct.to_transform_domain(f, t, precision=precision)          # (k, n, r)
    eh = _tproduct.to_transform_domain(jnp.eye(n3, dtype=f.dtype)[:, None, :], t,
                                      precision=precision)[..., 0]        # (k, n3): tubes e_s
    # L(Fᵀ)_k = L(F)_kᴴ, so the tube of Fᵀ at (l, j) has transform conj(L(F)[k, j, l]).
    dh = jnp.conj(fh)[..., None] * eh[:, None, None, :]                   # (k, n, r, n3_s)
    d = _tproduct.from_transform_domain(dh.reshape(dh.shape[0], n, r * n3), n3, t)
    d = d.reshape(n, r, n3, n3).astype(f.dtype)                           # (j, l, s, t)
    return jnp.transpose(d, (0, 3, 1, 2)).reshape(n * n3, r * n3)


def _factor_half(m0_flat, maskf_flat, f, l2, t, precision):
    """Row-wise ridge least squares: the ``G`` minimising ``‖P_Ω(M − G * Fᵀ)‖² + λ‖G‖²``."""
    hp = resolve_precision(precision)
    n, r, n3 = f.shape
    phi = _tube_design(f, t, precision)                                   # (n·n3, R)
    rr = r * n3
    numer = jnp.matmul(m0_flat, phi, precision=hp)                        # m0 is zero off Ω
    squares = (phi[:, :, None] * phi[:, None, :]).reshape(n * n3, rr * rr)
    gram = jnp.matmul(maskf_flat, squares, precision=hp).reshape(-1, rr, rr)
    default = FACTOR_DEFAULT_RIDGE * jnp.sum(phi * phi) / (n * n3)
    ridge = jnp.where(l2 > 0, l2, default) + jnp.finfo(f.dtype).tiny
    g = solve_normal_equations(numer, gram, ridge, precision)
    return g.reshape(-1, r, n3)


def _complete_factor(m0, mask, key, l2, tol, t, n_iter, precision, rank, init):
    n1, n2, n3 = m0.shape
    dtype = m0.dtype
    maskf = mask.astype(dtype)
    m0t = _tproduct.transpose(m0, transform=t)
    maskt = _tproduct.transpose(maskf, transform=t)
    flat = (m0.reshape(n1, n2 * n3), maskf.reshape(n1, n2 * n3))
    flat_t = (m0t.reshape(n2, n1 * n3), maskt.reshape(n2, n1 * n3))
    l2 = jnp.asarray(l2, dtype)

    if init == "random":
        b = jax.random.normal(key, (n2, rank, n3), dtype) / np.sqrt(n2 * n3)
    else:
        p = jnp.maximum(jnp.mean(maskf), jnp.finfo(dtype).tiny)
        hat = _tproduct.to_transform_domain(m0 / p, t, precision=precision)
        _, s, vh = svd_hat(hat, t, n3)
        bh = jnp.conj(jnp.swapaxes(vh[..., :rank, :], -1, -2)) * jnp.sqrt(s[..., None, :rank])
        b = _tproduct.from_transform_domain(bh, n3, t).astype(dtype)

    def step(state):
        _, b = state
        a = _factor_half(*flat, b, l2, t, precision)
        b = _factor_half(*flat_t, a, l2, t, precision)
        approx = _tproduct.product(a, _tproduct.transpose(b, transform=t), transform=t,
                                precision=precision)
        return (a, b), relative_error(m0, approx, mask)

    a0 = jnp.zeros((n1, rank, n3), dtype)
    (a, b), n_done, errors, converged = iterate(step, (a0, b), n_iter=n_iter, tol=tol)
    return _product_to_tsvd(a, b, t, precision), n_done, errors, converged


def _product_to_tsvd(a, b, t, precision) -> TSVDTensor:
    """``A * Bᵀ`` as a t-SVD, slice-wise: ``L(A)_k = Q_a R_a``, ``L(B)_k = Q_b R_b`` (QR),
    ``R_a R_bᴴ = W Σ Zᴴ`` (an ``r × r`` SVD); ``Û = Q_a W``, ``V̂ = Q_b Z``."""
    n3 = a.shape[-1]
    ah = _tproduct.to_transform_domain(a, t, precision=precision)
    bh = _tproduct.to_transform_domain(b, t, precision=precision)
    qa, ra = slicewise(jnp.linalg.qr, ah, t, n3)
    qb, rb = slicewise(jnp.linalg.qr, bh, t, n3)
    core = _tproduct.facewise(ra, jnp.conj(jnp.swapaxes(rb, -1, -2)), precision=precision)
    w, s, zh = svd_hat(core, t, n3)
    uh = _tproduct.facewise(qa, w, precision=precision)
    vh = _tproduct.facewise(qb, jnp.conj(jnp.swapaxes(zh, -1, -2)), precision=precision)
    return tsvd_from_hat(uh, s, vh, t, n3)
