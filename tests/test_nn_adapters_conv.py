"""The LoRA-family adapters (LoRA, PiSSA, OLoRA, DoRA, LoKr, LoHa) around ``nnx.Conv``.

The kernel ``(spatial..., c_in, c_out)`` is the matrix ``(prod(spatial) c_in, c_out)``; each
adapter must start at the base output, compute the adapted kernel of its formula (float64 NumPy
on that matrix), run a convolution equal to an ``nnx.Conv`` holding that kernel, merge into a
plain ``nnx.Conv``, train only its ``nnx.LoRAParam``s, and reject convolutions it cannot adapt.
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

BIAS = nnx.initializers.normal(1.0)


def conv1d():   # causal padding and a kernel dilation
    return nnx.Conv(3, 5, (3,), padding="CAUSAL", kernel_dilation=2, bias_init=BIAS,
                    rngs=nnx.Rngs(0))


def conv2d():   # strides, explicit padding
    return nnx.Conv(3, 6, (3, 2), strides=(2, 1), padding=((1, 0), (1, 1)), bias_init=BIAS,
                    rngs=nnx.Rngs(1))


def conv3d():   # circular padding
    return nnx.Conv(2, 3, (2, 2, 2), padding="CIRCULAR", bias_init=BIAS, rngs=nnx.Rngs(3))


BASES = {"1d": conv1d, "2d": conv2d, "3d": conv3d}
INPUTS = {"1d": (2, 9, 3), "2d": (2, 7, 5, 3), "3d": (2, 4, 3, 4, 2)}


@pytest.fixture(scope="module")
def bases():
    return {k: f() for k, f in BASES.items()}


def inputs(kind, seed=5):
    return jax.random.normal(jax.random.key(seed), INPUTS[kind])


def build(name, base):
    rngs = nnx.Rngs(7)
    if name == "lora":
        return LoRA(base, 2, alpha=4.0, rngs=rngs)
    if name == "pissa":
        return LoRA(base, 2, init="pissa", svd_method="exact")
    if name == "olora":
        return LoRA(base, 2, init="olora")
    if name == "dora":
        return DoRA(base, 2, rngs=rngs)
    if name == "lokr":
        return LoKr(base, 1, rngs=rngs)
    return LoHa(base, 2, rngs=rngs)


EXACT_START = ("lora", "dora", "lokr", "loha")
ALL = EXACT_START + ("pissa", "olora")


def reference_kernel(adapter):
    """The adapted kernel from the paper's formula on the kernel matrix, in float64 NumPy."""
    shape = adapter.base.kernel[...].shape
    w = np64(adapter.base.kernel[...]).reshape(-1, shape[-1])
    s = adapter.scale
    if isinstance(adapter, LoRA):
        k = w + s * np64(adapter.lora_a[...]) @ np64(adapter.lora_b[...])
    elif isinstance(adapter, DoRA):
        v = w + s * np64(adapter.lora_a[...]) @ np64(adapter.lora_b[...])
        k = np64(adapter.magnitude[...]) * v / np.linalg.norm(v, axis=0)
    elif isinstance(adapter, LoKr):
        d = np64(adapter.lokr_a[...]) @ np64(adapter.lokr_b[...])
        k = w + s * np.kron(np64(adapter.lokr_c[...]), d)
    else:
        m1 = np64(adapter.hada_a1[...]) @ np64(adapter.hada_b1[...])
        m2 = np64(adapter.hada_a2[...]) @ np64(adapter.hada_b2[...])
        k = w + s * m1 * m2
    return k.reshape(shape)


def with_kernel(conv, kernel):
    """A copy of ``conv`` holding ``kernel``: nnx's own convolution, the independent reference."""
    out = nnx.clone(conv)
    out.kernel[...] = jnp.asarray(kernel, jnp.float32)
    return out


# ---------------------------------------------------------------------------------------------
# the start


# every adapter in 1-D and 2-D; in 3-D one per forward path (LoRA's two convs, LoHa's formed ΔK)
@pytest.mark.parametrize("name,kind", [(n, k) for n in EXACT_START for k in ("1d", "2d")]
                         + [("lora", "3d"), ("loha", "3d")])
def test_starts_exactly_at_the_base_output(name, kind, bases):
    base, x = bases[kind], inputs(kind)
    adapter = build(name, base)
    np.testing.assert_array_equal(adapter(x), base(x))
    if name == "dora":  # m / ‖W‖_c is exactly one in a compiled forward too
        np.testing.assert_array_equal(nnx.jit(lambda m, x: m(x))(adapter, x), base(x))


