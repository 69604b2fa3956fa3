"""Tests of the research adapters in ``tensorfact.nn``: LoRA-XS, the Kronecker-SVD adapter (SoKA),
VeRA and NOLA, with their frozen arrays held as ``AdapterBuffer``.

Each adapter must start at its base layer's output (exactly, or to rounding for the Kronecker
adapter whose kernel becomes a residual), compute the update its paper defines (checked against
float64 NumPy), merge into a plain layer that reproduces it, run the same under ``nnx.jit``, and
train only its ``nnx.LoRAParam``s, the buffers and the base left untouched.
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
from tensorfact.nn import NOLA, AdapterBuffer, KronAdapter, LoRAParam, LoRAXS, VeRA
from tensorfact.nn._research_adapters import _rearrange, _unrearrange

IN, OUT = 24, 20
NAMES = ("lora_xs", "kron", "vera", "nola")


@pytest.fixture(scope="module")
def base():
    return nnx.Linear(IN, OUT, bias_init=nnx.initializers.normal(1.0), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def x():
    return jax.random.normal(jax.random.key(1), (5, IN))


def build(name, base):
    if name == "lora_xs":
        return LoRAXS(base, 4, alpha=8.0)
    if name == "kron":
        return KronAdapter(base, 3)
    if name == "vera":
        return VeRA(base, 8, seed=1)
    return NOLA(base, 4, num_basis=6, seed=2, alpha=8.0)


def reference_delta(adapter):
    """The update ``ΔW`` from the paper's formula, in float64 NumPy."""
    if isinstance(adapter, LoRAXS):
        return adapter.scale * np64(adapter.xs_a[...]) @ np64(adapter.xs_r[...]) @ np64(
            adapter.xs_b[...])
    if isinstance(adapter, KronAdapter):
        return sum(np.kron(c, d) for c, d in zip(np64(adapter.kron_c[...]),
                                                 np64(adapter.kron_d[...])))
    if isinstance(adapter, VeRA):
        a, b = np64(adapter.vera_a[...]), np64(adapter.vera_b[...])
        d, lam_b = np64(adapter.lambda_d[...]), np64(adapter.lambda_b[...])
        return adapter.scale * a @ np.diag(d) @ b @ np.diag(lam_b)
    a = np.einsum("k,kir->ir", np64(adapter.nola_alpha[...]), np64(adapter.nola_basis_a[...]))
    b = np.einsum("k,kro->ro", np64(adapter.nola_beta[...]), np64(adapter.nola_basis_b[...]))
    return adapter.scale * a @ b


def rearrange_loops(w, in_shape, out_shape):
    """Van Loan–Pitsianis' rearrangement written entry by entry (independent of the library)."""
    (i1, i2), (o1, o2) = in_shape, out_shape
    r = np.empty((i1 * o1, i2 * o2))
    for a in range(i1):
        for b in range(i2):
            for c in range(o1):
                for d in range(o2):
                    r[a * o1 + c, b * o2 + d] = w[a * i2 + b, c * o2 + d]
    return r


# ---------------------------------------------------------------------------------------------
# the start


@pytest.mark.parametrize("name", ("lora_xs", "vera", "nola"))
def test_starts_exactly_at_the_base_output(name, base, x):
    adapter = build(name, base)
    assert adapter.base is base
    np.testing.assert_array_equal(adapter(x), base(x))
    np.testing.assert_array_equal(adapter.delta_weight(), np.zeros((IN, OUT)))


def test_kron_starts_at_the_base_output_with_a_residual_kernel(base, x):
    kernel = np.array(base.kernel[...])
    adapter = build("kron", base)
    assert rel(base(x), adapter(x)) < 1e-5
    np.testing.assert_allclose(adapter(x), base(x), atol=1e-5)
    np.testing.assert_array_equal(base.kernel[...], kernel)        # the layer passed in is intact
    assert adapter.base is not base
    np.testing.assert_array_equal(adapter.base.bias[...], base.bias[...])
    np.testing.assert_allclose(adapter.dense_weight(), kernel, atol=2e-6)


# ---------------------------------------------------------------------------------------------
# the initial factors


