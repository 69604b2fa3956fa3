"""CURDense: a dense layer held as actual columns and rows of its kernel, and compress(method="cur")."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import tensorfact.nn as tnn
from tensorfact.nn import CURDense


def low_rank_layer(n_in, n_out, rank, seed=0):
    layer = nnx.Linear(n_in, n_out, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    layer.kernel[...] = jnp.asarray(rng.normal(size=(n_in, rank)) @ rng.normal(size=(rank, n_out))
                                    / n_in, jnp.float32)
    return layer


def test_full_rank_reproduces_the_dense_layer_and_keeps_actual_columns_and_rows():
    dense = nnx.Linear(20, 12, rngs=nnx.Rngs(0))
    layer = CURDense.from_layer(dense, rank=12)
    x = jax.random.normal(jax.random.key(1), (5, 20))
    np.testing.assert_allclose(layer(x), dense(x), atol=1e-4)
    w = np.asarray(dense.kernel[...])
    np.testing.assert_array_equal(layer.cur_c[...], w[:, list(layer.col_index)])
    np.testing.assert_array_equal(layer.cur_r[...], w[list(layer.row_index), :])
    np.testing.assert_allclose(layer.to_layer()(x), dense(x), atol=1e-4)
    assert layer.n_params == sum(v.size for v in jax.tree_util.tree_leaves(nnx.state(layer)))


def test_exact_on_a_kernel_of_that_rank_and_error_decreases_with_rank():
    dense = low_rank_layer(30, 24, 5)
    x = jax.random.normal(jax.random.key(2), (4, 30))
    np.testing.assert_allclose(CURDense.from_layer(dense, rank=5)(x), dense(x), atol=1e-4)
    noisy = nnx.Linear(30, 24, rngs=nnx.Rngs(3))
    errors = [float(jnp.linalg.norm(CURDense.from_layer(noisy, rank=k).dense_weight()
                                    - noisy.kernel[...])) for k in (4, 12, 24)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4


def test_leverage_sampling_needs_a_key_and_is_keyed():
    dense = low_rank_layer(30, 24, 3)
    a = CURDense.from_layer(dense, rank=3, method="leverage", key=jax.random.key(0))
    b = CURDense.from_layer(dense, rank=3, method="leverage", key=jax.random.key(0))
    assert a.col_index == b.col_index and a.rank == 6  # cur oversamples: 2k columns and rows
    with pytest.raises(ValueError, match="key"):
        CURDense.from_layer(dense, rank=3, method="leverage")


def test_drawn_layer_trains_and_has_flax_default_scale():
    layer = CURDense(64, 32, rank=8, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (256, 64))
    assert 0.3 < float(jnp.std(layer(x))) < 3.0
    target = x[:, :32]
    optimizer = nnx.Optimizer(layer, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(m, opt):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - target) ** 2))(m)
        opt.update(m, grads)
        return loss

    first = float(step(layer, optimizer))
    for _ in range(100):
        last = float(step(layer, optimizer))
    assert last < 0.7 * first


def test_compress_with_cur():
    model = nnx.Sequential(low_rank_layer(64, 32, 4), jax.nn.relu, low_rank_layer(32, 10, 2, 1))
    small, report = tnn.compress(model, rank=0.5, method="cur")
    assert [r.kind for r in report] == ["cur", "cur"]
    assert isinstance(small.layers[0], CURDense) and report.ratio <= 0.5
    x = jax.random.normal(jax.random.key(0), (3, 64))
    np.testing.assert_allclose(small(x), model(x), atol=1e-4)  # ranks 4 and 2 fit in the budget
    assert report[0].flops_after < report[0].flops_before


@pytest.mark.parametrize("kwargs, message", [
    (dict(rank=0), "rank must be a positive integer"),
    (dict(rank=13), r"rank = 13 is larger than min\(in_features, out_features\) = 12"),
    (dict(rank=3, method="qr"), "method must be one of"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CURDense.from_layer(nnx.Linear(20, 12, rngs=nnx.Rngs(0)), **kwargs)


def test_compress_cur_errors():
    model = nnx.Sequential(nnx.Linear(8, 6, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match='leave kind at "lowrank"'):
        tnn.compress(model, rank=2, kind="tt", method="cur")
    with pytest.raises(ValueError, match="per-layer rank"):
        tnn.compress(model, params=0.5, method="cur")
    with pytest.raises(ValueError, match='for method "cur"'):
        tnn.compress(model, rank=("energy", 0.9), method="cur")


def test_array_layer_with_a_bias_of_the_wrong_shape_names_bias():
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\), got \(5,\)"):
        CURDense.from_layer(jnp.ones((6, 4)), rank=2, bias=jnp.ones(5))
    layer = CURDense.from_layer(jnp.ones((6, 4)), rank=1, bias=jnp.arange(4.0))
    np.testing.assert_allclose(layer(jnp.zeros((2, 6))), np.tile(np.arange(4.0), (2, 1)))
