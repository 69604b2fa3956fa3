"""Low-rank matrix completion and robust PCA.

:func:`complete` fills in the missing entries of a matrix ``M`` observed on a set ``Ω`` (the
``mask``) with a rank-``r`` model, by one of two methods:

* ``"als"``: alternating ridge least squares on the factors of ``X = A Bᵀ``,

      min_{A,B} ‖P_Ω(M − A Bᵀ)‖²_F + λ (‖A‖²_F + ‖B‖²_F),

  where every row of ``A`` (then of ``B``) solves its own ``r × r`` normal equations over its
  observed entries (Koren, Bell & Volinsky 2009; Hastie, Mazumder, Lee & Zadeh 2015, JMLR);
* ``"soft_impute"``: the Soft-Impute iteration of Mazumder, Hastie & Tibshirani (2010, JMLR),
  ``Z ← SVT_λ(P_Ω(M) + P_Ω⊥(Z))``, a proximal-gradient method for the nuclear-norm problem
  ``min_Z ½‖P_Ω(M − Z)‖²_F + λ‖Z‖_*``, truncated to ``r`` components.

:func:`rpca` splits a matrix into low-rank plus sparse parts by principal component pursuit,
``min ‖L‖_* + λ‖S‖₁ s.t. L + S = M`` (Candès, Li, Ma & Wright 2011, JACM), solved by the
inexact augmented Lagrangian method (Lin, Chen & Ma 2010, arXiv:1009.5055).

Like the other fits, each public function validates its arguments in Python at trace time and
runs one compiled XLA program (the loop is a ``lax.while_loop`` with the stopping test on the
device), so they can be wrapped in ``jax.jit`` and ``jax.vmap``. Each runs on ``M / 2^k`` (a
power of two near ``max |M|``, exact to divide by) with its hyper-parameters rescaled to keep
the same solution, and scales the result back: ``f(c·M) = c·f(M)`` for data anywhere in the
float32 range, with the same reported error.
"""

from __future__ import annotations

import functools
from typing import Literal, Union

import jax
import jax.numpy as jnp

from tensorfact._checks import finite_part, poison
from tensorfact._checks import (Init, Precision, as_matrix, check_choice, check_key, check_mask,
                                check_nonneg_number, check_positive_int, check_positive_number,
                                count_nonfinite, is_traced, report_nonfinite)
from tensorfact._numerics import resolve_precision, safe_sqrt
from tensorfact.decomposition._common import (check_iteration_args, concrete_or_traced,
                                              random_orthonormal, solve_normal_equations)
from tensorfact.decomposition._loop import FitInfo, is_fixed_length, iterate
from tensorfact.decomposition._matrix_common import pow2_root, ratio, relative_error, thin_svd
from tensorfact.tensors import LowRankMatrix

__all__ = ["complete", "rpca"]

CompletionMethod = Literal["als", "soft_impute"]

#: ALS ridge used when ``l2 == 0``, relative to the mean squared row norm of the fixed factor.
ALS_DEFAULT_RIDGE = 1e-6
#: Soft-Impute's default threshold, as a fraction of ``σ_max(P_Ω(M))``.
SOFT_IMPUTE_DEFAULT_LAM = 1e-4
#: IALM: growth factor of the penalty ``μ`` and its cap relative to the initial ``μ``.
RPCA_RHO = 1.5
RPCA_MU_CAP = 1e7


