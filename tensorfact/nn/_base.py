"""The base every adapter of :mod:`tensorfact.nn` derives from: a frozen layer (``nnx.Linear``,
``nnx.LinearGeneral``, ``nnx.Einsum``, ``nnx.Conv`` or ``nnx.Embed``) plus a change of its
kernel.

An adapter holds its ``base`` layer and computes ``base(x) + change(x)``. Its kernel update
``ΔW`` (:meth:`Adapter.delta_weight`), the adapted kernel ``W + ΔW``
(:meth:`Adapter.dense_weight`) and :meth:`Adapter.merge` (the base with the adapted kernel)
are defined once here from a subclass's ``_delta``; a subclass adds its parameters and, where
it has one, a forward that never forms ``ΔW``. A Conv's kernel ``(k_1, ..., k_s, c_in, c_out)``
is seen as the matrix ``(k_1⋯k_s c_in, c_out)`` by the LoRA family, and convolution being linear
in the kernel, ``conv(x, K + ΔK) = base(x) + conv(x, ΔK)``.

**Every layer as a matrix.** A :class:`Matricization` says how a layer's kernel is the matrix
``W`` of shape ``(rows, cols)`` and its input the rows of a matrix, so that one adapter code path
serves every dense layer:

* ``nnx.Linear``: ``W`` is the ``(in, out)`` kernel.
* ``nnx.LinearGeneral`` (the projections of ``nnx.MultiHeadAttention``): kernel
  ``in_features + out_features``, ``W`` its ``(∏ in_features, ∏ out_features)`` reshape; the
  input's contracted ``axis`` are moved last and flattened, the change's columns reshaped to
  ``out_features`` (batch axes, ``batch_axis``, are refused).
* ``nnx.Einsum``: the kernel axes whose letters the input shares are the rows, the others the
  columns (in the kernel's order); a kernel axis shared by the input and the output (a batched
  kernel) or summed alone is refused.
* ``nnx.Embed``: ``W`` is the ``(num_embeddings, features)`` table and ``x ΔW`` the rows
  ``ΔW[ids]``; ``attend`` (a tied output layer) adds ``q ΔWᵀ``.
* ``nnx.Conv``: the ``(k_1⋯k_s c_in, c_out)`` reshape above, applied by convolution.

A private module made to be shared by ``_adapters.py`` and ``_tensor_adapters.py``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype
from flax.nnx.nn.linear import canonicalize_padding

from tensorfact._checks import Precision
from tensorfact._numerics import resolve_precision
from tensorfact.nn._common import broadcast, check_input, check_rngs

__all__ = ["Adapter", "AdapterBuffer", "LoRAParam", "Matricization", "adapter_scale",
           "convolve", "matricize", "set_dropout"]

#: The type of every adapter parameter (Flax's): train them with ``wrt=nnx.LoRAParam``.
LoRAParam = nnx.LoRAParam


class AdapterBuffer(nnx.Variable):
    """Frozen arrays of an adapter (random bases, SVD factors, the starting factors of PiSSA):
    part of the adapter and saved with it, but not trained by ``wrt=nnx.LoRAParam``."""


@dataclasses.dataclass(frozen=True)
class Matricization:
    """How an adapter sees a layer: its kernel as the matrix ``W`` (``rows × cols``) and its input
    as rows of that matrix's left operand (see the module docstring).

    Attributes:
      kind: ``"linear"`` (``nnx.Linear``, ``nnx.LinearGeneral``, ``nnx.Einsum``: ``x ΔW`` is a
        product of matrices), ``"conv"`` or ``"embed"``.
      layer: the layer's class name.
      weight: the name of the layer's kernel attribute (``"kernel"`` or ``"embedding"``).
      perm: the kernel's axes in matrix order (row axes, then column axes).
      rows_shape, cols_shape: the kernel's dimensions along those axes.
      axis: ``nnx.LinearGeneral``'s contracted input axes.
      einsum: ``nnx.Einsum``'s ``(lhs, free, row_letters, col_letters, out)`` subscripts.
    """

    kind: str
    layer: str
    weight: str
    perm: tuple
    rows_shape: tuple
    cols_shape: tuple
    axis: tuple = ()
    einsum: tuple = ()

    @property
    def shape(self) -> tuple[int, int]:
        return math.prod(self.rows_shape), math.prod(self.cols_shape)

    def to_matrix(self, kernel):
        """The kernel as the ``(rows, cols)`` matrix ``W``."""
        return jnp.transpose(kernel, self.perm).reshape(self.shape)

    def to_kernel(self, matrix):
        """The inverse of :meth:`to_matrix`."""
        kernel = matrix.reshape(self.rows_shape + self.cols_shape)
        return jnp.transpose(kernel, tuple(sorted(range(len(self.perm)),
                                                  key=self.perm.__getitem__)))

    def rows(self, x):
        """``x`` as ``(..., rows)``: what multiplies ``W`` from the left (a ``"linear"`` kind)."""
        if self.einsum:
            lhs, free, row_letters, _, _ = self.einsum
            x = jnp.einsum(f"{lhs}->{free}{row_letters}", x)
            return x.reshape(x.shape[:x.ndim - len(row_letters)] + (self.shape[0],))
        if self.axis:
            n = len(self.axis)
            axis = tuple(a % x.ndim for a in self.axis)
            x = jnp.moveaxis(x, axis, tuple(range(x.ndim - n, x.ndim)))
            return x.reshape(x.shape[:x.ndim - n] + (self.shape[0],))
        return x

    def outputs(self, z):
        """``z`` of shape ``(..., cols)`` in the layer's output layout."""
        if self.einsum:
            _, free, _, col_letters, out = self.einsum
            z = z.reshape(z.shape[:-1] + self.cols_shape)
            return jnp.einsum(f"{free}{col_letters}->{out}", z)
        if self.axis:
            return z.reshape(z.shape[:-1] + self.cols_shape)
        return z