def test_lora_xs_factors_are_the_truncated_svd(base):
    w = np64(base.kernel[...])
    u, sv, vt = np.linalg.svd(w)
    adapter = build("lora_xs", base)
    a, b = np64(adapter.xs_a[...]), np64(adapter.xs_b[...])
    assert adapter.scale == 2.0
    np.testing.assert_allclose(b @ b.T, np.eye(4), atol=1e-5)        # B = V_rᵀ: orthonormal rows
    np.testing.assert_allclose(np.linalg.norm(a, axis=0), sv[:4], rtol=1e-5)   # A = U_r S_r
    np.testing.assert_allclose(a @ b, (u[:, :4] * sv[:4]) @ vt[:4], atol=1e-5)
    randomized = LoRAXS(base, 4, svd_method="randomized", rngs=nnx.Rngs(0))
    assert rel((u[:, :4] * sv[:4]) @ vt[:4],
               np64(randomized.xs_a[...]) @ np64(randomized.xs_b[...])) < 2e-2


def test_rearrangement_round_trip():
    in_shape, out_shape = (4, 6), (4, 5)
    w = np.random.default_rng(0).standard_normal((IN, OUT))
    r = np.asarray(_rearrange(w, in_shape, out_shape))
    np.testing.assert_array_equal(r, rearrange_loops(w, in_shape, out_shape))
    np.testing.assert_array_equal(_unrearrange(r, in_shape, out_shape), w)
    c, d = np.arange(16.0).reshape(4, 4), np.arange(30.0).reshape(6, 5)
    np.testing.assert_array_equal(_rearrange(np.kron(c, d), in_shape, out_shape),
                                  np.outer(c.ravel(), d.ravel()))


def test_kron_is_the_best_kronecker_sum(base):
    w = np64(base.kernel[...])
    adapter = build("kron", base)
    assert adapter.in_shape == (4, 6) and adapter.out_shape == (4, 5)
    sv = np.linalg.svd(rearrange_loops(w, (4, 6), (4, 5)), compute_uv=False)
    best = np.sqrt(np.sum(sv[3:] ** 2))
    kron_sum = reference_delta(adapter)
    np.testing.assert_allclose(np.linalg.norm(w - kron_sum), best, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(np64(adapter.base.kernel[...])), best, rtol=1e-5)
    # the √σ split: ‖C_k‖ = ‖D_k‖ = √σ_k
    for k in range(3):
        np.testing.assert_allclose(np.linalg.norm(np64(adapter.kron_c[k])), np.sqrt(sv[k]),
                                   rtol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(np64(adapter.kron_d[k])), np.sqrt(sv[k]),
                                   rtol=1e-5)
    given = KronAdapter(base, 2, in_shape=(3, 8), out_shape=(10, 2))
    assert given.kron_c.shape == (2, 3, 10) and given.kron_d.shape == (2, 8, 2)


def test_vera_layers_share_slices_of_one_matrix_pair():
    wide = VeRA(nnx.Linear(24, 20, rngs=nnx.Rngs(0)), 8, seed=5)
    narrow = VeRA(nnx.Linear(16, 12, rngs=nnx.Rngs(1)), 4, seed=5)
    assert narrow.vera_a.shape == (16, 4) and narrow.vera_b.shape == (4, 12)
    np.testing.assert_array_equal(narrow.vera_a[...], wide.vera_a[...][:16, :4])
    np.testing.assert_array_equal(narrow.vera_b[...], wide.vera_b[...][:4, :12])
    other = VeRA(nnx.Linear(16, 12, rngs=nnx.Rngs(1)), 4, seed=6)
    assert not np.array_equal(other.vera_a[...], narrow.vera_a[...])
    a = np64(wide.vera_a[...])
    assert np.all(np.abs(a) <= 1) and a.std() > 0.4                 # U(−1, 1): std 1/√3
    assert wide.scale == pytest.approx(6 / np.sqrt(24 * 8))
    np.testing.assert_array_equal(wide.lambda_d[...], np.full(8, 0.1, np.float32))
    np.testing.assert_array_equal(wide.lambda_b[...], np.zeros(20))


def test_nola_draws_from_the_seed(base):
    one, two = NOLA(base, 4, num_basis=6, seed=2), NOLA(base, 4, num_basis=6, seed=2)
    np.testing.assert_array_equal(one.nola_basis_a[...], two.nola_basis_a[...])
    np.testing.assert_array_equal(one.nola_alpha[...], two.nola_alpha[...])
    assert not np.array_equal(NOLA(base, 4, num_basis=6, seed=3).nola_basis_a[...],
                              one.nola_basis_a[...])
    assert np.all(np.abs(np64(one.nola_alpha[...])) <= np.sqrt(3 / 6))
    np.testing.assert_array_equal(one.nola_beta[...], np.zeros(6))