@pytest.mark.parametrize("name", ("pissa", "olora"))
def test_principal_inits_start_at_the_base_output(name, bases):
    base, x = bases["2d"], inputs("2d")
    kernel = np.array(base.kernel[...])
    adapter = build(name, base)
    assert rel(base(x), adapter(x)) < 1e-6
    np.testing.assert_array_equal(base.kernel[...], kernel)      # the layer passed in is intact
    assert adapter.base is not base


def test_pissa_residual_and_principal_part_of_the_reshaped_kernel(bases):
    base = bases["2d"]
    w = np64(base.kernel[...]).reshape(18, 6)                     # (3·2·3, 6)
    adapter = LoRA(base, 3, init="pissa", alpha=6.0, svd_method="exact")     # s = 2
    a, b = np64(adapter.lora_a[...]), np64(adapter.lora_b[...])
    assert a.shape == (18, 3) and b.shape == (3, 6)
    residual = np64(adapter.base.kernel[...])
    assert residual.shape == (3, 2, 3, 6)
    np.testing.assert_allclose(residual.reshape(18, 6) + 2.0 * a @ b, w, atol=2e-6)
    u, sv, vt = np.linalg.svd(w)
    assert rel((u[:, :3] * sv[:3]) @ vt[:3], 2.0 * a @ b) < 1e-5
    randomized = LoRA(base, 3, init="pissa", alpha=6.0, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(np64(randomized.base.kernel[...]).reshape(18, 6)
                               + 2.0 * np64(randomized.lora_a[...]) @ np64(randomized.lora_b[...]),
                               w, atol=2e-6)


def test_olora_from_the_qr_of_the_reshaped_kernel(bases):
    base = bases["1d"]
    w = np64(base.kernel[...]).reshape(9, 5)
    adapter = build("olora", base)
    a, b = np64(adapter.lora_a[...]), np64(adapter.lora_b[...])
    np.testing.assert_allclose(b @ b.T, np.eye(2), atol=1e-5)
    q, r = np.linalg.qr(w.T)
    np.testing.assert_allclose(a @ b, r[:2].T @ q[:, :2].T, atol=1e-5)
    np.testing.assert_allclose(np64(adapter.base.kernel[...]).reshape(9, 5) + a @ b, w, atol=2e-6)


def test_dora_magnitude_per_output_channel(bases):
    base = bases["2d"]
    adapter = build("dora", base)
    expected = np.sqrt((np64(base.kernel[...]) ** 2).sum(axis=(0, 1, 2)))   # over (kh, kw, c_in)
    assert adapter.magnitude[...].shape == (6,)
    np.testing.assert_allclose(adapter.magnitude[...], expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# forward and merge


@pytest.mark.parametrize("kind", ("1d", "2d"))
@pytest.mark.parametrize("name", ALL)
def test_forward_and_merge_match_a_conv_with_the_adapted_kernel(name, kind, bases):
    base, x = bases[kind], inputs(kind)
    adapter = perturb(build(name, base))
    kernel = reference_kernel(adapter)
    assert rel(kernel, adapter.dense_weight()) < 1e-5
    assert rel(kernel - np64(adapter.base.kernel[...]), adapter.delta_weight()) < 1e-5
    expected = with_kernel(adapter.base, kernel)(x)
    y = adapter(x)
    assert y.shape == base(x).shape and rel(expected, y) < 1e-5
    merged = adapter.merge()
    assert type(merged) is nnx.Conv and merged is not adapter.base
    assert merged.kernel[...].shape == base.kernel[...].shape
    np.testing.assert_array_equal(merged.bias[...], base.bias[...])
    assert (merged.strides, merged.padding) == (base.strides, base.padding)
    assert rel(y, merged(x)) < 1e-5


@pytest.mark.parametrize("name", ("lora", "loha"))
def test_3d_forward_and_merge(name, bases):
    base, x = bases["3d"], inputs("3d")
    adapter = perturb(build(name, base))
    y = adapter(x)
    assert rel(with_kernel(base, reference_kernel(adapter))(x), y) < 1e-5
    assert rel(y, adapter.merge()(x)) < 1e-5


def test_lora_runs_as_two_convolutions_without_forming_delta(bases):
    """PEFT's form: a conv c_in → r with the base's kernel size, then a 1×1 conv (a matmul on the
    channel axis) r → c_out; no ΔW of the kernel's size is built in the forward."""
    base, x = bases["2d"], inputs("2d")
    adapter = perturb(build("lora", base))
    jaxpr = jax.make_jaxpr(lambda x: adapter(x))(x)
    convs = [e for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
    kernels = sorted(tuple(e.invars[1].aval.shape) for e in convs)
    assert kernels == [(3, 2, 3, 2), (3, 2, 3, 6)]                # A (in → r = 2) and the base
    dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
    assert [tuple(e.invars[1].aval.shape) for e in dots] == [(2, 6)]   # only B, never A·B


def test_batch_dimensions_like_nnx_conv(bases):
    base = bases["1d"]
    adapter = perturb(build("lora", base))
    x = jax.random.normal(jax.random.key(9), (2, 3, 9, 3))         # two batch axes
    expected = with_kernel(base, reference_kernel(adapter))(x)
    assert adapter(x).shape == (2, 3, 9, 5) and rel(expected, adapter(x)) < 1e-5
    assert rel(expected[0, 0], adapter(x[0, 0])) < 1e-5            # and none


# ---------------------------------------------------------------------------------------------
# training


class _Adapted(nnx.Module):
    def __init__(self, adapters):
        self.adapters = nnx.List(adapters)

    def __call__(self, x):
        return [a(x) for a in self.adapters]


def test_training_moves_only_the_adapters(bases):
    base = bases["2d"]
    names = ("lora", "pissa", "dora", "lokr", "loha")
    model = _Adapted([build(name, base) for name in names])
    frozen = [(np.array(a.base.kernel[...]), np.array(a.base.bias[...])) for a in model.adapters]
    before = [{k: np.array(v) for k, v in nnx.to_flat_state(nnx.state(a, LoRAParam))}
              for a in model.adapters]
    x = jax.random.normal(jax.random.key(10), (8, 7, 5, 3))
    # a rank-2 change of the (18, 6) kernel matrix that LoKr (C (3, 2) ⊗ rank-1 (6, 3)) can
    # represent, and LoRA/DoRA/LoHa of rank 2 too
    c0 = jax.random.normal(jax.random.key(11), (3, 2))
    d0 = jnp.outer(jax.random.normal(jax.random.key(12), (6,)),
                   jax.random.normal(jax.random.key(13), (3,)))
    target = with_kernel(base, base.kernel[...] + 0.3 * jnp.kron(c0, d0).reshape(3, 2, 3, 6))(x)
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
    for _ in range(40):
        last = np.asarray(step(model, optimizer))
    assert np.all(last < 0.7 * first), (first, last)
    for adapter, (kernel, bias), params in zip(model.adapters, frozen, before):
        np.testing.assert_array_equal(adapter.base.kernel[...], kernel)
        np.testing.assert_array_equal(adapter.base.bias[...], bias)
        moved = [not np.array_equal(v, params[k])
                 for k, v in nnx.to_flat_state(nnx.state(adapter, LoRAParam))]
        assert all(moved)


# ---------------------------------------------------------------------------------------------
# argument checks


def test_bad_convolutions_and_arguments(bases):
    rngs = nnx.Rngs(0)
    grouped = nnx.Conv(4, 6, (3, 3), feature_group_count=2, rngs=nnx.Rngs(0))
    for cls in (LoRA, DoRA, LoKr, LoHa):
        with pytest.raises(ValueError, match=r"base.feature_group_count = 2: this adapter takes "
                                             r"an nnx.Conv with feature_group_count == 1 only"):
            cls(grouped, 1, rngs=rngs)
    masked = nnx.Conv(2, 3, (2,), mask=jnp.ones((2, 2, 3)), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="base.mask is set"):
        LoRA(masked, 1, rngs=rngs)
    with pytest.raises(TypeError, match="base must be an nnx.Linear, .* for LoRA, got int"):
        LoRA(3, 1, rngs=rngs)
    with pytest.raises(ValueError, match=r"rank = 6 is larger than "
                                         r"min\(prod\(kernel_size\) \* in_features, "
                                         r"out_features\) = 5"):
        LoRA(bases["1d"], 6, rngs=rngs)
    with pytest.raises(ValueError, match=r"in_shape = \(2, 4\) has product 8, which must equal "
                                         r"prod\(kernel_size\) \* in_features = 9"):
        LoKr(bases["1d"], 1, in_shape=(2, 4), rngs=rngs)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 2 spatial dims, 3\), "
                                         r"got \(2, 7, 5, 4\)"):
        build("lora", bases["2d"])(jnp.ones((2, 7, 5, 4)))
