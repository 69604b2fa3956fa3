"""Tests of ``tensorfact.nn.FactorizedDense``: tensorization, ranks and parameter counts, the
initialisation variance, factorized vs reconstructed forward against NumPy references, the FLOP
rule of ``contraction="auto"``, ``from_layer`` (exact at full rank, planted CP), training with
Optax under ``nnx.jit``, transformations and argument checks.

XLA compilation dominates the cost on a CPU, so layers are small, one jitted program trains
every kind at once, and the variance test draws thousands of layers in one vmapped program with
the cheap-to-compile ``rbg`` key implementation.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import tensorfact as tfa
from _helpers import rel, x64
from tensorfact.nn import FactorizedDense, balanced_factors
from tensorfact.nn._common import n_factor_params, resolve_rank, tensorize
from tensorfact.nn._dense import flops as flops_of

KINDS = ("lowrank", "cp", "tucker", "tt")
IN, OUT = 24, 20
RANKS = {"lowrank": 5, "cp": 6, "tucker": 3, "tt": 3}


@pytest.fixture(scope="module")
def layers():
    """One layer per kind with a random bias, shared by the tests (each new configuration
    costs a compilation of its initialiser)."""
    return {kind: make(kind, bias_init=nnx.initializers.normal(1.0)) for kind in KINDS}


def with_contraction(layer, contraction):
    copy = nnx.clone(layer)
    copy.contraction = contraction
    return copy


def make(kind, rank=None, seed=0, **kw):
    return FactorizedDense(IN, OUT, kind=kind, rank=RANKS[kind] if rank is None else rank,
                           rngs=nnx.Rngs(seed), **kw)


def numpy_kernel(layer):
    """The ``(in, out)`` kernel from the layer's factors, in float64 NumPy (independent of the
    library's ``to_dense``)."""
    f = [np.asarray(v[...], np.float64) for v in layer._param_vars()]
    if layer.kind == "lowrank":
        return f[0] @ f[1]
    letters = "abcdefgh"
    if layer.kind == "cp":
        spec = ",".join(f"{letters[k]}z" for k in range(len(f))) + "->" + letters[:len(f)]
        return np.einsum(spec, *f).reshape(IN, OUT)
    if layer.kind == "tucker":
        core, factors = f[0], f[1:]
        n = len(factors)
        spec = (letters[:n].upper() + "," + ",".join(f"{letters[k]}{letters[k].upper()}"
                                                     for k in range(n)) + "->" + letters[:n])
        return np.einsum(spec, core, *factors).reshape(IN, OUT)
    out = np.ones((1, 1, 1))                                   # (rows, cols, rank)
    for g in f:                                                # g: (r, m, n, r')
        out = np.einsum("ija,amnb->imjnb", out, g)
        out = out.reshape(out.shape[0] * out.shape[1], out.shape[2] * out.shape[3], -1)
    return out[..., 0]


# ---------------------------------------------------------------------------------------------
# tensorization, ranks, parameter counts


def test_balanced_factors_examples():
    assert balanced_factors(768, 2) == (32, 24)
    assert balanced_factors(4096, 3) == (16, 16, 16)
    assert balanced_factors(210, 2) == (15, 14)
    assert balanced_factors(13, 2) == (13, 1)
    assert balanced_factors(360, 3) == (9, 8, 5)


def _all_factorizations(n, order):
    if order == 1:
        return [(n,)]
    return [(d,) + rest for d in range(1, n + 1) if n % d == 0
            for rest in _all_factorizations(n // d, order - 1)]


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 400), order=st.integers(1, 4))
def test_balanced_factors_is_the_most_balanced(n, order):
    got = balanced_factors(n, order)
    assert len(got) == order and math.prod(got) == n and list(got) == sorted(got, reverse=True)
    best = min(tuple(sorted(f, reverse=True)) for f in _all_factorizations(n, order))
    assert got == best


