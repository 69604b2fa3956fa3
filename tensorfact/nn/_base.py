"""The base every adapter of :mod:`tensorfact.nn` derives from: a frozen ``nnx.Linear`` or
``nnx.Conv`` plus a change of its kernel.

An adapter holds its ``base`` layer and computes ``base(x) + change(x)``. Its kernel update
``ΔW`` (:meth:`Adapter.delta_weight`), the adapted kernel ``W + ΔW``
(:meth:`Adapter.dense_weight`) and :meth:`Adapter.merge` (the base with the adapted kernel)
are defined once here from a subclass's ``_delta``; a subclass adds its parameters and, where
it has one, a forward that never forms ``ΔW``. A Conv's kernel ``(k_1, ..., k_s, c_in, c_out)``
is seen as the matrix ``(k_1⋯k_s c_in, c_out)`` by the LoRA family, and convolution being linear
in the kernel, ``conv(x, K + ΔK) = base(x) + conv(x, ΔK)``.

A private module made to be shared by ``_adapters.py`` and ``_tensor_adapters.py``.
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype
from flax.nnx.nn.linear import canonicalize_padding

from tensorfact._checks import Precision
from tensorfact._numerics import resolve_precision
from tensorfact.nn._common import broadcast, check_input

__all__ = ["Adapter", "LoRAParam", "adapter_scale", "convolve"]

#: The type of every adapter parameter (Flax's): train them with ``wrt=nnx.LoRAParam``.
LoRAParam = nnx.LoRAParam


def adapter_scale(alpha, rank: int, use_rslora: bool = False) -> float:
    """``s = alpha / rank`` (``alpha / √rank`` with ``use_rslora``); ``alpha=None`` gives 1."""
    if alpha is None:
        return 1.0
    if (isinstance(alpha, bool) or not isinstance(alpha, numbers.Real)
            or not 0 < alpha < math.inf):
        raise ValueError(f"alpha must be a positive number or None, got {alpha!r}.")
    return float(alpha) / (math.sqrt(rank) if use_rslora else rank)


def convolve(base: nnx.Conv, x, kernel):
    """``x`` convolved with ``kernel`` (layout ``(spatial..., c_in / groups, c)``) exactly as
    ``base`` convolves with its own kernel (batch flattening, padding modes, strides,
    dilations, feature groups, precision), without the bias or the mask."""
    n = len(base.kernel_size)
    lead = x.shape[:x.ndim - (n + 1)]
    x = x.reshape((-1,) + x.shape[x.ndim - (n + 1):])
    dilation = broadcast(base.kernel_dilation, n)
    padding = canonicalize_padding(base.padding, n)
    if isinstance(padding, str) and padding.upper() in ("CIRCULAR", "REFLECT"):
        dilated = [(k - 1) * d + 1 for k, d in zip(base.kernel_size, dilation)]
        pads = [(0, 0)] + [((k - 1) // 2, k // 2) for k in dilated] + [(0, 0)]
        x = jnp.pad(x, pads, mode="wrap" if padding.upper() == "CIRCULAR" else "reflect")
        padding = "VALID"
    elif isinstance(padding, str) and padding.upper() == "CAUSAL":
        x = jnp.pad(x, [(0, 0), (dilation[0] * (base.kernel_size[0] - 1), 0), (0, 0)])
        padding = "VALID"
    spatial = tuple(range(1, n + 1))
    dims = jax.lax.ConvDimensionNumbers(lhs_spec=(0, n + 1) + spatial,
                                        rhs_spec=(n + 1, n) + tuple(range(n)),
                                        out_spec=(0, n + 1) + spatial)
    out = jax.lax.conv_general_dilated(
        x, kernel, broadcast(base.strides, n), padding,
        lhs_dilation=broadcast(base.input_dilation, n), rhs_dilation=dilation,
        dimension_numbers=dims, feature_group_count=base.feature_group_count,
        precision=base.precision)
    return out.reshape(lead + out.shape[1:])


class Adapter(nnx.Module):
    """What every adapter shares: the base layer, its kernel as a matrix, the forward as
    ``base(x) + change``, :meth:`delta_weight`, :meth:`dense_weight` and :meth:`merge`.

    A subclass calls :meth:`_set_base` first and defines ``_params()`` (its parameter arrays),
    ``_delta(arrays, precision)`` (``ΔW`` from those arrays, of shape ``matrix_shape`` or of
    the kernel's shape) and, on an ``nnx.Linear``, ``_linear_change(x, arrays)`` (``x ΔW``
    without forming ``ΔW``); or it overrides ``_change`` whole. On an ``nnx.Conv`` the default
    change forms ``ΔK`` and convolves with it.

    The kernel of the base is seen as the matrix ``W`` of shape ``matrix_shape = (rows, out)``
    (a Linear's own kernel; a Conv's ``(k_1⋯k_s c_in, c_out)`` reshape).
    """

    def _set_base(self, base, param_dtype, *, linear: bool = True, conv: bool = True,
                  grouped: bool = False):
        """Holds ``base`` (an ``nnx.Linear`` if ``linear``, an ``nnx.Conv`` if ``conv``; a
        grouped or masked Conv only if ``grouped``) and its kernel's geometry."""
        kinds = [k for k, ok in (("nnx.Linear", linear), ("nnx.Conv", conv)) if ok]
        if not ((linear and isinstance(base, nnx.Linear))
                or (conv and isinstance(base, nnx.Conv))):
            raise TypeError(f"base must be an {' or '.join(kinds)}, got {type(base).__name__}.")
        if isinstance(base, nnx.Conv) and not grouped:
            if base.feature_group_count != 1:
                raise ValueError(f"base.feature_group_count = {base.feature_group_count}: this "
                                 "adapter takes an nnx.Conv with feature_group_count == 1 only.")
            if base.mask is not None:
                raise ValueError("base.mask is set: this adapter takes an nnx.Conv without a "
                                 "kernel mask.")
        self.base = base
        self.in_features, self.out_features = int(base.in_features), int(base.out_features)
        kernel = base.kernel[...]
        self.kernel_shape = tuple(int(d) for d in kernel.shape)
        self.is_conv = isinstance(base, nnx.Conv)
        self.matrix_shape = (math.prod(self.kernel_shape[:-1]), self.kernel_shape[-1])
        self._rows_name = "prod(kernel_size) * in_features" if self.is_conv else "in_features"
        self.param_dtype = kernel.dtype if param_dtype is None else param_dtype

    # -- forward -------------------------------------------------------------------------------
    def __call__(self, x: jax.Array) -> jax.Array:
        """``base(x)`` plus the adapter's change of the output."""
        n_spatial = len(self.kernel_shape) - 2 if self.is_conv else 0
        x = check_input(x, self.in_features, n_spatial)
        y = self.base(x)
        if x.size == 0:  # an empty batch: nothing to change (and no reshape by a zero size)
            return y
        return y + self._change(x, y).astype(y.dtype)

    def _change(self, x, y):
        x, *arrays = self._promote(x, *self._params())
        if self.is_conv:
            return self._apply(x, self._delta(arrays, self.base.precision))
        return self._linear_change(x, arrays)

    def _promote(self, *arrays):
        return promote_dtype(arrays, dtype=self.base.dtype)

    def _w(self) -> jax.Array:
        """The base kernel as the ``matrix_shape`` matrix ``W``."""
        return self.base.kernel[...].reshape(self.matrix_shape)

    def _as_kernel(self, matrix) -> jax.Array:
        return matrix.reshape(self.kernel_shape)

    def _lowrank(self, x, a, b):
        """``x (A B)`` without forming ``A B``: two matmuls, or on a Conv the convolution
        ``c_in → r`` with kernel ``A`` and the base's geometry, then the 1×1 convolution ``B``."""
        prec = self.base.precision
        if self.is_conv:
            h = convolve(self.base, x, a.reshape(self.kernel_shape[:-1] + (a.shape[-1],)))
        else:
            h = jnp.matmul(x, a, precision=prec)
        return jnp.matmul(h, b, precision=prec)

    def _apply(self, x, delta):
        """``x ΔW`` for a formed ``ΔW`` (of ``matrix_shape`` or the kernel's shape): a matmul, or
        on a Conv the convolution with ``ΔW`` reshaped to the kernel (and the base's mask)."""
        if self.is_conv:
            kernel = self._as_kernel(delta)
            if self.base.mask is not None:
                kernel = kernel * self.base.mask
            return convolve(self.base, x, kernel)
        return jnp.matmul(x, delta, precision=self.base.precision)

    # -- the update as arrays and as a plain layer -------------------------------------------
    def delta_weight(self, *, precision: Precision = "highest") -> jax.Array:
        """The update ``ΔW`` alone (PEFT's ``get_delta_weight``), in the base kernel's shape:
        ``(in, out)`` for a Linear, ``(spatial..., c_in, c_out)`` for a Conv; formed at
        ``precision`` (default ``"highest"``: true float32)."""
        w = self.base.kernel[...]
        arrays = [p.astype(w.dtype) for p in self._params()]
        return self._as_kernel(self._delta(arrays, resolve_precision(precision)))

    def dense_weight(self, *, precision: Precision = "highest") -> jax.Array:
        """The kernel the adapted layer applies, ``W + ΔW`` (what :meth:`merge` stores), in the
        base kernel's shape."""
        return self.base.kernel[...] + self.delta_weight(precision=precision)

    def merge(self) -> nnx.Linear | nnx.Conv:
        """A plain ``nnx.Linear`` / ``nnx.Conv`` (PEFT's ``merge_and_unload``): a copy of the base
        layer with the adapted kernel :meth:`dense_weight` (and the base's bias, strides,
        padding, ...). The adapter and its base are left as they are."""
        merged = nnx.clone(self.base)
        kernel = merged.kernel[...]
        merged.kernel[...] = self.dense_weight().astype(kernel.dtype)
        return merged