def complete(m, mask, rank: int, *, key=None, method: CompletionMethod = "als",
             init: Union[Init, LowRankMatrix, None] = None, n_iter: int = 100,
             tol: float = 1e-8, l2: float = 0.0, lam=None, precision: Precision = "highest",
             return_info: bool = False):
    """Rank-``r`` completion of a partially observed matrix.

    Let ``Ω`` be the observed entries (``mask`` True) and ``P_Ω`` zero the others.

    ``method="als"`` minimises ``‖P_Ω(M − A Bᵀ)‖²_F + λ(‖A‖²_F + ‖B‖²_F)`` over ``A`` (``m × r``)
    and ``B`` (``n × r``) by alternating exact updates. Row ``i`` of ``A`` solves

        (Σ_{j:(i,j)∈Ω} b_j b_jᵀ + λI) a_i = Σ_{j:(i,j)∈Ω} M_ij b_j,

    all rows at once (the ``m`` Gram matrices are one product of the mask with the row-wise
    squares of ``B``, then a vmapped Cholesky solve); then ``B`` likewise from ``A``. With
    ``l2=0`` a small ridge ``λ = 1e-6 · ‖B‖²_F / n`` (``ALS_DEFAULT_RIDGE`` times the mean
    squared row norm of the fixed factor) is used instead, so that rows with fewer than ``r``
    observations (or none) still have a unique, finite solution; its bias is of relative
    order 1e-6. The start is the rank-``r`` truncated SVD of ``P_Ω(M)/p`` (``p`` the observed
    fraction, an unbiased estimate of ``M``; Keshavan, Montanari & Oh 2010), random
    (``init="random"``, needs ``key``: a random orthonormal ``B``), or a given
    :class:`LowRankMatrix` ``U diag(s) Vᵀ`` (``B = V |s|^½``). The result is re-expressed as
    an SVD from the thin factors: ``A = U_a S_a V_aᵀ``, ``B = U_b S_b V_bᵀ`` (thin SVDs) and
    ``S_a V_aᵀ V_b S_b = U S Vᵀ`` (an ``r × r`` SVD), so ``u = U_a U``, ``vt = Vᵀ U_bᵀ``; the
    dense matrix is never decomposed.

    ``method="soft_impute"`` runs Soft-Impute (Mazumder, Hastie & Tibshirani 2010) from
    ``Z = 0`` (or from a given :class:`LowRankMatrix`, a warm start as along a path of ``λ``):

        Z ← SVT_λ(P_Ω(M) + P_Ω⊥(Z)),   SVT_λ(X) = U max(Σ − λ, 0) Vᵀ  (X = U Σ Vᵀ),

    keeping the ``r`` leading components (a static shape). It decreases
    ``½‖P_Ω(M − Z)‖²_F + λ‖Z‖_*`` monotonically. Each iteration takes a dense SVD of the
    ``m × n`` matrix (cubic cost: fine for matrices of a few thousand rows; use ALS beyond).
    The default ``λ = 1e-4 · σ_max(P_Ω(M))`` (``SOFT_IMPUTE_DEFAULT_LAM``) keeps the shrinkage
    bias of the singular values small: on a rank-4 200 × 200 matrix with 30 % observed, the
    completion error is about 2e-4 (1.5e-3 at ``1e-3 · σ_max``). Exact recovery needs
    ``λ → 0``; the rank truncation is what keeps the iteration well posed at such small ``λ``
    (it is then close to hard-impute). For noisy data a larger ``λ`` trades bias for variance.

    Both methods stop when the relative error on the observed entries,
    ``‖P_Ω(M − X)‖_F / ‖P_Ω(M)‖_F``, changes by less than ``tol`` between iterations.

    Args:
      m: ``m × n`` matrix (float32 or float64; other real dtypes become float32; use
        ``jax.vmap`` for a batch). Entries where ``mask`` is False may hold anything, NaN
        included.
      mask: boolean (or 0/1) array of ``m.shape``, True where ``m`` is observed; ``None``
        means fully observed. Other values, and a mask observing nothing, are errors.
      rank: number of components ``r``, ``1 ≤ r ≤ min(m, n)``.
      key: ``jax.random`` key, needed for ``init="random"`` (a ``ValueError`` without it).
      method: ``"als"`` or ``"soft_impute"``.
      init: the start. ALS: ``"svd"`` (the default: of the rescaled zero-filled matrix),
        ``"random"`` or a :class:`LowRankMatrix` of ``m``'s shape and rank ``r``. Soft-Impute:
        ``Z = 0`` (the default) or a :class:`LowRankMatrix`. NaN or Inf in a given start is
        reported after an eager call.
      n_iter: maximum number of iterations (static: it sizes ``info.errors``).
      tol: stop when the observed-entry relative error changes by less than ``tol`` between
        iterations; the default ``1e-8`` runs, in float32, until it stops changing. A concrete
        ``0`` runs exactly ``n_iter`` iterations (a ``lax.scan``, differentiable).
      l2: ALS ridge penalty ``λ`` (finite, >= 0; ``0`` selects the small default above). ALS
        only.
      lam: Soft-Impute threshold ``λ`` (finite, >= 0; default above). Soft-Impute only.
      precision: XLA precision of the matrix products: ``"highest"`` (the default) is true
        float32; ``None`` is JAX's default (TF32 or bfloat16 passes on recent GPUs and TPUs).
      return_info: also return a :class:`FitInfo` (``errors``: the observed-entry relative
        error after each iteration; ``rel_error``: that of the returned matrix).

    Returns:
      A :class:`LowRankMatrix` with orthonormal ``u`` and ``vtᵀ`` and nonincreasing ``s``, or
      ``(LowRankMatrix, FitInfo)`` with ``return_info=True``.

    Example:
      >>> import jax, jax.numpy as jnp, tensorfact as tfa
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> m = jax.random.normal(k1, (60, 3)) @ jax.random.normal(k2, (3, 50))
      >>> mask = jax.random.bernoulli(k3, 0.5, m.shape)
      >>> approx = tfa.complete(jnp.where(mask, m, jnp.nan), mask, 3)
      >>> bool(tfa.relative_error(m, approx.to_dense()) < 1e-3)
      True

    Raises:
      ValueError: if ``m`` is not 2-D or has a dimension of size zero; ``mask`` has the wrong
        shape, values other than 0/1 or no True entry; ``rank`` is not a positive int (bools
        and floats included) or exceeds ``min(m, n)``; ``method``/``init`` is unknown, or a
        string ``init`` is given to Soft-Impute; ``init`` has the wrong shape or rank;
        ``l2``/``lam``/``tol`` is negative, NaN or infinite; ``lam`` is given with ALS or a
        nonzero ``l2`` with Soft-Impute; ``key`` is missing or malformed for
        ``init="random"``; or (eager calls) an observed entry of ``m`` or an entry of a given
        ``init`` is NaN or Inf.
    """
    m = as_matrix(m)
    mask = check_mask(mask, m.shape)
    rank = check_positive_int(rank, "rank")
    if rank > min(m.shape):
        raise ValueError(f"rank must be at most min(m.shape) = {min(m.shape)} for a matrix of "
                         f"shape {tuple(m.shape)}, got {rank}.")
    method = check_choice(method, CompletionMethod, "method")
    n_iter, tol = check_iteration_args(n_iter, tol)
    check_nonneg_number(l2, "l2")
    if lam is not None:
        check_nonneg_number(lam, "lam")
    resolve_precision(precision)
    if method == "als" and lam is not None:
        raise ValueError(f"lam is the Soft-Impute threshold; it does not apply to method='als' "
                         f"(use l2 for the ALS ridge), got lam={lam!r}.")
    if method == "soft_impute" and not is_traced(l2) and float(l2) != 0:
        raise ValueError(f"l2 is the ALS ridge; it does not apply to method='soft_impute' "
                         f"(use lam for the threshold), got l2={l2!r}.")
    init_matrix = None
    if isinstance(init, LowRankMatrix):
        if init.shape != tuple(m.shape) or init.rank != rank:
            raise ValueError(f"init must be a LowRankMatrix of shape {tuple(m.shape)} and rank "
                             f"{rank}, got shape {init.shape} and rank {init.rank}.")
        init_matrix, init = init, "given"
    elif method == "soft_impute":
        if init is not None:
            raise ValueError("Soft-Impute starts from Z = 0 or from a LowRankMatrix given as "
                             f"init, got init={init!r} (a start of method='als').")
        init = "zero"
    else:
        init = check_choice("svd" if init is None else init, Init, "init")
    if init == "random":
        check_key(key, 'for init="random"')
    else:
        if key is not None:
            check_key(key, 'only for init="random"')
        key = None
    fixed = is_fixed_length(tol)
    tol = 0.0 if fixed else concrete_or_traced(tol)
    if lam is not None:
        lam = concrete_or_traced(lam)
    result, (n_nonfinite, n_init_nonfinite) = _complete_fit(
        m, mask, key, init_matrix, concrete_or_traced(l2), lam, tol, rank=rank, n_iter=n_iter,
        fixed=fixed, method=method, init=init, precision=precision,
        return_info=bool(return_info))
    report_nonfinite(n_nonfinite, "m (observed entries)", maskable=True)
    report_nonfinite(n_init_nonfinite, "init")
    return result


