"""Tests of :func:`tensorfact.nn.principal_split` (the PiSSA / OLoRA start of a stack of layers
as one program), of ``LoRA(..., split=...)`` and of LoRA's randomized-SVD settings.

The batched split must equal, layer by layer, what ``LoRA`` computes for that layer with the
same key; a ``LoRA`` built from a precomputed split must equal one built directly; and the
default sketch must be at least as close to the exact split as PEFT's ``pissa_niter_4``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tensorfact.nn._adapters as adapters
from _helpers import rel
from _nn_helpers import np64
from tensorfact.nn import LoRA, principal_split

IN, OUT, RANK, LAYERS = 24, 20, 4, 3


@pytest.fixture(scope="module")
def bases():
    return [nnx.Linear(IN, OUT, bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(i))
            for i in range(LAYERS)]


@pytest.fixture(scope="module")
def kernels(bases):
    return jnp.stack([b.kernel[...] for b in bases])


def _lora_with_key(monkeypatch, base, key, **kw):
    """``LoRA(base, RANK, ...)`` whose randomized SVD draws exactly ``key``."""
    monkeypatch.setattr(adapters, "params_key", lambda rngs, why: key)
    return LoRA(base, RANK, rngs=nnx.Rngs(0), **kw)


@pytest.mark.parametrize("kw", [dict(init="pissa"), dict(init="pissa", svd_method="exact"),
                                dict(init="olora"),
                                dict(init="pissa", alpha=8.0, oversample=0, n_power_iter=4)],
                         ids=["pissa", "pissa_exact", "olora", "pissa_niter_4_alpha"])
def test_the_batch_equals_lora_layer_by_layer(monkeypatch, bases, kernels, kw):
    key = jax.random.key(3)
    a, b, residual = principal_split(kernels, RANK, key=key if kw.get("svd_method") is None
                                     and kw["init"] == "pissa" else None, **kw)
    assert a.shape == (LAYERS, IN, RANK) and b.shape == (LAYERS, RANK, OUT)
    assert residual.shape == kernels.shape and residual.dtype == kernels.dtype
    for layer, layer_key in enumerate(jax.random.split(key, LAYERS)):
        lora = _lora_with_key(monkeypatch, bases[layer], layer_key, **kw)
        # the same computation, mapped: equal to float32 rounding (XLA may order a batched
        # product's sums differently)
        np.testing.assert_allclose(a[layer], lora.lora_a[...], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b[layer], lora.lora_b[...], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(residual[layer], lora.base.kernel[...], rtol=1e-5,
                                   atol=1e-6)


def test_lora_from_a_split_equals_lora_built_directly(monkeypatch, bases, kernels):
    key = jax.random.key(5)
    x = jax.random.normal(jax.random.key(1), (3, IN))
    split = principal_split(kernels, RANK, key=key, alpha=2.0, use_rslora=True)
    for layer, layer_key in enumerate(jax.random.split(key, LAYERS)):
        given = LoRA(bases[layer], RANK, init="pissa", alpha=2.0, use_rslora=True,
                     split=tuple(t[layer] for t in split))            # no rngs needed
        direct = _lora_with_key(monkeypatch, bases[layer], layer_key, init="pissa", alpha=2.0,
                                use_rslora=True)
        assert given.scale == direct.scale == 1.0
        assert given.base is not bases[layer]                   # the layer passed in is intact
        np.testing.assert_array_equal(bases[layer].kernel[...], kernels[layer])
        for got, want in ((given.lora_a, direct.lora_a), (given.lora_b, direct.lora_b),
                          (given.base.kernel, direct.base.kernel)):
            np.testing.assert_allclose(got[...], want[...], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(given(x), direct(x), rtol=1e-5, atol=1e-5)
        assert rel(bases[layer](x), given(x)) < 1e-6                  # starts at the base


def test_split_of_a_conv_and_param_dtype():
    conv = nnx.Conv(3, 8, (2, 2), rngs=nnx.Rngs(0))
    matrix = conv.kernel[...].reshape(-1, 8)                      # (2·2·3, 8)
    a, b, residual = principal_split(matrix[None], 2, init="olora", param_dtype=jnp.bfloat16)
    assert a.dtype == b.dtype == jnp.bfloat16 and residual.dtype == jnp.float32
    for res in (residual[0], residual[0].reshape(conv.kernel.shape)):  # either shape is taken
        lora = LoRA(conv, 2, init="olora", param_dtype=jnp.bfloat16, split=(a[0], b[0], res))
        direct = LoRA(conv, 2, init="olora", param_dtype=jnp.bfloat16)
        np.testing.assert_array_equal(lora.lora_a[...], direct.lora_a[...])
        np.testing.assert_allclose(lora.base.kernel[...], direct.base.kernel[...], atol=1e-6)
        assert lora.base.kernel.shape == conv.kernel.shape


def _decaying(n, seed):
    """An ``n × n`` matrix with singular values ``(1 + i)^{-1/2}`` (like trained weights)."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((n, n)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    s = (1.0 + np.arange(n)) ** -0.5
    return (u * s) @ v.T, s


