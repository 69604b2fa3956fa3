"""Factorized convolutions for Flax NNX: an ``nnx.Conv`` whose kernel is held as factors and
applied as a chain of small convolutions.

The kernel has ``nnx.Conv``'s layout ``W[s_1, ..., s_d, i, o]`` (``d`` = 1, 2 or 3 spatial
modes of sizes ``k_1, ..., k_d``, then the ``in`` and ``out`` channels) and inputs are
channels-last, ``(batch..., spatial..., in)``. Write ``K = ∏ k_m``.

* ``"tucker"``: Tucker-2 over the channel modes (Kim, Park, Yoo, Choi, Yang & Shin,
  "Compression of Deep Convolutional Neural Networks for Fast and Low Power Mobile
  Applications", ICLR 2016): ``W = G ×_in U ×_out V`` with ``U`` of ``(in, r_in)``, ``V`` of
  ``(out, r_out)`` and a core ``G`` of ``(k_1, ..., k_d, r_in, r_out)``. Forward: a 1×1
  convolution ``in → r_in`` (``x U``), the full spatial convolution ``r_in → r_out`` with ``G``,
  a 1×1 convolution ``r_out → out`` (``· Vᵀ``).
* ``"cp"``: ``W = Σ_r ∏_m K_m[s_m, r] · A[i, r] · B[o, r]`` (Lebedev, Ganin, Rakhuba,
  Oseledets & Lempitsky, "Speeding-up Convolutional Neural Networks Using Fine-tuned
  CP-Decomposition", ICLR 2015). Forward: a 1×1 convolution ``in → R`` (``x A``), then one
  depthwise (``feature_group_count=R``) 1-D convolution per spatial mode with the columns of
  ``K_m``, then a 1×1 convolution ``R → out`` (``· Bᵀ``). The CP weights are folded into the
  factors.

**Strides and padding.** The stride and the padding act in the spatial step(s) only; the 1×1
steps run at stride 1 without padding. The padding is resolved to explicit pairs from the input
size, the kernel size and the strides exactly as ``jax.lax.conv_general_dilated`` does
(``"SAME"``, ``"VALID"``, an int, or one ``(low, high)`` pair per spatial mode), so the
factorized chain and the one convolution with the reconstructed kernel see the same windows
and give the same outputs. Since mode ``m``'s padding depends only on ``k_m`` and ``s_m``, the
CP chain's 1-D convolutions each take their own mode's pair.

**Ranks.** Tucker: an int (both ranks, capped at the lossless ones), a pair ``(r_in, r_out)``,
a float in ``(0, 1]`` (the largest common rank whose parameters stay within that fraction of
the ``K·in·out`` dense ones, at least 1) or ``"full"`` (lossless: ``r_in = min(in, K·out)``,
``r_out = min(out, K·in)``). CP: an int, a float in ``(0, 1]`` (``⌊fraction · K·in·out /
(in + out + Σ k_m)⌋``, at least 1) or ``"full"`` (``K·in·out / max(k_1, ..., in, out)``, enough
for any kernel). The bias is not counted.

**Initialisation.** Each factor is drawn from a normal truncated at ±2σ and rescaled to the
variance ``1 / fan-in`` of its step (Tucker: ``U``: ``1/in``, ``G``: ``1/(K r_in)``, ``V``:
``1/r_out``; CP: ``A``: ``1/in``, ``K_m``: ``1/k_m``, ``B``: ``1/R``). A reconstructed entry is
a sum of products of independent zero-mean factors, so its variance is the number of terms
times the product of the variances: ``r_in r_out · 1/in · 1/(K r_in) · 1/r_out`` and ``R ·
1/in · 1/K · 1/R``, both ``1 / (in·K)``, the variance of ``nnx.Conv``'s default
``lecun_normal`` kernel.

**Forward.** ``contraction="factorized"`` runs the chain, ``"dense"`` rebuilds ``W``
and runs one ``jax.lax.conv_general_dilated``, ``"auto"`` (default) counts the forward FLOPs
(2 × multiply-adds) of both at trace time and takes the cheaper (factorized on ties). With
``B`` images, ``P`` input and ``Q`` output positions (``Q = ∏ out_m``):

* tucker: ``2BP·in·r_in + 2BQ·K·r_in·r_out + 2BQ·r_out·out`` against the rebuild
  ``2K·r_in·r_out·in + 2K·in·r_out·out`` plus ``2BQ·K·in·out``;
* cp: ``2BP·in·R + Σ_m 2B·Q_m·k_m·R + 2BQ·R·out`` (``Q_m``: positions after the ``m``-th 1-D
  convolution, output sizes on modes ``≤ m``, input sizes after) against the rebuild
  ``2R·K·in·out`` plus ``2BQ·K·in·out``.

As in ``nnx.Conv``, ``precision=None`` keeps JAX's default precision; pass ``"highest"`` for
full float32. The forward runs at the layer's ``precision``; :meth:`~FactorizedConv.dense_weight`
and :meth:`~FactorizedConv.to_layer` rebuild the kernel at ``"highest"`` by default.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype

from tensorfact._checks import (Precision, as_float_array, check_choice, check_key,
                                check_positive_int)
from tensorfact._numerics import resolve_precision
from tensorfact.decomposition import cp, tucker
from tensorfact.nn._base import FactorizedLayer
from tensorfact.nn._common import (Contraction, ConvKind, check_finite, check_input,
                                   cp_fibres, draw, largest_within, no_bias, params_key,
                                   rank_kind, resolve_rank, spread_cp)
from tensorfact.tensors import CPTensor, TuckerTensor

__all__ = ["FactorizedConv"]

_SPATIAL = "HWD"


# ---------------------------------------------------------------------------------------------
# arguments


def _check_tuple(value, d: int, name: str) -> tuple[int, ...]:
    """An int or a length-``d`` sequence of positive ints as a ``d``-tuple."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        return (check_positive_int(value, name),) * d
    if not isinstance(value, (Sequence, np.ndarray)) or len(value) != d:
        raise ValueError(f"{name} must be a positive int or {d} positive ints (one per spatial "
                         f"mode of kernel_size), got {value!r}.")
    return tuple(check_positive_int(v, f"{name}[{k}]") for k, v in enumerate(value))