def test_default_and_given_tensorization(layers):
    assert (layers["tucker"].in_shape, layers["tucker"].out_shape) == ((6, 4), (5, 4))
    assert layers["lowrank"].in_shape is None and layers["lowrank"].out_shape is None
    assert tensorize("cp", IN, OUT, (2, 3, 4), (20,)) == ((2, 3, 4), (20,))
    assert tensorize("tt", IN, OUT, None, None) == ((4, 3, 2), (5, 2, 2))
    assert tensorize("tt", IN, OUT, None, (5, 4)) == ((6, 4), (5, 4))   # as many as out_shape
    tt = layers["tt"]
    assert (tt.in_shape, tt.out_shape) == ((4, 3, 2), (5, 2, 2))
    assert [v[...].shape for v in tt.cores] == [(1, 4, 5, 3), (3, 3, 2, 3), (3, 2, 2, 1)]
    # unequal numbers of TT factors: the shorter is padded with trailing 1s
    assert tensorize("tt", IN, OUT, (4, 6), (20,)) == ((4, 6), (20, 1))
    assert tensorize("tt", IN, OUT, (24,), (5, 2, 2)) == ((24, 1, 1), (5, 2, 2))


def test_full_and_capped_ranks():
    dims = ((6, 4), (5, 4))
    assert resolve_rank("lowrank", "full", (IN,), (OUT,)) == 20
    assert resolve_rank("cp", "full", *dims) == IN * OUT // 6        # ∏ dims / max dims
    assert resolve_rank("tucker", "full", *dims) == (6, 4, 5, 4)
    assert resolve_rank("tucker", 5, *dims) == (5, 4, 5, 4)         # an int is capped per mode
    assert resolve_rank("tucker", "full", (4,), (2, 15)) == (4, 2, 8)  # min(I_k, ∏ others)
    # TT: min(∏_{j≤k} m_j n_j, ∏_{j>k} m_j n_j) over the merged modes (20, 6, 4)
    assert resolve_rank("tt", "full", (4, 3, 2), (5, 2, 2)) == (1, 20, 4, 1)
    assert resolve_rank("tt", 6, (4, 3, 2), (5, 2, 2)) == (1, 6, 4, 1)
    # the d − 1 inner TT ranks stand for the whole vector, as in tensorfact.tt
    assert resolve_rank("tt", (6, 4), (4, 3, 2), (5, 2, 2)) == (1, 6, 4, 1)


def closed_form_count(layer):
    dims = (layer.in_shape or (IN,)) + (layer.out_shape or (OUT,))
    r = layer.rank
    if layer.kind == "lowrank":
        return r * (IN + OUT)
    if layer.kind == "cp":
        return r * sum(dims)
    if layer.kind == "tucker":
        return math.prod(r) + sum(d * k for d, k in zip(dims, r))
    return sum(r[k] * m * n * r[k + 1]
               for k, (m, n) in enumerate(zip(layer.in_shape, layer.out_shape)))


@pytest.mark.parametrize("kind", KINDS)
def test_parameter_counts(kind, layers):
    layer = layers[kind]
    in_state = sum(int(np.size(v)) for v in jax.tree_util.tree_leaves(nnx.state(layer, nnx.Param)))
    assert layer.n_params == in_state == closed_form_count(layer) + OUT
    no_bias = make(kind, use_bias=False)
    assert no_bias.n_params == closed_form_count(no_bias) and no_bias.bias is None


@settings(max_examples=15, deadline=None)
@given(kind=st.sampled_from(KINDS), fraction=st.floats(0.05, 1.0),
       n_in=st.sampled_from([12, 16, 24, 30]), n_out=st.sampled_from([8, 18, 20]))
