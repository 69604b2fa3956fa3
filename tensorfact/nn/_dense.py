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
  (Novikov et al. 2015); needs ``len(in_shape) == len(out_shape)``.

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

**Forward.** ``implementation="factorized"`` contracts ``x`` with the factors and never forms
``W``; ``"reconstructed"`` forms ``W`` and multiplies; ``"auto"`` (default) counts the FLOPs of
both at trace time (the batch size is static) and takes the cheaper. For ``B`` rows
(``2 ×`` multiply-adds, leading terms, see :meth:`FactorizedDense.flops`):

* lowrank: ``2B r (in + out)`` against ``2 in·r·out + 2B in·out``;
* cp: ``2B R (in + out) + R (in + out)`` (the Khatri–Rao products of the input and of the output
  factors, then two matmuls) against ``2 in·R·out + 2B in·out``;
* tucker: ``x`` is projected one input mode at a time (largest shrink ``I_k / r_k`` first),
  ``2 · size · r_k`` per step, then ``2B ∏r ∏s`` for the core and ``2 · size · J_l`` per output
  mode (smallest growth first); against the same chain on the core alone plus ``2B in·out``;
* tt: ``Σ_k 2B r_{k-1} r_k (I_k ⋯ I_d)(J_1 ⋯ J_k)`` against the core chain plus ``2B in·out``.

Forward FLOPs only: training also runs the backward pass, which roughly doubles both sides.
As in ``nnx.Linear``, ``precision=None`` and ``dtype=None`` keep JAX's defaults (TF32 passes
for float32 matmuls on recent GPUs); pass ``precision=jax.lax.Precision.HIGHEST`` for full
float32.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype

from tensorfact import algebra
from tensorfact._checks import as_matrix, check_choice, check_positive_int
from tensorfact.decomposition import cp as cp_decomposition
from tensorfact.decomposition import svd, tucker
from tensorfact.kernels import tt_chain_matmul
from tensorfact.nn._partitioning import _param, _partition_specs
from tensorfact.ranks import rank_for_params
from tensorfact.tensors import CPTensor, LowRankMatrix, TuckerTensor

__all__ = ["FactorizedDense", "balanced_factors"]

_KINDS = ("lowrank", "cp", "tucker", "tt")
_IMPLEMENTATIONS = ("auto", "factorized", "reconstructed")
_KERNEL_IMPLS = ("auto", "pallas", "xla")
_DEFAULT_ORDER = {"cp": 2, "tucker": 2, "tt": 3}
_TRUNC_STD = 0.87962566103423978  # std of a standard normal truncated to [-2, 2]
_List = getattr(nnx, "List", list)  # flax >= 0.12 wants lists of Variables wrapped


def _tt_tools():
    """``(TTMatrix, tt_matrix)``, or None while the TT modules are not there."""
    try:
        from tensorfact.decomposition._tt import tt_matrix
        from tensorfact.tensors._tt import TTMatrix
    except ImportError:
        return None
    return TTMatrix, tt_matrix


def _check_kind(kind):
    kind = check_choice(kind, _KINDS, "kind")
    if kind == "tt" and _tt_tools() is None:
        raise ValueError('kind="tt" is not available yet: it needs tensorfact.decomposition.tt '
                         '(tt_matrix); use "lowrank", "cp" or "tucker".')
    return kind


# ---------------------------------------------------------------------------------------------
# tensorized shapes