# ---------------------------------------------------------------------------------------------
# forward, merge and jit against the formulas


@pytest.mark.parametrize("name", NAMES)
def test_forward_merge_and_jit_match_the_formula(name, base, x):
    adapter = perturb(build(name, base))
    delta = reference_delta(adapter)
    assert np.linalg.norm(delta) > 1e-2
    kernel = np64(adapter.base.kernel[...]) + delta
    expected = np64(x) @ kernel + np64(base.bias[...])
    y = adapter(x)
    assert rel(expected, y) < 1e-5
    assert rel(delta, adapter.delta_weight()) < 1e-5
    assert rel(kernel, adapter.dense_weight()) < 1e-5
    merged = adapter.merge()
    assert type(merged) is nnx.Linear and merged is not adapter.base
    assert rel(y, merged(x)) < 1e-5
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(adapter, x), y, rtol=1e-5, atol=1e-5)
    # leading axes and an empty batch
    x3 = x.reshape(5, 1, IN)
    np.testing.assert_allclose(adapter(x3)[:, 0], y, rtol=1e-6, atol=1e-6)
    assert adapter(jnp.zeros((0, IN))).shape == (0, OUT)


@pytest.mark.parametrize("name", NAMES)
def test_conv(name):
    conv = nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0))                 # kernel matrix (27, 4)
    xc = jax.random.normal(jax.random.key(2), (2, 5, 5, 3))
    adapter = {"lora_xs": lambda: LoRAXS(conv, 2), "kron": lambda: KronAdapter(conv, 2),
               "vera": lambda: VeRA(conv, 3), "nola": lambda: NOLA(conv, 2, num_basis=4)}[name]()
    if name == "kron":
        assert adapter.in_shape == (3, 9) and adapter.out_shape == (2, 2)
        np.testing.assert_allclose(adapter(xc), conv(xc), atol=1e-5)
    else:
        np.testing.assert_array_equal(adapter(xc), conv(xc))
    adapter = perturb(adapter)
    delta = reference_delta(adapter).reshape(conv.kernel.shape)
    assert rel(delta, adapter.delta_weight()) < 1e-5
    merged = adapter.merge()
    assert type(merged) is nnx.Conv
    y = adapter(xc)
    assert rel(merged(xc), y) < 1e-5
    assert rel(y, conv(xc)) > 1e-3


# ---------------------------------------------------------------------------------------------
# parameter counts and training


def leaves(module, kind):
    return jax.tree_util.tree_leaves(nnx.state(module, kind))


def test_parameter_counts(base):
    expected = {"lora_xs": 16, "kron": 3 * (4 * 4 + 6 * 5), "vera": 8 + OUT, "nola": 2 * 6}
    for name, count in expected.items():
        adapter = build(name, base)
        assert adapter.n_params == count
        assert sum(int(np.size(v)) for v in leaves(adapter, LoRAParam)) == count
        # the buffers are neither trainable nor plain parameters
        assert not any(isinstance(v, (nnx.Param, LoRAParam))
                       for _, v in nnx.iter_graph(adapter) if isinstance(v, AdapterBuffer))
    assert [v.shape for v in leaves(build("vera", base), AdapterBuffer)] == [(IN, 8), (8, OUT)]
    assert leaves(build("kron", base), AdapterBuffer) == []


class _Adapted(nnx.Module):
    def __init__(self, adapters):
        self.adapters = nnx.List(adapters)

    def __call__(self, x):
        return [a(x) for a in self.adapters]


def test_training_moves_only_the_lora_params(base):
    model = _Adapted([build(name, base) for name in NAMES])
    frozen = [(np.array(a.base.kernel[...]), np.array(a.base.bias[...]),
               [np.array(v) for v in leaves(a, AdapterBuffer)]) for a in model.adapters]
    before = [[np.array(v) for v in leaves(a, LoRAParam)] for a in model.adapters]
    x = jax.random.normal(jax.random.key(10), (16, IN))
    target = base(x) + 0.3 * x @ jax.random.normal(jax.random.key(11), (IN, OUT))
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=LoRAParam)

    def loss(model):
        return sum(jnp.mean((y - target) ** 2) for y in model(x))

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(loss, argnums=nnx.DiffState(0, LoRAParam))(model)
        optimizer.update(model, grads)
        return grads

    grads = step(model, optimizer)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))
    assert {type(v) for _, v in nnx.to_flat_state(grads)} == {LoRAParam}
    step(model, optimizer)          # VeRA's d and NOLA's α have a zero gradient at step one
    for adapter, (kernel, bias, buffers), params in zip(model.adapters, frozen, before):
        np.testing.assert_array_equal(adapter.base.kernel[...], kernel)
        np.testing.assert_array_equal(adapter.base.bias[...], bias)
        for v, old in zip(leaves(adapter, AdapterBuffer), buffers):
            np.testing.assert_array_equal(v, old)
        assert all(not np.array_equal(v, old) for v, old in zip(leaves(adapter, LoRAParam),
                                                                params))


