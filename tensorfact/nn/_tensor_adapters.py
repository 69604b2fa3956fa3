"""Tensor-format adapters: a TT-matrix update of an ``nnx.Linear`` (LoRETTA) and a Tucker update
of an ``nnx.Conv`` kernel over all its modes (FLoRA).

* **TTAdapter** (Yang, Zhou, Wang, Liu, Bahri & Jin, "LoRETTA: Low-Rank Economic Tensor-Train
  Adaptation for Ultra-Low-Parameter Fine-Tuning of Large Language Models", NAACL 2024; the
  reparameterised update, LoRETTA_rep): with ``in = ∏ m_k`` and ``out = ∏ n_k`` the change of
  the ``(in, out)`` kernel is a TT-matrix,
  ``ΔW[(i_1..i_d), (j_1..j_d)] = s · G_1[:, i_1, j_1, :] ⋯ G_d[:, i_d, j_d, :]``,
  ``Σ_k r_{k-1} m_k n_k r_k`` parameters, and ``x ΔW`` is contracted core by core
  (:func:`tensorfact.tensors.tt.tt_matmul`), never forming ``ΔW`` (Novikov et al.,
  "Tensorizing Neural Networks", NeurIPS 2015).
* **TuckerAdapter** (Si, Wang, Yang, Zhuang, Zhang & Zheng, "FLoRA: Low-Rank Core Space for
  N-dimension", 2024): a convolution kernel ``K`` of shape ``(k_1, ..., k_s, c_in, c_out)``
  (Flax's layout) changes by a Tucker tensor over *all* its modes,
  ``ΔK = s · G ×_1 U_1 ×_2 ⋯ ×_N U_N`` with a core ``G`` of shape ``(r_1, ..., r_N)`` and
  factors ``U_m`` of shape ``(dim_m, r_m)``, so the kernel's spatial structure is kept rather
  than flattened to a matrix as LoRA does. The forward is ``base(x) + conv(x, ΔK)`` with the
  base's strides, padding, dilations, groups and mask (convolution is linear in the kernel).

One factor is exactly zero at the start (TT: the last core; Tucker: the core ``G``), so the
change is exactly zero and a fresh adapter returns the base layer's output bit for bit. The
other factors are random: the TT cores ``k < d`` from ``N(0, 1 / (r_{k-1} m_k))`` (the variance
that keeps ``x G_1 ⋯ G_k`` at the scale of ``x``), the Tucker factors with orthonormal columns
(the Q of a Gaussian), so ``‖ΔK‖_F = s ‖G‖_F`` while training starts. The scale is
``s = alpha / r`` with ``r`` the largest rank (``alpha=None``: ``s = 1``).

As for the LoRA family (:mod:`tensorfact.nn.adapters`) the trainable parameters are
``nnx.LoRAParam`` and the base layer's stay ``nnx.Param``, so
``nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)`` trains only the adapters; ``merge()`` returns a
plain ``nnx.Linear`` / ``nnx.Conv`` with the adapted kernel.
"""

from __future__ import annotations

import functools
import math
import string

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype

from tensorfact.nn._adapters import LoRAParam, _Adapter, _conv, _require_rngs, _scale
from tensorfact.nn._dense import _List, _resolve_rank, _tensorize
from tensorfact.tensors._tt import TTMatrix, tt_matmul

__all__ = ["TTAdapter", "TuckerAdapter"]

_HIGHEST = jax.lax.Precision.HIGHEST


@functools.partial(jax.jit, static_argnames=("shapes", "dtype"))
def _tt_init(key, shapes, dtype):
    """Cores ``k < d`` from ``N(0, 1 / (r_{k-1} m_k))``, the last core zero (so ``ΔW = 0``
    exactly at the start), in one program."""
    keys = jax.random.split(key, len(shapes))
    cores = [math.sqrt(1.0 / (s[0] * s[1])) * jax.random.normal(k, s, dtype)
             for k, s in zip(keys[:-1], shapes[:-1])]
    return cores + [jnp.zeros(shapes[-1], dtype)]


