"""Tests of ``tensorfact.nn.MultilinearMoE`` (μMoE): the forward against a NumPy float64
mixture that materialises the expert tensor, the gates, gradients, the absence of any
``N·I·O`` array in the forward's program, training with Optax under ``nnx.jit``, sharding
annotations, argument checks, ``nnx.eval_shape``, bfloat16 and extreme input scales.

Layers are tiny: XLA compilation dominates the cost on a CPU.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from _helpers import rel
from tensorfact.nn import MultilinearMoE
from tensorfact.sharding import make_mesh

P = jax.sharding.PartitionSpec
I, O, R = 5, 4, 3
CONFIGS = [("cp", None), ("tr", None), ("cp", (2, 3)), ("tr", (2, 3))]
IDS = ["cp", "tr", "cp-hier", "tr-hier"]


def make(kind, expert_shape, *, num_experts=6, rank=R, seed=0, random_gate=True,
         random_bias=True, in_features=I, out_features=O, **kw):
    """A layer whose gates and bias are random (they start at zero), so that the reference
    sees non-uniform routing."""
    layer = MultilinearMoE(in_features, out_features, num_experts=num_experts, rank=rank,
                           kind=kind, expert_shape=expert_shape, rngs=nnx.Rngs(seed), **kw)
    rng = np.random.default_rng(seed + 100)
    if random_gate:
        for g in layer.gate:
            g[...] = jnp.asarray(rng.normal(0.0, 1.0, g.shape), g[...].dtype)
    if random_bias and layer.use_bias:
        layer.bias[...] = jnp.asarray(rng.normal(0.0, 1.0, layer.bias.shape), jnp.float32)
    return layer


def numpy_experts(layer):
    """``W`` of shape ``(N, I, O)`` from the factors, in float64 NumPy (independent of the
    library's ``expert_weights``): CP by one einsum, TR entry by entry as traces."""
    f = [np.asarray(v[...], np.float64) for v in layer._param_vars()]
    d = len(layer.expert_shape)
    if layer.kind == "cp":
        letters = "abcdefg"[:d]
        spec = ",".join(f"{c}r" for c in letters) + ",ir,or->" + letters + "io"
        return np.einsum(spec, *f).reshape(-1, layer.in_features, layer.out_features)
    shape = layer.expert_shape + (layer.in_features, layer.out_features)
    w = np.zeros(shape)
    for idx in np.ndindex(*shape):
        m = np.eye(layer.rank)
        for core, k in zip(f, idx):
            m = m @ core[:, k, :]
        w[idx] = np.trace(m)
    return w.reshape(-1, layer.in_features, layer.out_features)


def softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def numpy_gates(layer, x):
    """``(B, N)``: the product of the per-mode softmaxes, in C order, float64."""
    x = np.asarray(x, np.float64)
    g = np.ones((x.shape[0], 1))
    for kernel in layer.gate:
        gk = softmax(x @ np.asarray(kernel[...], np.float64))
        g = (g[:, :, None] * gk[:, None, :]).reshape(x.shape[0], -1)
    return g


def numpy_forward(layer, x, gates=None):
    """``Σ_n g_n W[n]ᵀ x + b`` in float64 with the dense expert tensor."""
    x = np.asarray(x, np.float64)
    g = numpy_gates(layer, x) if gates is None else gates
    y = np.einsum("bn,nio,bi->bo", g, numpy_experts(layer), x)
    return y + (np.asarray(layer.bias[...], np.float64) if layer.use_bias else 0.0)


@pytest.fixture(scope="module")
def x():
    return jnp.asarray(np.random.default_rng(0).normal(size=(7, I)), jnp.float32)


# ---------------------------------------------------------------------------------------------
# the function computed


@pytest.mark.parametrize("kind, expert_shape", CONFIGS, ids=IDS)
def test_forward_equals_the_dense_mixture(kind, expert_shape, x):
    layer = make(kind, expert_shape, precision="highest")
    ref = numpy_forward(layer, x)
    y = layer(x)
    assert y.shape == (7, O) and y.dtype == jnp.float32
    assert rel(ref, y) < 1e-5
    # leading axes are kept; expert_weights is the same tensor as the NumPy one
    assert rel(ref, layer(x.reshape(7, 1, I))[:, 0]) < 1e-5
    w = layer.expert_weights()
    assert w.shape == (6, I, O)
    assert rel(numpy_experts(layer), w) < 1e-6


def test_hierarchical_equals_the_flat_layer_with_the_product_gate(x):
    """A (2, 3) hierarchical layer is the flat 6-expert mixture weighted by g_1[n_1] g_2[n_2]."""
    layer = make("cp", (2, 3), precision="highest")
    g1 = softmax(np.asarray(x, np.float64) @ np.asarray(layer.gate[0][...], np.float64))
    g2 = softmax(np.asarray(x, np.float64) @ np.asarray(layer.gate[1][...], np.float64))
    outer = np.einsum("ba,bc->bac", g1, g2).reshape(-1, 6)
    assert rel(outer, layer.gates(x)) < 1e-6
    assert rel(numpy_forward(layer, x, gates=outer), layer(x)) < 1e-5


@pytest.mark.parametrize("kind, expert_shape", CONFIGS, ids=IDS)
def test_gates_are_a_distribution(kind, expert_shape, x):
    layer = make(kind, expert_shape)
    g = np.asarray(layer.gates(x * 3.0), np.float64)
    assert g.shape == (7, 6) and (g >= 0).all()
    np.testing.assert_allclose(g.sum(-1), 1.0, atol=1e-6)
    assert g.max() > 0.3          # random gates: not uniform (1/6)
    fresh = MultilinearMoE(I, O, num_experts=6, rank=R, kind=kind, expert_shape=expert_shape,
                           rngs=nnx.Rngs(0))
    np.testing.assert_allclose(fresh.gates(x), 1.0 / 6, rtol=1e-6)   # zero gate at start


@pytest.mark.parametrize("kind, expert_shape", CONFIGS, ids=IDS)
def test_every_factor_and_the_gate_get_a_gradient(kind, expert_shape, x):
    """At initialisation (zero gate kernels, uniform routing) every parameter, the gate's
    included, has a nonzero gradient."""
    layer = MultilinearMoE(I, O, num_experts=6, rank=R, kind=kind, expert_shape=expert_shape,
                           rngs=nnx.Rngs(1))
    target = jnp.asarray(np.random.default_rng(2).normal(size=(7, O)), jnp.float32)
    grads = nnx.grad(lambda m: jnp.mean((m(x) - target) ** 2))(layer)
    flat = nnx.to_flat_state(grads)
    names = {"/".join(map(str, path)) for path, _ in flat}
    d = len(expert_shape or (6,))
    group = "factors" if kind == "cp" else "cores"
    assert names == ({f"{group}/{k}" for k in range(d + 2)} | {f"gate/{k}" for k in range(d)}
                     | {"bias"})
    for path, var in flat:
        g = np.asarray(var.get_value())
        assert np.isfinite(g).all() and np.linalg.norm(g) > 1e-6, path


def test_gradients_match_finite_differences(x):
    """The gradient of a scalar of the output with respect to a gate entry and a factor
    entry, against central differences in float64."""
    from _helpers import x64
    with x64():
        for kind in ("cp", "tr"):
            layer = make(kind, (2, 3), param_dtype=jnp.float64)
            xx = jnp.asarray(x, jnp.float64)
            graphdef, state = nnx.split(layer)

            def loss(state):
                y = nnx.merge(graphdef, state)(xx)
                return jnp.sum(jnp.sin(y))

            grads = jax.grad(loss)(state)
            for path in (("gate", 1), ("factors" if kind == "cp" else "cores", 2)):
                var, gvar = state[path[0]][path[1]], grads[path[0]][path[1]]
                base = np.asarray(var.get_value())
                idx = (0,) * base.ndim
                eps = 1e-6
                vals = []
                for sign in (1, -1):
                    moved = base.copy()
                    moved[idx] += sign * eps
                    var.set_value(jnp.asarray(moved))
                    vals.append(float(loss(state)))
                var.set_value(jnp.asarray(base))
                fd = (vals[0] - vals[1]) / (2 * eps)
                assert abs(fd - float(gvar.get_value()[idx])) < 1e-6 * max(1.0, abs(fd)), path


# ---------------------------------------------------------------------------------------------
# cost: no expert tensor in the program


def _avals(jaxpr):
    """Every abstract value of a jaxpr and of the jaxprs nested in its equations."""
    for v in list(jaxpr.invars) + list(jaxpr.constvars):
        yield v.aval
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            yield v.aval
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (tuple, list)) else (p,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _avals(inner)


def _largest(fn, *args) -> int:
    closed = jax.make_jaxpr(fn)(*args)
    return max(math.prod(getattr(a, "shape", ())) for a in _avals(closed.jaxpr))


@pytest.mark.parametrize("kind, expert_shape", [("cp", None), ("tr", None), ("tr", (2, 4))],
                         ids=["cp", "tr", "tr-hier"])
def test_no_array_of_expert_tensor_size(kind, expert_shape):
    """Neither the forward nor its gradient holds an array of ``N·I·O`` entries (or even of
    ``I·O``: no expert matrix either), while ``expert_weights`` does (the check sees it)."""
    n, i, o, r, b = 8, 16, 12, 3, 4
    layer = MultilinearMoE(i, o, num_experts=n, rank=r, kind=kind, expert_shape=expert_shape,
                           rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(layer)
    xb = jnp.ones((b, i))

    def forward(state, xb):
        return nnx.merge(graphdef, state)(xb)

    def loss(state, xb):
        return jnp.sum(forward(state, xb) ** 2)

    assert _largest(forward, state, xb) < i * o
    assert _largest(jax.grad(loss), state, xb) < i * o
    assert _largest(lambda s: nnx.merge(graphdef, s).expert_weights(), state) >= n * i * o
    f = layer.flops(b)
    assert f["factorized"] < f["dense"]


def test_flops_formulas():
    cp = MultilinearMoE(16, 12, num_experts=8, rank=3, expert_shape=(2, 4), rngs=nnx.Rngs(0))
    tr = MultilinearMoE(16, 12, num_experts=8, rank=3, kind="tr", rngs=nnx.Rngs(0))
    gates = 2 * 5 * 16 * (2 + 4)
    assert cp.flops(5)["factorized"] == gates + 5 * (2 * 3 * (16 + 12 + 6) + 2 * 3)
    assert tr.flops(5)["factorized"] == 2 * 5 * 16 * 8 + 5 * (2 * 9 * (16 + 12 + 8) + 2 * 27)
    assert tr.flops(5)["dense"] == 2 * 5 * 16 * 8 + 5 * (2 * 8 * 16 * 12 + 2 * 8 * 12)


# ---------------------------------------------------------------------------------------------
# initialisation and training


@pytest.mark.parametrize("kind, expert_shape", [("cp", None), ("tr", (2, 4))], ids=["cp", "tr"])
def test_init_gives_unit_output_variance(kind, expert_shape):
    """For unit-variance x, the outputs at initialisation have variance ≈ 1 (averaged over
    layers drawn with different seeds: one layer's variance fluctuates with its few factors)."""
    xs = jax.random.normal(jax.random.key(0), (256, 32))
    var = []
    for seed in range(8):
        layer = MultilinearMoE(32, 32, num_experts=8, rank=8, kind=kind,
                               expert_shape=expert_shape, rngs=nnx.Rngs(seed))
        var.append(float(jnp.var(layer(xs))))
    assert 0.6 < np.mean(var) < 1.6, var


@pytest.mark.parametrize("kind", ["cp", "tr"])
def test_trains_on_a_mixture_of_experts_target(kind):
    """A student μMoE fitted by Adam under nnx.jit to a teacher that is a dense mixture of
    experts with a sharp softmax gate (the teacher's experts are random, not low rank): the
    loss falls by a clear factor, and below that of the best single linear map."""
    rng = np.random.default_rng(0)
    n, i, o, b = 4, 6, 3, 128
    experts = rng.normal(size=(n, i, o)) / math.sqrt(i)
    w_gate = 2.0 * rng.normal(size=(i, n))
    xs = rng.normal(size=(b, i))
    target = np.einsum("bn,nio,bi->bo", softmax(xs @ w_gate), experts, xs)
    linear = np.linalg.lstsq(xs, target, rcond=None)[0]          # the best single expert
    linear_loss = np.mean((xs @ linear - target) ** 2)
    xs, target = jnp.asarray(xs, jnp.float32), jnp.asarray(target, jnp.float32)

    model = MultilinearMoE(i, o, num_experts=n, rank=6, kind=kind, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

    @nnx.jit
    def train(model, optimizer):
        def step(carry, _):
            model, optimizer = carry
            loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(xs) - target) ** 2))(model)
            optimizer.update(model, grads)
            return (model, optimizer), loss
        _, losses = nnx.scan(step, length=300)((model, optimizer), None)
        return losses

    losses = np.asarray(train(model, optimizer))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])
    assert losses[-1] < 0.6 * linear_loss, (losses[-1], linear_loss)   # it uses the mixture
    # the gate has learnt to route: no longer uniform
    assert float(jnp.max(model.gates(xs))) > 0.5


