"""Gradient descent on an over-parameterized tubal factorization ``X = L * Rᵀ``.

A third-order tensor ``X ∈ R^{n1×n2×n3}`` is factorised under the t-product of Kilmer & Martin
(see :mod:`tensorfact.tproduct`) as

    X = L * Rᵀ,   L ∈ R^{n1×R×n3},  R ∈ R^{n2×R×n3}      (asymmetric), or
    X = U * Uᵀ,   U ∈ R^{n×R×n3}                           (symmetric, the seed paper's model),

with an inner size ``R`` that may exceed the tubal rank ``r`` of the target (over-
parameterization). In the transform domain (FFT along the tubes) the t-product is a product of
frontal slices, ``X̂_k = L̂_k R̂_kᴴ``, so every slice is a Burer–Monteiro matrix factorization.

Two observation models are supported:

* linear measurements ``y_i = ⟨A_i, X*⟩`` (``A`` of shape ``(N, n1, n2, n3)``, see
  :func:`tubal_gaussian_measurements`), with the loss

      L(θ) = 1/(2N) Σ_i (⟨A_i, X(θ)⟩ − y_i)²;

* observed entries ``Y_Ω`` (a ``mask``, 1 = observed; tensor completion), with the loss

      L(θ) = 1/(2p) Σ_{(i,j,t)∈Ω} (X(θ)_ijt − Y_ijt)²,   p = |Ω| / (n1 n2 n3).

Both are normalised so that ``E L = ½‖X − X*‖²_F`` (Gaussian ``A_i``, or entries observed
uniformly at random): step sizes do not depend on ``N``, ``p`` or the size of the tensor. Plain
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
Σ_k w_k σ_j(X̂_k)²`` with the Parseval weights of :func:`tensorfact.tubal.frequency_weights`)
and define the *effective tubal rank* at tolerance ``τ`` as

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
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from tensorfact._checks import (as_float_array, check_mask, check_nonneg_number,
                                check_optimizer_args, check_positive_int, count_nonfinite,
                                is_traced, report_nonfinite, check_key)
from tensorfact.algebra import resolve_precision
from tensorfact.tensors._base import FactorizedTensor, as_leaf
from tensorfact._tproduct import (Transform, frequency_weights, from_transform_domain,
                                 resolve_transform, to_transform_domain)

__all__ = ["TubalFactors", "TubalHistory", "tubal_factorize_gd", "tubal_loss",
           "tubal_gaussian_measurements", "tubal_measure", "singular_tube_norms",
           "effective_tubal_rank", "DEFAULT_TUBAL_LEARNING_RATE", "DEFAULT_RANK_TOL"]

#: Default SGD step for the normalised loss, divided by the estimated ``‖X*‖_F`` (see
#: :func:`tubal_factorize_gd`).
DEFAULT_TUBAL_LEARNING_RATE = 0.2
#: Default relative threshold ``τ`` of the effective tubal rank.
DEFAULT_RANK_TOL = 1e-2


# -- the factorized type -------------------------------------------------------------------

def _split_transform(transform, n3):
    """``(kind, matrix)``: the static kind and the (dynamic) matrix of a transform."""
    t = resolve_transform(transform, n3)
    return t.kind, t.matrix


@jax.tree_util.register_pytree_node_class
class TubalFactors(FactorizedTensor):
    """A tensor ``X = L * Rᵀ`` held as its t-product factors (``X = L * Lᵀ`` when symmetric).

    Args:
      left: ``L`` of shape ``(n1, R, n3)``.
      right: ``R`` of shape ``(n2, R, n3)``, or ``None`` for the symmetric ``X = L * Lᵀ``.
      transform: the transform along the tubes that defines the t-product: ``"fft"`` (Kilmer &
        Martin's t-product), ``"dct"``, or an invertible ``n3 × n3`` matrix (see
        :mod:`tensorfact.tproduct`).

    Example::

        f = TubalFactors(jnp.ones((4, 2, 3)), jnp.ones((5, 2, 3)))
        f.shape, f.rank          # (4, 5, 3), 2
        x = f.to_dense()         # tfa.tubal.product(left, tfa.tubal.transpose(right))
    """

    _leaves = ("left", "right", "matrix")
    _static = ("kind",)

    def __init__(self, left, right=None, transform="fft"):
        left = as_leaf(left, "left")
        if left.ndim != 3:
            raise ValueError(f"left must have shape (n1, R, n3), got {tuple(left.shape)}.")
        if right is not None:
            right = as_leaf(right, "right")
            if right.ndim != 3 or right.shape[1:] != left.shape[1:]:
                raise ValueError(f"right must have shape (n2, {left.shape[1]}, {left.shape[2]}) "
                                 f"to match left of shape {tuple(left.shape)}, got "
                                 f"{tuple(right.shape)}.")
        kind, matrix = _split_transform(transform, int(left.shape[2]))
        self._set(left=left, right=right, matrix=matrix, kind=kind)

    @property
    def symmetric(self) -> bool:
        """Whether this is ``L * Lᵀ``."""
        return self.right is None

    @property
    def transform(self):
        """The transform along the tubes: ``"fft"``, ``"dct"`` or a :class:`Transform`."""
        return self.kind if self.kind != "matrix" else Transform("matrix", self.matrix)

    @property
    def shape(self):
        # the last three axes: a vmapped fit returns factors with a leading batch axis
        right = self.left if self.right is None else self.right
        return (int(self.left.shape[-3]), int(right.shape[-3]), int(self.left.shape[-1]))

    @property
    def rank(self) -> int:
        """The inner size ``R`` (an upper bound on the tubal rank)."""
        return int(self.left.shape[-2])

    @property
    def n_params(self) -> int:
        """Stored scalars of the factors (``L`` only when symmetric; not the transform)."""
        return int(self.left.size) + (0 if self.right is None else int(self.right.size))

    def _fixed_transform(self):
        # A transform matrix is a leaf (it may be traced) but not a parameter: no gradient
        # flows into it, so an Optax step on TubalFactors leaves it unchanged (SGD, Adam).
        if self.kind != "matrix":
            return self.kind
        return Transform("matrix", jax.lax.stop_gradient(self.matrix))

    def _hats(self):
        t = self._fixed_transform()
        la = to_transform_domain(self.left, t)
        lb = la if self.right is None else to_transform_domain(self.right, t)
        return la, lb

    def to_dense(self, *, precision="highest"):
        """``L * Rᵀ``, computed slice-wise in the transform domain: ``X̂_k = L̂_k R̂_kᴴ``."""
        la, lb = self._hats()
        return from_transform_domain(_slice_products(la, lb, precision), self.shape[2],
                                     self._fixed_transform()).astype(self.left.dtype)

    def norm(self, *, precision="highest"):
        """``‖X‖_F`` from ``‖X̂_k‖²_F = tr(L̂_kᴴL̂_k (R̂_kᴴR̂_k)ᵀ)``, no dense tensor (FFT, DCT);
        a matrix transform densifies (its weights are exact only for orthogonal matrices)."""
        if self.kind == "matrix":
            return jnp.linalg.norm(self.to_dense(precision=precision).ravel())
        prec = resolve_precision(precision)
        la, lb = self._hats()
        ga = jnp.matmul(jnp.conj(jnp.swapaxes(la, -1, -2)), la, precision=prec)
        gb = jnp.matmul(jnp.conj(jnp.swapaxes(lb, -1, -2)), lb, precision=prec)
        per_slice = jnp.real(jnp.sum(ga * jnp.conj(gb), axis=(-2, -1)))
        w = frequency_weights(self.shape[2], self.kind, per_slice.dtype)
        return jnp.sqrt(jnp.maximum(jnp.sum(w * per_slice, axis=-1), 0.0)).astype(
            self.left.dtype)


def _slice_products(la, lb, precision):
    """``L̂_k R̂_kᴴ`` for every transformed slice (the t-product with a t-transpose)."""
    return jnp.matmul(la, jnp.conj(jnp.swapaxes(lb, -1, -2)),
                      precision=resolve_precision(precision))


# -- singular tubes and the effective tubal rank -----------------------------------------------

def _tube_norms_from_hats(la, lb, weights, symmetric):
    """``‖s_j‖_F`` of ``X = L * Rᵀ`` from the transformed factors ``(k, n, R)``."""
    if symmetric:
        s = jnp.square(jnp.linalg.svd(la, compute_uv=False))  # σ(ÛÛᴴ) = σ(Û)²
    else:
        # σ(L̂ R̂ᴴ) = σ(R_a R_bᴴ) for L̂ = Q_a R_a, R̂ = Q_b R_b: an SVD of the small factor.
        _, ra = jnp.linalg.qr(la)
        _, rb = jnp.linalg.qr(lb)
        core = jnp.matmul(ra, jnp.conj(jnp.swapaxes(rb, -1, -2)),
                          precision=jax.lax.Precision.HIGHEST)
        s = jnp.linalg.svd(core, compute_uv=False)
    q = min(la.shape[-2], lb.shape[-2], la.shape[-1])
    s = s[..., :q]
    return jnp.sqrt(jnp.sum(weights[:, None] * jnp.square(s), axis=-2))


def _rank_from_norms(norms, tol):
    return jnp.sum(norms > tol * norms[..., :1], axis=-1).astype(jnp.int32)


def singular_tube_norms(x, *, transform="fft"):
    """Frobenius norms ``‖s_j‖_F`` of the singular tubes of a third-order tensor, decreasing.

    ``x = U * S * Vᵀ`` (t-SVD, Kilmer & Martin 2011) has singular tubes ``s_j = S[j, j, :]``
    with ``L(s_j)_k = σ_j(X̂_k)``, so ``‖s_j‖²_F = Σ_k w_k σ_j(X̂_k)²`` (``w_k`` the Parseval
    weights of :func:`tensorfact.tubal.frequency_weights`) and ``Σ_j ‖s_j‖²_F = ‖x‖²_F``.

    Args:
      x: a dense ``(..., n1, n2, n3)`` tensor (leading axes are a batch), or
        :class:`TubalFactors` (computed from the factors, without densifying).
      transform: for a dense ``x``: ``"fft"``, ``"dct"`` or an invertible matrix.

    Returns:
      ``(..., min(n1, n2))`` norms (``min(n1, n2, R)`` for factors).

    Example::

        singular_tube_norms(tfa.tubal.product(a, b))   # a: (6, 2, 4), b: (2, 5, 4): two nonzero norms
    """
    if isinstance(x, TubalFactors):
        la, lb = x._hats()
        w = frequency_weights(x.shape[2], x.transform, jnp.real(la).dtype)
        return _tube_norms_from_hats(la, lb, w, x.symmetric).astype(x.left.dtype)
    x = as_float_array(x, "x")
    if x.ndim < 3:
        raise ValueError(f"x must be a third-order tensor (n1, n2, n3), optionally with leading "
                         f"batch axes, got shape {tuple(x.shape)}.")
    hat = to_transform_domain(x, transform)
    s = jnp.linalg.svd(hat, compute_uv=False)
    w = frequency_weights(x.shape[-1], transform, jnp.real(s).dtype)
    return jnp.sqrt(jnp.sum(w[:, None] * jnp.square(s), axis=-2)).astype(x.dtype)


def effective_tubal_rank(x, tol: float = DEFAULT_RANK_TOL, *, transform="fft"):
    """Number of singular tubes with ``‖s_j‖_F > tol · ‖s_1‖_F`` (see the module docstring).

    ``tol → 0`` gives the tubal rank of Kilmer et al. (2013) (the number of nonzero singular
    tubes); a tolerance ignores the small tubes that round-off or a small initialisation leave.

    Args:
      x: a dense ``(..., n1, n2, n3)`` tensor or :class:`TubalFactors`.
      tol: ``τ ∈ [0, 1)``.
      transform: for a dense ``x`` (see :func:`singular_tube_norms`).

    Returns:
      an int32 array of the batch shape (a scalar for one tensor); 0 for the zero tensor.

    Example::

        effective_tubal_rank(tfa.tubal.product(a, b))   # a: (6, 2, 4), b: (2, 5, 4) → 2
    """
    tol = _check_tol(tol)
    return _rank_from_norms(singular_tube_norms(x, transform=transform), tol)


def _check_tol(tol):
    if is_traced(tol):
        return tol
    check_nonneg_number(tol, "rank_tol")
    if not float(tol) < 1:
        raise ValueError(f"rank_tol must be in [0, 1), got {tol!r}.")
    return float(tol)


# -- measurements --------------------------------------------------------------------------------

def tubal_gaussian_measurements(key, shape, n_measurements: int, *,
                                dtype=jnp.float32) -> jax.Array:
    """Gaussian sensing tensors ``A`` of shape ``(n_measurements, n1, n2, n3)``.

    Entries are i.i.d. ``N(0, 1)``, so ``E ⟨A_i, X⟩² = ‖X‖²_F`` and the loss of
    :func:`tubal_factorize_gd` has expectation ``½‖X − X*‖²_F`` (the tensor version of
    :func:`tensorfact.decomposition.sensing.gaussian_measurements`).

    Args:
      key: ``jax.random`` key.
      shape: ``(n1, n2, n3)``.
      n_measurements: ``N``, a positive int.
      dtype: a floating dtype.

    Example::

        a = tubal_gaussian_measurements(jax.random.key(0), (10, 10, 4), 150)   # (150, 10, 10, 4)
    """
    check_key(key, "to draw measurements")
    shape = tuple(shape)
    if len(shape) != 3:
        raise ValueError(f"shape must be (n1, n2, n3), got {shape!r}.")
    shape = tuple(check_positive_int(s, f"shape[{i}]") for i, s in enumerate(shape))
    n_measurements = check_positive_int(n_measurements, "n_measurements")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype, got {dtype!r}.")
    return jax.random.normal(key, (n_measurements, *shape), dtype)


def tubal_measure(a, x, *, precision="highest") -> jax.Array:
    """Linear measurements ``y_i = ⟨A_i, X⟩ = Σ_{jkt} A_ijkt X_jkt``.

    Args:
      a: ``(N, n1, n2, n3)`` sensing tensors.
      x: ``(n1, n2, n3)`` tensor or :class:`TubalFactors` (densified).
      precision: XLA precision of the contraction; ``"highest"`` (the default) is full float32,
        ``None`` JAX's default.

    Returns:
      ``y`` of shape ``(N,)``.

    Example::

        y = tubal_measure(a, x_true)
    """
    if isinstance(x, TubalFactors):
        x = x.to_dense(precision=precision)
    a = as_float_array(a, "a")
    x = as_float_array(x, "x")
    if a.ndim != 4:
        raise ValueError(f"a must have shape (N, n1, n2, n3), got {tuple(a.shape)}.")
    if tuple(x.shape) != tuple(a.shape[1:]):
        raise ValueError(f"x must have shape {tuple(a.shape[1:])} to match a, got "
                         f"{tuple(x.shape)}.")
    return jnp.einsum("iabc,abc->i", a, x, precision=resolve_precision(precision))


# -- the loss ------------------------------------------------------------------------------------

def _data_loss(x, y, a, mask, precision):
    """The normalised loss of a dense ``x`` (see the module docstring)."""
    if a is not None:
        r = jnp.einsum("iabc,abc->i", a, x, precision=resolve_precision(precision)) - y
        return 0.5 * jnp.mean(r * r)
    d = x - y
    if mask is None:
        return 0.5 * jnp.sum(d * d)
    # size / (2 |Ω|) Σ_Ω d²; where() instead of a product so NaN placeholders cannot leak.
    d = jnp.where(mask, d, 0)
    n_obs = jnp.maximum(jnp.sum(mask), 1).astype(x.dtype)
    return 0.5 * (x.size / n_obs) * jnp.sum(d * d)


def tubal_loss(factors, y, a=None, *, mask=None, precision="highest") -> jax.Array:
    """The loss minimised by :func:`tubal_factorize_gd`, as a pure, differentiable function.

    ``1/(2N) Σ_i (⟨A_i, L * Rᵀ⟩ − y_i)²`` with sensing tensors ``a``, or, with ``a=None``,
    ``1/(2p) Σ_Ω ((L * Rᵀ)_ijt − Y_ijt)²`` over the entries where ``mask`` is True (all of
    them when ``mask`` is None; ``p`` the observed fraction). Use it to train the factors with
    any Optax loop of your own; ``jax.grad`` of it is a :class:`TubalFactors` of gradients.

    Args:
      factors: :class:`TubalFactors`.
      y: ``(N,)`` measurements (with ``a``), or the observed ``(n1, n2, n3)`` tensor.
      a: ``(N, n1, n2, n3)`` sensing tensors, or None for observed entries.
      mask: boolean ``(n1, n2, n3)``, True where ``y`` is observed (entries model only).
      precision: XLA precision of the products; ``"highest"`` (the default) is full float32,
        ``None`` JAX's default.

    Example::

        grads = jax.grad(tubal_loss)(factors, y, a)
        updates, state = opt.update(grads, state, factors)
        factors = optax.apply_updates(factors, updates)
    """
    if not isinstance(factors, TubalFactors):
        raise TypeError(f"factors must be TubalFactors, got {type(factors).__name__}.")
    y, a, mask = _check_observations(y, a, mask, factors.shape)
    return _data_loss(factors.to_dense(precision=precision), y, a, mask, precision)


def _check_observations(y, a, mask, shape=None):
    """Validates ``(y, a, mask)``; returns arrays. ``shape``: the model's ``(n1, n2, n3)``."""
    y = as_float_array(y, "y")
    if a is not None:
        a = as_float_array(a, "a")
        if a.ndim != 4:
            raise ValueError(f"a must have shape (N, n1, n2, n3), got {tuple(a.shape)}.")
        if y.ndim != 1 or y.shape[0] != a.shape[0]:
            raise ValueError(f"y must have shape ({a.shape[0]},) to match a of shape "
                             f"{tuple(a.shape)}, got {tuple(y.shape)}.")
        if mask is not None:
            raise ValueError("mask applies to observed entries (a=None); with sensing tensors "
                             "a, every measurement is observed.")
        if shape is not None and tuple(a.shape[1:]) != tuple(shape):
            raise ValueError(f"a must have shape (N, {', '.join(map(str, shape))}) to match "
                             f"the factors, got {tuple(a.shape)}.")
        return y, a, None
    if y.ndim != 3:
        raise ValueError(f"y must be the observed (n1, n2, n3) tensor when a is None, got shape "
                         f"{tuple(y.shape)}.")
    if shape is not None and tuple(y.shape) != tuple(shape):
        raise ValueError(f"y must have shape {tuple(shape)} to match the factors, got "
                         f"{tuple(y.shape)}.")
    return y, None, check_mask(mask, y.shape)


