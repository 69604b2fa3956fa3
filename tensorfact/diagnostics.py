"""How many components? Diagnostics of CP models and a scan over ranks.

* :func:`core_consistency` — CORCONDIA (Bro & Kiers, J. Chemometrics 17:274, 2003): how far
  the least-squares Tucker core of the data, given the CP factors, is from the superdiagonal
  core a CP model assumes. Near 100: the components are trilinear; falling sharply: too many.
* :func:`congruence`, :func:`factor_match_score` — how alike two CP models are, up to the
  order, signs and scaling of their components (Tomasi & Bro 2006; Acar, Dunlavy & Kolda 2011).
* :func:`degeneracy` — the most negative congruence between two components of one model
  (Krijnen, Dijkstra & Stegeman 2008): near −1, two components cancel.
* :func:`explained_variance` — each component's share of ``‖x‖²`` and the model's total.
* :func:`rank_scan` — fits CP at several ranks from several starts and tabulates all the above.

Everything but :func:`factor_match_score` (a Hungarian assignment on the host) and
:func:`rank_scan` (which returns host-side tables and calls it no more than is jittable, one
compiled program per rank) is a pure, jittable and vmappable function.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tensorfact import algebra
from tensorfact._checks import (as_float_array, check_key, check_mask, check_nonneg_int,
                                check_nonneg_number, check_positive_int, count_nonfinite,
                                is_traced, report_nonfinite)
from tensorfact._numerics import pow2_scale, safe_divide, safe_norm
from tensorfact.decomposition import cp as _fit_cp
from tensorfact.decomposition._common import check_iteration_args
from tensorfact.decomposition._loop import DEFAULT_TOL, component_congruence, min_congruence
from tensorfact.decomposition._sweeps import cp_initial_factors, scaled_to_data
from tensorfact.tensors import CPTensor

__all__ = ["core_consistency", "congruence", "factor_match_score", "degeneracy",
           "explained_variance", "ExplainedVariance", "rank_scan", "RankScan"]


# ------------------------------------------------------------------------------------------
# checks and the scale-free form of a CP model

def _check_cp(model, name: str) -> CPTensor:
    if not isinstance(model, CPTensor):
        raise TypeError(f"{name} must be a CPTensor, got {type(model).__name__}.")
    return model


def _check_same_shape(model: CPTensor, shape, name: str, other: str = "x") -> None:
    if tuple(model.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(model.shape)}, but {other} has shape "
                         f"{tuple(shape)}.")


def _unit_form(model: CPTensor):
    """``(log_norms, signs·…)``: unit-norm factor columns and, per component, the natural log
    of its norm ``|w_r| ∏_n ‖a_nr‖`` (``-inf`` for a zero component) and the sign of ``w_r``.
    Logs, so that no product of scales over- or underflows."""
    log_norm = jnp.log(jnp.abs(model.weights))
    units = []
    for a in model.factors:
        norms = safe_norm(a, axis=0)
        log_norm = log_norm + jnp.log(norms)
        units.append(safe_divide(a, norms))
    return units, log_norm, jnp.sign(model.weights)


def _scaled_weights(model: CPTensor, scale):
    """Unit columns and the weights of the same model divided by ``scale``, computed from the
    logs so that a model of norm 1e30 (or factors carrying 1e15 each) stays representable."""
    units, log_norm, sign = _unit_form(model)
    weights = sign * jnp.exp(log_norm - jnp.log(scale))
    return units, jnp.where(jnp.isneginf(log_norm), 0, weights)


# ------------------------------------------------------------------------------------------
# core consistency

def core_consistency(x, cp, *, precision="highest"):
    """CORCONDIA: ``100 · (1 − ‖G − T‖² / R)`` (Bro & Kiers 2003, eq. 4).

    ``G`` is the least-squares Tucker core of ``x`` given the CP loadings,

        G = x ×_0 B_0⁺ ×_1 B_1⁺ ⋯ ×_{N-1} B_{N-1}⁺,

    computed mode by mode with pseudo-inverses (no Kronecker product is formed: ``R^N``
    entries for the core, ``x``'s size for the first product). ``T`` is the superdiagonal
    identity core a CP model has, and the normalisation is by ``R = ‖T‖²`` (Bro & Kiers'
    original, the N-way toolbox's and TensorLy-Viz's default; some code divides by ``‖G‖²``
    instead, which gives other values when ``G`` is far from ``T``).

    The loadings ``B_n`` are the unit factor columns times ``λ_r^(1/N)``, the component norm
    ``λ_r = |w_r| ∏_n ‖a_nr‖`` spread equally over the modes (as the N-way toolbox's
    ``corcond`` does). The off-diagonal entries of ``G`` depend on how a component's scale is
    split between modes, so this fixes the value for a model however its scale is stored
    (folding the weights into one factor would make it depend on which).

    Reading it: 100 means the model's components describe trilinear variation exactly (an
    exact rank-``R`` tensor at rank ``R``, and always a rank-1 least-squares fit); values above
    about 80–90 are taken as appropriate, values near or below 0 mean too many components
    (Bro & Kiers 2003, §4). It is a property of the data *and* the fitted factors: compute it
    on a converged (preferably best of several starts) fit. It can be negative.

    Args:
      x: the data, an N-way array (N ≥ 2, no empty mode).
      cp: a :class:`~tensorfact.CPTensor` of ``x``'s shape, typically ``tfa.cp(x, R)``.
      precision: XLA precision of the contractions (``"highest"``: true float32).

    Returns:
      A scalar, in percent. Scale-free: the data and the weights are rescaled by the same
      power of two first, so ``x`` of 1e-30 or 1e30 gives the same value.

    Raises:
      TypeError: if ``cp`` is not a ``CPTensor``.
      ValueError: if ``cp``'s shape differs from ``x``'s, or NaN/Inf in ``x`` (eager calls).

    Example:
      >>> import jax, tensorfact as tfa
      >>> x = tfa.random_cp(jax.random.key(0), (8, 9, 10), rank=2).to_dense()
      >>> round(float(tfa.diagnostics.core_consistency(x, tfa.cp(x, 2))), 2)
      100.0
    """
    x = as_float_array(x, "x", min_ndim=2, nonempty=True)
    cp = _check_cp(cp, "cp")
    _check_same_shape(cp, x.shape, "cp")
    value, n_bad = _core_consistency(x, cp, precision=precision)
    report_nonfinite(n_bad, "x")
    return value


@functools.partial(jax.jit, static_argnames=("precision",))
def _core_consistency(x, cp, *, precision):
    n_bad = count_nonfinite(x)
    scale = pow2_scale(x)
    x = x / scale
    dtype = x.dtype
    units, log_norm, sign = _unit_form(cp)
    # each mode's loadings u_nr · λ_r^(1/N) (the sign in mode 0): pinv(U_n D) = D⁻¹ pinv(U_n)
    log_root = (log_norm - jnp.log(scale)) / x.ndim
    inv_root = jnp.where(jnp.isneginf(log_norm), 0, jnp.exp(-log_root)).astype(dtype)
    pinvs = [jnp.linalg.pinv(u.astype(dtype)) * inv_root[:, None] for u in units]
    pinvs[0] = pinvs[0] * sign.astype(dtype)[:, None]
    core = algebra.multi_mode_dot(x, pinvs, precision=precision)
    rank = cp.rank
    identity = jnp.zeros((rank,) * x.ndim, dtype)
    identity = identity.at[(jnp.arange(rank),) * x.ndim].set(1)
    return 100 * (1 - jnp.sum((core - identity) ** 2) / rank), n_bad


# ------------------------------------------------------------------------------------------
# congruence, factor match score, degeneracy

def _weight_penalty(log_a, log_b):
    """``1 − |λ_a − λ_b| / max(λ_a, λ_b) = min/max`` of component norms given by their logs,
    for every pair: 1 when both are zero, 0 when one is."""
    diff = jnp.abs(log_a[:, None] - log_b[None, :])
    both_zero = jnp.isneginf(log_a)[:, None] & jnp.isneginf(log_b)[None, :]
    return jnp.where(both_zero, 1.0, jnp.exp(-jnp.where(jnp.isnan(diff), jnp.inf, diff)))


def congruence(cp_a, cp_b, *, weights: bool = False, precision="highest"):
    """The congruence matrix of two CP models: ``C[r, s] = ∏_n cos(a_nr, b_ns)``, the cosine
    between component ``r`` of ``cp_a`` and component ``s`` of ``cp_b`` as rank-one tensors
    (Tucker's congruence coefficient, multiplied over the modes; Tomasi & Bro 2006). Signed:
    the signs of the weights count, so ``|C|`` is what ignores sign flips.

    With ``weights=True`` each entry is also multiplied by the penalty of the factor match score
    on the component norms ``λ_r = |w_r| ∏_n ‖a_nr‖``: ``1 − |λ_a − λ_b| / max(λ_a, λ_b)``.

    Args:
      cp_a, cp_b: :class:`~tensorfact.CPTensor` models of one shape; their ranks may differ.
      weights: include the penalty on the component norms.
      precision: XLA precision of the Gram products.

    Returns:
      An ``(R_a, R_b)`` array with entries in ``[−1, 1]``. Jittable.

    Raises:
      TypeError: if either model is not a ``CPTensor``.
      ValueError: if their shapes differ.

    Example:
      >>> import jax, tensorfact as tfa
      >>> m = tfa.random_cp(jax.random.key(0), (4, 5, 6), rank=2)
      >>> c = tfa.diagnostics.congruence(m, m)
      >>> [round(float(v), 4) for v in (c[0, 0], c[1, 1])]
      [1.0, 1.0]
    """
    cp_a = _check_cp(cp_a, "cp_a")
    cp_b = _check_cp(cp_b, "cp_b")
    _check_same_shape(cp_b, cp_a.shape, "cp_b", "cp_a")
    return _congruence(cp_a, cp_b, weights=bool(weights), precision=precision)


@functools.partial(jax.jit, static_argnames=("weights", "precision"))
def _congruence(cp_a, cp_b, *, weights, precision):
    cosines = component_congruence(cp_a.factors, cp_b.factors, precision)
    cosines = cosines * jnp.sign(cp_a.weights)[:, None] * jnp.sign(cp_b.weights)[None, :]
    if weights:
        _, log_a, _ = _unit_form(cp_a)
        _, log_b, _ = _unit_form(cp_b)
        cosines = cosines * _weight_penalty(log_a, log_b)
    return cosines


def factor_match_score(cp_a, cp_b, *, consider_weights: bool = True,
                       return_permutation: bool = False, precision="highest"):
    """Factor match score (FMS) of two CP models of the same rank: how well their components
    agree once matched (Tomasi & Bro 2006; Acar, Dunlavy & Kolda 2011)::

        FMS = (1/R) Σ_r (1 − |λ_r − μ_p(r)| / max(λ_r, μ_p(r))) ∏_n |cos(a_nr, b_n,p(r))|,

    with ``λ, μ`` the component norms (the first factor left out when
    ``consider_weights=False``) and ``p`` the matching of components that maximises the sum,
    found by the Hungarian algorithm on ``|congruence|``. 1 means the same model up to the
    order, signs and scaling of the components; it is invariant to sign flips and to scales
    moved between a component's factors.

    Not jittable: the assignment runs on the host (``scipy.optimize.linear_sum_assignment``).

    Args:
      cp_a, cp_b: :class:`~tensorfact.CPTensor` models of one shape and rank.
      consider_weights: include the penalty on the component norms (TensorLy-Viz's default).
      return_permutation: also return ``p`` (component ``r`` of ``cp_a`` matches component
        ``p[r]`` of ``cp_b``).
      precision: XLA precision of the Gram products.

    Returns:
      The score (a Python float in ``[0, 1]``), or ``(score, permutation)`` with
      ``return_permutation=True`` (``permutation``: a NumPy int array of length ``R``).

    Raises:
      TypeError: if either model is not a ``CPTensor``.
      ValueError: if their shapes or ranks differ.

    Example:
      >>> import jax, tensorfact as tfa
      >>> m = tfa.random_cp(jax.random.key(0), (4, 5, 6), rank=3)
      >>> flipped = tfa.CPTensor(m.weights[::-1], [-a[:, ::-1] for a in m.factors[:2]]
      ...                        + [m.factors[2][:, ::-1]])
      >>> score, p = tfa.diagnostics.factor_match_score(m, flipped, return_permutation=True)
      >>> round(score, 5), p.tolist()
      (1.0, [2, 1, 0])
    """
    from scipy.optimize import linear_sum_assignment

    cp_a = _check_cp(cp_a, "cp_a")
    cp_b = _check_cp(cp_b, "cp_b")
    _check_same_shape(cp_b, cp_a.shape, "cp_b", "cp_a")
    if cp_a.rank != cp_b.rank:
        raise ValueError(f"the factor match score compares models of one rank, got ranks "
                         f"{cp_a.rank} (cp_a) and {cp_b.rank} (cp_b); use congruence() for "
                         "models of different ranks.")
    if is_traced(cp_a.weights) or is_traced(cp_b.weights):
        raise TypeError("factor_match_score is not jittable (the matching runs on the host); "
                        "use congruence() under jax.jit.")
    scores = np.abs(np.asarray(_congruence(cp_a, cp_b, weights=bool(consider_weights),
                                           precision=precision), np.float64))
    if not np.all(np.isfinite(scores)):
        raise ValueError("cp_a or cp_b contains NaN or Inf.")
    rows, cols = linear_sum_assignment(scores, maximize=True)
    permutation = cols[np.argsort(rows)]
    score = float(np.mean(scores[np.arange(cp_a.rank), permutation]))
    return (score, permutation) if return_permutation else score


def degeneracy(cp, *, precision="highest"):
    """The most negative congruence between two components of one CP model,
    ``min_{r≠s} ∏_n cos(a_nr, a_ns)`` (0 for rank 1).

    Values near −1 flag a degenerate fit: two components nearly equal and opposite, growing
    without bound while they cancel (Kruskal, Harshman & Lundy 1989; Krijnen, Dijkstra &
    Stegeman 2008). It is ``CPInfo.min_congruence`` of :func:`tensorfact.cp`, computed by the
    same function. Jittable.

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> a = jnp.array([[1.0, -1.0], [0.0, 0.1]])
      >>> m = tfa.CPTensor(None, [a, jnp.array([[1.0, 1.0], [0.0, 0.1]]), jnp.ones((2, 2))])
      >>> round(float(tfa.diagnostics.degeneracy(m)), 2)  # two components almost cancel
      -0.99
    """
    cp = _check_cp(cp, "cp")
    return _degeneracy(cp, precision=precision)


@functools.partial(jax.jit, static_argnames=("precision",))
def _degeneracy(cp, *, precision):
    if cp.rank == 1:
        return jnp.zeros((), cp.weights.dtype)
    factors = list(cp.factors)
    factors[0] = factors[0] * jnp.sign(cp.weights)
    return min_congruence(factors, precision)


# ------------------------------------------------------------------------------------------
# explained variance

class ExplainedVariance(NamedTuple):
    """Returned by :func:`explained_variance`.

    Attributes:
      components: ``‖x̂_r‖² / ‖x‖²`` per component (length ``R``), ``x̂_r`` the ``r``-th
        rank-one term: the "percentage of variation" of PLS_toolbox and TensorLy-Viz
        (``percentage_variation(..., method="data")``), as a fraction. They need not add up
        to ``total``: they do when the components are orthogonal, and overlapping components
        can explain more than 100% between them.
      total: ``1 − ‖x − x̂‖² / ‖x‖² = 1 − relative_error²``, the explained variation of the
        whole model (``R²``; ``fit = 1 − relative_error`` is another number). Negative for a
        model worse than the zero tensor.
    """

    components: jax.Array
    total: jax.Array


def explained_variance(x, cp, *, precision="highest") -> ExplainedVariance:
    """The share of ``‖x‖²`` each component of a CP model explains, and the model's total.

    Per component ``‖w_r a_0r ∘ ⋯ ∘ a_{N-1,r}‖² / ‖x‖² = w_r² ∏_n ‖a_nr‖² / ‖x‖²`` (no dense
    component is formed); the total ``1 − ‖x − x̂‖²/‖x‖² = (2⟨x, x̂⟩ − ‖x̂‖²) / ‖x‖²`` from one
    MTTKRP and the ``R × R`` Gram matrices (no reconstruction). "Variance" is the usual
    chemometrics name for these uncentred sums of squares: centre ``x`` first for the
    statistical meaning. Scale-free and jittable.

    Args:
      x: the data, an N-way array (N ≥ 2, no empty mode).
      cp: a :class:`~tensorfact.CPTensor` of ``x``'s shape.
      precision: XLA precision of the contractions.

    Returns:
      :class:`ExplainedVariance` ``(components, total)``, fractions (multiply by 100 for %).
      ``x = 0`` gives 0 for a zero model and ``-inf`` components otherwise.

    Raises:
      TypeError: if ``cp`` is not a ``CPTensor``.
      ValueError: if the shapes differ, or NaN/Inf in ``x`` (eager calls).

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> m = tfa.CPTensor(jnp.array([3.0, 4.0]), [jnp.eye(2), jnp.eye(2), jnp.eye(2)])
      >>> ev = tfa.diagnostics.explained_variance(m.to_dense(), m)
      >>> [round(float(v), 4) for v in ev.components], round(float(ev.total), 4)
      ([0.36, 0.64], 1.0)
    """
    x = as_float_array(x, "x", min_ndim=2, nonempty=True)
    cp = _check_cp(cp, "cp")
    _check_same_shape(cp, x.shape, "cp")
    result, n_bad = _explained_variance(x, cp, precision=precision)
    report_nonfinite(n_bad, "x")
    return result


@functools.partial(jax.jit, static_argnames=("precision",))
def _explained_variance(x, cp, *, precision):
    n_bad = count_nonfinite(x)
    scale = pow2_scale(x)
    units, weights = _scaled_weights(cp, scale)
    x = x / scale
    dtype = x.dtype
    hi = algebra.resolve_precision(precision)
    units = [u.astype(dtype) for u in units]
    weights = weights.astype(dtype)
    norm_x_sq = jnp.vdot(x, x, precision=hi)
    component_sq = weights ** 2  # unit columns: ‖x̂_r‖² = w_r²
    gram = functools.reduce(jnp.multiply, [jnp.matmul(u.T, u, precision=hi) for u in units])
    model_sq = jnp.einsum("r,rs,s->", weights, gram, weights, precision=hi)
    inner = jnp.vdot(algebra.mttkrp(x, units, 0, precision=precision, impl="xla")
                     * units[0], jnp.broadcast_to(weights, units[0].shape), precision=hi)
    total = safe_divide(2 * inner - model_sq, norm_x_sq)
    components = safe_divide(component_sq, norm_x_sq)
    zero_x = norm_x_sq == 0
    components = jnp.where(zero_x & (component_sq > 0), -jnp.inf, components)
    total = jnp.where(zero_x & (model_sq > 0), -jnp.inf, total)
    return ExplainedVariance(components, total), n_bad


# ------------------------------------------------------------------------------------------
# rank scan

class RankScan(NamedTuple):
    """Returned by :func:`rank_scan`: one row per rank scanned (``str()`` prints the table).

    Attributes:
      ranks: the ranks scanned, in the order given (int array).
      fit: the best fit ``1 − ‖x − x̂‖/‖x‖`` over the starts (:func:`tensorfact.fit`'s
        convention; on the observed entries when a mask was given).
      fit_spread: best minus worst fit over the starts (0: every start found the same fit).
      core_consistency: :func:`core_consistency` of the best fit, in percent.
      degeneracy: :func:`degeneracy` of the best fit (near −1: degenerate).
      n_stable: how many starts reached the best fit within ``stable_tol``.
      n_starts: the number of starts per rank (the SVD start plus ``n_restarts`` random ones).
      fits: every start's fit, shape ``(len(ranks), n_starts)``; column 0 is the SVD start,
        then the random starts in the order of ``jax.random.split(key, n_restarts)``.
      models: the best :class:`~tensorfact.CPTensor` per rank (a tuple).
    """

    ranks: np.ndarray
    fit: np.ndarray
    fit_spread: np.ndarray
    core_consistency: np.ndarray
    degeneracy: np.ndarray
    n_stable: np.ndarray
    n_starts: np.ndarray
    fits: np.ndarray
    models: tuple

    def to_markdown(self) -> str:
        """The table as GitHub markdown, one row per rank."""
        lines = ["| rank | fit | fit spread | core consistency | degeneracy | stable starts |",
                 "|---:|---:|---:|---:|---:|---:|"]
        for i, r in enumerate(self.ranks):
            lines.append(f"| {int(r)} | {float(self.fit[i]):.4f} | "
                         f"{float(self.fit_spread[i]):.1e} | "
                         f"{float(self.core_consistency[i]):.1f} | "
                         f"{float(self.degeneracy[i]):.3f} | "
                         f"{int(self.n_stable[i])}/{int(self.n_starts[i])} |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def rank_scan(x, ranks: Sequence[int], *, key=None, n_restarts: int = 5, n_iter: int = 200,
              tol: float = DEFAULT_TOL, nonneg: bool = False, mask=None,
              stable_tol: float = 1e-3, precision="highest") -> RankScan:
    """Fits :func:`tensorfact.cp` at every rank in ``ranks`` from several starts and reports,
    per rank, what the choice of the number of components rests on.

    At each rank: one fit from the SVD start and ``n_restarts`` from random starts, each the
    fit ``tfa.cp(x, rank, init=..., key=k)`` would return, computed as one ``jax.vmap`` over
    the stacked starts (the whole rank is one compiled program); the
    best fit is kept, and its core consistency and degeneracy are computed. With a ``mask``
    the core consistency is that of the data with the missing entries filled by the best
    model (their least-squares values, as in EM imputation).

    The usual reading (Bro & Kiers 2003; Bro's PARAFAC tutorial, Chemom. Intell. Lab. Syst.
    38:149, 1997): the fit rises with the rank and levels off once the systematic variation is
    modelled; take the largest rank whose core consistency is still high (above about 80–90)
    and whose best fit is found by several starts (``n_stable`` > 1); a core consistency that
    drops to near zero or below, a degeneracy near −1 or fits that differ from start to start
    mean too many components. It is a guide, not a test: check that the components are
    interpretable, and compare split-half fits (:func:`factor_match_score`) where you can.

    Not jittable as a whole (it returns host arrays and a table); each rank is one jitted
    program, so calling it again on data of the same shape compiles nothing.

    Args:
      x: the data, an N-way array (N ≥ 2, no empty mode).
      ranks: the ranks to scan, positive ints (non-empty).
      key: ``jax.random`` key for the random starts (required when ``n_restarts > 0``).
      n_restarts: random starts per rank besides the SVD start (≥ 0).
      n_iter, tol, nonneg, mask, precision: as in :func:`tensorfact.cp`.
      stable_tol: a start counts as reaching the best fit when its fit is within this of it.

    Returns:
      A :class:`RankScan` (print it for a markdown table).

    Raises:
      ValueError: for empty ``ranks``, a non-positive rank, a negative ``n_restarts``, a
        missing key, a mask of the wrong shape, or NaN/Inf in (the observed entries of) ``x``.

    Example:
      >>> import jax, tensorfact as tfa
      >>> x = tfa.random_cp(jax.random.key(0), (8, 9, 10), rank=2).to_dense()
      >>> scan = tfa.diagnostics.rank_scan(x, [1, 2], key=jax.random.key(1), n_restarts=2,
      ...                                  n_iter=50)
      >>> [round(float(f), 3) for f in scan.fit], round(float(scan.core_consistency[1]))
      ([0.298, 1.0], 100)
      >>> print(scan.to_markdown().splitlines()[0])
      | rank | fit | fit spread | core consistency | degeneracy | stable starts |
    """
    x = as_float_array(x, "x", min_ndim=2, nonempty=True)
    if isinstance(ranks, (int, np.integer)):
        ranks = [ranks]
    ranks = [check_positive_int(r, "ranks") for r in ranks]
    if not ranks:
        raise ValueError("ranks must hold at least one rank, got an empty sequence.")
    n_restarts = check_nonneg_int(n_restarts, "n_restarts")
    n_iter, tol = check_iteration_args(n_iter, tol)
    check_nonneg_number(stable_tol, "stable_tol")
    mask = check_mask(mask, x.shape)
    if n_restarts:
        key = check_key(key, "for the random starts of rank_scan (n_restarts > 0)")
        keys = jax.random.split(key, n_restarts)
    else:
        keys = None
    report_nonfinite(count_nonfinite(x, mask), "x", maskable=True)

    rows = []
    for rank in ranks:
        rows.append(_scan_rank(x, mask, keys, tol=float(tol), stable_tol=float(stable_tol),
                               rank=rank, n_iter=n_iter, nonneg=bool(nonneg),
                               precision=precision))
    host = [jax.device_get(row[:-1]) for row in rows]
    columns = list(zip(*host))
    return RankScan(
        ranks=np.asarray(ranks),
        fit=np.asarray(columns[0]),
        fit_spread=np.asarray(columns[1]),
        core_consistency=np.asarray(columns[2]),
        degeneracy=np.asarray(columns[3]),
        n_stable=np.asarray(columns[4]),
        n_starts=np.full(len(ranks), n_restarts + 1),
        fits=np.stack(columns[5]),
        models=tuple(row[-1] for row in rows),
    )


@functools.partial(jax.jit, static_argnames=("tol", "stable_tol", "rank", "n_iter", "nonneg",
                                             "precision"))
def _scan_rank(x, mask, keys, *, tol, stable_tol, rank, n_iter, nonneg, precision):
    # The starts tfa.cp would draw (same scaling, same draws), stacked, then one vmapped fit
    # from the given starts: one compiled fit for all starts, each equal to a separate call.
    filled = x if mask is None else jnp.where(mask, x, 0)
    scale = pow2_scale(filled)
    scaled = filled / scale
    hi = algebra.resolve_precision(precision)

    def start(key, init):
        weights, factors = cp_initial_factors(scaled, rank, key, init, nonneg, precision)
        if nonneg:
            weights, factors = scaled_to_data(weights, factors, jnp.vdot(scaled, scaled,
                                                                         precision=hi), precision)
        return CPTensor(weights * scale, factors)  # tfa.cp divides a given start by the scale

    starts = jax.tree_util.tree_map(lambda a: a[None], start(None, "svd"))
    if keys is not None:
        drawn = jax.vmap(lambda k: start(k, "random"))(keys)
        starts = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), starts, drawn)
    models, info = jax.vmap(lambda init: _fit_cp(
        x, rank, init=init, n_iter=n_iter, tol=tol, mask=mask, nonneg=nonneg,
        precision=precision, return_info=True))(starts)
    fits = 1 - info.rel_error
    fits = jnp.where(jnp.isnan(fits), -jnp.inf, fits)  # a failed start never counts as best
    best = jnp.argmax(fits)
    best_model = jax.tree_util.tree_map(lambda a: a[best], models)
    data = x if mask is None else jnp.where(mask, x, best_model.to_dense(precision=precision))
    core, _ = _core_consistency(data, best_model, precision=precision)
    n_stable = jnp.sum(fits >= fits[best] - stable_tol)
    return (fits[best], fits[best] - jnp.min(fits), core,
            _degeneracy(best_model, precision=precision), n_stable, fits, best_model)