class FactorizedLayer(nnx.Module):
    """What :class:`~tensorfact.nn.FactorizedDense` and :class:`~tensorfact.nn.FactorizedConv`
    share: the factors as the library's type (``weight``), their count, the rebuilt kernel
    (:meth:`dense_weight`), the choice of contraction and the plain layer's parameters.

    A subclass defines ``_param_vars()`` (its ``nnx.Param`` factors in order), ``_build(arrays)``
    (the library's type from their values), ``kernel_shape`` (the plain layer's kernel shape),
    ``flops(shape)`` and ``use_bias``, ``bias`` and ``contraction`` attributes.
    """

    @property
    def weight(self):
        """The kernel in the library's type (a ``LowRankMatrix``, ``CPTensor``,
        ``TuckerTensor`` or ``TTMatrix``; see the class)."""
        return self._build([v[...] for v in self._param_vars()])

    @property
    def n_params(self) -> int:
        """Number of trainable scalars: the factors plus the bias."""
        bias = int(self.bias[...].size) if self.use_bias else 0
        return sum(int(v[...].size) for v in self._param_vars()) + bias

    def dense_weight(self, *, precision: Precision = "highest") -> jax.Array:
        """The rebuilt kernel, of the plain layer's shape ``kernel_shape`` (what
        ``to_layer()`` holds), at ``precision`` (default ``"highest"``: true float32)."""
        return self._kernel([v[...] for v in self._param_vars()], resolve_precision(precision))

    def _kernel(self, arrays, precision):
        return self._build(arrays).to_dense(precision=precision).reshape(self.kernel_shape)

    def choose_contraction(self, shape) -> str:
        """What the forward does for an input of ``shape`` (``FactorizedDense``: the number of
        rows; ``FactorizedConv``: the input's shape): the set ``contraction``, or under
        ``"auto"`` the one with fewer FLOPs by ``flops(shape)`` (factorized on ties)."""
        if self.contraction != "auto":
            return self.contraction
        f = self.flops(shape)
        return "factorized" if f["factorized"] <= f["dense"] else "dense"

    def _fill(self, layer):
        """``layer`` (a fresh plain layer) with the rebuilt kernel and this layer's bias."""
        layer.kernel[...] = self.dense_weight().astype(layer.kernel[...].dtype)
        if self.use_bias:
            layer.bias[...] = self.bias[...]
        return layer