def _einsum_view(layer) -> Matricization:
    spec = layer.einsum_str
    if spec is None:
        raise ValueError("base is an nnx.Einsum without einsum_str (given at call time): an "
                         "adapter needs the equation when it is built.")
    spec = spec.replace(" ", "")
    try:
        inputs, out = spec.split("->")
        lhs, rhs = inputs.split(",")
    except ValueError:
        raise ValueError(f"base.einsum_str = {spec!r} is not of the form 'lhs,kernel->out'."
                         ) from None
    if "." in rhs:
        raise ValueError(f"base.einsum_str = {spec!r}: an ellipsis in the kernel's subscripts "
                         "is not supported.")
    lhs_letters, out_letters = set(lhs) - {"."}, set(out) - {"."}
    batched = [c for c in rhs if c in lhs_letters and c in out_letters]
    alone = [c for c in rhs if c not in lhs_letters and c not in out_letters]
    dropped = [c for c in lhs_letters - set(rhs) if c not in out_letters]
    if batched or alone or dropped:
        why = (f"kernel axes {''.join(batched)!r} are shared by the input and the output "
               "(a batched kernel)" if batched else
               f"kernel axes {''.join(alone)!r} are summed alone" if alone else
               f"input axes {''.join(sorted(dropped))!r} are summed without the kernel")
        raise ValueError(f"base.einsum_str = {spec!r}: {why}; an adapter needs a kernel that is "
                         "a matrix from contracted input axes to output axes.")
    row_axes = [k for k, c in enumerate(rhs) if c in lhs_letters]
    col_axes = [k for k, c in enumerate(rhs) if c not in lhs_letters]
    if not row_axes or not col_axes:
        raise ValueError(f"base.einsum_str = {spec!r}: the kernel must have contracted and "
                         "output axes.")
    free = "".join(c for c in lhs if c not in rhs)
    shape = tuple(int(d) for d in layer.kernel[...].shape)
    return Matricization(
        "linear", "Einsum", "kernel", tuple(row_axes + col_axes),
        tuple(shape[k] for k in row_axes), tuple(shape[k] for k in col_axes),
        einsum=(lhs, free, "".join(rhs[k] for k in row_axes),
                "".join(rhs[k] for k in col_axes), out))


def matrix_groups(layers) -> list[list[int]]:
    """The indices of ``layers`` grouped by the shape and dtype of their kernel matrix
    (:func:`matricize`), in order of first appearance; a layer that no matrix describes is a
    group of its own (its adapter then raises the error that names it)."""
    groups: dict = {}
    for i, layer in enumerate(layers):
        try:
            view = matricize(layer)
            ident = (view.shape, getattr(layer, view.weight)[...].dtype)
        except (TypeError, ValueError, AttributeError):
            ident = ("alone", i)
        groups.setdefault(ident, []).append(i)
    return list(groups.values())


