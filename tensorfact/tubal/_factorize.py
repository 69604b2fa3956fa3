"""Gradient descent on an over-parameterized tubal factorization ``X = L * Rᵀ``.

A third-order tensor ``X ∈ R^{n1×n2×n3}`` is factorised under the t-product of Kilmer & Martin
(:mod:`tensorfact.tubal`) as

    X = L * Rᵀ,   L ∈ R^{n1×R×n3},  R ∈ R^{n2×R×n3}      (asymmetric), or
    X = U * Uᵀ,   U ∈ R^{n×R×n3}                           (symmetric, the seed paper's model),

with a search rank ``R`` (``rank``) that may exceed the tubal rank ``r`` of the target (over-
parameterization). In the transform domain (FFT along the tubes) the t-product is a product of
frontal slices, ``X̂_k = L̂_k R̂_kᴴ``, so every slice is a Burer–Monteiro matrix factorization.

Two observation models are supported:

* linear measurements ``y_i = ⟨A_i, X*⟩`` (``A`` of shape ``(N, n1, n2, n3)``, see
  :func:`gaussian_measurements`), with the loss

      L(θ) = 1/(2N) Σ_i (⟨A_i, X(θ)⟩ − y_i)²;

* observed entries ``Y_Ω`` (a ``mask``, 1 = observed; tensor completion), with the loss

      L(θ) = 1/(2p) Σ_{(i,j,t)∈Ω} (X(θ)_ijt − Y_ijt)²,   p = |Ω| / (n1 n2 n3).

Both are normalised so that ``E L = ½‖X − X*‖²_F`` (Gaussian ``A_i``, or entries observed
uniformly at random): step sizes do not depend on ``N``, ``p`` or the size of the tensor. The
loop, the default step, the scale normalisation and the info (:class:`~tensorfact.GDInfo`)
are those of the matrix :func:`tensorfact.factorize_gd` (one engine,
``decomposition/_gradient_fit.py``); a tubal ``X`` is a matrix of tubes. Plain
gradient descent (the default optimizer, ``optax.sgd``) then reads

    L ← L − η ∇_L L = L − η G * R,      R ← R − η Gᵀ * L,

with ``G = ∂L/∂X`` (``G = (1/N) Σ_i r_i A_i`` for measurements, ``G = P_Ω(X − Y)/p`` for entries,
``r_i = ⟨A_i, X⟩ − y_i``), and ``U ← U − η (G + Gᵀ) * U`` in the symmetric case. Any Optax
optimizer can replace it. The initialisation is ``L, R = α · N(0, 1)`` entrywise.

Implicit regularization. S. Karnik, A. Veselovska, M. Iwen and F. Krahmer, "Implicit
Regularization for Tubal Tensor Factorizations via Gradient Descent", ICML 2025
(arXiv:2410.16247), prove that gradient descent on the symmetric model from a *small* random
initialisation is biased toward low tubal rank: with fewer measurements than unknowns (so that
many tensors fit the data) it still recovers the low-tubal-rank ``X*``, while a large
initialisation fits the measurements with a tensor of high tubal rank that generalises badly.
``init_scale`` (``α``) is the argument that decides which regime a run is in.

Effective tubal rank. The t-SVD ``X = U * S * Vᵀ`` (Kilmer & Martin 2011) has singular tubes
``s_j = S[j, j, :]`` whose transformed entries are the ``j``-th singular values of the
transformed slices, ``L(s_j)_k = σ_j(X̂_k)``; the tubal rank is the number of nonzero singular
tubes (Kilmer, Braman, Hao & Hoover 2013). We record the norms ``‖s_j‖_F`` (``‖s_j‖²_F =
Σ_k w_k σ_j(X̂_k)²`` with the Parseval weights of :func:`frequency_weights`) and define the
*effective tubal rank* at tolerance ``τ`` as

    rank_τ(X) = #{ j : ‖s_j‖_F > τ ‖s_1‖_F },

the tubal analogue of counting singular values above a relative threshold; it is computed from
the thin factors (a QR of each transformed factor slice and an ``R × R`` SVD) inside the loop.

References:
  S. Karnik, A. Veselovska, M. Iwen, F. Krahmer, "Implicit Regularization for Tubal Tensor
  Factorizations via Gradient Descent", ICML 2025 (arXiv:2410.16247).
  M. E. Kilmer, C. D. Martin, "Factorization strategies for third-order tensors", Linear
  Algebra and its Applications 435(3), 2011.
  M. E. Kilmer, K. Braman, N. Hao, R. C. Hoover, "Third-order tensors as operators on matrices:
  a theoretical and computational framework with applications in imaging", SIAM J. Matrix
  Analysis and Applications 34(1), 2013.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from tensorfact import _tproduct
from tensorfact._checks import as_float_array, check_mask
from tensorfact.decomposition._gradient_fit import (DEFAULT_RANK_TOL, check_fit_args,
                                                    check_measurements, check_x_true, data_loss,
                                                    descend, gaussian, product_spectrum, report)
from tensorfact.decomposition._gradient_fit import measure as measure_shared
from tensorfact.tensors import TubalFactors
from tensorfact.tensors._tubal import factor_hats, hat_product

__all__ = ["factorize_gd", "loss", "gaussian_measurements", "measure"]


def gaussian_measurements(shape, n_measurements: int, *, key, dtype=jnp.float32) -> jax.Array:
    """Gaussian sensing tensors ``A`` of shape ``(n_measurements, n1, n2, n3)``.

    Entries are i.i.d. ``N(0, 1)``, so ``E ⟨A_i, X⟩² = ‖X‖²_F`` and the loss of
    :func:`factorize_gd` has expectation ``½‖X − X*‖²_F`` (the tensor version of
    :func:`tensorfact.gaussian_measurements`).

    Args:
      shape: ``(n1, n2, n3)``.
      n_measurements: ``N``, a positive int.
      key: ``jax.random`` key (required).
      dtype: a floating dtype.

    Example:
      >>> import jax, tensorfact as tfa
      >>> tfa.tubal.gaussian_measurements((10, 10, 4), 150, key=jax.random.key(0)).shape
      (150, 10, 10, 4)
    """
    return gaussian(key, shape, n_measurements, dtype, "n1, n2, n3")


def measure(a, x, *, precision="highest") -> jax.Array:
    """Linear measurements ``y_i = ⟨A_i, X⟩ = Σ_{jkt} A_ijkt X_jkt``.

    Args:
      a: ``(N, n1, n2, n3)`` sensing tensors.
      x: ``(n1, n2, n3)`` tensor or :class:`~tensorfact.TubalFactors` (densified).
      precision: XLA precision of the contraction; ``"highest"`` (the default) is full float32,
        ``None`` JAX's default.

    Returns:
      ``y`` of shape ``(N,)``.

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> tfa.tubal.measure(jnp.ones((2, 3, 3, 4)), tfa.tubal.identity(3, 4)).tolist()
      [3.0, 3.0]
    """
    if isinstance(x, TubalFactors):
        x = x.to_dense(precision=precision)
    return measure_shared(a, x, "n1, n2, n3", precision)


def _check_observations(y, a, mask, shape=None):
    """Validates ``(y, a, mask)``; returns arrays. ``shape``: the model's ``(n1, n2, n3)``."""
    if a is not None:
        y, a = check_measurements(y, a, "n1, n2, n3")
        if mask is not None:
            raise ValueError("mask applies to observed entries (a=None); with sensing tensors "
                             "a, every measurement is observed.")
        if shape is not None and tuple(a.shape[1:]) != tuple(shape):
            raise ValueError(f"a must have shape (N, {', '.join(map(str, shape))}) to match "
                             f"the factors, got {tuple(a.shape)}.")
        return y, a, None
    y = as_float_array(y, "y", nonempty=True)
    if y.ndim != 3:
        raise ValueError(f"y must be the observed (n1, n2, n3) tensor when a is None, got shape "
                         f"{tuple(y.shape)}.")
    if shape is not None and tuple(y.shape) != tuple(shape):
        raise ValueError(f"y must have shape {tuple(shape)} to match the factors, got "
                         f"{tuple(y.shape)}.")
    return y, None, check_mask(mask, y.shape)


