"""Tests of the tensor-format adapters (``TTAdapter``: LoRETTA; ``TuckerAdapter``: FLoRA) and of
Orbax checkpointing in ``tensorfact.nn``.

Each adapter must start exactly at its base layer's output, compute the update its paper defines
(checked against float64 NumPy), merge into a plain Flax layer that reproduces the adapted
output, train only its ``nnx.LoRAParam``s under ``nnx.jit`` with the base untouched, and reject
bad arguments. A model holding every factorized layer kind, a TT embedding and a LoRA adapter
must come back from an Orbax checkpoint with bit-identical outputs.
"""

from __future__ import annotations

import math
import re
import string

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from _helpers import rel
from _nn_helpers import np64, perturb, tt_dense_reference
from tensorfact.nn import (FactorizedDense, LoRA, LoRAParam, TTAdapter, TTEmbed, TuckerAdapter,
                           checkpoint)

IN, OUT = 24, 12


@pytest.fixture(scope="module")
def linear():
    return nnx.Linear(IN, OUT, bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def conv():
    return nnx.Conv(4, 6, (3, 3), strides=2, padding="CIRCULAR",
                    bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def x():
    return jax.random.normal(jax.random.key(1), (5, IN))


@pytest.fixture(scope="module")
def images():
    return jax.random.normal(jax.random.key(2), (2, 7, 6, 4))


def n_trainable(module):
    return sum(math.prod(v.shape) for v in jax.tree_util.tree_leaves(nnx.state(module, LoRAParam)))


def tucker_reference(core, factors):
    n = len(factors)
    inner, outer = string.ascii_lowercase[:n], string.ascii_lowercase[n:2 * n]
    spec = inner + "," + ",".join(o + i for o, i in zip(outer, inner)) + "->" + outer
    return np.einsum(spec, np64(core), *map(np64, factors))


# ---------------------------------------------------------------------------------------------
# exact start, formula, merge


def test_tt_adapter_starts_exactly_and_matches_the_formula(linear, x):
    tt = TTAdapter(linear, 3, in_shape=(2, 3, 4), out_shape=(2, 3, 2), alpha=6.0,
                   rngs=nnx.Rngs(4))
    assert tt.rank == (1, 3, 3, 1) and tt.scale == 2.0
    np.testing.assert_array_equal(tt(x), linear(x))
    np.testing.assert_array_equal(nnx.jit(lambda m, x: m(x))(tt, x), linear(x))
    assert not np.any(np64(tt.tt_cores[-1][...]))
    perturb(tt)
    kernel = np64(linear.kernel[...]) + 2.0 * tt_dense_reference([g[...] for g in tt.tt_cores])
    assert rel(tt.dense_weight(), kernel) < 1e-6
    y_ref = np64(x) @ kernel + np64(linear.bias[...])
    assert rel(tt(x), y_ref) < 1e-5
    merged = tt.merge()
    assert type(merged) is nnx.Linear
    assert rel(merged(x), tt(x)) < 1e-5
    # leading batch dims
    assert rel(tt(x.reshape(1, 5, IN))[0], y_ref) < 1e-5


def test_tucker_adapter_starts_exactly_and_matches_the_formula(conv, images):
    ad = TuckerAdapter(conv, 2, rngs=nnx.Rngs(5))
    assert ad.rank == (2, 2, 2, 2) and ad.kernel_shape == (3, 3, 4, 6)
    np.testing.assert_array_equal(ad(images), conv(images))
    np.testing.assert_array_equal(nnx.jit(lambda m, x: m(x))(ad, images), conv(images))
    for u in ad.tucker_factors:                        # orthonormal columns
        np.testing.assert_allclose(np64(u[...]).T @ np64(u[...]), np.eye(2), atol=1e-6)
    perturb(ad)
    delta = tucker_reference(ad.tucker_core[...], [u[...] for u in ad.tucker_factors])
    assert rel(ad.delta_weight(), delta) < 1e-6
    assert rel(ad.dense_weight(), np64(conv.kernel[...]) + delta) < 1e-6
    merged = ad.merge()
    assert type(merged) is nnx.Conv and merged.padding == "CIRCULAR"
    assert rel(ad(images), merged(images)) < 1e-5
    assert rel(ad(images), conv(images)) > 1e-2      # the update does change the output


@pytest.mark.parametrize("case", ["2d_groups", "1d_causal"])
def test_tucker_adapter_follows_the_base_convolution(case, images):
    if case == "2d_groups":
        base = nnx.Conv(4, 6, (3, 2), padding="SAME", feature_group_count=2, rngs=nnx.Rngs(1))
        x, rank = images, (2, 1, 2, 3)
    else:  # causal padding, a dilated kernel and two batch dimensions
        base = nnx.Conv(3, 5, (3,), padding="CAUSAL", kernel_dilation=2, use_bias=False,
                        rngs=nnx.Rngs(1))
        x, rank = jax.random.normal(jax.random.key(3), (2, 4, 9, 3)), 2
    ad = TuckerAdapter(base, rank, alpha=3.0, rngs=nnx.Rngs(2))
    np.testing.assert_array_equal(ad(x), base(x))
    perturb(ad)
    assert rel(ad(x), ad.merge()(x)) < 1e-5
    assert rel(ad(x), base(x)) > 1e-2
    if case == "2d_groups":
        assert ad.scale == 1.0 and ad.n_params == 12 + 3 * 2 + 2 * 1 + 2 * 2 + 6 * 3
    else:
        assert ad.rank == (2, 2, 2) and ad.scale == 1.5


# ---------------------------------------------------------------------------------------------
# parameter counts and training


def test_parameter_counts(linear, conv):
    # nnx.eval_shape builds the adapters abstractly: shapes and counts without compiling
    tt = nnx.eval_shape(lambda: TTAdapter(linear, 2, in_shape=(2, 3, 4), out_shape=(2, 3, 2),
                                          rngs=nnx.Rngs(0)))
    expected = 1 * 2 * 2 * 2 + 2 * 3 * 3 * 2 + 2 * 4 * 2 * 1
    assert tt.n_params == n_trainable(tt) == expected
    # merged modes (4, 9, 8): capped at min(4, 72) and min(36, 8)
    capped = nnx.eval_shape(lambda: TTAdapter(linear, 50, in_shape=(2, 3, 4),
                                              out_shape=(2, 3, 2), rngs=nnx.Rngs(0)))
    assert capped.rank == (1, 4, 8, 1)
    assert [g.shape for g in capped.tt_cores] == [(1, 2, 2, 4), (4, 3, 3, 8), (8, 4, 2, 1)]
    ad = nnx.eval_shape(lambda: TuckerAdapter(conv, 5, rngs=nnx.Rngs(0)))
    assert ad.rank == (3, 3, 4, 5)                                       # capped at each mode
    assert ad.n_params == n_trainable(ad) == 3 * 3 * 4 * 5 + 9 + 9 + 16 + 30
    # the bases stay plain nnx.Param, outside the trainable filter
    assert not any(isinstance(v, LoRAParam) for _, v in nnx.iter_graph(ad.base))
    assert n_trainable(ad.base) == 0


class _Model(nnx.Module):
    def __init__(self, linear, conv):
        self.tt = TTAdapter(linear, 3, rngs=nnx.Rngs(6))
        self.tucker = TuckerAdapter(conv, 2, rngs=nnx.Rngs(7))

    def __call__(self, x, images):
        return self.tt(x), self.tucker(images)


def test_training_moves_only_the_adapters(linear, conv, x, images):
    model = _Model(nnx.clone(linear), nnx.clone(conv))
    frozen = [np.array(v) for v in jax.tree_util.tree_leaves(
        (nnx.state(model.tt.base), nnx.state(model.tucker.base)))]
    before = jax.tree_util.tree_map(np.array, nnx.state(model, LoRAParam))
    w1 = jax.random.normal(jax.random.key(8), (IN, OUT))
    k1 = jax.random.normal(jax.random.key(9), conv.kernel.shape)
    t_dense = linear(x) + 0.3 * x @ w1
    t_conv = nnx.clone(conv)                       # no new initialisation to compile
    t_conv.kernel[...] = conv.kernel[...] + 0.3 * k1
    t_images = t_conv(images)
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=LoRAParam)

    def losses(m):
        y, z = m(x, images)
        return jnp.stack([jnp.mean((y - t_dense) ** 2), jnp.mean((z - t_images) ** 2)])

    @nnx.jit
    def step(model, optimizer):
        (_, each), grads = nnx.value_and_grad(lambda m: (jnp.sum(losses(m)), losses(m)),
                                              argnums=nnx.DiffState(0, LoRAParam),
                                              has_aux=True)(model)
        optimizer.update(model, grads)
        return each

    first = np.asarray(step(model, optimizer))
    for _ in range(40):
        last = np.asarray(step(model, optimizer))
    assert np.all(last < 0.7 * first), (first, last)
    after = jax.tree_util.tree_leaves((nnx.state(model.tt.base), nnx.state(model.tucker.base)))
    assert len(after) == len(frozen) == 4
    for a, b in zip(frozen, after):
        np.testing.assert_array_equal(a, b)
    moved = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b), before,
                                   nnx.state(model, LoRAParam))
    assert all(jax.tree_util.tree_leaves(moved))