def test_default_sketch_is_at_least_as_close_as_peft_pissa_niter_4():
    n, rank = 96, 8
    w, s = _decaying(n, 0)
    optimal = np.sqrt(np.sum(s[rank:] ** 2))
    kernels = jnp.asarray(np.stack([w] * 4), jnp.float32)

    def quality(**kw):   # mean over 4 keys of ‖W − principal part‖ / optimum
        _, _, residual = principal_split(kernels, rank, key=jax.random.key(0), **kw)
        return np.mean(np.linalg.norm(np64(residual), axis=(1, 2))) / optimal

    default, peft = quality(), quality(oversample=0, n_power_iter=4)
    assert 1.0 <= default <= peft < 1.05


def test_bad_arguments(bases, kernels):
    base = bases[0]
    rngs = nnx.Rngs(0)
    for bad in (-1, 1.5, True, None):
        for name in ("oversample", "n_power_iter"):
            with pytest.raises(ValueError, match=f"{name} must be a non-negative integer, "
                                                 f"got {bad!r}"):
                LoRA(base, 2, init="pissa", rngs=rngs, **{name: bad})
            with pytest.raises(ValueError, match=f"{name} must be a non-negative integer"):
                principal_split(kernels, 2, key=jax.random.key(0), **{name: bad})
    with pytest.raises(ValueError, match=r"kernels must be a non-empty \(L, in, out\) stack"):
        principal_split(kernels[0], 2, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"kernels must be a non-empty"):
        principal_split(kernels[:0], 2, key=jax.random.key(0))
    with pytest.raises(ValueError, match='key is required for init="pissa" with the randomized'):
        principal_split(kernels, 2)
    with pytest.raises(ValueError, match=r"init must be one of \['olora', 'pissa'\], got "
                                         r"'gaussian'"):
        principal_split(kernels, 2, init="gaussian")
    with pytest.raises(ValueError, match=r"rank = 21 is larger than min\(in, out\) = 20"):
        principal_split(kernels, 21, key=jax.random.key(0))
    bad = kernels.at[1, 2, 3].set(jnp.nan)
    with pytest.raises(ValueError, match=r"kernels\[1\] contains 1 NaN or Inf value"):
        principal_split(bad, 2, init="olora")
    a, b, residual = principal_split(kernels, 2, init="olora")
    with pytest.raises(ValueError, match='split is only for init="pissa" or "olora"'):
        LoRA(base, 2, split=(a[0], b[0], residual[0]))
    with pytest.raises(ValueError, match=r"split's A must have shape \(24, 3\) for this layer "
                                         r"\(rank 3\), got \(24, 2\)"):
        LoRA(base, 3, init="olora", split=(a[0], b[0], residual[0]))
    with pytest.raises(ValueError, match=r"split's residual must have shape \(24, 20\)"):
        LoRA(base, 2, init="olora", split=(a[0], b[0], residual[0, :3]))
    with pytest.raises(ValueError, match=r"split must be a triple \(A, B, residual\)"):
        LoRA(base, 2, init="olora", split=(a[0], b[0]))


