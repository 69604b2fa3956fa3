"""Causal self-attention layers for Flax NNX with factorized projections and small KV caches.

Three layers share one interface and one attention core:

* :class:`TensorProductAttention` (TPA; Zhang et al., "Tensor Product Attention Is All You
  Need", arXiv:2501.06425, 2025): each token's queries, keys and values are sums of outer
  products of a *head factor* and a *dimension factor*, both linear in the token; the KV cache
  holds the factors.
* :class:`MultiMatrixFactorizationAttention` (MFA; Hu et al., "Multi-matrix Factorization
  Attention", arXiv:2412.19255, ACL Findings 2025, used in StepFun's Step-3): many query heads
  through a low-rank query projection, one shared key head and one shared value head (as MQA);
  with ``key_reuse=True`` (MFA-KR) the value is re-parameterised from the key, so only the key
  is cached.
* :class:`MultiHeadAttention`: plain multi-head attention with the same interface, the
  baseline the other two are measured against.

**Shared interface.** ``layer(x, *, mask=None)`` runs a whole sequence ``x`` of shape
``(batch, seq, features)`` under the causal mask (and an optional padding ``mask`` of shape
``(batch, seq)``, True for real tokens); ``layer.init_cache(batch_size, max_length)`` returns an
empty :class:`AttentionCache`; ``layer.decode_step(x_t, cache)`` takes one token per sequence
(``(batch, features)``) and returns ``(y_t, new_cache)`` without changing the layer, so it runs
under ``jax.jit`` / ``nnx.jit``; ``layer.cache_bytes_per_token`` is the number of bytes the
cache holds per token of one sequence.

**Attention core.** For queries ``q_t ∈ R^{h×d}`` and keys/values ``k_s, v_s`` (one head shared
by all query heads, or one per head) the output of head ``i`` at position ``t`` is
``o_{t,i} = Σ_{s≤t} softmax_s(q_{t,i}·k_{s,i} / √d) v_{s,i}``, and the layer returns
``[o_{t,1}, …, o_{t,h}] W^O`` with ``W^O ∈ R^{h·d × features}``. The scores and the softmax
are computed in float32 whatever the compute ``dtype``. A query row with no visible key (a
padding token at the start) gives zeros, never NaN.

**RoPE** (Su et al., "RoFormer", 2021) rotates pairs ``(u_j, u_{j+d/2})`` of a vector at position
``p`` by the angle ``p · base^{-2j/d}`` (the "rotate half" layout of LLaMA and GPT-NeoX), so
``head_dim`` must be even. It is linear in the vector, so for TPA rotating the dimension
factors ``b`` rotates the whole sum ``Σ_r a_r ⊗ b_r`` (the paper's "RoPE on the factors").
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype

from tensorfact._checks import Precision, check_positive_int, is_traced
from tensorfact._numerics import pow2_scale, resolve_precision
from tensorfact.nn._common import check_input, draw, params_key
from tensorfact.nn._partitioning import param, partition_specs

__all__ = ["AttentionCache", "TensorProductAttention", "MultiMatrixFactorizationAttention",
           "MultiHeadAttention"]


class AttentionCache(NamedTuple):
    """The decode state of an attention layer (a pytree; pass it through ``jax.jit``).

    Attributes:
      entries: a tuple of arrays of shape ``(batch, max_length, ...)``, what the layer keeps per
        token (see each layer's ``cache_bytes_per_token``).
      index: an int32 scalar, the position the next token is written at (the number of tokens
        decoded so far).
    """

    entries: tuple
    index: jax.Array


# ---------------------------------------------------------------------------------------------
# helpers: RoPE and the causal attention core


def rope(u, positions, base: float = 10000.0):
    """Rotary position embedding of ``u`` (``(batch, seq, d)`` or ``(batch, seq, k, d)``, ``k``
    a head or rank axis) at ``positions`` (``(seq,)`` integers): pairs
    ``(u_j, u_{j+d/2})`` rotated by ``positions · base^{-2j/d}``. Angles in float32; the
    result has ``u``'s dtype."""
    d = u.shape[-1]
    inv_freq = base ** (-np.arange(0, d // 2, dtype=np.float64) * 2.0 / d)
    angle = positions.astype(jnp.float32)[:, None] * jnp.asarray(inv_freq, jnp.float32)
    cos, sin = jnp.cos(angle), jnp.sin(angle)                  # (seq, d/2)
    shape = (cos.shape[0],) + (1,) * (u.ndim - 3) + (d // 2,)  # over (batch, seq, [k,] d)
    cos, sin = cos.reshape(shape), sin.reshape(shape)
    u1, u2 = u[..., : d // 2].astype(jnp.float32), u[..., d // 2:].astype(jnp.float32)
    out = jnp.concatenate([u1 * cos - u2 * sin, u2 * cos + u1 * sin], axis=-1)
    return out.astype(u.dtype)


def attend(q, k, v, valid, precision):
    """Softmax attention: ``q`` ``(B, T, h, d)``, ``k`` and ``v`` ``(B, S, h, d)`` or, shared by
    all heads, ``(B, S, d)``; ``valid`` ``(B, T, S)`` booleans. Returns ``(B, T, h, d)``; a row
    with no valid key gives zeros.

    The scores are formed from ``q / c_q`` and ``k / c_k`` (``c`` the power of two of each
    one's largest entry, so the division is exact) and scaled back inside the exponent:
    ``exp(c_q c_k (s' − max s') / √d)``. Where the true scores pass float32's range (inputs
    around 1e20 and beyond) the softmax then tends to its limit, attention on the largest
    score, instead of ``inf − inf = NaN``."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    c_q, c_k = (jax.lax.stop_gradient(pow2_scale(t)).astype(jnp.float32) for t in (q, k))
    q = q / c_q.astype(q.dtype)
    k = k / c_k.astype(k.dtype)
    if k.ndim == 3:
        scores = jnp.einsum("bthd,bsd->bhts", q, k, precision=precision,
                            preferred_element_type=jnp.float32)
    else:
        scores = jnp.einsum("bthd,bshd->bhts", q, k, precision=precision,
                            preferred_element_type=jnp.float32)
    valid = valid[:, None]                                         # (B, 1, T, S)
    scores = jnp.where(valid, scores, -jnp.inf)
    top = jnp.max(scores, axis=-1, keepdims=True, initial=-jnp.inf)   # (an empty S: -inf)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    # (s' − top) ≤ 0 times each positive factor in turn: at worst −inf, never NaN
    logits = (scores - top) * (c_q * scale) * c_k
    e = jnp.where(valid, jnp.exp(logits), 0.0)
    total = jnp.sum(e, axis=-1, keepdims=True)
    p = (e / jnp.where(total > 0, total, 1.0)).astype(v.dtype)
    if v.ndim == 3:
        return jnp.einsum("bhts,bsd->bthd", p, v, precision=precision)
    return jnp.einsum("bhts,bshd->bthd", p, v, precision=precision)


def _rms_normalize(u, eps):
    """``u / √(mean(u²) + eps)`` over the last axis, without squaring ``u`` itself: each row is
    divided by the power of two ``s`` of its largest entry first (exact), and ``eps`` enters as
    ``eps / s²`` (rows of large entries) or the mean as ``mean(u'²) s²`` (small ones), so rows
    around 1e±30 neither overflow (``u²`` = inf, a query of zeros) nor underflow."""
    peak = jnp.max(jnp.abs(u), axis=-1, keepdims=True, initial=0.0)
    ok = jnp.isfinite(peak) & (peak > 0)
    _, exponent = jnp.frexp(jnp.where(ok, peak, 1.0))
    s = jax.lax.stop_gradient(jnp.where(ok, jnp.ldexp(jnp.ones_like(peak), exponent - 1), 1.0))
    w = u / s
    ms = jnp.mean(w * w, axis=-1, keepdims=True)
    # (the branch not taken stays finite or zero: no NaN reaches the gradient)
    return jnp.where(s >= 1, w * jax.lax.rsqrt(ms + eps / (s * s)),
                     u * jax.lax.rsqrt(ms * s * s + eps))


def _heads_and_dim(num_heads, features, head_dim, rope_on):
    num_heads = check_positive_int(num_heads, "num_heads")
    features = check_positive_int(features, "features")
    if head_dim is None:
        if features % num_heads:
            raise ValueError(f"features = {features} is not divisible by num_heads = "
                             f"{num_heads}; pass head_dim explicitly.")
        head_dim = features // num_heads
    head_dim = check_positive_int(head_dim, "head_dim")
    if rope_on and head_dim % 2:
        raise ValueError(f"head_dim = {head_dim} must be even with rope=True (RoPE rotates "
                         f"pairs of coordinates).")
    return num_heads, features, head_dim


class _CausalAttention(nnx.Module):
    """The shared machinery. A subclass calls ``_setup`` and ``_make_params`` (its kernels,
    one of them the output projection ``w_o``) and implements ``_param_names``,
    ``_entry_shapes`` (the per-token shapes of the cache entries), ``_queries`` (``(B, T, h,
    d)``, rotated), ``_entries`` (what is cached for new tokens) and ``_keys_values`` (keys and
    values, ``(B, S, h, d)`` or shared ``(B, S, d)``, from the entries)."""

    def _setup(self, num_heads, features, head_dim, rope_on, rope_base, dtype, param_dtype,
               precision):
        self.num_heads, self.features, self.head_dim = _heads_and_dim(
            num_heads, features, head_dim, rope_on)
        self.rope = bool(rope_on)
        try:
            self.rope_base = float(rope_base)
        except (TypeError, ValueError):
            self.rope_base = math.nan
        if not (math.isfinite(self.rope_base) and self.rope_base > 1.0):
            raise ValueError(f"rope_base must be a finite number > 1, got {rope_base!r}.")
        self.dtype, self.param_dtype = dtype, param_dtype
        self.precision = resolve_precision(precision)

    def _make_params(self, kernels, partitioning, rngs, why, zeros=(), ones=()):
        """``kernels``: ``[(name, shape, variance)]`` drawn (truncated normal, one draw);
        ``zeros`` / ``ones``: ``[(name, shape)]`` set to constants. Sets the attributes, each
        with its ``partitioning`` spec."""
        groups = [(n, [s]) for n, s, _ in kernels] + [(n, [s]) for n, s in [*zeros, *ones]]
        specs = partition_specs(partitioning, groups)  # checked before any array is drawn
        arrays = draw(params_key(rngs, why), tuple(s for _, s, _ in kernels),
                      tuple(v for _, _, v in kernels), jnp.dtype(self.param_dtype))
        for (name, shape, _), a in zip(kernels, arrays):
            setattr(self, name, param(a, specs[name][0]))
        for name, shape in zeros:
            setattr(self, name, param(jnp.zeros(shape, self.param_dtype), specs[name][0]))
        for name, shape in ones:
            setattr(self, name, param(jnp.ones(shape, self.param_dtype), specs[name][0]))

    def _rope(self, u, positions):
        return rope(u, positions, self.rope_base) if self.rope else u

    @property
    def _cache_dtype(self):
        return jnp.dtype(self.dtype if self.dtype is not None else self.param_dtype)

    @property
    def cache_bytes_per_token(self) -> int:
        """Bytes the cache holds per token of one sequence (the ``entries`` of
        :meth:`init_cache` at the layer's compute ``dtype``, else its ``param_dtype``)."""
        return sum(math.prod(s) for s in self._entry_shapes()) * self._cache_dtype.itemsize

    def init_cache(self, batch_size: int, max_length: int, dtype=None) -> AttentionCache:
        """An empty :class:`AttentionCache` for ``batch_size`` sequences of up to
        ``max_length`` tokens (entries in ``dtype``, by default the layer's compute dtype, else
        its ``param_dtype``)."""
        batch_size = check_positive_int(batch_size, "batch_size")
        max_length = check_positive_int(max_length, "max_length")
        dtype = self._cache_dtype if dtype is None else jnp.dtype(dtype)
        entries = tuple(jnp.zeros((batch_size, max_length) + s, dtype)
                        for s in self._entry_shapes())
        return AttentionCache(entries, jnp.zeros((), jnp.int32))

    def _arrays(self, x, names):
        params = [getattr(self, n)[...] for n in names]
        x, *params = promote_dtype((x, *params), dtype=self.dtype)
        return x, dict(zip(names, params))

    def _mm(self, a, b):
        return jnp.matmul(a, b, precision=self.precision)

    def _finish(self, o, p):
        b, t = o.shape[:2]
        return self._mm(o.reshape(b, t, self.num_heads * self.head_dim), p["w_o"])

    def __call__(self, x, *, mask=None):
        """The causal self-attention of ``x`` (``(batch, seq, features)``); ``mask``
        (``(batch, seq)``, boolean or 0/1, True/1 for real tokens) hides padding tokens as
        keys. A query with no visible key (padding before the first real token) gives 0."""
        x = check_input(x, self.features)
        if x.ndim != 3:
            raise ValueError(f"x must have shape (batch, seq, {self.features}), got "
                             f"{tuple(x.shape)}.")
        b, t = x.shape[:2]
        valid = jnp.tril(jnp.ones((t, t), bool))[None]
        if mask is not None:
            mask = jnp.asarray(mask)
            if mask.shape != (b, t):
                raise ValueError(f"mask must have shape (batch, seq) = {(b, t)}, got "
                                 f"{tuple(mask.shape)}.")
            if mask.dtype != jnp.bool_:
                if not is_traced(mask) and not bool(jnp.all((mask == 0) | (mask == 1))):
                    raise ValueError(f"mask must be boolean or 0/1 (True/1 = real token), got "
                                     f"values {np.unique(np.asarray(mask))[:5].tolist()}.")
                mask = mask != 0
            valid = valid & mask[:, None, :]
        valid = jnp.broadcast_to(valid, (b, t, t))
        x, p = self._arrays(x, self._param_names())
        positions = jnp.arange(t)
        q = self._queries(x, positions, p)
        k, v = self._keys_values(self._entries(x, positions, p), positions, p)
        return self._finish(attend(q, k, v, valid, self.precision), p)

    def decode_step(self, x_t, cache: AttentionCache):
        """One token per sequence: ``x_t`` of shape ``(batch, features)`` is written into
        ``cache`` at ``cache.index`` and attends to every token so far. Returns ``(y_t,
        new_cache)`` with ``y_t`` of shape ``(batch, features)``. Pure: the layer is not
        changed. A step on a full cache is a ``ValueError`` in eager calls; under ``jit``
        (where the index is unknown) it returns NaN."""
        x_t = check_input(x_t, self.features)
        if x_t.ndim != 2:
            raise ValueError(f"x_t must have shape (batch, {self.features}), got "
                             f"{tuple(x_t.shape)}.")
        if not isinstance(cache, AttentionCache):
            raise TypeError(f"cache must be an AttentionCache (from init_cache), got "
                            f"{type(cache).__name__}.")
        shapes = self._entry_shapes()
        if len(cache.entries) != len(shapes) or any(
                e.shape[0] != x_t.shape[0] or e.shape[2:] != s
                for e, s in zip(cache.entries, shapes)):
            raise ValueError(f"cache does not fit this layer and batch: entries of shapes "
                             f"{[tuple(e.shape) for e in cache.entries]}, expected (batch = "
                             f"{x_t.shape[0]}, max_length) + each of {list(shapes)}.")
        max_length = cache.entries[0].shape[1]
        index = cache.index
        if not is_traced(index) and int(index) >= max_length:
            raise ValueError(f"cache is full: index = {int(index)} and max_length = "
                             f"{max_length}; init_cache with a larger max_length.")
        x, p = self._arrays(x_t[:, None], self._param_names())
        pos = jnp.reshape(index, (1,)).astype(jnp.int32)
        new = self._entries(x, pos, p)
        entries = tuple(jax.lax.dynamic_update_slice_in_dim(e, n.astype(e.dtype), index, axis=1)
                        for e, n in zip(cache.entries, new))
        positions = jnp.arange(max_length)
        q = self._queries(x, pos, p)
        k, v = self._keys_values(tuple(e.astype(x.dtype) for e in entries), positions, p)
        valid = jnp.broadcast_to(positions <= index, (x.shape[0], 1, max_length))
        y = self._finish(attend(q, k, v, valid, self.precision), p)[:, 0]
        y = jnp.where(index < max_length, y, jnp.nan)
        return y, AttentionCache(entries, index + 1)


class TensorProductAttention(_CausalAttention):
    r"""Tensor Product Attention (Zhang, Liu, Yuan, Qin, Yuan, Gu & Yao, "Tensor Product
    Attention Is All You Need", arXiv:2501.06425, 2025), with RoPE on the factors.

    For a token ``x_t ∈ R^{features}`` the queries of all ``h`` heads form one matrix

    ``Q_t = (1/R_q) Σ_{r=1}^{R_q} a^q_r(x_t) ⊗ b^q_r(x_t) ∈ R^{h × d}``,

    with head factors ``a^q_r = (x_t W^{aq})_r ∈ R^h`` and dimension factors ``b^q_r =
    RoPE_t((x_t W^{bq})_r) ∈ R^d`` (``W^{aq}: features × R_q h``, ``W^{bq}: features × R_q
    d``); ``K_t`` and ``V_t`` likewise with rank ``R_kv`` (``kv_rank``; no RoPE on ``b^v``).
    Head ``i`` then runs causal softmax attention with ``q = Q_t[i]``, ``k = K_s[i]``, ``v =
    V_s[i]`` and scale ``1/√d``, and the heads are joined by ``W^O: h d × features``.

    The cache holds the factors ``a^k, b^k, a^v, b^v`` of each token (``b^k`` already
    rotated): ``2 R_kv (h + d)`` numbers per token against MHA's ``2 h d``. This layer
    rebuilds ``K`` and ``V`` from them when it attends (the paper's fused kernel, which
    contracts the factors directly, is not implemented).

    With ``R_q = R_kv = h``, ``a_r ≡ R e_r`` (a unit head vector) and ``b_r = x W_r``, ``Q_t``
    is MHA's per-head projection: TPA contains MHA (tested).

    **Scale.** Queries, keys and values are products of two factors linear in ``x``, so the
    output is quadratic in ``x``: in float32 inputs up to about 1e±15 give outputs up to
    1e±30 (tested against a float64 reference); inputs near 1e30 give outputs near 1e60,
    which float32 cannot hold (inf or NaN), and inputs near 1e-30 underflow to zero.

    Args:
      num_heads: ``h``, the number of heads.
      features: the input's and the output's last axis.
      q_rank, kv_rank: ``R_q`` and ``R_kv``, the numbers of rank-one terms of ``Q`` and of
        ``K``, ``V`` (the paper's 6 / 2 or 6 / 1 are typical), keyword-only.
      head_dim: ``d``; by default ``features // num_heads``.
      rope: apply RoPE to ``b^q`` and ``b^k``; ``rope_base`` its base.
      dtype: the compute dtype (None: from the inputs and parameters, as in ``nnx.Linear``;
        ``jnp.bfloat16`` computes in bfloat16 from float32 parameters, softmax in float32).
      param_dtype: the parameters' dtype.
      precision: of the matmuls (None: JAX's default, as in Flax).
      partitioning: optional sharding annotations, a mapping from kernel name to a
        ``PartitionSpec`` or tuple of mesh axis names (Flax ``out_sharding`` metadata, checked
        as in :class:`~tensorfact.nn.FactorizedDense`); kernels left out are replicated.
        The kernels are ``w_aq``, ``w_bq``, ``w_ak``, ``w_bk``, ``w_av``, ``w_bv``
        (``features × R·h`` or ``features × R·d``) and ``w_o`` (``h d × features``), no
        biases; each is drawn with variance ``1 / fan-in``.
      rngs: ``nnx.Rngs`` with a ``params`` (or ``default``) stream.

    Returns (``__call__``): ``(batch, seq, features)``.

    Raises:
      ValueError: non-positive ``num_heads``, ``features``, ranks or ``head_dim``;
        ``features`` not divisible by ``num_heads`` without ``head_dim``; an odd ``head_dim``
        with ``rope``; ``x`` without last axis ``features``; a full cache in ``decode_step``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import TensorProductAttention
      >>> attn = TensorProductAttention(4, 32, q_rank=4, kv_rank=2, rngs=nnx.Rngs(0))
      >>> attn(jnp.ones((2, 5, 32))).shape
      (2, 5, 32)
      >>> attn.cache_bytes_per_token, 2 * 4 * 8 * 4    # 2·R_kv·(h + d)·4 bytes against MHA's
      (192, 256)
      >>> cache = attn.init_cache(2, 16)
      >>> y, cache = attn.decode_step(jnp.ones((2, 32)), cache)
      >>> y.shape, int(cache.index)
      ((2, 32), 1)
    """

    def __init__(self, num_heads: int, features: int, *, q_rank: int, kv_rank: int,
                 head_dim: int | None = None, rope: bool = True, rope_base: float = 10000.0,
                 dtype=None, param_dtype=jnp.float32, precision: Precision = None,
                 partitioning=None, rngs: nnx.Rngs):
        self._setup(num_heads, features, head_dim, rope, rope_base, dtype, param_dtype,
                    precision)
        self.q_rank = check_positive_int(q_rank, "q_rank")
        self.kv_rank = check_positive_int(kv_rank, "kv_rank")
        f, h, d, rq, rk = self.features, self.num_heads, self.head_dim, self.q_rank, self.kv_rank
        kernels = [("w_aq", (f, rq * h), 1 / f), ("w_bq", (f, rq * d), 1 / f),
                   ("w_ak", (f, rk * h), 1 / f), ("w_bk", (f, rk * d), 1 / f),
                   ("w_av", (f, rk * h), 1 / f), ("w_bv", (f, rk * d), 1 / f),
                   ("w_o", (h * d, f), 1 / (h * d))]
        self._make_params(kernels, partitioning, rngs, "to draw TensorProductAttention's kernels")

    def _param_names(self):
        return ("w_aq", "w_bq", "w_ak", "w_bk", "w_av", "w_bv", "w_o")

    def _entry_shapes(self):
        h, d, rk = self.num_heads, self.head_dim, self.kv_rank
        return ((rk, h), (rk, d), (rk, h), (rk, d))

    def _factors(self, x, wa, wb, rank, positions, rotate):
        b, t = x.shape[:2]
        a = self._mm(x, wa).reshape(b, t, rank, self.num_heads)
        bb = self._mm(x, wb).reshape(b, t, rank, self.head_dim)
        return a, (self._rope(bb, positions) if rotate else bb)

    def _queries(self, x, positions, p):
        a, b = self._factors(x, p["w_aq"], p["w_bq"], self.q_rank, positions, True)
        return jnp.einsum("btrh,btrd->bthd", a, b, precision=self.precision) / self.q_rank

    def _entries(self, x, positions, p):
        ak, bk = self._factors(x, p["w_ak"], p["w_bk"], self.kv_rank, positions, True)
        av, bv = self._factors(x, p["w_av"], p["w_bv"], self.kv_rank, positions, False)
        return ak, bk, av, bv

    def _keys_values(self, entries, positions, p):
        ak, bk, av, bv = entries
        k = jnp.einsum("bsrh,bsrd->bshd", ak, bk, precision=self.precision) / self.kv_rank
        v = jnp.einsum("bsrh,bsrd->bshd", av, bv, precision=self.precision) / self.kv_rank
        return k, v


class MultiMatrixFactorizationAttention(_CausalAttention):
    r"""Multi-matrix Factorization Attention (Hu, Li, Zhang, Wang, Zhou, Zhang, Shum & Jiang,
    "Multi-matrix Factorization Attention", arXiv:2412.19255, ACL Findings 2025; the attention
    of StepFun's Step-3).

    Many query heads through a low-rank factorized query projection, one key head and one
    value head shared by all of them (as in MQA):

    ``Q_t = RMSNorm(x_t W^{QA}) W^{QB}`` (``W^{QA}: features × q_rank``, ``W^{QB}: q_rank ×
    h d``; the norm, with a learned scale, when ``q_norm``), ``k_t = x_t W^K``,
    ``v_t = x_t W^V`` (``features × d`` each); RoPE on every query head and on ``k``. The
    cache holds ``k_t`` and ``v_t``: ``2 d`` numbers per token.

    **MFA-KR** (``key_reuse=True``): the value is re-parameterised from the key, ``v_t = k_t
    (I + W^R)`` with ``W^R: d × d`` initialised at zero (so training starts from ``v = k``),
    where ``k_t`` is the key *before* RoPE. The cache then holds only the un-rotated ``k_t``
    (``d`` numbers per token): keys are rotated when read, values mapped by ``I + W^R``. The
    paper writes the value projection as ``S_V = S_K + α ⊙ N S_K`` (a matrix ``N`` gated by a
    vector ``α``; secondary summaries, the paper's text was not at hand), i.e. ``v = k (I +
    N diag(α))``: the same functions as ``I + W^R`` with ``W^R = N diag(α)``, held here as
    one matrix (the gate's separate parameterisation, which changes the training dynamics, is
    not reproduced).

    Args:
      num_heads: ``h``, the number of query heads.
      features: the input's and the output's last axis.
      q_rank: the rank of the query projection, keyword-only.
      head_dim: ``d``; by default ``features // num_heads`` (MFA typically uses large heads,
        e.g. Step-3's 256).
      key_reuse: MFA-KR.
      q_norm: RMS-normalise the low-rank query (``eps`` 1e-6, learned scale ``q_scale``).
      rope, rope_base: as in :class:`TensorProductAttention`.
      dtype, param_dtype, precision, partitioning, rngs: as in
        :class:`TensorProductAttention`. The kernels are ``w_qa``, ``w_qb``, ``w_k``, ``w_v``
        (or ``w_r`` with ``key_reuse``), ``w_o``; also ``q_scale`` with ``q_norm``.

    Returns (``__call__``): ``(batch, seq, features)``.

    Raises:
      ValueError: as :class:`TensorProductAttention` (``q_rank`` for the rank).

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import MultiMatrixFactorizationAttention
      >>> mfa = MultiMatrixFactorizationAttention(8, 32, q_rank=16, head_dim=16,
      ...                                         rngs=nnx.Rngs(0))
      >>> mfa(jnp.ones((2, 5, 32))).shape, mfa.cache_bytes_per_token   # 2·d·4 bytes
      ((2, 5, 32), 128)
      >>> kr = MultiMatrixFactorizationAttention(8, 32, q_rank=16, head_dim=16,
      ...                                        key_reuse=True, rngs=nnx.Rngs(0))
      >>> kr.cache_bytes_per_token                                       # d·4 bytes
      64
    """

    def __init__(self, num_heads: int, features: int, *, q_rank: int,
                 head_dim: int | None = None, key_reuse: bool = False, q_norm: bool = True,
                 rope: bool = True, rope_base: float = 10000.0, dtype=None,
                 param_dtype=jnp.float32, precision: Precision = None, partitioning=None,
                 rngs: nnx.Rngs):
        self._setup(num_heads, features, head_dim, rope, rope_base, dtype, param_dtype,
                    precision)
        self.q_rank = check_positive_int(q_rank, "q_rank")
        self.key_reuse, self.q_norm = bool(key_reuse), bool(q_norm)
        f, h, d, rq = self.features, self.num_heads, self.head_dim, self.q_rank
        kernels = [("w_qa", (f, rq), 1 / f), ("w_qb", (rq, h * d), 1 / rq),
                   ("w_k", (f, d), 1 / f)]
        if not self.key_reuse:
            kernels.append(("w_v", (f, d), 1 / f))
        kernels.append(("w_o", (h * d, f), 1 / (h * d)))
        zeros = [("w_r", (d, d))] if self.key_reuse else []
        ones = [("q_scale", (rq,))] if self.q_norm else []
        self._make_params(kernels, partitioning, rngs,
                          "to draw MultiMatrixFactorizationAttention's kernels", zeros, ones)

    def _param_names(self):
        names = ["w_qa", "w_qb", "w_k", "w_r" if self.key_reuse else "w_v", "w_o"]
        return tuple(names + (["q_scale"] if self.q_norm else []))

    def _entry_shapes(self):
        return ((self.head_dim,),) if self.key_reuse else ((self.head_dim,), (self.head_dim,))

    def _queries(self, x, positions, p):
        b, t = x.shape[:2]
        c = self._mm(x, p["w_qa"])
        if self.q_norm:
            c = _rms_normalize(c.astype(jnp.float32), 1e-6).astype(c.dtype) * p["q_scale"]
        q = self._mm(c, p["w_qb"]).reshape(b, t, self.num_heads, self.head_dim)
        return self._rope(q, positions)

    def _entries(self, x, positions, p):
        k = self._mm(x, p["w_k"])
        if self.key_reuse:
            return (k,)                                  # un-rotated: the value reads it too
        return self._rope(k, positions), self._mm(x, p["w_v"])

    def _keys_values(self, entries, positions, p):
        if self.key_reuse:
            (k,) = entries
            return self._rope(k, positions), k + self._mm(k, p["w_r"])
        return entries


class MultiHeadAttention(_CausalAttention):
    r"""Plain causal multi-head attention (Vaswani et al., "Attention Is All You Need", 2017)
    with RoPE, no biases, and the interface of :class:`TensorProductAttention`: the baseline.

    ``q_{t,i} = RoPE_t(x_t W^Q_i)``, ``k_{t,i} = RoPE_t(x_t W^K_i)``, ``v_{t,i} = x_t W^V_i``
    (``W^Q, W^K, W^V: features × h d``), then the attention core and ``W^O``. The cache holds
    ``k`` and ``v`` of every head: ``2 h d`` numbers per token.

    Args:
      num_heads, features, head_dim, rope, rope_base: as in :class:`TensorProductAttention`.
      dtype, param_dtype, precision, partitioning, rngs: as in
        :class:`TensorProductAttention`; the kernels are ``w_q``, ``w_k``, ``w_v`` and ``w_o``.

    Returns (``__call__``): ``(batch, seq, features)``.

    Raises:
      ValueError: as :class:`TensorProductAttention`.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import MultiHeadAttention
      >>> mha = MultiHeadAttention(4, 32, rngs=nnx.Rngs(0))
      >>> mha(jnp.ones((2, 5, 32))).shape, mha.cache_bytes_per_token    # 2·h·d·4 bytes
      ((2, 5, 32), 256)
    """

    def __init__(self, num_heads: int, features: int, *, head_dim: int | None = None,
                 rope: bool = True, rope_base: float = 10000.0, dtype=None,
                 param_dtype=jnp.float32, precision: Precision = None, partitioning=None,
                 rngs: nnx.Rngs):
        self._setup(num_heads, features, head_dim, rope, rope_base, dtype, param_dtype,
                    precision)
        f, hd = self.features, self.num_heads * self.head_dim
        kernels = [("w_q", (f, hd), 1 / f), ("w_k", (f, hd), 1 / f), ("w_v", (f, hd), 1 / f),
                   ("w_o", (hd, f), 1 / hd)]
        self._make_params(kernels, partitioning, rngs, "to draw MultiHeadAttention's kernels")

    def _param_names(self):
        return ("w_q", "w_k", "w_v", "w_o")

    def _entry_shapes(self):
        return ((self.num_heads, self.head_dim),) * 2

    def _split(self, y):
        return y.reshape(y.shape[:2] + (self.num_heads, self.head_dim))

    def _queries(self, x, positions, p):
        return self._rope(self._split(self._mm(x, p["w_q"])), positions)

    def _entries(self, x, positions, p):
        k = self._rope(self._split(self._mm(x, p["w_k"])), positions)
        return k, self._split(self._mm(x, p["w_v"]))

    def _keys_values(self, entries, positions, p):
        return entries
