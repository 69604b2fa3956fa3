"""Tensor-format adapters: a TT-matrix update of an ``nnx.Linear`` (LoRETTA) and a Tucker update
of an ``nnx.Conv`` kernel over all its modes (FLoRA).

* **TTAdapter** (Yang, Zhou, Wang, Liu, Bahri & Jin, "LoRETTA: Low-Rank Economic Tensor-Train
  Adaptation for Ultra-Low-Parameter Fine-Tuning of Large Language Models", NAACL 2024; the
  reparameterised update, LoRETTA_rep): with ``in = ∏ m_k`` and ``out = ∏ n_k`` the change of
  the ``(in, out)`` kernel is a TT-matrix,
  ``ΔW[(i_1..i_d), (j_1..j_d)] = s · G_1[:, i_1, j_1, :] ⋯ G_d[:, i_d, j_d, :]``,
  ``Σ_k r_{k-1} m_k n_k r_k`` parameters, and ``x ΔW`` is contracted core by core
  (:func:`tensorfact.kernels.tt_chain_matmul`), never forming ``ΔW`` (Novikov et al.,
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

As for the LoRA family (:class:`~tensorfact.nn.LoRA`, ...) the trainable parameters are
``nnx.LoRAParam`` and the base layer's stay ``nnx.Param``, so
``nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)`` trains only the adapters; ``delta_weight()`` is
the update ``ΔW``, ``dense_weight()`` the adapted kernel and ``merge()`` a plain ``nnx.Linear`` /
``nnx.Conv`` holding it (formed at ``"highest"`` precision; the forward runs at the base's).
"""

from __future__ import annotations

import functools
import math
import string

import jax
import jax.numpy as jnp
from flax import nnx

from tensorfact.nn._base import Adapter, LoRAParam, adapter_scale
from tensorfact.nn._common import (draw, params_key, resolve_rank, tensorize, tt_apply,
                                   tt_core_shapes)
from tensorfact.tensors import TTMatrix

__all__ = ["TTAdapter", "TuckerAdapter"]


class TTAdapter(Adapter):
    """TT-matrix adaptation of an ``nnx.Linear`` (LoRETTA): ``y = base(x) + s · x ΔW`` with
    ``ΔW`` a TT-matrix of shape ``(in, out)``.

    Args:
      base: the ``nnx.Linear`` to adapt (kernel ``(in, out)``).
      rank: the maximal TT rank (an int, capped core by core at the lossless ranks), or the
        TT ranks ``(1, r_1, ..., r_{d-1}, 1)`` (or the ``d − 1`` inner ones).
      in_shape, out_shape: the factorizations ``in = ∏ m_k`` and ``out = ∏ n_k``; of different
        lengths, the shorter is padded with trailing 1s. By default the most balanced ones with
        ``d = 3`` (:func:`tensorfact.nn.balanced_factors`).
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
      >>> tt.delta_weight().shape, tt(jnp.ones((0, 64))).shape
      ((64, 48), (0, 48))
    """

    def __init__(self, base: nnx.Linear, rank, *, in_shape=None, out_shape=None, alpha=None,
                 param_dtype=None, rngs: nnx.Rngs):
        self._set_base(base, param_dtype, conv=False)
        if isinstance(rank, float):
            raise ValueError(f"rank must be an int or a TT rank tuple, got {rank!r}.")
        self.in_shape, self.out_shape = tensorize("tt", self.in_features, self.out_features,
                                                  in_shape, out_shape)
        self.rank = resolve_rank("tt", rank, self.in_shape, self.out_shape)
        self.scale = adapter_scale(alpha, max(self.rank))
        shapes = tt_core_shapes(self.in_shape, self.out_shape, self.rank)
        # cores k < d from N(0, 1 / (r_{k-1} m_k)), the last core zero (so ΔW = 0 exactly)
        cores = draw(params_key(rngs, "for TTAdapter's random cores"), shapes[:-1],
                     tuple(1.0 / (s[0] * s[1]) for s in shapes[:-1]),
                     jnp.dtype(self.param_dtype), truncated=False)
        cores.append(jnp.zeros(shapes[-1], self.param_dtype))
        self.tt_cores = nnx.List([LoRAParam(g) for g in cores])

    @property
    def n_params(self) -> int:
        """The number of trainable parameters, ``Σ_k r_{k-1} m_k n_k r_k``."""
        return sum(math.prod(g.shape) for g in self.tt_cores)

    def _params(self):
        return [g[...] for g in self.tt_cores]

    def _delta(self, arrays, precision):
        """``s ΔW``, the TT-matrix of the cores formed."""
        return self.scale * TTMatrix(arrays).to_dense(precision=precision)

    def _linear_change(self, x, arrays):
        lead = x.shape[:-1]
        y = tt_apply(x.reshape(-1, self.in_features), arrays, self.base.precision, "auto")
        return self.scale * y.reshape(lead + (self.out_features,))


@functools.partial(jax.jit, static_argnames=("shapes", "dtype"))
def _orthonormal(key, shapes, dtype):
    """Matrices of the given ``(d, r)`` shapes with orthonormal columns (the Q of a Gaussian),
    all from one key in one program."""
    keys = jax.random.split(key, len(shapes))
    return [jnp.linalg.qr(jax.random.normal(k, shape, jnp.float32))[0].astype(dtype)
            for k, shape in zip(keys, shapes)]


class TuckerAdapter(Adapter):
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
                 rngs: nnx.Rngs):
        self._set_base(base, param_dtype, linear=False, grouped=True)
        if isinstance(rank, float):
            raise ValueError(f"rank must be an int or one int per kernel mode, got {rank!r}.")
        self.rank = resolve_rank("tucker", rank, self.kernel_shape, ())
        self.scale = adapter_scale(alpha, max(self.rank))
        dtype = self.param_dtype
        shapes = tuple(zip(self.kernel_shape, self.rank))
        factors = _orthonormal(params_key(rngs, "for TuckerAdapter's random factors"), shapes,
                               jnp.dtype(dtype))
        self.tucker_factors = nnx.List([LoRAParam(u) for u in factors])
        self.tucker_core = LoRAParam(jnp.zeros(self.rank, dtype))

    @property
    def n_params(self) -> int:
        """The number of trainable parameters, ``∏ r_m + Σ_m dim_m r_m``."""
        return math.prod(self.tucker_core.shape) + sum(math.prod(u.shape)
                                                       for u in self.tucker_factors)

    def _params(self):
        return [self.tucker_core[...]] + [u[...] for u in self.tucker_factors]

    def _delta(self, arrays, precision):
        """``ΔK = s · G ×_1 U_1 ⋯ ×_N U_N``, the shape of the base kernel."""
        core, *factors = arrays
        n = len(factors)
        letters = string.ascii_letters
        inner, outer = letters[:n], letters[n:2 * n]
        spec = (inner + "," + ",".join(outer[m] + inner[m] for m in range(n)) + "->" + outer)
        return self.scale * jnp.einsum(spec, core, *factors, precision=precision)