def loss(factors, y, a=None, *, mask=None, precision="highest") -> jax.Array:
    """The loss minimised by :func:`factorize_gd`, as a pure, differentiable function.

    ``1/(2N) Σ_i (⟨A_i, L * Rᵀ⟩ − y_i)²`` with sensing tensors ``a``, or, with ``a=None``,
    ``1/(2p) Σ_Ω ((L * Rᵀ)_ijt − Y_ijt)²`` over the entries where ``mask`` is True (all of
    them when ``mask`` is None; ``p`` the observed fraction). Use it to train the factors with
    any Optax loop of your own; ``jax.grad`` of it is a :class:`~tensorfact.TubalFactors` of
    gradients.

    Args:
      factors: :class:`~tensorfact.TubalFactors` of one tensor.
      y: ``(N,)`` measurements (with ``a``), or the observed ``(n1, n2, n3)`` tensor.
      a: ``(N, n1, n2, n3)`` sensing tensors, or None for observed entries.
      mask: boolean ``(n1, n2, n3)``, True where ``y`` is observed (entries model only).
      precision: XLA precision of the products; ``"highest"`` (the default) is full float32,
        ``None`` JAX's default.

    Example:
      >>> import jax, jax.numpy as jnp, optax, tensorfact as tfa
      >>> f = tfa.TubalFactors(jnp.ones((4, 2, 3)), jnp.ones((5, 2, 3)))
      >>> y = jnp.zeros((4, 5, 3))
      >>> grads = jax.grad(tfa.tubal.loss)(f, y)                 # TubalFactors of gradients
      >>> opt = optax.sgd(0.01)
      >>> updates, _ = opt.update(grads, opt.init(f), f)
      >>> f = optax.apply_updates(f, updates)
      >>> bool(tfa.tubal.loss(f, y) < tfa.tubal.loss(tfa.TubalFactors(jnp.ones((4, 2, 3)),
      ...                                                             jnp.ones((5, 2, 3))), y))
      True
    """
    if not isinstance(factors, TubalFactors):
        raise TypeError(f"factors must be TubalFactors, got {type(factors).__name__}.")
    if factors.left.ndim != 3:
        raise ValueError(f"factors must hold one tensor's factors, got left of shape "
                         f"{tuple(factors.left.shape)}; map over a batch with jax.vmap.")
    y, a, mask = _check_observations(y, a, mask, factors.shape)
    if mask is not None:
        y = jnp.where(mask, y, 0)
    return data_loss(factors.to_dense(precision=precision), y, a, mask, precision)


