"""GaLore and SMMF (factorized optimizer state) and state_bytes."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tensorfact.optim import GaLoreState, SMMFState, galore, smmf, state_bytes
from tensorfact.optim._smmf import square_shape

KEY = jax.random.key(0)


def grads_like(params, seed):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)])


# ---------------------------------------------------------------------------------------------
# GaLore
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (3, 2, 4, 6)])
def test_galore_at_full_rank_equals_the_inner_linear_optimizer(shape):
    # with r = min(a, b) the projector is square and orthogonal, so a rotation-equivariant inner
    # transformation (SGD; not Adam, whose second moment is per coordinate) is unchanged
    params = {"w": jnp.zeros(shape)}
    a, b = int(np.prod(shape[:-1])), shape[-1]
    tx = galore(optax.sgd(0.1), rank=min(a, b), update_proj_gap=1, scale=1.0)
    ref = optax.sgd(0.1)
    state, ref_state = tx.init(params), ref.init(params)
    for step in range(3):
        g = grads_like(params, step)
        u, state = tx.update(g, state, params)
        v, ref_state = ref.update(g, ref_state, params)
        np.testing.assert_allclose(u["w"], v["w"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(40, 12), (12, 40), (3, 3, 4, 10)])
def test_galore_updates_lie_in_the_span_of_the_projector(shape):
    params = {"w": jnp.ones(shape)}
    tx = galore(optax.adam(1e-2), rank=3)
    state = tx.init(params)
    a, b = int(np.prod(shape[:-1])), shape[-1]
    for step in range(3):
        u, state = tx.update(grads_like(params, step), state, params)
    p = np.asarray(state.projectors["w"], np.float64)
    assert p.shape == ((b, 3) if a >= b else (a, 3))
    np.testing.assert_allclose(p.T @ p, np.eye(3), atol=1e-5)
    m = np.asarray(u["w"], np.float64).reshape(a, b)
    residual = m - m @ p @ p.T if a >= b else m - p @ p.T @ m
    assert np.abs(residual).max() <= 1e-5 * np.abs(m).max()
    assert np.linalg.matrix_rank(m, tol=1e-5 * np.abs(m).max()) == 3


def test_galore_refreshes_exactly_every_gap_steps_under_jit():
    params = {"w": jnp.zeros((20, 8))}
    tx = galore(optax.adam(1e-2), rank=2, update_proj_gap=3)
    update = jax.jit(tx.update)
    state = tx.init(params)
    previous, changed = state.projectors["w"], []
    for step in range(8):
        _, state = update(grads_like(params, step), state, params)
        changed.append(not np.array_equal(state.projectors["w"], previous))
        previous = state.projectors["w"]
    assert changed == [True, False, False, True, False, False, True, False]
    assert int(state.count) == 8


def test_galore_projector_is_the_leading_subspace_of_the_gradient():
    g = jax.random.normal(KEY, (30, 10))
    tx = galore(optax.sgd(1.0), rank=4)
    _, state = tx.update({"w": g}, tx.init({"w": g}))
    _, _, vt = np.linalg.svd(np.asarray(g, np.float64))
    p = np.asarray(state.projectors["w"], np.float64)
    np.testing.assert_allclose(p @ p.T, vt[:4].T @ vt[:4], atol=1e-5)


def test_galore_state_has_the_projected_shapes_and_leaves_others_to_the_inner():
    params = {"w": jnp.zeros((64, 16)), "v": jnp.zeros((8, 64)), "b": jnp.zeros((16,)),
              "k": jnp.zeros((3, 3, 4, 16))}
    tx = galore(optax.adam(1e-3), rank=4)
    state = tx.init(params)
    mu = state.inner_state[0].mu
    assert mu["w"].shape == (64, 4) and mu["v"].shape == (4, 64) and mu["k"].shape == (36, 4)
    assert mu["b"].shape == (16,) and state.projectors["b"].shape == (0,)
    g = grads_like(params, 1)
    u, _ = tx.update(g, state, params)
    adam_b, _ = optax.adam(1e-3).update({"b": g["b"]}, optax.adam(1e-3).init({"b": params["b"]}))
    np.testing.assert_allclose(u["b"], adam_b["b"], rtol=1e-6)
    assert u["k"].shape == (3, 3, 4, 16)
    # memory: at rank ≤ d/8 the projected matrices' state is at most a quarter of Adam's
    big = {"w": jnp.zeros((256, 256))}
    ratio = state_bytes(galore(optax.adam(1e-3), rank=32).init(big)) / state_bytes(
        optax.adam(1e-3).init(big))
    assert ratio <= 0.25


def test_galore_select_callable_and_tree():
    params = {"w": jnp.zeros((16, 8)), "u": jnp.zeros((16, 8))}
    by_tree = galore(optax.sgd(1.0), rank=2, select={"w": True, "u": False})
    by_fn = galore(optax.sgd(1.0), rank=2, select=lambda leaf: leaf.shape == (99,))
    assert by_tree.init(params).projectors["u"].shape == (0,)
    assert by_fn.init(params).projectors["w"].shape == (0,)
    with pytest.raises(ValueError, match="smaller than rank=12"):
        galore(optax.sgd(1.0), rank=12, select={"w": True, "u": False}).init(params)


def test_galore_inside_multi_transform_and_chain():
    params = {"w": jnp.zeros((24, 12)), "b": jnp.zeros((12,))}
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.multi_transform(
        {"low": galore(optax.adam(1e-2), rank=3), "plain": optax.adam(1e-2)},
        {"w": "low", "b": "plain"}))
    state = tx.init(params)
    u, state = jax.jit(tx.update)(grads_like(params, 5), state, params)
    m = np.asarray(u["w"], np.float64)
    assert np.linalg.matrix_rank(m, tol=1e-5 * np.abs(m).max()) == 3
    assert np.linalg.matrix_rank(np.asarray(u["b"])[None]) == 1


def test_galore_randomized_projection_is_keyed():
    params = {"w": jnp.zeros((40, 20))}
    g = grads_like(params, 3)

    def projector(key):
        tx = galore(optax.sgd(1.0), rank=3, proj="randomized", key=key)
        return tx.update(g, tx.init(params))[1].projectors["w"]

    p = np.asarray(projector(KEY), np.float64)
    np.testing.assert_array_equal(p, projector(KEY))
    _, _, vt = np.linalg.svd(np.asarray(g["w"], np.float64))
    # the leading subspace, to the accuracy of the range finder on a Gaussian matrix
    assert np.linalg.norm(p @ p.T - vt[:3].T @ vt[:3], 2) < 0.5


@pytest.mark.parametrize("kwargs, message", [
    (dict(rank=0), "rank must be a positive integer, got 0"),
    (dict(rank=2, update_proj_gap=0), "update_proj_gap must be a positive integer, got 0"),
    (dict(rank=2, scale=-1.0), "scale must be > 0"),
    (dict(rank=2, proj="qr"), "proj must be one of"),
    (dict(rank=2, proj="randomized"), 'key is required for proj="randomized"'),
    (dict(rank=2, key=KEY), "key is only used with"),
])
def test_galore_bad_arguments_name_themselves(kwargs, message):
    with pytest.raises(ValueError, match=message):
        galore(optax.sgd(1.0), **kwargs)


def test_galore_refuses_what_is_not_a_transformation():
    with pytest.raises(TypeError, match="inner must be an optax.GradientTransformation"):
        galore(lambda g: g, rank=2)


# ---------------------------------------------------------------------------------------------
# SMMF
# ---------------------------------------------------------------------------------------------

def dense_smmf(grads, b1=0.9, growth=0.999, decay=0.5, eps=1e-8):
    """SMMF's recurrences with dense moments, in float64 (the reference)."""
    m = v = 0.0
    out = []
    for t, g in enumerate(grads, start=1):
        beta1, beta2 = b1 * growth ** (t - 1), 1 - t ** (-decay)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        out.append(m / (np.sqrt(v) + eps))
    return out


