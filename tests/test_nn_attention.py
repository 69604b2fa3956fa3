"""Tests of the attention layers (tensorfact.nn._attention): the forward against float64 NumPy
references of the papers' equations, cached decoding against the full causal forward, TPA
containing MHA, the cache's size, training, errors, abstract builds and bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tensorfact.nn import (AttentionCache, MultiHeadAttention, MultiMatrixFactorizationAttention,
                           TensorProductAttention)

from _nn_helpers import np64

F, H, D = 16, 4, 4           # features, heads, head_dim (head_dim = F // H by default)
B, T = 2, 6                  # batch, sequence length


def _tpa(**kw):
    return TensorProductAttention(H, F, q_rank=3, kv_rank=2, rngs=nnx.Rngs(0), **kw)


def _mfa(**kw):
    return MultiMatrixFactorizationAttention(H, F, q_rank=6, head_dim=6, rngs=nnx.Rngs(0), **kw)


def _mfa_kr(**kw):
    return MultiMatrixFactorizationAttention(H, F, q_rank=6, head_dim=6, key_reuse=True,
                                             rngs=nnx.Rngs(0), **kw)


def _mha(**kw):
    return MultiHeadAttention(H, F, rngs=nnx.Rngs(0), **kw)


BUILDERS = {"tpa": _tpa, "mfa": _mfa, "mfa_kr": _mfa_kr, "mha": _mha}


def randomize(layer, seed=1):
    """Every parameter redrawn (in place), so that zero- or one-initialised ones (MFA-KR's
    ``w_r``, MFA's ``q_scale``) take part in the comparisons: kernels ``N(0, 1/fan-in)``,
    scales ``1 + N(0, 0.3²)``."""
    keys = iter(jax.random.split(jax.random.key(seed), 32))
    for _, var in nnx.iter_graph(layer):
        if isinstance(var, nnx.Param):
            shape = var[...].shape
            z = jax.random.normal(next(keys), shape)
            var[...] = z / np.sqrt(shape[0]) if len(shape) == 2 else 1.0 + 0.3 * z
    return layer


def _x(seed=2, shape=(B, T, F)):
    return jax.random.normal(jax.random.key(seed), shape)


def rel_err(a, b):
    a, b = np64(a), np64(b)
    return np.abs(a - b).max() / np.abs(b).max()


# ---------------------------------------------------------------------------------------------
# float64 NumPy references of the equations (written from the papers, not from the module)


def np_rope(u, pos, base=10000.0):
    """RoPE of one vector ``u`` (``d``) at position ``pos``: the pair ``(j, j + d/2)`` turned by
    ``pos · base^(-2j/d)``, one 2×2 rotation at a time."""
    d = len(u)
    out = np.array(u, np.float64)
    for j in range(d // 2):
        th = pos * base ** (-2.0 * j / d)
        c, s = np.cos(th), np.sin(th)
        out[j], out[j + d // 2] = c * u[j] - s * u[j + d // 2], s * u[j] + c * u[j + d // 2]
    return out


def np_attention(q, k, v, valid=None):
    """Causal softmax attention of one sequence: ``q`` ``(T, h, d)``, ``k``/``v`` ``(T, h, d)``;
    ``valid`` ``(T,)`` hides keys."""
    t_len, h, d = q.shape
    out = np.zeros_like(q)
    for t in range(t_len):
        for i in range(h):
            keys = [s for s in range(t + 1) if valid is None or valid[s]]
            if not keys:
                continue
            sc = np.array([q[t, i] @ k[s, i] for s in keys]) / np.sqrt(d)
            w = np.exp(sc - sc.max())
            w /= w.sum()
            out[t, i] = sum(wj * v[s, i] for wj, s in zip(w, keys))
    return out


def np_reference(layer, x, valid=None):
    """The layer's output for one sequence ``x`` (``(T, features)``) in float64."""
    p = {name: np64(var[...]) for name, var in nnx.iter_graph(layer)
         if isinstance(var, nnx.Param) for name in [name[-1]]}
    x = np64(x)
    h, d = layer.num_heads, layer.head_dim
    np_rope_ = np_rope if layer.rope else (lambda u, t: np.array(u, np.float64))
    q, k, v = [], [], []
    for t, xt in enumerate(x):
        if isinstance(layer, TensorProductAttention):
            def mat(wa, wb, r, rot):
                a = (xt @ p[wa]).reshape(r, h)
                b = (xt @ p[wb]).reshape(r, d)
                if rot:
                    b = np.stack([np_rope_(b_r, t) for b_r in b])
                return sum(np.outer(a[j], b[j]) for j in range(r)) / r    # (h, d)
            q.append(mat("w_aq", "w_bq", layer.q_rank, True))
            k.append(mat("w_ak", "w_bk", layer.kv_rank, True))
            v.append(mat("w_av", "w_bv", layer.kv_rank, False))
        elif isinstance(layer, MultiMatrixFactorizationAttention):
            c = xt @ p["w_qa"]
            c = c / np.sqrt(np.mean(c ** 2) + 1e-6) * p["q_scale"]
            qt = (c @ p["w_qb"]).reshape(h, d)
            q.append(np.stack([np_rope_(qi, t) for qi in qt]))
            kt = xt @ p["w_k"]
            vt = kt @ (np.eye(d) + p["w_r"]) if layer.key_reuse else xt @ p["w_v"]
            k.append(np.tile(np_rope_(kt, t), (h, 1)))      # one key head shared by all heads
            v.append(np.tile(vt, (h, 1)))
        else:
            q.append(np.stack([np_rope_(u, t) for u in (xt @ p["w_q"]).reshape(h, d)]))
            k.append(np.stack([np_rope_(u, t) for u in (xt @ p["w_k"]).reshape(h, d)]))
            v.append((xt @ p["w_v"]).reshape(h, d))
    o = np_attention(np.array(q), np.array(k), np.array(v), valid)
    return o.reshape(len(x), h * d) @ p["w_o"]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_forward_matches_float64_reference(name):
    layer = randomize(BUILDERS[name](precision="highest"))
    x = _x()
    y = layer(x)
    assert y.shape == (B, T, F)
    for b in range(B):
        assert rel_err(y[b], np_reference(layer, x[b])) < 2e-6


@pytest.mark.parametrize("name", list(BUILDERS))
def test_without_rope(name):
    layer = randomize(BUILDERS[name](precision="highest", rope=False))
    x = _x()
    assert rel_err(layer(x)[0], np_reference(layer, x[0])) < 2e-6
    ys, _ = _decode_all(layer, x, T)
    assert rel_err(ys, layer(x)) < 2e-6


# ---------------------------------------------------------------------------------------------
# decoding with the cache


def _decode_all(layer, x, max_length):
    """Runs ``x`` (``(batch, seq, features)``) token by token through ``decode_step`` under
    plain ``jax.jit`` (the layer split into graph and state, so the step must be pure);
    returns the outputs stacked on axis 1 and the last cache."""
    graphdef, state = nnx.split(layer)
    step = jax.jit(lambda s, xt, c: nnx.merge(graphdef, s).decode_step(xt, c))
    cache = layer.init_cache(x.shape[0], max_length)
    ys = []
    for t in range(x.shape[1]):
        y, cache = step(state, x[:, t], cache)
        ys.append(y)
    return jnp.stack(ys, axis=1), cache


@pytest.mark.parametrize("name", list(BUILDERS))
def test_decode_matches_causal_forward_under_jit(name):
    layer = randomize(BUILDERS[name](precision="highest"))
    x = _x()
    ys, cache = _decode_all(layer, x, max_length=T + 2)   # a cache longer than the sequence
    assert int(cache.index) == T and isinstance(cache, AttentionCache)
    assert rel_err(ys, layer(x)) < 2e-6
    # the cache is a pytree of the shapes init_cache promised, past tokens untouched (zeros)
    assert all(e.shape[:2] == (B, T + 2) for e in cache.entries)
    assert all(float(jnp.abs(e[:, T:]).max()) == 0.0 for e in cache.entries)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_padding_mask(name):
    """Padding at the end: the masked forward equals decoding the real tokens alone. Padding
    at the start: because RoPE scores depend only on relative positions, the masked forward at
    the real tokens equals the plain forward of the real tokens; fully padded rows are 0."""
    layer = randomize(BUILDERS[name](precision="highest"))
    x = _x()
    lengths = [T, 4]
    mask = jnp.arange(T)[None, :] < jnp.array(lengths)[:, None]
    y = layer(x, mask=mask)
    for b, n in enumerate(lengths):
        ys, _ = _decode_all(layer, x[b:b + 1, :n], max_length=T)
        assert rel_err(y[b, :n], ys[0]) < 2e-6
        assert rel_err(y[b, :n], np_reference(layer, x[b], np64(mask[b]))[:n]) < 2e-6

    left = jnp.concatenate([jnp.zeros((B, 2, F)), x[:, :4]], axis=1)
    lmask = jnp.broadcast_to(jnp.arange(T) >= 2, (B, T))
    yl = layer(left, mask=lmask)
    assert bool(jnp.all(jnp.isfinite(yl))) and float(jnp.abs(yl[:, :2]).max()) == 0.0
    assert rel_err(yl[:, 2:], layer(x[:, :4])) < 5e-6


def test_tpa_with_rank_h_and_unit_head_factors_is_mha():
    """With ``R_q = R_kv = h`` and head factors ``a_r(x) = R e_r`` (a constant), TPA's
    ``Q_t = (1/R) Σ_r a_r ⊗ b_r`` has row ``i`` equal to ``b_i(x) = x W^b_i``: MHA's head ``i``
    when ``W^b = W^Q`` (the same for K and V; RoPE acts on ``b`` as on MHA's heads). The layer
    has no bias, so the constant comes from a constant input channel: ``x[..., 0] = 1`` and
    ``W^a`` zero except its row 0, ``W^a[0, r·h + i] = R δ_ri``. ``h = 4`` makes the scaling
    by ``R`` and ``1/R`` exact."""
    mha = randomize(MultiHeadAttention(H, F, precision="highest", rngs=nnx.Rngs(1)))
    tpa = TensorProductAttention(H, F, q_rank=H, kv_rank=H, precision="highest",
                                 rngs=nnx.Rngs(2))
    a = jnp.zeros((F, H * H)).at[0].set(H * jnp.eye(H).reshape(-1))
    for m in ("q", "k", "v"):
        getattr(tpa, f"w_a{m}")[...] = a
        getattr(tpa, f"w_b{m}")[...] = getattr(mha, f"w_{m}")[...]
    tpa.w_o[...] = mha.w_o[...]
    x = _x().at[..., 0].set(1.0)
    y_mha = mha(x)
    assert rel_err(tpa(x), y_mha) < 1e-6
    ys, _ = _decode_all(tpa, x, T)
    assert rel_err(ys, y_mha) < 2e-6
    # and the two are not trivially equal: another input channel 0 breaks the construction
    assert rel_err(tpa(x.at[..., 0].set(2.0)), mha(x.at[..., 0].set(2.0))) > 1e-2


# ---------------------------------------------------------------------------------------------
# cache size


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_cache_bytes_per_token(name, dtype):
    layer = BUILDERS[name](dtype=dtype)
    itemsize = 4 if dtype is None else 2
    expected = {"tpa": 2 * 2 * (H + D), "mfa": 2 * 6, "mfa_kr": 6, "mha": 2 * H * D}[name]
    assert layer.cache_bytes_per_token == expected * itemsize
    batch, length = 3, 5
    cache = layer.init_cache(batch, length)
    held = sum(e.nbytes for e in cache.entries)
    assert held == layer.cache_bytes_per_token * batch * length
    assert all(e.dtype == jnp.dtype(dtype or jnp.float32) for e in cache.entries)
    assert layer.init_cache(1, 2, dtype=jnp.float16).entries[0].dtype == jnp.float16


# ---------------------------------------------------------------------------------------------
# training


class _LM(nnx.Module):
    def __init__(self, attn, vocab, rngs):
        self.embed = nnx.Embed(vocab, F, rngs=rngs)
        self.attn = attn
        self.head = nnx.Linear(F, vocab, rngs=rngs)

    def __call__(self, tokens):
        h = self.embed(tokens)
        return self.head(h + self.attn(h))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_trains_with_adam(name):
    """Next-token prediction on sequences ``a b a b ...`` with random ``a, b``: after the first
    two tokens the next one is the token two back, which only attention can find."""
    vocab = 8
    pairs = jax.random.randint(jax.random.key(0), (64, 2), 0, vocab)
    tokens = jnp.tile(pairs, (1, 5))                              # (64, 10)
    model = _LM(BUILDERS[name](), vocab, nnx.Rngs(3))
    opt = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

    def loss_fn(m):
        logits = m(tokens[:, :-1])[:, 1:]                        # predictable targets only
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 2:]).mean()

    @nnx.jit
    def step(m, o):
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        o.update(m, grads)
        return loss

    losses = [float(step(model, opt)) for _ in range(60)]
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.3 * losses[0], losses[::10]


