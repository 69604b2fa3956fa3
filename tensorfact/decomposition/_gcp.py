"""Generalized CP (GCP) decomposition: a CP model fitted under any elementwise loss.

GCP (Hong, Kolda & Duersch, "Generalized canonical polyadic tensor decomposition", SIAM Review
62(1), 2020) finds factors ``A_0, …, A_{N-1}`` (each ``I_n × R``) of the model
``m = [[A_0, …, A_{N-1}]]`` that minimise

    F(A) = (1 / |Ω|) Σ_{i ∈ Ω} f(x_i, m_i),

the mean over the observed entries ``Ω`` of an elementwise loss ``f`` chosen for the data's
distribution (Table 1 of the paper; ``m`` is the model on the scale of its link):

==============  =====================================  ================  ==================
``loss``        ``f(x, m)``                            constraint        mean ``E[x | m]``
==============  =====================================  ================  ==================
"gaussian"      ``(x − m)²``                           —                 ``m``
"poisson"       ``m − x log(m + ε)``                   ``m ≥ 0``         ``m``
"poisson_log"   ``exp(m) − x m``                       —                 ``exp(m)``
"bernoulli"     ``log(m + 1) − x log(m + ε)`` (odds)   ``m ≥ 0``         ``m / (1 + m)``
"gamma"         ``x / (m + ε) + log(m + ε)``           ``m ≥ 0``         ``m``
"rayleigh"      ``2 log(m + ε) + (π/4)(x / (m + ε))²``  ``m ≥ 0``         ``m``
"huber"         ``½r²`` if ``|r| ≤ δ`` else            —                 ``m``
                ``δ(|r| − ½δ)``, ``r = x − m``
==============  =====================================  ================  ==================

with ``ε = 1e-10`` (as in the Tensor Toolbox and pyttb). A callable ``loss(x, m)`` (elementwise,
JAX-traceable) is fitted as given, unconstrained. The gradient is JAX's autodiff of ``F``
through the dense model (for ``n_samples``, through the model at the sampled entries only),
equal to the paper's ``∂F/∂A_n = Y_(n) · khatri_rao(A_k, k ≠ n)`` with ``Y = ∂f/∂m``.

Constraints. The losses marked ``m ≥ 0`` keep every factor nonnegative (so ``m ≥ 0``) by
projection ``A ← max(A, 0)``, as the Tensor Toolbox does with L-BFGS-B's lower bound 0.

Optimisers (``optimizer=``):

* ``"lbfgs"`` (default for a full-gradient fit) — a projected L-BFGS, not L-BFGS-B (which
  neither Optax nor JAX offers): on the factors flattened into one vector ``a``, the two-loop
  recursion (memory 10, initial scaling ``sᵀy / yᵀy``, pairs ``s = Δa``, ``y = Δ∇F`` of full
  gradients kept only where ``sᵀy > 0``) is applied to the gradient of the free variables
  (those with ``a > 0`` or a gradient pointing into the feasible set; the others are held at
  their bound, as in Kim, Sra & Dhillon, "Tackling box-constrained optimization via a new
  projected quasi-Newton approach", SISC 2010), then a backtracking Armijo search along the
  projection arc ``P(a − t d)``, ``t = 1, ½, ¼, …``, that asks for a strict decrease. After 20
  halvings it restarts from ``t = 1`` along the normalised steepest-descent direction (and
  drops the memory); when that fails too the iterate stays and the fit stops. For the
  unconstrained losses ``P`` is the identity and this is plain L-BFGS with Armijo
  backtracking. The line search is a ``lax.while_loop``, so ``jax.grad`` cannot go through
  this fit. On bound-constrained problems it needs more iterations than SciPy's L-BFGS-B
  (about three times as many on planted Poisson counts: ``benchmarks/bench_gcp.py``).
* ``"adam"`` or any ``optax.GradientTransformation``: ``A ← P(A + update(∇F))`` each step
  (for the Adam default the step is ``learning_rate``, default 1e-2 on the rescaled problem).
  With ``tol=0`` it is a ``lax.scan`` that ``jax.grad`` can traverse.

Stochastic GCP (``n_samples``; Kolda & Hong, "Stochastic gradients for large-scale tensor
decomposition", SIAM J. Math. Data Sci. 2(4), 2020): each step follows an unbiased estimate of
``∇F`` computed from the model at sampled entries only (rows of the factors gathered, the
product over modes summed over the rank). Adam is the default there.

* Dense ``x``, ``n_samples=s``: ``s`` entries uniformly with replacement (``fold_in(key,
  step)``), the estimate ``(1/(s p)) Σ_samples [i ∈ Ω] ∇f(x_i, m_i)`` (``p = |Ω| / size``).
* Sparse ``x`` (``BCOO``), *stratified sampling*: ``p`` stored entries uniformly with
  replacement, weight ``nnz / p``, and ``q`` entries uniformly with replacement from the whole
  index space taken as zeros, weight ``numel / q`` — a zero sample that hits a stored entry is
  rejected (weight 0), found by a vectorised binary search over the lexicographically sorted
  coordinates (no linear index, so shapes past ``2³¹`` entries are fine). Since a uniform draw
  is a zero with probability ``(numel − nnz)/numel``, this is exactly unbiased, and equal in
  expectation to the paper's weight ``(numel − nnz)/q`` on exactly ``q`` zeros (which the
  Tensor Toolbox gets by over-sampling and redrawing). ``n_samples=s`` takes ``p = ⌈s/2⌉``,
  ``q = ⌊s/2⌋``; ``n_samples=(p, q)`` sets both. Every loss defined at ``x = 0`` works
  (gaussian, poisson, poisson_log, bernoulli, huber, a callable); gamma and rayleigh need
  ``x > 0`` and raise. Memory is ``O(nnz + (p + q)·R·N + Σ I_n R)``, never ``O(numel)``.

For both, the recorded ``losses`` (and the per-step ``errors``) are *estimates* of ``F`` (and
of the relative error of the mean ``E[x|m]``) on a fixed estimation sample drawn once from
``key`` (``4 s`` uniform entries, or the stratified ``4 (p, q)``), so no step forms the dense
model; ``rel_error`` is exact (dense ``x``: one dense model at the end; ``BCOO``: from the
nonzeros and the Grams, ``‖x‖² − 2⟨x, m⟩ + ‖m‖²``, for the identity-mean losses, else the
estimate). With ``tol > 0`` a stochastic fit stops after ``MAX_FAILS = 10`` steps in a row whose
estimate is not below the best so far by more than ``tol`` relative (a simple form of Kolda &
Hong's rule: no step decay, no return to the best iterate).

Sparse data. A ``jax.experimental.sparse.BCOO`` ``x`` with the full gradient is fitted for the
Gaussian and Poisson losses, whose sums over the zeros have closed forms (``Σ m² =
1ᵀ(⊛_n A_nᵀA_n)1``, ``Σ m = Σ_r Π_n 1ᵀa_nr``), from the model at the nonzeros only:
``O(nnz·N·R + Σ I_n R²)`` per evaluation, the dense tensor never formed; with ``n_samples``,
stochastically for any loss defined at zero (above). Either way ``init="random"`` or a
``CPTensor`` (the SVD start needs dense unfoldings), no ``mask``.

Scale. For the scale-equivariant losses (gaussian, poisson, gamma, rayleigh, huber with ``δ`` in
the data's units) the fit runs on ``x / 2^k`` (``2^k`` near ``max |x|``) and multiplies the
weights back, so ``gcp(c·x) = c·gcp(x)`` from 1e-30 to 1e30 in float32. ``poisson_log`` and
``bernoulli`` (counts, binary data) and a callable loss are fitted on ``x`` as given.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Literal, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.experimental import sparse as jsparse
from jax.flatten_util import ravel_pytree

from tensorfact._checks import (Init, Precision, as_float_array, check_choice, check_key,
                                check_mask, check_positive_int,
                                check_positive_number, finite_part, is_traced, poison,
                                report_nonfinite)
from tensorfact._numerics import pow2_scale, resolve_precision, safe_divide, safe_norm
from tensorfact.decomposition._common import (check_cp_init, check_iteration_args,
                                              normalize_columns, resolve_init, resolve_tol)
from tensorfact.decomposition._loop import FitInfo, is_fixed_length, relative_error
from tensorfact.decomposition._sweeps import cp_initial_factors
from tensorfact.tensors import CPTensor

__all__ = ["gcp", "GCPInfo", "LOSSES", "EPS"]

#: ``ε`` of the losses with a logarithm or a division (as in the Tensor Toolbox and pyttb).
EPS = 1e-10
#: Default Adam step on the rescaled problem (``max |x|`` in ``[1, 2)``).
DEFAULT_ADAM_LEARNING_RATE = 1e-2
LBFGS_MEMORY = 10
ARMIJO_C1 = 1e-4
MAX_HALVINGS = 20
#: Losses whose domain excludes ``x = 0``: the zeros of sparse data are not data for them.
ZERO_FREE_LOSSES = ("gamma", "rayleigh")
#: The fixed estimation sample is this many times the per-step sample (zeros and nonzeros).
EVAL_FACTOR = 4
#: ``fold_in`` tag of the key of the fixed estimation sample of a dense stochastic fit.
EVAL_SAMPLE_TAG = 2**31 - 1
#: Stochastic fits with ``tol > 0`` stop after this many steps in a row whose estimated loss
#: is not below the best so far by more than ``tol`` (relative).
MAX_FAILS = 10

Loss = Literal["gaussian", "poisson", "poisson_log", "bernoulli", "gamma", "rayleigh", "huber"]


class GCPInfo(NamedTuple):
    """Diagnostics of a GCP fit (``return_info=True``): the four fields of
    :class:`~tensorfact.FitInfo`, then the loss.

    Attributes:
      n_iter: iterations (optimiser steps) run.
      errors: ``(n_iter,)`` ``‖x − μ‖ / ‖x‖`` on the observed entries after each step, with
        ``μ = E[x | m]`` the model's mean (``m`` itself, ``exp(m)`` for ``poisson_log``,
        ``m / (1 + m)`` for ``bernoulli``); NaN past the last step run. For stochastic fits
        (``n_samples``) an estimate on the fixed estimation sample.
      rel_error: the same for the returned result, exact (for a stochastic fit of a ``BCOO``
        with ``poisson_log``/``bernoulli``/a callable loss: the fixed-sample estimate).
      converged: whether the loss changed by at most ``tol`` (relative) in the last step.
      losses: ``(n_iter,)`` the mean loss ``F`` over the observed entries after each step, of
        ``x`` as given (the rescaled fit's loss mapped back; it may overflow float32 where
        ``x`` is near 1e30); NaN past the last step run. For stochastic fits
        (``n_samples``): the estimate of ``F`` on a fixed sample drawn once (module
        docstring), not the exact loss.
    """

    n_iter: jax.Array
    errors: jax.Array
    rel_error: jax.Array
    converged: jax.Array
    losses: jax.Array


assert GCPInfo._fields[:4] == FitInfo._fields  # the one info convention (docs/glossary.md)


# -- the losses ---------------------------------------------------------------------------------

def _gaussian(x, m, delta):
    return jnp.square(x - m)


def _poisson(x, m, delta):
    return m - x * jnp.log(m + EPS)


def _poisson_log(x, m, delta):
    return jnp.exp(m) - x * m


def _bernoulli(x, m, delta):
    return jnp.log1p(m) - x * jnp.log(m + EPS)


def _gamma(x, m, delta):
    return x / (m + EPS) + jnp.log(m + EPS)


def _rayleigh(x, m, delta):
    return 2 * jnp.log(m + EPS) + (math.pi / 4) * jnp.square(x / (m + EPS))


def _huber(x, m, delta):
    r = jnp.abs(x - m)
    return jnp.where(r <= delta, 0.5 * r * r, delta * (r - 0.5 * delta))


class _Spec(NamedTuple):
    f: Callable          # f(x, m, delta)
    nonneg: bool         # factors kept ≥ 0
    scaled: bool         # fitted on x / 2^k
    mean: Callable       # E[x | m]
    data: Optional[str]  # the data check: "nonneg", "binary", "positive" or None


def _identity(m):
    return m


#: The built-in losses: ``{name: (f, nonneg, scaled, mean, data check)}``.
LOSSES = {
    "gaussian": _Spec(_gaussian, False, True, _identity, None),
    "poisson": _Spec(_poisson, True, True, _identity, "nonneg"),
    "poisson_log": _Spec(_poisson_log, False, False, jnp.exp, "nonneg"),
    "bernoulli": _Spec(_bernoulli, True, False, lambda m: m / (1 + m), "binary"),
    "gamma": _Spec(_gamma, True, True, _identity, "positive"),
    "rayleigh": _Spec(_rayleigh, True, True, _identity, "positive"),
    "huber": _Spec(_huber, False, True, _identity, None),
}


class _UserLoss:
    """A callable ``loss(x, m)`` as ``f(x, m, delta)``; equal (one compiled fit) for the same
    function."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x, m, delta):
        return self.fn(x, m)

    def __eq__(self, other):
        return isinstance(other, _UserLoss) and other.fn is self.fn

    def __hash__(self):
        return hash(("user_loss", id(self.fn)))


