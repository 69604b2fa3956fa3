"""Nonnegative matrix factorization (NMF) ``M ≈ W H`` with ``W ≥ 0`` and ``H ≥ 0``.

Minimises, over ``W`` (``I × R``) and ``H`` (``R × J``), both elementwise nonnegative,

    ½‖Ω ⊙ (M − W H)‖²_F + l1 (‖W‖₁ + ‖H‖₁) + ½ l2 (‖W‖²_F + ‖H‖²_F),

where ``Ω`` is the observation mask (all ones without ``mask``). Two algorithms:

* ``"hals"`` (hierarchical ALS; Cichocki & Phan 2009): each column ``w_r`` of ``W`` (and, by
  transposition, each row of ``H``) is replaced by the exact minimiser with the others fixed,

      w_r ← max(0, ((M Hᵀ)_r − Σ_{s≠r} w_s (H Hᵀ)_sr − l1) / ((H Hᵀ)_rr + l2)).

  ``M Hᵀ`` and ``H Hᵀ`` cost ``O(IJR)`` and are reused for several cheap passes over the
  columns (the accelerated HALS of Gillis & Glineur 2012, with a fixed number of inner
  passes), so every step can only lower the objective. With a mask every row of ``W`` has its
  own Gram matrix ``Σ_j Ω_ij h_j h_jᵀ`` (and every column of ``H`` likewise), which makes each
  update exact on the observed entries.
* ``"mu"`` (multiplicative updates; Lee & Seung 2001):

      W ← W ⊙ ((Ω⊙M)Hᵀ) / ((Ω⊙WH)Hᵀ + l1 + l2 W),
      H ← H ⊙ (Wᵀ(Ω⊙M)) / (Wᵀ(Ω⊙WH) + l1 + l2 H),

  where an entry whose denominator is below ``ε`` (the smallest positive normal number of the
  dtype: a dead component) is set to 0 rather than divided by ``ε``, whose derivative is NaN.
  MU is simple but converges much more slowly than HALS, and an entry that reaches zero stays
  zero.

Both run on ``M / 2^{2k}`` (a power of two near ``max |M|``) with each factor scaled back by
``2^k``, which is exact, and with the penalties rescaled to keep the same minimiser, so that
``nmf(c·M) = c·nmf(M)`` for data anywhere in the float32 range. Every norm, square root and
division on the differentiable path is safe at zero, so ``jax.grad`` through a fit (NNDSVD
start included) is finite on data with zero rows, columns or parts.
"""

from __future__ import annotations

import functools
from typing import Literal, Union

import jax
import jax.numpy as jnp

from tensorfact._checks import finite_part, poison
from tensorfact._checks import (Precision, as_matrix, check_choice, check_key, check_mask,
                                check_nonneg_number, check_positive_int, count_nonfinite,
                                is_traced, report_nonfinite)
from tensorfact._numerics import resolve_precision, safe_divide, safe_norm, safe_sqrt
from tensorfact.decomposition._common import (check_iteration_args, concrete_or_traced,
                                              hals_columns, positive_floor)
from tensorfact.decomposition._loop import FitInfo, is_fixed_length, iterate, refine_error
from tensorfact.decomposition._matrix_common import (error_from_norms, pow2_root,
                                                     relative_error, thin_svd, times_root_power)
from tensorfact.tensors import LowRankMatrix

__all__ = ["nmf"]

NMFInit = Literal["nndsvd", "nndsvda", "random"]
NMFMethod = Literal["hals", "mu"]