# -- the fit -------------------------------------------------------------------------------------

class TubalHistory(NamedTuple):
    """Per-step record of :func:`tubal_factorize_gd` (``t`` indexes the iterate *before* step
    ``t``, so index 0 is the initialisation).

    Attributes:
      loss: ``(n_steps,)`` training loss.
      error: ``(n_steps,)`` relative error ``‖X − X*‖_F / ‖X*‖_F`` when ``x_true`` is given
        (the *test* error: on all entries), else NaN.
      tubal_rank: ``(n_steps,)`` int32 effective tubal rank at tolerance ``rank_tol``.
      tube_norms: ``(n_steps, min(n1, n2, R))`` singular-tube norms ``‖s_j‖_F``, decreasing.
    """

    loss: jax.Array
    error: jax.Array
    tubal_rank: jax.Array
    tube_norms: jax.Array


def tubal_factorize_gd(y, a, inner_size: int, *, key=None, symmetric: bool = False,
                       init_scale: float = 1e-3,
                       optimizer: Optional[optax.GradientTransformation] = None,
                       learning_rate: Optional[float] = None, n_steps: int = 1000, x_true=None,
                       mask=None, transform="fft", rank_tol: float = DEFAULT_RANK_TOL,
                       precision="highest"):
    """Recovers a low-tubal-rank tensor by gradient descent on ``X = L * Rᵀ`` (or ``U * Uᵀ``).

    Minimises the normalised loss of the module docstring (linear measurements ``y_i =
    ⟨A_i, X*⟩`` when ``a`` is given, observed entries of ``y`` when ``a`` is None) from
    ``L, R = init_scale · N(0, 1)`` for exactly ``n_steps`` optimizer steps, run as one
    ``lax.scan`` inside a jitted core. The history records the loss, the test error and the
    effective tubal rank at every step (Karnik, Veselovska, Iwen & Krahmer, ICML 2025: a small
    ``init_scale`` keeps the iterates at low tubal rank; a large one does not). The singular
    tubes cost a QR of each transformed factor slice and an ``R × R`` SVD per step, about as
    much as the gradient itself when ``R`` is close to ``n1, n2``.

    Args:
      y: ``(N,)`` measurements (with ``a``), or the ``(n1, n2, n3)`` tensor whose entries are
        observed where ``mask`` is True (unobserved entries may hold anything, NaN included).
      a: ``(N, n1, n2, n3)`` sensing tensors (:func:`tubal_gaussian_measurements`), or None.
      inner_size: ``R``, the inner size of the factors (a positive int; over-parameterization
        ``R`` > tubal rank is the intended use).
      key: ``jax.random`` key for the initialisation (required).
      symmetric: fit ``X = U * Uᵀ`` (t-symmetric, positive semidefinite slices), the seed
        paper's model; needs ``n1 = n2``.
      init_scale: ``α ≥ 0``, the standard deviation of the initial factor entries. Small
        ``α`` biases gradient descent toward low tubal rank (at the price of a longer initial
        phase, ``∝ log(1/α)``); ``α = 0`` is a stationary point.
      optimizer: an Optax ``GradientTransformation``; default ``optax.sgd(learning_rate)``
        (plain gradient descent). A static argument: reuse the object to avoid recompiling.
      learning_rate: SGD step of the default optimizer (must be None when ``optimizer`` is
        given). Default ``0.2 / s`` (``DEFAULT_TUBAL_LEARNING_RATE``), halved when
        ``symmetric`` (its gradient is twice as large), with ``s = max(‖X*‖_F estimate,
        ‖X₀‖_F)``: ``‖y‖/√N`` for measurements, ``‖P_Ω(Y)‖_F/√p`` for entries, and the norm of
        the initial product so that a large ``init_scale`` does not diverge. With long tubes
        whose energy sits in one frequency (``‖X̂_k‖`` up to ``√n3 ‖X‖_F``) pass a smaller step.
      n_steps: number of steps (a positive int; static: it sizes the history).
      x_true: optional ``(n1, n2, n3)`` ground truth (or :class:`TubalFactors`) for the test
        error in the history.
      mask: boolean ``(n1, n2, n3)`` (1 = observed) for the entries model; None = all observed.
      transform: the t-product's transform along the tubes: ``"fft"`` (Kilmer & Martin, the
        paper's), ``"dct"`` or an invertible ``n3 × n3`` matrix.
      rank_tol: ``τ`` of the effective tubal rank in the history (see the module docstring).
      precision: XLA precision of the products; ``"highest"`` (the default) is full float32,
        ``None`` JAX's default.

    Returns:
      ``(TubalFactors, TubalHistory)``: the factors (``to_dense()`` is ``L * Rᵀ``; ``right`` is
      None when symmetric) and the per-step :class:`TubalHistory`.

    Example::

        k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
        u = jax.random.normal(k1, (10, 2, 4))
        x = tfa.tubal.product(u, tfa.tubal.transpose(u))                  # tubal rank 2
        a = tubal_gaussian_measurements(k2, x.shape, 150)
        fit, hist = tubal_factorize_gd(tubal_measure(a, x), a, 10, key=k3, symmetric=True,
                                       n_steps=3000, x_true=x)
        hist.error[-1], hist.tubal_rank[-1]                  # small, 2

    Raises:
      ValueError: for a non-positive or non-integer ``inner_size``/``n_steps``, ``a`` not 4-D,
        ``y`` of the wrong shape, a ``mask`` with ``a`` or of the wrong shape, ``symmetric``
        with ``n1 ≠ n2``, a missing key, a negative ``init_scale`` or ``learning_rate``, both
        ``optimizer`` and ``learning_rate``, ``rank_tol`` outside ``[0, 1)``, an unknown
        transform, ``x_true`` of the wrong shape, or (eager calls) non-finite observations.
    """
    y, a, mask = _check_observations(y, a, mask)
    shape = tuple(int(s) for s in (a.shape[1:] if a is not None else y.shape))
    inner_size = check_positive_int(inner_size, "inner_size")
    n_steps = check_positive_int(n_steps, "n_steps")
    symmetric = bool(symmetric)
    if symmetric and shape[0] != shape[1]:
        raise ValueError(f"symmetric=True needs n1 = n2 (square frontal slices), got tensors of "
                         f"shape {shape}.")
    check_key(key, "for the random initialisation")
    check_nonneg_number(init_scale, "init_scale")
    check_optimizer_args(optimizer, learning_rate)
    rank_tol = _check_tol(rank_tol)
    kind, t_matrix = _split_transform(transform, shape[2])
    if x_true is not None:
        if isinstance(x_true, TubalFactors):
            x_true = x_true.to_dense(precision=precision)
        x_true = as_float_array(x_true, "x_true")
        if tuple(x_true.shape) != shape:
            raise ValueError(f"x_true must have shape {shape}, got {tuple(x_true.shape)}.")
    dtype = jnp.result_type(y, *(() if a is None else (a,)))
    lr = jnp.asarray(jnp.nan if learning_rate is None else learning_rate, dtype)
    (factors, history), n_bad = _tubal_fit(
        y.astype(dtype), None if a is None else a.astype(dtype), mask, key,
        jnp.asarray(init_scale, dtype), lr, None if x_true is None else x_true.astype(dtype),
        None if t_matrix is None else t_matrix.astype(dtype), jnp.asarray(rank_tol, dtype),
        shape=shape, inner_size=inner_size, symmetric=symmetric, optimizer=optimizer,
        n_steps=n_steps, kind=kind, precision=precision)
    report_nonfinite(n_bad, "y (observed entries)" if a is None else "y or a")
    return factors, history