def _rescale_loss(loss: str, value, s, mean_x):
    """The mean loss of ``x`` from that of ``x / s`` (``mean_x``: the mean of ``x / s`` over the
    observed entries)."""
    if loss in ("gaussian", "huber"):
        return value * s * s
    if loss == "poisson":
        return s * value - s * jnp.log(s) * mean_x
    if loss == "gamma":
        return value + jnp.log(s)
    if loss == "rayleigh":
        return value + 2 * jnp.log(s)
    return value


# -- the public function ------------------------------------------------------------------------

def gcp(x, rank: int, *, key=None, loss: Union[Loss, Callable] = "gaussian",
        init: Union[Init, CPTensor] = "svd", mask=None, optimizer=None, learning_rate=None,
        n_iter: int = 1000, tol: float = 1e-8, n_samples: Optional[int] = None,
        delta: float = 1.0, precision: Precision = "highest", return_info: bool = False):
    """Generalized CP decomposition: the CP model minimising the mean of an elementwise loss.

    Minimises ``F(A) = (1/|Ω|) Σ_{i∈Ω} f(x_i, m_i)`` over the factors of the CP model ``m``
    (Hong, Kolda & Duersch, SIAM Review 2020); the losses, constraints, optimisers and the
    stochastic variant are described in :mod:`tensorfact.decomposition._gcp`.

    Args:
      x: array with at least 2 dimensions, none of size zero; or a
        ``jax.experimental.sparse.BCOO`` tensor: for ``loss="gaussian"``/``"poisson"`` with
        the full gradient, for any loss defined at ``x = 0`` with ``n_samples`` (stratified
        sampling; see the module docstring).
      rank: number of components ``R``.
      key: ``jax.random`` key; needed for ``init="random"`` and for ``n_samples``.
      loss: ``"gaussian"``, ``"poisson"`` (identity link, ``m ≥ 0``), ``"poisson_log"`` (log
        link), ``"bernoulli"`` (odds link, ``m ≥ 0``), ``"gamma"``, ``"rayleigh"`` (both
        ``m ≥ 0``), ``"huber"`` (threshold ``delta``), or a callable ``loss(x, m)``:
        elementwise and JAX-traceable, fitted unconstrained on ``x`` as given.
      init: ``"svd"`` (leading singular vectors of the unfoldings, their absolute values for the
        ``m ≥ 0`` losses; deterministic), ``"random"`` (uniform for ``m ≥ 0`` losses, else
        Gaussian; needs ``key``) — both scaled so the start has the norm of ``x`` (of
        ``log(1 + x)`` for ``poisson_log``) — or a ``CPTensor`` of matching shape and rank.
      mask: optional boolean (or 0/1) array of ``x.shape``, True where observed; the loss is
        the mean over the observed entries only (the others may hold anything, NaN included).
      optimizer: ``"lbfgs"`` (projected L-BFGS with Armijo backtracking: the default for
        full-gradient fits), ``"adam"`` (the default with ``n_samples``), or any
        ``optax.GradientTransformation`` (followed by the projection for the ``m ≥ 0`` losses).
      learning_rate: Adam's step (default 1e-2 on the rescaled problem); only with
        ``optimizer="adam"`` (or its default).
      n_iter: most steps (L-BFGS iterations or optimiser steps; default 1000, pyttb's
        ``maxiter``); static, it sizes the info.
      tol: stop when the loss changes by at most ``tol`` relative to its size between steps
        (stochastic fits: when the estimated loss has not improved on its best by more than
        ``tol`` relative for 10 steps in a row). A concrete ``0`` runs exactly ``n_iter``
        steps (for Adam, a differentiable ``lax.scan``).
      n_samples: draw this many entries per step (stochastic GCP, uniform with replacement;
        needs ``key``; not with ``"lbfgs"``). For a ``BCOO`` ``x``: an int ``s ≥ 2`` (``⌈s/2⌉``
        stored entries and ``⌊s/2⌋`` zeros per step) or a pair ``(p, q)`` (stratified
        sampling).
      delta: the Huber threshold, in the units of ``x`` (``loss="huber"`` only).
      precision: XLA precision of the contractions (``"highest"``: true float32).
      return_info: also return a :class:`GCPInfo`.

    Returns:
      A :class:`CPTensor` with unit-norm factor columns and the scales in ``weights``: the
      model ``m`` on its link's scale (``exp`` of it is the rate for ``poisson_log``, the odds
      for ``bernoulli``). With ``return_info=True``, ``(CPTensor, GCPInfo)``.

    Raises:
      ValueError: an unknown ``loss`` (the message lists the choices); data outside the loss's
        domain (negative counts for ``"poisson"``/``"poisson_log"``, values other than 0 and 1
        for ``"bernoulli"``, nonpositive values for ``"gamma"``/``"rayleigh"``), naming ``x``
        (checked on eager calls; under ``jit`` the values are unknown and not checked); NaN/Inf
        in the observed entries of ``x`` (eager calls; under ``jit`` the result is NaN); the
        usual argument errors (``rank``, ``n_iter``, ``tol``, ``mask``, ``init``, ``key``,
        ``learning_rate`` without Adam, ``"lbfgs"`` with ``n_samples``); for a ``BCOO``:
        ``"gamma"``/``"rayleigh"`` (its zeros are outside their domain), a full-gradient loss
        other than gaussian/poisson, ``n_samples`` not an int ``≥ 2`` or a pair of positive
        ints, ``mask``, ``init="svd"``.

    Example:
      >>> import jax, tensorfact as tfa
      >>> x = tfa.random_cp(jax.random.key(0), (6, 7, 8), rank=2).to_dense()
      >>> approx, info = tfa.gcp(x, 2, return_info=True)
      >>> bool(info.rel_error < 1e-3)
      True
      >>> counts = jax.random.poisson(jax.random.key(1), abs(x) * 3).astype(float)
      >>> rates = tfa.gcp(counts, 2, loss="poisson")
      >>> bool(rates.to_dense().min() >= 0)
      True
      >>> from jax.experimental import sparse          # stochastic, stratified, never dense
      >>> fit = tfa.gcp(sparse.BCOO.fromdense(counts), 2, loss="poisson", init="random",
      ...               key=jax.random.key(2), n_samples=(50, 50), n_iter=20, tol=0)
      >>> fit.shape
      (6, 7, 8)
    """
    if isinstance(x, jsparse.BCOO):
        return _gcp_sparse(x, rank, key=key, loss=loss, init=init, mask=mask,
                           optimizer=optimizer, learning_rate=learning_rate, n_iter=n_iter,
                           tol=tol, n_samples=n_samples, delta=delta, precision=precision,
                           return_info=return_info)
    x = as_float_array(x, "x", min_ndim=2, nonempty=True)
    rank = check_positive_int(rank, "rank")
    n_iter, tol = check_iteration_args(n_iter, tol)
    if callable(loss) and not isinstance(loss, str):
        spec = _Spec(_UserLoss(loss), False, False, _identity, None)
        loss_name = None
    else:
        loss_name = check_choice(loss, Loss, "loss")
        spec = LOSSES[loss_name]
    check_positive_number(delta, "delta")
    mask = check_mask(mask, x.shape)
    optimizer = _resolve_optimizer(optimizer, learning_rate, n_samples)
    if n_samples is not None:
        n_samples = check_positive_int(n_samples, "n_samples")
        check_key(key, "for n_samples (stochastic GCP draws entries)")
    init_tensor, init_kind = resolve_init(init, CPTensor, key,
                                          lambda t: check_cp_init(t, x.shape, rank))
    fixed, tol = resolve_tol(tol)
    if not is_traced(x) and (mask is None or not is_traced(mask)):
        _check_domain(x, mask, spec.data, loss_name)
    result, n_nonfinite = _gcp_fit(
        x, mask, key, init_tensor, tol, float(delta), rank=rank, n_iter=n_iter, fixed=fixed,
        init=init_kind, spec=spec, loss_name=loss_name, optimizer=optimizer,
        n_samples=n_samples, precision=precision, return_info=bool(return_info))
    report_nonfinite(n_nonfinite, "x", maskable=True)
    return result


