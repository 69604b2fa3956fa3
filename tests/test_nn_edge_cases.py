"""Edge cases of every layer and adapter in ``tensorfact.nn`` (issue 15): zero-size batches,
integer ids of every dtype, NaN-free gradients at degenerate kernels, errors that name
``rngs``, ``key``, the base kernel or the checkpoint parameter; and TT layers with unequal
numbers of input and output factors (issue 14), checked against float64 NumPy references.
"""

from __future__ import annotations

import contextlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from _helpers import rel, x64
from _nn_helpers import np64, perturb, tt_dense_reference
from tensorfact.nn import (DoRA, FactorizedConv, FactorizedDense, LoHa, LoKr, LoRA, LoRAParam,
                           TTAdapter, TTEmbed, TuckerAdapter, checkpoint, compress)

IN, OUT = 24, 12


@pytest.fixture(scope="module")
def bases():
    """An ``nnx.Linear`` and an ``nnx.Conv`` with random biases, shared by the tests."""
    init = {"bias_init": nnx.initializers.normal(1.0), "rngs": nnx.Rngs(0)}
    return nnx.Linear(IN, OUT, **init), nnx.Conv(4, 6, (3, 3), **init)


@pytest.fixture(scope="module")
def linear(bases):
    return bases[0]


@pytest.fixture(scope="module")
def conv(bases):
    return bases[1]


# ---------------------------------------------------------------------------------------------
# zero-size batches


def _layers(linear, conv):
    """``(name, layer, input feature shape)`` for every layer and adapter."""
    rngs = nnx.Rngs(1)
    out = [
        ("dense-lowrank", FactorizedDense(IN, OUT, rank=3, rngs=rngs), (IN,)),
        ("dense-tt", FactorizedDense(IN, OUT, kind="tt", rank=2, rngs=rngs), (IN,)),
        ("conv-tucker", FactorizedConv(4, 6, (3, 3), rank=2, rngs=rngs), (5, 5, 4)),
        ("conv-cp", FactorizedConv(4, 6, (3, 3), kind="cp", rank=2, rngs=rngs), (5, 5, 4)),
        ("tt-adapter", TTAdapter(linear, 2, rngs=rngs), (IN,)),
        ("tucker-adapter", TuckerAdapter(conv, 2, rngs=rngs), (5, 5, 4)),
    ]
    for cls in (LoRA, DoRA, LoKr, LoHa):
        out.append((f"{cls.__name__}-linear", cls(linear, 2, rngs=rngs), (IN,)))
        out.append((f"{cls.__name__}-conv", cls(conv, 2, rngs=rngs), (5, 5, 4)))
    return out


def test_zero_size_batch_gives_an_empty_result_of_the_right_shape(linear, conv):
    for name, layer, features in _layers(linear, conv):
        perturb(layer)                                  # a non-zero update must still be empty
        expected = jax.eval_shape(layer, jax.ShapeDtypeStruct((1,) + features, jnp.float32))
        for lead in ((0,), (3, 0)):
            y = layer(jnp.zeros(lead + features))
            assert y.shape == lead + expected.shape[1:] and y.dtype == expected.dtype, name
        y = nnx.jit(lambda m, x: m(x))(layer, jnp.zeros((0,) + features))
        assert y.shape == (0,) + expected.shape[1:], name
    emb = TTEmbed(60, 12, rank=2, rngs=nnx.Rngs(0))
    assert emb(jnp.zeros((0,), jnp.int32)).shape == (0, 12)
    assert emb(jnp.zeros((2, 0), jnp.uint8)).shape == (2, 0, 12)


# ---------------------------------------------------------------------------------------------
# TTEmbed: ids of every integer dtype


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64", "uint8", "uint16",
                                   "uint32", "uint64"])
def test_embed_ids_of_every_integer_dtype(dtype):
    info = np.iinfo(dtype)
    for n in (1000, 60):                      # more rows than uint8 can count, and fewer
        emb = TTEmbed(n, 8, rank=3, rngs=nnx.Rngs(0))
        table = np64(emb.dense_weight())
        candidates = [0, 1, 59, 60, 127, 200, 255, 999, 1000, 40_000, 2 ** 31 + 5, -1, -128]
        ids = np.array([i for i in candidates if info.min <= i <= info.max], dtype)
        for use_x64 in (False, True):
            with warnings.catch_warnings(), (x64() if use_x64 else contextlib.nullcontext()):
                warnings.simplefilter("ignore", UserWarning)  # 64-bit ids truncated without x64
                got = np64(emb(ids))
                kept = np.asarray(jnp.asarray(ids)).astype(np.int64)  # what JAX holds
            valid = (kept >= 0) & (kept < n)
            np.testing.assert_allclose(got[valid], table[kept[valid]], rtol=1e-5, atol=1e-6)
            assert np.isnan(got[~valid]).all(), (dtype, n, ids[~valid])
            assert valid.any() and (n == 1000 or (~valid).any())


