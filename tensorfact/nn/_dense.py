"""Factorized dense layers for Flax NNX: ``y = x W + b`` with the kernel ``W`` held as factors.

A :class:`FactorizedDense` layer replaces the ``(in_features, out_features)`` kernel of an
``nnx.Linear`` by one of four formats. For ``cp``, ``tucker`` and ``tt`` the kernel is first
*tensorized*: ``in_features = ∏ I_k`` and ``out_features = ∏ J_l`` (``in_shape`` and
``out_shape``, row-major, the first factor slowest), and ``W`` is viewed as the tensor
``W[i_1, ..., i_p, j_1, ..., j_q]`` of shape ``in_shape + out_shape`` (Novikov, Podoprikhin,
Osokin & Vetrov, "Tensorizing Neural Networks", NeurIPS 2015).

* ``"lowrank"``: ``W = U Vᵀ`` with ``U`` of shape ``(in, r)`` and ``Vᵀ`` of ``(r, out)``
  (a :class:`~tensorfact.tensors.LowRankMatrix` with unit ``s``; Denil et al., "Predicting
  Parameters in Deep Learning", NeurIPS 2013; Sainath et al., ICASSP 2013).
* ``"cp"``: ``W = Σ_r ∏_k A_k[i_k, r] ∏_l B_l[j_l, r]`` (a :class:`~tensorfact.tensors.CPTensor`
  without weights; Lebedev et al., "Speeding-up Convolutional Neural Networks Using Fine-tuned
  CP-Decomposition", ICLR 2015).
* ``"tucker"``: ``W = G ×_k U_k ×_l V_l`` with a core ``G`` of shape ``(r_1, ..., r_p, s_1, ...,
  s_q)`` (a :class:`~tensorfact.tensors.TuckerTensor`; Kim et al., "Compression of Deep
  Convolutional Neural Networks for Fast and Low Power Mobile Applications", ICLR 2016).
* ``"tt"``: a :class:`~tensorfact.tensors.TTMatrix` with cores ``(r_{k-1}, I_k, J_k, r_k)``
  (Novikov et al. 2015). Input and output factors are paired; given shapes of different
  lengths get the shorter padded with trailing 1s (``(4, 6)`` and ``(2, 2, 5)`` become
  ``(4, 6, 1)`` and ``(2, 2, 5)``).

**Default tensorization.** With ``in_shape=None`` the integer ``in_features`` is split into
``order`` factors (2 for ``cp``/``tucker``, 3 for ``tt``) by :func:`balanced_factors`: among all
factorizations the one whose largest factor is smallest (then the next largest, ...), in
decreasing order, e.g. ``768 → (32, 24)``, ``4096 → (16, 16, 16)``. A prime gives ``(p, 1)``:
such a layer gains nothing from the tensor formats.

**Ranks.** ``rank`` is an int (the format's rank: the matrix rank, the CP rank, a common
Tucker rank or a maximal TT rank; the Tucker and TT ranks are capped mode by mode at their
lossless values), a tuple (Tucker: one rank per mode of ``in_shape + out_shape``; TT: the full
rank vector ``(1, r_1, ..., r_{d-1}, 1)``), a float in ``(0, 1]`` (the largest rank whose factors
hold at most that fraction of the ``in·out`` dense parameters, at least 1; the bias is not
counted) or ``"full"`` (lossless: ``min(in, out)``; the CP rank ``∏ dims / max dims``, which can
represent any tensor; the Tucker ranks ``min(I_k, ∏_{m≠k} I_m)``; the TT ranks
``min(∏_{j≤k} I_j J_j, ∏_{j>k} I_j J_j)``).

**Initialisation.** Every factor is drawn from a zero-mean normal truncated at two standard
deviations and rescaled to the variance ``1 / fan-in`` of the step it performs in the forward
contraction (``U``: ``1/in``, ``Vᵀ``: ``1/r``; CP: ``A_k``: ``1/I_k``, each ``B_l``:
``R^{-1/q}``; Tucker: ``U_k``: ``1/I_k``, core: ``1/∏ r_k``, ``V_l``: ``1/s_l``; TT core ``k``:
``1/(r_{k-1} I_k)``). Because the reconstructed entry is a sum of products of independent
zero-mean factors, its variance is the number of terms times the product of the factor
variances, which these choices make exactly ``1/in_features``: the variance of Flax's default
``nnx.Linear`` kernel (``lecun_normal``). For example ``Var(Σ_r U_ir V_jr) = r · (1/in) · (1/r)``.

**Forward.** ``contraction="factorized"`` contracts ``x`` with the factors and never forms
``W``; ``"dense"`` forms ``W`` and multiplies; ``"auto"`` (default) counts the FLOPs of
both at trace time (the batch size is static) and takes the cheaper. For ``B`` rows
(``2 ×`` multiply-adds, leading terms, see :meth:`FactorizedDense.flops`):

* lowrank: ``2B r (in + out)`` against ``2 in·r·out + 2B in·out``;
* cp: ``2B R (in + out) + R (in + out)`` (the Khatri–Rao products of the input and of the output
  factors, then two matmuls) against ``2 in·R·out + 2B in·out``;
* tucker: ``x`` is projected one input mode at a time (largest shrink ``I_k / r_k`` first),
  ``2 · size · r_k`` per step, then ``2B ∏r ∏s`` for the core and ``2 · size · J_l`` per output
  mode (smallest growth first); against the same chain on the core alone plus ``2B in·out``;
* tt: ``Σ_k 2B r_{k-1} r_k (I_k ⋯ I_d)(J_1 ⋯ J_k)`` against the core chain plus ``2B in·out``;
  the TT chain is taken only where it needs at most half the dense path's FLOPs: its
  contractions transpose and reshape the activation at every core, and measured on a 2-core CPU
  (1024², cores of rank 16 on a (32, 32) split, batch 128: 0.89 of the dense FLOPs) it ran
  1.7× slower forward and forward + backward than forming ``W`` and multiplying
  (``benchmarks/RESULTS.md``).

Forward FLOPs only: training also runs the backward pass, which roughly doubles both sides.
As in ``nnx.Linear``, ``precision=None`` and ``dtype=None`` keep JAX's defaults (TF32 passes
for float32 matmuls on recent GPUs); pass ``precision="highest"`` for full float32. The forward
(both contractions) runs at the layer's ``precision``; what leaves the layer
(:meth:`~FactorizedDense.dense_weight`, :meth:`~FactorizedDense.to_layer`) is rebuilt at
``"highest"`` by default, so an exported ``nnx.Linear`` holds the factors' product to float32
accuracy whatever the training precision.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype

from tensorfact import algebra
from tensorfact._checks import Impl, Precision, check_choice, check_key, check_positive_int
from tensorfact._numerics import resolve_precision
from tensorfact.decomposition import cp, svd, tt_matrix, tucker
from tensorfact.nn._common import (Contraction, Kind, balanced_factors, check_input, cp_fibres,
                                   dense_source,
                                   draw, no_bias, params_key, resolve_rank, spread_cp,
                                   tensorize, tt_apply, tt_core_shapes)
from tensorfact.nn._base import FactorizedLayer
from tensorfact.nn._partitioning import param, partition_specs
from tensorfact.tensors import CPTensor, LowRankMatrix, TTMatrix, TuckerTensor

__all__ = ["FactorizedDense", "balanced_factors"]


# ---------------------------------------------------------------------------------------------
# FLOP counts (forward, 2 × multiply-adds)


def _tucker_orders(in_shape, out_shape, rank):
    p = len(in_shape)
    in_order = sorted(range(p), key=lambda k: -in_shape[k] / rank[k])
    out_order = sorted(range(len(out_shape)), key=lambda k: out_shape[k] / rank[p + k])
    return in_order, out_order


def flops(kind, in_shape, out_shape, rank, batch):
    """``(factorized, dense)``: the forward FLOPs of the two contractions for ``batch`` rows
    (the formulas in the module docstring)."""
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    dense_apply = 2 * batch * n_in * n_out
    if kind == "lowrank":
        return 2 * batch * rank * (n_in + n_out), 2 * n_in * rank * n_out + dense_apply
    if kind == "cp":
        build = rank * (n_in * (len(in_shape) > 1) + n_out * (len(out_shape) > 1))
        return (2 * batch * rank * (n_in + n_out) + build,
                2 * n_in * rank * n_out + build + dense_apply)
    if kind == "tucker":
        p = len(in_shape)
        in_order, out_order = _tucker_orders(in_shape, out_shape, rank)
        r_in, r_out = math.prod(rank[:p]), math.prod(rank[p:])
        size, fact = batch * n_in, 0
        for k in in_order:
            fact += 2 * size * rank[k]
            size = size // in_shape[k] * rank[k]
        fact += 2 * batch * r_in * r_out
        size = batch * r_out
        for k in out_order:
            fact += 2 * size * out_shape[k]
            size = size // rank[p + k] * out_shape[k]
        dims = in_shape + out_shape
        size, recon = math.prod(rank), 0
        for k in sorted(range(len(dims)), key=lambda k: dims[k] / rank[k]):
            recon += 2 * size * dims[k]
            size = size // rank[k] * dims[k]
        return fact, recon + dense_apply
    d = len(in_shape)
    fact = sum(2 * batch * rank[k] * rank[k + 1] * math.prod(in_shape[k:])
               * math.prod(out_shape[:k + 1]) for k in range(d))
    merged = [m * n for m, n in zip(in_shape, out_shape)]
    recon = sum(2 * math.prod(merged[:k]) * rank[k] * merged[k] * rank[k + 1]
                for k in range(1, d))
    return fact, recon + dense_apply


# ---------------------------------------------------------------------------------------------
# the layer


def _factor_specs(kind, in_features, out_features, in_shape, out_shape, rank):
    """Shapes of the factors (in ``_param_vars`` order) and the variance of each entry: ``1 /``
    the fan-in of the factor's step in the forward chain (see the module docstring)."""
    if kind == "lowrank":
        return ((in_features, rank), (rank, out_features)), (1.0 / in_features, 1.0 / rank)
    if kind == "cp":
        q = len(out_shape)
        shapes = tuple((d, rank) for d in in_shape + out_shape)
        variances = tuple(1.0 / i for i in in_shape) + (rank ** (-1.0 / q),) * q
        return shapes, variances
    if kind == "tucker":
        p = len(in_shape)
        shapes = (tuple(rank),) + tuple(zip(in_shape + out_shape, rank))
        variances = ((1.0 / math.prod(rank[:p]),) + tuple(1.0 / i for i in in_shape)
                     + tuple(1.0 / s for s in rank[p:]))
        return shapes, variances
    return (tt_core_shapes(in_shape, out_shape, rank),
            tuple(1.0 / (rank[k] * m) for k, m in enumerate(in_shape)))