def nmf(m, rank: int, *, key=None, init: Union[NMFInit, LowRankMatrix, None] = None,
        method: NMFMethod = "hals", n_iter: int = 200, tol: float = 1e-8, mask=None,
        l1: float = 0.0, l2: float = 0.0, precision: Precision = "highest",
        return_info: bool = False):
    """Nonnegative matrix factorization ``m ≈ W H`` by HALS or multiplicative updates.

    Minimises ``½‖Ω ⊙ (m − W H)‖² + l1 (‖W‖₁ + ‖H‖₁) + ½ l2 (‖W‖² + ‖H‖²)`` over
    ``W ≥ 0`` (``I × R``) and ``H ≥ 0`` (``R × J``), ``Ω`` being the mask (all ones by
    default).

    ``method="hals"`` (Cichocki & Phan, IEICE Trans. Fundamentals 2009) updates one column of
    ``W`` at a time with its exact nonnegative minimiser,
    ``w_r ← max(0, ((m Hᵀ)_r − Σ_{s≠r} w_s (H Hᵀ)_sr − l1) / ((H Hᵀ)_rr + l2))``, and the rows
    of ``H`` likewise; each factor update makes several passes over the columns from one
    product with ``m`` (Gillis & Glineur, Neural Computation 2012). It never increases the
    objective. ``method="mu"`` uses the multiplicative updates of Lee & Seung (NIPS 2001),
    ``W ← W ⊙ m Hᵀ / (WHHᵀ + l1 + l2 W)`` and ``H ← H ⊙ Wᵀm / (WᵀWH + l1 + l2 H)`` (an entry
    whose denominator is below the dtype's smallest normal number is set to 0), with ``m``
    and ``WH`` restricted to the observed entries when a mask is given.

    The fit runs on ``m / 2^{2k}`` (``2^{2k}`` within a factor of two of ``max |m|``), with
    ``l1`` and ``l2`` rescaled so that the minimiser is the same, and multiplies ``W`` and
    ``H`` by ``2^k``: ``nmf(c·m)`` is ``c·nmf(m)`` (up to rounding) for data of any magnitude.

    Args:
      m: nonnegative 2-D array (float32 or float64; other real dtypes are cast to float32;
        use ``jax.vmap`` for a batch). Negative or NaN/Inf observed entries raise in an eager
        call; under ``jax.jit`` / ``jax.vmap`` the data are abstract and are *not* checked
        (negative data then give a meaningless, though still nonnegative, fit).
      rank: number of components ``R`` (a positive int). It may exceed ``min(I, J)`` except
        with ``init="nndsvd"``/``"nndsvda"``, which need ``R`` singular vectors.
      key: ``jax.random`` key; needed for ``init="random"`` (a ``ValueError`` without it).
      init: ``"nndsvd"`` (Boutsidis & Gallopoulos, Pattern Recognition 2008):
        deterministic, from the ``R`` leading singular triplets, the first as ``|u₁|, |v₁|``
        and each other one replaced by the larger (in ``‖x₊‖‖y₊‖`` vs ``‖x₋‖‖y₋‖``) of its
        positive or negative parts; the zeros this leaves are kept as zeros (plain NNDSVD,
        not the NNDSVDa/ar variants that fill them). Missing entries count as 0 in that SVD.
        ``"nndsvda"``: the same with its zeros filled, as multiplicative updates can never
        move an entry away from zero. Boutsidis & Gallopoulos fill with the mean ``μ`` of the
        data, which has the units of ``m`` where the factors have those of its square root;
        here the fill is ``sqrt(μ/R)`` (``μ`` over the observed entries), so that ``W H`` is
        ``μ`` where only filled entries meet and the start scales with the data. The default
        (``None``) is ``"nndsvd"`` for HALS and ``"nndsvda"`` for MU.
        ``"random"``: entries uniform on ``[0, 2·sqrt(mean(m)/R))`` (so that ``W H`` has the
        data's mean on average; the mean is over the observed entries).
        A :class:`LowRankMatrix` of shape ``m.shape`` and rank ``R``: starts from
        ``W, H = init.factors()``, with negative entries clipped to 0; NaN or Inf in it is
        reported after an eager call.
      method: ``"hals"`` (default) or ``"mu"``.
      n_iter: maximum number of iterations, each updating ``W`` then ``H`` (static: it sizes
        ``info.errors``).
      tol: stop when the relative error changes by less than ``tol`` between iterations;
        the default ``1e-8`` runs, in float32, until the error stops changing. A concrete
        ``0`` runs exactly ``n_iter`` iterations as a ``lax.scan`` (differentiable);
        otherwise a ``lax.while_loop`` tests it on the device.
      mask: optional boolean (or 0/1) array of ``m.shape``, True (1) where ``m`` is observed.
        Missing entries may hold anything (NaN included) and are ignored by the fit (weighted
        HALS with per-row Gram matrices, or masked MU). Other values and a mask observing
        nothing are errors.
      l1: sparsity penalty ``l1 (‖W‖₁ + ‖H‖₁)`` (finite, >= 0); larger values give more exact
        zeros.
      l2: ridge penalty ``½ l2 (‖W‖² + ‖H‖²)`` (finite, >= 0).
      precision: XLA precision of the matrix products: ``"highest"`` (the default) is true
        float32; ``None`` is JAX's default (TF32 or bfloat16 passes on recent GPUs and TPUs).
      return_info: also return a :class:`FitInfo`. Its ``errors`` are the relative errors
        ``‖Ω⊙(m − WH)‖/‖Ω⊙m‖`` of the data term only: with ``l1 = l2 = 0`` HALS makes them
        non-increasing (up to rounding); with penalties the penalised objective decreases
        instead.

    Returns:
      ``LowRankMatrix(W, ones(R), H)`` (so ``.to_dense()`` is ``W H`` and
      ``w, h = result.factors()``), or ``(LowRankMatrix, FitInfo)`` with ``return_info=True``.

    Example:
      >>> import jax, jax.numpy as jnp, tensorfact as tfa
      >>> kw, kh = jax.random.split(jax.random.key(0))
      >>> m = jax.random.uniform(kw, (30, 4)) @ jax.random.uniform(kh, (4, 20))
      >>> approx, info = tfa.nmf(m, 4, n_iter=500, tol=0, return_info=True)
      >>> w, h = approx.factors()
      >>> bool((w >= 0).all() and (h >= 0).all())
      True
      >>> bool(info.rel_error < 1e-2)
      True
      >>> big, big_info = tfa.nmf(1e30 * m, 4, n_iter=500, tol=0, return_info=True)
      >>> bool(abs(big_info.rel_error - info.rel_error) < 1e-5)
      True

    Raises:
      ValueError: for ``m`` not 2-D or with a dimension of size zero, a rank that is not a
        positive int (a bool or float included), a rank above ``min(m.shape)`` with an
        NNDSVD init, an unknown ``method`` or ``init``, an ``init`` or mask of the wrong
        shape, a mask holding values other than 0/1 or observing nothing, negative, NaN or
        infinite ``tol``/``l1``/``l2``, a missing or malformed key for ``init="random"``, or
        (eager calls only) negative or NaN/Inf observed entries of ``m`` or NaN/Inf in a
        given ``init``.
    """
    m = as_matrix(m)
    rank = check_positive_int(rank, "rank")
    n_iter, tol = check_iteration_args(n_iter, tol)
    check_nonneg_number(l1, "l1")
    check_nonneg_number(l2, "l2")
    method = check_choice(method, NMFMethod, "method")
    mask = check_mask(mask, m.shape)
    resolve_precision(precision)
    if isinstance(init, LowRankMatrix):
        if init.shape != tuple(m.shape) or init.rank != rank:
            raise ValueError(f"init must be a LowRankMatrix of shape {tuple(m.shape)} and rank "
                             f"{rank}, got shape {init.shape} and rank {init.rank}.")
        init_matrix, init_kind = init, "given"
    else:
        if init is None:
            init = "nndsvda" if method == "mu" else "nndsvd"
        init_kind = check_choice(init, NMFInit, "init")
        init_matrix = None
        if init_kind == "random":
            check_key(key, 'for init="random"')
        elif rank > min(m.shape):
            raise ValueError(f'rank ({rank}) must be at most min(m.shape) = {min(m.shape)} '
                             f'(shape {tuple(m.shape)}) for init="{init_kind}", which needs that '
                             'many singular vectors; use init="random" for a larger rank.')
    if init_kind != "random":
        if key is not None:
            check_key(key, 'only for init="random"')
        key = None
    fixed = is_fixed_length(tol)
    tol = 0.0 if fixed else concrete_or_traced(tol)
    result, (n_nonfinite, n_init_nonfinite, n_negative, smallest) = _nmf_fit(
        m, mask, key, init_matrix, concrete_or_traced(l1), concrete_or_traced(l2), tol,
        rank=rank, n_iter=n_iter, fixed=fixed, init=init_kind, method=method,
        precision=precision, return_info=bool(return_info))
    report_nonfinite(n_nonfinite, "m", maskable=True)  # counted in the fit: no extra pass
    report_nonfinite(n_init_nonfinite, "init")
    if not is_traced(n_negative) and int(n_negative):
        raise ValueError(f"m must be nonnegative: it has {int(n_negative)} negative observed "
                         f"value(s), the smallest {float(smallest)!r}.")
    return result