def matricize(layer) -> Matricization:
    """The :class:`Matricization` of an ``nnx.Linear``, ``nnx.LinearGeneral``, ``nnx.Einsum``,
    ``nnx.Conv`` or ``nnx.Embed`` (a ``TypeError`` for anything else, a ``ValueError`` for a
    layout no matrix describes)."""
    if isinstance(layer, nnx.Embed):
        n, f = (int(d) for d in layer.embedding[...].shape)
        return Matricization("embed", "Embed", "embedding", (0, 1), (n,), (f,))
    if isinstance(layer, nnx.Einsum):
        return _einsum_view(layer)
    shape = tuple(int(d) for d in layer.kernel[...].shape)
    if isinstance(layer, nnx.Linear):
        return Matricization("linear", "Linear", "kernel", (0, 1), shape[:1], shape[1:])
    if isinstance(layer, nnx.Conv):
        return Matricization("conv", "Conv", "kernel", tuple(range(len(shape))), shape[:-1],
                             shape[-1:])
    if isinstance(layer, nnx.LinearGeneral):
        if layer.batch_axis:
            raise ValueError(f"base.batch_axis = {dict(layer.batch_axis)}: an nnx.LinearGeneral "
                             "with batch axes holds one kernel per batch index; adapters take "
                             "it without batch_axis only.")
        n_in = len(layer.in_features)
        return Matricization("linear", "LinearGeneral", "kernel", tuple(range(len(shape))),
                             shape[:n_in], shape[n_in:], axis=tuple(layer.axis))
    raise TypeError(f"{type(layer).__name__} is not a layer an adapter can wrap (nnx.Linear, "
                    "nnx.LinearGeneral, nnx.Einsum, nnx.Conv, nnx.Embed).")


def adapter_scale(alpha, rank: int, use_rslora: bool = False) -> float:
    """``s = alpha / rank`` (``alpha / √rank`` with ``use_rslora``); ``alpha=None`` gives 1."""
    if alpha is None:
        return 1.0
    if (isinstance(alpha, bool) or not isinstance(alpha, numbers.Real)
            or not 0 < alpha < math.inf):
        raise ValueError(f"alpha must be a positive number or None, got {alpha!r}.")
    return float(alpha) / (math.sqrt(rank) if use_rslora else rank)