# ---------------------------------------------------------------------------------------------
# errors


def test_errors_name_argument_and_value():
    r = nnx.Rngs(0)
    with pytest.raises(ValueError, match="num_heads must be a positive integer, got 0"):
        MultiHeadAttention(0, F, rngs=r)
    with pytest.raises(ValueError, match="q_rank must be a positive integer, got 0"):
        TensorProductAttention(H, F, q_rank=0, kv_rank=1, rngs=r)
    with pytest.raises(ValueError, match="kv_rank must be a positive integer, got -1"):
        TensorProductAttention(H, F, q_rank=1, kv_rank=-1, rngs=r)
    with pytest.raises(ValueError, match="q_rank must be a positive integer, got 2.5"):
        MultiMatrixFactorizationAttention(H, F, q_rank=2.5, rngs=r)
    with pytest.raises(ValueError, match="features = 10 is not divisible by num_heads = 3"):
        MultiHeadAttention(3, 10, rngs=r)
    with pytest.raises(ValueError, match="head_dim = 5 must be even with rope=True"):
        TensorProductAttention(2, 10, q_rank=1, kv_rank=1, rngs=r)
    assert TensorProductAttention(2, 10, q_rank=1, kv_rank=1, rope=False,
                                  rngs=r).head_dim == 5
    with pytest.raises(ValueError, match="rope_base must be a finite number > 1"):
        MultiHeadAttention(H, F, rope_base=1.0, rngs=r)
    with pytest.raises(ValueError, match="partitioning names parameter 'w_x'"):
        MultiHeadAttention(H, F, partitioning={"w_x": (None, None)}, rngs=r)
    with pytest.raises(ValueError, match="rngs is required"):
        MultiHeadAttention(H, F, rngs=None)

    layer = _mha()
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 16\), got \(2, 6, 15\)"):
        layer(jnp.ones((2, 6, 15)))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, seq, 16\), got \(6, 16\)"):
        layer(jnp.ones((6, 16)))
    with pytest.raises(ValueError, match=r"mask must have shape \(batch, seq\) = \(2, 6\)"):
        layer(jnp.ones((2, 6, 16)), mask=jnp.ones((2, 5), bool))
    with pytest.raises(ValueError, match=r"mask must be boolean or 0/1.*got values \[0.5, 1.0\]"):
        layer(jnp.ones((2, 6, 16)), mask=jnp.ones((2, 6)).at[0, 3].set(0.5))
    x = _x()
    m01 = jnp.ones((2, 6)).at[1, 4:].set(0)
    assert float(jnp.abs(layer(x, mask=m01) - layer(x, mask=m01 > 0)).max()) == 0.0
    with pytest.raises(ValueError, match="rope_base must be a finite number > 1, got 'x'"):
        MultiHeadAttention(H, F, rope_base="x", rngs=r)

    cache = layer.init_cache(2, 2)
    with pytest.raises(ValueError, match=r"x_t must have shape \(batch, 16\), got \(2, 1, 16\)"):
        layer.decode_step(jnp.ones((2, 1, 16)), cache)
    with pytest.raises(ValueError, match="cache does not fit this layer and batch"):
        layer.decode_step(jnp.ones((3, 16)), cache)
    with pytest.raises(ValueError, match="cache does not fit"):
        _tpa().decode_step(jnp.ones((2, 16)), cache)
    with pytest.raises(TypeError, match="cache must be an AttentionCache"):
        layer.decode_step(jnp.ones((2, 16)), cache.entries)
    for _ in range(2):
        _, cache = layer.decode_step(jnp.ones((2, 16)), cache)
    with pytest.raises(ValueError, match="cache is full: index = 2 and max_length = 2"):
        layer.decode_step(jnp.ones((2, 16)), cache)
    # under jit the index is unknown: a step past the end returns NaN, never a silent answer
    y, _ = nnx.jit(lambda m, xt, c: m.decode_step(xt, c))(layer, jnp.ones((2, 16)), cache)
    assert bool(jnp.all(jnp.isnan(y)))
    with pytest.raises(ValueError, match="max_length must be a positive integer, got 0"):
        layer.init_cache(1, 0)


