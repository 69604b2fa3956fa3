"""The Multilinear Mixture of Experts (μMoE): many experts held as one factorized tensor.

Oldfield, Georgopoulos, Chrysos, Tzelepis, Panagakis, Nicolaou, Deng & Patras, "Multilinear
Mixture of Experts: Scalable Expert Specialization through Factorization", NeurIPS 2024
(arXiv:2402.12550).

``N`` linear experts ``W[n] ∈ R^{I×O}`` are stacked into one tensor ``W ∈ R^{N×I×O}`` held in a
low-rank format, and every token is sent *softly* to all of them:

    g(x) = softmax(x W_g) ∈ R^N                 (Σ_n g_n(x) = 1)
    y    = Σ_n g_n(x) W[n]ᵀ x + b               (the gate-weighted sum of the experts' outputs)

computed from the factors without forming ``W`` or any expert's ``I × O`` matrix.

* ``kind="cp"``: ``W = Σ_r a_r ∘ u_r ∘ c_r`` with factors ``A (N×R)``, ``U (I×R)``,
  ``C (O×R)``. Then ``y = C ((Aᵀ g) ⊙ (Uᵀ x)) + b``: the gate and the input are each projected
  to ``R`` numbers, multiplied elementwise and mapped out by ``C``.
* ``kind="tr"`` (tensor ring): cores ``G_e (R×N×R)``, ``G_i (R×I×R)``, ``G_o (R×O×R)`` with
  ``W[n, i, o] = tr(G_e[:, n, :] G_i[:, i, :] G_o[:, o, :])``. Then
  ``y_o = tr(M_e M_i G_o[:, o, :])`` with ``M_e = Σ_n g_n G_e[:, n, :]`` and
  ``M_i = Σ_i x_i G_i[:, i, :]`` (two ``R × R`` matrices per token).

**Hierarchical experts.** ``expert_shape=(N_1, ..., N_d)`` (product ``num_experts``) gives the
paper's hierarchical μMoE: ``W ∈ R^{N_1×⋯×N_d×I×O}``, one gate per expert mode,
``g_k(x) = softmax(x W_{g,k}) ∈ R^{N_k}``, and expert ``(n_1, ..., n_d)`` (flat index in C order)
weighted by ``∏_k g_k[n_k]`` (which again sums to one). CP holds one factor ``A_k (N_k×R)``
per expert mode, ``y = C ((A_1ᵀ g_1) ⊙ ⋯ ⊙ (A_dᵀ g_d) ⊙ (Uᵀ x)) + b``; TR one core
``G_k (R×N_k×R)`` per expert mode, ``y_o = tr(M_1 ⋯ M_d M_i G_o[:, o, :])``. ``d = 1`` is the
flat μMoE above.

**Gate.** Softmax only (``gate="softmax"``), computed in at least float32 by
:func:`jax.nn.softmax`, which subtracts the largest logit and is stable for logits of any
finite size. The paper also uses entmax (sparser gates); that is not offered. The gate
kernels have no bias and **start at zero**: at initialisation every token is routed
uniformly (``g = 1/N``), the layer acts as the mean of its experts, and training specialises
the gate (its gradient is nonzero from the first step, since the experts differ).

**Contraction order and cost** (forward FLOPs per token, 2 × multiply-adds; the gates cost
``2 I Σ_k N_k`` in both kinds):

* CP: ``Uᵀ x`` (``2IR``), each ``A_kᵀ g_k`` (``2 N_k R``), ``d`` elementwise products, then
  ``C h`` (``2OR``): ``2R(I + O + Σ_k N_k) + dR``. Every factor is touched once, so no order is
  cheaper.
* TR: every mode is first reduced to an ``R × R`` matrix per token: ``M_k = g_k · G_k``
  (``2 N_k R²``) and ``M_i = x · G_i`` (``2 I R²``), each one matmul over the batch; then the
  ``d`` products ``M_1 ⋯ M_d M_i`` (``2R³`` each, independent of ``N``, ``I`` and ``O``), and
  the trace with ``G_o`` as one ``(B, R²) × (R², O)`` matmul (``2 O R²``): in all
  ``2R²(I + O + Σ_k N_k) + 2dR³``. Contracting ``G_o`` before the trace (``M_i`` with ``G_o``
  first, an ``R × O × R`` intermediate) would cost ``2OR³``; reducing ``G_o`` last, by the
  trace, keeps its cost linear in ``O R²``.

Against these, the dense μMoE (all ``N`` experts applied, outputs mixed) costs
``2NIO + 2NO`` per token and holds ``NIO`` weights; a CP μMoE holds ``R(Σ_k N_k + I + O)``
and a TR μMoE ``R²(Σ_k N_k + I + O)`` (plus the gates, ``I Σ_k N_k``, and the bias).

**Initialisation.** The factors are drawn zero-mean (normal truncated at ±2σ, rescaled to the
exact variance) with variances chosen so that, at initialisation (uniform gates) and for
``x`` with independent unit-variance entries, every output has variance 1, as an
``nnx.Linear`` with its default ``lecun_normal`` kernel. An output is a sum of products of
independent zero-mean factors, so its variance is the number of terms times the product of
the variances of the mixed factors. With uniform gates ``Σ_n g_n² = 1/N_k``, so:

* CP: ``Var(A_k) = N_k`` (then ``A_kᵀ g_k`` has unit variance), ``Var(U) = 1/I``,
  ``Var(C) = 1/R``: ``Var(y_o) = R · 1 · (I/I) · (1/R) = 1``.
* TR: ``Var(G_k) = N_k / R``, ``Var(G_i) = 1/(I R)``, ``Var(G_o) = 1/R``: each mixed ``R × R``
  matrix and ``G_o`` have entries of variance ``1/R``, and ``y_o`` sums ``R^{d+2}`` products
  of ``d + 2`` of them: ``Var(y_o) = R^{d+2} R^{-(d+2)} = 1``.

Once a gate concentrates on one expert the variance grows up to ``N_k`` per mode (CP); that is
the experts' own scale, which training sets.

**Scale.** The layer is linear in ``x`` apart from the gate, whose softmax is stable, so
inputs from ``1e-20`` to ``1e20`` (float32, bfloat16) give finite outputs as long as ``y``
itself fits the dtype (no square of ``x`` is ever formed).
"""