@functools.partial(jax.jit, static_argnames=(
    "rank", "n_iter", "fixed", "method", "init", "precision", "return_info"))
def _complete_fit(m, mask, key, init_matrix, l2, lam, tol, *, rank, n_iter, fixed, method,
                  init, precision, return_info):
    hp = resolve_precision(precision)
    m, n_nonfinite = finite_part(m, mask)  # LAPACK's SVD does not return on Inf
    n_init_nonfinite = jnp.zeros((), jnp.int32)
    if init_matrix is not None:
        n_init_nonfinite = sum(count_nonfinite(leaf) for leaf in init_matrix)
    if mask is None:
        mask = jnp.ones(m.shape, bool)
    # P_Ω(M) (which also removes NaN placeholders) on the scale of 1: M = σ M', A Bᵀ = σ A'B'ᵀ
    # turns the ridge λ into λ/σ and the Soft-Impute threshold λ into λ/σ.
    scale, root = pow2_root(m, mask)
    m0 = jnp.where(mask, m, 0) / scale
    maskf = mask.astype(m.dtype)
    tol = 0 if fixed else tol

    if method == "als":
        l2 = jnp.asarray(l2, m.dtype) / scale
        if init == "given":
            u, s, vt = init_matrix
            b = vt.T.astype(m.dtype) * (safe_sqrt(jnp.abs(s)).astype(m.dtype) / root)
        else:
            b = _als_start(m0, maskf, rank, key, init)

        def step(state):
            _, b = state
            a = _als_half(m0, maskf, b, l2, precision)
            b = _als_half(m0.T, maskf.T, a, l2, precision)
            return (a, b), relative_error(m0, jnp.matmul(a, b.T, precision=hp), mask)

        a = jnp.zeros((m.shape[0], rank), m.dtype)
        (a, b), n_done, errors, converged = iterate(step, (a, b), n_iter=n_iter, tol=tol)
        u, s, vt = _svd_of_product(a, b, precision)
    else:
        if lam is None:
            lam = SOFT_IMPUTE_DEFAULT_LAM * jnp.linalg.svd(m0, compute_uv=False)[0]
        else:
            lam = jnp.asarray(lam, m.dtype) / scale
        lam = lam.astype(m.dtype)

        def step(state):
            u, s, vt = state
            z = jnp.matmul(u * s, vt, precision=hp)
            u, s, vt = _svt(jnp.where(mask, m0, z), lam, rank)
            return (u, s, vt), relative_error(m0, jnp.matmul(u * s, vt, precision=hp), mask)

        if init == "given":
            u, s, vt = (leaf.astype(m.dtype) for leaf in init_matrix)
            state = (u, s / scale, vt)
        else:
            state = (jnp.zeros((m.shape[0], rank), m.dtype), jnp.zeros((rank,), m.dtype),
                     jnp.zeros((rank, m.shape[1]), m.dtype))
        (u, s, vt), n_done, errors, converged = iterate(step, state, n_iter=n_iter, tol=tol)
    result = poison(LowRankMatrix(u, s * scale, vt), n_nonfinite)
    checks = (n_nonfinite, n_init_nonfinite)
    if not return_info:
        return result, checks
    rel = relative_error(m0, jnp.matmul(u * s, vt, precision=hp), mask)
    return (result, FitInfo(n_done, errors, rel, converged)), checks