# ---------------------------------------------------------------------------------------------
# abstract builds, bfloat16, sharding annotations


@pytest.mark.parametrize("name", list(BUILDERS))
def test_eval_shape(name):
    abstract = nnx.eval_shape(lambda: BUILDERS[name]())
    kernels = [v for _, v in nnx.iter_graph(abstract) if isinstance(v, nnx.Param)]
    assert kernels and all(isinstance(v.get_value(), jax.ShapeDtypeStruct) for v in kernels)
    layer = BUILDERS[name]()
    out = jax.eval_shape(lambda x: layer(x), jax.ShapeDtypeStruct((B, T, F), jnp.float32))
    assert out.shape == (B, T, F) and out.dtype == jnp.float32
    cache = jax.eval_shape(lambda: layer.init_cache(B, 8))
    y, new = jax.eval_shape(lambda x, c: layer.decode_step(x, c),
                            jax.ShapeDtypeStruct((B, F), jnp.float32), cache)
    assert y.shape == (B, F) and jax.tree.map(lambda a: a.shape, new) == \
        jax.tree.map(lambda a: a.shape, cache)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_bfloat16_compute_with_float32_params(name):
    ref = randomize(BUILDERS[name](precision="highest"))
    layer = randomize(BUILDERS[name](dtype=jnp.bfloat16))
    assert all(v[...].dtype == jnp.float32 for _, v in nnx.iter_graph(layer)
               if isinstance(v, nnx.Param))
    x = _x()
    y = layer(x)
    assert y.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(y)))
    assert rel_err(y, ref(x)) < 3e-2                        # bfloat16 keeps ~3 digits
    ys, cache = _decode_all(layer, x, T)
    assert ys.dtype == jnp.bfloat16 and cache.entries[0].dtype == jnp.bfloat16
    assert rel_err(ys, ref(x)) < 3e-2


