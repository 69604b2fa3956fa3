"""SMMF: Adam-like steps with both moments held as rank-one factors of a square matrix.

"SMMF: Square-Matricized Momentum Factorization for Memory-Efficient Optimization" (AAAI 2025,
arXiv:2412.08894). Every parameter, whatever its shape (scalars, vectors, matrices, convolution
kernels), is viewed as the matrix ``n × m`` with ``n·m`` its size and ``n ≥ m`` as close to
square as its divisors allow. With ``G`` the gradient in that view, step ``t = 1, 2, …``:

    β₁ₜ = β₁ λ^(t−1),                 β₂ₜ = 1 − t^(−c)
    M = β₁ₜ (S ∘ r_M c_Mᵀ) + (1 − β₁ₜ) G
    V = β₂ₜ (r_V c_Vᵀ) + (1 − β₂ₜ) G²
    u = M / (√V + ε)
    S ← sign(M),  (r_M, c_M) ← NNMF₁(|M|),  (r_V, c_V) ← NNMF₁(V)

where ``NNMF₁(A) = (A 1 / 1ᵀA1, Aᵀ1)``, the rank-one nonnegative factorization that is exact when
``A`` is rank one (Adafactor's row/column sums, Shazeer & Stern 2018), ``λ`` the ``growth_rate``
and ``c`` the ``decay_rate``. There is no bias correction: ``β₂₁ = 0`` makes the first ``V`` the
first ``G²``. The step itself uses the dense ``M`` and ``V`` of the current iteration; only the
factors and the signs are kept.

State per parameter of size ``N = n·m``: the four float32 vectors ``r_M, c_M, r_V, c_V``
(``2(n + m)`` numbers) and the signs of ``M`` packed eight to a byte (``⌈N/8⌉`` bytes), against
Adam's ``2N`` numbers. :func:`tensorfact.optim.state_bytes` counts it.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from tensorfact._checks import check_nonneg_number, check_positive_number
from tensorfact._numerics import safe_divide

__all__ = ["SMMFState", "scale_by_smmf", "smmf", "square_shape"]


class SMMFState(NamedTuple):
    """State of :func:`scale_by_smmf`: the step count and, per parameter (trees shaped like the
    parameters), the rank-one factors of the first moment's magnitude (``m_row``, ``m_col``),
    its signs packed eight to a byte (``m_sign``, 1 = negative) and the factors of the second
    moment (``v_row``, ``v_col``)."""

    count: jax.Array
    m_row: Any
    m_col: Any
    m_sign: Any
    v_row: Any
    v_col: Any


def square_shape(size: int) -> tuple[int, int]:
    """``(n, m)`` with ``n·m = size``, ``n ≥ m`` and ``m`` the largest divisor of ``size`` not
    above ``√size`` (a prime size gives ``(size, 1)``; an empty parameter ``(0, 1)``)."""
    if size == 0:
        return 0, 1
    for m in range(math.isqrt(size), 0, -1):
        if size % m == 0:
            return size // m, m
    return size, 1  # unreachable: m = 1 divides every size


def _nnmf1(a):
    """Rank-one nonnegative factors ``(r, c)`` of ``a ≥ 0`` with ``a ≈ r cᵀ``: ``r = a1/1ᵀa1``,
    ``c = aᵀ1`` (exact when ``a`` has rank one; zero factors for a zero ``a``)."""
    row, col = jnp.sum(a, axis=1), jnp.sum(a, axis=0)
    return safe_divide(row, jnp.sum(row)), col


def _check_rate(value, name, *, upper_open=True):
    value = check_nonneg_number(value, name)
    if value > 1 or (upper_open and value == 1):
        raise ValueError(f"{name} must be in [0, 1{')' if upper_open else ']'}, got {value!r}.")
    return value


def scale_by_smmf(b1: float = 0.9, *, growth_rate: float = 0.999, decay_rate: float = 0.5,
                  eps: float = 1e-8) -> optax.GradientTransformation:
    """SMMF's scaling of the gradient, ``u = M / (√V + ε)`` with factorized moments (the update
    rule and the state are in the module docstring); :func:`smmf` adds weight decay and the
    learning rate.

    Args:
      b1: ``β₁ ∈ [0, 1)``, the first moment's initial decay (0.9 as in the paper).
      growth_rate: ``λ ∈ [0, 1]``; ``β₁ₜ = β₁ λ^(t−1)`` (0.999, the paper's default).
      decay_rate: ``c > 0``; ``β₂ₜ = 1 − t^(−c)`` (0.5, the paper's ``γ = −0.5``; Optax's
        ``adafactor`` uses the same schedule with 0.8).
      eps: ``ε > 0`` added to ``√V``.

    Returns:
      An ``optax.GradientTransformation`` whose state is an :class:`SMMFState`.
    """
    b1 = _check_rate(b1, "b1")
    growth_rate = _check_rate(growth_rate, "growth_rate", upper_open=False)
    decay_rate = check_positive_number(decay_rate, "decay_rate")
    eps = check_positive_number(eps, "eps")

    def init_fn(params):
        def vectors(p):
            n, m = square_shape(jnp.size(p))
            return jnp.zeros((n,), jnp.float32), jnp.zeros((m,), jnp.float32)

        def signs(p):
            return jnp.zeros(((jnp.size(p) + 7) // 8,), jnp.uint8)

        rows = jax.tree_util.tree_map(lambda p: vectors(p)[0], params)
        cols = jax.tree_util.tree_map(lambda p: vectors(p)[1], params)
        return SMMFState(jnp.zeros((), jnp.int32), rows, cols,
                         jax.tree_util.tree_map(signs, params), rows, cols)

    def update_fn(updates, state, params=None):
        del params
        count = state.count + 1
        t = count.astype(jnp.float32)
        beta1 = b1 * growth_rate ** (t - 1)
        beta2 = 1 - t ** (-decay_rate)

        def leaf(g, m_row, m_col, m_sign, v_row, v_col):
            size = g.size
            n, m = square_shape(size)
            grad = g.astype(jnp.float32).reshape(n, m)
            negative = jnp.unpackbits(m_sign, count=size).astype(bool).reshape(n, m)
            m_prev = jnp.outer(m_row, m_col)
            first = beta1 * jnp.where(negative, -m_prev, m_prev) + (1 - beta1) * grad
            second = beta2 * jnp.outer(v_row, v_col) + (1 - beta2) * grad * grad
            step = first / (jnp.sqrt(second) + eps)
            new_m_row, new_m_col = _nnmf1(jnp.abs(first))
            new_v_row, new_v_col = _nnmf1(second)
            new_sign = jnp.packbits((first < 0).reshape(-1))
            return (step.reshape(g.shape).astype(g.dtype), new_m_row, new_m_col, new_sign,
                    new_v_row, new_v_col)

        treedef = jax.tree_util.tree_structure(updates)
        flat = [treedef.flatten_up_to(tree) for tree in
                (updates, state.m_row, state.m_col, state.m_sign, state.v_row, state.v_col)]
        out = [leaf(*args) for args in zip(*flat)]
        step, m_row, m_col, m_sign, v_row, v_col = (
            treedef.unflatten([o[k] for o in out]) for k in range(6))
        return step, SMMFState(count, m_row, m_col, m_sign, v_row, v_col)

    return optax.GradientTransformation(init_fn, update_fn)


def smmf(learning_rate, *, b1: float = 0.9, growth_rate: float = 0.999,
         decay_rate: float = 0.5, eps: float = 1e-8,
         weight_decay: float = 0.0) -> optax.GradientTransformation:
    """The SMMF optimizer: :func:`scale_by_smmf`, decoupled weight decay (as AdamW) and the
    learning rate, ``θ ← θ − η (u + w θ)``.

    Memory: about ``2(n + m)`` float32 numbers and ``N/8`` bytes per parameter of size
    ``N = n·m`` (``n ≈ m ≈ √N``), against Adam's ``2N`` numbers; see the module docstring for
    the update rule.

    Args:
      learning_rate: ``η``: a positive number or an Optax schedule.
      b1, growth_rate, decay_rate, eps: see :func:`scale_by_smmf`.
      weight_decay: ``w ≥ 0`` (decoupled; needs the parameters in ``update``).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from tensorfact.optim import smmf, state_bytes
      >>> params = {"w": jnp.ones((64, 64)), "b": jnp.zeros((64,))}
      >>> tx = smmf(1e-3)
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.full((64, 64), 0.5), "b": jnp.ones(64)}, state)
      >>> round(float(updates["w"][0, 0]), 7)  # −η (1 − β₁) sign(g): no bias correction
      -0.0001
      >>> state_bytes(state) < 2 * 4 * (64 * 64 + 64) // 10  # under a tenth of Adam's state
      True
    """
    if not callable(learning_rate):
        learning_rate = check_positive_number(learning_rate, "learning_rate")
    weight_decay = check_nonneg_number(weight_decay, "weight_decay")
    parts = [scale_by_smmf(b1, growth_rate=growth_rate, decay_rate=decay_rate, eps=eps)]
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*parts)
