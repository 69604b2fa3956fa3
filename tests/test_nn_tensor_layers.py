"""Tests of ``tensorfact.nn.TCL``, ``TRL`` and ``FactorizedEmbed``: the forwards against dense
NumPy float64 definitions (the weight formed by ``np.einsum`` over the factors, independently of
the library), lookups that never form the table (the program's jaxpr), ``to_layer``, training
with Optax under ``nnx.jit``, sharding annotations, ``eval_shape``, bfloat16 and argument checks.

Shapes are tiny: XLA compilation dominates on a CPU, so one jitted program trains every layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from _helpers import rel
from tensorfact.nn import TCL, TRL, FactorizedEmbed, TTEmbed
from tensorfact.sharding import make_mesh

IN_SHAPE = (3, 4, 5)
OUT = 6
TRL_RANKS = {"tucker": (2, 3, 2, 3), "cp": 4, "tt": 3}
EMB_RANKS = {"cp": 5, "tucker": 3, "tt": 3}
V, D = 24, 12          # table (num_embeddings, features)
EMB_SHAPES = {"cp": ((4, 6), (3, 4)), "tucker": ((4, 6), (3, 4)), "tt": ((2, 3, 4), (3, 2, 2))}


def f64(a):
    return np.asarray(a, np.float64)


@pytest.fixture(scope="module")
def x():
    return jax.random.normal(jax.random.key(0), (7,) + IN_SHAPE)


@pytest.fixture(scope="module")
def trls():
    """One TRL per kind with a random bias (shared: each configuration compiles its draw)."""
    out = {}
    for k, kind in enumerate(TRL_RANKS):
        layer = TRL(IN_SHAPE, OUT, kind=kind, rank=TRL_RANKS[kind], precision="highest",
                    rngs=nnx.Rngs(k))
        layer.bias[...] = jax.random.normal(jax.random.key(10 + k), (OUT,))
        out[kind] = layer
    return out


@pytest.fixture(scope="module")
def embeds():
    return {kind: FactorizedEmbed(V, D, kind=kind, rank=EMB_RANKS[kind],
                                  in_shape=EMB_SHAPES[kind][0], out_shape=EMB_SHAPES[kind][1],
                                  precision="highest", rngs=nnx.Rngs(5 + k))
            for k, kind in enumerate(EMB_RANKS)}


# ---------------------------------------------------------------------------------------------
# NumPy float64 references: the weights formed by einsum over the factors


def trl_weight(layer):
    if layer.kind == "cp":
        a1, a2, a3, ao = (f64(a[...]) for a in layer.factors)
        return np.einsum("ir,jr,kr,or->ijko", a1, a2, a3, ao)
    if layer.kind == "tucker":
        u1, u2, u3, uo = (f64(a[...]) for a in layer.factors)
        return np.einsum("abcz,ia,jb,kc,oz->ijko", f64(layer.core[...]), u1, u2, u3, uo)
    g1, g2, g3, go = (f64(g[...]) for g in layer.cores)
    return np.einsum("xia,ajb,bkc,coy->ijko", g1, g2, g3, go)


def embed_table(layer):
    if layer.kind == "cp":
        a1, a2, b1, b2 = (f64(a[...]) for a in layer.factors)
        t = np.einsum("ir,jr,pr,qr->ijpq", a1, a2, b1, b2)
    elif layer.kind == "tucker":
        u1, u2, v1, v2 = (f64(a[...]) for a in layer.factors)
        t = np.einsum("abcd,ia,jb,pc,qd->ijpq", f64(layer.core[...]), u1, u2, v1, v2)
    else:
        g1, g2, g3 = (f64(g[...]) for g in layer.cores)
        t = np.einsum("xipa,ajqb,bkrc->ijkpqr", g1, g2, g3)   # rows (i, j, k), columns (p, q, r)
    return t.reshape(V, D)


# ---------------------------------------------------------------------------------------------
# forwards against the dense definitions


def test_tcl_matches_mode_products(x):
    layer = TCL(IN_SHAPE, (2, 3, 2), use_bias=True, precision="highest", rngs=nnx.Rngs(1))
    layer.bias[...] = jax.random.normal(jax.random.key(2), (2, 3, 2))
    v1, v2, v3 = (f64(v[...]) for v in layer.factors)
    want = np.einsum("bijk,ai,cj,dk->bacd", f64(x), v1, v2, v3) + f64(layer.bias[...])
    got = layer(x)
    assert got.shape == (7, 2, 3, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # any leading axes; and the Kronecker matrix on the flattened input
    np.testing.assert_allclose(layer(x[:2].reshape((1, 2) + IN_SHAPE)), want[None, :2],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f64(x).reshape(7, -1) @ f64(layer.dense_weight()),
                               (want - f64(layer.bias[...])).reshape(7, -1), rtol=1e-5, atol=1e-5)
    assert layer.n_params == 2 * 3 + 3 * 4 + 2 * 5 + 12
    # largest shrink first: mode 2 (5 → 2), then mode 0 (3 → 2), then mode 1 (4 → 3)
    assert layer.flops(7) == 2 * 7 * (60 * 2 + 24 * 2 + 16 * 3)


@pytest.mark.parametrize("kind", list(TRL_RANKS))
def test_trl_matches_dense_contraction(kind, trls, x):
    layer = trls[kind]
    w = trl_weight(layer)
    want = np.einsum("bijk,ijko->bo", f64(x), w) + f64(layer.bias[...])
    got = layer(x)
    assert got.shape == (7, OUT)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)
    np.testing.assert_allclose(layer.dense_weight(), w, rtol=1e-5, atol=1e-6 * np.abs(w).max())
    linear = layer.to_layer()
    assert isinstance(linear, nnx.Linear)
    np.testing.assert_allclose(linear(x.reshape(7, -1)), want, rtol=1e-5, atol=1e-5 * scale)
    # one sample without a batch axis
    np.testing.assert_allclose(layer(x[3]), want[3], rtol=1e-5, atol=1e-5 * scale)
    assert layer.n_params == sum(v[...].size for v in jax.tree.leaves(nnx.state(layer, nnx.Param)))
    # the documented counts, worked by hand (B = 7, ∏ I = 60, O = 6):
    # tucker (2, 3, 2 | 3): modes 2, 0, 1 (shrinks 2.5, 1.5, 1.33), then the core and U_O;
    # cp R = 4: modes of size 5, 4, 3, then A_O; tt (1, 3, 3, 3, 1): left to right, then G_O
    want_flops = {"tucker": 2 * (420 * 2 + 168 * 2 + 112 * 3 + 84 * 3 + 7 * 3 * 6),
                  "cp": 2 * (420 * 4 + 336 + 84 + 7 * 4 * 6),
                  "tt": 2 * 7 * (3 * 60 + 9 * 20 + 9 * 5 + 3 * 6)}[kind]
    assert layer.flops(7) == want_flops


def _xla_flops(layer, x):
    graphdef, state = nnx.split(layer)
    compiled = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if not cost or "flops" not in cost:
        pytest.skip("this JAX gives no FLOP count of a compiled program")
    return cost["flops"]


def test_flops_are_what_xla_counts(x):
    """The documented contraction order is the one the program runs: ``flops()`` equals XLA's
    count of the compiled forward (no bias, so nothing else is counted)."""
    layers = [TCL(IN_SHAPE, (2, 3, 2), rngs=nnx.Rngs(0))] + [
        TRL(IN_SHAPE, OUT, kind=k, rank=r, use_bias=False, rngs=nnx.Rngs(0))
        for k, r in TRL_RANKS.items()]
    for layer in layers:
        assert _xla_flops(layer, x) == layer.flops(7), layer


def test_trl_ranks_resolve():
    rngs = nnx.Rngs(0)
    assert TRL(IN_SHAPE, OUT, rank=4, rngs=rngs).rank == (3, 4, 4, 4)        # capped at I_1
    assert TRL(IN_SHAPE, OUT, kind="tt", rank=4, rngs=rngs).rank == (1, 3, 4, 4, 1)
    assert TRL(IN_SHAPE, OUT, kind="tt", rank=(2, 2, 2), rngs=rngs).rank == (1, 2, 2, 2, 1)
    assert TRL(IN_SHAPE, OUT, kind="cp", rank=7, rngs=rngs).rank == 7


# ---------------------------------------------------------------------------------------------
# FactorizedEmbed


@pytest.mark.parametrize("kind", list(EMB_RANKS))
def test_embed_rows_equal_the_dense_table(kind, embeds):
    layer = embeds[kind]
    table = embed_table(layer)
    ids = jnp.array([[0, 5, 23], [17, 9, 1]])
    got = layer(ids)
    assert got.shape == (2, 3, D)
    scale = np.abs(table).max()
    np.testing.assert_allclose(got, table[np.asarray(ids)], rtol=1e-5, atol=1e-6 * scale)
    np.testing.assert_allclose(layer.dense_weight(), table, rtol=1e-5, atol=1e-6 * scale)
    plain = layer.to_layer()
    assert isinstance(plain, nnx.Embed)
    np.testing.assert_allclose(plain(ids), got, rtol=1e-5, atol=1e-6 * scale)
    # attend: query @ Eᵀ, as nnx.Embed.attend
    q = jax.random.normal(jax.random.key(3), (2, D))
    np.testing.assert_allclose(layer.attend(q), f64(q) @ table.T, rtol=1e-5, atol=1e-5 * scale)
    # ids of another integer dtype, out of range, and an empty batch
    np.testing.assert_allclose(layer(ids.astype(jnp.uint8)), got, rtol=1e-6, atol=1e-7)
    bad = layer(jnp.array([-1, V, 3]))
    assert np.isnan(bad[:2]).all() and np.isfinite(bad[2]).all()
    assert layer(jnp.zeros((0, 4), jnp.int32)).shape == (0, 4, D)


@pytest.mark.parametrize("kind", list(EMB_RANKS))
def test_embed_from_layer_is_exact_at_full_rank(kind):
    dense = nnx.Embed(V, D, rngs=nnx.Rngs(2))
    emb = FactorizedEmbed.from_layer(dense, kind=kind, rank="full", in_shape=EMB_SHAPES[kind][0],
                                     out_shape=EMB_SHAPES[kind][1])
    ids = jnp.arange(V)
    table = f64(dense.embedding[...])
    assert rel(table, emb(ids)) < 1e-5 and rel(table, embed_table(emb)) < 1e-5


def test_embed_from_layer_recovers_a_planted_cp_table():
    a = [jax.random.normal(jax.random.key(k), (d, 3)) for k, d in enumerate((4, 6, 3, 4))]
    table = jnp.einsum("ir,jr,pr,qr->ijpq", *a).reshape(V, D)
    emb = FactorizedEmbed.from_layer(table, kind="cp", rank=3, in_shape=(4, 6),
                                     out_shape=(3, 4), key=jax.random.key(0), n_iter=200)
    assert rel(table, emb(jnp.arange(V))) < 1e-4


def test_init_variances():
    """Drawn weights have the documented variance: table entries 1 / features (Flax's default
    nnx.Embed), TRL's W and TCL's Kronecker matrix 1 / ∏ I_k (lecun_normal on the flattened
    input). Averaged over 64 draws (the entries of one weight share factors); the standard
    error of each mean is at most 0.065, the tolerance 0.2."""
    def mean_var(make):
        return np.mean([np.var(f64(make(nnx.Rngs(s)).dense_weight())) for s in range(64)])

    for kind, rank in (("cp", 8), ("tucker", 4), ("tt", 4)):
        var = mean_var(lambda r: FactorizedEmbed(256, 64, kind=kind, rank=rank, rngs=r))
        assert abs(var * 64 - 1) < 0.2, (kind, var * 64)
        var = mean_var(lambda r: TRL((4, 8, 8), 16, kind=kind, rank=rank, rngs=r))
        assert abs(var * 256 - 1) < 0.2, (kind, var * 256)
    var = mean_var(lambda r: TCL((4, 8, 8), (2, 4, 4), rngs=r))
    assert abs(var * 256 - 1) < 0.2, var * 256


def test_embed_tt_is_ttembed(embeds):
    """kind="tt" holds the TT-matrix of TTEmbed (same cores: same rows, same engine)."""
    layer = embeds["tt"]
    tt = TTEmbed(V, D, rank=EMB_RANKS["tt"], in_shape=EMB_SHAPES["tt"][0],
                 out_shape=EMB_SHAPES["tt"][1], rngs=nnx.Rngs(0))
    tt._set_cores([g[...] for g in layer.cores])
    ids = jnp.arange(V)
    np.testing.assert_allclose(tt(ids), layer(ids), rtol=1e-6, atol=1e-7)


def _largest_array(jaxpr):
    """The largest number of entries of any value a jaxpr (and the jaxprs inside it) makes."""
    best = 0
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            best = max(best, int(np.prod(v.aval.shape)))
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (tuple, list)) else (p,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    best = max(best, _largest_array(inner))
    return best


@pytest.mark.parametrize("kind", list(EMB_RANKS))
def test_embed_lookup_never_forms_the_table(kind):
    layer = FactorizedEmbed(4096, 64, kind=kind, rank=4, rngs=nnx.Rngs(1))   # 262144 entries
    graphdef, state = nnx.split(layer)
    jaxpr = jax.make_jaxpr(lambda s, ids: nnx.merge(graphdef, s)(ids))(state, jnp.arange(8))
    assert _largest_array(jaxpr.jaxpr) < 4096
    ids = jnp.array([4095, 7, 1000])
    np.testing.assert_allclose(layer(ids), layer.dense_weight()[ids], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# training, transformations, dtypes


class _All(nnx.Module):
    def __init__(self, rngs):
        self.tcl = TCL(IN_SHAPE, (2, 2, 2), use_bias=True, rngs=rngs)
        self.trls = nnx.List([TRL(IN_SHAPE, 3, kind=k, rank=2, rngs=rngs) for k in TRL_RANKS])
        self.embeds = nnx.List([FactorizedEmbed(V, D, kind=k, rank=3, rngs=rngs)
                                for k in EMB_RANKS])


def test_every_layer_trains_with_optax_under_jit(x):
    model = _All(nnx.Rngs(0))
    teacher = _All(nnx.Rngs(1))
    ids = jnp.arange(V)
    targets = ([teacher.tcl(x)] + [t(x) for t in teacher.trls]
               + [e(ids) for e in teacher.embeds])
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

    def losses(m):
        outs = [m.tcl(x)] + [t(x) for t in m.trls] + [e(ids) for e in m.embeds]
        return jnp.stack([jnp.mean((o - t) ** 2) / jnp.mean(t ** 2)
                          for o, t in zip(outs, targets)])

    @nnx.jit
    def step(model, optimizer):
        (_, per), grads = nnx.value_and_grad(lambda m: (jnp.sum(losses(m)), losses(m)),
                                             has_aux=True)(model)
        optimizer.update(model, grads)
        return per

    first = np.asarray(step(model, optimizer))
    for _ in range(80):
        last = np.asarray(step(model, optimizer))
    assert np.all(last < 0.3 * first), (first, last)


def test_eval_shape_and_jit(x):
    abstract = nnx.eval_shape(lambda: TRL(IN_SHAPE, OUT, kind="tt", rank=3, rngs=nnx.Rngs(0)))
    assert [g.shape for g in abstract.cores] == [(1, 3, 3), (3, 4, 3), (3, 5, 3), (3, 6, 1)]
    emb = nnx.eval_shape(lambda: FactorizedEmbed(V, D, kind="tucker", rank=2, rngs=nnx.Rngs(0)))
    assert emb.core.shape == (2, 2, 2, 2)
    tcl = nnx.eval_shape(lambda: TCL(IN_SHAPE, (1, 2, 3), rngs=nnx.Rngs(0)))
    assert [v.shape for v in tcl.factors] == [(1, 3), (2, 4), (3, 5)]
    layer = TRL(IN_SHAPE, OUT, kind="cp", rank=3, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(layer, x), layer(x), rtol=1e-5,
                               atol=1e-5)


def test_bfloat16_compute_with_float32_params(x, trls, embeds):
    for layer in [*trls.values(), TCL(IN_SHAPE, (2, 2, 2), rngs=nnx.Rngs(0))]:
        low = nnx.clone(layer)
        low.dtype = jnp.bfloat16
        y, ref = low(x), layer(x)
        assert y.dtype == jnp.bfloat16 and np.isfinite(f64(y)).all() and rel(ref, y) < 3e-2
        assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(low, nnx.Param)))
    for layer in embeds.values():
        low = nnx.clone(layer)
        low.dtype = jnp.bfloat16
        y = low(jnp.arange(V))
        assert y.dtype == jnp.bfloat16 and rel(layer(jnp.arange(V)), y) < 3e-2


# ---------------------------------------------------------------------------------------------
# sharding annotations (as FactorizedDense's, tests/test_train_sharded.py)


def test_partitioning_becomes_flax_metadata():
    with nnx.use_eager_sharding(False):   # annotations without a mesh
        trl = TRL(IN_SHAPE, OUT, kind="tucker", rank=2, rngs=nnx.Rngs(0),
                  partitioning={"core": (None, None, None, "model"),
                                "factors": [None, None, None, ("model", None)],
                                "bias": ("model",)})
        tcl = TCL(IN_SHAPE, (2, 2, 2), rngs=nnx.Rngs(0), partitioning={"factors": ("model",)})
        emb = FactorizedEmbed(V, D, kind="cp", rank=4, rngs=nnx.Rngs(0),
                              partitioning={"factors": (None, "model")})
    specs = nnx.get_partition_spec(nnx.state(trl))
    assert specs["core"].get_value() == P(None, None, None, "model")
    assert specs["factors"][3].get_value() == P("model", None)
    assert specs["factors"][0].get_value() == P()
    assert specs["bias"].get_value() == P("model")
    assert nnx.get_partition_spec(nnx.state(tcl))["factors"][2].get_value() == P("model")
    assert nnx.get_partition_spec(nnx.state(emb))["factors"][1].get_value() == P(None, "model")
    plain = TRL(IN_SHAPE, OUT, kind="tucker", rank=2, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(trl.core[...], plain.core[...])   # the draw ignores specs


def test_partitioning_places_parameters_on_the_mesh(x):
    with jax.set_mesh(make_mesh((1, 1), ("data", "model"))):
        trl = TRL(IN_SHAPE, OUT, kind="tt", rank=2, rngs=nnx.Rngs(0),
                  partitioning={"cores": (None, None, "model")})
        emb = FactorizedEmbed(V, D, kind="tt", rank=2, rngs=nnx.Rngs(0),
                              partitioning={"cores": (None, None, "model", None)})
        y = trl(x)
    assert trl.cores[1].sharding.spec == P(None, None, "model")
    assert emb.cores[0].sharding.spec == P(None, None, "model", None)
    np.testing.assert_allclose(y, TRL(IN_SHAPE, OUT, kind="tt", rank=2, rngs=nnx.Rngs(0))(x),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make, match", [
    (lambda p: TRL(IN_SHAPE, OUT, kind="cp", rank=2, rngs=nnx.Rngs(0), partitioning=p),
     r"names parameter 'core'; this layer has \('factors', 'bias'\)"),
    (lambda p: TCL(IN_SHAPE, (2, 2, 2), rngs=nnx.Rngs(0), partitioning=p),
     r"names parameter 'core'; this layer has \('factors',\)"),
    (lambda p: FactorizedEmbed(V, D, rank=2, rngs=nnx.Rngs(0), partitioning=p),
     r"names parameter 'core'; this layer has \('factors',\)"),
])
def test_partitioning_bad_name(make, match):
    with pytest.raises(ValueError, match=match):
        make({"core": (None,)})


def test_partitioning_bad_spec():
    with jax.set_mesh(make_mesh((1, 1), ("data", "model"))):
        with pytest.raises(ValueError, match=r"names mesh axis 'pipe'"):
            TCL(IN_SHAPE, (2, 2, 2), rngs=nnx.Rngs(0), partitioning={"factors": ("pipe",)})
        with pytest.raises(ValueError, match=r"has 3 entries for a parameter of shape"):
            FactorizedEmbed(V, D, kind="tucker", rank=2, rngs=nnx.Rngs(0),
                            partitioning={"factors": (None, None, "model")})


# ---------------------------------------------------------------------------------------------
# argument checks


def test_bad_arguments(x):
    rngs = nnx.Rngs(0)
    with pytest.raises(ValueError, match=r"out_shape = \(2, 2\) must have one size per mode"):
        TCL(IN_SHAPE, (2, 2), rngs=rngs)
    with pytest.raises(ValueError, match=r"in_shape\[1\] must be a positive int"):
        TCL((3, 0, 5), (2, 2, 2), rngs=rngs)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 3, 4, 5\).*got \(7, 3, 4\)"):
        TCL(IN_SHAPE, (2, 2, 2), rngs=rngs)(x[..., 0])
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 3, 4, 5\).*got \(2, 5, 4, 3\)"):
        TRL(IN_SHAPE, OUT, rank=2, rngs=rngs)(jnp.ones((2, 5, 4, 3)))
    with pytest.raises(ValueError, match=r"kind must be one of .*got 'lowrank'"):
        TRL(IN_SHAPE, OUT, kind="lowrank", rank=2, rngs=rngs)
    with pytest.raises(ValueError, match=r"rank must be a positive integer, got 0"):
        TRL(IN_SHAPE, OUT, kind="cp", rank=0, rngs=rngs)
    with pytest.raises(ValueError, match=r"rank\[1\] must be a positive integer, got -1"):
        TRL(IN_SHAPE, OUT, rank=(2, -1, 2, 2), rngs=rngs)
    with pytest.raises(ValueError, match=r"one Tucker rank per mode"):
        TRL(IN_SHAPE, OUT, rank=(2, 2), rngs=rngs)
    with pytest.raises(ValueError, match=r"rank\[2\] = 13 exceeds the lossless rank 12 of that mode of W = "
                                         r"\(3, 4, 5, 6\) in TT form"):
        TRL(IN_SHAPE, OUT, kind="tt", rank=(1, 2, 13, 2, 1), rngs=rngs)
    with pytest.raises(ValueError, match=r"rank\[2\] = 9 exceeds the lossless rank 5"):
        TRL(IN_SHAPE, OUT, rank=(2, 2, 9, 2), rngs=rngs)
    with pytest.raises(ValueError, match=r"out_features must be a positive int"):
        TRL(IN_SHAPE, 0, rank=2, rngs=rngs)
    with pytest.raises(ValueError, match=r"in_shape = \(5, 5\) has product 25, which must equal "
                                         r"num_embeddings = 24"):
        FactorizedEmbed(V, D, rank=2, in_shape=(5, 5), rngs=rngs)
    with pytest.raises(ValueError, match=r"out_shape = \(5, 2\) has product 10, which must equal "
                                         r"features = 12"):
        FactorizedEmbed(V, D, kind="tucker", rank=2, out_shape=(5, 2), rngs=rngs)
    with pytest.raises(ValueError, match=r"rank must be a positive integer, got -3"):
        FactorizedEmbed(V, D, kind="tt", rank=-3, rngs=rngs)
    with pytest.raises(TypeError, match=r"ids must be an integer array, got dtype float32"):
        FactorizedEmbed(V, D, rank=2, rngs=rngs)(jnp.ones(3))
    with pytest.raises(ValueError, match=r"query must have shape \(\.\.\., 12\), got \(2, 5\)"):
        FactorizedEmbed(V, D, rank=2, rngs=rngs).attend(jnp.ones((2, 5)))
    with pytest.raises(ValueError, match=r"rngs is required"):
        TCL(IN_SHAPE, (2, 2, 2), rngs=None)