def _resolve_optimizer(optimizer, learning_rate, n_samples):
    """``"lbfgs"`` or an ``optax.GradientTransformation`` (Adam built here)."""
    if optimizer is None:
        optimizer = "adam" if n_samples is not None else "lbfgs"
    if isinstance(optimizer, str):
        optimizer = check_choice(optimizer, ("lbfgs", "adam"), "optimizer")
        if optimizer == "lbfgs":
            if n_samples is not None:
                raise ValueError('optimizer="lbfgs" needs the full gradient: with n_samples use '
                                 '"adam" (the default there) or an optax transformation.')
            if learning_rate is not None:
                raise ValueError('learning_rate is for optimizer="adam"; "lbfgs" sets its step '
                                 f'by a line search (got learning_rate={learning_rate!r}).')
            return "lbfgs"
        if learning_rate is None:
            learning_rate = DEFAULT_ADAM_LEARNING_RATE
        else:
            check_positive_number(learning_rate, "learning_rate")
        return ("adam", float(learning_rate))  # hashable: one compiled fit per step size
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError('optimizer must be "lbfgs", "adam" or an optax.GradientTransformation, '
                        f"got {type(optimizer).__name__}.")
    if learning_rate is not None:
        raise ValueError("pass either an optax optimizer or learning_rate, not both (got "
                         f"learning_rate={learning_rate!r}).")
    return optimizer