@pytest.fixture(scope="module")
def emb_1000():
    emb = TTEmbed(1000, 8, rank=3, rngs=nnx.Rngs(0))
    return emb, np64(emb.dense_weight())


@settings(max_examples=25, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(["int8", "int16", "int32", "uint8", "uint16",
                                              "uint32"]))
def test_embed_any_id_is_its_row_or_nan(emb_1000, data, dtype):
    emb, table = emb_1000
    info = np.iinfo(dtype)
    ids = np.array(data.draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=4,
                                      max_size=4)), dtype)
    got = np64(jax.jit(emb)(ids))
    for i, row in zip(ids.astype(np.int64), got):
        if 0 <= i < 1000:
            np.testing.assert_allclose(row, table[i], rtol=1e-5, atol=1e-6)
        else:
            assert np.isnan(row).all()


# ---------------------------------------------------------------------------------------------
# gradients at degenerate kernels


def test_dora_gradient_is_finite_with_a_zero_column():
    base = nnx.Linear(6, 4, rngs=nnx.Rngs(0))
    base.kernel[...] = base.kernel[...].at[:, 1].set(0.0)
    dora = DoRA(base, 2, detach_norm=False, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(2), (5, 6))
    np.testing.assert_allclose(dora(x), base(x), rtol=1e-6, atol=1e-6)
    graphdef, params, rest = nnx.split(dora, LoRAParam, ...)

    def loss(params):
        return jnp.sum(nnx.merge(graphdef, params, rest)(x) ** 2)

    grads = jax.grad(loss)(params)
    leaves = jax.tree_util.tree_leaves(grads)
    assert leaves and all(np.isfinite(np.asarray(g)).all() for g in leaves)
    assert np.abs(np.asarray(grads["lora_b"][...])).sum() > 0   # the update does train
    assert np.asarray(grads["magnitude"][...])[1] == 0.0         # nothing flows to a zero column