@functools.partial(jax.jit, static_argnames=(
    "rank", "n_iter", "fixed", "init", "method", "precision", "return_info"))
def _nmf_fit(m, mask, key, init_matrix, l1, l2, tol, *, rank, n_iter, fixed, init, method,
             precision, return_info):
    dtype = m.dtype
    hi = resolve_precision(precision)
    m, n_nonfinite = finite_part(m, mask)  # LAPACK's SVD (NNDSVD) does not return on Inf
    observed = jnp.ones(m.shape, bool) if mask is None else mask
    n_negative = jnp.sum(observed & (m < 0), dtype=jnp.int32)
    smallest = jnp.min(jnp.where(observed, m, jnp.inf))
    if mask is not None:
        m = jnp.where(mask, m, 0)
    maskf = None if mask is None else mask.astype(dtype)

    # Fit m / root² with W / root and H / root: the penalties l1 ρ (‖W'‖₁ + ‖H'‖₁) and
    # ½ l2 ρ² (‖W'‖² + ‖H'‖²) of the original objective, divided by its scale ρ⁴, become
    # l1 / ρ³ and l2 / ρ².
    scale, root = pow2_root(m)
    m = m / scale
    biggest = jnp.finfo(dtype).max
    l1 = jnp.minimum(times_root_power(l1, root, -3), biggest)
    l2 = jnp.minimum(times_root_power(l2, root, -2), biggest)

    n_init_nonfinite = jnp.zeros((), jnp.int32)
    if init == "given":
        w, h = init_matrix.factors()
        n_init_nonfinite = count_nonfinite(w) + count_nonfinite(h)
        w = jnp.maximum(w.astype(dtype) / root, 0)
        h = jnp.maximum(h.astype(dtype) / root, 0)
    elif init == "random":
        n_obs = m.size if mask is None else jnp.maximum(jnp.sum(maskf), 1)
        level = 2 * safe_sqrt(jnp.sum(m) / n_obs / rank)
        kw, kh = jax.random.split(key)
        w = level * jax.random.uniform(kw, (m.shape[0], rank), dtype)
        h = level * jax.random.uniform(kh, (rank, m.shape[1]), dtype)
    else:
        w, h = _nndsvd(m, rank)
        if init == "nndsvda":
            n_obs = m.size if mask is None else jnp.maximum(jnp.sum(maskf), 1)
            fill = safe_sqrt(jnp.sum(m) / n_obs / rank)
            w, h = jnp.where(w == 0, fill, w), jnp.where(h == 0, fill, h)

    update = functools.partial(_hals_step if method == "hals" else _mu_step, l1=l1, l2=l2,
                               precision=precision)
    if mask is None:
        norm_m_sq = jnp.vdot(m, m, precision=hi)

        def step(state):
            w, h, (inner, approx_sq) = update(m, None, *state)
            estimate = error_from_norms(norm_m_sq, inner, approx_sq)
            err = refine_error(estimate, lambda: relative_error(m, jnp.matmul(w, h, precision=hi)))
            return (w, h), err
    else:
        def step(state):
            w, h, _ = update(m, maskf, *state)
            return (w, h), relative_error(m, jnp.matmul(w, h, precision=hi), mask)

    state, n_done, errors, converged = iterate(step, (w, h), n_iter=n_iter,
                                               tol=0 if fixed else tol)
    w, h = state
    result = poison(LowRankMatrix(w * root, jnp.ones((rank,), dtype), h * root), n_nonfinite)
    checks = (n_nonfinite, n_init_nonfinite, n_negative, smallest)
    if not return_info:
        return result, checks
    rel = relative_error(m, jnp.matmul(w, h, precision=hi), mask)
    return (result, FitInfo(n_done, errors, rel, converged)), checks