def _check_domain(x, mask, data, loss_name):
    """Eager check that the observed entries lie in the loss's domain (finite ones only: NaN
    and Inf are reported by the fit)."""
    if data is None:
        return
    values = np.asarray(x)
    keep = np.isfinite(values)
    if mask is not None:
        keep &= np.asarray(mask)
    values = values[keep]
    if data == "nonneg" and np.any(values < 0):
        raise ValueError(f'x must be nonnegative counts for loss="{loss_name}", got '
                         f"{int(np.sum(values < 0))} negative value(s) (min {values.min()}).")
    if data == "binary" and np.any((values != 0) & (values != 1)):
        bad = values[(values != 0) & (values != 1)]
        raise ValueError(f'x must hold only 0 and 1 for loss="{loss_name}", got {bad.size} '
                         f"other value(s) (e.g. {bad[0]}).")
    if data == "positive" and np.any(values <= 0):
        raise ValueError(f'x must be positive for loss="{loss_name}", got '
                         f"{int(np.sum(values <= 0))} value(s) ≤ 0 (min {values.min()}).")


def _unit_columns(factors, scale) -> CPTensor:
    """The fitted factors as a CP tensor with unit columns, their norms (and the data's scale
    ``2^k``) in the weights."""
    weights = jnp.ones((factors[0].shape[1],), factors[0].dtype)
    unit = []
    for a in factors:
        norms, a = normalize_columns(a)
        weights = weights * norms
        unit.append(a)
    return CPTensor(weights * scale, tuple(unit))


# -- the compiled fit ---------------------------------------------------------------------------

def _model(factors, precision):
    return CPTensor(jnp.ones((factors[0].shape[1],), factors[0].dtype),
                    tuple(factors)).to_dense(precision=precision)


def _balanced(factors, target_norm, precision):
    """The factors scaled, equally in every mode, so the CP model has norm ``target_norm``."""
    norm = safe_norm(_model(factors, precision))
    ratio = safe_divide(target_norm, norm)
    # zero data: a zero start, which stays (a zero start for nonzero data is left as it is)
    ratio = jnp.where(jnp.isfinite(ratio) & (norm > 0), ratio, 1)
    root = ratio ** (1.0 / len(factors))
    return tuple(a * root for a in factors)


def _sample_model(factors, idx):
    """The model at the entries ``idx`` (``s × N``): ``Σ_r Π_n A_n[idx_n, r]``."""
    prod = factors[0][idx[:, 0]]
    for n, a in enumerate(factors[1:], start=1):
        prod = prod * a[idx[:, n]]
    return jnp.sum(prod, axis=1)


@functools.partial(jax.jit, static_argnames=(
    "rank", "n_iter", "fixed", "init", "spec", "loss_name", "optimizer", "n_samples",
    "precision", "return_info"))
def _gcp_fit(x, mask, key, init_tensor, tol, delta, *, rank, n_iter, fixed, init, spec,
             loss_name, optimizer, n_samples, precision, return_info):
    dtype = x.dtype
    x, n_nonfinite = finite_part(x, mask)
    obs = jnp.ones(x.shape, bool) if mask is None else mask.astype(bool)
    x = jnp.where(obs, x, 0)
    n_obs = jnp.maximum(jnp.sum(obs), 1).astype(dtype)
    s = lax.stop_gradient(pow2_scale(x)) if spec.scaled else jnp.ones((), dtype)
    xs = x / s
    delta = delta / s

    def elementwise(xv, mv):
        return spec.f(xv, mv, delta)

    def full_loss(factors):
        vals = elementwise(xs, _model(factors, precision))
        return jnp.sum(jnp.where(obs, vals, 0)) / n_obs

    project = ((lambda p: tuple(jnp.maximum(a, 0) for a in p)) if spec.nonneg
               else (lambda p: p))

    # -- start
    if init == "given":
        w = init_tensor.weights.astype(dtype) / s
        factors = [a.astype(dtype) for a in init_tensor.factors]
        root = jnp.abs(w) ** (1.0 / x.ndim)
        factors = tuple([factors[0] * (w / jnp.where(root > 0, root, 1) ** (x.ndim - 1))]
                        + [a * root for a in factors[1:]])
        factors = project(factors)
    else:
        init_key = None
        if init == "random":
            init_key = key if n_samples is None else jax.random.fold_in(key, 1)
        _, factors = cp_initial_factors(xs, rank, init_key, init, spec.nonneg, precision)
        target = jnp.log1p(xs) if loss_name == "poisson_log" else xs
        factors = _balanced(project(tuple(factors)), safe_norm(jnp.where(obs, target, 0)),
                            precision)

    # -- the record of one step
    norm_x = safe_norm(xs)

    def record(factors, value):
        mu = spec.mean(_model(factors, precision))
        err = safe_divide(safe_norm(jnp.where(obs, xs - mu, 0)), norm_x)
        return value, err

    # -- the steps
    if optimizer == "lbfgs":
        step, state, factors_of = _lbfgs(full_loss, project, record, factors, spec.nonneg)
    else:
        if type(optimizer) is tuple:  # ("adam", learning_rate); an optax transform is a NamedTuple
            optimizer = optax.adam(optimizer[1])
        grad_fn = jax.grad(full_loss)
        if n_samples is not None:
            size = x.size
            frac_obs = n_obs / size

            def sampled_loss(factors, idx):
                xv = xs.reshape(-1)[idx]
                ov = obs.reshape(-1)[idx]
                coords = jnp.stack(jnp.unravel_index(idx, x.shape), axis=1)
                vals = elementwise(xv, _sample_model(factors, coords))
                return jnp.sum(jnp.where(ov, vals, 0)) / (n_samples * frac_obs)

            def grad_fn(factors, k):
                idx = jax.random.randint(jax.random.fold_in(key, k), (n_samples,), 0, size)
                return jax.grad(sampled_loss)(factors, idx)

            # the record: F and the error estimated on one fixed sample (no dense model)
            n_eval = EVAL_FACTOR * n_samples
            eval_idx = jax.random.randint(jax.random.fold_in(key, EVAL_SAMPLE_TAG), (n_eval,), 0,
                                          size)
            eval_x = xs.reshape(-1)[eval_idx]
            eval_obs = obs.reshape(-1)[eval_idx]
            eval_coords = jnp.stack(jnp.unravel_index(eval_idx, x.shape), axis=1)

            def record(factors, value):
                del value
                mv = _sample_model(factors, eval_coords)
                est = jnp.sum(jnp.where(eval_obs, elementwise(eval_x, mv), 0))
                sq = jnp.sum(jnp.where(eval_obs, jnp.square(eval_x - spec.mean(mv)), 0))
                return (est / (n_eval * frac_obs),
                        safe_divide(jnp.sqrt(sq * (size / n_eval)), norm_x))

        step, state, factors_of = _first_order(optimizer, grad_fn, full_loss, project, record,
                                               factors, stochastic=n_samples is not None)

    if n_samples is None:
        state, n_done, losses, errors, converged = _iterate(step, state, n_iter=n_iter,
                                                            tol=0 if fixed else tol)
    else:
        state, n_done, losses, errors, converged = _iterate_stochastic(
            step, state, n_iter=n_iter, tol=0 if fixed else tol)
    factors = factors_of(state)

    result = poison(_unit_columns(factors, s), n_nonfinite)
    if not return_info:
        return result, n_nonfinite
    mean_x = jnp.sum(xs) / n_obs
    losses = _rescale_loss(loss_name, losses, s, mean_x)
    rel = relative_error(x / s, spec.mean(_model(factors, precision)), mask)
    info = GCPInfo(n_done, errors, rel, converged, losses)
    return (result, poison(info, n_nonfinite)), n_nonfinite


