"""Matrix sensing by gradient descent on a low-rank factorization (Xiong, Ding & Du 2024)."""

import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorfact as tfa

from tensorfact import GDInfo, factorize_gd, gaussian_measurements, measure
from tensorfact.tensors import LowRankMatrix

KEY = jax.random.key(0)
N_SIZE, TRUE_RANK, N_MEAS = 20, 2, 500


@functools.cache
def _problem(symmetric):
    """X* = U Uᵀ (rank 2, unit Frobenius norm) and Gaussian measurements of it."""
    k_u, k_a = jax.random.split(jax.random.key(1 if symmetric else 2))
    u = jax.random.normal(k_u, (N_SIZE, TRUE_RANK))
    x = u @ u.T
    x = x / jnp.linalg.norm(x)
    a = gaussian_measurements((N_SIZE, N_SIZE), N_MEAS, key=k_a, symmetric=symmetric)
    return x, a, measure(a, x)


def _first_below(errors, target):
    hits = np.flatnonzero(np.asarray(errors) < target)
    return int(hits[0]) if hits.size else len(errors)


def test_measure_matches_numpy_einsum(rng):
    a = rng.standard_normal((7, 4, 5)).astype(np.float32)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    np.testing.assert_allclose(measure(a, x), np.einsum("ijk,jk->i", a, x), rtol=1e-5,
                               atol=1e-5)
    lr = LowRankMatrix(x[:, :2], None, rng.standard_normal((2, 5)).astype(np.float32))
    np.testing.assert_allclose(measure(a, lr), np.einsum("ijk,jk->i", a, lr.to_dense()),
                               rtol=1e-5, atol=1e-5)


def test_gaussian_measurements_shape_scaling_and_symmetry():
    a = gaussian_measurements((6, 6), 4000, key=KEY, symmetric=True)
    assert a.shape == (4000, 6, 6) and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, jnp.swapaxes(a, 1, 2))
    # E⟨A_i, X⟩² = ‖X‖_F² for symmetric X (diagonal variance 1, off-diagonal ½)
    x = np.random.default_rng(0).standard_normal((6, 6))
    x = (x + x.T) / np.linalg.norm(x + x.T)
    assert float(jnp.mean(measure(a, x) ** 2)) == pytest.approx(1.0, abs=0.08)
    b = gaussian_measurements((3, 5), 10, key=KEY)
    assert b.shape == (10, 3, 5) and not np.allclose(b[:, 0, 1], b[:, 1, 0])


def test_exact_recovery_asymmetric_exact_rank():
    x, a, y = _problem(False)
    lr, info = factorize_gd(y, a, TRUE_RANK, key=KEY, init_scale=0.1, n_iter=1500, x_true=x,
                            return_info=True)
    assert isinstance(lr, LowRankMatrix) and lr.shape == x.shape and lr.rank == TRUE_RANK
    err = float(jnp.linalg.norm(lr.to_dense() - x) / jnp.linalg.norm(x))
    assert err < 1e-3
    assert float(info.true_errors[-1]) == pytest.approx(err, rel=1e-2, abs=1e-7)  # result
    assert float(info.losses[-1]) < 1e-6 * float(info.losses[0])
    # FitInfo's fields: the relative error on the measurements, after every step
    assert int(info.n_iter) == 1500 and not bool(info.converged)
    resid = np.linalg.norm(np.asarray(measure(a, lr), np.float64) - np.asarray(y, np.float64))
    assert float(info.rel_error) == pytest.approx(resid / np.linalg.norm(np.asarray(y)),
                                                  rel=1e-2, abs=1e-6)
    assert float(info.rel_error) == float(info.errors[-1]) < 1e-3
    assert int(info.ranks[-1]) == TRUE_RANK and info.spectra.shape == (1500, TRUE_RANK)
    np.testing.assert_allclose(info.spectra[-1], np.linalg.svd(np.asarray(lr.to_dense()),
                                                               compute_uv=False)[:TRUE_RANK],
                               rtol=1e-4)
    np.testing.assert_allclose(lr.s, np.ones(TRUE_RANK))


