"""Tests for ``tensorfact.nn.compress`` on convolutions (Tucker-2 / CP ``FactorizedConv``
replacements, their report rows against NumPy, skipped grouped convs, errors) and for the TT
layer's ``impl`` (the Pallas TT chain against XLA)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from tensorfact.nn import FactorizedConv, FactorizedDense, compress

from _helpers import rel

HIGH = jax.lax.Precision.HIGHEST


class CNN(nnx.Module):
    """Two plain convs (one strided, 1-D padding pairs), a depthwise conv and a dense head."""

    def __init__(self, rngs):
        self.conv1 = nnx.Conv(3, 8, (3, 3), precision=HIGH, rngs=rngs)
        self.depthwise = nnx.Conv(8, 8, (3, 3), feature_group_count=8, precision=HIGH,
                                  rngs=rngs)
        self.conv2 = nnx.Conv(8, 6, (3, 2), strides=2, padding=((1, 1), (0, 1)), use_bias=False,
                              precision=HIGH, rngs=rngs)
        self.head = nnx.Linear(6, 4, precision=HIGH, rngs=rngs)

    def __call__(self, x):
        x = jax.nn.relu(self.conv1(x))
        x = jax.nn.relu(self.depthwise(x))
        x = jax.nn.relu(self.conv2(x))
        return self.head(x.mean((-3, -2)))


@pytest.fixture(scope="module")
def cnn():
    return CNN(nnx.Rngs(0))


@pytest.fixture(scope="module")
def x():
    return jax.random.normal(jax.random.key(1), (2, 9, 9, 3))


def kernel64(layer):
    return np.asarray(layer.kernel[...], np.float64)


def numpy_rebuild(layer):
    """A FactorizedConv's kernel rebuilt from its factors in float64 NumPy."""
    arrays = [np.asarray(v[...], np.float64) for v in layer._param_vars()]
    if layer.kind == "tucker":
        core, u, v = arrays
        return np.einsum("...ab,ia,ob->...io", core, u, v)
    *spatial, a, b = arrays
    spec = ",".join(f"{c}r" for c in "xy") + ",ir,or->xyio"
    return np.einsum(spec, *spatial, a, b)


def unfolding_singular_values(w, mode):
    return np.linalg.svd(np.moveaxis(w, mode, 0).reshape(w.shape[mode], -1), compute_uv=False)


def test_full_rank_tucker_reproduces_the_cnn(cnn, x):
    small, report = compress(cnn, rank="full")   # kind "lowrank": Tucker-2 for the convs
    assert isinstance(small.conv1, FactorizedConv) and isinstance(small.conv2, FactorizedConv)
    assert isinstance(small.head, FactorizedDense)
    assert type(small.depthwise) is nnx.Conv            # grouped: skipped, untouched
    np.testing.assert_array_equal(small.depthwise.kernel[...], cnn.depthwise.kernel[...])
    assert [r.path for r in report] == [("conv1",), ("conv2",), ("head",)]
    assert [(r.layer_type, r.kind) for r in report] == [("Conv", "tucker"), ("Conv", "tucker"),
                                                        ("Linear", "lowrank")]
    assert report.skipped == ((("depthwise",), report.skipped[0][1]),)
    assert "feature_group_count=8" in report.skipped[0][1]
    # lossless Tucker-2 ranks (min(in, K·out), min(out, K·in)) and the exact parameter counts
    assert report[0].rank == (3, 8) and report[1].rank == (8, 6)
    for r, conv, bias in ((report[0], cnn.conv1, 8), (report[1], cnn.conv2, 0)):
        w = kernel64(conv)
        k = math.prod(w.shape[:2])
        r_in, r_out = r.rank
        assert r.params_before == w.size + bias
        assert r.params_after == k * r_in * r_out + w.shape[2] * r_in + w.shape[3] * r_out + bias
        assert r.rel_weight_error < 1e-5
    assert small.conv2.strides == (2, 2) and small.conv2.padding == ((1, 1), (0, 1))
    assert rel(cnn(x), small(x)) < 1e-4
    text = str(report)
    assert "Conv" in text and "skipped depthwise: grouped" in text and "total" in text