def _lbfgs(full_loss, project, record, factors, nonneg):
    """The projected L-BFGS iteration of the module docstring: ``(step, state)`` for
    :func:`_iterate`. The factors are flattened into one vector ``a``; the memory holds the
    last ``LBFGS_MEMORY`` pairs ``s = a_{k+1} − a_k``, ``y = ∇F_{k+1} − ∇F_k`` (full gradients,
    kept only where ``sᵀy > 0``), and the two-loop recursion is applied to the gradient of the
    free variables."""
    flat, unravel = ravel_pytree(factors)
    n, m = flat.shape[0], LBFGS_MEMORY
    dtype = flat.dtype

    def loss_flat(a):
        return full_loss(unravel(a))

    def project_flat(a):
        return jnp.maximum(a, 0) if nonneg else a

    value_and_grad = jax.value_and_grad(loss_flat)

    def two_loop(g, mem_s, mem_y, rho, k):
        count = jnp.minimum(k, m)

        def backward(i, carry):
            q, alpha = carry
            j = (k - 1 - i) % m
            a_j = jnp.where(i < count, rho[j] * jnp.vdot(mem_s[j], q), 0)
            return q - a_j * mem_y[j], alpha.at[j].set(a_j)

        q, alpha = lax.fori_loop(0, m, backward, (g, jnp.zeros((m,), dtype)))
        newest = (k - 1) % m
        yy = jnp.vdot(mem_y[newest], mem_y[newest])
        gamma = jnp.where(count > 0, safe_divide(1.0, rho[newest] * yy),
                          safe_divide(1.0, safe_norm(g)))
        r = gamma * q

        def forward(i, r):
            j = (k - count + i) % m
            beta = rho[j] * jnp.vdot(mem_y[j], r)
            return jnp.where(i < count, r + mem_s[j] * (alpha[j] - beta), r)

        return lax.fori_loop(0, m, forward, r), gamma

    def step(state):
        a, value, grad, mem_s, mem_y, rho, k = state
        bound = (a <= 0) & (grad > 0) if nonneg else jnp.zeros(a.shape, bool)
        free = jnp.where(bound, 0, grad)
        d, gamma = two_loop(free, mem_s, mem_y, rho, k)
        d = jnp.where(bound, 0, d)
        slope = jnp.vdot(free, d)
        d = jnp.where(jnp.isfinite(slope) & (slope > 0), d, gamma * free)

        steepest = safe_divide(1.0, safe_norm(free)) * free

        def trial(t, fallback):
            q = project_flat(a - t * jnp.where(fallback, steepest, d))
            return q, loss_flat(q), jnp.vdot(grad, q - a)

        q, _, accepted, fell_back = _armijo(trial, a, value)
        q = jnp.where(accepted, q, a)
        new_value, new_grad = value_and_grad(q)
        s_k, y_k = q - a, new_grad - grad
        sy = jnp.vdot(s_k, y_k)
        keep = sy > 1e-10 * safe_norm(s_k) * safe_norm(y_k)
        slot = k % m
        mem_s = jnp.where(keep, mem_s.at[slot].set(s_k), mem_s)
        mem_y = jnp.where(keep, mem_y.at[slot].set(y_k), mem_y)
        rho = jnp.where(keep, rho.at[slot].set(safe_divide(1.0, sy)), rho)
        k = jnp.where(fell_back, 0, k + keep.astype(k.dtype))  # a failed L-BFGS step: restart
        return (q, new_value, new_grad, mem_s, mem_y, rho, k), record(unravel(q), new_value)

    value0, grad0 = value_and_grad(flat)
    state = (flat, value0, grad0, jnp.zeros((m, n), dtype), jnp.zeros((m, n), dtype),
             jnp.zeros((m,), dtype), jnp.zeros((), jnp.int32))
    return step, state, lambda state: unravel(state[0])


def _first_order(optimizer, grad_fn, full_loss, project, record, factors, stochastic):
    """``A ← P(A + update(∇F))`` with an Optax transformation; ``grad_fn(A, k)`` for the
    stochastic estimate at step ``k``."""
    def step(state):
        p, opt_state, k = state
        g = grad_fn(p, k) if stochastic else grad_fn(p)
        updates, opt_state = optimizer.update(g, opt_state, p)
        q = project(optax.apply_updates(p, updates))
        # stochastic: the record estimates F itself (no full pass over the data)
        return (q, opt_state, k + 1), record(q, None if stochastic else full_loss(q))

    return (step, (factors, optimizer.init(factors), jnp.zeros((), jnp.int32)),
            lambda state: state[0])


def _armijo(trial, p, value):
    """Backtracking from ``t = 1``: halve ``t`` until ``F(A') ≤ F(A) + c₁ ∇Fᵀ(A' − A)`` for
    ``A' = P(A − t d)``. After ``MAX_HALVINGS`` halvings along the L-BFGS direction it starts
    again from ``t = 1`` along the steepest-descent direction ``∇F / ‖∇F‖`` (the fit then
    discards its memory), for ``MAX_HALVINGS`` more. Returns ``(A', F(A'), accepted,
    fell_back)``."""
    def accepted(v, dec):  # a strict decrease: an unchanged float is no progress
        return (v <= value + ARMIJO_C1 * dec) & (v < value) & jnp.isfinite(v)

    def cond(carry):
        k, _, v, dec = carry
        return (k < 2 * MAX_HALVINGS) & ~accepted(v, dec)

    def body(carry):
        k, _, _, _ = carry
        fallback = k >= MAX_HALVINGS
        t = jnp.ldexp(jnp.ones((), value.dtype), -jnp.where(fallback, k - MAX_HALVINGS, k))
        q, v, dec = trial(t, fallback)
        return k + 1, q, v, dec

    nan = jnp.asarray(jnp.nan, value.dtype)
    k, q, v, dec = lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), p, nan, nan))
    return q, v, accepted(v, dec), k > MAX_HALVINGS


