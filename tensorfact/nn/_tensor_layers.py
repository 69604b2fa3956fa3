"""Tensor layers for Flax NNX that keep the modes of an activation or of a table: the tensor
contraction layer (:class:`TCL`), the tensor regression layer (:class:`TRL`) and an embedding
table held in CP, Tucker or TT form (:class:`FactorizedEmbed`), as tensorly-torch's ``TCL``,
``TRL`` and ``FactorizedEmbedding``.

**TCL** (Kossaifi, Khanna, Lipton, Furlanello & Anandkumar, "Tensor Contraction Layers for
Parsimonious Deep Nets", CVPR Workshops 2017). For an activation ``X`` of shape
``(batch, I_1, ..., I_N)`` and factors ``V_k ∈ R^{O_k × I_k}``:

    Y = X ×_1 V_1 ×_2 V_2 ⋯ ×_N V_N   (+ b, of shape (O_1, ..., O_N)),

one mode product per mode, ``(batch, O_1, ..., O_N)`` out. The modes are contracted in order of
largest shrink ``I_k / O_k`` first; each step costs ``2 · size · O_k`` FLOPs, ``size`` the number
of entries before it (``B ∏ I`` at the first step); when every mode shrinks (``O_k ≤ I_k``) the
sizes only fall, so the whole chain costs at most ``2 B ∏ I · Σ_k O_k``, against
``2 B ∏ I · ∏ O`` for the equivalent dense layer on the flattened input.

**TRL** (Kossaifi, Lipton, Kolbeinsson, Khanna, Furlanello & Anandkumar, "Tensor Regression
Networks", JMLR 21(123), 2020). A full contraction of ``X`` with a low-rank weight tensor ``W``
of shape ``(I_1, ..., I_N, O)``:

    y[b, o] = ⟨X[b], W[..., o]⟩_N + b_o = Σ_{i_1..i_N} X[b, i_1..i_N] W[i_1..i_N, o] + b_o,

with ``W`` held as factors and never formed in the forward: ``X`` is contracted with the input
factors first, mode by mode, so its size falls at every step, and only then with what is left.
For ``B`` rows, in FLOPs (``2 ×`` multiply-adds, leading terms):

* ``"tucker"``, ``W = G ×_1 U_1 ⋯ ×_N U_N ×_{N+1} U_O`` with ``U_k ∈ R^{I_k × r_k}``, ``G`` of
  shape ``(r_1, ..., r_N, r_O)``: ``X ×_k U_kᵀ`` one mode at a time (largest shrink
  ``I_k / r_k`` first), ``2 · size · r_k`` each, then ``2 B ∏ r_k · r_O`` for the core and
  ``2 B r_O O`` for ``U_O``;
* ``"cp"``, ``W = Σ_r A_1[:, r] ∘ ⋯ ∘ A_N[:, r] ∘ A_O[:, r]``: the largest mode first,
  ``2 B ∏ I · R``, then the other modes with the rank index shared, ``2 B R ∏(what is left)``
  each, then ``2 B R O``;
* ``"tt"``, ``W[i_1..i_N, o] = G_1[:, i_1, :] ⋯ G_N[:, i_N, :] G_O[:, o, :]`` with cores
  ``(r_{k-1}, I_k, r_k)`` and ``(r_N, O, 1)`` (a :class:`~tensorfact.tensors.TTTensor` of
  ``N + 1`` cores): left to right, ``Σ_k 2 B r_{k-1} r_k I_k ⋯ I_N``, then ``2 B r_N O``.

Against ``2 B ∏ I · O`` for the dense weight (plus forming it): the first step dominates, and
it multiplies by the rank where the dense form multiplies by ``O``.

**FactorizedEmbed** (tensorly-torch's ``FactorizedEmbedding``; Hrinchuk et al., "Tensorized
Embedding Layers", Findings of EMNLP 2020). The ``(num_embeddings, features)`` table ``E`` is
viewed as the ``2N``-way tensor of shape ``in_shape + out_shape`` (``num_embeddings = ∏ i_k``,
``features = ∏ o_l``, row-major, first factor slowest) held as a CP or Tucker tensor, or (for
``"tt"``) as the TT-matrix of :class:`~tensorfact.nn.TTEmbed`. The row of id ``i`` is found from
its mixed-radix digits ``(i_1, ..., i_N)`` without forming ``E``: gather row ``i_k`` of each
input factor, then contract with the rest.

* ``"cp"``: ``z = A_1[i_1] ⊙ ⋯ ⊙ A_N[i_N]`` (``R`` numbers), row ``= (B_1 ⊙_KR ⋯ ⊙_KR B_M) z``:
  ``2 · features · R`` FLOPs per id after the ``features × R`` Khatri–Rao product of the output
  factors, built once per call;
* ``"tucker"``: ``z = U_1[i_1] ⊗ ⋯ ⊗ U_N[i_N]`` (``∏ r_k`` numbers), ``z`` times the core
  unfolded as ``(∏ r_k, ∏ s_l)``, then ``×_l V_l``: ``2 ∏ r ∏ s`` plus the output mode products
  per id;
* ``"tt"``: the engine of :class:`~tensorfact.nn.TTEmbed` (core slices chained left to right).

No array as large as the table appears (tested on the program's jaxpr).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype

from tensorfact import algebra
from tensorfact._checks import Precision, check_choice, check_key, check_positive_int
from tensorfact._numerics import resolve_precision
from tensorfact.decomposition import cp, tt_matrix, tucker
from tensorfact.nn._common import (cp_fibres, draw, id_digits, no_bias, params_key, resolve_rank,
                                   spread_cp, tensorize, tt_apply, tt_core_shapes, tt_rows,
                                   valid_ids, weight_of, embed_holding)
from tensorfact.nn._partitioning import param, partition_specs
from tensorfact.tensors import CPTensor, TTMatrix, TTTensor, TuckerTensor

__all__ = ["TCL", "TRL", "FactorizedEmbed"]

#: The formats of :class:`TRL` and :class:`FactorizedEmbed`.
TensorKind = Literal["tucker", "cp", "tt"]


def _dims(shape, name: str) -> tuple[int, ...]:
    """``shape`` as a non-empty tuple of positive ints, or an error naming ``name``."""
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    if isinstance(shape, str) or not isinstance(shape, (Sequence, np.ndarray)):
        raise ValueError(f"{name} must be a sequence of positive ints, got {shape!r}.")
    shape = tuple(check_positive_int(s, f"{name}[{k}]") for k, s in enumerate(shape))
    if not shape:
        raise ValueError(f"{name} must not be empty.")
    return shape


def _check_tensor_input(x, in_shape) -> jax.Array:
    """``x`` as an array of shape ``(..., *in_shape)``, or a ``ValueError`` naming ``x``."""
    x = jnp.asarray(x)
    n = len(in_shape)
    if x.ndim < n or tuple(x.shape[x.ndim - n:]) != tuple(in_shape):
        raise ValueError(f"x must have shape (..., {', '.join(map(str, in_shape))}) (batch, "
                         f"then in_shape = {tuple(in_shape)}), got {tuple(x.shape)}.")
    return x


def _shrink_order(in_dims, out_dims):
    """Mode indices by decreasing ``in / out`` (the largest shrink first; ties by index)."""
    return sorted(range(len(in_dims)), key=lambda k: -in_dims[k] / out_dims[k])


def _chain_flops(batch, in_shape, out_dims, order):
    """FLOPs of mode products ``size · out_k`` (times 2) applied in ``order``; and the size."""
    size, total = batch * math.prod(in_shape), 0
    for k in order:
        total += 2 * size * out_dims[k]
        size = size // in_shape[k] * out_dims[k]
    return total, size


def _bias_param(shape, param_dtype, spec):
    return param(jnp.zeros(shape, param_dtype), spec)


# ---------------------------------------------------------------------------------------------
# TCL


class TCL(nnx.Module):
    """Tensor contraction layer: ``Y = X ×_1 V_1 ⋯ ×_N V_N (+ b)`` on the last ``N`` axes of
    ``X`` (Kossaifi et al., "Tensor Contraction Layers for Parsimonious Deep Nets", CVPR-W
    2017; see the module docstring for the contraction order and its FLOPs).

    Args:
      in_shape: ``(I_1, ..., I_N)``, the trailing axes of the input.
      out_shape: ``(O_1, ..., O_N)``, the same number of modes.
      use_bias: add a bias of shape ``out_shape`` (zeros at first; default False, as
        tensorly-torch's ``TCL``).
      dtype: the dtype of the computation (None: the promotion of the input and parameters;
        ``jnp.bfloat16`` computes in bfloat16 with float32 parameters).
      param_dtype: the factors' and bias' dtype.
      precision: of the mode products (None: JAX's default, as in ``nnx.Linear``).
      partitioning: optional sharding annotations ``{"factors": spec, "bias": spec}`` (a spec
        for every factor ``(O_k, I_k)``, or a ``list`` with one per factor), as in
        :class:`~tensorfact.nn.FactorizedDense`.
      rngs: ``nnx.Rngs`` with a ``params`` (or ``default``) stream.

    Each ``V_k`` is drawn from a normal truncated at ``±2σ`` with variance ``1 / I_k`` (Flax's
    ``lecun_normal`` for the mode's fan-in), so the output's entries have the variance of the
    input's.

    Raises:
      ValueError: ``in_shape`` or ``out_shape`` not a sequence of positive ints, of different
        lengths; an input whose trailing axes are not ``in_shape`` (naming ``x``); a bad
        ``partitioning``.

    Attributes:
      factors: the ``nnx.Param`` factors ``V_k`` of shape ``(O_k, I_k)`` (tensorly-torch's
        layout).
      bias: of shape ``out_shape``, or None.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import TCL
      >>> layer = TCL((8, 8, 16), (4, 4, 8), rngs=nnx.Rngs(0))
      >>> layer(jnp.ones((2, 8, 8, 16))).shape
      (2, 4, 4, 8)
      >>> [v.shape for v in layer.factors], layer.n_params
      ([(4, 8), (4, 8), (8, 16)], 192)
    """

    def __init__(self, in_shape, out_shape, *, use_bias: bool = False, dtype=None,
                 param_dtype=jnp.float32, precision: Precision = None, partitioning=None,
                 rngs: nnx.Rngs):
        in_shape, out_shape = _dims(in_shape, "in_shape"), _dims(out_shape, "out_shape")
        if len(in_shape) != len(out_shape):
            raise ValueError(f"out_shape = {out_shape} must have one size per mode of in_shape "
                             f"= {in_shape} ({len(in_shape)} modes).")
        self.in_shape, self.out_shape = in_shape, out_shape
        self.use_bias = bool(use_bias)
        self.dtype, self.param_dtype = dtype, param_dtype
        self.precision = resolve_precision(precision)
        shapes = tuple(zip(out_shape, in_shape))
        groups = [("factors", shapes)] + ([("bias", [out_shape])] if self.use_bias else [])
        specs = partition_specs(partitioning, groups)
        arrays = draw(params_key(rngs, "to draw TCL's factors"), shapes,
                      tuple(1.0 / i for i in in_shape), jnp.dtype(param_dtype))
        self.factors = nnx.List([param(a, sp) for a, sp in zip(arrays, specs["factors"])])
        self.bias = (_bias_param(out_shape, param_dtype, specs["bias"][0]) if self.use_bias
                     else no_bias())

    @property
    def n_params(self) -> int:
        """Number of trainable scalars: the factors plus the bias."""
        bias = math.prod(self.out_shape) if self.use_bias else 0
        return sum(o * i for o, i in zip(self.out_shape, self.in_shape)) + bias

    def flops(self, batch_size: int) -> int:
        """Forward FLOPs (2 × multiply-adds) of the mode products for ``batch_size`` samples,
        in the order the layer contracts them (bias left out)."""
        batch = check_positive_int(batch_size, "batch_size")
        order = _shrink_order(self.in_shape, self.out_shape)
        return _chain_flops(batch, self.in_shape, self.out_shape, order)[0]

    def dense_weight(self, *, precision: Precision = "highest") -> jax.Array:
        """The ``(∏ I_k, ∏ O_k)`` matrix ``(V_1 ⊗ ⋯ ⊗ V_N)ᵀ`` with ``Y.reshape(B, -1) =
        X.reshape(B, -1) @ W`` (row-major flattening): what an ``nnx.Linear`` on the flattened
        input would hold. Formed here only (for tests and inspection)."""
        del precision  # a Kronecker product multiplies, it does not sum
        return algebra.kronecker([v[...] for v in self.factors]).T

    def __call__(self, x: jax.Array) -> jax.Array:
        """``X ×_1 V_1 ⋯ ×_N V_N (+ b)`` for ``x`` of shape ``(..., *in_shape)``:
        ``(..., *out_shape)``."""
        x = _check_tensor_input(x, self.in_shape)
        factors = [v[...] for v in self.factors]
        bias = self.bias[...] if self.use_bias else None
        x, *factors, bias = promote_dtype((x, *factors, bias), dtype=self.dtype)
        n = len(self.in_shape)
        lead = x.shape[:x.ndim - n]
        batch = math.prod(lead)
        if batch == 0:
            y = jnp.zeros(lead + self.out_shape, x.dtype)
        else:
            t = x.reshape((batch,) + self.in_shape)
            for k in _shrink_order(self.in_shape, self.out_shape):
                t = algebra.mode_dot(t, factors[k], 1 + k, precision=self.precision)
            y = t.reshape(lead + self.out_shape)
        return y if bias is None else y + bias


# ---------------------------------------------------------------------------------------------
# TRL


def _trl_factors(kind, in_shape, out_features, rank):
    """``(groups, variances)``: the parameter groups ``[(name, shapes)]`` of a TRL and the
    variance of each array's entries, chosen so that ``W``'s entries have variance
    ``1 / ∏ I_k`` (``lecun_normal`` of the dense layer on the flattened input)."""
    n = len(in_shape)
    if kind == "cp":
        shapes = tuple((d, rank) for d in in_shape + (out_features,))
        return [("factors", shapes)], tuple(1.0 / i for i in in_shape) + (1.0 / rank,)
    if kind == "tucker":
        shapes = tuple(zip(in_shape + (out_features,), rank))
        variances = ((1.0 / math.prod(rank[:n]),) + tuple(1.0 / i for i in in_shape)
                     + (1.0 / rank[n],))
        return [("core", [tuple(rank)]), ("factors", shapes)], variances
    dims = in_shape + (out_features,)
    shapes = tuple((rank[k], d, rank[k + 1]) for k, d in enumerate(dims))
    variances = tuple(1.0 / (rank[k] * i) for k, i in enumerate(in_shape)) + (1.0 / rank[n],)
    return [("cores", shapes)], variances


class TRL(nnx.Module):
    """Tensor regression layer: ``y = ⟨X, W⟩_N + b``, the full contraction of the last ``N``
    axes of ``X`` with a low-rank weight tensor ``W`` of shape ``(I_1, ..., I_N, O)`` in
    Tucker, CP or TT form (Kossaifi et al., "Tensor Regression Networks", JMLR 2020; see the
    module docstring for the formats, the contraction order and its FLOPs).

    Args:
      in_shape: ``(I_1, ..., I_N)``, the trailing axes of the input.
      out_features: ``O``, the size of the output's last axis.
      kind: ``"tucker"`` (default), ``"cp"`` or ``"tt"``.
      rank: of ``W`` (shape ``in_shape + (out_features,)``), as in
        :class:`~tensorfact.nn.FactorizedDense`: an int (the CP rank; a common Tucker rank or a
        maximal TT rank, capped mode by mode at the lossless one), a tuple (Tucker: ``N + 1``
        ranks, the output mode's last; TT: ``(1, r_1, ..., r_N, 1)`` or the ``N`` inner ones), a
        float in ``(0, 1]`` (the largest rank whose factors hold at most that fraction of
        ``W``'s entries) or ``"full"``.
      use_bias: add a bias of shape ``(out_features,)`` (zeros at first).
      dtype, param_dtype, precision: as in ``nnx.Linear`` (``precision=None``: JAX's default;
        ``dtype=jnp.bfloat16`` computes in bfloat16 with float32 parameters).
      partitioning: optional sharding annotations, a mapping from parameter name
        (``"factors"``, ``"core"``, ``"cores"``, ``"bias"``, as the kind has them) to a spec,
        as in :class:`~tensorfact.nn.FactorizedDense`.
      rngs: ``nnx.Rngs`` with a ``params`` (or ``default``) stream.

    Each factor is drawn from a normal truncated at ``±2σ`` with the variance that gives
    ``W``'s entries variance ``1 / ∏ I_k`` (``lecun_normal``): CP ``A_k``: ``1/I_k``, ``A_O``:
    ``1/R``; Tucker ``U_k``: ``1/I_k``, core: ``1/∏ r_k``, ``U_O``: ``1/r_O``; TT core ``k``:
    ``1/(r_{k-1} I_k)``, output core ``1/r_N``.

    Raises:
      ValueError: a bad ``in_shape``, ``out_features``, ``kind`` or ``rank`` (non-positive,
        too many or too few, above the lossless rank); an input whose trailing axes are not
        ``in_shape`` (naming ``x``); a bad ``partitioning``.

    Attributes:
      factors: the ``nnx.Param`` factors: cp ``(I_k, R)`` then ``(O, R)``; tucker
        ``(I_k, r_k)`` then ``(O, r_O)``.
      core: the Tucker core ``(r_1, ..., r_N, r_O)``, an ``nnx.Param`` (tucker only).
      cores: the ``nnx.Param`` cores of a tt layer, ``(r_{k-1}, I_k, r_k)`` then
        ``(r_N, O, 1)``.

    ``weight`` is ``W`` as the library's type (:class:`~tensorfact.CPTensor`,
    :class:`~tensorfact.TuckerTensor`, :class:`~tensorfact.TTTensor`), ``dense_weight()`` the
    formed ``W``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import TRL
      >>> trl = TRL((8, 8, 16), 10, rank=4, rngs=nnx.Rngs(0))
      >>> trl.rank, trl(jnp.ones((2, 8, 8, 16))).shape
      ((4, 4, 4, 4), (2, 10))
      >>> trl.n_params, 8 * 8 * 16 * 10 + 10
      (434, 10250)
      >>> cp = TRL((8, 8, 16), 10, kind="cp", rank=6, rngs=nnx.Rngs(0))
      >>> cp.dense_weight().shape
      (8, 8, 16, 10)
    """

    def __init__(self, in_shape, out_features: int, *, kind: TensorKind = "tucker", rank,
                 use_bias: bool = True, dtype=None, param_dtype=jnp.float32,
                 precision: Precision = None, partitioning=None, rngs: nnx.Rngs):
        in_shape = _dims(in_shape, "in_shape")
        out_features = check_positive_int(out_features, "out_features")
        kind = check_choice(kind, TensorKind, "kind")
        if kind == "tt":   # a TT tensor is a TT-matrix whose column factors are all 1
            dims = in_shape + (out_features,)
            try:
                rank = resolve_rank("tt", rank, dims, (1,) * len(dims))
            except ValueError as err:
                raise ValueError(str(err).replace(f"of the TT-matrix {dims + (1,) * len(dims)}",
                                                  f"of W = {dims} in TT form")) from None
        else:
            rank = resolve_rank(kind, rank, in_shape, (out_features,))
        self.in_shape, self.out_features, self.kind, self.rank = (in_shape, out_features, kind,
                                                                  rank)
        self.use_bias = bool(use_bias)
        self.dtype, self.param_dtype = dtype, param_dtype
        self.precision = resolve_precision(precision)
        groups, variances = _trl_factors(kind, in_shape, out_features, rank)
        groups += [("bias", [(out_features,)])] if self.use_bias else []
        specs = partition_specs(partitioning, groups)
        shapes = tuple(s for name, shp in groups if name != "bias" for s in shp)
        arrays = draw(params_key(rngs, "to draw TRL's factors"), shapes, variances,
                      jnp.dtype(param_dtype))
        flat_specs = [sp for name, _ in groups if name != "bias" for sp in specs[name]]
        params = [param(a, sp) for a, sp in zip(arrays, flat_specs)]
        if kind == "cp":
            self.factors = nnx.List(params)
        elif kind == "tucker":
            self.core, self.factors = params[0], nnx.List(params[1:])
        else:
            self.cores = nnx.List(params)
        self.bias = (_bias_param((out_features,), param_dtype, specs["bias"][0])
                     if self.use_bias else no_bias())

    def _param_vars(self):
        if self.kind == "cp":
            return list(self.factors)
        if self.kind == "tucker":
            return [self.core] + list(self.factors)
        return list(self.cores)

    def _build(self, arrays):
        if self.kind == "cp":
            return CPTensor(None, arrays)
        if self.kind == "tucker":
            return TuckerTensor(arrays[0], arrays[1:])
        return TTTensor(arrays)

    @property
    def weight(self):
        """``W`` as a ``CPTensor``, ``TuckerTensor`` or ``TTTensor`` of shape
        ``in_shape + (out_features,)``."""
        return self._build([v[...] for v in self._param_vars()])

    @property
    def n_params(self) -> int:
        """Number of trainable scalars: the factors plus the bias."""
        bias = self.out_features if self.use_bias else 0
        return sum(int(v[...].size) for v in self._param_vars()) + bias

    def dense_weight(self, *, precision: Precision = "highest") -> jax.Array:
        """``W``, formed: shape ``in_shape + (out_features,)``, at ``precision`` (default
        ``"highest"``). The forward never forms it."""
        return self.weight.to_dense(precision=resolve_precision(precision))

    def to_layer(self) -> nnx.Linear:
        """An ``nnx.Linear`` on the flattened input (``x.reshape(B, -1)``, row-major) holding
        ``W.reshape(∏ I_k, O)`` and the bias."""
        n_in = math.prod(self.in_shape)
        layer = nnx.Linear(n_in, self.out_features, use_bias=self.use_bias, dtype=self.dtype,
                           param_dtype=self.param_dtype, precision=self.precision,
                           kernel_init=nnx.initializers.zeros_init(), rngs=nnx.Rngs(0))
        layer.kernel[...] = self.dense_weight().reshape(n_in, -1).astype(layer.kernel.dtype)
        if self.use_bias:
            layer.bias[...] = self.bias[...]
        return layer

    def flops(self, batch_size: int) -> int:
        """Forward FLOPs (2 × multiply-adds) of the factorized contraction for ``batch_size``
        samples (leading terms as in the module docstring; the bias left out)."""
        batch = check_positive_int(batch_size, "batch_size")
        n, o, r = len(self.in_shape), self.out_features, self.rank
        if self.kind == "tucker":
            order = _shrink_order(self.in_shape, r[:n])
            total, size = _chain_flops(batch, self.in_shape, r[:n], order)
            return total + 2 * size * r[n] + 2 * batch * r[n] * o
        if self.kind == "cp":
            order = sorted(range(n), key=lambda k: -self.in_shape[k])
            size = batch * math.prod(self.in_shape)
            total = 2 * size * r
            size = size // self.in_shape[order[0]] * r
            for k in order[1:]:
                total += 2 * size
                size //= self.in_shape[k]
            return total + 2 * batch * r * o
        total = sum(2 * batch * r[k] * r[k + 1] * math.prod(self.in_shape[k:]) for k in range(n))
        return total + 2 * batch * r[n] * o

    def __call__(self, x: jax.Array) -> jax.Array:
        """``⟨X, W⟩_N + b`` for ``x`` of shape ``(..., *in_shape)``: ``(..., out_features)``."""
        x = _check_tensor_input(x, self.in_shape)
        bias = self.bias[...] if self.use_bias else None
        x, *arrays, bias = promote_dtype((x, *[v[...] for v in self._param_vars()], bias),
                                         dtype=self.dtype)
        n = len(self.in_shape)
        lead = x.shape[:x.ndim - n]
        batch = math.prod(lead)
        if batch == 0:
            y = jnp.zeros((0, self.out_features), x.dtype)
        else:
            y = self._contract(x.reshape((batch,) + self.in_shape), arrays)
        y = y.reshape(lead + (self.out_features,))
        return y if bias is None else y + bias

    def _contract(self, x, arrays):
        """``(B, out_features)`` from ``x`` of shape ``(B, *in_shape)``, input modes first."""
        prec, n, batch = self.precision, len(self.in_shape), x.shape[0]
        if self.kind == "tucker":
            core, factors = arrays[0], arrays[1:]
            t = x
            for k in _shrink_order(self.in_shape, self.rank[:n]):      # X ×_k U_kᵀ
                t = algebra.mode_dot(t, factors[k], 1 + k, transpose=True, precision=prec)
            r_in = math.prod(self.rank[:n])
            t = jnp.matmul(t.reshape(batch, r_in), core.reshape(r_in, -1), precision=prec)
            return jnp.matmul(t, factors[n].T, precision=prec)
        if self.kind == "cp":
            # einsum labels: "b" the batch, "z" the CP rank, one letter per input mode
            letters = "acdefghijklmnopqrstuvwxy"
            if n > len(letters):
                raise ValueError(f"TRL(kind='cp') contracts at most {len(letters)} modes, got "
                                 f"in_shape = {self.in_shape}.")
            labels = ["b"] + list(letters[:n])
            t = x
            for k in sorted(range(n), key=lambda k: -self.in_shape[k]):  # largest mode first
                out = [a for a in labels if a != letters[k]]
                out = out if "z" in out else out + ["z"]
                t = jnp.einsum(f"{''.join(labels)},{letters[k]}z->{''.join(out)}", t,
                               arrays[k], precision=prec)
                labels = out
            return jnp.matmul(t, arrays[n].T, precision=prec)            # (B, R) · A_Oᵀ
        cores = arrays
        t = jnp.tensordot(x, cores[0][0], axes=(1, 0), precision=prec)   # (B, I_2.., r_1)
        for g in cores[1:n]:
            t = jnp.tensordot(t, g, axes=((1, t.ndim - 1), (1, 0)), precision=prec)
        return jnp.matmul(t, cores[n][..., 0], precision=prec)          # (B, r_N) · G_O


# ---------------------------------------------------------------------------------------------
# FactorizedEmbed


def _embed_factors(kind, in_shape, out_shape, rank):
    """``(groups, variances)`` of a FactorizedEmbed: entries of the table with variance
    ``1 / features``, as Flax's default ``nnx.Embed``."""
    p = len(in_shape)
    if kind == "cp":
        shapes = tuple((d, rank) for d in in_shape + out_shape)
        variances = (rank ** (-1.0 / p),) * p + tuple(1.0 / o for o in out_shape)
        return [("factors", shapes)], variances
    if kind == "tucker":
        shapes = tuple(zip(in_shape + out_shape, rank))
        variances = ((1.0 / math.prod(rank[p:]),) + tuple(1.0 / r for r in rank[:p])
                     + tuple(1.0 / o for o in out_shape))
        return [("core", [tuple(rank)]), ("factors", shapes)], variances
    shapes = tt_core_shapes(in_shape, out_shape, rank)
    return [("cores", shapes)], tuple(1.0 / (rank[k] * s[2]) for k, s in enumerate(shapes))


class FactorizedEmbed(nnx.Module):
    """An embedding table held in CP, Tucker or TT form; ``layer(ids)`` returns
    ``ids.shape + (features,)`` without forming the table (tensorly-torch's
    ``FactorizedEmbedding``; see the module docstring for the formats and the lookup).

    Args:
      num_embeddings, features: the table's shape ``(num_embeddings, features)``.
      kind: ``"cp"`` (default), ``"tucker"`` or ``"tt"`` (the TT-matrix of
        :class:`~tensorfact.nn.TTEmbed`, looked up by the same engine).
      rank: of the ``2N``-way tensor ``in_shape + out_shape`` (TT: of the TT-matrix), as in
        :class:`~tensorfact.nn.FactorizedDense`: an int, a tuple (Tucker, TT), a float in
        ``(0, 1]`` (fraction of the table's entries) or ``"full"``.
      in_shape, out_shape: the factorisations of ``num_embeddings`` and ``features`` (exact
        products); by default :func:`~tensorfact.nn.balanced_factors` with 2 factors (cp,
        tucker) or 3 (tt), as :class:`~tensorfact.nn.TTEmbed`.
      dtype: the dtype of the lookup (None: the parameters'); param_dtype: the factors'.
      precision: of the contractions (None: JAX's default).
      partitioning: optional sharding annotations ``{"factors": ..., "core": ..., "cores":
        ...}`` (as the kind has them), as in :class:`~tensorfact.nn.FactorizedDense`.
      rngs: ``nnx.Rngs`` with a ``params`` (or ``default``) stream.

    Initialisation: plain normals whose product has variance ``1 / features`` per table entry
    (that of Flax's default ``nnx.Embed``): CP input factors ``R^{-1/N}``, output factors
    ``1/o_l``; Tucker input factors ``1/r_k``, core ``1/∏ s_l``, output factors ``1/o_l``; TT
    as :class:`~tensorfact.nn.TTEmbed`.

    Ids of any integer dtype are taken; ids outside ``[0, num_embeddings)`` give rows of NaN,
    as ``nnx.Embed`` does (checked on the values, so under ``jit`` too).

    Raises:
      ValueError: a bad ``num_embeddings``, ``features``, ``kind``, ``rank``, ``in_shape`` or
        ``out_shape`` (product not the size), a bad ``partitioning``; TypeError: ids that are
        not integers.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import FactorizedEmbed
      >>> emb = FactorizedEmbed(1000, 64, kind="cp", rank=16, rngs=nnx.Rngs(0))
      >>> emb.in_shape, emb.out_shape
      ((40, 25), (8, 8))
      >>> emb(jnp.array([[1, 2, 3], [4, 5, 999]])).shape
      (2, 3, 64)
      >>> emb.n_params, 1000 * 64
      (1296, 64000)
      >>> rows = emb(jnp.array([7, 42]))
      >>> bool(jnp.allclose(rows, emb.to_layer()(jnp.array([7, 42])), atol=1e-6))
      True
    """

    def __init__(self, num_embeddings: int, features: int, *, kind: TensorKind = "cp", rank,
                 in_shape=None, out_shape=None, dtype=None, param_dtype=jnp.float32,
                 precision: Precision = None, partitioning=None, rngs: nnx.Rngs):
        num_embeddings = check_positive_int(num_embeddings, "num_embeddings")
        features = check_positive_int(features, "features")
        kind = check_choice(kind, TensorKind, "kind")
        in_shape, out_shape = tensorize(kind, num_embeddings, features, in_shape, out_shape,
                                        names=("num_embeddings", "features"))
        rank = resolve_rank(kind, rank, in_shape, out_shape)
        self.num_embeddings, self.features, self.kind = num_embeddings, features, kind
        self.in_shape, self.out_shape, self.rank = in_shape, out_shape, rank
        self.dtype, self.param_dtype = dtype, param_dtype
        self.precision = resolve_precision(precision)
        groups, variances = _embed_factors(kind, in_shape, out_shape, rank)
        specs = partition_specs(partitioning, groups)
        shapes = tuple(s for _, shp in groups for s in shp)
        arrays = draw(params_key(rngs, "to draw FactorizedEmbed's factors"), shapes, variances,
                      jnp.dtype(param_dtype), truncated=False)
        self._shapes = shapes
        self._specs = tuple(sp for name, _ in groups for sp in specs[name])
        self._set_factors(arrays)

    def _set_factors(self, arrays):
        """Holds ``arrays`` (in :meth:`_param_vars` order) as the parameters, with their
        sharding annotations."""
        params = [param(jnp.asarray(a, self.param_dtype).reshape(shp), sp)
                  for a, shp, sp in zip(arrays, self._shapes, self._specs)]
        if self.kind == "cp":
            self.factors = nnx.List(params)
        elif self.kind == "tucker":
            self.core, self.factors = params[0], nnx.List(params[1:])
        else:
            self.cores = nnx.List(params)

    def _param_vars(self):
        if self.kind == "cp":
            return list(self.factors)
        if self.kind == "tucker":
            return [self.core] + list(self.factors)
        return list(self.cores)

    @property
    def weight(self):
        """The table as the library's type: a ``CPTensor`` or ``TuckerTensor`` of shape
        ``in_shape + out_shape``, or a ``TTMatrix`` of shape ``(num_embeddings, features)``."""
        arrays = [v[...] for v in self._param_vars()]
        if self.kind == "cp":
            return CPTensor(None, arrays)
        if self.kind == "tucker":
            return TuckerTensor(arrays[0], arrays[1:])
        return TTMatrix(arrays)

    @property
    def n_params(self) -> int:
        """Number of trainable scalars (the factors)."""
        return sum(int(v[...].size) for v in self._param_vars())

    def dense_weight(self, *, precision: Precision = "highest") -> jax.Array:
        """The ``(num_embeddings, features)`` table, formed (for export or inspection), at
        ``precision`` (default ``"highest"``)."""
        dense = self.weight.to_dense(precision=resolve_precision(precision))
        return dense.reshape(self.num_embeddings, self.features)

    def to_layer(self) -> nnx.Embed:
        """An ``nnx.Embed`` holding the formed table (:meth:`dense_weight`)."""
        return embed_holding(self.dense_weight(), self)

    def _arrays(self):
        return promote_dtype(tuple(v[...] for v in self._param_vars()), dtype=self.dtype)

    def _rows(self, ids, arrays):
        """``(B, features)``: the rows at the valid flat ``ids`` of shape ``(B,)``."""
        prec, p = self.precision, len(self.in_shape)
        if self.kind == "tt":
            return tt_rows(ids, arrays, self.in_shape, prec)
        digits = id_digits(ids, self.in_shape)
        if self.kind == "cp":
            z = math.prod(jnp.take(a, d, axis=0) for a, d in zip(arrays[:p], digits))  # (B, R)
            return jnp.matmul(z, algebra.khatri_rao(arrays[p:]).T, precision=prec)
        core, factors = arrays[0], arrays[1:]
        batch = ids.shape[0]
        z = None
        for u, d in zip(factors[:p], digits):          # the row-wise Kronecker product
            row = jnp.take(u, d, axis=0)               # (B, r_k)
            z = row if z is None else (z[:, :, None] * row[:, None, :]).reshape(batch, -1)
        r_in = math.prod(self.rank[:p])
        t = jnp.matmul(z, core.reshape(r_in, -1), precision=prec)
        t = t.reshape((batch,) + tuple(self.rank[p:]))
        for k in _shrink_order(self.rank[p:], self.out_shape):   # smallest growth first
            t = algebra.mode_dot(t, factors[p + k], 1 + k, precision=prec)
        return t.reshape(batch, self.features)

    def __call__(self, ids: jax.Array) -> jax.Array:
        """The rows of the table at the integer ``ids`` (any shape and integer dtype):
        ``ids.shape + (features,)``."""
        ids = jnp.asarray(ids)
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(f"ids must be an integer array, got dtype {ids.dtype}.")
        arrays = self._arrays()
        flat = ids.reshape(-1)
        if flat.shape[0] == 0:
            out = jnp.zeros((0, self.features), arrays[0].dtype)
        else:
            valid, flat = valid_ids(flat, self.num_embeddings)
            out = self._rows(flat, arrays)
            out = jnp.where(valid[:, None], out, jnp.nan)
        return out.reshape(ids.shape + (self.features,))

    def attend(self, query: jax.Array) -> jax.Array:
        """``query @ Eᵀ`` over the last axis (as ``nnx.Embed.attend``, e.g. tied output
        logits): ``query.shape[:-1] + (num_embeddings,)``. Contracts ``query`` with the output
        factors first, then expands over the input factors; the table is not formed."""
        query = jnp.asarray(query)
        if query.ndim < 1 or query.shape[-1] != self.features:
            raise ValueError(f"query must have shape (..., {self.features}), got "
                             f"{tuple(query.shape)}.")
        query, *arrays = promote_dtype((query, *(v[...] for v in self._param_vars())),
                                       dtype=self.dtype)
        lead, prec, p = query.shape[:-1], self.precision, len(self.in_shape)
        q = query.reshape(-1, self.features)
        batch = q.shape[0]
        if batch == 0:
            out = jnp.zeros((0, self.num_embeddings), q.dtype)
        elif self.kind == "cp":
            t = jnp.matmul(q, algebra.khatri_rao(arrays[p:]), precision=prec)       # (B, R)
            out = jnp.matmul(t, algebra.khatri_rao(arrays[:p]).T, precision=prec)
        elif self.kind == "tucker":
            core, factors = arrays[0], arrays[1:]
            t = q.reshape((batch,) + self.out_shape)
            for k in _shrink_order(self.out_shape, self.rank[p:]):
                t = algebra.mode_dot(t, factors[p + k], 1 + k, transpose=True, precision=prec)
            r_in = math.prod(self.rank[:p])
            t = jnp.matmul(t.reshape(batch, -1), core.reshape(r_in, -1).T, precision=prec)
            t = t.reshape((batch,) + tuple(self.rank[:p]))
            for k in _shrink_order(self.rank[:p], self.in_shape):
                t = algebra.mode_dot(t, factors[k], 1 + k, precision=prec)
            out = t.reshape(batch, self.num_embeddings)
        else:   # Eᵀ is the TT-matrix with each core's two middle axes swapped
            out = tt_apply(q, [g.transpose(0, 2, 1, 3) for g in arrays], prec, "auto")
        return out.reshape(lead + (self.num_embeddings,))

    @classmethod
    def from_layer(cls, layer, *, kind: TensorKind = "cp", rank, in_shape=None, out_shape=None,
                   dtype=None, param_dtype=None, precision: Precision = None, key=None,
                   partitioning=None, **fit_kwargs):
        """A factorized embedding fitted to a table (tensorly-torch's
        ``FactorizedEmbedding.from_embedding``): CP-ALS (:func:`tensorfact.cp`, the weights
        spread evenly over the factors), HOOI (:func:`tensorfact.tucker`) or TT-SVD
        (:func:`tensorfact.tt_matrix`) of the ``in_shape + out_shape`` tensor. Exact up to
        rounding at ``rank="full"`` (CP through one rank-one term per fibre of the largest
        mode).

        Args:
          layer: an ``nnx.Embed`` (its table and dtype are used) or a
            ``(num_embeddings, features)`` array, finite.
          kind, rank, in_shape, out_shape, dtype, precision, partitioning: as in the
            constructor.
          param_dtype: the factors' dtype; by default the table's.
          key: ``jax.random`` key for a fit that draws (CP with a rank above a mode, a random
            init).
          **fit_kwargs: passed to the decomposition (``n_iter``, ``tol``, ...).

        Example:
          >>> import jax.numpy as jnp
          >>> from flax import nnx
          >>> from tensorfact.nn import FactorizedEmbed
          >>> dense = nnx.Embed(60, 12, rngs=nnx.Rngs(0))
          >>> emb = FactorizedEmbed.from_layer(dense, kind="tucker", rank="full")
          >>> ids = jnp.array([0, 7, 59])
          >>> bool(jnp.allclose(emb(ids), dense(ids), atol=1e-5))
          True
        """
        kind = check_choice(kind, TensorKind, "kind")
        if key is not None:
            key = check_key(key, f"by FactorizedEmbed.from_layer (kind {kind!r})")
        table, embed = weight_of(layer, nnx.Embed, "embedding")
        if embed is not None and dtype is None:
            dtype = embed.dtype
        num_embeddings, features = table.shape
        in_shape, out_shape = tensorize(kind, num_embeddings, features, in_shape, out_shape,
                                        names=("num_embeddings", "features"))
        resolved = resolve_rank(kind, rank, in_shape, out_shape)
        if kind == "tt":
            arrays = list(tt_matrix(table, in_shape, out_shape, resolved, **fit_kwargs).cores)
        else:
            tensor = table.reshape(in_shape + out_shape)
            if kind == "tucker":
                core, factors = tucker(tensor, resolved, key=key, **fit_kwargs)
                arrays = [core] + list(factors)
            elif isinstance(rank, str) and rank == "full":
                arrays = cp_fibres(tensor)
            else:
                weights, factors = cp(tensor, resolved, key=key, **fit_kwargs)
                arrays = spread_cp(weights, factors)
        param_dtype = table.dtype if param_dtype is None else param_dtype
        # the layer's structure without drawing (nnx.eval_shape), then the fitted factors
        out = nnx.eval_shape(lambda: cls(
            num_embeddings, features, kind=kind, rank=resolved, in_shape=in_shape,
            out_shape=out_shape, dtype=dtype, param_dtype=param_dtype, precision=precision,
            partitioning=partitioning, rngs=nnx.Rngs(0)))
        out._set_factors(arrays)
        return out