def test_fraction_reduces_parameters_and_report_matches_numpy(cnn, x):
    f = 0.3
    small, report = compress(cnn, rank=f, select=lambda path, layer: isinstance(layer, nnx.Conv))
    assert [r.path for r in report] == [("conv1",), ("conv2",)]
    assert isinstance(small.head, nnx.Linear)
    for r, conv in zip(report, (cnn.conv1, cnn.conv2)):
        w = kernel64(conv)
        bias = r.params_before - w.size
        assert r.params_after - bias <= f * w.size < r.params_before
        # the report's error against the factors rebuilt in NumPy
        new = small.conv1 if r.path == ("conv1",) else small.conv2
        expected = np.linalg.norm(w - numpy_rebuild(new)) / np.linalg.norm(w)
        assert r.rel_weight_error == pytest.approx(expected, rel=1e-4)
        assert 0 < r.rel_weight_error < 1
    assert report.ratio < 0.5 and small(x).shape == (2, 4)
    # conv_kind="cp" for the convs only, the dense head stays lowrank; the CP rank is the
    # largest within the budget, ⌊f·K·in·out / (Σ k_m + in + out)⌋
    _, report = compress(cnn, kind="lowrank", conv_kind="cp", rank=f, key=jax.random.key(0),
                         conv_fit_kwargs={"n_iter": 5},
                         select=lambda p, layer: p in (("conv2",), ("head",)))
    r = report[0]
    assert (r.kind, r.rank) == ("cp", int(f * 3 * 2 * 8 * 6 // (3 + 2 + 8 + 6)))
    assert r.params_after == r.rank * (3 + 2 + 8 + 6)
    assert (report[1].kind, report[1].rank) == ("lowrank", 1)   # ⌊0.3·24/10⌋ = 0 → 1


def test_energy_ranks_and_error_bound(cnn):
    f = 0.9
    _, report = compress(cnn, rank=("energy", f), select=lambda p, layer: p == ("conv1",))
    (r,) = report
    w = kernel64(cnn.conv1)
    ranks = []
    for mode in (2, 3):
        s = unfolding_singular_values(w, mode)
        e = np.cumsum(s ** 2) / np.sum(s ** 2)
        ranks.append(int(np.searchsorted(e, (1 - (1 - f) / 2) * (1 - 1e-6)) + 1))
    assert r.rank == tuple(ranks) and r.rank != (3, 8)  # truncated, not lossless
    assert r.rel_weight_error <= np.sqrt(1 - f) + 1e-4
    # a callable gives each layer its own spec: an explicit (r_in, r_out) pair here
    _, report = compress(cnn, rank=lambda p, layer: (2, 3) if p == ("conv1",) else 1,
                         select=lambda p, layer: p != ("conv2",))
    assert [r.rank for r in report] == [(2, 3), 1]


def test_kind_tt_and_other_errors(cnn):
    with pytest.raises(ValueError, match=r'kind "tt" has no convolution format.*conv1'):
        compress(cnn, kind="tt", rank=2)
    # leaving the convs out, or naming their kind, makes tt fine
    _, report = compress(cnn, kind="tt", rank=2, select=lambda p, layer: p == ("head",))
    assert [r.kind for r in report] == ["tt"]
    with pytest.raises(ValueError, match="conv_kind"):
        compress(cnn, conv_kind="tt", rank=2)
    with pytest.raises(ValueError, match=r"layer conv1: .*energy.*\"tucker\""):
        compress(cnn, kind="cp", rank=("energy", 0.9))
    with pytest.raises(ValueError, match=r"layer conv1: .*fraction in \(0, 1\]"):
        compress(cnn, rank=("energy", 1.5))
    with pytest.raises(ValueError, match="layer conv1: rank"):
        compress(cnn, rank=0)
    with pytest.raises(ValueError, match="layer conv1: rank"):
        compress(cnn, rank=True)
    with pytest.raises(ValueError, match=r"layer conv2: rank\[0\] = 9 exceeds"):
        compress(cnn, rank=(9, 1), select=lambda p, layer: p == ("conv2",))
    with pytest.raises(TypeError, match="conv_fit_kwargs"):
        compress(cnn, rank=2, conv_fit_kwargs=[("n_iter", 3)])


def test_root_conv_and_skipped_dilated_conv():
    conv = nnx.Conv(4, 5, (3,), rngs=nnx.Rngs(2))
    xs = jax.random.normal(jax.random.key(3), (2, 7, 4))
    small, report = compress(conv, kind="tucker", rank="full")
    assert isinstance(small, FactorizedConv) and report[0].path == ()
    assert rel(conv(xs), small(xs)) < 1e-4
    dilated = nnx.Conv(4, 5, (3,), kernel_dilation=2, rngs=nnx.Rngs(2))
    same, report = compress(dilated, rank=2)
    assert same is not dilated and type(same) is nnx.Conv and len(report) == 0
    assert report.skipped[0][0] == () and "kernel_dilation" in report.skipped[0][1]
    assert report.ratio == 1.0 and "skipped <root>" in str(report)


# ---------------------------------------------------------------------------------------------
# FactorizedDense(kind="tt", impl=...): the TT chain through tensorfact.kernels


def test_tt_kernel_impl_pallas_matches_xla():
    layers = {impl: FactorizedDense(12, 8, kind="tt", rank=3, in_shape=(3, 4),
                                    out_shape=(2, 4), contraction="factorized",
                                    precision=HIGH, impl=impl, rngs=nnx.Rngs(0))
              for impl in ("pallas", "xla")}
    xs = jax.random.normal(jax.random.key(4), (5, 12))
    ys = {impl: layer(xs) for impl, layer in layers.items()}
    ref = np.asarray(xs, np.float64) @ np.asarray(layers["xla"].dense_weight(), np.float64)
    assert rel(ref, ys["xla"] - layers["xla"].bias[...]) < 1e-5
    assert rel(ys["xla"], ys["pallas"]) < 1e-5

    splits = {impl: nnx.split(layer) for impl, layer in layers.items()}
    for a, b in zip(jax.tree.leaves(splits["pallas"][1]), jax.tree.leaves(splits["xla"][1])):
        np.testing.assert_array_equal(a, b)              # the same draws: same parameters

    def loss(state, xs, impl):
        return jnp.sum(jnp.tanh(nnx.merge(splits[impl][0], state)(xs)))

    grads = {impl: jax.grad(loss, argnums=(0, 1))(splits[impl][1], xs, impl)
             for impl in ("pallas", "xla")}
    for a, b in zip(jax.tree.leaves(grads["pallas"]), jax.tree.leaves(grads["xla"])):
        assert rel(b, a) < 1e-5
    f = jax.jit(lambda xs: layers["pallas"](xs))
    check_grads(f, (xs,), order=1, modes=("rev",), atol=2e-2, rtol=2e-2)
    with pytest.raises(ValueError, match="impl must be one of"):
        FactorizedDense(12, 8, kind="tt", rank=2, impl="triton", rngs=nnx.Rngs(0))