def _check_kernel_size(kernel_size) -> tuple[int, ...]:
    if isinstance(kernel_size, numbers.Integral):  # as nnx.Conv: an int is one spatial mode
        kernel_size = (kernel_size,)
    if not isinstance(kernel_size, (Sequence, np.ndarray)) or not 1 <= len(kernel_size) <= 3:
        raise ValueError(f"kernel_size must be an int or 1 to 3 positive ints, got "
                         f"{kernel_size!r}.")
    return tuple(check_positive_int(k, f"kernel_size[{i}]") for i, k in enumerate(kernel_size))


def _check_padding(padding, d: int):
    """``"SAME"``, ``"VALID"`` or ``d`` explicit ``(low, high)`` pairs (an int ``p`` means
    ``(p, p)`` on every mode, as in ``nnx.Conv``)."""
    if isinstance(padding, str):
        if padding.upper() in ("SAME", "VALID"):
            return padding.upper()
        raise ValueError(f'padding must be "SAME", "VALID", an int or {d} (low, high) pairs of '
                         f"ints, got {padding!r} (other padding modes are not supported).")
    if isinstance(padding, numbers.Integral) and not isinstance(padding, (bool, np.bool_)):
        padding = [(int(padding), int(padding))] * d
    ok = isinstance(padding, (Sequence, np.ndarray)) and len(padding) == d and all(
        isinstance(p, (Sequence, np.ndarray)) and len(p) == 2
        and all(isinstance(v, numbers.Integral) and v >= 0 for v in p) for p in padding)
    if not ok:
        raise ValueError(f'padding must be "SAME", "VALID", an int or {d} (low, high) pairs of '
                         f"nonnegative ints, got {padding!r}.")
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _tucker2_params(ksize, n_in, n_out, rank) -> int:
    return math.prod(ksize) * rank[0] * rank[1] + n_in * rank[0] + n_out * rank[1]


