"""What the layers of :mod:`tensorfact.nn` share: the option types, the checks of ``rngs`` and
of a layer's input, the tensorization of a weight (``in_features = ∏ I_k``), the resolution of
``rank`` arguments, the one-program initial draw, and the exact CP form of a tensor.

A private module made to be shared (the names inside are public so that the layers can import
them); nothing here is part of the API.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tensorfact import algebra
from tensorfact._checks import as_matrix, check_positive_int, count_nonfinite, is_traced
from tensorfact.kernels import tt_chain_matmul
from tensorfact.ranks import rank_for_params

__all__ = ["Kind", "ConvKind", "Contraction", "check_rngs", "params_key", "check_input",
           "check_finite", "weight_of", "broadcast", "balanced_factors", "tensorize",
           "rank_kind", "largest_within", "resolve_rank", "full_rank", "n_factor_params",
           "tt_core_shapes", "draw", "cp_fibres", "spread_cp", "tt_apply", "no_bias",
           "id_digits", "valid_ids", "tt_rows"]

#: The formats of :class:`~tensorfact.nn.FactorizedDense` (and of :func:`~tensorfact.nn.compress`).
Kind = Literal["lowrank", "cp", "tucker", "tt"]
#: The formats of :class:`~tensorfact.nn.FactorizedConv`.
ConvKind = Literal["tucker", "cp"]
#: Whether a layer contracts its input with the factors, with the rebuilt weight, or picks the
#: one with fewer FLOPs.
Contraction = Literal["auto", "factorized", "dense"]

_DEFAULT_ORDER = {"cp": 2, "tucker": 2, "tt": 3}
_TRUNC_STD = 0.87962566103423978  # std of a standard normal truncated to [-2, 2]


# ---------------------------------------------------------------------------------------------
# arguments


def check_rngs(rngs, why: str) -> nnx.Rngs:
    """``rngs`` if it is an ``nnx.Rngs``; otherwise an error that names ``rngs`` and says what
    it is needed for (``None``: ``ValueError``, another type: ``TypeError``)."""
    hint = "pass rngs=nnx.Rngs(seed)"
    if rngs is None:
        raise ValueError(f"rngs is required {why}: {hint}.")
    if not isinstance(rngs, nnx.Rngs):
        raise TypeError(f"rngs must be an nnx.Rngs (needed {why}), got {type(rngs).__name__} "
                        f"{rngs!r}: {hint}.")
    return rngs


#: the largest stack of same-shaped arrays an adapter's batched initialisation builds from
#: separate layers: stacking copies every array, and on the CPU a fresh 64 MiB buffer costs
#: ~20 ms of page faults (eight 4096² splits ran 0.49 s one by one and 0.96 s as one vmapped
#: program over their stack); below this size one program beats a dispatch per layer
STACK_BYTES = 16 * 2**20


def stack_chunks(n_items: int, item_bytes: int) -> list[range]:
    """``range(n_items)`` cut into runs of near-equal length (at most two distinct lengths, so
    at most two compilations), each at most :data:`STACK_BYTES` when stacked; runs of one item
    where an item alone is that large."""
    per = max(1, STACK_BYTES // max(1, item_bytes))
    n_runs = -(-n_items // per)
    runs, start = [], 0
    for k in range(n_runs):
        stop = start + n_items // n_runs + (k < n_items % n_runs)
        runs.append(range(start, stop))
        start = stop
    return runs


def embed_holding(table, layer_like) -> nnx.Embed:
    """An ``nnx.Embed`` holding ``table`` ``(num_embeddings, features)``, with the ``dtype`` and
    ``param_dtype`` of ``layer_like`` (a factorized embedding's ``to_layer``)."""
    n, f = (int(d) for d in table.shape)
    layer = nnx.Embed(n, f, dtype=layer_like.dtype, param_dtype=layer_like.param_dtype,
                      embedding_init=nnx.initializers.zeros_init(), rngs=nnx.Rngs(0))
    layer.embedding[...] = table.astype(layer.embedding[...].dtype)
    return layer


def params_key(rngs, why: str) -> jax.Array:
    """The next key of ``rngs``'s ``params`` stream (or of its ``default`` one)."""
    rngs = check_rngs(rngs, why)
    try:
        return rngs.params()
    except AttributeError:
        raise ValueError(f"rngs has neither a 'params' nor a 'default' stream (needed {why}): "
                         "pass rngs=nnx.Rngs(seed) or nnx.Rngs(params=seed).") from None


def check_input(x, features: int, n_spatial: int = 0) -> jax.Array:
    """``x`` as an array of shape ``(..., features)`` (``(..., spatial..., features)`` with
    ``n_spatial`` spatial axes), or a ``ValueError`` naming ``x`` and the shape."""
    x = jnp.asarray(x)
    if x.ndim < n_spatial + 1 or x.shape[-1] != features:
        spatial = f"{n_spatial} spatial dims, " if n_spatial else ""
        raise ValueError(f"x must have shape (..., {spatial}{features}), got {tuple(x.shape)}.")
    return x


def check_finite(x, name: str) -> None:
    """A ``ValueError`` naming ``name`` when the concrete array ``x`` holds NaN or Inf (under a
    transformation the values are unknown and nothing is checked)."""
    if is_traced(x):
        return
    bad = count_nonfinite(x)
    if is_traced(bad):  # a concrete array inside nnx.eval_shape / jit: its count is traced
        return
    if int(bad):
        raise ValueError(f"{name} contains {int(bad)} NaN or Inf value(s).")


def check_rank_within(rank, limit: int, what: str) -> int:
    """``rank`` as a positive int at most ``limit`` (an error naming ``rank`` and ``what``)."""
    rank = check_positive_int(rank, "rank")
    if rank > limit:
        raise ValueError(f"rank = {rank} is larger than {what} = {limit}.")
    return rank


def pair_split(shape, features: int, name: str, features_name: str) -> tuple[int, int]:
    """``(a, b)`` with ``a b = features``: the given pair, checked (errors naming ``name``), or
    the most balanced split, smaller factor first (LoKr's and the Kronecker adapter's
    ``in_shape`` / ``out_shape``)."""
    if shape is None:
        return tuple(sorted(balanced_factors(features, 2)))
    if (isinstance(shape, (str, numbers.Integral)) or not hasattr(shape, "__len__")
            or len(shape) != 2):
        raise ValueError(f"{name} must be a pair (a, b) with a * b = {features_name}, got "
                         f"{shape!r}.")
    shape = tuple(check_positive_int(s, f"{name}[{k}]") for k, s in enumerate(shape))
    if shape[0] * shape[1] != features:
        raise ValueError(f"{name} = {shape} has product {shape[0] * shape[1]}, which must equal "
                         f"{features_name} = {features}.")
    return shape


def dense_source(layer, bias, dtype, precision):
    """``(kernel, bias, dtype, precision)`` of what a factorized dense layer is fitted to: an
    ``nnx.Linear`` (its own bias, and its dtype and precision where those are None; a ``bias``
    passed beside it is an error) or an ``in × out`` array with an optional ``bias`` of shape
    ``(out,)``."""
    kernel, linear = weight_of(layer, nnx.Linear, "kernel")
    if linear is not None:
        if bias is not None:
            raise ValueError("bias must be None when layer is an nnx.Linear (its own bias is "
                             "used).")
        bias = None if linear.bias is None else linear.bias[...]
        dtype = linear.dtype if dtype is None else dtype
        precision = linear.precision if precision is None else precision
    if bias is not None:
        bias = jnp.asarray(bias)
        if bias.shape != (kernel.shape[1],):
            raise ValueError(f"bias must have shape ({kernel.shape[1]},), got "
                             f"{tuple(bias.shape)}.")
    return kernel, bias, dtype, precision


def weight_of(layer, plain: type, weight: str, name: str = "layer"):
    """``(matrix, plain_layer)`` from ``layer``: an instance of ``plain`` (an ``nnx.Linear``, an
    ``nnx.Embed``), whose attribute ``weight`` is read, or a 2-D array (then
    ``plain_layer`` is None). Checked for a 2-D shape and for finite values."""
    if isinstance(layer, plain):
        matrix = as_matrix(getattr(layer, weight)[...], f"{name}.{weight}")
        plain_layer = layer
    elif isinstance(layer, nnx.Module):
        raise TypeError(f"{name} must be an nnx.{plain.__name__} or a weight array, got "
                        f"{type(layer).__name__}.")
    else:
        matrix, plain_layer = as_matrix(layer, name), None
        weight = None
    check_finite(matrix, name if weight is None else f"{name}.{weight}")
    return matrix, plain_layer


def broadcast(value, n: int) -> tuple:
    """An ``nnx.Conv`` geometry argument (None, an int or a sequence) as an ``n``-tuple."""
    if value is None:
        return (1,) * n
    if isinstance(value, numbers.Integral):
        return (int(value),) * n
    return tuple(value)


def no_bias():
    """The value of a ``bias`` attribute when the layer has none (as ``nnx.Linear``)."""
    return nnx.data(None)


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
      >>> from tensorfact.nn import balanced_factors
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


def tensorize(kind, in_features: int, out_features: int, in_shape, out_shape,
              names=("in_features", "out_features")):
    """``(in_shape, out_shape)``: the tensorization of an ``(in_features, out_features)``
    weight for ``kind``, checked, with :func:`balanced_factors` where a shape is None.

    A TT-matrix pairs input and output factors: a missing shape takes the other's length, and
    given shapes of different lengths get the shorter padded with trailing 1s (as a user of
    tensorly-torch's tensorized layers would write them)."""
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
    in_shape = _check_shape(in_shape, in_features, "in_shape", names[0])
    if out_shape is None:
        out_shape = balanced_factors(out_features, len(in_shape) if kind == "tt" else order)
    out_shape = _check_shape(out_shape, out_features, "out_shape", names[1])
    if kind == "tt":
        d = max(len(in_shape), len(out_shape))
        in_shape = in_shape + (1,) * (d - len(in_shape))
        out_shape = out_shape + (1,) * (d - len(out_shape))
    return in_shape, out_shape


def tt_core_shapes(in_shape, out_shape, rank) -> tuple:
    """The shapes ``(r_{k-1}, m_k, n_k, r_k)`` of a TT-matrix's cores."""
    return tuple((rank[k], m, n, rank[k + 1]) for k, (m, n) in enumerate(zip(in_shape,
                                                                              out_shape)))


# ---------------------------------------------------------------------------------------------
# ranks


def rank_kind(rank, expected: str, *, tuples: bool):
    """Sorts a ``rank`` argument: ``("full", None)``, ``("int", r)``, ``("fraction", f)`` with
    ``f`` in ``(0, 1]`` or (with ``tuples``) ``("tuple", ranks)``; anything else is a
    ``ValueError`` that says what is ``expected``."""
    if isinstance(rank, str):
        if rank != "full":
            raise ValueError(f"rank must be {expected}, got {rank!r}.")
        return "full", None
    if isinstance(rank, (bool, np.bool_)):
        raise ValueError(f"rank must be {expected}, got {rank!r}.")
    if isinstance(rank, numbers.Integral):
        return "int", check_positive_int(rank, "rank")
    if isinstance(rank, numbers.Real):
        if not 0 < float(rank) <= 1:
            raise ValueError(f"rank as a float is a fraction of the dense parameter count and "
                             f"must be in (0, 1], got {rank!r}.")
        return "fraction", float(rank)
    if tuples and isinstance(rank, (Sequence, np.ndarray)) and not isinstance(rank, str):
        return "tuple", tuple(check_positive_int(r, f"rank[{k}]") for k, r in enumerate(rank))
    raise ValueError(f"rank must be {expected}, got {rank!r}.")


def largest_within(budget: float, candidate, count, r_max: int):
    """The largest common rank ``r`` in ``1..r_max`` whose ranks ``candidate(r)`` hold at most
    ``budget`` parameters (``count``); ``candidate(1)`` when none does."""
    best = candidate(1)
    for r in range(2, r_max + 1):
        cand = candidate(r)
        if count(cand) > budget:
            break
        best = cand
    return best


def n_factor_params(kind, in_shape, out_shape, rank) -> int:
    """Number of scalars in the factors of a ``kind`` weight of shape ``in_shape + out_shape``."""
    dims = in_shape + out_shape
    if kind == "lowrank":
        return rank * (dims[0] + dims[1])
    if kind == "cp":
        return rank * sum(dims)
    if kind == "tucker":
        return math.prod(rank) + sum(i * r for i, r in zip(dims, rank))
    return sum(math.prod(s) for s in tt_core_shapes(in_shape, out_shape, rank))


def full_rank(kind, in_shape, out_shape):
    """The lossless rank: ``min(in, out)``; CP: ``∏ dims / max dims``; Tucker:
    ``min(I_k, ∏_{m≠k} I_m)``; TT: ``(1, min(∏_{j≤k} m_j n_j, ∏_{j>k} m_j n_j), ..., 1)``."""
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


def resolve_rank(kind, rank, in_shape, out_shape):
    """The ``kind``'s rank (an int, or a tuple for Tucker and TT) from a ``rank`` argument: an
    int (capped mode by mode for Tucker and TT), a float in ``(0, 1]`` (the largest rank whose
    factors hold at most that fraction of the ``∏ dims`` dense parameters), ``"full"`` or a
    tuple (Tucker: one rank per mode; TT: ``(1, r_1, ..., r_{d-1}, 1)`` or the ``d − 1`` inner
    ranks)."""
    dims = in_shape + out_shape
    full = full_rank(kind, in_shape, out_shape)
    tuples = kind in ("tucker", "tt")
    expected = ('an int, a float in (0, 1] or "full"' if kind in ("lowrank", "cp") else
                'an int, a float in (0, 1], "full" or a tuple')
    if not tuples and isinstance(rank, (Sequence, np.ndarray)) and not isinstance(rank, str):
        raise ValueError(f"rank must be {expected} for kind {kind!r}, got {rank!r}.")
    what, value = rank_kind(rank, expected, tuples=tuples)
    if what == "full":
        return full
    if what == "int":
        if kind == "lowrank" and value > full:
            raise ValueError(f'rank = {value} is larger than min(in_features, out_features) = '
                             f'{full} for kind "lowrank".')
        return _capped(kind, value, full)
    if what == "fraction":
        budget = value * math.prod(dims)
        if kind == "lowrank":
            return rank_for_params(dims, value)
        if kind == "cp":
            return max(int(budget // sum(dims)), 1)
        return largest_within(budget, lambda r: _capped(kind, r, full),
                              lambda r: n_factor_params(kind, in_shape, out_shape, r), max(full))
    if kind == "tucker":
        if len(value) != len(dims):
            raise ValueError(f"rank must hold one Tucker rank per mode of in_shape + "
                             f"out_shape = {dims}, got {value}.")
        where = "of in_shape + out_shape"
    else:
        if len(value) == len(full) - 2:  # the d − 1 inner ranks
            value = (1,) + value + (1,)
        if len(value) != len(full) or value[0] != 1 or value[-1] != 1:
            raise ValueError(f"rank must be the TT ranks (1, r_1, ..., r_{len(full) - 2}, 1) "
                             f"of length {len(full)} (or the {len(full) - 2} inner ones), got "
                             f"{value}.")
        where = "of the TT-matrix"
    for k, (r, f) in enumerate(zip(value, full)):
        if r > f:
            raise ValueError(f"rank[{k}] = {r} exceeds the lossless rank {f} of that mode "
                             f"{where} {dims} (full ranks {full}).")
    return value


# ---------------------------------------------------------------------------------------------
# initialisation and exact forms


def _trunc_normal(key, shape, variance, dtype):
    """Normal truncated at ±2σ, rescaled to exactly ``variance`` (as Flax's lecun_normal)."""
    std = math.sqrt(variance) / _TRUNC_STD
    return std * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)


@functools.partial(jax.jit, static_argnames=("shapes", "variances", "dtype", "truncated"))
def draw(key, shapes, variances, dtype, truncated=True):
    """Arrays of the given ``shapes``, zero-mean with the given ``variances``, from one flat
    draw (one random-bit generator to compile, not one per array), each cut out, reshaped and
    scaled. ``truncated``: a normal truncated at ±2σ (as Flax's ``lecun_normal``), else a
    plain normal."""
    sizes = [math.prod(shp) for shp in shapes]
    if truncated:
        flat = _trunc_normal(key, (sum(sizes),), 1.0, dtype)
    else:
        flat = jax.random.normal(key, (sum(sizes),), dtype)
    offsets = np.cumsum([0] + sizes)
    return [math.sqrt(var) * flat[o:o + n].reshape(shp)
            for o, n, shp, var in zip(offsets, sizes, shapes, variances)]


def cp_fibres(tensor):
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


def spread_cp(weights, factors):
    """Factors without weights: ``|w_r|^{1/N}`` on each of the ``N`` factors (balanced norms),
    the signs on the first."""
    spread = jnp.abs(weights) ** (1.0 / len(factors))
    factors = [a * spread for a in factors]
    factors[0] = factors[0] * jnp.where(weights < 0, -1.0, 1.0).astype(factors[0].dtype)
    return factors


def tt_apply(x, cores, precision, impl):
    """``x @ W`` for ``x`` of shape ``(B, ∏ m_k)`` and a TT-matrix ``W``, one core at a time
    (Novikov et al., "Tensorizing Neural Networks", NeurIPS 2015), by
    :func:`tensorfact.kernels.tt_chain_matmul` (``impl``: the fused Pallas kernel or XLA's
    einsums)."""
    return tt_chain_matmul(x, cores, impl=impl, precision=precision)


# ---------------------------------------------------------------------------------------------
# embedding lookups (TTEmbed, FactorizedEmbed): rows of a tensorized table without forming it


def id_digits(ids, in_shape):
    """The mixed-radix digits ``(i_1, ..., i_d)`` of the flat ``ids`` in ``in_shape`` (C order,
    ``i_1`` slowest), one array of ``ids``' shape per factor."""
    strides = [math.prod(in_shape[k + 1:]) for k in range(len(in_shape))]
    return [(ids // stride) % m for m, stride in zip(in_shape, strides)]


def valid_ids(ids, n: int):
    """``(valid, ids)``: which ids lie in ``[0, n)``, and the ids as a signed integer type wide
    enough for ``n`` (0 where invalid). The test runs in the ids' own dtype with a bound it can
    represent: a ``uint8`` id compared with ``n = 1000`` would wrap ``n`` to 232."""
    info = jnp.iinfo(ids.dtype)
    valid = ids >= 0 if info.min < 0 else jnp.ones(ids.shape, bool)
    if n <= info.max:
        valid = valid & (ids < jnp.asarray(n, ids.dtype))
    wide = jnp.int64 if n > np.iinfo(np.int32).max else jnp.int32
    return valid, jnp.where(valid, ids, 0).astype(wide)


def tt_rows(ids, cores, in_shape, precision):
    """Rows of the TT-matrix with ``cores`` ``(r_{k-1}, m_k, n_k, r_k)`` at integer ``ids``
    (flat, shape ``(B,)``, in ``[0, ∏ in_shape)``): ``(B, features)``. Each core is sliced at
    its digit of the id and the slices are chained left to right (the engine of
    :class:`~tensorfact.nn.TTEmbed` and of ``FactorizedEmbed(kind="tt")``)."""
    t = None
    for g, digit in zip(cores, id_digits(ids, in_shape)):
        piece = jnp.take(g, digit, axis=1)             # (r, B, n, r'): this core's slices
        if t is None:
            t = piece[0]                               # r_0 = 1: (B, n_1, r_1)
        else:
            t = jnp.einsum("bpa,abnc->bpnc", t, piece, precision=precision)
            t = t.reshape(t.shape[0], -1, t.shape[-1])
    return t[..., 0]                                   # r_d = 1