class TTAdapter(_Adapter):
    """TT-matrix adaptation of an ``nnx.Linear`` (LoRETTA): ``y = base(x) + s · x ΔW`` with
    ``ΔW`` a TT-matrix of shape ``(in, out)``.

    Args:
      base: the ``nnx.Linear`` to adapt (kernel ``(in, out)``).
      rank: the maximal TT rank (an int, capped core by core at the lossless ranks), or the
        full rank vector ``(1, r_1, ..., r_{d-1}, 1)``.
      in_shape, out_shape: the factorizations ``in = ∏ m_k`` and ``out = ∏ n_k`` (same length
        ``d``); by default the most balanced ones with ``d = 3``
        (:func:`tensorfact.nn.balanced_factors`).
      alpha: the scale is ``s = alpha / max(r_k)``; ``None`` means ``s = 1``.
      param_dtype: dtype of the cores (default: the base kernel's).
      rngs: ``nnx.Rngs`` for the random cores (the last one is zero).

    Attributes:
      tt_cores: the ``nnx.LoRAParam`` cores, core ``k`` of shape ``(r_{k-1}, m_k, n_k, r_k)``.
      in_shape, out_shape, rank, scale, n_params.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import TTAdapter
      >>> base = nnx.Linear(64, 48, rngs=nnx.Rngs(0))
      >>> tt = TTAdapter(base, 4, rngs=nnx.Rngs(1))
      >>> tt.in_shape, tt.out_shape, tt.rank, tt.n_params
      ((4, 4, 4), (4, 4, 3), (1, 4, 4, 1), 368)
      >>> x = jnp.ones((3, 64))
      >>> bool((tt(x) == base(x)).all())
      True
    """

    def __init__(self, base: nnx.Linear, rank, *, in_shape=None, out_shape=None, alpha=None,
                 param_dtype=None, rngs: nnx.Rngs | None = None):
        self._set_base(base, param_dtype)
        if isinstance(rank, float):
            raise ValueError(f"rank must be an int or a TT rank tuple, got {rank!r}.")
        self.in_shape, self.out_shape = _tensorize("tt", self.in_features, self.out_features,
                                                   in_shape, out_shape)
        self.rank = _resolve_rank("tt", rank, self.in_shape, self.out_shape)
        self.scale = _scale(alpha, max(self.rank), False)
        _require_rngs(rngs, "for TTAdapter's random cores")
        r = self.rank
        shapes = tuple((r[k], m, n, r[k + 1])
                       for k, (m, n) in enumerate(zip(self.in_shape, self.out_shape)))
        cores = _tt_init(rngs.params(), shapes, jnp.dtype(self.param_dtype))
        self.tt_cores = _List([LoRAParam(g) for g in cores])

    @property
    def n_params(self) -> int:
        """The number of trainable parameters, ``Σ_k r_{k-1} m_k n_k r_k``."""
        return sum(math.prod(g.shape) for g in self.tt_cores)

    def delta(self) -> TTMatrix:
        """``ΔW / s`` as a :class:`~tensorfact.tensors.TTMatrix` of shape ``(in, out)``."""
        return TTMatrix([g[...] for g in self.tt_cores])

    def _change(self, x, y):
        x, *cores = self._promote(x, *(g[...] for g in self.tt_cores))
        return self.scale * tt_matmul(x, TTMatrix(cores), precision=self.base.precision)

    def adapted_kernel(self):
        """``W + s ΔW``."""
        w = self.base.kernel[...]
        delta = TTMatrix([g[...].astype(w.dtype) for g in self.tt_cores])
        return w + self.scale * delta.to_dense(precision=_HIGHEST)


def _check_conv(base):
    if not isinstance(base, nnx.Conv):
        raise TypeError(f"base must be an nnx.Conv, got {type(base).__name__}.")


def _broadcast(value, n):
    if value is None:
        return (1,) * n
    if isinstance(value, int):
        return (value,) * n
    return tuple(value)


@functools.partial(jax.jit, static_argnames=("shapes", "dtype"))
def _orthonormal(key, shapes, dtype):
    """Matrices of the given ``(d, r)`` shapes with orthonormal columns (the Q of a Gaussian),
    all from one key in one program."""
    keys = jax.random.split(key, len(shapes))
    return [jnp.linalg.qr(jax.random.normal(k, shape, jnp.float32))[0].astype(dtype)
            for k, shape in zip(keys, shapes)]