def _iterate(step, state, *, n_iter, tol):
    """``state, (loss, err) = step(state)`` for ``n_iter`` steps (a scan for ``tol == 0``) or
    until ``|ΔF| ≤ tol · |F|`` (a while loop). Returns ``(state, n_done, losses, errors,
    converged)``."""
    if is_fixed_length(tol):
        state, (losses, errors) = lax.scan(lambda s, _: step(s), state, None, length=n_iter)
        return state, jnp.asarray(n_iter, jnp.int32), losses, errors, jnp.zeros((), bool)
    probe = jax.eval_shape(step, state)[1][0]
    nan = jnp.full((n_iter,), jnp.nan, probe.dtype)

    def cond(carry):
        _, i, _, _, _, done = carry
        return (i < n_iter) & ~done

    def body(carry):
        state, i, losses, errors, prev, _ = carry
        state, (value, err) = step(state)
        done = jnp.abs(prev - value) <= tol * jnp.abs(prev)
        return state, i + 1, losses.at[i].set(value), errors.at[i].set(err), value, done

    carry = (state, jnp.zeros((), jnp.int32), nan, nan, jnp.asarray(jnp.nan, probe.dtype),
             jnp.zeros((), bool))
    state, n_done, losses, errors, _, converged = lax.while_loop(cond, body, carry)
    return state, n_done, losses, errors, converged


# -- sparse data ------------------------------------------------------------------------------

SPARSE_LOSSES = ("gaussian", "poisson")


def _gcp_sparse(x, rank, *, key, loss, init, mask, optimizer, learning_rate, n_iter, tol,
                n_samples, delta, precision, return_info):
    """GCP of a ``BCOO`` tensor for the losses whose sum over the zeros has a closed form:

    * Gaussian: ``Σ_all (x − m)² = Σ_nz x² − 2 Σ_nz x m + ‖m‖²``, ``‖m‖² = 1ᵀ(⊛_n A_nᵀA_n)1``;
    * Poisson: ``Σ_all (m − x log(m + ε)) = Σ_r Π_n (1ᵀA_n)_r − Σ_nz x log(m + ε)``;

    so each loss and gradient costs ``O(nnz · N · R + Σ_n I_n R²)``; the dense tensor is never
    formed. ``F`` is the mean over all ``Π I_n`` entries, as for dense data.
    """
    if x.n_batch or x.n_dense:
        raise ValueError(f"x must be a BCOO array with sparse dimensions only, got n_batch="
                         f"{x.n_batch}, n_dense={x.n_dense}.")
    if x.ndim < 2 or 0 in x.shape:
        raise ValueError(f"x must have at least 2 dimensions, none of size zero, got shape "
                         f"{tuple(x.shape)}.")
    if n_samples is not None:
        return _gcp_sparse_stochastic(x, rank, key=key, loss=loss, init=init, mask=mask,
                                      optimizer=optimizer, learning_rate=learning_rate,
                                      n_iter=n_iter, tol=tol, n_samples=n_samples, delta=delta,
                                      precision=precision, return_info=return_info)
    if not isinstance(loss, str) or loss not in SPARSE_LOSSES:
        choice = check_choice(loss, Loss, "loss") if isinstance(loss, str) else "a callable"
        raise ValueError(f"sparse (BCOO) x is fitted with loss in {list(SPARSE_LOSSES)} (the "
                         f"sum over its zeros has a closed form); got {choice!r}: pass "
                         "n_samples (stochastic GCP, which samples the zeros) or "
                         "x.todense() for the other losses.")
    if mask is not None:
        raise ValueError("mask is not supported with sparse (BCOO) x: its zeros are data.")
    rank = check_positive_int(rank, "rank")
    n_iter, tol = check_iteration_args(n_iter, tol)
    optimizer = _resolve_optimizer(optimizer, learning_rate, None)
    if init == "svd":
        raise ValueError('init="svd" needs dense unfoldings: with sparse (BCOO) x pass '
                         'init="random" with a key, or a CPTensor.')
    init_tensor, init_kind = resolve_init(init, CPTensor, key,
                                          lambda t: check_cp_init(t, x.shape, rank))
    fixed, tol = resolve_tol(tol)
    values = x.data
    if not jnp.issubdtype(values.dtype, jnp.floating) or values.dtype not in (jnp.float32,
                                                                              jnp.float64):
        values = values.astype(jnp.float32)
    if not is_traced(values):
        _check_domain(values, None, LOSSES[loss].data, loss)
    result, n_nonfinite = _gcp_sparse_fit(
        values, x.indices, key, init_tensor, tol, shape=tuple(x.shape), rank=rank,
        n_iter=n_iter, fixed=fixed, init=init_kind, loss_name=loss, optimizer=optimizer,
        precision=precision, return_info=bool(return_info))
    report_nonfinite(n_nonfinite, "x")
    return result


@functools.partial(jax.jit, static_argnames=(
    "shape", "rank", "n_iter", "fixed", "init", "loss_name", "optimizer", "precision",
    "return_info"))
def _gcp_sparse_fit(values, indices, key, init_tensor, tol, *, shape, rank, n_iter, fixed,
                    init, loss_name, optimizer, precision, return_info):
    dtype = values.dtype
    spec = LOSSES[loss_name]
    values, n_nonfinite = finite_part(values)
    size = float(np.prod(shape))
    s = lax.stop_gradient(pow2_scale(values))
    v = values / s
    sum_sq = jnp.vdot(v, v)

    def gram_sum(factors):
        prec = resolve_precision(precision)
        g = functools.reduce(jnp.multiply, [jnp.matmul(a.T, a, precision=prec)
                                            for a in factors])
        return jnp.sum(g)

    def cross(factors):
        return jnp.vdot(v, _sample_model(factors, indices))

    def full_loss(factors):
        if loss_name == "gaussian":
            total = sum_sq - 2 * cross(factors) + gram_sum(factors)
        else:
            sums = functools.reduce(jnp.multiply, [jnp.sum(a, axis=0) for a in factors])
            m = _sample_model(factors, indices)
            total = jnp.sum(sums) - jnp.vdot(v, jnp.log(m + EPS))
        return total / size

    project = ((lambda p: tuple(jnp.maximum(a, 0) for a in p)) if spec.nonneg
               else (lambda p: p))

    def record(factors, value):
        err_sq = jnp.maximum(sum_sq - 2 * cross(factors) + gram_sum(factors), 0)
        return value, safe_divide(jnp.sqrt(err_sq), jnp.sqrt(sum_sq))

    if init == "given":
        w = init_tensor.weights.astype(dtype) / s
        factors = [a.astype(dtype) for a in init_tensor.factors]
        root = jnp.abs(w) ** (1.0 / len(shape))
        factors = project(tuple([factors[0] * (w / jnp.where(root > 0, root, 1)
                                               ** (len(shape) - 1))]
                                + [a * root for a in factors[1:]]))
    else:
        keys = jax.random.split(key, len(shape))
        draw = jax.random.uniform if spec.nonneg else jax.random.normal
        factors = tuple(draw(k, (n, rank), dtype) for k, n in zip(keys, shape))
        norm = jnp.sqrt(jnp.maximum(gram_sum(factors), 0))
        ratio = safe_divide(jnp.sqrt(sum_sq), norm)
        ratio = jnp.where(jnp.isfinite(ratio) & (norm > 0), ratio, 1)
        factors = tuple(a * ratio ** (1.0 / len(shape)) for a in factors)

    if optimizer == "lbfgs":
        step, state, factors_of = _lbfgs(full_loss, project, record, factors, spec.nonneg)
    else:
        if type(optimizer) is tuple:  # ("adam", learning_rate); an optax transform is a NamedTuple
            optimizer = optax.adam(optimizer[1])
        step, state, factors_of = _first_order(optimizer, jax.grad(full_loss), full_loss,
                                               project, record, factors, stochastic=False)
    state, n_done, losses, errors, converged = _iterate(step, state, n_iter=n_iter,
                                                        tol=0 if fixed else tol)
    factors = factors_of(state)
    result = poison(_unit_columns(factors, s), n_nonfinite)
    if not return_info:
        return result, n_nonfinite
    losses = _rescale_loss(loss_name, losses, s, jnp.sum(v) / size)
    info = GCPInfo(n_done, errors, record(factors, losses[0])[1], converged, losses)
    return (result, poison(info, n_nonfinite)), n_nonfinite