def test_float_rank_is_the_largest_within_budget(kind, fraction, n_in, n_out):
    in_shape, out_shape = tensorize(kind, n_in, n_out, None, None)
    rank = resolve_rank(kind, fraction, in_shape, out_shape)
    count = n_factor_params(kind, in_shape, out_shape, rank)
    budget = fraction * n_in * n_out
    smallest = resolve_rank(kind, 1, in_shape, out_shape)
    assert count <= budget or rank == smallest
    if kind in ("lowrank", "cp"):
        bigger = rank + 1
    else:
        bigger = resolve_rank(kind, max(rank) + 1, in_shape, out_shape)
    if bigger != rank and (kind != "lowrank" or bigger <= min(n_in, n_out)):
        assert n_factor_params(kind, in_shape, out_shape, bigger) > budget


# ---------------------------------------------------------------------------------------------
# initialisation


def test_init_variance_matches_lecun_normal():
    """``Var(W_ij) = 1 / in_features`` for every kind, over 4096 layers drawn in one program."""
    configs = [("lowrank", 6), ("cp", 12), ("tucker", 3), ("tucker", (2, 3, 4, 2)), ("tt", 3)]
    n_in, n_out = 48, 40

    def variances(key):
        out = []
        for kind, rank in configs:
            layer = FactorizedDense(n_in, n_out, kind=kind, rank=rank, use_bias=False,
                                    rngs=nnx.Rngs(key))
            out.append(jnp.mean(layer.dense_weight() ** 2))
        return jnp.stack(out)

    keys = jax.random.split(jax.random.key(0, impl="rbg"), 4096)
    got = np.asarray(jax.jit(jax.vmap(variances))(keys)).mean(axis=0) * n_in
    np.testing.assert_allclose(got, 1.0, rtol=0.05)


# ---------------------------------------------------------------------------------------------
# forward


@pytest.fixture(scope="module")
def x():
    return jax.random.normal(jax.random.key(1), (3, 2, IN))


@pytest.mark.parametrize("kind", KINDS)
def test_factorized_and_reconstructed_match_numpy(kind, x, layers):
    fact = with_contraction(layers[kind], "factorized")
    recon = with_contraction(layers[kind], "dense")
    w = numpy_kernel(fact)
    np.testing.assert_allclose(np.asarray(fact.dense_weight()), w, rtol=1e-5, atol=1e-6)
    expected = np.asarray(x, np.float64) @ w + np.asarray(fact.bias[...], np.float64)
    for layer in (fact, recon):
        y = layer(x)
        assert y.shape == (3, 2, OUT) and y.dtype == jnp.float32
        assert rel(expected, y) < 1e-5
    weight = fact.weight
    expected_type = {"lowrank": tfa.LowRankMatrix, "cp": tfa.CPTensor,
                     "tucker": tfa.TuckerTensor}.get(kind)
    if expected_type is not None:
        assert isinstance(weight, expected_type)
    np.testing.assert_allclose(np.asarray(weight.to_dense()).reshape(IN, OUT), w, rtol=1e-5,
                               atol=1e-6)