def test_buffers_travel_with_the_state(base, x):
    adapter = perturb(build("nola", base))
    graphdef, state = nnx.split(adapter)
    assert len(jax.tree_util.tree_leaves(nnx.state(adapter, AdapterBuffer))) == 2
    np.testing.assert_array_equal(nnx.merge(graphdef, state)(x), adapter(x))


# ---------------------------------------------------------------------------------------------
# argument checks


class _NotLinear(nnx.Module):
    """A module that is not an nnx.Linear."""


def test_bad_arguments(base):
    for make in (lambda b: LoRAXS(b, 2), lambda b: KronAdapter(b, 1), lambda b: VeRA(b, 2),
                 lambda b: NOLA(b, 2)):
        with pytest.raises(TypeError, match="base must be an nnx.Linear, .*nnx.Conv for .*, got "
                                            "_NotLinear"):
            make(_NotLinear())
    for cls in (LoRAXS, KronAdapter, VeRA, NOLA):
        for bad in (0, -1, 2.0, True):
            with pytest.raises(ValueError, match=f"rank must be a positive integer, got "
                                                 f"{bad!r}"):
                cls(base, bad)
    for cls in (LoRAXS, NOLA):
        with pytest.raises(ValueError, match=r"rank = 21 is larger than min\(in_features, "
                                             r"out_features\) = 20"):
            cls(base, 21)
    with pytest.raises(ValueError, match=r"rank = 17 is larger than min\(in_shape\[0\] \* "
                                         r"out_shape\[0\], in_shape\[1\] \* out_shape\[1\]\) = 16"):
        KronAdapter(base, 17)
    with pytest.raises(ValueError, match=r"in_shape = \(5, 5\) has product 25, which must equal "
                                         r"in_features = 24"):
        KronAdapter(base, 1, in_shape=(5, 5))
    with pytest.raises(ValueError, match=r"out_shape must be a pair \(a, b\) with a \* b = "
                                         r"out_features, got \(2, 2, 5\)"):
        KronAdapter(base, 1, out_shape=(2, 2, 5))
    with pytest.raises(ValueError, match=r"in_shape\[1\] must be a positive integer, got 0"):
        KronAdapter(base, 1, in_shape=(24, 0))
    with pytest.raises(ValueError, match=r"svd_method must be one of \['exact', 'randomized'\], "
                                         "got 'qr'"):
        LoRAXS(base, 2, svd_method="qr")
    with pytest.raises(ValueError, match='rngs is required for svd_method="randomized"'):
        LoRAXS(base, 2, svd_method="randomized")
    with pytest.raises(ValueError, match="alpha must be a positive number or None, got -1"):
        LoRAXS(base, 2, alpha=-1)
    for cls in (VeRA, NOLA):
        for bad in (-1, 2 ** 32, 1.5, None):
            with pytest.raises(ValueError, match=rf"seed must be an integer in \[0, 2\*\*32\), "
                                                 rf"got {bad!r}"):
                cls(base, 2, seed=bad)
    for bad in (float("nan"), float("inf"), 0.0, "0.1"):
        with pytest.raises(ValueError, match=f"d_init must be a finite nonzero number, got "
                                             f"{bad!r}"):
            VeRA(base, 2, d_init=bad)
    with pytest.raises(ValueError, match="num_basis must be a positive integer, got 0"):
        NOLA(base, 2, num_basis=0)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 24\), got \(2, 3\)"):
        build("vera", base)(jnp.ones((2, 3)))


def test_non_finite_kernel_is_an_error():
    bad = nnx.Linear(IN, OUT, rngs=nnx.Rngs(0))
    bad.kernel[...] = bad.kernel[...].at[0, 0].set(jnp.nan)
    for cls in (LoRAXS, KronAdapter):
        with pytest.raises(ValueError, match=r"base.kernel contains 1 NaN or Inf value\(s\)"):
            cls(bad, 2)
    VeRA(bad, 2), NOLA(bad, 2)          # the random adapters never read the kernel's values