def _resolve_rank(kind, rank, ksize, n_in, n_out):
    """CP: the rank of the dense layers' ``"cp"`` kind over the modes ``ksize + (in, out)``;
    Tucker-2: ``(r_in, r_out)``, capped at the lossless ``(min(in, K·out), min(out, K·in))``."""
    if kind == "cp":
        return resolve_rank("cp", rank, tuple(ksize), (n_in, n_out))
    k = math.prod(ksize)
    full = (min(n_in, k * n_out), min(n_out, k * n_in))
    what, value = rank_kind(rank, 'an int, a float in (0, 1], "full" or a pair (r_in, r_out)',
                            tuples=True)
    if what == "full":
        return full
    if what == "int":
        return min(value, full[0]), min(value, full[1])
    if what == "fraction":
        return largest_within(value * k * n_in * n_out,
                              lambda r: (min(r, full[0]), min(r, full[1])),
                              lambda r: _tucker2_params(ksize, n_in, n_out, r), max(full))
    if len(value) != 2:
        raise ValueError(f"rank must be a pair (r_in, r_out) for kind 'tucker', got {rank!r}.")
    for j, (r, f) in enumerate(zip(value, full)):
        if r > f:
            raise ValueError(f"rank[{j}] = {r} exceeds the lossless rank {f} of the "
                             f"{('input', 'output')[j]} channel mode (full ranks {full}).")
    return value


def _factor_specs(kind, ksize, n_in, n_out, rank):
    """Shapes of the factors (in ``_param_vars`` order) and their variances (1 / fan-in of
    their step, see the module docstring)."""
    k = math.prod(ksize)
    if kind == "tucker":
        r_in, r_out = rank
        shapes = (ksize + (r_in, r_out), (n_in, r_in), (n_out, r_out))
        return shapes, (1.0 / (k * r_in), 1.0 / n_in, 1.0 / r_out)
    shapes = tuple((s, rank) for s in ksize) + ((n_in, rank), (n_out, rank))
    return shapes, tuple(1.0 / s for s in ksize) + (1.0 / n_in, 1.0 / rank)


def _dimension_numbers(d: int):
    s = _SPATIAL[:d]
    return ("N" + s + "C", s + "IO", "N" + s + "C")


# ---------------------------------------------------------------------------------------------
# the layer


