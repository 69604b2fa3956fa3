"""Tests for tensorfact.nn.FactorizedConv: Tucker-2 and CP convolutions against nnx.Conv."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.test_util import check_grads

import tensorfact as tfa
from tensorfact.nn import FactorizedConv
from tensorfact.nn._conv import _resolve_rank

from _helpers import rel, x64

HIGH = jax.lax.Precision.HIGHEST
IN, OUT = 6, 5


def numpy_kernel(layer):
    """The kernel rebuilt in float64 NumPy from the factors, independently of the library."""
    arrays = [np.asarray(v[...], np.float64) for v in layer._param_vars()]
    if layer.kind == "tucker":
        core, u, v = arrays
        return np.einsum("...ab,ia,ob->...io", core, u, v)
    *spatial, a, b = arrays
    d = len(spatial)
    letters = "xyz"[:d]
    spec = ",".join(f"{c}r" for c in letters) + ",ir,or->" + letters + "io"
    return np.einsum(spec, *spatial, a, b)


def reference_conv(layer):
    """``nnx.Conv`` with the NumPy-rebuilt kernel and the layer's strides, padding and bias."""
    conv = nnx.Conv(IN, OUT, layer.kernel_size, layer.strides, padding=layer.padding,
                    precision=HIGH, kernel_init=nnx.initializers.zeros_init(), rngs=nnx.Rngs(0))
    conv.kernel[...] = jnp.asarray(numpy_kernel(layer), jnp.float32)
    conv.bias[...] = layer.bias[...]
    return conv


def with_contraction(layer, contraction):
    out = nnx.clone(layer)
    out.contraction = contraction
    return out


CASES = [  # kind, kernel_size, rank, strides, padding, input spatial shape
    ("tucker", (3,), (4, 2), 2, "VALID", (10,)),
    ("cp", (5,), 4, 2, "SAME", (11,)),
    ("tucker", (3, 3), (3, 4), (2, 1), "SAME", (7, 8)),
    ("tucker", (3, 2), 2, 1, ((1, 2), (0, 1)), (6, 5)),
    ("cp", (3, 2), 3, (2, 1), "SAME", (7, 6)),
    ("tucker", (2, 3, 2), 3, (2, 1, 1), "SAME", (4, 5, 3)),
]


@nnx.jit
def _all_outputs(layer, conv, x):
    """Both contractions and the reference nnx.Conv, in one compiled program per case."""
    return (with_contraction(layer, "factorized")(x),
            with_contraction(layer, "dense")(x), conv(x), layer.dense_weight())


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{len(c[1])}d-{c[4]}")
def test_factorized_and_reconstructed_equal_nnx_conv(case):
    kind, ksize, rank, strides, padding, spatial = case
    layer = FactorizedConv(IN, OUT, ksize, kind=kind, rank=rank, strides=strides,
                           padding=padding, precision=HIGH,
                           bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2,) + spatial + (IN,))
    fact, recon, expected, kernel = _all_outputs(layer, reference_conv(layer), x)
    np.testing.assert_allclose(kernel, numpy_kernel(layer), rtol=1e-5, atol=1e-6)
    for y in (fact, recon):
        assert y.shape == expected.shape and y.dtype == jnp.float32
        assert rel(expected, y) < 1e-5