def _mode_contract(t, axis, matrix, contract_axis, precision):
    """Contracts ``t``'s ``axis`` with ``matrix``'s ``contract_axis``; the new index takes its
    place."""
    out = jnp.tensordot(t, matrix, axes=(axis, contract_axis), precision=precision)
    return jnp.moveaxis(out, -1, axis)


class FactorizedDense(FactorizedLayer):
    """A dense layer ``y = x W + b`` whose ``(in_features, out_features)`` kernel ``W`` is held
    in a factorized format (see the module docstring for the formats, ranks, initialisation
    and the FLOP model of ``contraction="auto"``).

    Args:
      in_features, out_features: sizes of the input's last axis and of the output's.
      kind: ``"lowrank"`` (default), ``"cp"``, ``"tucker"`` or ``"tt"``.
      rank: an int, a tuple (Tucker, TT), a float in ``(0, 1]`` (fraction of the dense
        parameter count) or ``"full"``.
      in_shape, out_shape: the tensorization of ``in_features`` and ``out_features`` for the
        tensor kinds (products must match); by default :func:`balanced_factors`. For ``"tt"``
        the shorter is padded with trailing 1s.
      use_bias: add a bias (zeros by default, as in ``nnx.Linear``).
      contraction: ``"auto"`` (default), ``"factorized"`` or ``"dense"``: whether the forward
        contracts ``x`` with the factors or with the rebuilt ``W`` (``"auto"``: fewer FLOPs).
      dtype, param_dtype, precision, bias_init: as in ``nnx.Linear`` (``precision=None``:
        JAX's default).
      rngs: ``nnx.Rngs``: one ``params`` key for the factors (drawn together, in one compiled
        program per configuration) and one for the bias.
      partitioning: optional sharding annotations, a mapping from parameter name (``"u"``,
        ``"vt"``, ``"factors"``, ``"core"``, ``"cores"``, ``"bias"``, as the layer has them) to
        a :class:`jax.sharding.PartitionSpec` or tuple of mesh axis names, one entry per axis
        of the parameter (None: not split). A spec applies to every array of a list-valued
        parameter; a ``list`` gives one spec per array. The spec becomes Flax's
        ``out_sharding`` Variable metadata: created under ``jax.set_mesh(mesh)``, the
        parameters are placed at once (Flax's eager sharding), and ``nnx.get_partition_spec``
        reads the specs back (e.g. to shard a model initialised inside ``nnx.jit``; outside a
        mesh, Flax needs ``nnx.use_eager_sharding(False)``). Parameters left out are
        replicated. Checked against the current mesh (axis names, even splits). Use a mesh
        with ``Auto`` axes (:func:`tensorfact.sharding.make_mesh`): the factorized contractions
        leave the layout of their outputs to the SPMD partitioner, which ``Explicit`` axes
        refuse when a contracted axis is split.
      impl: ``"auto"`` (default), ``"pallas"`` or ``"xla"``: the kernel switch, *which code*
        runs the factorized TT chain (:func:`tensorfact.kernels.tt_chain_matmul`: the fused
        Pallas kernel, interpreted off GPUs, or XLA's einsums; ``"auto"`` takes the kernel on a
        GPU when it fits on chip, XLA elsewhere). ``contraction`` decides *whether* the layer
        contracts the factors or rebuilds ``W``; ``impl`` only matters when a ``kind="tt"``
        layer contracts the factors, and is ignored by the other kinds.

    Attributes:
      u, vt: the ``nnx.Param`` factors of a ``kind="lowrank"`` layer.
      factors: the ``nnx.Param`` factors of a cp or tucker layer (input modes first).
      core: the Tucker core, an ``nnx.Param`` (tucker only).
      cores: the ``nnx.Param`` cores of a tt layer.
      weight: the factors assembled as the library's type: a ``LowRankMatrix`` of shape
        ``(in, out)``, a ``CPTensor`` or ``TuckerTensor`` of shape ``in_shape + out_shape``,
        or a ``TTMatrix`` of shape ``(in, out)``.

    ``dense_weight()`` is the rebuilt ``(in, out)`` kernel, ``to_layer()`` an ``nnx.Linear``
    holding it and ``choose_contraction(batch_size)`` what the forward does for that many rows.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import FactorizedDense
      >>> layer = FactorizedDense(64, 48, kind="tucker", rank=4, rngs=nnx.Rngs(0))
      >>> layer.in_shape, layer.out_shape, layer.rank
      ((8, 8), (8, 6), (4, 4, 4, 4))
      >>> layer(jnp.ones((2, 64))).shape
      (2, 48)
      >>> layer.n_params, 64 * 48 + 48   # factors and bias, against nnx.Linear
      (424, 3120)

      A TT layer with three input and two output factors (the output gets a trailing 1):

      >>> tt = FactorizedDense(64, 48, kind="tt", rank=4, in_shape=(4, 4, 4),
      ...                      out_shape=(8, 6), rngs=nnx.Rngs(0))
      >>> tt.out_shape, [c.shape for c in tt.cores]
      ((8, 6, 1), [(1, 4, 8, 4), (4, 4, 6, 4), (4, 4, 1, 1)])

      Megatron-style model parallelism of a low-rank layer: the rank is split over ``"model"``
      (``x U`` comes out split, ``(x U) Vᵀ`` sums over the devices)::

        >>> import jax
        >>> from tensorfact.sharding import make_mesh
        >>> mesh = make_mesh((1, 1), ("data", "model"))   # (n_data, n_model) devices
        >>> with jax.set_mesh(mesh):
        ...     layer = FactorizedDense(64, 48, rank=8, rngs=nnx.Rngs(0),
        ...                             partitioning={"u": (None, "model"), "vt": ("model",)})
        >>> specs = nnx.get_partition_spec(nnx.state(layer))
        >>> layer.u.sharding.spec == jax.P(None, "model"), specs["vt"].get_value()
        (True, P('model',))
    """

    def __init__(self, in_features: int, out_features: int, *, kind: Kind = "lowrank", rank,
                 in_shape=None, out_shape=None, use_bias: bool = True,
                 contraction: Contraction = "auto", dtype=None, param_dtype=jnp.float32,
                 precision: Precision = None, bias_init=nnx.initializers.zeros_init(),
                 rngs: nnx.Rngs, partitioning=None, impl: Impl = "auto"):
        in_features = check_positive_int(in_features, "in_features")
        out_features = check_positive_int(out_features, "out_features")
        kind = check_choice(kind, Kind, "kind")
        self.contraction = check_choice(contraction, Contraction, "contraction")
        self.impl = check_choice(impl, Impl, "impl")
        in_shape, out_shape = tensorize(kind, in_features, out_features, in_shape, out_shape)
        rank = resolve_rank(kind, rank, in_shape, out_shape)
        self.in_features, self.out_features = in_features, out_features
        self.kind, self.rank = kind, rank
        self.in_shape = in_shape if kind != "lowrank" else None
        self.out_shape = out_shape if kind != "lowrank" else None
        self.use_bias = bool(use_bias)
        self.dtype, self.param_dtype = dtype, param_dtype
        self.precision = resolve_precision(precision)

        shapes, variances = _factor_specs(kind, in_features, out_features, in_shape,
                                          out_shape, rank)
        groups = {"lowrank": [("u", shapes[:1]), ("vt", shapes[1:])],
                  "cp": [("factors", shapes)],
                  "tucker": [("core", shapes[:1]), ("factors", shapes[1:])],
                  "tt": [("cores", shapes)]}[kind]
        groups += [("bias", [(out_features,)])] if self.use_bias else []
        specs = partition_specs(partitioning, groups)  # checked before any array is drawn
        self._shapes = shapes
        self._specs = tuple(sp for name, _ in groups for sp in specs[name])
        why = "to draw FactorizedDense's factors"
        arrays = draw(params_key(rngs, why), shapes, variances, jnp.dtype(param_dtype))
        bias = (bias_init(params_key(rngs, why), (out_features,), param_dtype)
                if self.use_bias else None)
        self._set_factors(arrays, bias)

    def _set_factors(self, arrays, bias):
        """Holds ``arrays`` (in :meth:`_param_vars` order) and ``bias`` as the parameters, with
        their sharding annotations."""
        params = [param(jnp.asarray(a, self.param_dtype).reshape(s), sp)
                  for a, s, sp in zip(arrays, self._shapes, self._specs)]
        if self.kind == "lowrank":
            self.u, self.vt = params
        elif self.kind == "cp":
            self.factors = nnx.List(params)
        elif self.kind == "tucker":
            self.core, self.factors = params[0], nnx.List(params[1:])
        else:
            self.cores = nnx.List(params)
        if self.use_bias:
            self.bias = param(jnp.asarray(bias, self.param_dtype), self._specs[-1])
        else:
            self.bias = no_bias()

    # -- parameters as arrays and as the library's types ------------------------------------
    def _param_vars(self):
        if self.kind == "lowrank":
            return [self.u, self.vt]
        if self.kind == "cp":
            return list(self.factors)
        if self.kind == "tucker":
            return [self.core] + list(self.factors)
        return list(self.cores)

    def _build(self, arrays):
        """The library's type from the factor arrays (in :meth:`_param_vars` order)."""
        if self.kind == "lowrank":
            return LowRankMatrix(arrays[0], None, arrays[1])
        if self.kind == "cp":
            return CPTensor(None, arrays)
        if self.kind == "tucker":
            return TuckerTensor(arrays[0], arrays[1:])
        return TTMatrix(arrays)

    @property
    def kernel_shape(self) -> tuple[int, int]:
        """``(in_features, out_features)``, the shape of ``nnx.Linear``'s kernel."""
        return self.in_features, self.out_features

    def to_layer(self) -> nnx.Linear:
        """An ``nnx.Linear`` with the rebuilt kernel (:meth:`dense_weight`) and the same bias,
        dtype and precision."""
        return self._fill(nnx.Linear(
            self.in_features, self.out_features, use_bias=self.use_bias, dtype=self.dtype,
            param_dtype=self.param_dtype, precision=self.precision,
            kernel_init=nnx.initializers.zeros_init(), rngs=nnx.Rngs(0)))

    # -- cost model ------------------------------------------------------------------------
    def _factorized_rate(self) -> float:
        # the TT chain's reshapes and narrow contractions (module docstring): half a GEMM's rate
        return 0.5 if self.kind == "tt" else 1.0

    def flops(self, batch_size: int) -> dict:
        """Forward FLOPs (2 × multiply-adds) for ``batch_size`` rows: ``{"factorized": ...,
        "dense": ..., "plain": 2·B·in·out}``, the two contractions and the plain
        ``nnx.Linear`` (the formulas in the module docstring; the bias is left out)."""
        batch = check_positive_int(batch_size, "batch_size")
        in_shape = self.in_shape or (self.in_features,)
        out_shape = self.out_shape or (self.out_features,)
        fact, dense = flops(self.kind, in_shape, out_shape, self.rank, batch)
        return {"factorized": fact, "dense": dense,
                "plain": 2 * batch * self.in_features * self.out_features}

    # -- forward ---------------------------------------------------------------------------
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x @ W + b`` over the last axis of ``x``."""
        x = check_input(x, self.in_features)
        bias = self.bias[...] if self.use_bias else None
        params = [v[...] for v in self._param_vars()]
        x, *arrays, bias = promote_dtype((x, *params, bias), dtype=self.dtype)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] == 0:  # an empty batch (the reshapes below need a size)
            y = jnp.zeros((0, self.out_features), x.dtype)
        elif self.choose_contraction(x2.shape[0]) == "dense":
            y = jnp.matmul(x2, self._kernel(arrays, self.precision), precision=self.precision)
        else:
            y = self._factorized(x2, arrays)
        y = y.reshape(lead + (self.out_features,))
        return y if bias is None else y + bias

    def _factorized(self, x, arrays):
        prec = self.precision
        batch = x.shape[0]
        if self.kind == "lowrank":
            return jnp.matmul(jnp.matmul(x, arrays[0], precision=prec), arrays[1], precision=prec)
        if self.kind == "cp":
            p = len(self.in_shape)
            left = algebra.khatri_rao(arrays[:p])     # (in, R), rows in C order of in_shape
            right = algebra.khatri_rao(arrays[p:])    # (out, R)
            return jnp.matmul(jnp.matmul(x, left, precision=prec), right.T, precision=prec)
        if self.kind == "tucker":
            p = len(self.in_shape)
            core, factors = arrays[0], arrays[1:]
            in_order, out_order = _tucker_orders(self.in_shape, self.out_shape, self.rank)
            t = x.reshape((batch,) + self.in_shape)
            for k in in_order:                        # x ×_k U_kᵀ
                t = _mode_contract(t, 1 + k, factors[k], 0, prec)
            r_in = math.prod(self.rank[:p])
            t = jnp.matmul(t.reshape(batch, r_in), core.reshape(r_in, -1), precision=prec)
            t = t.reshape((batch,) + tuple(self.rank[p:]))
            for k in out_order:                       # ×_l V_l
                t = _mode_contract(t, 1 + k, factors[p + k], 1, prec)
            return t.reshape(batch, self.out_features)
        return tt_apply(x, arrays, prec, self.impl)

    # -- from a trained layer --------------------------------------------------------------
    @classmethod
    def from_layer(cls, layer, *, kind: Kind = "lowrank", rank, bias=None, in_shape=None,
                   out_shape=None, contraction: Contraction = "auto", dtype=None,
                   param_dtype=None, precision: Precision = None, key=None, partitioning=None,
                   impl: Impl = "auto", **fit_kwargs):
        """A factorized layer initialised by decomposing a trained kernel.

        ``lowrank``: the truncated SVD ``U S Vᵀ`` (:func:`tensorfact.svd`), stored as
        ``U S^{1/2}`` and ``S^{1/2} Vᵀ``; ``cp``: CP-ALS (:func:`tensorfact.cp`) with the weights
        spread evenly over the factors (``|w_r|^{1/N}`` each); ``tucker``: HOOI
        (:func:`tensorfact.tucker`); ``tt``: TT-SVD (:func:`tensorfact.tt_matrix`). At
        ``rank="full"`` the result equals the dense layer up to rounding for lowrank, tucker
        and tt, and for cp too (through an explicit construction: one rank-one term per fibre
        of the largest mode, ``∏ dims / max dims`` of them).

        Args:
          layer: an ``nnx.Linear`` (its kernel, bias, dtype and precision are used) or a
            kernel array of shape ``(in_features, out_features)``. NaN or Inf in it is an
            error (in eager calls).
          kind, rank, in_shape, out_shape, contraction, partitioning, impl: as in the
            constructor.
          bias: with a kernel array, an optional bias of shape ``(out_features,)`` (the layer
            then has ``use_bias=True``); must be None with a layer.
          dtype, precision: the layer's; by default those of ``layer`` if an ``nnx.Linear``.
          param_dtype: dtype of the factors; by default the kernel's.
          key: ``jax.random`` key for decompositions that use randomness (``cp`` when the
            rank exceeds a mode, randomized ``svd``, random Tucker init).
          **fit_kwargs: passed to the decomposition (e.g. ``n_iter``, ``method``).

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from flax import nnx
          >>> from tensorfact.nn import FactorizedDense
          >>> dense = nnx.Linear(32, 24, rngs=nnx.Rngs(0))
          >>> x = jax.random.normal(jax.random.key(1), (4, 32))
          >>> small = FactorizedDense.from_layer(dense, kind="tucker", rank="full")
          >>> bool(jnp.allclose(small(x), dense(x), atol=1e-5))
          True
        """
        kind = check_choice(kind, Kind, "kind")
        if key is not None:
            key = check_key(key, f"by FactorizedDense.from_layer (kind {kind!r})")
        kernel, bias, dtype, precision = dense_source(layer, bias, dtype, precision)
        in_features, out_features = kernel.shape
        param_dtype = kernel.dtype if param_dtype is None else param_dtype
        in_shape, out_shape = tensorize(kind, in_features, out_features, in_shape, out_shape)
        resolved = resolve_rank(kind, rank, in_shape, out_shape)
        full = isinstance(rank, str) and rank == "full"
        arrays = _decompose(kind, resolved, in_shape, out_shape, kernel, full, key, fit_kwargs)
        if kind == "lowrank":
            in_shape = out_shape = None
        # the layer's structure without drawing (nnx.eval_shape), then the fitted factors
        out = nnx.eval_shape(lambda: cls(
            in_features, out_features, kind=kind, rank=resolved, in_shape=in_shape,
            out_shape=out_shape, use_bias=bias is not None, contraction=contraction,
            dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=nnx.Rngs(0),
            partitioning=partitioning, impl=impl))
        out._set_factors(arrays, bias)
        return out


def _decompose(kind, rank, in_shape, out_shape, kernel, full, key, fit_kwargs):
    """The factors of the ``kind`` format fitted to ``kernel`` (in ``_param_vars`` order)."""
    if kind == "lowrank":
        if key is not None:
            fit_kwargs = dict(fit_kwargs, key=key)
        lr = svd(kernel, rank, **fit_kwargs)
        root = jnp.sqrt(lr.s)
        return [lr.u * root, root[:, None] * lr.vt]
    tensor = kernel.reshape(in_shape + out_shape)
    if kind == "cp":
        if full:
            return cp_fibres(tensor)
        weights, factors = cp(tensor, rank, key=key, **fit_kwargs)
        return spread_cp(weights, factors)
    if kind == "tucker":
        core, factors = tucker(tensor, rank, key=key, **fit_kwargs)
        return [core] + list(factors)
    return list(tt_matrix(kernel, in_shape, out_shape, rank, **fit_kwargs).cores)