def _nndsvd(m, rank):
    """NNDSVD (Boutsidis & Gallopoulos 2008), zeros left as zeros.

    Differentiable everywhere the SVD is (through :func:`thin_svd`): the norms of the
    positive and negative parts are often exactly zero, so they are safe norms and the
    divisions by them safe divisions.
    """
    u, s, vt = thin_svd(m)
    u, s, v = u[:, :rank], s[:rank], vt[:rank].T
    up, un = jnp.maximum(u, 0), jnp.maximum(-u, 0)
    vp, vn = jnp.maximum(v, 0), jnp.maximum(-v, 0)
    nup, nun = safe_norm(up, axis=0), safe_norm(un, axis=0)
    nvp, nvn = safe_norm(vp, axis=0), safe_norm(vn, axis=0)
    mp, mn = nup * nvp, nun * nvn
    use_pos = mp >= mn
    x = safe_divide(jnp.where(use_pos, up, un), jnp.where(use_pos, nup, nun))
    y = safe_divide(jnp.where(use_pos, vp, vn), jnp.where(use_pos, nvp, nvn))
    sigma = jnp.where(use_pos, mp, mn)
    # the leading pair of a nonnegative matrix has one sign: |u₁|, |v₁| with weight 1
    x = x.at[:, 0].set(jnp.abs(u[:, 0]))
    y = y.at[:, 0].set(jnp.abs(v[:, 0]))
    sigma = sigma.at[0].set(1.0)
    weight = safe_sqrt(s * sigma)
    return x * weight, (y * weight).T