# -- separate layers: the list form, LoRA.from_layers, LoRAXS.from_layers, apply_adapters -----

@pytest.mark.parametrize("stack_bytes", [None, 1], ids=["one_run", "layer_by_layer"])
def test_a_list_of_kernels_equals_the_stack_layer_by_layer(monkeypatch, kernels, stack_bytes):
    import tensorfact.nn._common as common
    if stack_bytes is not None:   # every layer alone (a stack would copy too much)
        monkeypatch.setattr(common, "STACK_BYTES", stack_bytes)
    key = jax.random.key(2)
    stacked = principal_split(kernels, RANK, key=key, alpha=3.0)
    listed = principal_split(list(kernels), RANK, key=key, alpha=3.0)
    for got, want in zip(listed, stacked):
        assert isinstance(got, list) and len(got) == LAYERS
        for layer in range(LAYERS):
            assert got[layer].shape == want[layer].shape
            np.testing.assert_allclose(got[layer], want[layer], rtol=1e-5, atol=1e-6)


def test_stack_chunks_bound_the_stacked_bytes():
    from tensorfact.nn._common import STACK_BYTES, stack_chunks
    for n, size in ((10, STACK_BYTES // 4), (8, 4 * STACK_BYTES), (64, 1024), (1, 1)):
        runs = stack_chunks(n, size)
        assert [i for run in runs for i in run] == list(range(n))      # all, once, in order
        assert all(len(run) * size <= STACK_BYTES or len(run) == 1 for run in runs)
        assert len({len(run) for run in runs}) <= 2                    # at most two programs
    assert [len(r) for r in stack_chunks(10, STACK_BYTES // 4)] == [4, 3, 3]
    assert stack_chunks(0, 8) == []


def test_a_bad_list_of_kernels(kernels):
    with pytest.raises(ValueError, match=r"same-shaped, same-dtype 2-D kernel matrices, got "
                                         r"shapes and dtypes \[\(\(3, 20\), 'float32'\), "
                                         r"\(\(24, 20\), 'float32'\)\]"):
        principal_split([kernels[0], kernels[1, :3]], 2, init="olora")
    with pytest.raises(ValueError, match=r"got shapes and dtypes \[\]"):
        principal_split([], 2, init="olora")
    with pytest.raises(ValueError, match=r"kernels\[2\] contains 1 NaN or Inf value"):
        principal_split([kernels[0], kernels[1], kernels[2].at[0, 0].set(jnp.inf)], 2,
                        init="olora")


def _mixed_layers():
    """Two groups of same-shaped layers (Linear 24→20, an Einsum and a Linear 20→24) and one
    layer alone (a Conv)."""
    return [nnx.Linear(IN, OUT, rngs=nnx.Rngs(0)), nnx.Linear(OUT, IN, rngs=nnx.Rngs(1)),
            nnx.Linear(IN, OUT, rngs=nnx.Rngs(2)),
            nnx.Einsum("bi,io->bo", (OUT, IN), rngs=nnx.Rngs(3)),
            nnx.Conv(3, 8, (2, 2), rngs=nnx.Rngs(4)), nnx.Linear(IN, OUT, rngs=nnx.Rngs(5))]


def _input(layer):
    if isinstance(layer, nnx.Conv):
        return jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
    n_in = OUT if (isinstance(layer, nnx.Einsum) or layer.in_features == OUT) else IN
    return jax.random.normal(jax.random.key(0), (2, n_in))


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_lora_from_layers_splits_each_group_in_one_call(monkeypatch, init):
    layers = _mixed_layers()
    calls = []
    real = adapters.principal_split
    monkeypatch.setattr(adapters, "principal_split",
                        lambda kernels, *a, **k: calls.append(len(kernels)) or real(
                            kernels, *a, **k))
    loras = LoRA.from_layers(layers, RANK, init=init, alpha=2.0, rngs=nnx.Rngs(7))
    assert sorted(calls) == [2, 3]          # the 24→20 group and the 20→24 group; Conv alone
    for lora, layer in zip(loras, layers):
        assert isinstance(lora, LoRA) and lora.scale == 0.5 and lora.init == init
        assert lora.base is not layer
        x = _input(layer)
        assert rel(layer(x), lora(x)) < 1e-6                       # starts at the base
        assert rel(lora.dense_weight(), layer.kernel[...]) < 1e-6  # residual + s A B = W
    # the group's split is principal_split of its kernels with the group's one key
    key = nnx.Rngs(7).params()
    a, _, residual = real([layers[i].kernel[...] for i in (0, 2, 5)], RANK, key=key,
                          init=init, alpha=2.0)
    for j, i in enumerate((0, 2, 5)):
        np.testing.assert_allclose(loras[i].lora_a[...], a[j], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(loras[i].base.kernel[...], residual[j], rtol=1e-5,
                                   atol=1e-6)


def test_lora_xs_from_layers_equals_one_by_one():
    from tensorfact.nn import LoRAXS
    layers = [layer for layer in _mixed_layers() if not isinstance(layer, nnx.Einsum)]
    many = LoRAXS.from_layers(layers, RANK, alpha=2.0)
    for xs, layer in zip(many, layers):
        one = LoRAXS(layer, RANK, alpha=2.0)
        # the same exact SVD, mapped: equal up to the signs' rounding-free choice
        np.testing.assert_allclose(np64(xs.xs_a[...]) @ np64(xs.xs_b[...]),
                                   np64(one.xs_a[...]) @ np64(one.xs_b[...]), atol=1e-5)
        x = _input(layer)
        assert bool((xs(x) == layer(x)).all())                      # R = 0: the exact start
    randomized = LoRAXS.from_layers(layers[:1] * 3, RANK, svd_method="randomized",
                                    rngs=nnx.Rngs(0))
    assert all(r.xs_a.shape == (IN, RANK) for r in randomized)
    with pytest.raises(ValueError, match="factors must be a pair"):
        LoRAXS(layers[0], RANK, factors=(many[0].xs_a[...],))
    with pytest.raises(ValueError, match=r"factors' B must have shape \(4, 20\)"):
        LoRAXS(layers[0], RANK, factors=(many[0].xs_a[...], many[0].xs_a[...]))


def test_apply_adapters_splits_same_shaped_layers_together(monkeypatch):
    from tensorfact import nn as tnn

    class Stack(nnx.Module):
        def __init__(self, rngs):
            self.blocks = nnx.List([nnx.Linear(IN, IN, rngs=rngs) for _ in range(4)])
            self.head = nnx.Linear(IN, OUT, rngs=rngs)

        def __call__(self, x):
            for block in self.blocks:
                x = jnp.tanh(block(x))
            return self.head(x)

    model = Stack(nnx.Rngs(0))
    calls = []
    real = adapters.principal_split
    monkeypatch.setattr(adapters, "principal_split",
                        lambda kernels, *a, **k: calls.append(len(kernels)) or real(
                            kernels, *a, **k))
    rules = [tnn.AdapterRule("blocks/.*", rank=RANK, init="pissa"),
             tnn.AdapterRule("head", "lora_xs", rank=RANK)]
    adapted, report = tnn.apply_adapters(model, rules, rngs=nnx.Rngs(1))
    assert calls == [4]                                  # four blocks, one program
    assert [r.path for r in report.layers] == [f"blocks/{i}" for i in range(4)] + ["head"]
    x = jax.random.normal(jax.random.key(0), (3, IN))
    assert rel(model(x), adapted(x)) < 1e-5
    merged = tnn.merge_adapters(adapted)
    assert rel(merged(x), adapted(x)) < 1e-5
    # a bad layer in a group is still named by its path
    bad = Stack(nnx.Rngs(0))
    bad.blocks[2].kernel[...] = bad.blocks[2].kernel[...].at[0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match=r"blocks/2 \(rule 0, .*base.kernel contains 1 NaN"):
        tnn.apply_adapters(bad, rules[:1], rngs=nnx.Rngs(1))
