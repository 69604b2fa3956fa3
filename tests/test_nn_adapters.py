"""Tests of the adapters in ``tensorfact.nn``: LoRA (Gaussian, PiSSA, OLoRA), DoRA, LoKr, LoHa.

Each adapter must start exactly at its base layer's output, compute the adapted kernel its paper
defines (checked against float64 NumPy), merge into a plain ``nnx.Linear`` that reproduces it,
train only its ``nnx.LoRAParam``s under ``nnx.jit`` with the base left untouched, and reject bad
arguments with clear errors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from _helpers import rel
from _nn_helpers import np64, perturb
from tensorfact.nn import DoRA, LoHa, LoKr, LoRA, LoRAParam

IN, OUT, RANK = 24, 20, 4


@pytest.fixture(scope="module")
def base():
    return nnx.Linear(IN, OUT, bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def x():
    return jax.random.normal(jax.random.key(1), (5, IN))


def build(name, base, **kw):
    rngs = nnx.Rngs(7)
    if name == "lora":
        return LoRA(base, RANK, rngs=rngs, **kw)
    if name == "pissa":
        return LoRA(base, RANK, init="pissa", rngs=rngs, **kw)
    if name == "pissa_exact":
        return LoRA(base, RANK, init="pissa", svd_method="exact", **kw)
    if name == "olora":
        return LoRA(base, RANK, init="olora", **kw)
    if name == "dora":
        return DoRA(base, RANK, rngs=rngs, **kw)
    if name == "lokr":
        return LoKr(base, 2, rngs=rngs, **kw)
    return LoHa(base, RANK, rngs=rngs, **kw)


EXACT_START = ("lora", "dora", "lokr", "loha")
ALL = EXACT_START + ("pissa", "pissa_exact", "olora")


def reference_kernel(adapter):
    """The adapted ``(in, out)`` kernel from the paper's formula, in float64 NumPy."""
    w = np64(adapter.base.kernel[...])
    s = adapter.scale
    if isinstance(adapter, LoRA):
        return w + s * np64(adapter.lora_a[...]) @ np64(adapter.lora_b[...])
    if isinstance(adapter, DoRA):
        v = w + s * np64(adapter.lora_a[...]) @ np64(adapter.lora_b[...])
        return np64(adapter.magnitude[...]) * v / np.linalg.norm(v, axis=0)
    if isinstance(adapter, LoKr):
        d = np64(adapter.lokr_a[...]) @ np64(adapter.lokr_b[...])
        return w + s * np.kron(np64(adapter.lokr_c[...]), d)
    m1 = np64(adapter.hada_a1[...]) @ np64(adapter.hada_b1[...])
    m2 = np64(adapter.hada_a2[...]) @ np64(adapter.hada_b2[...])
    return w + s * m1 * m2


# ---------------------------------------------------------------------------------------------
# the start


@pytest.mark.parametrize("name", EXACT_START)
def test_starts_exactly_at_the_base_output(name, base, x):
    adapter = build(name, base)
    np.testing.assert_array_equal(adapter(x), base(x))
    if name == "dora":  # m / ‖W‖_c must be exactly one in a compiled forward too
        np.testing.assert_array_equal(nnx.jit(lambda m, x: m(x))(adapter, x), base(x))


@pytest.mark.parametrize("name", ("pissa", "pissa_exact", "olora"))
def test_principal_inits_start_at_the_base_output(name, base, x):
    kernel = np.array(base.kernel[...])
    adapter = build(name, base)
    assert rel(base(x), adapter(x)) < 1e-6
    np.testing.assert_array_equal(base.kernel[...], kernel)      # the layer passed in is intact
    assert adapter.base is not base


def test_pissa_is_the_principal_part_and_residual(base):
    w = np64(base.kernel[...])
    u, sv, vt = np.linalg.svd(w)
    principal = (u[:, :RANK] * sv[:RANK]) @ vt[:RANK]
    for name in ("pissa_exact", "pissa"):
        # (tfa.svd's default sketch, r + 10 of the 20 columns of this flat spectrum; LoRA's
        # default r + 8 is checked against PEFT's settings in test_nn_principal_split.py)
        kw = {"oversample": 10} if name == "pissa" else {}
        adapter = build(name, base, alpha=8.0, **kw)              # scale 2 is absorbed
        a, b = np64(adapter.lora_a[...]), np64(adapter.lora_b[...])
        np.testing.assert_allclose(np64(adapter.base.kernel[...]) + 2.0 * a @ b, w, atol=2e-6)
        # randomized SVD with power iterations: close to the exact principal part
        assert rel(principal, 2.0 * a @ b) < (1e-5 if name == "pissa_exact" else 2e-2)
        # A = U S^½ / √s and B = S^½ Vᵀ / √s: equal column and row norms
        np.testing.assert_allclose(np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=1),
                                   rtol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(a, axis=0) ** 2 * 2.0, sv[:RANK],
                                   rtol=1e-5 if name == "pissa_exact" else 2e-2)


