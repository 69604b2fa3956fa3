"""Matrix sensing by gradient descent on a low-rank (Burer–Monteiro) factorization.

Matrix sensing recovers a low-rank ``X* ∈ R^{m×n}`` from ``N`` linear measurements
``y_i = ⟨A_i, X*⟩ = Σ_jk (A_i)_jk X*_jk``. Instead of optimising over ``X`` with a rank
constraint, the Burer–Monteiro approach (S. Burer, R. D. C. Monteiro, "A nonlinear programming
algorithm for solving semidefinite programs via low-rank factorization", Math. Programming 95,
2003) writes ``X = F Gᵀ`` with ``F ∈ R^{m×k}``, ``G ∈ R^{n×k}`` (or ``X = F Fᵀ`` for a
symmetric PSD target) and runs gradient descent on

    L(F, G) = 1/(2N) Σ_i (⟨A_i, F Gᵀ⟩ − y_i)².

With Gaussian measurements (:func:`gaussian_measurements`) ``E L = ½‖F Gᵀ − X*‖_F²``, so the
problem is normalised: step sizes do not depend on ``N`` or on the matrix size.

The search rank ``k`` may exceed the true rank ``r`` (over-parameterization). Gradient descent
from a small random initialisation ``F, G = α · N(0, 1)`` then behaves very differently in
the two parameterisations (N. Xiong, L. Ding, S. S. Du, "How Over-Parameterization Slows Down
Gradient Descent in Matrix Sensing: The Curses of Symmetry and Initialization", ICLR 2024):

* symmetric ``X = F Fᵀ`` with ``k > r``: the error decays only *sublinearly*, as
  ``Ω(1/T²)`` — the extra ``k − r`` directions shrink slowly, at a rate proportional to their
  own (vanishing) size;
* asymmetric ``X = F Gᵀ`` with ``k > r``: the error decays *linearly* (geometrically), at a
  rate that depends on the initialisation scale ``α`` — a *larger* ``α`` converges faster
  (the imbalance ``FᵀF − GᵀG``, fixed at initialisation up to O(η), drives the redundant
  directions to zero), while ``α → 0`` slows it down;
* exactly parameterised ``k = r``: linear convergence in both.

``init_scale`` is therefore the argument that matters: it trades the final accuracy reached
quickly (larger ``α`` gives a faster linear rate in the asymmetric case) against staying in the
small-initialisation regime where gradient descent finds the low-rank solution.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from tensorfact._checks import (as_float_array, check_nonneg_number, check_optimizer_args,
                                check_positive_int, check_key)
from tensorfact.tensors import LowRankMatrix

__all__ = ["gaussian_measurements", "measure", "factorize_gd", "SensingHistory",
           "DEFAULT_LEARNING_RATE"]

#: Default SGD step for the normalised loss, divided by the estimated ``‖X*‖_F``.
DEFAULT_LEARNING_RATE = 0.2


class SensingHistory(NamedTuple):
    """Per-step record of :func:`factorize_gd`.

    Attributes:
      loss: shape ``(n_steps,)``; ``loss[t]`` is ``L`` at the iterate *before* step ``t``
        (``loss[0]`` is the loss at the initialisation).
      error: shape ``(n_steps,)``; ``‖F Gᵀ − X*‖_F / ‖X*‖_F`` at the same iterates when
        ``x_true`` is given, else all NaN.
    """

    loss: jax.Array
    error: jax.Array


def gaussian_measurements(key, shape, n_measurements: int, *, symmetric: bool = False,
                          dtype=jnp.float32) -> jax.Array:
    """Gaussian sensing matrices ``A`` of shape ``(n_measurements, m, n)``.

    Entries are i.i.d. ``N(0, 1)``, so ``E ⟨A_i, X⟩² = ‖X‖_F²`` and the loss of
    :func:`factorize_gd` has expectation ``½‖X − X*‖_F²``. With ``symmetric=True`` (square
    ``shape`` only) each ``A_i`` is replaced by ``(A_i + A_iᵀ)/2`` (the GOE scaling: diagonal
    variance 1, off-diagonal variance ½), which keeps ``E ⟨A_i, X⟩² = ‖X‖_F²`` for symmetric
    ``X`` and leaves ``⟨A_i, X⟩`` unchanged for symmetric ``X``.

    Args:
      key: ``jax.random`` key.
      shape: ``(m, n)``, the matrix shape.
      n_measurements: ``N``, a positive int.
      symmetric: symmetrise each measurement matrix.
      dtype: a floating dtype.
    """
    check_key(key, "to draw measurements")
    shape = tuple(shape)
    if len(shape) != 2:
        raise ValueError(f"shape must be (m, n), got {shape!r}.")
    m, n = (check_positive_int(s, f"shape[{i}]") for i, s in enumerate(shape))
    n_measurements = check_positive_int(n_measurements, "n_measurements")
    if symmetric and m != n:
        raise ValueError(f"symmetric=True needs a square shape, got {shape!r}.")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype, got {dtype!r}.")
    a = jax.random.normal(key, (n_measurements, m, n), dtype)
    if symmetric:
        a = 0.5 * (a + jnp.swapaxes(a, 1, 2))
    return a


def measure(a, x) -> jax.Array:
    """Linear measurements ``y_i = ⟨A_i, X⟩ = Σ_jk A_ijk X_jk``.

    Args:
      a: ``(N, m, n)`` measurement matrices.
      x: ``(m, n)`` matrix (or a :class:`LowRankMatrix`, densified).

    Returns:
      ``y`` of shape ``(N,)``.
    """
    if isinstance(x, LowRankMatrix):
        x = x.to_dense()
    a = as_float_array(a, "a")
    x = as_float_array(x, "x")
    if a.ndim != 3:
        raise ValueError(f"a must have shape (N, m, n), got {tuple(a.shape)}.")
    if tuple(x.shape) != tuple(a.shape[1:]):
        raise ValueError(f"x must have shape {tuple(a.shape[1:])} to match a, got "
                         f"{tuple(x.shape)}.")
    return jnp.einsum("ijk,jk->i", a, x, precision=jax.lax.Precision.HIGHEST)


def factorize_gd(y, a, rank: int, *, key=None, symmetric: bool = False,
                 init_scale: float = 1e-3, optimizer: Optional[optax.GradientTransformation] = None,
                 learning_rate: Optional[float] = None, n_steps: int = 1000, x_true=None):
    """Recovers a low-rank matrix from measurements ``y_i = ⟨A_i, X*⟩`` by gradient descent.

    Minimises ``L(F, G) = 1/(2N) Σ_i (⟨A_i, F Gᵀ⟩ − y_i)²`` (``F Fᵀ`` when ``symmetric``)
    from ``F, G = init_scale · N(0, 1)`` for exactly ``n_steps`` optimizer steps, run as one
    ``lax.scan`` inside a jitted core. See the module docstring for how ``rank`` (over-
    parameterization), ``symmetric`` and ``init_scale`` govern the convergence rate.

    Args:
      y: ``(N,)`` measurements.
      a: ``(N, m, n)`` measurement matrices (see :func:`gaussian_measurements`).
      rank: search rank ``k`` (a positive int; ``k`` larger than the true rank is allowed).
      key: ``jax.random`` key for the initialisation (required).
      symmetric: fit ``X = F Fᵀ`` (PSD); needs square ``a``.
      init_scale: ``α ≥ 0``, the standard deviation of the initial factor entries. This is
        *the* hyper-parameter: small ``α`` keeps gradient descent near low-rank solutions
        but, with ``rank`` above the true rank, slows convergence (sublinear in the
        symmetric case; a linear rate that degrades as ``α → 0`` in the asymmetric case).
        ``α = 0`` is a stationary point (nothing moves).
      optimizer: an Optax ``GradientTransformation``; default ``optax.sgd(learning_rate)``
        (plain gradient descent). It is a static argument: reuse the same object to avoid
        recompiling.
      learning_rate: SGD step for the default optimizer; ignored (and must be None) when
        ``optimizer`` is given. Default ``DEFAULT_LEARNING_RATE / s`` with
        ``s = ‖y‖ / √N``, an estimate of ``‖X*‖_F`` for Gaussian measurements: the step is
        ``0.2 / ‖X*‖_F``, stable for the normalised loss (halved again for
        ``symmetric=True``, whose gradient is twice as large).
      n_steps: number of steps (a positive int; static: it sizes the history).
      x_true: optional ``(m, n)`` ground truth; the history then records the relative error.

    Returns:
      ``(LowRankMatrix(F, ones, Gᵀ), history)``; ``to_dense()`` is ``F Gᵀ`` (``F Fᵀ`` when
      symmetric) and ``history`` is a :class:`SensingHistory`.

    Raises:
      ValueError: for a non-positive or non-integer ``rank``/``n_steps``, ``a`` not 3-D, ``y``
        not of shape ``(N,)``, ``symmetric`` with non-square ``a``, a missing key, a negative
        ``init_scale`` or ``learning_rate``, both ``optimizer`` and ``learning_rate``, or
        ``x_true`` of the wrong shape.
    """
    a = as_float_array(a, "a")
    y = as_float_array(y, "y")
    if a.ndim != 3:
        raise ValueError(f"a must have shape (N, m, n), got {tuple(a.shape)}.")
    if y.ndim != 1 or y.shape[0] != a.shape[0]:
        raise ValueError(f"y must have shape ({a.shape[0]},) to match a of shape "
                         f"{tuple(a.shape)}, got {tuple(y.shape)}.")
    rank = check_positive_int(rank, "rank")
    n_steps = check_positive_int(n_steps, "n_steps")
    symmetric = bool(symmetric)
    m, n = int(a.shape[1]), int(a.shape[2])
    if symmetric and m != n:
        raise ValueError(f"symmetric=True needs square measurement matrices, got a of shape "
                         f"{tuple(a.shape)}.")
    check_key(key, "for the random initialisation")
    check_nonneg_number(init_scale, "init_scale")
    check_optimizer_args(optimizer, learning_rate)
    if x_true is not None:
        if isinstance(x_true, LowRankMatrix):
            x_true = x_true.to_dense()
        x_true = as_float_array(x_true, "x_true")
        if tuple(x_true.shape) != (m, n):
            raise ValueError(f"x_true must have shape {(m, n)} to match a, got "
                             f"{tuple(x_true.shape)}.")
    dtype = jnp.result_type(a, y)
    lr = jnp.asarray(jnp.nan if learning_rate is None else learning_rate, dtype)
    return _factorize_gd(y.astype(dtype), a.astype(dtype), key, jnp.asarray(init_scale, dtype),
                         lr, None if x_true is None else x_true.astype(dtype), rank=rank,
                         symmetric=symmetric, optimizer=optimizer, n_steps=n_steps)


@functools.partial(jax.jit, static_argnames=("rank", "symmetric", "optimizer", "n_steps"))
def _factorize_gd(y, a, key, init_scale, lr, x_true, *, rank, symmetric, optimizer, n_steps):
    n_meas, m, n = a.shape
    dtype = a.dtype
    prec = jax.lax.Precision.HIGHEST
    if optimizer is None:
        # ‖y‖/√N estimates ‖X*‖_F; the symmetric gradient is twice the asymmetric one.
        scale = jnp.linalg.norm(y) / jnp.sqrt(jnp.asarray(n_meas, dtype))
        default = DEFAULT_LEARNING_RATE / jnp.maximum(scale, jnp.finfo(dtype).tiny)
        default = default / 2 if symmetric else default
        optimizer = optax.sgd(jnp.where(jnp.isnan(lr), default, lr))

    k_f, k_g = jax.random.split(key)
    f0 = init_scale * jax.random.normal(k_f, (m, rank), dtype)
    params = (f0,) if symmetric else (f0, init_scale * jax.random.normal(k_g, (n, rank), dtype))

    def product(p):
        return jnp.matmul(p[0], (p[0] if symmetric else p[1]).T, precision=prec)

    def loss_fn(p):
        r = jnp.einsum("ijk,jk->i", a, product(p), precision=prec) - y
        return 0.5 * jnp.mean(r * r)

    if x_true is not None:
        norm_true = jnp.linalg.norm(x_true)

    def step(carry, _):
        p, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(p)
        if x_true is None:
            err = jnp.asarray(jnp.nan, dtype)
        else:
            err = jnp.linalg.norm(product(p) - x_true) / norm_true
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state), (loss, err)

    (params, _), (losses, errors) = jax.lax.scan(step, (params, optimizer.init(params)), None,
                                                 length=n_steps)
    f = params[0]
    g = f if symmetric else params[1]
    return LowRankMatrix(f, jnp.ones((rank,), dtype), g.T), SensingHistory(losses, errors)