# ---------------------------------------------------------------------------------------------
# sharding annotations


def test_partitioning_on_a_mesh(x):
    mesh = make_mesh((1, 1), ("data", "model"))
    with jax.set_mesh(mesh):
        cp = MultilinearMoE(I, O, num_experts=6, rank=4, rngs=nnx.Rngs(0), partitioning={
            "factors": (None, "model"), "gate": [(None, "model")], "bias": ("model",)})
        tr = MultilinearMoE(I, O, num_experts=6, rank=4, kind="tr", expert_shape=(2, 3),
                            rngs=nnx.Rngs(0), partitioning={"cores": ("model", None, None)})
        y = cp(x)
    assert all(f.sharding.spec == P(None, "model") for f in cp.factors)
    assert cp.gate[0].sharding.spec == P(None, "model")
    assert cp.bias.sharding.spec == P("model")
    specs = nnx.get_partition_spec(nnx.state(tr))
    assert [specs["cores"][k].get_value() for k in range(4)] == [P("model", None, None)] * 4
    plain = MultilinearMoE(I, O, num_experts=6, rank=4, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(y, plain(x), rtol=1e-6, atol=1e-6)   # same draw, same function


@pytest.mark.parametrize("partitioning, match", [
    ({"w": (None,)}, r"names parameter 'w'; this layer has \('factors', 'gate', 'bias'\)"),
    ({"factors": (None, None, "model")}, r"has 3 entries for a parameter of shape \(6, 3\)"),
    ({"factors": (None, "pipe")}, r"names mesh axis 'pipe'.*\('data', 'model'\)"),
    ({"gate": [(None,), (None,)]}, r"list of 2 specs; 'gate' holds 1 arrays"),
    ({"cores": (None,)}, r"names parameter 'cores'"),
])
def test_partitioning_errors(partitioning, match):
    with jax.set_mesh(make_mesh((1, 1), ("data", "model"))):
        with pytest.raises(ValueError, match=match):
            MultilinearMoE(I, O, num_experts=6, rank=3, rngs=nnx.Rngs(0),
                           partitioning=partitioning)
    with pytest.raises(TypeError, match="partitioning must be a mapping"):
        MultilinearMoE(I, O, num_experts=6, rank=3, rngs=nnx.Rngs(0), partitioning=["factors"])


# ---------------------------------------------------------------------------------------------
# arguments, abstract build, dtypes, scales


@pytest.mark.parametrize("kwargs, match", [
    ({"num_experts": 0}, r"num_experts must be a positive integer, got 0"),
    ({"num_experts": 2.5}, r"num_experts must be a positive integer, got 2.5"),
    ({"rank": 0}, r"rank must be a positive integer, got 0"),
    ({"rank": -2}, r"rank must be a positive integer, got -2"),
    ({"kind": "tucker"}, r"kind must be one of \['cp', 'tr'\], got 'tucker'"),
    ({"gate": "entmax"}, r"gate must be one of \['softmax'\], got 'entmax'"),
    ({"expert_shape": (2, 2)}, r"expert_shape = \(2, 2\) has product 4, which must equal "
                               r"num_experts = 6"),
    ({"expert_shape": (2, 0, 3)}, r"expert_shape\[1\] must be a positive integer, got 0"),
    ({"expert_shape": ()}, r"expert_shape must be a non-empty tuple"),
    ({"expert_shape": 6}, r"expert_shape must be a non-empty tuple"),
    ({"in_features": 0}, r"in_features must be a positive integer, got 0"),
])
def test_bad_arguments(kwargs, match):
    args = {"in_features": I, "num_experts": 6, "rank": 3} | kwargs
    with pytest.raises(ValueError, match=match):
        MultilinearMoE(args.pop("in_features"), O, rngs=nnx.Rngs(0), **args)


def test_bad_input_and_rngs():
    layer = MultilinearMoE(I, O, num_experts=6, rank=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 5\), got \(2, 4\)"):
        layer(jnp.ones((2, 4)))
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 5\), got \(\)"):
        layer.gates(jnp.ones(()))
    with pytest.raises(ValueError, match="rngs is required"):
        MultilinearMoE(I, O, num_experts=6, rank=3, rngs=None)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        layer.flops(0)