from __future__ import annotations

import math
import numbers
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype

from tensorfact import algebra
from tensorfact._checks import Precision, check_choice, check_positive_int
from tensorfact._numerics import resolve_precision
from tensorfact.nn._common import check_input, draw, no_bias, params_key
from tensorfact.nn._partitioning import param, partition_specs

__all__ = ["MultilinearMoE", "MoEKind", "Gate"]

#: The formats of the expert tensor of :class:`MultilinearMoE`.
MoEKind = Literal["cp", "tr"]
#: The gates of :class:`MultilinearMoE`.
Gate = Literal["softmax"]


def _expert_shape(expert_shape, num_experts: int) -> tuple[int, ...]:
    """``expert_shape`` checked (positive ints with product ``num_experts``), or
    ``(num_experts,)``."""
    if expert_shape is None:
        return (num_experts,)
    if (isinstance(expert_shape, (str, numbers.Integral)) or not hasattr(expert_shape, "__len__")
            or len(expert_shape) == 0):
        raise ValueError(f"expert_shape must be a non-empty tuple of positive ints with product "
                         f"num_experts = {num_experts}, got {expert_shape!r}.")
    shape = tuple(check_positive_int(s, f"expert_shape[{k}]")
                  for k, s in enumerate(expert_shape))
    if math.prod(shape) != num_experts:
        raise ValueError(f"expert_shape = {shape} has product {math.prod(shape)}, which must "
                         f"equal num_experts = {num_experts}.")
    return shape


def _factor_specs(kind, expert_shape, in_features, out_features, rank):
    """Shapes of the factors (expert modes, then input, then output) and the variance of each
    entry (the module docstring's rule)."""
    dims = expert_shape + (in_features, out_features)
    if kind == "cp":
        shapes = tuple((n, rank) for n in dims)
        variances = tuple(float(n) for n in expert_shape) + (1.0 / in_features, 1.0 / rank)
    else:
        shapes = tuple((rank, n, rank) for n in dims)
        variances = (tuple(n / rank for n in expert_shape)
                     + (1.0 / (in_features * rank), 1.0 / rank))
    return shapes, variances