def _hals_step(m, maskf, w, h, *, l1, l2, precision):
    """One HALS iteration (``W`` then ``H``). Returns ``w, h, (⟨m, WH⟩, ‖WH‖²)`` (the error
    terms are only meaningful without a mask)."""
    hi = resolve_precision(precision)
    # W: columns solve  min ½‖m − W H‖² + l1‖W‖₁ + ½ l2‖W‖²; l1 enters as m Hᵀ − l1 (exact)
    numer = jnp.matmul(m, h.T, precision=hi)
    if maskf is None:
        gram = jnp.matmul(h, h.T, precision=hi)
    else:
        gram = jnp.einsum("ij,rj,sj->irs", maskf, h, h, precision=hi)
    w = hals_columns(w, numer - l1, gram, l2, precision)
    # H, by transposition
    numer = jnp.matmul(m.T, w, precision=hi)
    if maskf is None:
        gram_w = jnp.matmul(w.T, w, precision=hi)
    else:
        gram_w = jnp.einsum("ij,ir,is->jrs", maskf, w, w, precision=hi)
    ht = hals_columns(h.T, numer - l1, gram_w, l2, precision)
    if maskf is None:
        inner = jnp.sum(numer * ht)
        approx_sq = jnp.sum(gram_w * jnp.matmul(ht.T, ht, precision=hi))
    else:
        inner = approx_sq = jnp.zeros((), m.dtype)
    return w, ht.T, (inner, approx_sq)


def _mu_step(m, maskf, w, h, *, l1, l2, precision):
    """One multiplicative-update iteration (``W`` then ``H``), Lee & Seung 2001."""
    hi = resolve_precision(precision)
    floor = positive_floor(m.dtype)
    if maskf is None:
        numer = jnp.matmul(m, h.T, precision=hi)
        denom = jnp.matmul(w, jnp.matmul(h, h.T, precision=hi), precision=hi)
    else:
        numer = jnp.matmul(m, h.T, precision=hi)  # m is zero off the mask
        approx = maskf * jnp.matmul(w, h, precision=hi)
        denom = jnp.matmul(approx, h.T, precision=hi)
    w = w * _floored_ratio(numer, denom + l1 + l2 * w, floor)
    numer = jnp.matmul(w.T, m, precision=hi)
    if maskf is None:
        gram_w = jnp.matmul(w.T, w, precision=hi)
        denom = jnp.matmul(gram_w, h, precision=hi)
    else:
        approx = maskf * jnp.matmul(w, h, precision=hi)
        denom = jnp.matmul(w.T, approx, precision=hi)
    h = h * _floored_ratio(numer, denom + l1 + l2 * h, floor)
    if maskf is None:
        inner = jnp.sum(numer * h)
        approx_sq = jnp.sum(gram_w * jnp.matmul(h, h.T, precision=hi))
    else:
        inner = approx_sq = jnp.zeros((), m.dtype)
    return w, h, (inner, approx_sq)


def _floored_ratio(numer, denom, floor):
    """The multiplicative factor ``numer / denom``, taken as 0 where ``denom ≤ floor``.

    MU's ``max(denom, ε)`` guard divides by ``ε`` there, and the derivative of that division
    (``numer / ε²``, with ``ε²`` underflowing to 0) is NaN. A denominator ``(W H Hᵀ)_ir ≥
    w_ir (H Hᵀ)_rr`` that small means a dead component (``H``'s row ``r`` is zero, and so is
    the numerator ``(m Hᵀ)_ir``): its entry is set to 0, as the guard also gave in practice.
    """
    ok = denom > floor
    return jnp.where(ok, numer / jnp.where(ok, denom, 1), 0)