def test_partitioning_annotations():
    from tensorfact.sharding import make_mesh
    mesh = make_mesh((1, 1), ("data", "model"))
    with jax.set_mesh(mesh):
        layer = TensorProductAttention(H, F, q_rank=2, kv_rank=2, rngs=nnx.Rngs(0),
                                       partitioning={"w_bq": (None, "model"),
                                                     "w_o": ("model", None)})
        y = layer(_x())
    specs = nnx.get_partition_spec(nnx.state(layer))
    assert specs["w_bq"].get_value() == jax.P(None, "model")
    assert specs["w_o"].get_value() == jax.P("model", None)
    assert layer.w_o.sharding.spec == jax.P("model", None)
    assert y.shape == (B, T, F)
    with jax.set_mesh(mesh), pytest.raises(ValueError, match="names mesh axis 'tensor'"):
        MultiHeadAttention(H, F, rngs=nnx.Rngs(0), partitioning={"w_q": (None, "tensor")})


@pytest.mark.parametrize("name", list(BUILDERS))
def test_extreme_scales_match_the_float64_reference(name):
    """Inputs scaled to 1e±30 (TPA, quadratic in ``x``: 1e±15, whose outputs reach 1e±30):
    the scores pass float32's range, the softmax must reach its limit (attention on the largest
    score) rather than NaN, and the output is the float64 reference's."""
    layer = randomize(BUILDERS[name](precision="highest"))
    exponent = 15 if name == "tpa" else 30
    for c in (10.0 ** -exponent, 10.0 ** exponent):
        x = _x() * np.float32(c)
        y = np.asarray(layer(x), np.float64)
        assert np.all(np.isfinite(y)), (name, c)
        for b in range(B):
            assert rel_err(y[b], np_reference(layer, np.asarray(x[b], np.float64))) < 1e-4, c


@pytest.mark.parametrize("name", list(BUILDERS))
def test_an_empty_sequence_gives_an_empty_output(name):
    layer = BUILDERS[name]()
    assert layer(jnp.zeros((B, 0, F))).shape == (B, 0, F)