def _als_start(m0, maskf, rank, key, init):
    """The starting ``B`` (the first half-step solves ``A`` from it)."""
    rows, cols = m0.shape
    if init == "random":
        return random_orthonormal(key, cols, rank, m0.dtype)
    p = jnp.maximum(jnp.mean(maskf), jnp.finfo(m0.dtype).tiny)
    _, s, vt = thin_svd(m0 / p)
    return vt[:rank].T * safe_sqrt(s[:rank])


def _als_half(m0, maskf, b, l2, precision):
    """Row-wise ridge least squares: the ``A`` minimising ``‖P_Ω(M − A Bᵀ)‖² + λ‖A‖²``."""
    cols, r = b.shape
    hp = resolve_precision(precision)
    numer = jnp.matmul(m0, b, precision=hp)  # m0 is zero off Ω
    squares = (b[:, :, None] * b[:, None, :]).reshape(cols, r * r)
    gram = jnp.matmul(maskf, squares, precision=hp).reshape(-1, r, r)
    # The floor eps² (negligible on data scaled to 1) keeps (gram + ridge)⁻¹ and its
    # derivative finite when B is zero (zero data): a floor of `tiny` would square to 0.
    floor = jnp.finfo(b.dtype).eps ** 2
    default = ALS_DEFAULT_RIDGE * jnp.sum(b * b) / cols
    ridge = jnp.where(l2 > 0, l2, default) + floor
    return solve_normal_equations(numer, gram, ridge, precision)


