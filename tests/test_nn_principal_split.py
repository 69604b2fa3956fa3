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