@functools.lru_cache(maxsize=None)
def _balanced(n: int, order: int, low: int = 1):
    """Lexicographically smallest decreasing factorization of ``n`` into ``order`` factors that
    are all ``>= low`` (None if there is none): try each smallest factor ``d``, and for it the
    best factorization of ``n / d`` into factors ``>= d``."""
    if order == 1:
        return (n,) if n >= low else None
    best, d = None, low
    while d ** order <= n:
        if n % d == 0:
            rest = _balanced(n // d, order - 1, d)
            if rest is not None and (best is None or rest + (d,) < best):
                best = rest + (d,)
        d += 1
    return best


def balanced_factors(n: int, order: int) -> tuple[int, ...]:
    """The most balanced factorization ``n = f_1 ⋯ f_order``, factors in decreasing order.

    Among all ordered factorizations it returns the one whose sorted factors are smallest in
    lexicographic order: the largest factor is as small as possible, then the next one, ...
    Factors of 1 appear when ``n`` has fewer than ``order`` prime factors.

    Example:
      >>> balanced_factors(768, 2), balanced_factors(4096, 3), balanced_factors(210, 2)
      ((32, 24), (16, 16, 16), (15, 14))
    """
    return _balanced(check_positive_int(n, "n"), check_positive_int(order, "order"))


def _check_shape(shape, features: int, name: str, features_name: str) -> tuple[int, ...]:
    if isinstance(shape, numbers.Integral) or not isinstance(shape, (Sequence, np.ndarray)):
        raise ValueError(f"{name} must be a sequence of positive ints, got {shape!r}.")
    shape = tuple(check_positive_int(s, f"{name}[{k}]") for k, s in enumerate(shape))
    if not shape:
        raise ValueError(f"{name} must not be empty.")
    if math.prod(shape) != features:
        raise ValueError(f"{name} = {shape} has product {math.prod(shape)}, which must equal "
                         f"{features_name} = {features}.")
    return shape


def _tensorize(kind, in_features, out_features, in_shape, out_shape):
    if kind == "lowrank":
        if in_shape is not None or out_shape is not None:
            raise ValueError('in_shape and out_shape tensorize the kernel for kind "cp", "tucker" '
                             'or "tt"; kind "lowrank" factorizes the plain matrix, so leave them '
                             'None.')
        return (in_features,), (out_features,)
    order = _DEFAULT_ORDER[kind]
    if in_shape is None:  # a TT-matrix pairs the input and output factors: match a given split
        tied = kind == "tt" and out_shape is not None and not isinstance(out_shape, int)
        in_shape = balanced_factors(in_features, len(out_shape) if tied else order)
    in_shape = _check_shape(in_shape, in_features, "in_shape", "in_features")
    if out_shape is None:
        out_shape = balanced_factors(out_features, len(in_shape) if kind == "tt" else order)
    out_shape = _check_shape(out_shape, out_features, "out_shape", "out_features")
    if kind == "tt" and len(in_shape) != len(out_shape):
        raise ValueError(f'kind "tt" needs as many input as output factors, got in_shape = '
                         f"{in_shape} and out_shape = {out_shape}.")
    return in_shape, out_shape


# ---------------------------------------------------------------------------------------------
# ranks and parameter counts


def _n_factor_params(kind, in_shape, out_shape, rank) -> int:
    dims = in_shape + out_shape
    if kind == "lowrank":
        return rank * (dims[0] + dims[1])
    if kind == "cp":
        return rank * sum(dims)
    if kind == "tucker":
        return math.prod(rank) + sum(i * r for i, r in zip(dims, rank))
    return sum(rank[k] * m * n * rank[k + 1] for k, (m, n) in enumerate(zip(in_shape, out_shape)))


def _full_rank(kind, in_shape, out_shape):
    dims = in_shape + out_shape
    if kind == "lowrank":
        return min(dims)
    if kind == "cp":
        return math.prod(dims) // max(dims)
    if kind == "tucker":
        total = math.prod(dims)
        return tuple(min(i, total // i) for i in dims)
    merged = [m * n for m, n in zip(in_shape, out_shape)]
    inner = tuple(min(math.prod(merged[:k]), math.prod(merged[k:])) for k in range(1, len(merged)))
    return (1,) + inner + (1,)


def _capped(kind, r: int, full):
    """A single int rank as the kind's rank: Tucker and TT ranks capped at the lossless ones."""
    if kind in ("lowrank", "cp"):
        return r
    if kind == "tucker":
        return tuple(min(r, f) for f in full)
    return (1,) + tuple(min(r, f) for f in full[1:-1]) + (1,)


def _resolve_rank(kind, rank, in_shape, out_shape):
    dims = in_shape + out_shape
    full = _full_rank(kind, in_shape, out_shape)
    if isinstance(rank, str):
        if rank != "full":
            raise ValueError(f'rank must be an int, a float in (0, 1] or "full", got {rank!r}.')
        return full
    if isinstance(rank, (bool, np.bool_)):
        raise ValueError(f"rank must be an int, a float in (0, 1] or \"full\", got {rank!r}.")
    if isinstance(rank, numbers.Integral):
        r = check_positive_int(rank, "rank")
        if kind == "lowrank" and r > full:
            raise ValueError(f'rank = {r} is larger than min(in_features, out_features) = {full} '
                             f'for kind "lowrank".')
        return _capped(kind, r, full)
    if isinstance(rank, numbers.Real):
        fraction = float(rank)
        if not 0 < fraction <= 1:
            raise ValueError(f"rank as a float is a fraction of the dense parameter count and "
                             f"must be in (0, 1], got {rank!r}.")
        budget = fraction * math.prod(dims)
        if kind == "lowrank":
            return rank_for_params(dims, fraction)
        if kind == "cp":
            return max(int(budget // sum(dims)), 1)
        best = _capped(kind, 1, full)  # at least rank 1
        for r in range(2, max(full) + 1):
            cand = _capped(kind, r, full)
            if _n_factor_params(kind, in_shape, out_shape, cand) > budget:
                break
            best = cand
        return best
    if kind in ("tucker", "tt") and isinstance(rank, (Sequence, np.ndarray)):
        rank = tuple(check_positive_int(r, f"rank[{k}]") for k, r in enumerate(rank))
        if kind == "tucker":
            if len(rank) != len(dims):
                raise ValueError(f"rank must hold one Tucker rank per mode of in_shape + "
                                 f"out_shape = {dims}, got {rank}.")
            where = "of in_shape + out_shape"
        else:
            if len(rank) != len(full) or rank[0] != 1 or rank[-1] != 1:
                raise ValueError(f"rank must be the TT ranks (1, r_1, ..., r_{len(full) - 2}, 1) "
                                 f"of length {len(full)}, got {rank}.")
            where = "of the TT-matrix"
        for k, (r, f) in enumerate(zip(rank, full)):
            if r > f:
                raise ValueError(f"rank[{k}] = {r} exceeds the lossless rank {f} of that mode "
                                 f"{where} {dims} (full ranks {full}).")
        return rank
    raise ValueError(f"rank must be an int, a float in (0, 1] or \"full\""
                     f"{' or a tuple' if kind in ('tucker', 'tt') else ''} for kind {kind!r}, "
                     f"got {rank!r}.")


# ---------------------------------------------------------------------------------------------
# FLOP counts (forward, 2 × multiply-adds)


def _tucker_orders(in_shape, out_shape, rank):
    p = len(in_shape)
    in_order = sorted(range(p), key=lambda k: -in_shape[k] / rank[k])
    out_order = sorted(range(len(out_shape)), key=lambda k: out_shape[k] / rank[p + k])
    return in_order, out_order


def _flops(kind, in_shape, out_shape, rank, batch):
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


def _trunc_normal(key, shape, variance, dtype):
    """Normal truncated at ±2σ, rescaled to exactly ``variance`` (as Flax's lecun_normal)."""
    std = math.sqrt(variance) / _TRUNC_STD
    return std * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)


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
    shapes = tuple((rank[k], m, n, rank[k + 1]) for k, (m, n) in enumerate(zip(in_shape,
                                                                              out_shape)))
    return shapes, tuple(1.0 / (rank[k] * m) for k, m in enumerate(in_shape))


@functools.partial(jax.jit, static_argnames=("shapes", "variances", "dtype"))
def _draw(key, shapes, variances, dtype):
    """All factors from one flat draw (one random-bit generator to compile, not one per
    factor), each cut out, reshaped and scaled to its variance."""
    sizes = [math.prod(shp) for shp in shapes]
    flat = _trunc_normal(key, (sum(sizes),), 1.0, dtype)
    offsets = np.cumsum([0] + sizes)
    return [math.sqrt(var) * flat[o:o + n].reshape(shp)
            for o, n, shp, var in zip(offsets, sizes, shapes, variances)]


def _tt_apply(x, cores, precision, impl):
    """``x @ W`` for a TT-matrix ``W``, one core at a time (Novikov et al. 2015), by
    :func:`tensorfact.kernels.tt_chain_matmul`: the state ``(B, I_k, [I_{k+1}..I_d,
    J_1..J_{k-1}], r_{k-1})`` meets core ``k`` over ``I_k`` and ``r_{k-1}``, so no transpose is
    needed. ``impl`` picks the fused Pallas kernel or the XLA einsum chain; a layer's
    ``precision=None`` (JAX's default) is passed on as ``DEFAULT``, since the kernel reads
    ``None`` as ``HIGHEST``."""
    return tt_chain_matmul(x, cores, impl=impl, precision=_type_precision(precision))


def _type_precision(precision):
    """The library's types read ``None`` as HIGHEST; a layer's ``None`` means JAX's default."""
    return jax.lax.Precision.DEFAULT if precision is None else precision


def _mode_contract(t, axis, matrix, contract_axis, precision):
    """Contracts ``t``'s ``axis`` with ``matrix``'s ``contract_axis``; the new index takes its
    place."""
    out = jnp.tensordot(t, matrix, axes=(axis, contract_axis), precision=precision)
    return jnp.moveaxis(out, -1, axis)


class FactorizedDense(nnx.Module):
    """A dense layer ``y = x W + b`` whose ``(in_features, out_features)`` kernel ``W`` is held
    in a factorized format (see the module docstring for the formats, ranks, initialisation
    and the FLOP model of ``implementation="auto"``).

    Args:
      in_features, out_features: sizes of the input's last axis and of the output's.
      kind: ``"lowrank"`` (default), ``"cp"``, ``"tucker"`` or ``"tt"``.
      rank: an int, a tuple (Tucker, TT), a float in ``(0, 1]`` (fraction of the dense
        parameter count) or ``"full"``.
      in_shape, out_shape: the tensorization of ``in_features`` and ``out_features`` for the
        tensor kinds (products must match); by default :func:`balanced_factors`.
      use_bias: add a bias (zeros by default, as in ``nnx.Linear``).
      implementation: ``"auto"``, ``"factorized"`` or ``"reconstructed"``.
      dtype, param_dtype, precision, bias_init: as in ``nnx.Linear``.
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
      kernel_impl: ``"auto"`` (default), ``"pallas"`` or ``"xla"``: *which code* runs the
        factorized TT chain (:func:`tensorfact.kernels.tt_chain_matmul`: the fused Pallas
        kernel, interpreted off GPUs, or XLA's einsums; ``"auto"`` takes the kernel on a GPU
        when it fits on chip, XLA elsewhere). ``implementation`` decides *whether* the layer
        contracts the factors or rebuilds ``W``; ``kernel_impl`` only matters when a
        ``kind="tt"`` layer contracts the factors, and is ignored by the other kinds.

    Attributes:
      u, vt (lowrank); factors (cp); core, factors (tucker, input modes first); cores (tt):
      the ``nnx.Param`` factors. ``weight`` assembles them as the library's type.

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

    def __init__(self, in_features: int, out_features: int, *, kind: str = "lowrank", rank,
                 in_shape=None, out_shape=None, use_bias: bool = True,
                 implementation: str = "auto", dtype=None, param_dtype=jnp.float32,
                 precision=None, bias_init=nnx.initializers.zeros_init(), rngs: nnx.Rngs,
                 partitioning=None, kernel_impl: str = "auto", _values=None):
        in_features = check_positive_int(in_features, "in_features")
        out_features = check_positive_int(out_features, "out_features")
        kind = _check_kind(kind)
        self.implementation = check_choice(implementation, _IMPLEMENTATIONS, "implementation")
        self.kernel_impl = check_choice(kernel_impl, _KERNEL_IMPLS, "kernel_impl")
        in_shape, out_shape = _tensorize(kind, in_features, out_features, in_shape, out_shape)
        rank = _resolve_rank(kind, rank, in_shape, out_shape)
        self.in_features, self.out_features = in_features, out_features
        self.kind, self.rank = kind, rank
        self.in_shape = in_shape if kind != "lowrank" else None
        self.out_shape = out_shape if kind != "lowrank" else None
        self.use_bias = bool(use_bias)
        self.dtype, self.param_dtype, self.precision = dtype, param_dtype, precision

        shapes, variances = _factor_specs(kind, in_features, out_features, in_shape,
                                          out_shape, rank)
        groups = {"lowrank": [("u", shapes[:1]), ("vt", shapes[1:])],
                  "cp": [("factors", shapes)],
                  "tucker": [("core", shapes[:1]), ("factors", shapes[1:])],
                  "tt": [("cores", shapes)]}[kind]
        groups += [("bias", [(out_features,)])] if self.use_bias else []
        specs = _partition_specs(partitioning, groups)  # checked before any array is drawn
        # ``_values`` is private: from_dense passes the fitted factors and bias instead of rngs
        if _values is None:
            arrays = _draw(rngs.params(), shapes, variances, jnp.dtype(param_dtype))
            bias = (bias_init(rngs.params(), (out_features,), param_dtype) if self.use_bias
                    else None)
        else:  # from_dense: the decomposition's factors
            arrays, bias = _values
            arrays = [jnp.asarray(a, param_dtype).reshape(s) for a, s in zip(arrays, shapes)]
        factor_specs = [sp for name, _ in groups if name != "bias" for sp in specs[name]]
        params = [_param(a, sp) for a, sp in zip(arrays, factor_specs)]
        if kind == "lowrank":
            self.u, self.vt = params
        elif kind == "cp":
            self.factors = _List(params)
        elif kind == "tucker":
            self.core, self.factors = params[0], _List(params[1:])
        else:
            self.cores = _List(params)
        if self.use_bias:
            self.bias = _param(jnp.asarray(bias, param_dtype), specs["bias"][0])
        else:
            self.bias = nnx.data(None) if hasattr(nnx, "data") else None

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
        return _tt_tools()[0](arrays)

    @property
    def weight(self):
        """The kernel in the library's type: a ``LowRankMatrix`` of shape ``(in, out)``, a
        ``CPTensor`` or ``TuckerTensor`` of shape ``in_shape + out_shape``, or a ``TTMatrix``
        of shape ``(in, out)``."""
        return self._build([v[...] for v in self._param_vars()])

    @property
    def n_params(self) -> int:
        """Number of trainable scalars: the factors plus the bias."""
        bias = self.out_features if self.use_bias else 0
        return sum(int(v[...].size) for v in self._param_vars()) + bias

    def dense_kernel(self) -> jax.Array:
        """The reconstructed ``(in_features, out_features)`` kernel."""
        return self._kernel([v[...] for v in self._param_vars()])

    def _kernel(self, arrays):
        dense = self._build(arrays).to_dense(precision=_type_precision(self.precision))
        return dense.reshape(self.in_features, self.out_features)

    def to_linear(self) -> nnx.Linear:
        """An ``nnx.Linear`` with the reconstructed kernel and the same bias, dtype and
        precision."""
        layer = nnx.Linear(self.in_features, self.out_features, use_bias=self.use_bias,
                           dtype=self.dtype, param_dtype=self.param_dtype,
                           precision=self.precision, kernel_init=nnx.initializers.zeros_init(),
                           rngs=nnx.Rngs(0))
        layer.kernel[...] = self.dense_kernel().astype(layer.kernel[...].dtype)
        if self.use_bias:
            layer.bias[...] = self.bias[...]
        return layer

    # -- cost model ------------------------------------------------------------------------
    def flops(self, batch_size: int) -> dict:
        """Forward FLOPs (2 × multiply-adds) for ``batch_size`` rows: ``{"factorized": ...,
        "reconstructed": ..., "dense": 2·B·in·out}`` (the formulas in the module docstring;
        the bias is left out)."""
        batch = check_positive_int(batch_size, "batch_size")
        in_shape = self.in_shape or (self.in_features,)
        out_shape = self.out_shape or (self.out_features,)
        fact, recon = _flops(self.kind, in_shape, out_shape, self.rank, batch)
        return {"factorized": fact, "reconstructed": recon,
                "dense": 2 * batch * self.in_features * self.out_features}

    def choose_implementation(self, batch_size: int) -> str:
        """What the forward does for ``batch_size`` rows: the set ``implementation``, or under
        ``"auto"`` the one with fewer FLOPs (factorized on ties)."""
        if self.implementation != "auto":
            return self.implementation
        f = self.flops(batch_size)
        return "factorized" if f["factorized"] <= f["reconstructed"] else "reconstructed"

    # -- forward ---------------------------------------------------------------------------
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x @ W + b`` over the last axis of ``x``."""
        x = jnp.asarray(x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have shape (..., {self.in_features}), got "
                             f"{tuple(x.shape)}.")
        bias = self.bias[...] if self.use_bias else None
        params = [v[...] for v in self._param_vars()]
        x, *arrays, bias = promote_dtype((x, *params, bias), dtype=self.dtype)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] == 0:  # an empty batch (the reshapes below need a size)
            y = jnp.zeros((0, self.out_features), x.dtype)
        elif self.choose_implementation(x2.shape[0]) == "reconstructed":
            y = jnp.matmul(x2, self._kernel(arrays), precision=self.precision)
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
        return _tt_apply(x, arrays, prec, self.kernel_impl)

    # -- from a trained layer --------------------------------------------------------------
    @classmethod
    def from_dense(cls, layer_or_kernel, *, kind: str = "lowrank", rank, bias=None,
                   in_shape=None, out_shape=None, implementation: str = "auto", dtype=None,
                   param_dtype=None, precision=None, key=None, partitioning=None,
                   kernel_impl: str = "auto", **fit_kwargs):
        """A factorized layer initialised by decomposing a trained kernel.

        ``lowrank``: the truncated SVD ``U S Vᵀ`` (:func:`tensorfact.svd`), stored as
        ``U S^{1/2}`` and ``S^{1/2} Vᵀ``; ``cp``: CP-ALS (:func:`tensorfact.cp`) with the weights
        spread evenly over the factors (``|w_r|^{1/N}`` each); ``tucker``: HOOI
        (:func:`tensorfact.tucker`); ``tt``: TT-SVD (``tensorfact.tt_matrix``). At
        ``rank="full"`` the result equals the dense layer up to rounding for lowrank, tucker
        and tt, and for cp too (through an explicit construction: one rank-one term per fibre
        of the largest mode, ``∏ dims / max dims`` of them).

        Args:
          layer_or_kernel: an ``nnx.Linear`` (its kernel, bias, dtype and precision are used)
            or a kernel array of shape ``(in_features, out_features)``.
          kind, rank, in_shape, out_shape, implementation, partitioning, kernel_impl: as in
            the constructor.
          bias: with a kernel array, an optional bias of shape ``(out_features,)`` (the layer
            then has ``use_bias=True``); must be None with a layer.
          dtype, precision: the layer's; by default those of ``layer_or_kernel`` if a layer.
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
          >>> small = FactorizedDense.from_dense(dense, kind="tucker", rank="full")
          >>> bool(jnp.allclose(small(x), dense(x), atol=1e-5))
          True
        """
        kind = _check_kind(kind)
        if isinstance(layer_or_kernel, nnx.Linear):
            if bias is not None:
                raise ValueError("bias must be None when layer_or_kernel is an nnx.Linear (its "
                                 "own bias is used).")
            layer = layer_or_kernel
            kernel = as_matrix(layer.kernel[...], "layer_or_kernel.kernel")
            bias = None if layer.bias is None else layer.bias[...]
            dtype = layer.dtype if dtype is None else dtype
            precision = layer.precision if precision is None else precision
        elif isinstance(layer_or_kernel, nnx.Module):
            raise TypeError(f"layer_or_kernel must be an nnx.Linear or a kernel array, got "
                            f"{type(layer_or_kernel).__name__}.")
        else:
            kernel = as_matrix(layer_or_kernel, "layer_or_kernel")
        in_features, out_features = kernel.shape
        if bias is not None:
            bias = jnp.asarray(bias)
            if bias.shape != (out_features,):
                raise ValueError(f"bias must have shape ({out_features},), got "
                                 f"{tuple(bias.shape)}.")
        param_dtype = kernel.dtype if param_dtype is None else param_dtype
        in_shape, out_shape = _tensorize(kind, in_features, out_features, in_shape, out_shape)
        resolved = _resolve_rank(kind, rank, in_shape, out_shape)
        full = isinstance(rank, str) and rank == "full"
        arrays = _decompose(kind, resolved, in_shape, out_shape, kernel, full, key, fit_kwargs)
        if kind == "lowrank":
            in_shape = out_shape = None
        out = cls(in_features, out_features, kind=kind, rank=resolved, in_shape=in_shape,
                  out_shape=out_shape, use_bias=bias is not None,
                  implementation=implementation, dtype=dtype, param_dtype=param_dtype,
                  precision=precision, rngs=None, partitioning=partitioning,
                  kernel_impl=kernel_impl, _values=(arrays, bias))
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
            return _cp_fibres(tensor)
        weights, factors = cp_decomposition(tensor, rank, key=key, **fit_kwargs)
        spread = jnp.abs(weights) ** (1.0 / len(factors))
        factors = [a * spread for a in factors]
        factors[0] = factors[0] * jnp.where(weights < 0, -1.0, 1.0).astype(factors[0].dtype)
        return factors
    if kind == "tucker":
        core, factors = tucker(tensor, rank, key=key, **fit_kwargs)
        return [core] + list(factors)
    tt_matrix = _tt_tools()[1]
    return list(tt_matrix(kernel, in_shape, out_shape, rank, **fit_kwargs).cores)


def _cp_fibres(tensor):
    """An exact CP form of any tensor: one rank-one term per fibre of the largest mode ``m``,
    ``x = Σ_c x[.., :, ..]_c ∘ e_{c_1} ∘ ...`` over the multi-indices ``c`` of the other modes."""
    dims = tensor.shape
    m = int(np.argmax(dims))
    others = [k for k in range(len(dims)) if k != m]
    columns = algebra.unfold(tensor, m)           # (I_m, ∏ others), others in C order
    index = np.unravel_index(np.arange(columns.shape[1]), [dims[k] for k in others])
    factors = [None] * len(dims)
    factors[m] = columns
    for k, idx in zip(others, index):
        factors[k] = jnp.eye(dims[k], dtype=tensor.dtype)[:, idx]
    return factors
