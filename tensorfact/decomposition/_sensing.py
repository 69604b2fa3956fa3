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

The loop, the default step, the scale normalisation and the info (:class:`GDInfo`) are those of
every gradient-descent factorization (``decomposition/_gradient_fit.py``, shared with
:func:`tensorfact.tubal.factorize_gd`).
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from tensorfact._numerics import resolve_precision
from tensorfact.decomposition._gradient_fit import (DEFAULT_LEARNING_RATE, DEFAULT_RANK_TOL,
                                                    GDInfo, check_fit_args, check_measurements,
                                                    check_x_true, descend, gaussian,
                                                    product_spectrum, report)
from tensorfact.decomposition._gradient_fit import measure as measure_shared
from tensorfact.tensors import LowRankMatrix

__all__ = ["gaussian_measurements", "measure", "factorize_gd", "GDInfo",
           "DEFAULT_LEARNING_RATE"]


def gaussian_measurements(shape, n_measurements: int, *, key, symmetric: bool = False,
                          dtype=jnp.float32) -> jax.Array:
    """Gaussian sensing matrices ``A`` of shape ``(n_measurements, m, n)``.

    Entries are i.i.d. ``N(0, 1)``, so ``E ⟨A_i, X⟩² = ‖X‖_F²`` and the loss of
    :func:`factorize_gd` has expectation ``½‖X − X*‖_F²``. With ``symmetric=True`` (square
    ``shape`` only) each ``A_i`` is replaced by ``(A_i + A_iᵀ)/2`` (the GOE scaling: diagonal
    variance 1, off-diagonal variance ½), which keeps ``E ⟨A_i, X⟩² = ‖X‖_F²`` for symmetric
    ``X`` and leaves ``⟨A_i, X⟩`` unchanged for symmetric ``X``.

    Args:
      shape: ``(m, n)``, the matrix shape.
      n_measurements: ``N``, a positive int.
      key: ``jax.random`` key (required).
      symmetric: symmetrise each measurement matrix.
      dtype: a floating dtype.

    Example:
      >>> import jax, tensorfact as tfa
      >>> a = tfa.gaussian_measurements((4, 4), 100, key=jax.random.key(0), symmetric=True)
      >>> a.shape, bool((a == a.transpose(0, 2, 1)).all())
      ((100, 4, 4), True)
    """
    a = gaussian(key, shape, n_measurements, dtype, "m, n")
    if symmetric:
        if a.shape[1] != a.shape[2]:
            raise ValueError(f"symmetric=True needs a square shape, got {tuple(shape)!r}.")
        a = 0.5 * (a + jnp.swapaxes(a, 1, 2))
    return a


def measure(a, x, *, precision="highest") -> jax.Array:
    """Linear measurements ``y_i = ⟨A_i, X⟩ = Σ_jk A_ijk X_jk``.

    Args:
      a: ``(N, m, n)`` measurement matrices.
      x: ``(m, n)`` matrix (or a :class:`~tensorfact.LowRankMatrix`, densified).
      precision: XLA precision of the contraction; ``"highest"`` (the default) is full float32,
        ``None`` JAX's default.

    Returns:
      ``y`` of shape ``(N,)``.

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> tfa.measure(jnp.ones((3, 2, 2)), jnp.eye(2)).tolist()
      [2.0, 2.0, 2.0]
    """
    if isinstance(x, LowRankMatrix):
        x = x.to_dense(precision=precision)
    return measure_shared(a, x, "m, n", precision)