def test_olora_is_the_leading_qr_part(base):
    w = np64(base.kernel[...])
    adapter = build("olora", base)
    a, b = np64(adapter.lora_a[...]), np64(adapter.lora_b[...])
    np.testing.assert_allclose(b @ b.T, np.eye(RANK), atol=1e-5)   # B = Q_rᵀ: orthonormal rows
    q, r = np.linalg.qr(w.T)
    # the same leading columns of Q (QR is unique up to the signs of Q's columns)
    np.testing.assert_allclose(np.abs(b @ q[:, :RANK]), np.eye(RANK), atol=1e-5)
    np.testing.assert_allclose(a @ b, (r[:RANK].T) @ q[:, :RANK].T, atol=1e-5)
    np.testing.assert_allclose(np64(adapter.base.kernel[...]) + a @ b, w, atol=2e-6)


# ---------------------------------------------------------------------------------------------
# forward and merge against the papers' formulas


@pytest.mark.parametrize("name", ALL)
def test_forward_and_merge_match_the_formula(name, base, x):
    adapter = perturb(build(name, base))
    expected = np64(x) @ reference_kernel(adapter) + np64(base.bias[...])
    y = adapter(x)
    assert rel(expected, y) < 1e-5
    merged = adapter.merge()
    assert type(merged) is nnx.Linear and merged is not adapter.base
    np.testing.assert_array_equal(merged.bias[...], adapter.base.bias[...])
    assert rel(y, merged(x)) < 1e-5
    assert rel(reference_kernel(adapter), adapter.dense_weight()) < 1e-5
    # the update alone (for DoRA, W' − W, the magnitude included)
    delta = reference_kernel(adapter) - np64(adapter.base.kernel[...])
    assert rel(delta, adapter.delta_weight()) < 1e-5


def test_scales(base, x):
    assert LoRA(base, 4, alpha=8, init="olora").scale == 2.0
    assert LoRA(base, 4, alpha=8, use_rslora=True, init="olora").scale == 4.0
    assert LoRA(base, 4, init="olora").scale == 1.0
    adapter = perturb(LoRA(base, RANK, alpha=16, rngs=nnx.Rngs(0)))
    assert adapter.scale == 4.0
    expected = np64(x) @ reference_kernel(adapter) + np64(base.bias[...])
    assert rel(expected, adapter(x)) < 1e-5


def test_loha_forward_forms_agree(base, x):
    """Few rows use the rank-r² factorization, many form ΔW; both are exact. With r = 4:
    2N·16·44 ≤ 4·4·480 + 2N·480 holds for N = 5, not for N = 64."""
    adapter = perturb(build("loha", base))
    kernel = reference_kernel(adapter)
    for xb in (x, jax.random.normal(jax.random.key(2), (64, IN))):
        assert rel(np64(xb) @ kernel + np64(base.bias[...]), adapter(xb)) < 1e-5


def test_lokr_shapes(base):
    adapter = build("lokr", base)
    assert adapter.in_shape == (4, 6) and adapter.out_shape == (4, 5)
    assert adapter.lokr_c[...].shape == (4, 4)
    assert adapter.lokr_a[...].shape == (6, 2) and adapter.lokr_b[...].shape == (2, 5)
    given = LoKr(base, 1, in_shape=(3, 8), out_shape=(10, 2), rngs=nnx.Rngs(0))
    assert given.lokr_c[...].shape == (3, 10)


def test_dora_detached_norm_changes_only_the_gradient(base, x):
    detached = perturb(build("dora", base))
    attached = nnx.clone(detached)
    attached.detach_norm = False
    np.testing.assert_array_equal(detached(x), attached(x))

    def grad_b(model):
        diff = nnx.DiffState(0, LoRAParam)
        grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2), argnums=diff)(model)
        return np.asarray(grads["lora_b"][...])

    g_detached, g_attached = grad_b(detached), grad_b(attached)
    assert np.all(np.isfinite(g_detached)) and rel(g_attached, g_detached) > 1e-3


