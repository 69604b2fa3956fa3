"""compress with calibration data: SVD-LLM whitening, ASVD and FWSVD against NumPy closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import tensorfact.nn as tnn
from tensorfact.nn._data_aware import fisher_weighted, whitened


def correlated_inputs(n, d, seed, rank=None):
    """Inputs with a decaying spectrum (and only ``rank`` directions if given)."""
    rng = np.random.default_rng(seed)
    k = d if rank is None else rank
    basis = rng.normal(size=(k, d)) * (0.8 ** np.arange(k))[:, None]
    return (rng.normal(size=(n, k)) @ basis).astype(np.float32)


def single_layer(d_in, d_out, seed=0):
    layer = nnx.Linear(d_in, d_out, rngs=nnx.Rngs(seed))
    return layer


def output_error(x, w, w_new):
    x, w, w_new = (np.asarray(a, np.float64) for a in (x, w, w_new))
    return np.linalg.norm(x @ (w - w_new)) / np.linalg.norm(x @ w)


def best_output_error(x, w, r):
    """min over rank-r W′ of ‖X(W − W′)‖ / ‖XW‖: the tail of XW's singular values (attained
    when X has full column rank, W′ = X⁺ (XW)_r)."""
    s = np.linalg.svd(np.asarray(x, np.float64) @ np.asarray(w, np.float64), compute_uv=False)
    return np.sqrt(np.sum(s[r:] ** 2) / np.sum(s ** 2))


def kernel_of(model):
    return np.asarray(model.dense_weight(), np.float64)


@pytest.mark.parametrize("shape", [(24, 16), (16, 24)])
def test_whitened_minimises_the_output_error(shape):
    x = correlated_inputs(400, shape[0], 1)
    layer = single_layer(*shape)
    w = np.asarray(layer.kernel[...], np.float64)
    r = 5
    batches = [x[:200], x[200:]]
    small, report = tnn.compress(layer, rank=r, method="whitened", calibration=batches,
                                 progress=False)
    w_new = kernel_of(small)
    assert np.linalg.matrix_rank(w_new, tol=1e-5 * np.abs(w_new).max()) == r
    err = output_error(x, w, w_new)
    assert err == pytest.approx(best_output_error(x, w, r), rel=1e-3)
    assert report[0].rel_output_error == pytest.approx(err, rel=1e-3)
    assert report[0].method == "whitened"
    # plain SVD and random rank-r competitors do worse on the data
    plain, plain_report = tnn.compress(layer, rank=r, calibration=batches, progress=False)
    assert output_error(x, w, kernel_of(plain)) > 1.05 * err
    assert plain_report[0].rel_output_error == pytest.approx(
        output_error(x, w, kernel_of(plain)), rel=1e-3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        u, _, vt = np.linalg.svd(w + 0.1 * rng.normal(size=w.shape), full_matrices=False)
        competitor = u[:, :r] @ (u[:, :r].T @ w @ vt[:r].T) @ vt[:r]
        assert output_error(x, w, competitor) >= err * (1 - 1e-4)


def test_whitened_with_rank_deficient_inputs_is_finite_and_optimal():
    # 10 samples in 32 dimensions (and only 6 directions): XᵀX is singular, the damping keeps
    # the Cholesky factor defined and the fit is still the best on the data
    x = correlated_inputs(10, 32, 2, rank=6)
    layer = single_layer(32, 20)
    w = np.asarray(layer.kernel[...], np.float64)
    small, report = tnn.compress(layer, rank=3, method="whitened", calibration=[x],
                                 progress=False)
    w_new = kernel_of(small)
    assert np.all(np.isfinite(w_new))
    assert output_error(x, w, w_new) <= best_output_error(x, w, 3) + 1e-3
    assert np.isfinite(report[0].rel_output_error)


def test_whitened_closed_form_matches_numpy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 12))
    w = rng.normal(size=(12, 9))
    gram = x.T @ x
    new, sigma = whitened(w, gram, 4, damping=1e-7)
    s = np.linalg.cholesky(gram + 1e-7 * np.trace(gram) / 12 * np.eye(12))
    u, sv, vt = np.linalg.svd(s.T @ w)
    expected = np.linalg.solve(s.T, (u[:, :4] * sv[:4]) @ vt[:4])
    np.testing.assert_allclose(np.asarray(new), expected, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(np.asarray(sigma), sv, rtol=1e-4)


def test_fisher_weighted_matches_numpy_and_uniform_weights_give_the_svd():
    rng = np.random.default_rng(4)
    w = rng.normal(size=(15, 10))
    fisher = rng.uniform(0.1, 2.0, size=(15, 10))
    new, _ = fisher_weighted(w, fisher, 3)
    f = np.sqrt(fisher.sum(0))
    u, s, vt = np.linalg.svd(w * f)
    expected = ((u[:, :3] * s[:3]) @ vt[:3]) / f
    np.testing.assert_allclose(np.asarray(new), expected, rtol=1e-4, atol=1e-5)
    # it is the minimiser of the weighted error: perturbations of it do worse
    weighted = lambda m: np.sum(f ** 2 * (w - m) ** 2)  # noqa: E731
    for k in range(5):
        d = 1e-2 * rng.normal(size=(3, 10))
        assert weighted(expected) <= weighted(expected + (u[:, :3] @ d) / f) + 1e-12
    uniform, _ = fisher_weighted(w, np.ones_like(w), 3)
    u, s, vt = np.linalg.svd(w)
    np.testing.assert_allclose(np.asarray(uniform), (u[:, :3] * s[:3]) @ vt[:3], atol=1e-5)


class TwoLayer(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(12, 16, rngs=rngs)
        self.b = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.b(jax.nn.relu(self.a(x)))


def test_fwsvd_collects_the_fisher_information_and_improves_the_weighted_error():
    model = TwoLayer(nnx.Rngs(0))
    rng = np.random.default_rng(5)
    xs = [rng.normal(size=(32, 12)).astype(np.float32) for _ in range(3)]
    ys = [rng.normal(size=(32, 3)).astype(np.float32) for _ in range(3)]
    batches = list(zip(xs, ys))

    def loss_fn(m, batch):
        x, y = batch
        return jnp.mean((m(x) - y) ** 2)

    small, report = tnn.compress(model, rank=2, method="fwsvd",
                                 calibration=batches, loss_fn=loss_fn, progress=False,
                                 select=lambda path, layer: path == ("a",))
    # the Fisher information by hand
    fisher = sum(np.asarray(nnx.grad(loss_fn)(model, b)["a"]["kernel"][...], np.float64) ** 2
                 for b in batches)
    w = np.asarray(model.a.kernel[...], np.float64)
    expected, _ = fisher_weighted(w, fisher, 2)
    np.testing.assert_allclose(kernel_of(small.a), np.asarray(expected), rtol=1e-3, atol=1e-4)
    assert report[0].method == "fwsvd" and report[0].rank == 2


def test_asvd_and_energy_ranks_and_the_report():
    model = TwoLayer(nnx.Rngs(1))
    x = correlated_inputs(256, 12, 6)
    small, report = tnn.compress(model, rank=("energy", 0.99), method="asvd", calibration=[x],
                                 progress=False)
    assert [r.method for r in report] == ["asvd", "asvd"]
    assert all(np.isfinite(r.rel_output_error) for r in report)
    assert "output error" in str(report)
    np.testing.assert_allclose(small(x), model(x), atol=0.2 * float(jnp.abs(model(x)).max()))


class WithAttention(nnx.Module):
    """A model the library did not write: attention, an MLP and one layer used twice."""

    def __init__(self, rngs):
        self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=16, qkv_features=16,
                                           decode=False, rngs=rngs)
        self.up = nnx.Linear(16, 32, rngs=rngs)
        self.down = nnx.Linear(32, 16, rngs=rngs)
        self.head = nnx.Linear(16, 4, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(x)
        x = x + self.down(jax.nn.gelu(self.up(x)))
        x = x + self.down(jax.nn.gelu(self.up(x)))  # shared layers
        return self.head(x.mean(1))


def test_calibration_on_a_model_with_attention_and_shared_layers():
    model = WithAttention(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (8, 5, 16))
    small, report = tnn.compress(model, rank=8, method="whitened", calibration=[x, x * 0.5],
                                 progress=False)
    assert {r.path for r in report} == {("up",), ("down",), ("head",)}
    out = small(x)
    assert out.shape == (8, 4) and bool(jnp.all(jnp.isfinite(out)))
    for r in report:
        assert 0 <= r.rel_output_error < 1


def test_clear_errors():
    layer = single_layer(8, 6)
    x = np.ones((4, 8), np.float32)
    with pytest.raises(ValueError, match="needs calibration data"):
        tnn.compress(layer, rank=2, method="whitened")
    with pytest.raises(ValueError, match='needs kind "lowrank"'):
        tnn.compress(layer, rank=2, kind="cp", method="whitened", calibration=[x])
    with pytest.raises(ValueError, match="loss_fn"):
        tnn.compress(layer, rank=2, method="fwsvd", calibration=[x])
    with pytest.raises(ValueError, match="method must be one of"):
        tnn.compress(layer, rank=2, method="qr", calibration=[x])
    with pytest.raises(ValueError, match=r"layer <root> takes inputs with 8 features .* \(4, 7\)"):
        tnn.compress(layer, rank=2, method="whitened", calibration=[np.ones((4, 7))],
                     progress=False)
    with pytest.raises(ValueError, match="no nnx.Linear layer"):
        tnn.compress(nnx.Sequential(jax.nn.relu), rank=2, method="whitened", calibration=[x],
                     progress=False)
    with pytest.raises(ValueError, match="holds no batch"):
        tnn.compress(layer, rank=2, method="whitened", calibration=[], progress=False)
    conv = nnx.Sequential(nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="compresses nnx.Linear layers, but conv layer"):
        tnn.compress(conv, rank=2, method="whitened", calibration=[np.ones((1, 5, 5, 3))])


def test_training_still_works_after_data_aware_compression():
    model = TwoLayer(nnx.Rngs(2))
    x = jnp.asarray(correlated_inputs(64, 12, 7))
    y = model(x)
    small, _ = tnn.compress(model, rank=3, method="whitened", calibration=[x], progress=False)
    optimizer = nnx.Optimizer(small, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(m, opt):
        loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(m)
        opt.update(m, grads)
        return loss

    first = float(step(small, optimizer))
    for _ in range(50):
        last = float(step(small, optimizer))
    assert last < first


class Deep(nnx.Module):
    def __init__(self, rngs):
        self.layers = nnx.List([nnx.Linear(32, 96, rngs=rngs), nnx.Linear(96, 96, rngs=rngs),
                                nnx.Linear(96, 48, rngs=rngs)])

    def __call__(self, x):
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return x


@pytest.mark.parametrize("method", ["svd", "whitened"])
@pytest.mark.parametrize("fraction", [0.3, 0.5])
def test_global_budget_hits_its_target_and_beats_a_uniform_spread(method, fraction):
    model = Deep(nnx.Rngs(3))
    # layers of different difficulty: the middle one nearly low rank
    w = np.asarray(model.layers[1].kernel[...])
    u, s, vt = np.linalg.svd(w)
    model.layers[1].kernel[...] = jnp.asarray((u * s * 0.7 ** np.arange(96)) @ vt)
    x = correlated_inputs(512, 32, 8)
    kwargs = dict(method=method, calibration=[x], progress=False)
    small, report = tnn.compress(model, params=fraction, **kwargs)
    assert abs(report.ratio - fraction) <= 0.01
    # the same budget spread uniformly: one parameter fraction for every layer
    uniform, uniform_report = tnn.compress(model, rank=fraction, **kwargs)
    assert uniform_report.ratio <= fraction + 0.01
    column = "rel_output_error" if method == "whitened" else "rel_weight_error"
    ours = sum(getattr(r, column) ** 2 for r in report)
    theirs = sum(getattr(r, column) ** 2 for r in uniform_report)
    assert ours < theirs


def test_global_budget_errors():
    model = Deep(nnx.Rngs(0))
    with pytest.raises(ValueError, match="exactly one of rank"):
        tnn.compress(model, rank=2, params=0.5)
    with pytest.raises(ValueError, match="exactly one of rank"):
        tnn.compress(model)
    with pytest.raises(ValueError, match=r"params must be a fraction in \(0, 1\], got 1.5"):
        tnn.compress(model, params=1.5)
    with pytest.raises(ValueError, match='needs kind "lowrank"'):
        tnn.compress(model, params=0.5, kind="tt")


@pytest.mark.slow  # ~15 s; every method is unit-tested and the README's block runs
def test_compress_with_data_example_quick(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "compress_with_data.py"
    spec = importlib.util.spec_from_file_location("example_compress_with_data", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "c.png"
    dense, results = example.main(["--quick", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert dense > 0.85
    assert set(results) == {"svd", "whitened", "asvd", "fwsvd", "cur", "tt", "acip"}
    for method, rows in results.items():
        for (ratio, before, after), fraction in zip(rows, (0.5,)):
            # CUR at the SVD budget's ranks pays k² more for U
            assert ratio <= fraction + (0.1 if method == "cur" else 0.02), method
            assert 0 <= before <= 1 and 0 <= after <= 1
        assert rows[-1][2] > 0.5, method  # half the parameters, fine-tuned, keep most


def test_report_counts_flops_per_row():
    model = nnx.Sequential(nnx.Linear(64, 32, rngs=nnx.Rngs(0)), jax.nn.relu,
                           nnx.Linear(32, 10, rngs=nnx.Rngs(1)))
    _, report = tnn.compress(model, rank=4)
    assert [(r.flops_before, r.flops_after) for r in report] == [
        (2 * 64 * 32, 2 * 4 * (64 + 32)), (2 * 32 * 10, 2 * 4 * (32 + 10))]
    assert report.flops_ratio == pytest.approx((768 + 336) / (4096 + 640))
    assert "FLOPs per row" in str(report)


@pytest.mark.parametrize("eps", [0.5, 0.2, 1e-4])
def test_tt_mpo_ranks_from_an_error_bound(eps):
    layer = nnx.Linear(64, 48, rngs=nnx.Rngs(0))
    u, s, vt = np.linalg.svd(np.asarray(layer.kernel[...]), full_matrices=False)
    layer.kernel[...] = jnp.asarray((u * s * 0.85 ** np.arange(48)) @ vt)
    small, report = tnn.compress(layer, kind="tt", rank=("error", eps))
    assert report[0].kind == "tt" and report[0].rel_weight_error <= eps
    x = jax.random.normal(jax.random.key(0), (3, 64))
    if eps < 1e-3:  # full TT ranks: the dense layer itself
        np.testing.assert_allclose(small(x), layer(x), atol=1e-4)
    with pytest.raises(ValueError, match='needs kind "tt"'):
        tnn.compress(layer, rank=("error", eps))
    with pytest.raises(ValueError, match=r"needs eps in \(0, 1\)"):
        tnn.compress(layer, kind="tt", rank=("error", 1.5))


def test_overrides_by_path_pattern_with_a_rank_and_with_a_budget():
    model = Deep(nnx.Rngs(4))
    _, report = tnn.compress(model, rank=4, overrides={"layers/2": 9, "nothing*": 1})
    assert [r.rank for r in report] == [4, 4, 9]
    x = correlated_inputs(256, 32, 9)
    _, report = tnn.compress(model, params=0.4, overrides={"*/0": 2}, method="whitened",
                             calibration=[x], progress=False)
    assert report[0].rank == 2 and abs(report.ratio - 0.4) <= 0.01
    with pytest.raises(TypeError, match="overrides must be a dict"):
        tnn.compress(model, rank=2, overrides=[("a", 1)])
    with pytest.raises(ValueError, match="more than params"):
        tnn.compress(model, params=0.05, overrides={"layers/1": "full"})


def test_non_finite_calibration_inputs_name_the_layer():
    layer = single_layer(8, 6)
    x = np.ones((4, 8), np.float32)
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match="calibration inputs of layer <root> hold NaN or Inf"):
        tnn.compress(layer, rank=2, method="whitened", calibration=[x], progress=False)


def test_calibration_at_extreme_scales():
    # the whitened fit does not depend on the scale of X; where XᵀX underflows (1e-30) it falls
    # back to the plain SVD and the output error is reported as unknown (NaN), never as 0
    x = correlated_inputs(200, 24, 10)
    layer = single_layer(24, 16)
    w = np.asarray(layer.kernel[...], np.float64)
    base = kernel_of(tnn.compress(layer, rank=4, method="whitened", calibration=[x],
                                  progress=False)[0])
    scaled = kernel_of(tnn.compress(layer, rank=4, method="whitened", calibration=[x * 1e-8],
                                    progress=False)[0])
    np.testing.assert_allclose(scaled, base, rtol=1e-3, atol=1e-4 * np.abs(base).max())
    tiny, report = tnn.compress(layer, rank=4, method="whitened", calibration=[x * 1e-30],
                                progress=False)
    plain = kernel_of(tnn.compress(layer, rank=4)[0])
    np.testing.assert_allclose(kernel_of(tiny), plain, atol=1e-4 * np.abs(w).max())
    assert np.isnan(report[0].rel_output_error)
    with pytest.raises(ValueError, match="hold NaN or Inf"):
        tnn.compress(layer, rank=4, method="whitened", calibration=[x * 1e30], progress=False)