@functools.partial(jax.jit, static_argnames=("shape", "inner_size", "symmetric", "optimizer",
                                             "n_steps", "kind", "precision"))
def _tubal_fit(y, a, mask, key, init_scale, lr, x_true, t_matrix, rank_tol, *, shape,
               inner_size, symmetric, optimizer, n_steps, kind, precision):
    n1, n2, n3 = shape
    dtype = y.dtype
    transform = kind if t_matrix is None else Transform("matrix", t_matrix)
    if a is not None:
        n_bad = count_nonfinite(y) + count_nonfinite(a)
    else:
        n_bad = count_nonfinite(y, mask)
        y = y if mask is None else jnp.where(mask, y, 0)  # P_Ω(Y); drops NaN placeholders

    k_l, k_r = jax.random.split(key)
    left0 = init_scale * jax.random.normal(k_l, (n1, inner_size, n3), dtype)
    params = (left0,) if symmetric else (
        left0, init_scale * jax.random.normal(k_r, (n2, inner_size, n3), dtype))

    def hats(p):
        la = to_transform_domain(p[0], transform)
        return la, (la if symmetric else to_transform_domain(p[1], transform))

    def dense(p):
        return from_transform_domain(_slice_products(*hats(p), precision), n3,
                                     transform).astype(dtype)

    def loss_fn(p):
        return _data_loss(dense(p), y, a, mask, precision)

    if optimizer is None:
        # s estimates ‖X*‖_F (E‖y‖²/N = ‖X*‖²_F; E‖P_Ω(Y)‖²/p = ‖X*‖²_F); the Hessian of the
        # loss also scales with ‖X‖, so a large initial product lowers the step as well.
        if a is not None:
            s = jnp.linalg.norm(y) / jnp.sqrt(jnp.asarray(y.shape[0], dtype))
        else:
            frac = 1.0 if mask is None else jnp.maximum(jnp.mean(mask.astype(dtype)),
                                                        jnp.finfo(dtype).tiny)
            s = jnp.linalg.norm(y.ravel()) / jnp.sqrt(frac)
        s = jnp.maximum(s, jnp.linalg.norm(dense(params).ravel()))
        default = DEFAULT_TUBAL_LEARNING_RATE / jnp.maximum(s, jnp.finfo(dtype).tiny)
        default = default / 2 if symmetric else default
        optimizer = optax.sgd(jnp.where(jnp.isnan(lr), default, lr))

    weights = frequency_weights(n3, transform, dtype)
    if x_true is not None:
        norm_true = jnp.maximum(jnp.linalg.norm(x_true.ravel()), jnp.finfo(dtype).tiny)

    def step(carry, _):
        p, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(p)
        # Diagnostics: from the (un-differentiated) factors, never part of the gradient.
        la, lb = jax.tree_util.tree_map(jax.lax.stop_gradient, hats(p))
        norms = _tube_norms_from_hats(la, lb, weights, symmetric).astype(dtype)
        if x_true is None:
            err = jnp.asarray(jnp.nan, dtype)
        else:
            x = from_transform_domain(_slice_products(la, lb, precision), n3, transform)
            err = jnp.linalg.norm((x.astype(dtype) - x_true).ravel()) / norm_true
        updates, opt_state = optimizer.update(grads, opt_state, p)
        record = (loss, err, _rank_from_norms(norms, rank_tol), norms)
        return (optax.apply_updates(p, updates), opt_state), record

    (params, _), records = jax.lax.scan(step, (params, optimizer.init(params)), None,
                                        length=n_steps)
    factors = TubalFactors.tree_unflatten(
        (kind,), (params[0], None if symmetric else params[1], t_matrix))
    return (factors, TubalHistory(*records)), n_bad

