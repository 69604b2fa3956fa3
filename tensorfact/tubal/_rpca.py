"""Tensor robust PCA: a low-tubal-rank plus a sparse tensor, by ADMM (Lu et al. 2019).

Reference:
  C. Lu, J. Feng, Y. Chen, W. Liu, Z. Lin and S. Yan, "Tensor robust principal component analysis
  with a new tensor nuclear norm", IEEE TPAMI 42(4), 2019.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tensorfact import _tproduct
from tensorfact._checks import check_nonneg_number, count_nonfinite, report_nonfinite
from tensorfact._numerics import pow2_scale, safe_norm
from tensorfact.decomposition._common import check_iteration_args, concrete_or_traced
from tensorfact.decomposition._loop import FitInfo, is_fixed_length, iterate
from tensorfact.tubal._common import (ADMM_MU_CAP, ADMM_RHO, check_mu, check_tensor,
                                      orthogonal_transform, svt)

__all__ = ["rpca"]


def rpca(x, *, lam=None, mu=None, n_iter: int = 500, tol: float = 1e-6,
         transform: _tproduct.TransformLike = "fft", precision="highest",
         return_info: bool = False):
    """Tensor robust PCA: ``X = L + S`` with ``L`` of low tubal rank and ``S`` sparse (Lu, Feng,
    Chen, Liu, Lin & Yan, "Tensor robust principal component analysis with a new tensor nuclear
    norm", IEEE TPAMI 2019),

        min_{L,S} ‖L‖_TNN + λ‖S‖₁   subject to   L + S = X,

    solved by ADMM (Lu et al., Algorithm 1). With the multiplier ``Y`` and penalty ``μ``:

        L ← prox(X − S + Y/μ, 1/μ)           (tubal singular value thresholding, :func:`prox`)
        S ← shrink_{λ/μ}(X − L + Y/μ)        (entrywise soft-thresholding)
        Y ← Y + μ (X − L − S)
        μ ← min(ρ μ, μ̄)

    Lu et al. start from ``Y = 0`` and a fixed ``μ₀ = 10⁻³``, which depends on the scale of the
    data; as in the matrix :func:`tensorfact.rpca` (Lin, Chen & Ma 2010) we start from the
    scale-free ``μ₀ = 1.25 / ‖X‖`` and ``Y = X / max(‖X‖, ‖X‖_∞ / λ)`` (``‖X‖`` the tensor
    spectral norm, the dual of the TNN), with Lu et al.'s ``ρ = 1.1`` and ``μ̄ = 10⁷ μ₀``. Lu
    et al. show exact recovery, with high probability, for ``λ = 1/√(max(n1, n2) n3)`` when
    ``L`` is incoherent and of tubal rank ``O(min(n1, n2) / (μ log²(max(n1, n2) n3)))`` and the
    support of ``S`` is random and not too dense. The iteration stops when the relative primal
    and dual residuals, ``‖X − L − S‖_F / ‖X‖_F`` and the relative changes ``‖ΔL‖_F / ‖X‖_F``,
    ``‖ΔS‖_F / ‖X‖_F``, all fall below ``tol`` (the Frobenius form of Lu et al.'s rule). Each
    iteration takes the SVDs of the ``n3 // 2 + 1`` transformed slices.

    Scale: the iteration runs on ``X / 2^k`` (``2^k`` near ``max |X|``; exact) with ``μ₀``
    scaled alike, and ``L``, ``S`` are scaled back, so ``rpca(c·X) = c·rpca(X)`` and the
    reported errors are the same for data of any magnitude.

    Args:
      x: ``(n1, n2, n3)`` real tensor, all finite (``jax.vmap`` for a batch).
      lam: weight ``λ ≥ 0`` of the sparse term; default ``1/√(max(n1, n2) · n3)``.
      mu: initial penalty ``μ₀ > 0`` (finite); default ``1.25 / ‖X‖``.
      n_iter: maximum number of iterations (static: it sizes ``info.errors``).
      tol: stopping tolerance on the residuals above (default ``1e-6``, the splitting methods'
        default); a literal ``0`` runs exactly ``n_iter`` iterations as a ``lax.scan``, which
        ``jax.grad`` differentiates.
      transform: ``"fft"``, ``"dct"`` or an orthogonal ``n3 × n3`` matrix.
      precision: XLA precision of the slice products; ``"highest"`` (the default) is full
        float32, ``None`` JAX's default.
      return_info: also return a :class:`~tensorfact.FitInfo` whose ``errors`` are the stopping
        quantities above, ``rel_error`` the final relative residual ``‖X − L − S‖_F / ‖X‖_F``
        and ``converged`` whether the stopping test was met.

    Returns:
      ``(low_rank, sparse)`` dense arrays of ``x``'s shape, or ``((low_rank, sparse), FitInfo)``
      with ``return_info=True`` (as for every fit: the result, then the info).

    Example:
      >>> import jax, jax.numpy as jnp, tensorfact as tfa
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> a, b = jax.random.normal(k1, (30, 2, 6)), jax.random.normal(k2, (2, 30, 6))
      >>> low = tfa.tubal.product(a, b)
      >>> sparse = jnp.where(jax.random.bernoulli(k3, 0.05, low.shape), 10.0, 0.0)
      >>> l, s = tfa.tubal.rpca(low + sparse)
      >>> bool(tfa.relative_error(low, l) < 1e-3)
      True

    Raises:
      ValueError: if ``x`` is not one third-order tensor, ``lam``/``tol`` is negative or
        infinite, ``mu`` is not a finite positive number, ``n_iter`` is not a positive int, the
        transform is not orthogonal, or (eager calls) ``x`` holds NaN or Inf.
    """
    x = check_tensor(x)
    n_iter, tol = check_iteration_args(n_iter, tol)
    t = orthogonal_transform(transform, x.shape[-1])
    if lam is not None:
        check_nonneg_number(lam, "lam")
        lam = concrete_or_traced(lam)
    mu = check_mu(mu)
    fixed = is_fixed_length(tol)
    tol = 0.0 if fixed else concrete_or_traced(tol)
    result, n_nonfinite = _rpca(x, t.matrix, lam, mu, tol, kind=t.kind, n_iter=n_iter,
                                fixed=fixed, precision=precision, return_info=bool(return_info))
    report_nonfinite(n_nonfinite, "x")
    return result


def _shrink(x, threshold):
    """Entrywise soft-thresholding ``sign(x) max(|x| − τ, 0)``."""
    return jnp.sign(x) * jnp.maximum(jnp.abs(x) - threshold, 0)


@functools.partial(jax.jit, static_argnames=("kind", "n_iter", "fixed", "precision",
                                             "return_info"))
def _rpca(x, matrix, lam, mu, tol, *, kind, n_iter, fixed, precision, return_info):
    n_nonfinite = count_nonfinite(x)
    t = _tproduct.Transform(kind, matrix)
    dtype = x.dtype
    tiny = jnp.finfo(dtype).tiny
    scale = jax.lax.stop_gradient(pow2_scale(x))
    m = x / scale
    n1, n2, n3 = x.shape
    lam = jnp.asarray(1.0 / np.sqrt(max(n1, n2) * n3) if lam is None else lam, dtype)
    norm_fro = jnp.maximum(safe_norm(m), tiny)
    norm_two = jnp.maximum(_tproduct.norm(m, "spectral", transform=t), tiny)
    norm_inf = jnp.max(jnp.abs(m)) / jnp.maximum(lam, tiny)
    # μ has the units of 1/x: a given μ₀ is scaled with the data.
    mu0 = 1.25 / norm_two if mu is None else jnp.asarray(mu, dtype) * scale
    mu_cap = ADMM_MU_CAP * mu0
    y = m / jnp.maximum(norm_two, norm_inf)

    def step(state):
        low0, sparse0, y, mu = state
        low = svt(m - sparse0 + y / mu, 1.0 / mu, t, precision)
        sparse = _shrink(m - low + y / mu, lam / mu)
        resid = m - low - sparse
        y = y + mu * resid
        mu = jnp.minimum(ADMM_RHO * mu, mu_cap)
        err = jnp.maximum(safe_norm(resid),
                          jnp.maximum(safe_norm(low - low0),
                                      safe_norm(sparse - sparse0))) / norm_fro
        return (low, sparse, y, mu), err

    state = (jnp.zeros_like(m), jnp.zeros_like(m), y, jnp.asarray(mu0, dtype))
    state, n_done, errors, converged = iterate(step, state, n_iter=n_iter,
                                               tol=0 if fixed else tol, stop="below")
    low, sparse = state[0] * scale, state[1] * scale
    if not return_info:
        return (low, sparse), n_nonfinite
    rel = safe_norm(m - state[0] - state[1]) / norm_fro
    return ((low, sparse), FitInfo(n_done, errors, rel, converged)), n_nonfinite