def _svd_of_product(a, b, precision):
    """``A Bᵀ`` as an SVD ``(u, s, vt)`` without forming it: from thin SVDs ``A = U_a S_a V_aᵀ``,
    ``B = U_b S_b V_bᵀ`` and the SVD of the ``r × r`` core ``S_a V_aᵀ V_b S_b = U S Vᵀ``,
    ``u = U_a U`` and ``vt = Vᵀ U_bᵀ``. (QRs of ``A`` and ``B`` would do as well, but their
    derivative is NaN where a factor is rank-deficient, as ``A = 0`` is for zero data.)"""
    hp = resolve_precision(precision)
    ua, sa, vta = thin_svd(a)
    ub, sb, vtb = thin_svd(b)
    core = jnp.matmul(sa[:, None] * vta, vtb.T * sb, precision=hp)
    u, s, vt = thin_svd(core)
    return jnp.matmul(ua, u, precision=hp), s, jnp.matmul(vt, ub.T, precision=hp)


def _svt(x, threshold, rank=None):
    """Singular value soft-thresholding ``U max(Σ − τ, 0) Vᵀ``, optionally truncated to ``rank``
    components; returns ``(U, s, Vᵀ)``."""
    u, s, vt = thin_svd(x)
    if rank is not None:
        u, s, vt = u[:, :rank], s[:rank], vt[:rank]
    return u, jnp.maximum(s - threshold, 0), vt


def _shrink(x, threshold):
    """Entrywise soft-thresholding ``sign(x) max(|x| − τ, 0)``."""
    return jnp.sign(x) * jnp.maximum(jnp.abs(x) - threshold, 0)


def rpca(m, *, lam=None, mu=None, n_iter: int = 500, tol: float = 1e-6,
         precision: Precision = "highest", return_info: bool = False):
    """Robust PCA: ``M = L + S`` with ``L`` low rank and ``S`` sparse, by principal component
    pursuit (Candès, Li, Ma & Wright, "Robust principal component analysis?", JACM 2011),

        min_{L,S} ‖L‖_* + λ‖S‖₁   subject to   L + S = M,

    solved by the inexact augmented Lagrangian method (IALM; Lin, Chen & Ma 2010,
    arXiv:1009.5055, Algorithm 5). With the multiplier ``Y`` and penalty ``μ``:

        L ← SVT_{1/μ}(M − S + Y/μ)          (singular value soft-thresholding)
        S ← shrink_{λ/μ}(M − L + Y/μ)       (entrywise soft-thresholding)
        Y ← Y + μ (M − L − S)
        μ ← min(ρ μ, μ̄)

    starting from ``L = S = 0``, ``Y = M / max(‖M‖₂, ‖M‖_∞/λ)``, with ``ρ = 1.5`` and
    ``μ̄ = 1e7 · μ₀`` as in Lin et al. A splitting method, it stops on a residual rule: when
    ``‖M − L − S‖_F / ‖M‖_F < tol``. Each iteration takes a dense SVD. The problem is
    homogeneous (``λ`` is scale-free, ``μ`` scales as ``1/‖M‖``): the iteration runs on
    ``M / 2^k`` with ``μ₀ · 2^k`` and scales ``L`` and ``S`` back, so ``rpca(c·M)`` is
    ``c·rpca(M)``.

    Args:
      m: ``m × n`` matrix (float32 or float64; other real dtypes become float32; use
        ``jax.vmap`` for a batch), all finite.
      lam: weight ``λ`` of the sparse term (finite, >= 0); default ``1/sqrt(max(m, n))``
        (Candès et al.).
      mu: initial penalty ``μ₀`` (finite, > 0); default ``1.25 / ‖M‖₂`` (Lin et al.).
      n_iter: maximum number of iterations (static: it sizes ``info.errors``).
      tol: stop when the relative residual ``‖M − L − S‖_F / ‖M‖_F`` falls below ``tol``
        (default ``1e-6``); a concrete ``0`` runs exactly ``n_iter`` iterations.
      precision: XLA precision of the matrix products: ``"highest"`` (the default) is true
        float32; ``None`` is JAX's default (TF32 or bfloat16 passes on recent GPUs and TPUs).
      return_info: also return a :class:`FitInfo` whose ``errors`` are the relative residuals
        after each iteration, ``rel_error`` the final one (the relative error of ``L + S``)
        and ``converged`` whether it fell below ``tol``.

    Returns:
      ``(low_rank, sparse)`` dense arrays, or ``((low_rank, sparse), FitInfo)`` with
      ``return_info=True``.

    Example:
      >>> import jax, jax.numpy as jnp, tensorfact as tfa
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> low = jax.random.normal(k1, (60, 2)) @ jax.random.normal(k2, (2, 60))
      >>> sparse = jnp.where(jax.random.bernoulli(k3, 0.05, low.shape), 20.0, 0.0)
      >>> (l, s), info = tfa.rpca(low + sparse, return_info=True)
      >>> bool(jnp.linalg.norm(l - low) / jnp.linalg.norm(low) < 1e-3), bool(info.converged)
      (True, True)

    Raises:
      ValueError: if ``m`` is not 2-D or has a dimension of size zero, ``lam``/``tol`` is
        negative, NaN or infinite, ``mu`` is not a finite number > 0, ``n_iter`` is not a
        positive int, or (eager calls) ``m`` holds NaN or Inf.
    """
    m = as_matrix(m)
    n_iter, tol = check_iteration_args(n_iter, tol)
    resolve_precision(precision)
    if lam is not None:
        check_nonneg_number(lam, "lam")
        lam = concrete_or_traced(lam)
    if mu is not None:
        check_positive_number(mu, "mu")
        mu = concrete_or_traced(mu)
    fixed = is_fixed_length(tol)
    tol = 0.0 if fixed else concrete_or_traced(tol)
    result, n_nonfinite = _rpca_fit(m, lam, mu, tol, n_iter=n_iter, fixed=fixed,
                                    precision=precision, return_info=bool(return_info))
    report_nonfinite(n_nonfinite, "m")
    return result