# ---------------------------------------------------------------------------------------------
# argument checks


def test_bad_arguments(linear, conv):
    rngs = nnx.Rngs(0)
    with pytest.raises(TypeError, match="base must be an nnx.Linear, nnx.LinearGeneral or nnx.Einsum for TTAdapter, got Conv"):
        TTAdapter(conv, 2, rngs=rngs)
    with pytest.raises(TypeError, match="base must be an nnx.Conv for TuckerAdapter, got Linear"):
        TuckerAdapter(linear, 2, rngs=rngs)
    with pytest.raises(ValueError, match="rngs is required for TTAdapter"):
        TTAdapter(linear, 2, rngs=None)
    with pytest.raises(ValueError, match="rngs is required for TuckerAdapter"):
        TuckerAdapter(conv, 2, rngs=None)
    with pytest.raises(ValueError, match=r"in_shape = \(5, 5\) has product 25"):
        TTAdapter(linear, 2, in_shape=(5, 5), rngs=rngs)
    with pytest.raises(ValueError, match=re.escape("rank must be the TT ranks (1, r_1, ..., r_2, 1)")):
        TTAdapter(linear, (1, 2, 1), in_shape=(2, 3, 4), rngs=rngs)
    with pytest.raises(ValueError, match="rank must be an int or a TT rank tuple, got 0.5"):
        TTAdapter(linear, 0.5, rngs=rngs)
    with pytest.raises(ValueError, match="rank must be a positive integer, got 0"):
        TuckerAdapter(conv, 0, rngs=rngs)
    with pytest.raises(ValueError, match="alpha must be a positive number or None, got -1"):
        TuckerAdapter(conv, 2, alpha=-1, rngs=rngs)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 24\), got \(3, 5\)"):
        TTAdapter(linear, 2, rngs=rngs)(jnp.ones((3, 5)))
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 2 spatial dims, 4\)"):
        TuckerAdapter(conv, 2, rngs=rngs)(jnp.ones((3, 5, 5, 3)))