def test_batch_axes_and_to_conv():
    layer = FactorizedConv(IN, OUT, (3, 3), kind="tucker", rank=3, strides=2, precision=HIGH,
                           bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 5, 5, IN))
    expected = reference_conv(layer)(x)
    # no batch axis and extra batch axes, as nnx.Conv
    np.testing.assert_allclose(layer(x[0]), expected[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer(x[None]), expected[None], rtol=1e-4, atol=1e-5)
    assert rel(expected, layer.to_layer()(x)) < 1e-5


def test_vmap_empty_batch_and_grad():
    layer = FactorizedConv(IN, OUT, (3, 3), kind="cp", rank=4, precision=HIGH,
                           contraction="factorized", rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(2), (3, 5, 5, IN))
    y = layer(x)
    np.testing.assert_allclose(jax.vmap(layer)(x), y, rtol=1e-5, atol=1e-6)
    assert layer(jnp.zeros((0, 5, 5, IN))).shape == (0, 5, 5, OUT)
    with x64():
        layer = FactorizedConv(3, 2, (3,), kind="tucker", rank=2, param_dtype=jnp.float64,
                               contraction="factorized", rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(layer)
        x = jax.random.normal(jax.random.key(3), (2, 5, 3), jnp.float64)

        def loss(params, x):
            return jnp.sum(jnp.sin(nnx.merge(graphdef, params)(x)))

        check_grads(jax.jit(loss), (params, x), order=1, modes=["rev"])


def test_auto_picks_the_cheaper_by_flops():
    layer = FactorizedConv(16, 32, (3, 3), kind="tucker", rank=(4, 8), strides=2,
                           rngs=nnx.Rngs(0))
    b, k = 2, 9
    q = 4 * 4                                            # 8×8 SAME at stride 2
    f = layer.flops((b, 8, 8, 16))
    assert f["factorized"] == (2 * b * 64 * 16 * 4 + 2 * b * q * k * 4 * 8
                               + 2 * b * q * 8 * 32)
    assert f["plain"] == 2 * b * q * k * 16 * 32
    assert f["dense"] == 2 * k * 4 * 8 * 16 + 2 * k * 16 * 8 * 32 + f["plain"]
    cp = FactorizedConv(16, 32, (3, 3), kind="cp", rank=6, padding="VALID", rngs=nnx.Rngs(0))
    f = cp.flops((b, 8, 8, 16))                          # 8×8 → 6×8 → 6×6
    assert f["factorized"] == (2 * b * 64 * 16 * 6 + 2 * b * 48 * 3 * 6 + 2 * b * 36 * 3 * 6
                               + 2 * b * 36 * 6 * 32)
    assert f["dense"] == 2 * 6 * 9 * 16 * 32 + 2 * b * 36 * 9 * 16 * 32
    assert cp.choose_contraction((b, 8, 8, 16)) == "factorized"
    full = FactorizedConv(4, 4, (3, 3), kind="cp", rank="full", rngs=nnx.Rngs(0))
    assert full.choose_contraction((64, 3, 3, 4)) == "dense"
    x = jnp.ones((64, 3, 3, 4))
    fixed = with_contraction(full, "dense")
    assert str(jax.make_jaxpr(full)(x)) == str(jax.make_jaxpr(fixed)(x))


# ---------------------------------------------------------------------------------------------
# ranks, parameter counts, initialisation


def test_ranks_and_parameter_counts():
    assert _resolve_rank("tucker", "full", (3, 3), 6, 5) == (6, 5)
    assert _resolve_rank("tucker", "full", (1,), 8, 2) == (2, 2)      # r_in ≤ K·out
    assert _resolve_rank("tucker", 7, (3, 3), 6, 5) == (6, 5)         # capped
    assert _resolve_rank("cp", "full", (3, 3), 6, 5) == 9 * 30 // 6
    assert _resolve_rank("cp", 0.5, (3, 3), 6, 5) == int(0.5 * 270 // 17)
    for fraction in (0.2, 0.5, 0.9):
        r = _resolve_rank("tucker", fraction, (3, 3), 6, 5)
        count = 9 * r[0] * r[1] + 6 * r[0] + 5 * r[1]
        assert count <= fraction * 270 or r == (1, 1)
        bigger = (min(r[0] + 1, 6), min(r[1] + 1, 5))
        if bigger != r:
            assert 9 * bigger[0] * bigger[1] + 6 * bigger[0] + 5 * bigger[1] > fraction * 270
    for kind, rank, count in [("tucker", (3, 4), 9 * 12 + 6 * 3 + 5 * 4),
                              ("cp", 4, 4 * (3 + 3 + 6 + 5))]:
        layer = FactorizedConv(IN, OUT, (3, 3), kind=kind, rank=rank, rngs=nnx.Rngs(0))
        leaves = jax.tree_util.tree_leaves(nnx.state(layer, nnx.Param))
        assert layer.n_params == sum(int(np.size(v)) for v in leaves) == count + OUT
        no_bias = FactorizedConv(IN, OUT, (3, 3), kind=kind, rank=rank, use_bias=False,
                                 rngs=nnx.Rngs(0))
        assert no_bias.n_params == count and no_bias.bias is None


def test_init_variance_matches_lecun_normal():
    """``Var(W) = 1 / (in · ∏ kernel_size)`` for both kinds, over 2048 layers in one program."""
    n_in, n_out, ksize = 12, 10, (3, 3)

    def variances(key):
        out = []
        for kind, rank in (("tucker", (2, 6)), ("cp", 7)):
            layer = FactorizedConv(n_in, n_out, ksize, kind=kind, rank=rank, use_bias=False,
                                   rngs=nnx.Rngs(key))
            out.append(jnp.mean(layer.dense_weight() ** 2))
        return jnp.stack(out)

    keys = jax.random.split(jax.random.key(0, impl="rbg"), 2048)
    got = np.asarray(jax.jit(jax.vmap(variances))(keys)).mean(axis=0) * n_in * math.prod(ksize)
    np.testing.assert_allclose(got, 1.0, rtol=0.05)
    conv = nnx.Conv(n_in, n_out, ksize, rngs=nnx.Rngs(0))          # the reference default
    assert abs(float(jnp.var(conv.kernel[...])) * n_in * 9 - 1) < 0.15


# ---------------------------------------------------------------------------------------------
# from_layer


def test_from_layer_tucker_is_exact_at_full_rank():
    ksize, strides, padding = (2, 3), (2, 1), ((1, 0), (1, 1))
    conv = nnx.Conv(IN, OUT, ksize, strides, padding=padding, precision=HIGH,
                    bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(3))
    layer = FactorizedConv.from_layer(conv, kind="tucker", rank="full")
    assert layer.rank == (IN, OUT) and layer.strides == strides and layer.padding == padding
    assert rel(conv.kernel[...], numpy_kernel(layer)) < 1e-5
    np.testing.assert_array_equal(layer.bias[...], conv.bias[...])
    x = jax.random.normal(jax.random.key(4), (2,) + (7,) * len(ksize) + (IN,))
    fact, recon, expected, _ = _all_outputs(layer, conv, x)
    assert rel(expected, fact) < 1e-5 and rel(expected, recon) < 1e-5


def test_from_layer_tucker_truncation_is_the_partial_tucker():
    conv = nnx.Conv(IN, OUT, (3, 3), rngs=nnx.Rngs(5))
    layer = FactorizedConv.from_layer(conv, kind="tucker", rank=(3, 2))
    core, (u, v) = tfa.tucker(conv.kernel[...], (3, 2), modes=(2, 3))
    expected = np.einsum("...ab,ia,ob->...io", core, u, v)
    np.testing.assert_allclose(numpy_kernel(layer), expected, atol=1e-5)
    assert layer.bias is not None and layer.rank == (3, 2)


def test_from_layer_cp_recovers_a_planted_cp_kernel():
    planted = tfa.random_cp(jax.random.key(6), (3, 3, IN, OUT), rank=3)
    conv = nnx.Conv(IN, OUT, (3, 3), use_bias=False, precision=HIGH, rngs=nnx.Rngs(0))
    conv.kernel[...] = planted.to_dense()
    layer = FactorizedConv.from_layer(conv, kind="cp", rank=3, n_iter=200)
    assert rel(conv.kernel[...], numpy_kernel(layer)) < 1e-4 and layer.bias is None
    x = jax.random.normal(jax.random.key(7), (2, 6, 6, IN))
    fact, recon, expected, _ = _all_outputs(layer, conv, x)
    assert rel(expected, fact) < 1e-4 and rel(expected, recon) < 1e-4
    full = FactorizedConv.from_layer(conv, kind="cp", rank="full")   # explicit exact form
    assert full.rank == 9 * IN * OUT // IN
    assert rel(conv.kernel[...], numpy_kernel(full)) < 1e-5


def test_from_layer_float64():
    with x64():
        conv = nnx.Conv(IN, OUT, (3,), param_dtype=jnp.float64, rngs=nnx.Rngs(1))
        layer = FactorizedConv.from_layer(conv, kind="tucker", rank="full")
        assert all(v[...].dtype == jnp.float64 for v in layer._param_vars())
        assert rel(conv.kernel[...], numpy_kernel(layer)) < 1e-12
        assert layer(jnp.ones((1, 4, IN), jnp.float64)).dtype == jnp.float64


# ---------------------------------------------------------------------------------------------
# training


class _Pair(nnx.Module):
    def __init__(self, rngs):
        self.layers = nnx.List([FactorizedConv(IN, OUT, (3, 3), kind="tucker", rank=3, rngs=rngs),
                                FactorizedConv(IN, OUT, (3, 3), kind="cp", rank=6, rngs=rngs)])

    def __call__(self, x):
        return [layer(x) for layer in self.layers]


def test_both_kinds_train_with_optax_under_jit():
    model = _Pair(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(10), (8, 6, 6, IN))
    target = nnx.Conv(IN, OUT, (3, 3), rngs=nnx.Rngs(11))(x)
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

    def losses(model):
        return jnp.stack([jnp.mean((y - target) ** 2) for y in model(x)])

    @nnx.jit
    def step(model, optimizer):
        (_, per_kind), grads = nnx.value_and_grad(
            lambda m: (jnp.sum(losses(m)), losses(m)), has_aux=True)(model)
        optimizer.update(model, grads)
        return per_kind

    first = np.asarray(step(model, optimizer))
    for _ in range(40):
        last = np.asarray(step(model, optimizer))
    assert np.all(last < 0.5 * first), (first, last)


# ---------------------------------------------------------------------------------------------
# argument checks


class _NotConv(nnx.Module):
    pass


def test_bad_arguments():
    rngs = nnx.Rngs(0)
    with pytest.raises(ValueError, match=r"kind must be one of .*got 'tt'"):
        FactorizedConv(IN, OUT, 3, kind="tt", rank=2, rngs=rngs)
    with pytest.raises(ValueError, match=r"rank\[0\] = 7 exceeds the lossless rank 6"):
        FactorizedConv(IN, OUT, (3, 3), rank=(7, 2), rngs=rngs)
    with pytest.raises(ValueError, match=r"rank must be a pair \(r_in, r_out\)"):
        FactorizedConv(IN, OUT, (3, 3), rank=(2, 2, 2), rngs=rngs)
    with pytest.raises(ValueError, match=r"for kind 'cp', got \(2, 2\)"):
        FactorizedConv(IN, OUT, (3, 3), kind="cp", rank=(2, 2), rngs=rngs)
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match="rank must be"):
            FactorizedConv(IN, OUT, (3, 3), kind="cp", rank=bad, rngs=rngs)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
            FactorizedConv(IN, OUT, (3, 3), rank=bad, rngs=rngs)
    with pytest.raises(ValueError, match="rank must be an int.*got 'half'"):
        FactorizedConv(IN, OUT, (3, 3), rank="half", rngs=rngs)
    with pytest.raises(ValueError, match="other padding modes are not supported"):
        FactorizedConv(IN, OUT, (3, 3), rank=2, padding="CIRCULAR", rngs=rngs)
    with pytest.raises(ValueError, match=r"padding must be .* 2 \(low, high\) pairs"):
        FactorizedConv(IN, OUT, (3, 3), rank=2, padding=((1, 1),), rngs=rngs)
    with pytest.raises(ValueError, match=r"strides must be a positive int or 2 positive ints"):
        FactorizedConv(IN, OUT, (3, 3), rank=2, strides=(1, 1, 1), rngs=rngs)
    with pytest.raises(ValueError, match="kernel_size must be an int or 1 to 3 positive ints"):
        FactorizedConv(IN, OUT, (3, 3, 3, 3), rank=2, rngs=rngs)
    with pytest.raises(ValueError, match="contraction must be one of"):
        FactorizedConv(IN, OUT, 3, rank=2, contraction="reconstructed", rngs=rngs)
    with pytest.raises(ValueError, match="in_features must be a positive integer"):
        FactorizedConv(0, OUT, 3, rank=1, rngs=rngs)
    layer = FactorizedConv(IN, OUT, (3, 3), rank=2, rngs=rngs)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 2 spatial dims, 6\), "
                                         r"got \(2, 5, 5, 4\)"):
        layer(jnp.ones((2, 5, 5, 4)))
    with pytest.raises(ValueError, match="x must have shape"):
        layer(jnp.ones((5, IN)))


def test_bad_from_layer_arguments():
    with pytest.raises(TypeError, match="layer must be an nnx.Conv, got _NotConv"):
        FactorizedConv.from_layer(_NotConv(), rank=2)
    dilated = nnx.Conv(IN, OUT, (3,), kernel_dilation=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="layer.kernel_dilation must be 1"):
        FactorizedConv.from_layer(dilated, rank=2)
    grouped = nnx.Conv(IN, IN, (3,), feature_group_count=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="feature_group_count=1"):
        FactorizedConv.from_layer(grouped, rank=2)
    circular = nnx.Conv(IN, OUT, (3,), padding="CIRCULAR", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="other padding modes are not supported"):
        FactorizedConv.from_layer(circular, rank=2)
