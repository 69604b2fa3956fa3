"""Constraints and penalties on CP factors, for :func:`~tensorfact.decomposition.constrained_cp`.

Each is a small immutable (frozen, hashable) object whose :meth:`prox` is the proximal operator
of its regulariser ``r`` with step ``1/ρ``,

    prox(v, ρ) = argmin_a  r(a) + (ρ/2) ‖a − v‖²,

applied to a whole factor ``v`` (``I × R``; column-wise constraints act on each column). For a
set constraint ``r`` is the indicator of the set and the prox is the Euclidean projection.
They are the ``Ã``-step of AO-ADMM (Huang, Sidiropoulos & Liavas, IEEE TSP 2016, Table I) and are
public under :mod:`tensorfact.constraints`. A constraint is a static argument of the compiled
fit: changing a strength recompiles.

Scaling: :meth:`Constraint.for_scaled_fit` gives the constraint that a fit of ``x / s`` needs so
that it solves the problem stated on ``x`` (see :func:`constrained_cp`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import cho_factor, cho_solve

__all__ = ["Constraint", "Nonneg", "L1", "Simplex", "Box", "Smooth", "Unimodal",
           "resolve_constraints"]


def _finite_nonneg(value, what: str) -> float:
    if isinstance(value, (bool, str, bytes)):
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}.") from None
    if not (0 <= number < math.inf):
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}.")
    return number


class Constraint:
    """Base class: a regulariser ``r`` of one factor with its proximal operator.

    Subclasses define ``prox(a, rho)`` and ``for_scaled_fit(factor_scale, data_scale)``: the
    constraint on ``B = A / factor_scale`` in the fit of ``x / data_scale``, whose objective is
    the original one divided by ``data_scale²``: ``r'(B) = r(factor_scale · B) / data_scale²``.
    Rescaled strengths are capped at ``1/eps`` (where they already zero or flatten a factor),
    so no infinity enters the fit.

    A custom constraint subclasses this with ``prox`` (traceable, shape-preserving) and, unless
    it is scale-free (a cone, like ``Nonneg``), ``for_scaled_fit``; make it hashable (a frozen
    dataclass): it is a static argument of the compiled fit.
    """

    def prox(self, a, rho):  # pragma: no cover - abstract
        raise NotImplementedError

    def for_scaled_fit(self, factor_scale, data_scale):
        """Scale-invariant constraints (cones) are their own rescaling."""
        return self


@dataclasses.dataclass(frozen=True)
class Nonneg(Constraint):
    """Nonnegative entries: ``prox(v) = max(v, 0)`` (the projection; ``ρ`` is irrelevant).

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> tfa.constraints.Nonneg().prox(jnp.array([[-1.0], [2.0]]), 1.0).ravel().tolist()
      [0.0, 2.0]
    """

    def prox(self, a, rho):
        return jnp.maximum(a, 0)


@dataclasses.dataclass(frozen=True)
class L1(Constraint):
    """Sparsity penalty ``r(A) = strength · Σ|a_ij|``: soft thresholding at ``strength / ρ``,
    ``prox(v) = sign(v) · max(|v| − strength/ρ, 0)``.

    Raises:
      ValueError: for a negative, NaN or infinite ``strength``.
    """

    strength: float

    def __post_init__(self):
        object.__setattr__(self, "strength", _finite_nonneg(self.strength, "L1 strength"))

    def prox(self, a, rho):
        threshold = self.strength / rho
        return jnp.sign(a) * jnp.maximum(jnp.abs(a) - threshold, 0)

    def for_scaled_fit(self, factor_scale, data_scale):
        # strength · ‖f B‖₁ / s² = (strength · f / s²) ‖B‖₁
        return _ScaledL1(_capped(self.strength * (factor_scale / data_scale) / data_scale))


@dataclasses.dataclass(frozen=True)
class Simplex(Constraint):
    """Every column on the probability simplex ``{a ≥ 0, Σ_i a_i = 1}``: the Euclidean projection
    by sorting (Duchi, Shalev-Shwartz, Singer & Chandra, ICML 2008, Fig. 1), ``O(I log I)`` per
    column, jit- and vmap-friendly (no data-dependent shapes):
    ``θ = (Σ_{k≤ρ} u_k − 1)/ρ`` with ``u`` sorted decreasingly and ``ρ`` the largest ``k`` with
    ``u_k > (Σ_{j≤k} u_j − 1)/k``; ``prox(v) = max(v − θ, 0)``.

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> tfa.constraints.Simplex().prox(jnp.array([[0.5], [2.0]]), 1.0).ravel().tolist()
      [0.0, 1.0]
    """

    def prox(self, a, rho):
        return simplex_projection(a, 1.0)

    def for_scaled_fit(self, factor_scale, data_scale):
        return _ScaledSimplex(1.0 / factor_scale)


@dataclasses.dataclass(frozen=True)
class Box(Constraint):
    """Entries in ``[lower, upper]`` (either may be infinite): ``prox(v) = clip(v, lower, upper)``.

    Raises:
      ValueError: for NaN bounds or ``lower > upper``.
    """

    lower: float = -math.inf
    upper: float = math.inf

    def __post_init__(self):
        for name in ("lower", "upper"):
            value = getattr(self, name)
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"Box {name} must be a number, got {value!r}.") from None
            if math.isnan(number) or isinstance(value, (bool, str)):
                raise ValueError(f"Box {name} must be a number, got {value!r}.")
            object.__setattr__(self, name, number)
        if self.lower > self.upper:
            raise ValueError(f"Box needs lower <= upper, got lower={self.lower!r} > "
                             f"upper={self.upper!r}.")

    def prox(self, a, rho):
        return jnp.clip(a, self.lower, self.upper)

    def for_scaled_fit(self, factor_scale, data_scale):
        return _ScaledBox(self.lower / factor_scale, self.upper / factor_scale)


@dataclasses.dataclass(frozen=True)
class Smooth(Constraint):
    """Smoothness penalty ``r(a) = (strength/2) ‖D a‖²`` on each column, ``D`` the
    ``(I−2) × I`` second-difference matrix (rows ``[1, −2, 1]``). The prox is the linear solve
    ``(I + (strength/ρ) DᵀD) z = v`` (a Cholesky factorization of a pentadiagonal matrix, done
    dense: ``I`` is one mode's size). Modes shorter than 3 have no second difference.

    Raises:
      ValueError: for a negative, NaN or infinite ``strength``.
    """

    strength: float

    def __post_init__(self):
        object.__setattr__(self, "strength", _finite_nonneg(self.strength, "Smooth strength"))

    def prox(self, a, rho):
        return smoothing_solve(a, self.strength / rho)

    def for_scaled_fit(self, factor_scale, data_scale):
        # (strength/2) ‖D f B‖² / s² = (strength (f/s)²)/2 ‖DB‖²
        ratio = factor_scale / data_scale
        return _ScaledSmooth(_capped(self.strength * ratio * ratio))


@dataclasses.dataclass(frozen=True)
class Unimodal(Constraint):
    """Every column unimodal (non-decreasing up to a peak, non-increasing after it): the exact
    least-squares projection by prefix isotonic regression (Stout, "Unimodal regression via
    prefix isotonic regression", Comput. Stat. Data Anal. 2008). Pool-adjacent-violators runs
    as a ``lax.scan`` with a fixed-size block stack (a ``lax.while_loop`` merges blocks), giving
    the error of the increasing fit of every prefix and of the decreasing fit of every suffix in
    ``O(I)`` amortised; the best split is their smallest sum, and the fit at that split is the
    projection. A cone: ``ρ`` is irrelevant and the constraint is scale-free. Not
    reverse-differentiable (the merges are a ``while_loop``).

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> v = jnp.array([[1.0], [3.0], [2.0], [4.0], [1.0]])
      >>> tfa.constraints.Unimodal().prox(v, 1.0).ravel().tolist()
      [1.0, 2.5, 2.5, 4.0, 1.0]
    """

    def prox(self, a, rho):
        return jax.vmap(_unimodal_column, in_axes=1, out_axes=1)(a)


def _pava_increasing(y):
    """Increasing isotonic regression of ``y`` by PAVA: ``(fit, prefix_sse)`` where
    ``prefix_sse[i]`` is the squared error of the increasing fit of ``y[:i+1]``."""
    n = y.shape[0]
    zeros = jnp.zeros((n,), y.dtype)

    def violated(c):
        sums, cnts, top, _ = c
        a, b = top - 2, top - 1
        return (top >= 2) & (sums[jnp.maximum(a, 0)] * cnts[b] > sums[b] * cnts[jnp.maximum(a, 0)])

    def merge(c):
        sums, cnts, top, acc = c
        a, b = top - 2, top - 1
        sa, ca, sb, cb = sums[a], cnts[a], sums[b], cnts[b]
        s, k = sa + sb, ca + cb
        acc = acc - sa * sa / ca - sb * sb / cb + s * s / k
        sums = sums.at[a].set(s).at[b].set(0)
        cnts = cnts.at[a].set(k).at[b].set(0)
        return sums, cnts, top - 1, acc

    def push(c, yi):
        sums, cnts, top, acc = c
        c = (sums.at[top].set(yi), cnts.at[top].set(1), top + 1, acc + yi * yi)
        c = lax.while_loop(violated, merge, c)
        return c, c[3]

    init = (zeros, zeros, jnp.zeros((), jnp.int32), jnp.zeros((), y.dtype))
    (sums, cnts, _, _), acc = lax.scan(push, init, y)
    prefix_sse = jnp.maximum(jnp.cumsum(y * y) - acc, 0)
    ends = jnp.cumsum(cnts)
    block = jnp.minimum(jnp.searchsorted(ends, jnp.arange(n, dtype=ends.dtype), side="right"),
                        n - 1)
    fit = sums[block] / jnp.where(cnts[block] > 0, cnts[block], 1)
    return fit, prefix_sse


def _unimodal_column(y):
    n = y.shape[0]
    _, inc_sse = _pava_increasing(y)
    _, dec_rev = _pava_increasing(y[::-1])  # decreasing fits of the suffixes, reversed
    dec_sse = dec_rev[::-1]  # dec_sse[j]: error of the decreasing fit of y[j:]
    after = jnp.concatenate([dec_sse[1:], jnp.zeros((1,), y.dtype)])
    peak = jnp.argmin(inc_sse + after)  # the increasing part is y[:peak+1]
    idx = jnp.arange(n)
    big = jnp.max(jnp.abs(y)) + 1  # never pooled with the part being fitted
    inc_fit, _ = _pava_increasing(jnp.where(idx <= peak, y, big))
    dec_fit, _ = _pava_increasing(jnp.where(idx[::-1] > peak, y[::-1], big))
    return jnp.where(idx <= peak, inc_fit, dec_fit[::-1])


def _capped(strength):
    strength = jnp.asarray(strength)
    return jnp.minimum(strength, 1 / jnp.finfo(strength.dtype).eps)


# The rescaled constraints hold traced parameters (the data's scale is known inside the fit
# only), so they are plain classes used inside the compiled fit, never static arguments.

class _ScaledL1(Constraint):
    def __init__(self, strength):
        self.strength = strength

    def prox(self, a, rho):
        return jnp.sign(a) * jnp.maximum(jnp.abs(a) - self.strength / rho, 0)


class _ScaledSimplex(Constraint):
    def __init__(self, total):
        self.total = total

    def prox(self, a, rho):
        return simplex_projection(a, self.total)


class _ScaledBox(Constraint):
    def __init__(self, lower, upper):
        self.lower, self.upper = lower, upper

    def prox(self, a, rho):
        return jnp.clip(a, self.lower, self.upper)


class _ScaledSmooth(Constraint):
    def __init__(self, strength):
        self.strength = strength

    def prox(self, a, rho):
        return smoothing_solve(a, self.strength / rho)


def simplex_projection(a, total=1.0):
    """Each column of ``a`` projected onto ``{z ≥ 0, Σ z = total}`` (Duchi et al. 2008)."""
    n = a.shape[0]
    u = -jnp.sort(-a, axis=0)  # decreasing
    css = jnp.cumsum(u, axis=0) - total
    k = jnp.arange(1, n + 1, dtype=a.dtype)[:, None]
    support = u * k > css  # u_k > (cumsum_k − total)/k
    count = jnp.sum(support, axis=0)  # ρ ≥ 1 always (k = 1 holds for total > 0)
    idx = jnp.maximum(count - 1, 0)
    theta = jnp.take_along_axis(css, idx[None, :], axis=0)[0] / jnp.maximum(count, 1)
    return jnp.maximum(a - theta[None, :], 0)


def second_difference(n: int, dtype):
    """The ``(n−2) × n`` second-difference matrix (empty for ``n < 3``)."""
    m = max(n - 2, 0)
    eye = jnp.eye(m, n, dtype=dtype)
    return eye - 2 * jnp.eye(m, n, k=1, dtype=dtype) + jnp.eye(m, n, k=2, dtype=dtype)


def smoothing_solve(v, mu):
    """``(I + μ DᵀD)⁻¹ v`` with ``D`` the second-difference matrix along axis 0."""
    n = v.shape[0]
    d = second_difference(n, v.dtype)
    hi = "highest"
    system = jnp.eye(n, dtype=v.dtype) + mu * jnp.matmul(d.T, d, precision=hi)
    return cho_solve(cho_factor(system, lower=True), v)


_NAMED = {"nonneg": Nonneg, "simplex": Simplex, "unimodal": Unimodal}


def _one(value, where: str):
    if value is None or isinstance(value, Constraint):
        return value
    if isinstance(value, str):
        if value not in _NAMED:
            raise ValueError(f"{where} must be a Constraint from tensorfact.constraints, None, or "
                             f"one of {sorted(_NAMED)}, got unknown string {value!r}.")
        return _NAMED[value]()
    raise TypeError(f"{where} must be a Constraint from tensorfact.constraints (Nonneg(), L1(s), "
                    f"Simplex(), Box(lo, hi), Smooth(s), Unimodal()), None, or one of "
                    f"{sorted(_NAMED)}, got {type(value).__name__} {value!r}.")


def resolve_constraints(constraints, ndim: int) -> tuple:
    """One constraint (or ``None``) per mode from one for every mode or a sequence of ``ndim``."""
    if isinstance(constraints, Sequence) and not isinstance(constraints, str):
        constraints = tuple(constraints)
        if len(constraints) != ndim:
            raise ValueError(f"constraints must be one constraint for every mode or a sequence of "
                             f"one per mode ({ndim} for a {ndim}-way x), got {len(constraints)}: "
                             f"{constraints!r}.")
        return tuple(_one(c, f"constraints[{n}]") for n, c in enumerate(constraints))
    return (_one(constraints, "constraints"),) * ndim