@pytest.mark.parametrize("shape", [(6, 4), (2, 3, 4, 2), (10,), ()])
def test_smmf_with_rank_one_moments_equals_the_dense_algorithm(shape):
    # gradients c_t · u vᵀ in the square view have rank-one moments, which the rank-one
    # factorization holds exactly (signs included)
    size = int(np.prod(shape))
    n, m = square_shape(size)
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=n), rng.normal(size=m)
    grads = [c * np.outer(u, v).reshape(shape) for c in (1.0, 0.5, 2.0, 1.5, 0.25)]
    tx = scale_only = smmf(1.0)  # learning rate 1: the updates are −u_t
    state = tx.init({"p": jnp.zeros(shape)})
    ref = dense_smmf(grads)
    for g, r in zip(grads, ref):
        upd, state = jax.jit(scale_only.update)({"p": jnp.asarray(g, jnp.float32)}, state)
        np.testing.assert_allclose(-np.asarray(upd["p"], np.float64), r, rtol=2e-5, atol=1e-6)


def test_smmf_state_shapes_and_bytes():
    params = {"w": jnp.zeros((64, 32)), "b": jnp.zeros((7,)), "k": jnp.zeros((3, 3, 16, 32)),
              "s": jnp.zeros(())}
    state = smmf(1e-3).init(params)[0]
    assert isinstance(state, SMMFState)
    assert state.m_row["w"].shape == (64,) and state.m_col["w"].shape == (32,)
    assert state.m_row["b"].shape == (7,) and state.m_col["b"].shape == (1,)  # 7 is prime
    assert state.m_row["k"].shape == (72,) and state.m_col["k"].shape == (64,)
    assert state.m_sign["k"].shape == (4608 // 8,) and state.m_sign["k"].dtype == jnp.uint8
    leaves = jax.tree_util.tree_leaves(smmf(1e-3).init(params))
    assert state_bytes(smmf(1e-3).init(params)) == sum(np.asarray(x).nbytes for x in leaves)
    per_leaf = state_bytes(state, per_leaf=True)
    assert per_leaf[".m_sign['w']"] == 64 * 32 // 8
    assert sum(per_leaf.values()) == state_bytes(state)


def test_smmf_state_is_a_tenth_of_adams_for_a_model():
    model = {"w1": jnp.zeros((784, 256)), "b1": jnp.zeros((256,)), "w2": jnp.zeros((256, 256)),
             "b2": jnp.zeros((256,)), "w3": jnp.zeros((256, 10)), "b3": jnp.zeros((10,))}
    assert state_bytes(smmf(1e-3).init(model)) <= state_bytes(optax.adam(1e-3).init(model)) / 10


def test_smmf_trains_under_jit_in_a_chain_with_weight_decay():
    target = jax.random.normal(KEY, (16, 8))
    params = {"w": jnp.zeros((16, 8))}

    def loss(p):
        return jnp.mean((p["w"] - target) ** 2)

    tx = optax.chain(optax.clip_by_global_norm(10.0), smmf(0.05, weight_decay=1e-4))
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(300):
        params, state = step(params, state)
    assert float(loss(params)) < 0.01 * float(loss({"w": jnp.zeros((16, 8))}))


@pytest.mark.parametrize("kwargs, message", [
    (dict(learning_rate=0.0), "learning_rate must be > 0"),
    (dict(learning_rate=1e-3, b1=1.0), r"b1 must be in \[0, 1\)"),
    (dict(learning_rate=1e-3, growth_rate=1.5), r"growth_rate must be in \[0, 1\]"),
    (dict(learning_rate=1e-3, decay_rate=0.0), "decay_rate must be > 0"),
    (dict(learning_rate=1e-3, eps=float("inf")), "eps must be > 0"),
    (dict(learning_rate=1e-3, weight_decay=-1.0), "weight_decay must be"),
])
def test_smmf_bad_arguments_name_themselves(kwargs, message):
    with pytest.raises(ValueError, match=message):
        smmf(**kwargs)


# ---------------------------------------------------------------------------------------------
# Both, with Flax NNX and on a device mesh
# ---------------------------------------------------------------------------------------------

class MLP(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(16, 32, rngs=rngs)
        self.b = nnx.Linear(32, 4, rngs=rngs)

    def __call__(self, x):
        return self.b(jax.nn.relu(self.a(x)))


@pytest.mark.parametrize("make", [lambda: galore(optax.adamw(2e-2), rank=4, update_proj_gap=20),
                                  lambda: smmf(3e-3)], ids=["galore", "smmf"])
def test_with_nnx_optimizer(make):
    model = MLP(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (64, 16))
    y = x[:, :4] * 2.0
    optimizer = nnx.Optimizer(model, make(), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(train_step(model, optimizer)) for _ in range(100)]
    assert losses[-1] < 0.3 * losses[0]


SHARDED = textwrap.dedent("""
    import json, jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import NamedSharding, PartitionSpec as P
    import tensorfact as tfa
    from tensorfact.optim import galore, smmf
    mesh = tfa.sharding.make_mesh((8,), ("data",))
    params = {"w": jax.random.normal(jax.random.key(0), (64, 16)),
              "b": jnp.zeros((16,))}
    shard = {"w": NamedSharding(mesh, P("data", None)), "b": NamedSharding(mesh, P())}
    sharded = jax.device_put(params, shard)
    out = {}
    for name, tx in {"galore": galore(optax.adam(1e-2), rank=4, update_proj_gap=2),
                     "smmf": smmf(1e-2)}.items():
        results = []
        for p in (params, sharded):
            state = tx.init(p)
            step = jax.jit(tx.update)
            for k in range(3):
                g = jax.tree_util.tree_map(lambda v: jnp.sin(v * (k + 1.0)) + 0.1, p)
                u, state = step(g, state, p)
            results.append(u)
        out[name] = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
            jax.tree_util.tree_leaves(results[0]), jax.tree_util.tree_leaves(results[1])))
        out[name + "_devices"] = len(results[1]["w"].sharding.device_set)
    print(json.dumps(out))
""")


def test_on_a_mesh_of_eight_cpu_devices_as_on_one():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["galore"] < 1e-5 and out["smmf"] < 1e-5
    assert out["smmf_devices"] == 8


def test_state_bytes_counts_shapes_of_an_abstract_state():
    params = {"w": jnp.zeros((100, 10))}
    abstract = jax.eval_shape(optax.adam(1e-3).init, params)
    assert state_bytes(abstract) == state_bytes(optax.adam(1e-3).init(params)) == 8004
    assert isinstance(galore(optax.adam(1e-3), rank=2).init(params), GaLoreState)
    with pytest.raises(TypeError, match="opt_state holds a leaf of type str"):
        state_bytes({"a": "text"})


# ---------------------------------------------------------------------------------------------
# The benchmark and the example, in their smoke presets
# ---------------------------------------------------------------------------------------------

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_script(path, monkeypatch):
    monkeypatch.syspath_prepend(str(path.parent))
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_optimizers_smoke(monkeypatch, tmp_path):
    bench = load_script(ROOT / "benchmarks" / "bench_optimizers.py", monkeypatch)
    results = bench.main(["--small", "--steps", "30", "--json", str(tmp_path / "o.json")])
    assert set(results) == {"adamw", "adafactor", "galore(adamw) r=8", "galore(adamw) r=4",
                            "smmf"}
    adam = results["adamw"]["state_bytes"]
    assert results["smmf"]["state_bytes"] <= adam / 10
    assert results["galore(adamw) r=4"]["state_bytes"] < results["galore(adamw) r=8"][
        "state_bytes"] < adam
    for r in results.values():  # every run learns: the loss falls below chance's log(10)
        assert np.isfinite(r["losses"]).all() and r["losses"][-1] < np.log(10) < r["losses"][0] + 1
    assert json.loads((tmp_path / "o.json").read_text())["steps"] == 30


def test_optimizer_memory_example_quick(monkeypatch, tmp_path):
    pytest.importorskip("matplotlib")
    example = load_script(ROOT / "examples" / "optimizer_memory.py", monkeypatch)
    out = tmp_path / "curves.png"
    results = example.main(["--quick", "--steps", "120", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    adam_bytes = results["AdamW"][1]
    assert results["SMMF"][1] <= adam_bytes / 10
    for losses, _ in results.values():
        assert losses[-20:].mean() < 0.5 * losses[:5].mean()