class MultilinearMoE(nnx.Module):
    """A multilinear mixture of ``num_experts`` linear experts ``I → O`` whose stacked weights
    ``W ∈ R^{N×I×O}`` are held in CP or tensor-ring form, with a soft (softmax) gate:
    ``y = Σ_n g_n(x) W[n]ᵀ x + b``, ``g(x) = softmax(x W_g)`` (μMoE, Oldfield et al.,
    NeurIPS 2024, arXiv:2402.12550; the module docstring has the equations, contraction orders,
    costs and the initialisation rule). The forward never forms ``W`` or an expert's matrix.

    Args:
      in_features, out_features: sizes of the input's last axis (``I``) and of the output's
        (``O``).
      num_experts: the number of experts ``N`` (a positive int).
      rank: the CP rank or the tensor ring's (common) bond rank ``R`` (a positive int).
      kind: ``"cp"`` (default) or ``"tr"`` (tensor ring).
      expert_shape: ``(N_1, ..., N_d)`` with product ``num_experts`` for the hierarchical μMoE
        (one gate and one factor per expert mode); default ``(num_experts,)``.
      use_bias: add a bias of shape ``(O,)`` (zeros at start).
      gate: ``"softmax"`` (the only gate offered; the paper's entmax is not).
      dtype, param_dtype, precision: as in ``nnx.Linear``: the computation dtype (None: from
        the input and parameters; ``jnp.bfloat16`` runs the contractions in bfloat16 while the
        softmax runs in float32), the parameters' dtype, and the matmul precision (None: JAX's
        default).
      partitioning: optional sharding annotations, a mapping from parameter name
        (``"factors"`` for CP, ``"cores"`` for TR, ``"gate"``, ``"bias"``) to a
        :class:`jax.sharding.PartitionSpec` or tuple of mesh axis names, one entry per axis
        (None: not split); a spec applies to every array of a list-valued parameter, a
        ``list`` gives one spec per array (in the order expert modes, input, output; gates in
        expert-mode order). As in :class:`~tensorfact.nn.FactorizedDense`: Flax's
        ``out_sharding`` metadata, checked against the current mesh before any array is drawn.
        E.g. ``{"factors": (None, "model")}`` splits the CP rank over ``"model"``.
      rngs: ``nnx.Rngs``; one ``params`` key draws all the factors (the gates and the bias
        start at zero).

    Attributes:
      factors: (cp) ``nnx.List`` of ``nnx.Param``: ``A_1, ..., A_d`` ``(N_k, R)``,
        ``U (I, R)``, ``C (O, R)``.
      cores: (tr) ``G_1, ..., G_d`` ``(R, N_k, R)``, ``G_i (R, I, R)``, ``G_o (R, O, R)``.
      gate: ``nnx.List`` of the gate kernels ``(I, N_k)``.
      bias: ``(O,)`` or None.

    ``n_params``: the number of trainable scalars. ``expert_weights()``: the dense
    ``(N, I, O)`` tensor (for tests and inspection). ``gates(x)``: the ``(..., N)`` weights of
    the experts. ``flops(batch_size)``: the forward's cost.

    Returns (when called on ``x`` of shape ``(..., I)``):
      ``y`` of shape ``(..., O)``.

    Raises:
      ValueError: ``in_features``, ``out_features``, ``num_experts`` or ``rank`` not a positive
        int; ``kind`` or ``gate`` unknown; ``expert_shape`` not positive ints with product
        ``num_experts``; a bad ``partitioning`` entry; at call time, ``x`` whose last axis is
        not ``in_features``.
      TypeError: ``partitioning`` not a mapping; ``rngs`` not an ``nnx.Rngs``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import MultilinearMoE
      >>> moe = MultilinearMoE(32, 24, num_experts=64, rank=16, rngs=nnx.Rngs(0))
      >>> x = jax.random.normal(jax.random.key(1), (5, 32))
      >>> moe(x).shape
      (5, 24)
      >>> moe.n_params, 64 * 32 * 24            # factors + gate + bias, against dense experts
      (3992, 49152)
      >>> bool(jnp.allclose(moe.gates(x).sum(-1), 1.0))
      True
      >>> w = moe.expert_weights()                # (N, I, O): materialised for inspection only
      >>> y = jnp.einsum("bn,nio,bi->bo", moe.gates(x), w, x) + moe.bias[...]
      >>> bool(jnp.allclose(moe(x), y, atol=1e-4))
      True

      A hierarchical tensor-ring μMoE: 8 × 8 experts, one gate per expert mode:

      >>> tr = MultilinearMoE(32, 24, num_experts=64, rank=4, kind="tr", expert_shape=(8, 8),
      ...                     rngs=nnx.Rngs(0))
      >>> [c.shape for c in tr.cores], [g.shape for g in tr.gate]
      ([(4, 8, 4), (4, 8, 4), (4, 32, 4), (4, 24, 4)], [(32, 8), (32, 8)])
    """

    def __init__(self, in_features: int, out_features: int, *, num_experts: int, rank: int,
                 kind: MoEKind = "cp", expert_shape=None, use_bias: bool = True,
                 gate: Gate = "softmax", dtype=None, param_dtype=jnp.float32,
                 precision: Precision = None, partitioning=None, rngs: nnx.Rngs):
        in_features = check_positive_int(in_features, "in_features")
        out_features = check_positive_int(out_features, "out_features")
        num_experts = check_positive_int(num_experts, "num_experts")
        rank = check_positive_int(rank, "rank")
        self.kind = check_choice(kind, MoEKind, "kind")
        self.gate_kind = check_choice(gate, Gate, "gate")
        self.expert_shape = _expert_shape(expert_shape, num_experts)
        self.in_features, self.out_features = in_features, out_features
        self.num_experts, self.rank = num_experts, rank
        self.use_bias = bool(use_bias)
        self.dtype, self.param_dtype = dtype, param_dtype
        self.precision = resolve_precision(precision)

        shapes, variances = _factor_specs(self.kind, self.expert_shape, in_features,
                                          out_features, rank)
        gate_shapes = tuple((in_features, n) for n in self.expert_shape)
        name = "factors" if self.kind == "cp" else "cores"
        groups = [(name, shapes), ("gate", gate_shapes)]
        groups += [("bias", [(out_features,)])] if self.use_bias else []
        specs = partition_specs(partitioning, groups)   # checked before any array is drawn
        arrays = draw(params_key(rngs, "to draw MultilinearMoE's factors"), shapes, variances,
                      jnp.dtype(param_dtype))
        params = nnx.List([param(a, sp) for a, sp in zip(arrays, specs[name])])
        if self.kind == "cp":
            self.factors = params
        else:
            self.cores = params
        self.gate = nnx.List([param(jnp.zeros(s, param_dtype), sp)
                              for s, sp in zip(gate_shapes, specs["gate"])])
        if self.use_bias:
            self.bias = param(jnp.zeros((out_features,), param_dtype), specs["bias"][0])
        else:
            self.bias = no_bias()

    # -- parameters ------------------------------------------------------------------------
    def _param_vars(self):
        return list(self.factors if self.kind == "cp" else self.cores)

    @property
    def n_params(self) -> int:
        """Number of trainable scalars: the factors (or cores), the gate kernels and the bias."""
        vars_ = self._param_vars() + list(self.gate) + ([self.bias] if self.use_bias else [])
        return sum(math.prod(v.get_value().shape) for v in vars_)   # also under eval_shape

    def flops(self, batch_size: int) -> dict:
        """Forward FLOPs (2 × multiply-adds, leading terms) for ``batch_size`` tokens:
        ``{"factorized": ..., "dense": ...}``, this layer's contraction and the dense μMoE
        (every expert's ``I × O`` matrix applied, the outputs mixed), both with the gates
        (``2 B I Σ N_k``) and without the bias (the module docstring has the formulas)."""
        b = check_positive_int(batch_size, "batch_size")
        i, o, r, d = self.in_features, self.out_features, self.rank, len(self.expert_shape)
        sum_n = sum(self.expert_shape)
        gates = 2 * b * i * sum_n
        if self.kind == "cp":
            fact = b * (2 * r * (i + o + sum_n) + d * r)
        else:
            fact = b * (2 * r * r * (i + o + sum_n) + 2 * d * r ** 3)
        n = self.num_experts
        return {"factorized": gates + fact, "dense": gates + b * (2 * n * i * o + 2 * n * o)}

    def expert_weights(self, *, precision: Precision = "highest") -> jax.Array:
        """The dense expert tensor ``W`` of shape ``(num_experts, in_features, out_features)``
        (experts in C order of ``expert_shape``), rebuilt from the factors at ``precision``.
        For tests and inspection: the forward never forms it."""
        prec = resolve_precision(precision)
        arrays = [v[...] for v in self._param_vars()]
        d = len(self.expert_shape)
        if self.kind == "cp":
            experts = algebra.khatri_rao(arrays[:d]) if d > 1 else arrays[0]   # (N, R)
            return jnp.einsum("nr,ir,or->nio", experts, arrays[d], arrays[d + 1],
                              precision=prec)
        experts = arrays[0]                                                    # (R, N, R)
        for core in arrays[1:d]:
            experts = jnp.einsum("anb,bmc->anmc", experts, core, precision=prec)
            experts = experts.reshape(self.rank, -1, self.rank)
        return jnp.einsum("anb,bic,coa->nio", experts, arrays[d], arrays[d + 1],
                          precision=prec)

    # -- forward ---------------------------------------------------------------------------
    def _mode_gates(self, x, kernels):
        """One ``(B, N_k)`` softmax per expert mode, computed in at least float32."""
        out = []
        for kernel in kernels:
            logits = jnp.matmul(x, kernel, precision=self.precision)
            wide = jnp.promote_types(logits.dtype, jnp.float32)
            out.append(jax.nn.softmax(logits.astype(wide), axis=-1).astype(x.dtype))
        return out

    def gates(self, x: jax.Array) -> jax.Array:
        """The experts' weights ``g(x)`` of shape ``(..., num_experts)`` (nonnegative, summing
        to one): the softmax of ``x W_g``, or for a hierarchical layer the products
        ``∏_k g_k[n_k]`` in C order of ``expert_shape``."""
        x = check_input(x, self.in_features)
        x, *kernels = promote_dtype((x, *[v[...] for v in self.gate]), dtype=self.dtype)
        lead = x.shape[:-1]
        mode = self._mode_gates(x.reshape(-1, self.in_features), kernels)
        g = mode[0]
        for gk in mode[1:]:
            g = (g[:, :, None] * gk[:, None, :]).reshape(g.shape[0], -1)
        return g.reshape(lead + (self.num_experts,))

    def __call__(self, x: jax.Array) -> jax.Array:
        """``Σ_n g_n(x) W[n]ᵀ x + b`` over the last axis of ``x``, from the factors."""
        x = check_input(x, self.in_features)
        d = len(self.expert_shape)
        params = [v[...] for v in self._param_vars()]
        kernels = [v[...] for v in self.gate]
        bias = self.bias[...] if self.use_bias else None
        x, *arrays, bias = promote_dtype((x, *params, *kernels, bias), dtype=self.dtype)
        params, kernels = arrays[:d + 2], arrays[d + 2:]
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        g = self._mode_gates(x2, kernels)
        y = self._cp(x2, g, params) if self.kind == "cp" else self._tr(x2, g, params)
        y = y.reshape(lead + (self.out_features,))
        return y if bias is None else y + bias

    def _cp(self, x, g, factors):
        """``C ((A_1ᵀ g_1) ⊙ ⋯ ⊙ (A_dᵀ g_d) ⊙ (Uᵀ x))`` for a batch of rows."""
        prec = self.precision
        d = len(g)
        h = jnp.matmul(x, factors[d], precision=prec)                       # (B, R)
        for gk, a in zip(g, factors[:d]):
            h = h * jnp.matmul(gk, a, precision=prec)
        return jnp.matmul(h, factors[d + 1].T, precision=prec)              # (B, O)

    def _tr(self, x, g, cores):
        """``y_o = tr(M_1 ⋯ M_d M_i G_o[:, o, :])``: each mode reduced to an ``R × R`` matrix
        per row first, their product, then the trace with ``G_o`` as one matmul."""
        prec = self.precision
        b, r, d = x.shape[0], self.rank, len(g)

        def reduce(v, core):   # Σ_n v[:, n] core[:, n, :], as one (B, n) × (n, R²) matmul
            n = core.shape[1]
            flat = jnp.transpose(core, (1, 0, 2)).reshape(n, r * r)
            return jnp.matmul(v, flat, precision=prec).reshape(b, r, r)

        p = reduce(g[0], cores[0])
        for gk, core in zip(g[1:], cores[1:d]):
            p = jnp.matmul(p, reduce(gk, core), precision=prec)
        p = jnp.matmul(p, reduce(x, cores[d]), precision=prec)                # (B, R, R)
        out = cores[d + 1]                                                    # (R, O, R)
        # y[b, o] = Σ_{a, c} p[b, a, c] G_o[c, o, a]: (B, R²) × (R², O)
        k = jnp.transpose(out, (2, 0, 1)).reshape(r * r, self.out_features)
        return jnp.matmul(p.reshape(b, r * r), k, precision=prec)
