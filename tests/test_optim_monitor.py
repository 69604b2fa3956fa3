"""The stable-rank monitor (an Optax transform) and Cuttlefish's switch rule read from it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tensorfact.optim import StableRankState, stable_rank_monitor, suggest_factorization


def np_stable_rank(w):
    """‖W‖_F² / ‖W‖_2² of the (prod(all but last), last) matrix, in float64 NumPy."""
    w = np.asarray(w, np.float64)
    s = np.linalg.svd(w.reshape(-1, w.shape[-1]), compute_uv=False)
    return float(np.sum(s ** 2) / s[0] ** 2)


@pytest.fixture(scope="module")
def params():
    keys = jax.random.split(jax.random.key(0), 4)
    return {"dense": {"kernel": jax.random.normal(keys[0], (6, 4)), "bias": jnp.ones(4)},
            "conv": jax.random.normal(keys[1], (3, 3, 2, 5)),
            "low": jax.random.normal(keys[2], (7, 1)) @ jax.random.normal(keys[3], (1, 5))}


def grads_like(params, seed):
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)])


def test_measures_the_stable_ranks_of_the_matrices(params):
    tx = stable_rank_monitor()
    state = tx.init(params)
    assert isinstance(state, StableRankState)
    assert state.stable_ranks["dense"]["bias"] is None             # 1-D leaves are skipped
    np.testing.assert_array_equal(state.full_ranks["conv"], 5)     # min(3·3·2, 5)
    assert np.isinf(state.relative_change["low"])
    _, state = jax.jit(tx.update)(params, state, params)
    got = state.stable_ranks
    np.testing.assert_allclose(got["dense"]["kernel"], np_stable_rank(params["dense"]["kernel"]),
                               rtol=1e-5)
    np.testing.assert_allclose(got["conv"], np_stable_rank(params["conv"]), rtol=1e-5)
    np.testing.assert_allclose(got["low"], 1.0, rtol=1e-5)            # a rank-1 matrix
    np.testing.assert_array_equal(state.initial_stable_ranks["conv"], got["conv"])
    assert int(state.n_measurements) == 1 and int(state.count) == 1


def test_every_and_relative_change(params):
    """Measurements at update calls 0, 3, 6 from the params passed in; the state is unchanged
    in between; δ = |s_t − s_{t−1}| / s_{t−1}."""
    tx = stable_rank_monitor(every=3, select=lambda p: p.ndim == 4)    # only the conv kernel
    update = jax.jit(tx.update)
    state = tx.init(params)
    assert state.stable_ranks["low"] is None
    p, history = params, []
    for t in range(7):
        old = state
        _, state = update(params, state, p)
        if t % 3 == 0:
            history.append(np_stable_rank(p["conv"]))
            np.testing.assert_allclose(state.stable_ranks["conv"], history[-1], rtol=1e-5)
        else:  # nothing but the step count moves
            for a, b in zip(jax.tree_util.tree_leaves(old._replace(count=0)),
                            jax.tree_util.tree_leaves(state._replace(count=0))):
                np.testing.assert_array_equal(a, b)
        assert int(state.count) == t + 1 and int(state.n_measurements) == len(history)
        p = jax.tree_util.tree_map(lambda w, g: w + 0.3 * g, p, grads_like(p, t))
    np.testing.assert_allclose(state.initial_stable_ranks["conv"], history[0], rtol=1e-5)
    np.testing.assert_allclose(state.relative_change["conv"],
                               abs(history[2] - history[1]) / history[1], rtol=1e-4)


def test_updates_pass_through_bit_for_bit(params):
    grads = grads_like(params, 1)
    tx = stable_rank_monitor()
    updates, _ = tx.update(grads, tx.init(params), params)
    assert updates is grads
    chained = optax.chain(optax.adam(1e-2), stable_rank_monitor(every=2))
    plain = optax.adam(1e-2)
    s1, s2 = chained.init(params), plain.init(params)
    for t in range(3):
        g = grads_like(params, t)
        u1, s1 = jax.jit(chained.update)(g, s1, params)
        u2, s2 = jax.jit(plain.update)(g, s2, params)
        for a, b in zip(jax.tree_util.tree_leaves(u1), jax.tree_util.tree_leaves(u2)):
            np.testing.assert_array_equal(a, b)
    # readable from the whole optimizer state by name
    ranks = optax.tree_utils.tree_get(s1, "stable_ranks")
    np.testing.assert_allclose(ranks["conv"], np_stable_rank(params["conv"]), rtol=1e-5)


class _Net(nnx.Module):
    def __init__(self):
        self.conv = nnx.Conv(2, 4, (3, 3), rngs=nnx.Rngs(0))
        self.dense = nnx.Linear(4, 3, rngs=nnx.Rngs(1))

    def __call__(self, x):
        return self.dense(jnp.mean(jax.nn.relu(self.conv(x)), axis=(1, 2)))


def test_inside_nnx_optimizer():
    model = _Net()
    tx = optax.chain(optax.sgd(0.5), stable_rank_monitor())
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(2), (8, 5, 5, 2))
    y = jax.random.normal(jax.random.key(3), (8, 3))

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        optimizer.update(model, grads)

    for _ in range(2):
        kernels = {k: np.array(getattr(model, k).kernel[...]) for k in ("conv", "dense")}
        step(model, optimizer)
    assert not np.array_equal(kernels["dense"], model.dense.kernel[...])    # it trained
    state = nnx.as_pure(optimizer.opt_state)
    ranks = optax.tree_utils.tree_get(state, "stable_ranks")
    for k in ("conv", "dense"):   # measured from the params the last step started from
        np.testing.assert_allclose(ranks[k]["kernel"], np_stable_rank(kernels[k]), rtol=1e-5)
        assert ranks[k]["bias"] is None
    suggestion = suggest_factorization(state, threshold=1e9)
    assert bool(suggestion.ready)                                 # two measurements, any change
    assert 1 <= int(suggestion.ranks["conv"]["kernel"]) <= 4


def test_bad_arguments(params):
    tx = stable_rank_monitor()
    with pytest.raises(ValueError, match="stable_rank_monitor needs the parameters"):
        tx.update(params, tx.init(params))
    with pytest.raises(ValueError, match="every must be a positive integer, got 0"):
        stable_rank_monitor(every=0)
    with pytest.raises(ValueError, match=r"at least 2 axes; a leaf selected by select has "
                                         r"shape \(4,\)"):
        stable_rank_monitor(select=lambda p: True).init(params)
    with pytest.raises(ValueError, match="holding exactly one StableRankState .* found 0"):
        suggest_factorization(optax.adam(1.0).init(params))
    two = optax.chain(stable_rank_monitor(), stable_rank_monitor()).init(params)
    with pytest.raises(ValueError, match="found 2"):
        suggest_factorization(two)
    with pytest.raises(ValueError, match="threshold must be >= 0, got -1"):
        suggest_factorization(tx.init(params), threshold=-1)


# ---------------------------------------------------------------------------------------------
# Cuttlefish's rule on a constructed state


def constructed(n_measurements=3, change=(0.004, 0.02, 0.0)):
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    return StableRankState(
        count=jnp.asarray(30, jnp.int32), n_measurements=jnp.asarray(n_measurements, jnp.int32),
        stable_ranks={"a": f32(6.2), "b": f32(30.0), "c": f32(0.3), "bias": None},
        initial_stable_ranks={"a": f32(16.0), "b": f32(10.0), "c": f32(2.0), "bias": None},
        relative_change={"a": f32(change[0]), "b": f32(change[1]), "c": f32(change[2]),
                         "bias": None},
        full_ranks={"a": jnp.asarray(64, jnp.int32), "b": jnp.asarray(40, jnp.int32),
                    "c": jnp.asarray(8, jnp.int32), "bias": None})


def test_suggest_factorization_rule():
    state = constructed()
    out = suggest_factorization(state, threshold=0.01)
    # stable iff δ ≤ threshold (after ≥ 2 measurements); ready iff every layer is stable
    assert (bool(out.stable["a"]), bool(out.stable["b"]), bool(out.stable["c"])) == (True, False,
                                                                                     True)
    assert not bool(out.ready) and out.stable["bias"] is None
    assert bool(suggest_factorization(state, threshold=0.02).ready)         # δ = 0.02 counts
    # scaled stable rank: ⌈s · full / s_0⌉, capped at the full rank, at least 1
    assert int(out.ranks["a"]) == 25                                        # ⌈6.2 · 64 / 16⌉
    assert int(out.ranks["b"]) == 40                                        # 120 → min(m, n)
    assert int(out.ranks["c"]) == 2                                         # ⌈0.3 · 8 / 2⌉
    plain = suggest_factorization(state, scaled=False)
    assert [int(plain.ranks[k]) for k in "abc"] == [7, 30, 1]               # ⌈s⌉, at least 1
    # one measurement has no change yet: never ready
    assert not bool(suggest_factorization(constructed(1, (0.0, 0.0, 0.0))).ready)
    # found inside a chain's state, and compiled
    chain_state = (optax.ScaleByAdamState(jnp.zeros([], jnp.int32), {}, {}), state)
    jitted = jax.jit(lambda s: suggest_factorization(s, threshold=0.05))(chain_state)
    assert bool(jitted.ready) and int(jitted.ranks["a"]) == 25