def test_auto_picks_the_cheaper_by_flops(layers):
    auto = make("lowrank", "full")                     # 24 × 20 at rank 20
    flops = auto.flops(8)
    assert flops["factorized"] == 2 * 8 * 20 * (IN + OUT)
    assert flops["dense"] == 2 * IN * 20 * OUT + 2 * 8 * IN * OUT
    assert flops["plain"] == 2 * 8 * IN * OUT
    assert auto.choose_contraction(8) == "factorized"      # 14080 ≤ 26880
    assert auto.choose_contraction(64) == "dense"       # 112640 > 80640
    for batch in (8, 64):
        x = jnp.ones((batch, IN))
        fixed = with_contraction(auto, auto.choose_contraction(batch))
        assert str(jax.make_jaxpr(auto)(x)) == str(jax.make_jaxpr(fixed)(x))
    for kind in KINDS:                                 # the rule, for every kind
        layer = layers[kind]
        for batch in (1, 10_000):
            f = layer.flops(batch)
            rate = 0.5 if kind == "tt" else 1.0      # the TT chain runs at half a GEMM's rate
            want = "factorized" if f["factorized"] <= rate * f["dense"] else "dense"
            assert layer.choose_contraction(batch) == want
    fact, recon = flops_of("tucker", (6, 4), (5, 4), (6, 4, 5, 4), 10_000)
    assert fact > recon                                # full Tucker: reconstructing is cheaper
    fact, recon = flops_of("tucker", (6, 4), (5, 4), (3, 3, 3, 3), 10_000)
    assert fact < recon
    fixed = with_contraction(layers["lowrank"], "factorized")
    assert fixed.choose_contraction(10 ** 6) == "factorized"
    # the measured case behind TT's rate: 1024² as (32, 32) at rank 16, batch 128, where the
    # chain needs 0.89 of the dense FLOPs and ran 1.7x slower; one row still takes the chain
    tt = FactorizedDense(1024, 1024, kind="tt", rank=16, in_shape=(32, 32),
                         out_shape=(32, 32), rngs=nnx.Rngs(0))
    f = tt.flops(128)
    assert 0.5 < f["factorized"] / f["dense"] < 1
    assert tt.choose_contraction(128) == "dense" and tt.choose_contraction(1) == "factorized"


def test_tucker_and_tt_flops_formulas():
    b = 7                                               # Tucker: in (6, 4), out (5, 4)
    # input modes by largest shrink I/r first: mode 0 (6/2) then mode 1 (4/3)
    fact = 2 * b * 24 * 2 + 2 * b * (2 * 4) * 3
    fact += 2 * b * 6 * 8                               # core (2·3) × (4·2)
    # output modes by smallest growth J/s first: mode 0 (5/4) then mode 1 (4/2)
    fact += 2 * b * 8 * 5 + 2 * b * (5 * 2) * 4
    # reconstruction: expand the core (48 entries) by smallest growth I/r first: modes 2, 1, 3, 0
    recon = 2 * 48 * 5 + 2 * 60 * 4 + 2 * 80 * 4 + 2 * 160 * 6
    assert flops_of("tucker", (6, 4), (5, 4), (2, 3, 4, 2), b) == (fact, recon + 2 * b * IN * OUT)
    # TT, in (4, 3, 2), out (5, 2, 2), ranks (1, 3, 2, 1): Σ_k 2B r r' (I_k..I_d)(J_1..J_k)
    fact = 2 * b * (1 * 3 * 24 * 5 + 3 * 2 * 6 * 10 + 2 * 1 * 2 * 20)
    recon = 2 * 20 * 3 * 6 * 2 + 2 * 120 * 2 * 4 * 1   # merged modes (20, 6, 4)
    assert flops_of("tt", (4, 3, 2), (5, 2, 2), (1, 3, 2, 1), b) == (fact, recon + 2 * b * IN * OUT)


def test_transformations(x, layers):
    layer = layers["tucker"]
    y = layer(x)
    np.testing.assert_allclose(jax.vmap(layer)(x), y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(layer, x), y, rtol=1e-5, atol=1e-6)
    assert layer(x[0, 0]).shape == (OUT,)
    assert layer(jnp.zeros((0, IN))).shape == (0, OUT)


