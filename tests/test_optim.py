"""Tests of ``tensorfact.optim``: proximal Optax transforms against NumPy float64 closed forms
(SVT, soft thresholding), a proximal-gradient loop that drives a matrix's rank down, masks and
argument checks, the loss helpers, tensor dropout (identity, type, unbiasedness by Monte Carlo)
and layer stable ranks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorfact as tfa
from tensorfact import optim
from _helpers import x64


def np_svt(x, tau):
    u, s, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
    return (u * np.maximum(s - tau, 0)) @ vt


def np_shrink(x, tau):
    x = np.asarray(x, np.float64)
    return np.sign(x) * np.maximum(np.abs(x) - tau, 0)


def one_step(tx, params, grads):
    state = tx.init(params)
    updates, _ = tx.update(grads, state, params)
    return optax.apply_updates(params, updates)


# -- proximal transforms ----------------------------------------------------------------------

def test_proximal_nuclear_matches_numpy_svt(rng):
    lr = 0.1
    with x64():
        w = jnp.asarray(rng.standard_normal((6, 4)))
        b = jnp.asarray(rng.standard_normal(4))
        gw = jnp.asarray(rng.standard_normal((6, 4)))
        gb = jnp.asarray(rng.standard_normal(4))
        # threshold between the 2nd and 3rd singular values of the gradient step
        s = np.linalg.svd(np.asarray(w - lr * gw), compute_uv=False)
        lam = float(s[1] + s[2]) / 2 / lr
        tx = optax.chain(optax.sgd(lr), optim.proximal_nuclear(lam, lr))
        out = one_step(tx, {"w": w, "b": b}, {"w": gw, "b": gb})
        want = np_svt(np.asarray(w) - lr * np.asarray(gw), lr * lam)
        assert out["w"].dtype == jnp.float64
        np.testing.assert_allclose(out["w"], want, rtol=1e-12, atol=1e-12)
        # the bias is not 2-D: plain gradient step
        np.testing.assert_allclose(out["b"], np.asarray(b) - lr * np.asarray(gb), atol=1e-14)
        # the threshold removed at least one singular value
        assert np.linalg.matrix_rank(want, tol=1e-9) == 2
        assert np.linalg.matrix_rank(np.asarray(out["w"]), tol=1e-9) == 2


def test_proximal_l1_matches_soft_threshold(rng):
    lr, lam = 0.5, 0.8
    w = jnp.asarray(rng.standard_normal(20), jnp.float32)
    g = jnp.asarray(rng.standard_normal(20), jnp.float32)
    out = one_step(optax.chain(optax.sgd(lr), optim.proximal_l1(lam, lr)), w, g)
    want = np_shrink(np.asarray(w, np.float64) - lr * np.asarray(g, np.float64), lr * lam)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, want, atol=1e-6)
    assert np.sum(np.asarray(out) == 0) == np.sum(want == 0) > 0


@settings(max_examples=15, deadline=None)
@given(lam=st.floats(0, 3), lr=st.floats(0.01, 1.0), seed=st.integers(0, 2**16))
def test_proximal_l1_property(lam, lr, seed):
    r = np.random.default_rng(seed)
    w, u = r.standard_normal(7), r.standard_normal(7)
    with x64():
        out = one_step(optim.proximal_l1(lam, lr), jnp.asarray(w), jnp.asarray(u))
    np.testing.assert_allclose(out, np_shrink(w + u, lr * lam), atol=1e-12)


def test_schedule_uses_step_count(rng):
    sched = optax.exponential_decay(0.2, transition_steps=1, decay_rate=0.5)
    lam = 1.5
    with x64():
        w = jnp.asarray(rng.standard_normal((5, 3)))
        g = jnp.asarray(rng.standard_normal((5, 3)))
        tx = optax.chain(optax.sgd(sched), optim.proximal_nuclear(lam, sched))
        state = tx.init(w)
        want = np.asarray(w)
        for step in range(3):
            u, state = tx.update(g, state, w)
            w = optax.apply_updates(w, u)
            eta = 0.2 * 0.5 ** step
            want = np_svt(want - eta * np.asarray(g), eta * lam)
            np.testing.assert_allclose(w, want, atol=1e-12)


def test_masks(rng):
    lr = 0.1
    params = {"a": jnp.asarray(rng.standard_normal((4, 4)), jnp.float32),
              "b": jnp.asarray(rng.standard_normal((4, 4)), jnp.float32),
              "cp_w": jnp.asarray(rng.standard_normal(5), jnp.float32)}
    grads = jax.tree.map(jnp.zeros_like, params)
    tx = optim.proximal_nuclear(100.0, lr, mask={"a": True, "b": False, "cp_w": False})
    out = one_step(tx, params, grads)
    np.testing.assert_allclose(out["a"], 0, atol=1e-6)  # every σ(a) < τ = 10: all zeroed
    np.testing.assert_array_equal(out["b"], params["b"])
    np.testing.assert_array_equal(out["cp_w"], params["cp_w"])
    # tensor lasso: threshold only the 1-D CP weights
    tx = optim.proximal_l1(1.0, 0.5, mask=lambda p: jax.tree.map(lambda x: x.ndim == 1, p))
    out = one_step(tx, params, grads)
    np.testing.assert_allclose(out["cp_w"], np_shrink(params["cp_w"], 0.5), atol=1e-6)
    np.testing.assert_array_equal(out["a"], params["a"])


def test_proximal_nuclear_drives_rank_down(rng):
    """Proximal gradient on ½‖A W − B‖² + λ‖W‖_*, B from a rank-2 W plus noise: the
    unregularised fit is full rank, the proximal one has exactly 2 nonzero singular values
    and matches a NumPy float64 run of the same iteration."""
    a = rng.standard_normal((30, 8)) / np.sqrt(30)
    w_true = rng.standard_normal((8, 2)) @ rng.standard_normal((2, 6))
    b = a @ w_true + 0.05 * rng.standard_normal((30, 6))
    lr, lam, steps = 0.5, 0.5, 300

    def run(tx):
        af, bf = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
        grad = jax.grad(lambda w: 0.5 * jnp.sum((af @ w - bf) ** 2))

        @jax.jit
        def fit(w):
            def body(carry, _):
                w, state = carry
                u, state = tx.update(grad(w), state, w)
                return (optax.apply_updates(w, u), state), None
            (w, _), _ = jax.lax.scan(body, (w, tx.init(w)), None, length=steps)
            return w
        return np.asarray(fit(jnp.zeros((8, 6), jnp.float32)), np.float64)

    w_prox = run(optax.chain(optax.sgd(lr), optim.proximal_nuclear(lam, lr)))
    w_plain = run(optax.sgd(lr))
    ref = np.zeros((8, 6))
    for _ in range(steps):
        ref = np_svt(ref - lr * a.T @ (a @ ref - b), lr * lam)
    s_prox = np.linalg.svd(w_prox, compute_uv=False)
    s_ref = np.linalg.svd(ref, compute_uv=False)
    s_plain = np.linalg.svd(w_plain, compute_uv=False)
    assert np.sum(s_ref > 1e-8) == 2
    assert np.sum(s_prox > 1e-4 * s_prox[0]) == 2
    assert s_plain[-1] > 1e-2  # without the prox the noise keeps every direction
    np.testing.assert_allclose(s_prox[:2], s_ref[:2], rtol=1e-4)
    np.testing.assert_allclose(w_prox, ref, atol=1e-4)


@pytest.mark.parametrize("dtype, tol", [(jnp.bfloat16, 1e-2), (jnp.float16, 2e-3)])
def test_proximal_nuclear_on_low_precision_leaves(rng, dtype, tol):
    # LAPACK has no bfloat16/float16 SVD: the step runs in float32 and is cast back
    lr = 0.1
    w = jnp.asarray(rng.standard_normal((6, 4)), dtype)
    g = jnp.asarray(rng.standard_normal((6, 4)), dtype)
    start = np.asarray(w, np.float64) - lr * np.asarray(g, np.float64)
    s = np.linalg.svd(start, compute_uv=False)
    lam = float(s[1] + s[2]) / 2 / lr
    tx = optax.chain(optax.sgd(lr), optim.proximal_nuclear(lam, lr))
    state = tx.init(w)
    updates, _ = jax.jit(tx.update)(g, state, w)
    assert updates.dtype == dtype
    out = np.asarray(optax.apply_updates(w, updates), np.float64)
    want = np_svt(start, lr * lam)
    assert np.linalg.norm(out - want) <= tol * np.linalg.norm(want)
    assert np.linalg.svd(out, compute_uv=False)[2] <= tol * s[0]  # thresholded away
    # the penalty as a loss term, too
    np.testing.assert_allclose(float(optim.nuclear_norm({"w": w})),
                               np.linalg.svd(np.asarray(w, np.float64), compute_uv=False).sum(),
                               rtol=1e-5)


def test_errors():
    w = jnp.ones((3, 3))
    tx = optim.proximal_nuclear(1.0, 0.1)
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update(w, tx.init(w))
    tx = optim.proximal_l1(1.0, 0.1)
    with pytest.raises(ValueError, match="needs the parameters"):
        tx.update(w, tx.init(w), None)
    tx = optim.proximal_nuclear(1.0, 0.1, mask=True)
    with pytest.raises(ValueError, match=r"2-D leaves.*\(2, 2, 2\)"):
        one_step(tx, jnp.ones((2, 2, 2)), jnp.ones((2, 2, 2)))
    with pytest.raises(ValueError, match="lam must be >= 0, got -1"):
        optim.proximal_nuclear(-1.0, 0.1)
    with pytest.raises(ValueError, match="learning_rate must be > 0, got 0"):
        optim.proximal_l1(1.0, 0)
    with pytest.raises(ValueError, match="lam must be a real scalar"):
        optim.proximal_l1("big", 0.1)


# -- loss helpers ------------------------------------------------------------------------------

def test_penalties(rng):
    m1, m2 = rng.standard_normal((5, 3)), rng.standard_normal((4, 4))
    v = rng.standard_normal(6)
    with x64():
        tree = {"m1": jnp.asarray(m1), "m2": jnp.asarray(m2), "v": jnp.asarray(v)}
        want = (np.linalg.svd(m1, compute_uv=False).sum()
                + np.linalg.svd(m2, compute_uv=False).sum())
        np.testing.assert_allclose(optim.nuclear_norm(tree), want, rtol=1e-12)
        want_l1 = np.abs(m1).sum() + np.abs(m2).sum() + np.abs(v).sum()
        np.testing.assert_allclose(optim.l1_penalty(tree), want_l1, rtol=1e-12)
        # gradient of the nuclear norm is U Vᵀ (distinct nonzero singular values)
        u, _, vt = np.linalg.svd(m1, full_matrices=False)
        g = jax.grad(optim.nuclear_norm)({"m1": jnp.asarray(m1)})["m1"]
        np.testing.assert_allclose(g, u @ vt, atol=1e-10)
        g = jax.jit(jax.grad(optim.l1_penalty))(jnp.asarray(v))
        np.testing.assert_array_equal(g, np.sign(v))


# -- tensor dropout ----------------------------------------------------------------------------

def _factorized(kind):
    key = jax.random.key(3)
    if kind == "cp":
        return tfa.random_cp(key, (3, 4, 2), rank=3)
    if kind == "tucker":
        return tfa.random_tucker(key, (3, 4, 2), (2, 3, 2))
    k1, k2, k3 = jax.random.split(key, 3)
    return tfa.TTTensor([jax.random.normal(k1, (1, 3, 2)), jax.random.normal(k2, (2, 4, 3)),
                         jax.random.normal(k3, (3, 2, 1))])


@pytest.mark.parametrize("kind", ["cp", "tucker", "tt"])
def test_tensor_dropout(kind):
    t = _factorized(kind)
    assert optim.tensor_dropout(t, 0.0, key=jax.random.key(0)) is t
    rate, n = 0.3, 4000
    drop = jax.jit(jax.vmap(lambda k: optim.tensor_dropout(t, rate, key=k).to_dense()))
    one = optim.tensor_dropout(t, rate, key=jax.random.key(1))
    assert type(one) is type(t)
    assert [x.shape for x in jax.tree.leaves(one)] == [x.shape for x in jax.tree.leaves(t)]
    samples = np.asarray(drop(jax.random.split(jax.random.key(2), n)), np.float64)
    dense = np.asarray(t.to_dense(), np.float64)
    mean, sem = samples.mean(0), samples.std(0) / np.sqrt(n)
    assert np.all(np.abs(mean - dense) <= 5 * sem + 1e-6)
    assert np.max(samples.std(0)) > 0.05  # something was actually dropped
    # deterministic
    again = optim.tensor_dropout(t, rate, key=jax.random.key(1))
    for x, y in zip(jax.tree.leaves(one), jax.tree.leaves(again)):
        np.testing.assert_array_equal(x, y)


def test_tensor_dropout_cp_weights():
    t = _factorized("cp")
    out = optim.tensor_dropout(t, 0.5, key=jax.random.key(5))
    ratio = np.asarray(out.weights / t.weights)
    assert set(np.round(ratio, 5).tolist()) <= {0.0, 2.0}
    for a, b in zip(out.factors, t.factors):
        np.testing.assert_array_equal(a, b)


def test_tensor_dropout_errors():
    t = _factorized("cp")
    for rate in (1, 1.5, -0.1, float("nan"), float("inf"), None, [0.5]):
        with pytest.raises(ValueError, match=r"^rate must be"):
            optim.tensor_dropout(t, rate, key=jax.random.key(0))
    with pytest.raises(TypeError, match="got ndarray"):
        optim.tensor_dropout(np.ones((2, 2)), 0.1, key=jax.random.key(0))
    with pytest.raises(TypeError, match="required keyword-only argument: 'key'"):
        optim.tensor_dropout(t, 0.1)
    with pytest.raises(TypeError, match="positional"):  # 0.1's key-first order
        optim.tensor_dropout(jax.random.key(0), t, 0.1)


BAD_KEYS = {
    "none": (None, ValueError, r"key is required for tensor_dropout"),
    "int": (0, TypeError, r"key must be a jax.random key, got int 0"),
    "float array": (np.zeros(2, np.float32), TypeError, r"key must be a jax.random key, got an "
                    r"array of dtype float32"),
    "batch of keys": (jax.random.split(jax.random.key(0), 3), ValueError,
                      r"key must be a single key, got a batch of keys of shape \(3,\)"),
    "batch of raw keys": (jax.random.split(jax.random.PRNGKey(0), 3), TypeError,
                          r"key must be a jax.random key, got an array of dtype uint32 and shape "
                          r"\(3, 2\)"),
}


@pytest.mark.parametrize("kind", list(BAD_KEYS))
def test_tensor_dropout_bad_keys_name_key(kind):
    key, error, message = BAD_KEYS[kind]
    with pytest.raises(error, match=message):
        optim.tensor_dropout(_factorized("tucker"), 0.3, key=key)


def test_tensor_dropout_takes_a_raw_prng_key():
    t = _factorized("tt")
    raw = optim.tensor_dropout(t, 0.5, key=jax.random.PRNGKey(7))
    typed = optim.tensor_dropout(t, 0.5, key=jax.random.wrap_key_data(jax.random.PRNGKey(7)))
    for a, b in zip(jax.tree.leaves(raw), jax.tree.leaves(typed)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -float("inf"), np.float32("nan")])
def test_hyper_parameters_must_be_finite(bad):
    for make in (optim.proximal_nuclear, optim.proximal_l1):
        with pytest.raises(ValueError, match=r"^lam must be >= 0, got .*\(a finite number\)"):
            make(bad, 0.1)
        with pytest.raises(ValueError, match=r"^learning_rate must be > 0, got .*\(a finite "
                                             r"number\)"):
            make(1.0, bad)
    with pytest.raises(ValueError, match=r"^rate must be"):
        optim.tensor_dropout(_factorized("cp"), bad, key=jax.random.key(0))
    state = optim.stable_rank_monitor().init({"w": jnp.eye(2)})
    with pytest.raises(ValueError, match=r"^threshold must be >= 0"):
        optim.suggest_factorization(state, threshold=bad)
    with pytest.raises(ValueError, match=r"^every must be a positive integer"):
        optim.stable_rank_monitor(every=bad)


def test_hyper_parameters_may_be_traced_and_schedules():
    w = jnp.diag(jnp.array([3.0, 0.05]))

    @jax.jit
    def step(lam, lr):
        tx = optim.proximal_nuclear(lam, lr)
        u, _ = tx.update(jnp.zeros_like(w), tx.init(w), w)
        return optax.apply_updates(w, u)

    np.testing.assert_allclose(jnp.diag(step(1.0, 0.1)), [2.9, 0.0], atol=1e-6)
    tx = optim.proximal_l1(1.0, optax.constant_schedule(0.5))
    u, _ = tx.update(jnp.zeros(2), tx.init(jnp.array([2.0, 0.1])), jnp.array([2.0, 0.1]))
    np.testing.assert_allclose(u, [-0.5, -0.1])


# -- stable ranks ------------------------------------------------------------------------------

def test_layer_stable_ranks(rng):
    params = {"dense": {"kernel": rng.standard_normal((6, 4)), "bias": rng.standard_normal(4)},
              "out": rng.standard_normal((4, 3))}
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)

    def np_stable(m):
        s = np.linalg.svd(np.asarray(m, np.float64), compute_uv=False)
        return np.sum(s ** 2) / s[0] ** 2

    got = jax.jit(optim.layer_stable_ranks)(params)
    assert got["dense"]["bias"] is None
    np.testing.assert_allclose(got["dense"]["kernel"], np_stable(params["dense"]["kernel"]),
                               rtol=1e-5)
    np.testing.assert_allclose(got["out"], np_stable(params["out"]), rtol=1e-5)
    sel = {"dense": {"kernel": False, "bias": False}, "out": True}
    got = optim.layer_stable_ranks(params, sel)
    assert got["dense"]["kernel"] is None and float(got["out"]) > 1
    with pytest.raises(ValueError, match=r"2-D leaves.*\(4,\)"):
        optim.layer_stable_ranks(params, select=lambda x: True)