class FactorizedConv(FactorizedLayer):
    """A convolution (as ``nnx.Conv``, without dilation or groups) whose ``(k_1, ..., k_d, in,
    out)`` kernel is held as a Tucker-2 or CP factorization and applied as a chain of small
    convolutions (see the module docstring for the formats, ranks, initialisation, padding and
    the FLOP model of ``contraction="auto"``).

    Args:
      in_features, out_features: input and output channels.
      kernel_size: an int (1-D) or 1 to 3 ints, as in ``nnx.Conv``.
      kind: ``"tucker"`` (default) or ``"cp"``.
      rank: Tucker: an int, a pair ``(r_in, r_out)``, a float in ``(0, 1]`` or ``"full"``; CP:
        an int, a float or ``"full"``.
      strides: an int or one int per spatial mode.
      padding: ``"SAME"``, ``"VALID"``, an int or one ``(low, high)`` pair per spatial mode.
      use_bias: add a bias (zeros by default, as in ``nnx.Conv``).
      contraction: ``"auto"`` (default), ``"factorized"`` (the chain of small convolutions) or
        ``"dense"`` (one convolution with the rebuilt kernel).
      dtype, param_dtype, precision, bias_init: as in ``nnx.Conv`` (``precision=None``: JAX's
        default).
      rngs: ``nnx.Rngs``: one ``params`` key for the factors and one for the bias.

    Attributes:
      core: the Tucker core ``G``, an ``nnx.Param`` (tucker only).
      factors: the ``nnx.Param`` factors: ``[U, V]`` (tucker) or ``K_1, ..., K_d, A, B`` (cp).
      weight: the factors assembled as the library's type (a partial ``TuckerTensor`` over the
        channel modes or a ``CPTensor``, of shape ``kernel_size + (in_features,
        out_features)``).

    ``dense_weight()`` is the rebuilt kernel, ``to_layer()`` an ``nnx.Conv`` holding it and
    ``choose_contraction(input_shape)`` what the forward does for an input of that shape.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import FactorizedConv
      >>> layer = FactorizedConv(32, 64, (3, 3), kind="tucker", rank=8, rngs=nnx.Rngs(0))
      >>> layer(jnp.ones((2, 16, 16, 32))).shape
      (2, 16, 16, 64)
      >>> layer.n_params, 3 * 3 * 32 * 64 + 64   # factors and bias, against nnx.Conv
      (1408, 18496)
    """

    def __init__(self, in_features: int, out_features: int, kernel_size, *,
                 kind: ConvKind = "tucker", rank, strides=1, padding="SAME",
                 use_bias: bool = True, contraction: Contraction = "auto", dtype=None,
                 param_dtype=jnp.float32, precision: Precision = None,
                 bias_init=nnx.initializers.zeros_init(), rngs: nnx.Rngs):
        in_features = check_positive_int(in_features, "in_features")
        out_features = check_positive_int(out_features, "out_features")
        kind = check_choice(kind, ConvKind, "kind")
        self.contraction = check_choice(contraction, Contraction, "contraction")
        ksize = _check_kernel_size(kernel_size)
        d = len(ksize)
        self.kernel_size, self.strides = ksize, _check_tuple(strides, d, "strides")
        self.padding = _check_padding(padding, d)
        rank = _resolve_rank(kind, rank, ksize, in_features, out_features)
        self.in_features, self.out_features = in_features, out_features
        self.kind, self.rank = kind, rank
        self.use_bias = bool(use_bias)
        self.dtype, self.param_dtype = dtype, param_dtype
        self.precision = resolve_precision(precision)

        shapes, variances = _factor_specs(kind, ksize, in_features, out_features, rank)
        self._shapes = shapes
        why = "to draw FactorizedConv's factors"
        arrays = draw(params_key(rngs, why), shapes, variances, jnp.dtype(param_dtype))
        bias = (bias_init(params_key(rngs, why), (out_features,), param_dtype)
                if self.use_bias else None)
        self._set_factors(arrays, bias)

    def _set_factors(self, arrays, bias):
        """Holds ``arrays`` (in :meth:`_param_vars` order) and ``bias`` as the parameters."""
        params = [nnx.Param(jnp.asarray(a, self.param_dtype).reshape(s))
                  for a, s in zip(arrays, self._shapes)]
        if self.kind == "tucker":
            self.core, self.factors = params[0], nnx.List(params[1:])
        else:
            self.factors = nnx.List(params)
        self.bias = (nnx.Param(jnp.asarray(bias, self.param_dtype)) if self.use_bias
                     else no_bias())

    # -- parameters --------------------------------------------------------------------------
    def _param_vars(self):
        if self.kind == "tucker":
            return [self.core] + list(self.factors)
        return list(self.factors)

    def _build(self, arrays):
        d = len(self.kernel_size)
        if self.kind == "tucker":
            return TuckerTensor(arrays[0], arrays[1:], modes=(d, d + 1))
        return CPTensor(None, arrays)

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        """``kernel_size + (in_features, out_features)``, the shape of ``nnx.Conv``'s kernel."""
        return self.kernel_size + (self.in_features, self.out_features)

    def to_layer(self) -> nnx.Conv:
        """An ``nnx.Conv`` with the rebuilt kernel (:meth:`dense_weight`) and the same strides,
        padding, bias, dtype and precision."""
        return self._fill(nnx.Conv(
            self.in_features, self.out_features, self.kernel_size, self.strides,
            padding=self.padding, use_bias=self.use_bias, dtype=self.dtype,
            param_dtype=self.param_dtype, precision=self.precision,
            kernel_init=nnx.initializers.zeros_init(), rngs=nnx.Rngs(0)))

    # -- geometry and cost model -------------------------------------------------------------
    def _pads(self, spatial):
        if isinstance(self.padding, str):
            return tuple(tuple(p) for p in jax.lax.padtype_to_pads(
                spatial, self.kernel_size, self.strides, self.padding))
        return self.padding

    def _out_spatial(self, spatial):
        return tuple((n + lo + hi - k) // s + 1 if n + lo + hi >= k else 0
                     for n, k, s, (lo, hi) in zip(spatial, self.kernel_size, self.strides,
                                                  self._pads(spatial)))

    def flops(self, input_shape) -> dict:
        """Forward FLOPs (2 × multiply-adds) for an input of shape ``(batch, spatial...,
        in_features)``: ``{"factorized": ..., "dense": ..., "plain": 2·B·Q·K·in·out}``, the two
        contractions and the plain ``nnx.Conv`` (the formulas in the module docstring; the bias
        is left out)."""
        d = len(self.kernel_size)
        shape = tuple(int(n) for n in input_shape)
        if len(shape) != d + 2:
            raise ValueError(f"input_shape must be (batch, {d} spatial sizes, in_features), got "
                             f"{shape}.")
        b, spatial = shape[0], shape[1:-1]
        out_spatial = self._out_spatial(spatial)
        p, q, k = math.prod(spatial), math.prod(out_spatial), math.prod(self.kernel_size)
        n_in, n_out = self.in_features, self.out_features
        plain = 2 * b * q * k * n_in * n_out
        if self.kind == "tucker":
            r_in, r_out = self.rank
            fact = (2 * b * p * n_in * r_in + 2 * b * q * k * r_in * r_out
                    + 2 * b * q * r_out * n_out)
            recon = 2 * k * r_in * r_out * n_in + 2 * k * n_in * r_out * n_out
        else:
            r = self.rank
            fact = 2 * b * p * n_in * r + 2 * b * q * r * n_out
            for m in range(d):
                q_m = math.prod(out_spatial[:m + 1]) * math.prod(spatial[m + 1:])
                fact += 2 * b * q_m * self.kernel_size[m] * r
            recon = 2 * r * k * n_in * n_out
        return {"factorized": fact, "dense": recon + plain, "plain": plain}

    # -- forward ---------------------------------------------------------------------------
    def __call__(self, x: jax.Array) -> jax.Array:
        """The convolution of ``x`` of shape ``(batch..., spatial..., in_features)`` (no batch
        axis is fine, as in ``nnx.Conv``), plus the bias."""
        d = len(self.kernel_size)
        x = check_input(x, self.in_features, d)
        bias = self.bias[...] if self.use_bias else None
        params = [v[...] for v in self._param_vars()]
        x, *arrays, bias = promote_dtype((x, *params, bias), dtype=self.dtype)
        lead, spatial = x.shape[:x.ndim - d - 1], x.shape[x.ndim - d - 1:-1]
        x = x.reshape((-1,) + spatial + (self.in_features,))
        out_spatial = self._out_spatial(spatial)
        if x.shape[0] == 0 or 0 in out_spatial or 0 in spatial:
            y = jnp.zeros((x.shape[0],) + out_spatial + (self.out_features,), x.dtype)
        elif self.choose_contraction(x.shape) == "dense":
            y = self._conv(x, self._kernel(arrays, self.precision), self.strides,
                           self._pads(spatial))
        else:
            y = self._factorized(x, arrays, self._pads(spatial))
        y = y.reshape(lead + y.shape[1:])
        return y if bias is None else y + bias

    def _conv(self, x, kernel, strides, pads, groups=1):
        return jax.lax.conv_general_dilated(
            x, kernel, strides, pads, dimension_numbers=_dimension_numbers(x.ndim - 2),
            feature_group_count=groups, precision=self.precision)

    def _factorized(self, x, arrays, pads):
        prec = self.precision
        if self.kind == "tucker":
            core, u, v = arrays
            t = jnp.matmul(x, u, precision=prec)                  # 1×1: in → r_in
            t = self._conv(t, core, self.strides, pads)           # spatial: r_in → r_out
            return jnp.matmul(t, v.T, precision=prec)             # 1×1: r_out → out
        d = len(self.kernel_size)
        *spatial_factors, a, b = arrays
        r = self.rank
        t = jnp.matmul(x, a, precision=prec)                      # 1×1: in → R
        for m, f in enumerate(spatial_factors):                   # depthwise 1-D along mode m
            shape = tuple(f.shape[0] if j == m else 1 for j in range(d)) + (1, r)
            strides = tuple(self.strides[m] if j == m else 1 for j in range(d))
            mode_pads = tuple(pads[m] if j == m else (0, 0) for j in range(d))
            t = self._conv(t, f.reshape(shape), strides, mode_pads, groups=r)
        return jnp.matmul(t, b.T, precision=prec)                 # 1×1: R → out

    # -- from a trained layer --------------------------------------------------------------
    @classmethod
    def from_layer(cls, layer: nnx.Conv, *, kind: ConvKind = "tucker", rank, key=None,
                   contraction: Contraction = "auto", dtype=None, param_dtype=None,
                   precision: Precision = None, **fit_kwargs):
        """A factorized convolution initialised by decomposing a trained ``nnx.Conv``'s kernel.

        ``tucker``: partial HOOI over the channel modes (:func:`tensorfact.tucker` with
        ``modes=(d, d + 1)``), exact at ``rank="full"`` up to rounding. ``cp``: CP-ALS
        (:func:`tensorfact.cp`) with the weights spread evenly over the factors (``|w_r|^{1/N}``
        each, the signs on ``K_1``); at ``rank="full"`` an explicit exact construction (one
        rank-one term per fibre of the largest mode). Strides, padding, bias, dtype and
        precision are taken from ``layer``.

        Args:
          layer: an ``nnx.Conv`` without dilation, groups or mask, with a finite kernel.
          kind, rank, contraction: as in the constructor.
          key: ``jax.random`` key for fits that use randomness (``cp`` when the rank exceeds a
            mode size, random inits).
          dtype, precision: by default the conv's; param_dtype: by default the kernel's.
          **fit_kwargs: passed to the decomposition (e.g. ``n_iter``, ``method``).

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from flax import nnx
          >>> from tensorfact.nn import FactorizedConv
          >>> conv = nnx.Conv(8, 16, (3, 3), strides=2, rngs=nnx.Rngs(0))
          >>> x = jax.random.normal(jax.random.key(1), (2, 9, 9, 8))
          >>> small = FactorizedConv.from_layer(conv, kind="tucker", rank="full")
          >>> bool(jnp.allclose(small(x), conv(x), atol=1e-4))
          True
        """
        if not isinstance(layer, nnx.Conv):
            raise TypeError(f"layer must be an nnx.Conv, got {type(layer).__name__}.")
        kind = check_choice(kind, ConvKind, "kind")
        if key is not None:
            key = check_key(key, f"by FactorizedConv.from_layer (kind {kind!r})")
        d = 1 if isinstance(layer.kernel_size, int) else len(layer.kernel_size)
        for name in ("input_dilation", "kernel_dilation"):
            value = getattr(layer, name)
            if value is not None and any(v != 1 for v in _check_tuple(value, d, name)):
                raise ValueError(f"layer.{name} must be 1 for a factorized conv, got {value!r}.")
        if layer.feature_group_count != 1 or layer.mask is not None:
            raise ValueError("layer must have feature_group_count=1 and no mask, got "
                             f"feature_group_count={layer.feature_group_count} and "
                             f"mask={'set' if layer.mask is not None else None}.")
        kernel = as_float_array(layer.kernel[...], "layer.kernel")
        check_finite(kernel, "layer.kernel")
        ksize, (n_in, n_out) = kernel.shape[:-2], kernel.shape[-2:]
        resolved = _resolve_rank(kind, rank, ksize, n_in, n_out)
        full = isinstance(rank, str) and rank == "full"
        if kind == "tucker":
            core, factors = tucker(kernel, resolved, modes=(d, d + 1), key=key, **fit_kwargs)
            arrays = [core] + list(factors)
        elif full:
            arrays = cp_fibres(kernel)
            resolved = arrays[0].shape[1]
        else:
            arrays = spread_cp(*cp(kernel, resolved, key=key, **fit_kwargs))
        bias = None if layer.bias is None else layer.bias[...]
        # the layer's structure without drawing (nnx.eval_shape), then the fitted factors
        out = nnx.eval_shape(lambda: cls(
            n_in, n_out, ksize, kind=kind, rank=resolved,
            strides=1 if layer.strides is None else layer.strides, padding=layer.padding,
            use_bias=bias is not None, contraction=contraction,
            dtype=layer.dtype if dtype is None else dtype,
            param_dtype=kernel.dtype if param_dtype is None else param_dtype,
            precision=layer.precision if precision is None else precision, rngs=nnx.Rngs(0)))
        out._set_factors(arrays, bias)
        return out