# -- stochastic GCP of sparse data: stratified sampling ---------------------------------------



def _split_samples(n_samples):
    """``(p, q)``: nonzeros and zeros drawn per step, from an int (``p = ⌈s/2⌉``, ``q = ⌊s/2⌋``)
    or a pair."""
    if isinstance(n_samples, (tuple, list)):
        if len(n_samples) != 2:
            raise ValueError("n_samples must be a positive int or a pair (p, q) of positive ints "
                             f"(nonzeros, zeros per step), got {n_samples!r}.")
        return (check_positive_int(n_samples[0], "n_samples[0]"),
                check_positive_int(n_samples[1], "n_samples[1]"))
    s = check_positive_int(n_samples, "n_samples")
    if s < 2:
        raise ValueError("n_samples for sparse (BCOO) x must be at least 2 (half nonzeros, half "
                         f"zeros) or a pair (p, q), got {n_samples!r}.")
    return (s + 1) // 2, s // 2


def _lex_sorted(indices):
    """The rows of ``indices`` (``nnz × N``) in lexicographic order, and the permutation."""
    order = jnp.lexsort(tuple(indices[:, n] for n in reversed(range(indices.shape[1]))))
    return indices[order], order


def _is_stored(sorted_indices, coords):
    """Whether each row of ``coords`` (``q × N``) is a row of ``sorted_indices`` (``nnz × N``,
    lexicographically sorted, unique): a vectorised binary search of ``⌈log₂(nnz + 1)⌉``
    halvings comparing coordinate tuples, so no linear index (which overflows int32 past
    ``2³¹`` entries) is formed. ``O(q · N · log nnz)`` work, ``O(q · N)`` memory."""
    nnz = sorted_indices.shape[0]

    def less(rows, c):  # rows < c lexicographically, row by row
        lt = jnp.zeros(c.shape[0], bool)
        eq = jnp.ones(c.shape[0], bool)
        for n in range(c.shape[1]):
            lt = lt | (eq & (rows[:, n] < c[:, n]))
            eq = eq & (rows[:, n] == c[:, n])
        return lt

    def body(_, carry):
        lo, hi = carry
        mid = (lo + hi) // 2
        go_right = less(sorted_indices[jnp.minimum(mid, nnz - 1)], coords) & (lo < hi)
        return jnp.where(go_right, mid + 1, lo), jnp.where(go_right | (lo >= hi), hi, mid)

    q = coords.shape[0]
    lo, _ = lax.fori_loop(0, max(1, math.ceil(math.log2(nnz + 1))), body,
                          (jnp.zeros(q, jnp.int32), jnp.full(q, nnz, jnp.int32)))
    found = sorted_indices[jnp.minimum(lo, nnz - 1)]
    return (lo < nnz) & jnp.all(found == coords, axis=1)


def _stratified_sample(key, values, sorted_indices, shape, p, q):
    """Kolda & Hong's stratified sample of a sparse tensor: ``p`` stored entries uniformly with
    replacement, and ``q`` entries uniformly with replacement from the whole index space taken
    as zeros, those that hit a stored entry rejected (weight 0). Returns ``(coords, x, w)``
    (``(p+q) × N``, ``p+q``, ``p+q``) such that ``Σ_k w_k f(x_k, m_k)`` is an unbiased estimate
    of ``F = (1/numel) Σ_all f(x_i, m_i)``: ``w = nnz / (p · numel)`` on the stored samples and
    ``w = 1 / q`` on the zero samples not rejected (a uniform draw is a zero with probability
    ``(numel − nnz)/numel``, so ``E[(numel/q) Σ [zero] f] = Σ_zeros f``; this equals the
    paper's weight ``(numel − nnz)/q`` for exactly-``q`` zeros in expectation, without
    redrawing)."""
    nnz = values.shape[0]
    numel = float(np.prod(shape))
    k_nz, k_z = jax.random.split(key)
    pick = jax.random.randint(k_nz, (p,), 0, nnz)
    zkeys = jax.random.split(k_z, len(shape))
    zero_coords = jnp.stack([jax.random.randint(k, (q,), 0, n, dtype=sorted_indices.dtype)
                             for k, n in zip(zkeys, shape)], axis=1)
    hit = _is_stored(sorted_indices, zero_coords)
    dtype = values.dtype
    coords = jnp.concatenate([sorted_indices[pick], zero_coords], axis=0)
    xv = jnp.concatenate([values[pick], jnp.zeros((q,), dtype)])
    w = jnp.concatenate([jnp.full((p,), nnz / (p * numel), dtype),
                         jnp.where(hit, 0, 1 / q).astype(dtype)])
    return coords, xv, w


def _sampled_loss(f, factors, sample):
    """``Σ_k w_k f(x_k, m_k)`` with the model ``m`` at the sampled coordinates only."""
    coords, xv, w = sample
    return jnp.sum(w * f(xv, _sample_model(factors, coords)))


def _gcp_sparse_stochastic(x, rank, *, key, loss, init, mask, optimizer, learning_rate, n_iter,
                           tol, n_samples, delta, precision, return_info):
    """Checks for stochastic GCP of a ``BCOO`` tensor, then the compiled fit."""
    if callable(loss) and not isinstance(loss, str):
        spec = _Spec(_UserLoss(loss), False, False, _identity, None)
        loss_name = None
    else:
        loss_name = check_choice(loss, Loss, "loss")
        if loss_name in ZERO_FREE_LOSSES:
            raise ValueError(f'loss="{loss_name}" needs x > 0, but the unstored entries of a '
                             "sparse (BCOO) x are zeros: densify the positive entries you have "
                             "and pass a mask, or choose another loss.")
        spec = LOSSES[loss_name]
    if mask is not None:
        raise ValueError("mask is not supported with sparse (BCOO) x: its zeros are data.")
    rank = check_positive_int(rank, "rank")
    n_iter, tol = check_iteration_args(n_iter, tol)
    check_positive_number(delta, "delta")
    p, q = _split_samples(n_samples)
    check_key(key, "for n_samples (stochastic GCP draws entries)")
    optimizer = _resolve_optimizer(optimizer, learning_rate, n_samples)
    if init == "svd":
        raise ValueError('init="svd" needs dense unfoldings: with sparse (BCOO) x pass '
                         'init="random" with a key, or a CPTensor.')
    init_tensor, init_kind = resolve_init(init, CPTensor, key,
                                          lambda t: check_cp_init(t, x.shape, rank))
    fixed, tol = resolve_tol(tol)
    if x.nse == 0:
        raise ValueError("x (BCOO) has no stored entries: stratified sampling needs at least "
                         "one nonzero.")
    values = x.data
    if not jnp.issubdtype(values.dtype, jnp.floating) or values.dtype not in (jnp.float32,
                                                                              jnp.float64):
        values = values.astype(jnp.float32)
    if not is_traced(values):
        _check_domain(values, None, spec.data, loss_name)
    indices = x.indices.astype(jnp.int32)
    result, n_nonfinite = _gcp_sparse_stochastic_fit(
        values, indices, key, init_tensor, tol, float(delta), shape=tuple(x.shape), rank=rank,
        n_iter=n_iter, fixed=fixed, init=init_kind, spec=spec, loss_name=loss_name,
        optimizer=optimizer, p=p, q=q, precision=precision, return_info=bool(return_info))
    report_nonfinite(n_nonfinite, "x")
    return result