class TuckerAdapter(nnx.Module):
    """Tucker adaptation of an ``nnx.Conv`` over all its kernel's modes (FLoRA):
    ``y = base(x) + conv(x, ΔK)`` with ``ΔK = s · G ×_1 U_1 ⋯ ×_N U_N``.

    Args:
      base: the ``nnx.Conv`` to adapt, kernel of shape ``(k_1, ..., k_s, c_in / groups,
        c_out)``.
      rank: an int (every mode's rank, capped at the mode's lossless Tucker rank
        ``min(dim_m, ∏_{j≠m} dim_j)``) or one rank per kernel mode.
      alpha: the scale is ``s = alpha / max(r_m)``; ``None`` means ``s = 1``.
      param_dtype: dtype of the core and factors (default: the base kernel's).
      rngs: ``nnx.Rngs`` for the factors (orthonormal columns); the core is zero.

    Attributes:
      tucker_core: the ``nnx.LoRAParam`` core ``G``, shape ``rank``.
      tucker_factors: the ``nnx.LoRAParam`` factors ``U_m``, shape ``(dim_m, r_m)``.
      rank, scale, n_params.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import TuckerAdapter
      >>> base = nnx.Conv(8, 16, (3, 3), rngs=nnx.Rngs(0))
      >>> ad = TuckerAdapter(base, 2, rngs=nnx.Rngs(1))
      >>> ad.rank, ad.n_params
      ((2, 2, 2, 2), 76)
      >>> x = jax.random.normal(jax.random.key(2), (2, 6, 6, 8))
      >>> bool((ad(x) == base(x)).all())
      True
      >>> bool(jnp.allclose(ad.merge()(x), ad(x)))
      True
    """

    def __init__(self, base: nnx.Conv, rank, *, alpha=None, param_dtype=None,
                 rngs: nnx.Rngs | None = None):
        _check_conv(base)
        self.base = base
        kernel = base.kernel[...]
        self.kernel_shape = tuple(int(d) for d in kernel.shape)
        self.param_dtype = kernel.dtype if param_dtype is None else param_dtype
        if isinstance(rank, float):
            raise ValueError(f"rank must be an int or one int per kernel mode, got {rank!r}.")
        self.rank = _resolve_rank("tucker", rank, self.kernel_shape, ())
        self.scale = _scale(alpha, max(self.rank), False)
        _require_rngs(rngs, "for TuckerAdapter's random factors")
        dtype = self.param_dtype
        shapes = tuple(zip(self.kernel_shape, self.rank))
        factors = _orthonormal(rngs.params(), shapes, jnp.dtype(dtype))
        self.tucker_factors = _List([LoRAParam(u) for u in factors])
        self.tucker_core = LoRAParam(jnp.zeros(self.rank, dtype))

    @property
    def n_params(self) -> int:
        """The number of trainable parameters, ``∏ r_m + Σ_m dim_m r_m``."""
        return math.prod(self.tucker_core.shape) + sum(math.prod(u.shape)
                                                       for u in self.tucker_factors)

    def _delta(self, core, factors, precision):
        n = len(factors)
        letters = string.ascii_letters
        inner, outer = letters[:n], letters[n:2 * n]
        spec = (inner + "," + ",".join(outer[m] + inner[m] for m in range(n)) + "->" + outer)
        return self.scale * jnp.einsum(spec, core, *factors, precision=precision)

    def delta_kernel(self) -> jax.Array:
        """``ΔK = s · G ×_1 U_1 ⋯ ×_N U_N``, the shape of the base kernel."""
        return self._delta(self.tucker_core[...], [u[...] for u in self.tucker_factors],
                           _HIGHEST)

    def adapted_kernel(self) -> jax.Array:
        """``K + ΔK`` (what :meth:`merge` stores)."""
        w = self.base.kernel[...]
        return w + self.delta_kernel().astype(w.dtype)

    def merge(self) -> nnx.Conv:
        """A plain ``nnx.Conv``: a copy of the base layer with the kernel ``K + ΔK`` (and the
        base's bias, strides, padding, ...). The adapter and its base are left as they are."""
        merged = nnx.clone(self.base)
        kernel = merged.kernel[...]
        merged.kernel[...] = self.adapted_kernel().astype(kernel.dtype)
        return merged

    def __call__(self, x: jax.Array) -> jax.Array:
        """``base(x) + conv(x, ΔK)``, with ``x`` channels-last as for ``nnx.Conv``."""
        x = jnp.asarray(x)
        n_spatial = len(self.kernel_shape) - 2
        if x.ndim < n_spatial + 1 or x.shape[-1] != self.base.in_features:
            raise ValueError(f"x must have shape (..., {n_spatial} spatial dims, "
                             f"{self.base.in_features}), got {tuple(x.shape)}.")
        y = self.base(x)
        return y + self._conv(x, y.dtype)

    def _conv(self, x, out_dtype):
        """``conv(x, ΔK)`` exactly as ``nnx.Conv`` convolves with its kernel (the adapters'
        shared :func:`~tensorfact.nn.adapters._conv`: batch flattening, padding modes,
        strides, dilations, groups), with the base's mask and without the bias."""
        base = self.base
        x, core, *factors = promote_dtype((x, self.tucker_core[...],
                                           *(u[...] for u in self.tucker_factors)),
                                          dtype=base.dtype)
        kernel = self._delta(core, factors, base.precision)
        if base.mask is not None:
            kernel = kernel * base.mask
        return _conv(base, x, kernel).astype(out_dtype)