def factorize_gd(y, a, rank: int, *, key, symmetric: bool = False, init_scale: float = 1e-3,
                 optimizer: Optional[optax.GradientTransformation] = None,
                 learning_rate: Optional[float] = None, n_iter: int = 1000, x_true=None,
                 rank_tol: float = DEFAULT_RANK_TOL, precision="highest",
                 return_info: bool = False):
    """Recovers a low-rank matrix from measurements ``y_i = ⟨A_i, X*⟩`` by gradient descent.

    Minimises ``L(F, G) = 1/(2N) Σ_i (⟨A_i, F Gᵀ⟩ − y_i)²`` (``F Fᵀ`` when ``symmetric``)
    from ``F, G = init_scale · N(0, 1)`` for exactly ``n_iter`` optimizer steps, run as one
    ``lax.scan`` inside a jitted core. See the module docstring for how ``rank`` (over-
    parameterization), ``symmetric`` and ``init_scale`` govern the convergence rate.

    Scale: the fit runs on ``y / ŝ`` with ``ŝ = ‖y‖/√N``, an estimate of ``‖X*‖_F``, and
    scales ``F``, ``G`` back by ``√ŝ``: it is scale-equivariant (``F, G`` of ``c·y`` are ``√c``
    times those of ``y``, for data from 1e-30 to 1e30 in float32), and ``init_scale``,
    ``learning_rate`` and ``optimizer`` act on a problem with ``‖X*‖_F ≈ 1`` whatever the
    magnitude of the data. ``info.losses`` are in the data's units (``ŝ²`` times the normalised
    ones), and overflow to Inf where those are not representable.

    Args:
      y: ``(N,)`` measurements.
      a: ``(N, m, n)`` measurement matrices (see :func:`gaussian_measurements`).
      rank: search rank ``k`` (a positive int; ``k`` larger than the true rank is allowed).
      key: ``jax.random`` key for the initialisation (required).
      symmetric: fit ``X = F Fᵀ`` (PSD); needs square ``a``.
      init_scale: ``α ≥ 0``, the standard deviation of the initial factor entries of the
        normalised problem (``α √ŝ`` in the data's units). This is *the* hyper-parameter:
        small ``α`` keeps gradient descent near low-rank solutions but, with ``rank`` above the
        true rank, slows convergence (sublinear in the symmetric case; a linear rate that
        degrades as ``α → 0`` in the asymmetric case). ``α = 0`` is a stationary point
        (nothing moves).
      optimizer: an Optax ``GradientTransformation``; default ``optax.sgd(learning_rate)``
        (plain gradient descent). It is a static argument: reuse the same object to avoid
        recompiling.
      learning_rate: SGD step for the default optimizer; must be None when ``optimizer`` is
        given. Default ``DEFAULT_LEARNING_RATE / ŝ`` (``0.2 / ŝ``, halved for ``symmetric``,
        whose gradient is twice as large) with ``ŝ`` the normalised ``‖X*‖_F`` estimate (so
        ``0.2 / ‖X*‖_F`` in the data's units); all-zero measurements (nothing to fit) take
        ``0.2``.
      n_iter: number of steps (a positive int; static: it sizes the info).
      x_true: optional ``(m, n)`` ground truth (or a :class:`~tensorfact.LowRankMatrix`); the
        info then records the test error ``‖F Gᵀ − X*‖_F / ‖X*‖_F`` after every step.
      rank_tol: ``τ ∈ [0, 1)`` of the effective rank recorded in the info (singular values
        above ``τ σ₁``).
      precision: XLA precision of the products; ``"highest"`` (the default) is full float32,
        ``None`` JAX's default.
      return_info: also return a :class:`GDInfo` (errors on the measurements, losses, test
        errors, effective ranks and singular values after every step).

    Returns:
      ``LowRankMatrix(F, ones, Gᵀ)`` (``to_dense()`` is ``F Gᵀ``, or ``F Fᵀ`` when symmetric),
      or ``(LowRankMatrix, GDInfo)`` with ``return_info=True``.

    Example:
      >>> import jax, tensorfact as tfa
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> u = jax.random.normal(k1, (10, 2))
      >>> x = u @ u.T / 10                                       # rank 2
      >>> a = tfa.gaussian_measurements((10, 10), 150, key=k2, symmetric=True)
      >>> lr, info = tfa.factorize_gd(tfa.measure(a, x), a, 2, key=k3, symmetric=True,
      ...                             init_scale=0.1, n_iter=500, x_true=x, return_info=True)
      >>> bool(info.true_errors[-1] < 1e-3), int(info.ranks[-1])
      (True, 2)

    Raises:
      ValueError: for a non-positive or non-integer ``rank``/``n_iter``, ``a`` not 3-D, ``y``
        not of shape ``(N,)``, ``symmetric`` with non-square ``a``, a missing key, a negative
        or infinite ``init_scale`` or ``learning_rate``, both ``optimizer`` and
        ``learning_rate``, ``rank_tol`` outside ``[0, 1)``, ``x_true`` of the wrong shape, or
        (eager calls) NaN or Inf in ``y``, ``a`` or ``x_true``.
      TypeError: for a ``key`` that is not a ``jax.random`` key.
    """
    y, a = check_measurements(y, a, "m, n")
    rank, n_iter, rank_tol = check_fit_args(rank, n_iter, key, init_scale, optimizer,
                                            learning_rate, rank_tol)
    symmetric = bool(symmetric)
    m, n = int(a.shape[1]), int(a.shape[2])
    if symmetric and m != n:
        raise ValueError(f"symmetric=True needs square measurement matrices, got a of shape "
                         f"{tuple(a.shape)}.")
    if isinstance(x_true, LowRankMatrix):
        x_true = x_true.to_dense(precision=precision)
    x_true = check_x_true(x_true, (m, n))
    dtype = jnp.result_type(a, y)
    lr = jnp.asarray(jnp.nan if learning_rate is None else learning_rate, dtype)
    factors, info, counts = _factorize_gd(
        y.astype(dtype), a.astype(dtype), None if x_true is None else x_true.astype(dtype), key,
        jnp.asarray(init_scale, dtype), lr, jnp.asarray(rank_tol, dtype), rank=rank,
        symmetric=symmetric, optimizer=optimizer, n_iter=n_iter, precision=precision)
    report(counts, entries=False)
    f = factors[0]
    g = f if symmetric else factors[1]
    result = LowRankMatrix(f, jnp.ones((rank,), dtype), g.T)
    return (result, info) if return_info else result


@functools.partial(jax.jit, static_argnames=("rank", "symmetric", "optimizer", "n_iter",
                                             "precision"))
def _factorize_gd(y, a, x_true, key, init_scale, lr, rank_tol, *, rank, symmetric, optimizer,
                  n_iter, precision):
    _, m, n = a.shape
    weights = jnp.ones((1,), y.dtype)

    def dense(p):
        return jnp.matmul(p[0], p[-1].T, precision=resolve_precision(precision))

    def spectrum(p):
        return product_spectrum(p[0][None], p[-1][None], weights, symmetric)

    return descend(y, a, None, x_true, key, init_scale, lr, rank_tol,
                   factor_shapes=((m, rank), (n, rank)), dense=dense, spectrum=spectrum,
                   optimizer=optimizer, n_iter=n_iter, symmetric=symmetric, precision=precision)