@functools.partial(jax.jit, static_argnames=(
    "shape", "rank", "n_iter", "fixed", "init", "spec", "loss_name", "optimizer", "p", "q",
    "precision", "return_info"))
def _gcp_sparse_stochastic_fit(values, indices, key, init_tensor, tol, delta, *, shape, rank,
                               n_iter, fixed, init, spec, loss_name, optimizer, p, q, precision,
                               return_info):
    dtype = values.dtype
    values, n_nonfinite = finite_part(values)
    size = float(np.prod(shape))
    s = lax.stop_gradient(pow2_scale(values)) if spec.scaled else jnp.ones((), dtype)
    v = values / s
    delta = delta / s
    sorted_indices, order = _lex_sorted(indices)
    v = v[order]
    sum_sq = jnp.vdot(v, v)
    init_key, eval_key, step_key = jax.random.split(key, 3)

    def f(xv, mv):
        return spec.f(xv, mv, delta)

    def gram_sum(factors):
        prec = resolve_precision(precision)
        g = functools.reduce(jnp.multiply, [jnp.matmul(a.T, a, precision=prec)
                                            for a in factors])
        return jnp.sum(g)

    project = ((lambda p_: tuple(jnp.maximum(a, 0) for a in p_)) if spec.nonneg
               else (lambda p_: p_))

    # -- start (as the full-gradient sparse fit; the norm of log(1 + x) for poisson_log)
    if init == "given":
        w = init_tensor.weights.astype(dtype) / s
        factors = [a.astype(dtype) for a in init_tensor.factors]
        root = jnp.abs(w) ** (1.0 / len(shape))
        factors = project(tuple([factors[0] * (w / jnp.where(root > 0, root, 1)
                                               ** (len(shape) - 1))]
                                + [a * root for a in factors[1:]]))
    else:
        keys = jax.random.split(init_key, len(shape))
        draw = jax.random.uniform if spec.nonneg else jax.random.normal
        factors = tuple(draw(k, (n, rank), dtype) for k, n in zip(keys, shape))
        target = jnp.log1p(v) if loss_name == "poisson_log" else v
        norm = jnp.sqrt(jnp.maximum(gram_sum(factors), 0))
        ratio = safe_divide(safe_norm(target), norm)
        ratio = jnp.where(jnp.isfinite(ratio) & (norm > 0), ratio, 1)
        factors = tuple(a * ratio ** (1.0 / len(shape)) for a in factors)

    # -- the fixed estimation sample (drawn once) and the record of one step
    eval_sample = _stratified_sample(eval_key, v, sorted_indices, shape, EVAL_FACTOR * p,
                                     EVAL_FACTOR * q)
    norm_v = jnp.sqrt(sum_sq)

    def estimate(factors):
        coords, xv, w = eval_sample
        m = _sample_model(factors, coords)
        value = jnp.sum(w * f(xv, m))
        err_sq = size * jnp.sum(w * jnp.square(xv - spec.mean(m)))
        return value, safe_divide(jnp.sqrt(err_sq), norm_v)

    def step(state):
        factors, opt_state, k = state
        sample = _stratified_sample(jax.random.fold_in(step_key, k), v, sorted_indices, shape,
                                    p, q)
        g = jax.grad(_sampled_loss, argnums=1)(f, factors, sample)
        updates, opt_state = optimizer.update(g, opt_state, factors)
        factors = project(optax.apply_updates(factors, updates))
        return (factors, opt_state, k + 1), estimate(factors)

    if type(optimizer) is tuple:  # ("adam", learning_rate)
        optimizer = optax.adam(optimizer[1])
    state = (factors, optimizer.init(factors), jnp.zeros((), jnp.int32))
    state, n_done, losses, errors, converged = _iterate_stochastic(
        step, state, n_iter=n_iter, tol=0 if fixed else tol)
    factors = state[0]

    result = poison(_unit_columns(factors, s), n_nonfinite)
    if not return_info:
        return result, n_nonfinite
    losses = _rescale_loss(loss_name, losses, s, jnp.sum(v) / size)
    if spec.mean is _identity:  # exact: ‖x − m‖² = ‖x‖² − 2⟨x, m⟩ + ‖m‖² from the Grams
        cross = jnp.vdot(v, _sample_model(factors, sorted_indices))
        err_sq = jnp.maximum(sum_sq - 2 * cross + gram_sum(factors), 0)
        rel = safe_divide(jnp.sqrt(err_sq), norm_v)
    else:  # a nonlinear mean: the estimate from the fixed sample
        rel = estimate(factors)[1]
    info = GCPInfo(n_done, errors, rel, converged, losses)
    return (result, poison(info, n_nonfinite)), n_nonfinite


def _iterate_stochastic(step, state, *, n_iter, tol):
    """As :func:`_iterate`, but the stopping rule for noisy loss estimates: stop after
    ``MAX_FAILS`` steps in a row whose estimate is not below the best so far by more than
    ``tol · |best|`` (a simple form of Kolda & Hong's rule, without their step decay)."""
    if is_fixed_length(tol):
        state, (losses, errors) = lax.scan(lambda s, _: step(s), state, None, length=n_iter)
        return state, jnp.asarray(n_iter, jnp.int32), losses, errors, jnp.zeros((), bool)
    probe = jax.eval_shape(step, state)[1][0]
    nan = jnp.full((n_iter,), jnp.nan, probe.dtype)

    def cond(carry):
        _, i, _, _, _, fails = carry
        return (i < n_iter) & (fails < MAX_FAILS)

    def body(carry):
        state, i, losses, errors, best, fails = carry
        state, (value, err) = step(state)
        better = jnp.where(jnp.isfinite(best), value < best - tol * jnp.abs(best),
                           jnp.isfinite(value))
        fails = jnp.where(better, 0, fails + 1)
        best = jnp.where(better, value, best)
        return state, i + 1, losses.at[i].set(value), errors.at[i].set(err), best, fails

    carry = (state, jnp.zeros((), jnp.int32), nan, nan, jnp.asarray(jnp.inf, probe.dtype),
             jnp.zeros((), jnp.int32))
    state, n_done, losses, errors, _, fails = lax.while_loop(cond, body, carry)
    return state, n_done, losses, errors, fails >= MAX_FAILS