def test_symmetric_overparameterization_is_much_slower_than_asymmetric():
    # The paper's finding: symmetric k > r converges sublinearly, asymmetric k > r linearly.
    x_s, a_s, y_s = _problem(True)
    x_a, a_a, y_a = _problem(False)
    steps = 2000
    _, sym = factorize_gd(y_s, a_s, 5, key=KEY, symmetric=True, init_scale=0.1, n_iter=steps,
                          x_true=x_s, return_info=True)
    _, asym = factorize_gd(y_a, a_a, 5, key=KEY, init_scale=0.3, n_iter=steps, x_true=x_a,
                           return_info=True)
    assert float(asym.true_errors[-1]) * 10 <= float(sym.true_errors[-1])
    # sublinear: doubling the steps far from halves the log-error; the error at the end is
    # still above 1e-4 although the loss keeps decreasing
    assert float(sym.true_errors[-1]) > 1e-4
    assert float(sym.true_errors[-1]) > 0.2 * float(sym.true_errors[steps // 2])


def test_larger_init_scale_converges_faster_when_asymmetric():
    x, a, y = _problem(False)
    hits = []
    for alpha in (0.03, 0.1, 0.3):
        _, info = factorize_gd(y, a, 5, key=KEY, init_scale=alpha, n_iter=2500, x_true=x,
                               return_info=True)
        hits.append(_first_below(info.true_errors, 1e-4))
    assert hits[2] < hits[1] < hits[0], hits
    assert hits[1] < 2500  # α = 0.1 and 0.3 reach the target within the budget


def test_loss_is_nonincreasing_for_a_small_learning_rate():
    _, a, y = _problem(False)
    _, info = factorize_gd(y, a, 3, key=KEY, init_scale=0.1, learning_rate=0.05, n_iter=600,
                           return_info=True)
    tail = np.asarray(info.losses[100:], np.float64)
    assert np.all(np.diff(tail) <= 1e-6 * tail[:-1] + 1e-12)
    assert tail[-1] < tail[0]
    assert np.all(np.isnan(np.asarray(info.true_errors)))  # no x_true: test errors are NaN
    assert np.all(np.isfinite(np.asarray(info.errors)))   # errors on the data always exist


def test_custom_optimizer():
    x, a, y = _problem(False)
    _, info = factorize_gd(y, a, 2, key=KEY, init_scale=0.1, optimizer=optax.adam(1e-2),
                           n_iter=800, x_true=x, return_info=True)
    assert float(info.true_errors[-1]) < 0.05 < float(info.true_errors[0])


def test_jit_vmap_over_keys_and_determinism():
    _, a, y = _problem(True)
    fit = functools.partial(factorize_gd, rank=3, symmetric=True, init_scale=0.1, n_iter=50,
                            return_info=True)
    keys = jax.random.split(KEY, 3)
    dense = jax.vmap(lambda k: fit(y, a, key=k)[0].to_dense())(keys)
    jitted = jax.jit(lambda k: fit(y, a, key=k))
    for i, k in enumerate(keys):
        lr, info = jitted(k)
        assert isinstance(info, GDInfo) and info.losses.shape == (50,)
        np.testing.assert_allclose(dense[i], lr.to_dense(), atol=1e-5)
        np.testing.assert_allclose(lr.to_dense(), lr.to_dense().T, atol=1e-6)
    one, h1 = fit(y, a, key=keys[0])
    two, h2 = fit(y, a, key=keys[0])
    np.testing.assert_array_equal(one.u, two.u)
    np.testing.assert_array_equal(h1.losses, h2.losses)
    assert not np.allclose(dense[0], dense[1])


def _bad_calls():
    a = np.zeros((10, 4, 4), np.float32)
    y = np.zeros((10,), np.float32)
    rect = np.zeros((10, 4, 5), np.float32)
    return [
        (dict(y=y, a=a, rank=0), "rank"),
        (dict(y=y, a=a, rank=2.0), "rank"),
        (dict(y=y, a=a, rank=True), "rank"),
        (dict(y=y, a=a, rank=2, n_iter=0), "n_iter"),
        (dict(y=y, a=a, rank=2, n_iter=1.5), "n_iter"),
        (dict(y=y[:9], a=a, rank=2), "y must have shape"),
        (dict(y=y[:, None], a=a, rank=2), "y must have shape"),
        (dict(y=y, a=a[0], rank=2), "a must have shape"),
        (dict(y=y, a=rect, rank=2, symmetric=True), "symmetric"),
        (dict(y=y, a=a, rank=2, key=None), "key"),
        (dict(y=y, a=a, rank=2, init_scale=-1e-3), "init_scale"),
        (dict(y=y, a=a, rank=2, init_scale=np.inf), "init_scale"),
        (dict(y=y, a=a, rank=2, learning_rate=np.inf), "learning_rate"),
        (dict(y=y, a=a, rank=2, rank_tol=1.0), "rank_tol"),
        (dict(y=y, a=a, rank=2, learning_rate=-0.1), "learning_rate"),
        (dict(y=y, a=a, rank=2, learning_rate=0.1, optimizer=optax.sgd(0.1)), "optimizer"),
        (dict(y=y, a=a, rank=2, x_true=np.zeros((4, 5))), "x_true"),
    ]


@pytest.mark.parametrize("kwargs, match", _bad_calls())
def test_bad_inputs(kwargs, match):
    kwargs = {"key": KEY, **kwargs}
    with pytest.raises(ValueError, match=match):
        factorize_gd(**kwargs)


def test_key_is_required_keyword_only():
    _, a, y = _problem(False)
    with pytest.raises(TypeError, match="key"):
        factorize_gd(y, a, 2)                              # no default
    with pytest.raises(TypeError, match="positional"):
        factorize_gd(y, a, 2, KEY)                         # keyword-only
    with pytest.raises(TypeError, match="key must be a jax.random key"):
        factorize_gd(y, a, 2, key=0)
    with pytest.raises(TypeError, match="key"):
        gaussian_measurements((3, 3), 4)


def test_result_alone_by_default_and_info_convention():
    """No tuple by default; the info's first fields are FitInfo's (docs/glossary.md)."""
    _, a, y = _problem(False)
    lr = factorize_gd(y, a, 2, key=KEY, init_scale=0.1, n_iter=5)
    assert isinstance(lr, LowRankMatrix)
    assert GDInfo._fields[:4] == tfa.FitInfo._fields
    assert GDInfo._fields[4] == "losses"


def test_nonfinite_measurements_are_reported_by_name():
    x, a, y = _problem(False)
    fit = functools.partial(factorize_gd, rank=2, key=KEY, n_iter=3)
    with pytest.raises(ValueError, match=r"^y contains 1 NaN or Inf"):
        fit(y.at[3].set(jnp.nan), a)
    with pytest.raises(ValueError, match=r"^a contains 2 NaN or Inf"):
        fit(y, a.at[0, 0, :2].set(jnp.inf))
    with pytest.raises(ValueError, match=r"^x_true contains 1 NaN or Inf"):
        fit(y, a, x_true=x.at[1, 1].set(jnp.nan))
    # under jit the values are unknown: nothing is raised (the documented checkify case)
    jax.jit(lambda y: fit(y, a))(y.at[3].set(jnp.nan))


def test_all_zero_measurements_take_a_sane_default_step():
    """y = 0 (X* = 0): the default step no longer divides by zero; gradient descent shrinks the
    start toward zero, and the error relative to zero data is reported as Inf, not 0."""
    _, a, y = _problem(False)
    lr, info = factorize_gd(jnp.zeros_like(y), a, 3, key=KEY, init_scale=0.1, n_iter=200,
                            return_info=True)
    dense = np.asarray(lr.to_dense())
    assert np.all(np.isfinite(dense)) and np.all(np.isfinite(np.asarray(info.losses)))
    start = factorize_gd(jnp.zeros_like(y), a, 3, key=KEY, init_scale=0.1, n_iter=1)
    assert np.linalg.norm(dense) < 0.5 * np.linalg.norm(np.asarray(start.to_dense()))
    assert float(info.losses[-1]) < float(info.losses[0])
    assert np.isinf(float(info.rel_error))


@settings(max_examples=4, deadline=None)
@given(c=st.sampled_from((1e-30, 1e-20, 1e20, 1e30)))
def test_property_scale_equivariance(c):
    """The factors of c·y are √c times those of y, the product c times, and the reported
    errors are the same (before: NaN, or zeros and a step of 0.2 / 1e-30)."""
    x, a, y = _problem(False)
    kwargs = dict(key=KEY, init_scale=0.1, n_iter=300, return_info=True)
    base, base_info = factorize_gd(y, a, 3, x_true=x, **kwargs)
    got, info = factorize_gd(y * np.float32(c), a, 3, x_true=x * np.float32(c), **kwargs)
    root = np.sqrt(c)
    np.testing.assert_allclose(np.asarray(got.u, np.float64) / root, base.u, rtol=1e-3,
                               atol=1e-4 * float(np.abs(base.u).max()))
    dense = np.asarray(got.u, np.float64) @ np.asarray(got.vt, np.float64) / c
    assert np.linalg.norm(dense - np.asarray(base.to_dense())) < 1e-3 * np.linalg.norm(x)
    for field in ("errors", "true_errors"):
        np.testing.assert_allclose(getattr(info, field), getattr(base_info, field), rtol=1e-3,
                                   atol=1e-6)
    assert float(info.rel_error) == pytest.approx(float(base_info.rel_error), rel=1e-3,
                                                  abs=1e-6)
    assert float(base_info.true_errors[-1]) < 1e-2          # it is a real fit
    np.testing.assert_array_equal(info.ranks, base_info.ranks)


@pytest.mark.parametrize("kwargs, match", [
    (dict(shape=(4, 5), n_measurements=3, symmetric=True), "square"),
    (dict(shape=(4, 4), n_measurements=0), "n_measurements"),
    (dict(shape=(4,), n_measurements=3), "shape"),
])
def test_bad_measurement_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gaussian_measurements(**kwargs, key=KEY)
    with pytest.raises(ValueError, match="x must have shape"):
        measure(np.zeros((3, 4, 4)), np.zeros((4, 5)))


def test_example_quick_run_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = pathlib.Path(__file__).parents[1] / "examples" / "matrix_sensing_overparameterization.py"
    spec = importlib.util.spec_from_file_location("matrix_sensing_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "sensing.png"
    results = module.main(["--quick", "--out", str(out)])
    assert out.exists() and out.stat().st_size > 1000
    assert len(results) == 6 and all(np.all(np.isfinite(e)) for _, e in results)