def set_dropout(adapter, rate, rngs) -> None:
    """Gives ``adapter`` an ``nnx.Dropout`` of ``rate`` on the input of its change (PEFT's
    ``lora_dropout``), or none for ``rate = 0``."""
    if (isinstance(rate, bool) or not isinstance(rate, numbers.Real)
            or not 0 <= rate < 1):
        raise ValueError(f"dropout must be a rate in [0, 1), got {rate!r}.")
    if rate > 0:
        check_rngs(rngs, "for the adapter's dropout")
        adapter.dropout = nnx.Dropout(float(rate), rngs=rngs)
    else:
        adapter.dropout = nnx.data(None)


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

    A subclass calls :meth:`_set_base` first and defines ``_params()`` (its arrays),
    ``_delta(arrays, precision)`` (``ΔW`` from those arrays, of shape ``matrix_shape`` or of
    the kernel's shape) and, where it has one, ``_linear_change(x, arrays)`` (``x ΔW`` for ``x``
    of shape ``(..., rows)`` without forming ``ΔW``); or it overrides ``_change`` whole. On an
    ``nnx.Conv`` (and an ``nnx.Embed``) the default change forms ``ΔW`` and convolves with it
    (takes its rows).

    The kernel of the base is seen as the matrix ``W`` of shape ``matrix_shape = (rows, out)``
    by its :class:`Matricization` ``view`` (see the module docstring): every adapter that takes
    an ``nnx.Linear`` also takes an ``nnx.LinearGeneral`` and an ``nnx.Einsum``.

    Attributes:
      dropout: ``None`` or an ``nnx.Dropout`` applied to the input of the change only (PEFT's
        ``lora_dropout``; ``base(x)`` sees the whole input). It follows ``model.train()`` /
        ``model.eval()``; it is not applied to an ``nnx.Embed``'s ids.
    """

    def _set_base(self, base, param_dtype, *, linear: bool = True, conv: bool = True,
                  grouped: bool = False, embed: bool = False):
        """Holds ``base`` (an ``nnx.Linear``, ``nnx.LinearGeneral`` or ``nnx.Einsum`` if
        ``linear``, an ``nnx.Conv`` if ``conv``, a grouped or masked Conv only if ``grouped``,
        an ``nnx.Embed`` if ``embed``) and its kernel's geometry."""
        kinds = ((["nnx.Linear", "nnx.LinearGeneral", "nnx.Einsum"] if linear else [])
                 + (["nnx.Conv"] if conv else []) + (["nnx.Embed"] if embed else []))
        kinds = ", ".join(kinds[:-1]) + " or " + kinds[-1] if len(kinds) > 1 else kinds[0]
        known = (nnx.Linear, nnx.LinearGeneral, nnx.Einsum, nnx.Conv, nnx.Embed)
        view = matricize(base) if isinstance(base, known) else None
        if view is None or not {"linear": linear, "conv": conv, "embed": embed}[view.kind]:
            raise TypeError(f"base must be an {kinds} for "
                            f"{type(self).__name__}, got {type(base).__name__}.")
        if isinstance(base, nnx.Conv) and not grouped:
            if base.feature_group_count != 1:
                raise ValueError(f"base.feature_group_count = {base.feature_group_count}: this "
                                 "adapter takes an nnx.Conv with feature_group_count == 1 only.")
            if base.mask is not None:
                raise ValueError("base.mask is set: this adapter takes an nnx.Conv without a "
                                 "kernel mask.")
        self.base = base
        self.view = view
        kernel = getattr(base, view.weight)[...]
        self.kernel_shape = tuple(int(d) for d in kernel.shape)
        self.is_conv = view.kind == "conv"
        self.matrix_shape = view.shape
        self.in_features, self.out_features = self.matrix_shape
        if isinstance(base, (nnx.Linear, nnx.Conv)):
            self.in_features = int(base.in_features)
        self._rows_name = {"conv": "prod(kernel_size) * in_features",
                           "embed": "num_embeddings"}.get(view.kind, "in_features")
        self.param_dtype = kernel.dtype if param_dtype is None else param_dtype
        self.dropout = nnx.data(None)  # a data attribute: an nnx.Dropout may take its place

    def _kernel(self, layer=None):
        """The kernel variable (``kernel`` or ``embedding``) of ``layer`` (default: the base)."""
        return getattr(self.base if layer is None else layer, self.view.weight)

    # -- forward -------------------------------------------------------------------------------
    def __call__(self, x: jax.Array, out_sharding=None) -> jax.Array:
        """``base(x)`` plus the adapter's change of the output (``out_sharding``, which
        ``nnx.MultiHeadAttention`` passes its projections, goes to the base layer)."""
        kind = self.view.kind
        if kind == "conv":
            x = check_input(x, self.in_features, len(self.kernel_shape) - 2)
        elif self.view.layer == "Linear":
            x = check_input(x, self.in_features)
        y = self.base(x) if out_sharding is None else self.base(x, out_sharding=out_sharding)
        if jnp.size(x) == 0:  # an empty batch: nothing to change (and no reshape by a zero size)
            return y
        x_change = x
        if self.dropout is not None and kind != "embed":
            x_change = self.dropout(x)
        # the base's output is passed on only when the change sees the same input
        return y + self._change(x_change, y if x_change is x else None).astype(y.dtype)

    def attend(self, query: jax.Array) -> jax.Array:
        """For an ``nnx.Embed`` base (a tied output layer): ``base.attend(q) + q ΔWᵀ``."""
        if self.view.kind != "embed":
            raise TypeError(f"attend needs an nnx.Embed base, got nnx.{self.view.layer}.")
        y = self.base.attend(query)
        q, *arrays = self._promote(query, *self._params())
        delta = self._delta(arrays, self.base.precision if hasattr(self.base, "precision")
                            else None).reshape(self.matrix_shape)
        return y + jnp.matmul(q, delta.T).astype(y.dtype)

    def _change(self, x, y):
        """The change of the output for input ``x``; ``y`` is ``base(x)`` or None (dropout)."""
        x, *arrays = self._promote(x, *self._params())
        kind = self.view.kind
        if kind == "conv":
            return self._apply(x, self._delta(arrays, self.base.precision))
        if kind == "embed":
            return self._apply(x, self._delta(arrays, None))
        return self.view.outputs(self._linear_change(self.view.rows(x), arrays))

    def _linear_change(self, x, arrays):
        """``x ΔW`` for ``x`` of shape ``(..., rows)``: by default ``ΔW`` formed."""
        delta = self._delta(arrays, self.base.precision).reshape(self.matrix_shape)
        return jnp.matmul(x, delta, precision=self.base.precision)

    def _promote(self, x, *arrays):
        """``x`` and ``arrays`` in the base's compute dtype (an ``nnx.Embed``'s ids kept)."""
        if self.view.kind == "embed":
            return (x, *promote_dtype(arrays, dtype=self.base.dtype))
        return tuple(promote_dtype((x, *arrays), dtype=self.base.dtype))

    def _w(self) -> jax.Array:
        """The base kernel as the ``matrix_shape`` matrix ``W``."""
        return self.view.to_matrix(self._kernel()[...])

    def _as_kernel(self, delta) -> jax.Array:
        """A ``ΔW`` of ``matrix_shape`` (or, on a Conv, of the kernel's shape) as a kernel."""
        return self.view.to_kernel(delta.reshape(self.matrix_shape))

    def _lowrank(self, x, a, b):
        """``x (A B)`` without forming ``A B``: two matmuls (on the rows of ``x``), the rows
        ``A[ids] B`` of an ``nnx.Embed``, or on a Conv the convolution ``c_in → r`` with kernel
        ``A`` and the base's geometry, then the 1×1 convolution ``B``."""
        prec = self.base.precision if hasattr(self.base, "precision") else None
        kind = self.view.kind
        if kind == "conv":
            h = convolve(self.base, x, a.reshape(self.kernel_shape[:-1] + (a.shape[-1],)))
            return jnp.matmul(h, b, precision=prec)
        if kind == "embed":
            return jnp.matmul(jnp.take(a, x, axis=0), b, precision=prec)
        h = jnp.matmul(self.view.rows(x), a, precision=prec)
        return self.view.outputs(jnp.matmul(h, b, precision=prec))

    def _apply(self, x, delta):
        """``x ΔW`` for a formed ``ΔW`` (of ``matrix_shape`` or the kernel's shape): a matmul,
        the rows ``ΔW[ids]`` of an ``nnx.Embed``, or on a Conv the convolution with ``ΔW``
        reshaped to the kernel (and the base's mask)."""
        kind = self.view.kind
        if kind == "conv":
            kernel = self._as_kernel(delta)
            if self.base.mask is not None:
                kernel = kernel * self.base.mask
            return convolve(self.base, x, kernel)
        matrix = delta.reshape(self.matrix_shape)
        if kind == "embed":
            return jnp.take(matrix, x, axis=0)
        return self.view.outputs(jnp.matmul(self.view.rows(x), matrix,
                                            precision=self.base.precision))

    # -- the update as arrays and as a plain layer -------------------------------------------
    def delta_weight(self, *, precision: Precision = "highest") -> jax.Array:
        """The update ``ΔW`` alone (PEFT's ``get_delta_weight``), in the base kernel's shape:
        ``(in, out)`` for a Linear, ``(spatial..., c_in, c_out)`` for a Conv; formed at
        ``precision`` (default ``"highest"``: true float32)."""
        w = self._kernel()[...]
        arrays = [p.astype(w.dtype) for p in self._params()]
        return self._as_kernel(self._delta(arrays, resolve_precision(precision)))

    def dense_weight(self, *, precision: Precision = "highest") -> jax.Array:
        """The kernel the adapted layer applies, ``W + ΔW`` (what :meth:`merge` stores), in the
        base kernel's shape."""
        return self._kernel()[...] + self.delta_weight(precision=precision)

    def merge(self) -> nnx.Module:
        """A plain layer of the base's type (PEFT's ``merge_and_unload``): a copy of the base
        layer with the adapted kernel :meth:`dense_weight` (and the base's bias, strides,
        padding, ...). The adapter and its base are left as they are."""
        merged = nnx.clone(self.base)
        kernel = self._kernel(merged)
        kernel[...] = self.dense_weight().astype(kernel[...].dtype)
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
        ``"auto"`` the one with fewer FLOPs by ``flops(shape)`` (factorized on ties), the
        factorized count weighed by the kind's measured rate (a TT chain runs at half a
        GEMM's)."""
        if self.contraction != "auto":
            return self.contraction
        f = self.flops(shape)
        return ("factorized" if f["factorized"] <= self._factorized_rate() * f["dense"]
                else "dense")

    def _factorized_rate(self) -> float:
        """The speed of the factorized chain's FLOPs relative to the dense path's, which
        ``"auto"`` weighs the FLOP counts by (1: FLOPs alone decide)."""
        return 1.0

    def _fill(self, layer):
        """``layer`` (a fresh plain layer) with the rebuilt kernel and this layer's bias."""
        layer.kernel[...] = self.dense_weight().astype(layer.kernel[...].dtype)
        if self.use_bias:
            layer.bias[...] = self.bias[...]
        return layer