@pytest.mark.parametrize("kind", ["cp", "tr"])
def test_eval_shape_build_and_jit(kind, x):
    abstract = nnx.eval_shape(lambda: MultilinearMoE(
        I, O, num_experts=6, rank=3, kind=kind, expert_shape=(3, 2), rngs=nnx.Rngs(0)))
    shapes = [v.get_value().shape for v in abstract._param_vars()]
    assert shapes == ([(3, 3), (2, 3), (I, 3), (O, 3)] if kind == "cp"
                      else [(3, 3, 3), (3, 2, 3), (3, I, 3), (3, O, 3)])
    assert isinstance(abstract.gate[0].get_value(), jax.ShapeDtypeStruct)
    assert abstract.n_params == sum(math.prod(s) for s in shapes) + I * (3 + 2) + O
    layer = MultilinearMoE(I, O, num_experts=6, rank=3, kind=kind, expert_shape=(3, 2),
                           use_bias=False, rngs=nnx.Rngs(0))
    assert layer.bias is None
    assert layer.n_params == sum(math.prod(s) for s in shapes) + I * (3 + 2)
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(layer, x), layer(x), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(jax.vmap(layer)(x[:, None])[:, 0], layer(x), rtol=1e-5,
                               atol=1e-6)
    assert layer(jnp.ones((0, I))).shape == (0, O)