def factorize_gd(y, a, rank: int, *, key, symmetric: bool = False, init_scale: float = 1e-3,
                 optimizer: Optional[optax.GradientTransformation] = None,
                 learning_rate: Optional[float] = None, n_iter: int = 1000, x_true=None,
                 mask=None, transform: _tproduct.TransformLike = "fft",
                 rank_tol: float = DEFAULT_RANK_TOL, precision="highest",
                 return_info: bool = False):
    """Recovers a low-tubal-rank tensor by gradient descent on ``X = L * Rᵀ`` (or ``U * Uᵀ``).

    Minimises the normalised loss of the module docstring (linear measurements ``y_i =
    ⟨A_i, X*⟩`` when ``a`` is given, observed entries of ``y`` when ``a`` is None) from
    ``L, R = init_scale · N(0, 1)`` for exactly ``n_iter`` optimizer steps, run as one
    ``lax.scan`` inside a jitted core. The info records the loss, the data and test errors and
    the effective tubal rank after every step (Karnik, Veselovska, Iwen & Krahmer, ICML 2025: a
    small ``init_scale`` keeps the iterates at low tubal rank; a large one does not). The
    singular tubes cost a QR of each transformed factor slice and an ``R × R`` SVD per step,
    about as much as the gradient itself when ``R`` is close to ``n1, n2``.

    Scale: the fit runs on ``y / ŝ`` with ``ŝ`` the estimate of ``‖X*‖_F`` (``‖y‖/√N`` for
    measurements, ``‖P_Ω(Y)‖_F/√p`` for entries) and scales the factors back by ``√ŝ``: it is
    scale-equivariant (the factors of ``c·y`` are ``√c`` times those of ``y``, for data from
    1e-30 to 1e30 in float32), and ``init_scale``, ``learning_rate`` and ``optimizer`` act on a
    problem with ``‖X*‖_F ≈ 1`` whatever the magnitude of the data. ``info.losses`` are in the
    data's units (``ŝ²`` times the normalised ones), and overflow to Inf where those are not
    representable.

    Args:
      y: ``(N,)`` measurements (with ``a``), or the ``(n1, n2, n3)`` tensor whose entries are
        observed where ``mask`` is True (unobserved entries may hold anything, NaN included).
      a: ``(N, n1, n2, n3)`` sensing tensors (:func:`gaussian_measurements`), or None.
      rank: ``R``, the search rank, i.e. the inner size of the factors (a positive int;
        over-parameterization ``R`` > tubal rank is the intended use).
      key: ``jax.random`` key for the initialisation (required).
      symmetric: fit ``X = U * Uᵀ`` (t-symmetric, positive semidefinite slices), the seed
        paper's model; needs ``n1 = n2``.
      init_scale: ``α ≥ 0``, the standard deviation of the initial factor entries of the
        normalised problem (``α √ŝ`` in the data's units). Small ``α`` biases gradient descent
        toward low tubal rank (at the price of a longer initial phase, ``∝ log(1/α)``);
        ``α = 0`` is a stationary point.
      optimizer: an Optax ``GradientTransformation``; default ``optax.sgd(learning_rate)``
        (plain gradient descent). A static argument: reuse the object to avoid recompiling.
      learning_rate: SGD step of the default optimizer (must be None when ``optimizer`` is
        given). Default ``0.2 / ŝ``, halved when ``symmetric`` (its gradient is twice as
        large), with ``ŝ`` the larger of the normalised ``‖X*‖_F`` estimate and the norm of the
        initial product, so that a large ``init_scale`` does not diverge; all-zero
        observations with a zero start take ``0.2`` (nothing moves). With long tubes whose
        energy sits in one frequency (``‖X̂_k‖`` up to ``√n3 ‖X‖_F``) pass a smaller step.
      n_iter: number of steps (a positive int; static: it sizes the info).
      x_true: optional ``(n1, n2, n3)`` ground truth (or :class:`~tensorfact.TubalFactors`)
        for the test error in the info.
      mask: boolean ``(n1, n2, n3)`` (1 = observed) for the entries model; None = all observed.
      transform: the t-product's transform along the tubes: ``"fft"`` (Kilmer & Martin, the
        paper's), ``"dct"`` or an invertible ``n3 × n3`` matrix.
      rank_tol: ``τ ∈ [0, 1)`` of the effective tubal rank in the info (module docstring).
      precision: XLA precision of the products; ``"highest"`` (the default) is full float32,
        ``None`` JAX's default.
      return_info: also return a :class:`~tensorfact.GDInfo` (its ``spectra`` are the
        singular-tube norms ``‖s_j‖_F`` after every step, ``ranks`` the effective tubal ranks).

    Returns:
      :class:`~tensorfact.TubalFactors` (``to_dense()`` is ``L * Rᵀ``; ``right`` is None when
      symmetric), or ``(TubalFactors, GDInfo)`` with ``return_info=True``.

    Example:
      >>> import jax, tensorfact as tfa
      >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
      >>> u = jax.random.normal(k1, (8, 2, 4)) / 8
      >>> x = tfa.tubal.product(u, tfa.tubal.transpose(u))                  # tubal rank 2
      >>> a = tfa.tubal.gaussian_measurements(x.shape, 120, key=k2)
      >>> f, info = tfa.tubal.factorize_gd(tfa.tubal.measure(a, x), a, 8, key=k3,
      ...                                  symmetric=True, n_iter=1500, x_true=x,
      ...                                  return_info=True)
      >>> bool(info.true_errors[-1] < 1e-2), int(info.ranks[-1])
      (True, 2)

    Raises:
      ValueError: for a non-positive or non-integer ``rank``/``n_iter``, ``a`` not 4-D, ``y``
        of the wrong shape, a ``mask`` with ``a`` or of the wrong shape, ``symmetric`` with
        ``n1 ≠ n2``, a missing key, a negative or infinite ``init_scale`` or
        ``learning_rate``, both ``optimizer`` and ``learning_rate``, ``rank_tol`` outside
        ``[0, 1)``, an unknown transform, ``x_true`` of the wrong shape, or (eager calls) NaN
        or Inf in ``y`` (its observed entries), ``a`` or ``x_true``.
      TypeError: for a ``key`` that is not a ``jax.random`` key.
    """
    y, a, mask = _check_observations(y, a, mask)
    shape = tuple(int(s) for s in (a.shape[1:] if a is not None else y.shape))
    rank, n_iter, rank_tol = check_fit_args(rank, n_iter, key, init_scale, optimizer,
                                            learning_rate, rank_tol)
    symmetric = bool(symmetric)
    if symmetric and shape[0] != shape[1]:
        raise ValueError(f"symmetric=True needs n1 = n2 (square frontal slices), got tensors of "
                         f"shape {shape}.")
    t = _tproduct.resolve_transform(transform, shape[2])
    if isinstance(x_true, TubalFactors):
        x_true = x_true.to_dense(precision=precision)
    x_true = check_x_true(x_true, shape)
    dtype = jnp.result_type(y, *(() if a is None else (a,)))
    lr = jnp.asarray(jnp.nan if learning_rate is None else learning_rate, dtype)
    factors, info, counts = _factorize_gd(
        y.astype(dtype), None if a is None else a.astype(dtype), mask,
        None if x_true is None else x_true.astype(dtype), key, jnp.asarray(init_scale, dtype),
        lr, jnp.asarray(rank_tol, dtype), None if t.matrix is None else t.matrix.astype(dtype),
        shape=shape, rank=rank, symmetric=symmetric, optimizer=optimizer, n_iter=n_iter,
        kind=t.kind, precision=precision)
    report(counts, entries=a is None)
    result = TubalFactors.tree_unflatten(
        (t.kind,), (factors[0], None if symmetric else factors[1], t.matrix))
    return (result, info) if return_info else result


@functools.partial(jax.jit, static_argnames=("shape", "rank", "symmetric", "optimizer", "n_iter",
                                             "kind", "precision"))
def _factorize_gd(y, a, mask, x_true, key, init_scale, lr, rank_tol, matrix, *, shape, rank,
                  symmetric, optimizer, n_iter, kind, precision):
    n1, n2, n3 = shape
    t = _tproduct.Transform(kind, matrix)
    weights = _tproduct.frequency_weights(n3, t, y.dtype)

    def hats(p):
        return factor_hats(p[0], None if symmetric else p[1], t, precision)

    def dense(p):
        x = hat_product(*hats(p), precision)
        return _tproduct.from_transform_domain(x, n3, t).astype(y.dtype)

    def spectrum(p):
        return product_spectrum(*hats(p), weights, symmetric)

    return descend(y, a, mask, x_true, key, init_scale, lr, rank_tol,
                   factor_shapes=((n1, rank, n3), (n2, rank, n3)), dense=dense,
                   spectrum=spectrum, optimizer=optimizer, n_iter=n_iter, symmetric=symmetric,
                   precision=precision, init_bounds_step=True)