def test_bfloat16_base(x):
    base = nnx.Linear(IN, OUT, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    adapter = LoRA(base, RANK, rngs=nnx.Rngs(1))
    assert adapter.lora_a[...].dtype == jnp.bfloat16
    y = adapter(x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(y, base(x))


# ---------------------------------------------------------------------------------------------
# parameter counts and training


def n_trainable(adapter):
    return sum(int(np.size(v)) for v in jax.tree_util.tree_leaves(nnx.state(adapter, LoRAParam)))


def test_parameter_counts(base):
    assert n_trainable(build("lora", base)) == RANK * (IN + OUT)
    assert n_trainable(build("dora", base)) == RANK * (IN + OUT) + OUT
    assert n_trainable(build("lokr", base)) == 4 * 4 + 2 * (6 + 5)   # C (4, 4), A (6, 2), B (2, 5)
    assert n_trainable(build("loha", base)) == 2 * RANK * (IN + OUT)
    # the base stays a plain nnx.Param, outside the trainable filter
    assert n_trainable(build("lora", base)) + IN * OUT + OUT == sum(
        int(np.size(v)) for v in jax.tree_util.tree_leaves(nnx.state(build("lora", base),
                                                                       nnx.Param)))


class _Adapted(nnx.Module):
    def __init__(self, adapters):
        self.adapters = nnx.List(adapters)

    def __call__(self, x):
        return [a(x) for a in self.adapters]


def test_training_moves_only_the_adapters(base):
    names = ("lora", "pissa", "dora", "lokr", "loha")
    model = _Adapted([build(name, base) for name in names])
    frozen = [(np.array(a.base.kernel[...]), np.array(a.base.bias[...])) for a in model.adapters]
    before = [{k: np.array(v) for k, v in
               nnx.to_flat_state(nnx.state(a, LoRAParam))} for a in model.adapters]
    x = jax.random.normal(jax.random.key(10), (64, IN))
    # a change of the kernel of rank 4 that LoKr can represent (C₀ ⊗ rank-1), LoRA mostly
    c0 = jax.random.normal(jax.random.key(11), (4, 4))
    d0 = jnp.outer(jax.random.normal(jax.random.key(12), (6,)),
                   jax.random.normal(jax.random.key(13), (5,)))
    target = base(x) + 0.2 * x @ jnp.kron(c0, d0)
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=LoRAParam)

    def losses(model):
        return jnp.stack([jnp.mean((y - target) ** 2) for y in model(x)])

    @nnx.jit
    def step(model, optimizer):
        diff = nnx.DiffState(0, LoRAParam)
        (_, per_adapter), grads = nnx.value_and_grad(
            lambda m: (jnp.sum(losses(m)), losses(m)), argnums=diff, has_aux=True)(model)
        optimizer.update(model, grads)
        return per_adapter

    first = np.asarray(step(model, optimizer))
    for _ in range(60):
        last = np.asarray(step(model, optimizer))
    assert np.all(last < 0.5 * first), (first, last)
    for adapter, (kernel, bias), params in zip(model.adapters, frozen, before):
        np.testing.assert_array_equal(adapter.base.kernel[...], kernel)
        np.testing.assert_array_equal(adapter.base.bias[...], bias)
        moved = [not np.array_equal(v, params[k]) for k, v in
                 nnx.to_flat_state(nnx.state(adapter, LoRAParam))]
        assert all(moved)


# ---------------------------------------------------------------------------------------------
# argument checks


class _NotLinear(nnx.Module):
    """A module that is not an nnx.Linear (an nnx.Conv would cost a compilation to build)."""


def test_bad_arguments(base):
    rngs = nnx.Rngs(0)
    with pytest.raises(TypeError, match="base must be an nnx.Linear, .*nnx.Conv or nnx.Embed for LoRA, got _NotLinear"):
        LoRA(_NotLinear(), 2, rngs=rngs)
    for cls in (LoRA, DoRA, LoHa):
        with pytest.raises(ValueError, match=r"rank = 21 is larger than min\(in_features, out_features\) = 20"):
            cls(base, 21, rngs=rngs)
        with pytest.raises(ValueError, match="rank must be a positive integer, got 0"):
            cls(base, 0, rngs=rngs)
    with pytest.raises(ValueError, match=r"init must be one of \['gaussian', 'olora', 'pissa'\], got 'svd'"):
        LoRA(base, 2, init="svd", rngs=rngs)
    with pytest.raises(ValueError, match="svd_method must be one of"):
        LoRA(base, 2, init="pissa", svd_method="qr", rngs=rngs)
    with pytest.raises(ValueError, match=r'rngs is required for init="gaussian": pass rngs=nnx.Rngs\(seed\)'):
        LoRA(base, 2)
    with pytest.raises(ValueError, match="rngs is required for init=\"pissa\" with the randomized SVD"):
        LoRA(base, 2, init="pissa")
    with pytest.raises(ValueError, match="rngs is required for DoRA"):
        DoRA(base, 2, rngs=None)
    with pytest.raises(ValueError, match="alpha must be a positive number or None, got -1"):
        LoRA(base, 2, alpha=-1, rngs=rngs)
    with pytest.raises(ValueError, match=r"in_shape = \(5, 5\) has product 25, which must equal in_features = 24"):
        LoKr(base, 1, in_shape=(5, 5), rngs=rngs)
    with pytest.raises(ValueError, match=r"out_shape must be a pair"):
        LoKr(base, 1, out_shape=(2, 2, 5), rngs=rngs)
    with pytest.raises(ValueError, match=r"rank = 6 is larger than min\(in_shape\[1\], out_shape\[1\]\) = 5"):
        LoKr(base, 6, rngs=rngs)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 24\), got \(2, 3\)"):
        build("lora", base)(jnp.ones((2, 3)))