def test_dora_norm_gradient_matches_finite_differences():
    with x64():
        base = nnx.Linear(5, 3, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
        dora = perturb(DoRA(base, 2, detach_norm=False, rngs=nnx.Rngs(1)))
        x = jax.random.normal(jax.random.key(2), (4, 5), jnp.float64)
        graphdef, params, rest = nnx.split(dora, LoRAParam, ...)

        def loss(params):
            return jnp.sum(jnp.sin(nnx.merge(graphdef, params, rest)(x)))

        check_grads(loss, (params,), order=1, modes=("rev",))


# ---------------------------------------------------------------------------------------------
# errors naming the argument


def test_rngs_errors_name_rngs(linear, conv):
    makers = {
        "FactorizedDense": lambda r: FactorizedDense(IN, OUT, rank=2, rngs=r),
        "FactorizedConv": lambda r: FactorizedConv(4, 6, (3, 3), rank=2, rngs=r),
        "TTEmbed": lambda r: TTEmbed(60, 12, rank=2, rngs=r),
        "LoRA": lambda r: LoRA(linear, 2, rngs=r),
        "DoRA": lambda r: DoRA(linear, 2, rngs=r),
        "LoKr": lambda r: LoKr(linear, 2, rngs=r),
        "LoHa": lambda r: LoHa(linear, 2, rngs=r),
        "TTAdapter": lambda r: TTAdapter(linear, 2, rngs=r),
        "TuckerAdapter": lambda r: TuckerAdapter(conv, 2, rngs=r),
    }
    for name, make in makers.items():
        with pytest.raises(ValueError, match=r"rngs is required .*pass rngs=nnx.Rngs\(seed\)"):
            make(None)
        for bad in (0, jax.random.key(0)):
            with pytest.raises(TypeError, match="rngs must be an nnx.Rngs"):
                make(bad)
        with pytest.raises(ValueError, match="rngs has neither a 'params' nor a 'default'"):
            make(nnx.Rngs(dropout=0))
    # what draws nothing needs no rngs
    LoRA(linear, 2, init="olora")
    LoRA(linear, 2, init="pissa", svd_method="exact")


def test_nonfinite_base_kernels_are_reported_naming_them(linear, conv):
    bad = nnx.clone(linear)
    bad.kernel[...] = bad.kernel[...].at[3, 2].set(jnp.nan)
    for init in ("pissa", "olora"):
        with pytest.raises(ValueError, match=r"base.kernel contains 1 NaN or Inf"):
            LoRA(bad, 2, init=init, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"layer.kernel contains 1 NaN or Inf"):
        FactorizedDense.from_layer(bad, rank=2)
    with pytest.raises(ValueError, match=r"layer contains 1 NaN or Inf"):
        FactorizedDense.from_layer(bad.kernel[...], rank=2)
    bad_conv = nnx.clone(conv)
    bad_conv.kernel[...] = bad_conv.kernel[...].at[0, 0, 0, 0].set(jnp.inf)
    with pytest.raises(ValueError, match=r"layer.kernel contains 1 NaN or Inf"):
        FactorizedConv.from_layer(bad_conv, rank=2)
    table = jnp.ones((60, 12)).at[0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match=r"layer contains 1 NaN or Inf"):
        TTEmbed.from_layer(table, rank=2)


def test_bad_keys_name_key(linear, conv):
    for bad in (0, jnp.ones(2), jax.random.split(jax.random.key(0), 2)):
        with pytest.raises((TypeError, ValueError), match="key"):
            FactorizedDense.from_layer(linear, rank=2, key=bad)
        with pytest.raises((TypeError, ValueError), match="key"):
            FactorizedConv.from_layer(conv, rank=2, key=bad)
        with pytest.raises((TypeError, ValueError), match="key"):
            compress(linear, rank=2, key=bad)
    with pytest.raises(TypeError, match=r"key must be a jax.random key, got int 0"):
        FactorizedDense.from_layer(linear, rank=2, key=0)


def test_restore_into_a_model_of_another_shape_names_the_parameter(tmp_path):
    def make(kind="cp", rank=2, use_bias=False):
        return lambda: FactorizedDense(8, 6, kind=kind, rank=rank, use_bias=use_bias,
                                       rngs=nnx.Rngs(0))

    checkpoint.save(tmp_path / "cp", make()())
    with pytest.raises(ValueError, match=r"parameter 'factors/0' has shape \(4, 2\) in the "
                                         r"checkpoint but \(4, 3\) in the model"):
        checkpoint.restore(tmp_path / "cp", make(rank=3))
    with pytest.raises(ValueError, match=r"parameter 'bias' of the model \(shape \(6,\)\) is "
                                         r"not in the checkpoint"):
        checkpoint.restore(tmp_path / "cp", make(use_bias=True))
    with pytest.raises(ValueError, match=r"the checkpoint holds 'factors/0'"):
        checkpoint.restore(tmp_path / "cp", make(kind="lowrank"))
    restored = checkpoint.restore(tmp_path / "cp", make())     # the right one still works
    assert restored.rank == 2


# ---------------------------------------------------------------------------------------------
# TT layers with unequal numbers of input and output factors


def test_tt_dense_with_unequal_factor_counts_matches_numpy():
    x = jax.random.normal(jax.random.key(0), (5, IN))
    for in_shape, out_shape in (((4, 6), (2, 2, 3)), ((2, 3, 4), (12,))):
        layer = FactorizedDense(IN, OUT, kind="tt", rank=3, in_shape=in_shape,
                                out_shape=out_shape, precision="highest",
                                bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(1))
        d = max(len(in_shape), len(out_shape))
        assert len(layer.in_shape) == len(layer.out_shape) == len(layer.cores) == d
        w = tt_dense_reference([c[...] for c in layer.cores])
        expected = np64(x) @ w + np64(layer.bias[...])
        for contraction in ("factorized", "dense"):
            layer.contraction = contraction
            assert rel(expected, layer(x)) < 1e-5
        assert rel(w, layer.dense_weight()) < 1e-6
        back = FactorizedDense.from_layer(layer.to_layer(), kind="tt", rank="full",
                                          in_shape=in_shape, out_shape=out_shape)
        assert back.out_shape == layer.out_shape and rel(expected, back(x)) < 1e-5


def test_tt_embed_and_adapter_with_unequal_factor_counts_match_numpy(linear):
    emb = TTEmbed(60, 12, rank=3, in_shape=(6, 10), out_shape=(2, 3, 2), rngs=nnx.Rngs(0))
    assert emb.in_shape == (6, 10, 1)
    table = tt_dense_reference([c[...] for c in emb.cores])
    ids = jnp.array([0, 7, 59, 33])
    np.testing.assert_allclose(emb(ids), table[np.asarray(ids)], rtol=1e-5, atol=1e-6)
    tt = perturb(TTAdapter(linear, 2, in_shape=(4, 6), out_shape=(2, 3, 2), alpha=4.0,
                           rngs=nnx.Rngs(1)))
    assert tt.in_shape == (4, 6, 1) and tt.scale == 2.0
    delta = 2.0 * tt_dense_reference([c[...] for c in tt.tt_cores])
    assert rel(delta, tt.delta_weight()) < 1e-6
    x = jax.random.normal(jax.random.key(2), (3, IN))
    expected = np64(x) @ (np64(linear.kernel[...]) + delta) + np64(linear.bias[...])
    assert rel(expected, tt(x)) < 1e-5 and rel(expected, tt.merge()(x)) < 1e-5


def test_precision_strings_and_values():
    layer = FactorizedDense(IN, OUT, rank=2, precision="highest", rngs=nnx.Rngs(0))
    assert layer.precision == jax.lax.Precision.HIGHEST
    assert layer.to_layer().precision == jax.lax.Precision.HIGHEST
    assert FactorizedDense(IN, OUT, rank=2, rngs=nnx.Rngs(0)).precision is None