@pytest.mark.parametrize("kind", ["cp", "tr"])
def test_bfloat16_compute(kind, x):
    layer = make(kind, (2, 3), dtype=jnp.bfloat16)
    y = layer(x)
    assert y.dtype == jnp.bfloat16
    assert all(v[...].dtype == jnp.float32 for v in layer._param_vars())
    assert np.isfinite(np.asarray(y, np.float32)).all()
    assert layer.gates(x).dtype == jnp.bfloat16
    assert rel(numpy_forward(layer, x), np.asarray(y, np.float32)) < 3e-2


@pytest.mark.parametrize("kind", ["cp", "tr"])
def test_extreme_input_scales(kind, x):
    """At 1e-20 the logits vanish and the gate is uniform; at 1e20 it is one-hot on the
    largest logit: in both cases ``y / s`` is the float64 mixture for those gates (no NaN from
    the softmax, no overflow: nothing squares x)."""
    layer = make(kind, (2, 3), use_bias=False, precision="highest")
    logits = np.asarray(x, np.float64) @ np.asarray(layer.gate[0][...], np.float64)
    for scale in (1e-20, 1e20):
        y = np.asarray(layer(x * scale), np.float64)
        assert np.isfinite(y).all(), scale
        g = np.asarray(layer.gates(x * scale), np.float64)
        np.testing.assert_allclose(g.sum(-1), 1.0, atol=1e-6)
        if scale < 1:
            expected = np.full((7, 6), 1.0 / 6)
        else:
            g1 = np.eye(2)[np.argmax(logits, -1)]
            g2 = np.eye(3)[np.argmax(np.asarray(x, np.float64)
                                     @ np.asarray(layer.gate[1][...], np.float64), -1)]
            expected = np.einsum("ba,bc->bac", g1, g2).reshape(7, 6)
        np.testing.assert_allclose(g, expected, atol=1e-6)
        assert rel(numpy_forward(layer, x, gates=expected), y / scale) < 1e-5, scale