# ---------------------------------------------------------------------------------------------
# Orbax checkpointing


class _Net(nnx.Module):
    def __init__(self, seed):
        rngs = nnx.Rngs(seed)
        self.embed = TTEmbed(60, 12, rank=3, rngs=rngs)
        self.dense = nnx.List([FactorizedDense(12, 12, kind=kind, rank=2, rngs=rngs)
                               for kind in ("lowrank", "cp", "tucker", "tt")])
        self.lora = LoRA(nnx.Linear(12, 8, rngs=rngs), 2, rngs=rngs)

    def __call__(self, ids):
        h = self.embed(ids)
        for layer in self.dense:
            h = jnp.tanh(layer(h))
        return self.lora(h)


def test_checkpoint_round_trip(tmp_path):
    model = _Net(0)
    perturb(model.lora)                             # adapter values that differ from a fresh one
    ids = jnp.arange(0, 60, 7)
    apply = nnx.jit(lambda m, ids: m(ids))          # one program for every model below
    expected = np.asarray(apply(model, ids))
    checkpoint.save(tmp_path / "net", model)
    assert rel(apply(_Net(1), ids), expected) > 1e-3   # a fresh model is a different function
    for template in (lambda: _Net(1), nnx.eval_shape(lambda: _Net(1))):
        restored = checkpoint.restore(tmp_path / "net", template)
        np.testing.assert_array_equal(apply(restored, ids), expected)
        kinds = [layer.kind for layer in restored.dense]
        assert kinds == ["lowrank", "cp", "tucker", "tt"]
        assert isinstance(restored.lora.lora_a, LoRAParam)
    # overwrite
    with pytest.raises(ValueError, match="already exists"):
        checkpoint.save(tmp_path / "net", _Net(2))
    other = _Net(2)
    checkpoint.save(tmp_path / "net", other, overwrite=True)
    restored = checkpoint.restore(tmp_path / "net", lambda: _Net(0))
    for a, b in zip(jax.tree_util.tree_leaves(nnx.state(restored)),
                    jax.tree_util.tree_leaves(nnx.state(other))):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="model must be an nnx.Module, got dict"):
        checkpoint.save(tmp_path / "a", {"w": jnp.ones(3)})
    with pytest.raises(TypeError, match="path must be a str or os.PathLike, got int"):
        checkpoint.save(3, nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    with pytest.raises(TypeError, match="abstract_model_or_factory must be an nnx.Module"):
        checkpoint.restore(tmp_path / "a", 3)
    with pytest.raises(FileNotFoundError, match="no checkpoint at path"):
        checkpoint.restore(tmp_path / "missing", lambda: nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