def test_gradients_match_finite_differences():
    with x64():
        layer = FactorizedDense(6, 4, kind="tucker", rank=2, param_dtype=jnp.float64,
                                contraction="factorized", rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(layer)
        x = jax.random.normal(jax.random.key(2), (3, 6), jnp.float64)

        def loss(params, x):
            return jnp.sum(jnp.sin(nnx.merge(graphdef, params)(x)))

        check_grads(jax.jit(loss), (params, x), order=1, modes=["rev"])


def test_bfloat16_compute_and_to_linear(x, layers):
    plain = layers["cp"]
    low = nnx.clone(plain)
    low.dtype = jnp.bfloat16
    y = low(x)
    assert y.dtype == jnp.bfloat16 and rel(plain(x), y) < 2e-2
    linear = plain.to_layer()
    assert isinstance(linear, nnx.Linear)
    np.testing.assert_allclose(linear(x), plain(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# from_layer


@pytest.fixture(scope="module")
def dense():
    return nnx.Linear(IN, OUT, bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(3))


@pytest.mark.parametrize("kind", KINDS)
def test_from_layer_is_exact_at_full_rank(kind, dense, x):
    layer = FactorizedDense.from_layer(dense, kind=kind, rank="full")
    assert layer.rank == resolve_rank(kind, "full", layer.in_shape or (IN,),
                                       layer.out_shape or (OUT,))
    w = np.asarray(dense.kernel[...], np.float64)
    assert rel(w, numpy_kernel(layer)) < 1e-5
    np.testing.assert_array_equal(layer.bias[...], dense.bias[...])
    assert rel(dense(x), layer(x)) < 1e-5


def test_from_layer_lowrank_is_the_truncated_svd(dense):
    w = np.asarray(dense.kernel[...], np.float64)
    layer = FactorizedDense.from_layer(dense.kernel[...], kind="lowrank", rank=4)
    assert layer.bias is None
    u, s, vt = np.linalg.svd(w)
    best = (u[:, :4] * s[:4]) @ vt[:4]
    np.testing.assert_allclose(numpy_kernel(layer), best, atol=1e-5)
    # balanced factors: U S^½ and S^½ Vᵀ have the same column/row norms
    np.testing.assert_allclose(np.linalg.norm(layer.u[...], axis=0),
                               np.linalg.norm(layer.vt[...], axis=1), rtol=1e-5)


def test_from_layer_cp_recovers_a_planted_cp_kernel():
    shape = (6, 4, 5, 4)
    planted = tfa.random_cp(jax.random.key(5), shape, rank=3)
    kernel = planted.to_dense().reshape(IN, OUT)
    layer = FactorizedDense.from_layer(kernel, kind="cp", rank=3, n_iter=200)
    assert layer.in_shape + layer.out_shape == shape
    assert rel(kernel, numpy_kernel(layer)) < 1e-4


def test_from_layer_float64_is_exact():
    with x64():
        kernel = jax.random.normal(jax.random.key(4), (IN, OUT), jnp.float64)
        layer = FactorizedDense.from_layer(kernel, kind="lowrank", rank="full")
        assert all(v[...].dtype == jnp.float64 for v in layer._param_vars())
        assert rel(kernel, numpy_kernel(layer)) < 1e-12
        assert layer(jnp.ones((2, IN), jnp.float64)).dtype == jnp.float64


# ---------------------------------------------------------------------------------------------
# training


class _Stack(nnx.Module):
    """One layer per kind, trained side by side: one compiled step for all of them."""

    def __init__(self, kinds, rngs):
        self.layers = nnx.List([FactorizedDense(IN, OUT, kind=k, rank=RANKS[k], rngs=rngs)
                                for k in kinds])

    def __call__(self, x):
        return [layer(x) for layer in self.layers]


def test_every_kind_trains_with_optax_under_jit():
    model = _Stack(KINDS, nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(10), (64, IN))
    target = x @ jax.random.normal(jax.random.key(11), (IN, OUT)) / np.sqrt(IN)
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
    for _ in range(60):
        last = np.asarray(step(model, optimizer))
    assert np.all(last < 0.5 * first), (first, last)


# ---------------------------------------------------------------------------------------------
# argument checks


def test_bad_arguments():
    rngs = nnx.Rngs(0)
    with pytest.raises(ValueError, match=r"kind must be one of .*got 'svd'"):
        FactorizedDense(IN, OUT, kind="svd", rank=2, rngs=rngs)
    with pytest.raises(ValueError, match=r"in_shape = \(5, 5\) has product 25, which must equal in_features = 24"):
        FactorizedDense(IN, OUT, kind="cp", rank=2, in_shape=(5, 5), rngs=rngs)
    with pytest.raises(ValueError, match=r"out_shape = \(3, 7\) has product 21, which must equal out_features = 20"):
        FactorizedDense(IN, OUT, kind="tucker", rank=2, out_shape=(3, 7), rngs=rngs)
    with pytest.raises(ValueError, match=r"in_shape\[1\] must be a positive integer, got 0"):
        FactorizedDense(IN, OUT, kind="cp", rank=2, in_shape=(24, 0), rngs=rngs)
    with pytest.raises(ValueError, match="leave them None"):
        FactorizedDense(IN, OUT, kind="lowrank", rank=2, in_shape=(4, 6), rngs=rngs)
    with pytest.raises(ValueError, match=r"rank = 21 is larger than min\(in_features, out_features\) = 20"):
        FactorizedDense(IN, OUT, rank=21, rngs=rngs)
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match="rank must be"):
            FactorizedDense(IN, OUT, kind="cp", rank=bad, rngs=rngs)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
            FactorizedDense(IN, OUT, rank=bad, rngs=rngs)
    with pytest.raises(ValueError, match=r'rank must be an int, a float in \(0, 1\] or "full", got \'half\''):
        FactorizedDense(IN, OUT, rank="half", rngs=rngs)
    with pytest.raises(ValueError, match="one Tucker rank per mode"):
        FactorizedDense(IN, OUT, kind="tucker", rank=(2, 2), rngs=rngs)
    with pytest.raises(ValueError, match=r"rank\[0\] = 7 exceeds the lossless rank 6"):
        FactorizedDense(IN, OUT, kind="tucker", rank=(7, 2, 2, 2), rngs=rngs)
    with pytest.raises(ValueError, match=r"for kind 'cp', got \(2, 2\)"):
        FactorizedDense(IN, OUT, kind="cp", rank=(2, 2), rngs=rngs)
    with pytest.raises(ValueError, match="contraction must be one of"):
        FactorizedDense(IN, OUT, rank=2, contraction="reconstructed", rngs=rngs)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 24\), got \(2, 23\)"):
        make("lowrank")(jnp.ones((2, 23)))
    with pytest.raises(ValueError, match="in_features must be a positive integer"):
        FactorizedDense(0, OUT, rank=1, rngs=rngs)
    with pytest.raises(ValueError, match=re.escape("rank must be the TT ranks")):
        FactorizedDense(IN, OUT, kind="tt", rank=(2, 2, 2), rngs=rngs)
    with pytest.raises(ValueError, match="impl must be one of"):
        FactorizedDense(IN, OUT, kind="tt", rank=2, impl="triton", rngs=rngs)
    with pytest.raises(ValueError, match="precision must be None"):
        FactorizedDense(IN, OUT, rank=2, precision="fp8", rngs=rngs)


class _NotLinear(nnx.Module):
    """A module that is not an nnx.Linear (an nnx.Conv would cost a compilation to build)."""


def test_bad_from_layer_arguments(dense):
    with pytest.raises(ValueError, match="bias must be None when layer is an nnx.Linear"):
        FactorizedDense.from_layer(dense, rank=2, bias=jnp.zeros(OUT))
    with pytest.raises(ValueError, match=r"bias must have shape \(20,\), got \(3,\)"):
        FactorizedDense.from_layer(dense.kernel[...], rank=2, bias=jnp.zeros(3))
    with pytest.raises(ValueError, match=r"layer must be a 2-D matrix, got shape \(2, 3, 4\)"):
        FactorizedDense.from_layer(jnp.ones((2, 3, 4)), rank=2)
    with pytest.raises(TypeError, match="layer must be an nnx.Linear or a weight array, got _NotLinear"):
        FactorizedDense.from_layer(_NotLinear(), rank=2)