@functools.partial(jax.jit, static_argnames=("n_iter", "fixed", "precision", "return_info"))
def _rpca_fit(m, lam, mu, tol, *, n_iter, fixed, precision, return_info):
    m, n_nonfinite = finite_part(m)  # LAPACK's SVD does not return on Inf
    dtype = m.dtype
    hp = resolve_precision(precision)
    scale, _ = pow2_root(m)
    m = m / scale
    if lam is None:
        lam = 1.0 / jnp.sqrt(max(m.shape))
    lam = jnp.asarray(lam, dtype)
    norm_fro_sq = jnp.sum(m * m)
    norm_two = jnp.linalg.svd(m, compute_uv=False)[0]
    # On the scaled data ‖M‖₂ ≥ max|M| > 1/2 unless M = 0, where any μ₀ gives L = S = 0:
    # no division by a clamped `tiny`, whose derivative would be NaN.
    mu0 = 1.25 / jnp.where(norm_two > 0, norm_two, 1) if mu is None else (
        jnp.asarray(mu, dtype) * scale)
    mu_cap = RPCA_MU_CAP * mu0
    # Y₀ = M / max(‖M‖₂, ‖M‖_∞/λ) = M · min(1/‖M‖₂, λ/‖M‖_∞)
    coef = jnp.minimum(ratio(1.0, norm_two), ratio(lam, jnp.max(jnp.abs(m))))
    y = m * jnp.where(jnp.isfinite(coef), coef, 0)  # infinite only for M = 0

    def step(state):
        low, sparse, y, mu = state
        u, s, vt = _svt(m - sparse + y / mu, 1.0 / mu)
        low = jnp.matmul(u * s, vt, precision=hp)
        sparse = _shrink(m - low + y / mu, lam / mu)
        resid = m - low - sparse
        y = y + mu * resid
        mu = jnp.minimum(RPCA_RHO * mu, mu_cap)
        return (low, sparse, y, mu), safe_sqrt(ratio(jnp.sum(resid * resid), norm_fro_sq))

    state = (jnp.zeros_like(m), jnp.zeros_like(m), y, jnp.asarray(mu0, dtype))
    state, n_done, errors, converged = iterate(step, state, n_iter=n_iter,
                                               tol=0 if fixed else tol, stop="below")
    low, sparse = state[0], state[1]
    result = poison((low * scale, sparse * scale), n_nonfinite)
    if not return_info:
        return result, n_nonfinite
    rel = relative_error(m, low + sparse)
    return (result, FitInfo(n_done, errors, rel, converged)), n_nonfinite
