"""Tests of ``nmf``: nonnegativity, recovery (HALS and MU, with and without a mask), FitInfo,
TensorLy parity, transformations, penalties, argument checks.

As in ``test_cp.py`` the tests share a few shapes and call signatures so that JAX compiles few
programs; fits run in float32 except the TensorLy comparison (float64 under a local x64 context).
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tensorfact.decomposition._loop import FitInfo
from tensorfact.decomposition._nmf import nmf
from tensorfact.tensors import LowRankMatrix
from _helpers import x64, rel

SHAPE = (60, 50)
RANK = 4
KEY = jax.random.key(42)


def planted(seed, shape=SHAPE, rank=RANK, dtype=jnp.float32):
    """``W H`` with rectified-Gaussian factors: nonnegative, sparse-ish, well conditioned."""
    kw, kh = jax.random.split(jax.random.key(seed))
    w = jnp.maximum(jax.random.normal(kw, (shape[0], rank), dtype), 0)
    h = jnp.maximum(jax.random.normal(kh, (rank, shape[1]), dtype), 0)
    return w @ h


def noisy_nonneg(seed, dtype=jnp.float32, noise=0.3):
    clean = planted(seed, dtype=dtype)
    return jnp.maximum(clean + noise * jax.random.normal(jax.random.key(1000 + seed), SHAPE,
                                                         dtype), 0)


def random_mask(seed, p=0.6):
    return jax.random.bernoulli(jax.random.key(seed), p, SHAPE)


def assert_nonneg_factors(result):
    assert isinstance(result, LowRankMatrix)
    w, h = result.factors()
    assert w.shape == (SHAPE[0], RANK) and h.shape == (RANK, SHAPE[1])
    assert np.all(np.asarray(w) >= 0) and np.all(np.asarray(h) >= 0)
    np.testing.assert_array_equal(np.asarray(result.s), 1.0)
    return w, h


@pytest.fixture(scope="module")
def exact():
    return planted(0)


@pytest.fixture(scope="module")
def noisy():
    return noisy_nonneg(1)


# ---------------------------------------------------------------------------------------------
# Recovery and nonnegativity
# ---------------------------------------------------------------------------------------------

def test_hals_exact_recovery(exact):
    approx, info = nmf(exact, RANK, n_iter=500, tol=0, return_info=True)
    w, h = assert_nonneg_factors(approx)
    np.testing.assert_allclose(np.asarray(approx.to_dense()), np.asarray(w @ h), rtol=1e-6)
    assert rel(exact, approx.to_dense()) < 1e-3
    assert float(info.rel_error) < 1e-3


def test_mu_recovery_from_random_start(exact):
    """MU converges slowly (and cannot leave NNDSVD's zeros): a random start, looser bound."""
    approx, info = nmf(exact, RANK, method="mu", init="random", key=KEY, n_iter=500, tol=0,
                       return_info=True)
    assert_nonneg_factors(approx)
    assert rel(exact, approx.to_dense()) < 1e-2
    assert float(info.rel_error) == pytest.approx(rel(exact, approx.to_dense()), abs=1e-5)


def test_factors_nonnegative_on_noisy_data(noisy):
    for method in ("hals", "mu"):
        approx, info = nmf(noisy, RANK, method=method, return_info=True)
        assert_nonneg_factors(approx)
        assert 0.0 < float(info.rel_error) < 0.5


def test_masked_recovery_with_nan_holes(exact):
    mask = random_mask(5)  # ~40% missing
    holes = jnp.where(mask, exact, jnp.nan)  # missing entries are NaN: they must be ignored
    approx, info = nmf(holes, RANK, mask=mask, n_iter=500, tol=0, return_info=True)
    assert_nonneg_factors(approx)
    dense = np.asarray(approx.to_dense())
    assert np.all(np.isfinite(dense))
    assert rel(exact, dense) < 1e-3  # on ALL entries, the missing ones included
    assert float(info.rel_error) < 1e-3


def test_masked_mu_improves_and_stays_finite(exact):
    mask = random_mask(6)
    holes = jnp.where(mask, exact, jnp.nan)
    approx, info = nmf(holes, RANK, method="mu", init="random", key=KEY, mask=mask, n_iter=500,
                       tol=0, return_info=True)
    assert_nonneg_factors(approx)
    errors = np.asarray(info.errors)
    assert np.all(np.isfinite(errors))
    assert errors[-1] < 0.1 < errors[0]


def test_rank_above_min_shape_with_random_init():
    m = planted(2, shape=(6, 5), rank=2)
    approx = nmf(m, 7, init="random", key=KEY, n_iter=50)
    assert approx.shape == (6, 5) and approx.rank == 7
    assert rel(m, approx.to_dense()) < 0.05


# ---------------------------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------------------------

def test_nndsvd_is_deterministic_and_nonnegative(noisy):
    a, info_a = nmf(noisy, RANK, n_iter=1, tol=0, return_info=True)
    b, info_b = nmf(noisy, RANK, n_iter=1, tol=0, return_info=True)
    leaves = jax.tree_util.tree_leaves
    for u, v in zip(leaves((a, info_a)), leaves((b, info_b))):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    from tensorfact.decomposition._nmf import _nndsvd
    w0, h0 = _nndsvd(noisy, RANK)
    assert np.all(np.asarray(w0) >= 0) and np.all(np.asarray(h0) >= 0)
    assert np.any(np.asarray(w0) == 0)  # plain NNDSVD keeps its zeros
    # the leading term is the best rank-one approximation (Perron vectors are one-signed)
    s = np.linalg.svd(np.asarray(noisy, np.float64), compute_uv=False)
    assert np.linalg.norm(np.outer(w0[:, 0], h0[0])) == pytest.approx(s[0], rel=1e-5)
    # already a useful start, and a given LowRankMatrix init is used as is
    start_err = rel(noisy, w0 @ h0)
    assert start_err < 0.6
    _, info = nmf(noisy, RANK, init=LowRankMatrix(w0, None, h0), n_iter=1, tol=0,
                  return_info=True)
    assert float(info.errors[0]) == pytest.approx(float(info_a.errors[0]), abs=1e-6)


def test_random_init_depends_on_key(noisy):
    fit = functools.partial(nmf, rank=RANK, init="random", n_iter=5, tol=0, return_info=True)
    _, ia = fit(noisy, key=KEY)
    _, ib = fit(noisy, key=KEY)
    _, ic = fit(noisy, key=jax.random.key(7))
    np.testing.assert_array_equal(np.asarray(ia.errors), np.asarray(ib.errors))
    assert float(ia.errors[0]) != float(ic.errors[0])


def test_init_at_the_solution_stays_there(exact):
    w, h = nmf(exact, RANK, n_iter=500, tol=0).factors()
    _, info = nmf(exact, RANK, init=LowRankMatrix(w, None, h), n_iter=20, tol=0,
                  return_info=True)
    assert np.all(np.asarray(info.errors) < 1e-3)


# ---------------------------------------------------------------------------------------------
# FitInfo
# ---------------------------------------------------------------------------------------------

def test_hals_errors_non_increasing(noisy):
    approx, info = nmf(noisy, RANK, init="random", key=KEY, n_iter=100, tol=0,
                       return_info=True)
    assert isinstance(info, FitInfo)
    errors = np.asarray(info.errors)
    assert errors.shape == (100,) and int(info.n_iter) == 100 and not bool(info.converged)
    assert np.all(np.diff(errors) <= 2e-5), np.diff(errors).max()
    assert errors[-1] < errors[0] - 0.05  # a random start really improves
    assert float(info.rel_error) == pytest.approx(rel(noisy, approx.to_dense()), abs=1e-5)


def test_tolerance_stops_early_and_pads_with_nan(noisy):
    _, info = nmf(noisy, RANK, tol=1e-4, return_info=True)
    n = int(info.n_iter)
    errors = np.asarray(info.errors)
    assert bool(info.converged) and 2 <= n < 200
    assert np.all(np.isfinite(errors[:n])) and np.all(np.isnan(errors[n:]))
    assert abs(errors[n - 1] - errors[n - 2]) < 1e-4


# ---------------------------------------------------------------------------------------------
# Differential test against TensorLy (a matrix is a 2-way tensor)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_fit_no_worse_than_tensorly_hals(seed):
    tl = pytest.importorskip("tensorly")
    decomposition = pytest.importorskip("tensorly.decomposition")
    previous = tl.get_backend()
    tl.set_backend("numpy")
    try:
        with x64():
            m = noisy_nonneg(10 + seed, dtype=jnp.float64)
            assert m.dtype == jnp.float64
            approx = nmf(m, RANK, n_iter=200, tol=0)
            assert_nonneg_factors(approx)
            ours = rel(m, approx.to_dense())
        mn = np.asarray(m, np.float64)
        cp_tl = decomposition.non_negative_parafac_hals(mn, RANK, n_iter_max=200, init="svd",
                                                        tol=0)
        theirs = rel(mn, tl.cp_to_tensor(cp_tl))
    finally:
        tl.set_backend(previous)
    assert ours <= theirs + 1e-3, (ours, theirs)
    assert ours < 0.5


# ---------------------------------------------------------------------------------------------
# jit, vmap, determinism
# ---------------------------------------------------------------------------------------------

def test_vmap_matches_python_loop():
    batch = jnp.stack([noisy_nonneg(20 + i) for i in range(3)])
    fit = functools.partial(nmf, rank=RANK, n_iter=30, tol=1e-5, return_info=True)
    approx_b, info_b = jax.vmap(fit)(batch)
    assert approx_b.u.shape == (3, SHAPE[0], RANK)
    for i in range(3):
        approx_i, info_i = fit(batch[i])
        np.testing.assert_allclose(np.asarray(approx_b.u[i] @ approx_b.vt[i]),
                                   np.asarray(approx_i.to_dense()), atol=1e-3)
        assert int(info_b.n_iter[i]) == int(info_i.n_iter)
        assert float(info_b.rel_error[i]) == pytest.approx(float(info_i.rel_error), abs=1e-5)


def test_same_input_same_output(noisy):
    a = nmf(noisy, RANK, method="mu", n_iter=20, tol=0)
    b = nmf(noisy, RANK, method="mu", n_iter=20, tol=0)
    np.testing.assert_array_equal(np.asarray(a.u), np.asarray(b.u))
    np.testing.assert_array_equal(np.asarray(a.vt), np.asarray(b.vt))


# ---------------------------------------------------------------------------------------------
# Penalties
# ---------------------------------------------------------------------------------------------

def test_l1_gives_sparser_factors(noisy):
    def zeros(result):
        w, h = result.factors()
        return int(np.sum(np.asarray(w) == 0) + np.sum(np.asarray(h) == 0))

    plain = nmf(noisy, RANK, n_iter=100, tol=0)
    sparse = nmf(noisy, RANK, n_iter=100, tol=0, l1=2.0)
    assert_nonneg_factors(sparse)
    assert zeros(sparse) > 1.2 * zeros(plain), (zeros(sparse), zeros(plain))
    assert rel(noisy, sparse.to_dense()) < 0.6  # still a fit


def test_l2_shrinks_the_factors(noisy):
    def sq(result):
        w, h = result.factors()
        return float(jnp.sum(w ** 2) + jnp.sum(h ** 2))

    plain = nmf(noisy, RANK, n_iter=100, tol=0)
    ridge = nmf(noisy, RANK, n_iter=100, tol=0, l2=50.0)
    assert_nonneg_factors(ridge)
    assert sq(ridge) < sq(plain)
    assert float(ridge.norm()) < float(plain.norm())


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------

def test_negative_entries(exact):
    with pytest.raises(ValueError, match=r"m must be nonnegative: it has 1 negative observed "
                                         r"value\(s\), the smallest -0\.5"):
        nmf(exact.at[3, 4].set(-0.5), RANK, n_iter=1)


def test_negative_entries_outside_the_mask_are_ignored(exact):
    mask = jnp.ones(SHAPE, bool).at[3, 4].set(False)
    approx = nmf(exact.at[3, 4].set(-0.5), RANK, mask=mask, n_iter=1)
    assert_nonneg_factors(approx)


@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_non_finite_observed_entries(exact, bad):
    with pytest.raises(ValueError, match=r"m contains 1 NaN or Inf value"):
        nmf(exact.at[1, 2].set(bad), RANK, n_iter=1)
    mask = jnp.ones(SHAPE, bool).at[1, 2].set(False)
    assert_nonneg_factors(nmf(exact.at[1, 2].set(bad), RANK, mask=mask, n_iter=1))


@pytest.mark.parametrize("shape", [(5,), (3, 4, 5)])
def test_not_a_matrix(shape):
    with pytest.raises(ValueError, match=re.escape(f"m must be a 2-D matrix, got shape {shape}")):
        nmf(jnp.ones(shape), 1)


@pytest.mark.parametrize("rank", [0, -1, 2.5, True])
def test_bad_rank(exact, rank):
    with pytest.raises(ValueError, match=re.escape(f"rank must be a positive integer, got "
                                                   f"{rank!r}")):
        nmf(exact, rank)


def test_rank_above_min_shape_with_nndsvd(exact):
    with pytest.raises(ValueError, match=r'rank \(51\) must be at most min\(m.shape\) = 50 .*'
                                         r'init="nndsvd"'):
        nmf(exact, 51)


def test_bad_method(exact):
    with pytest.raises(ValueError, match=r"method must be one of \['hals', 'mu'\], got 'als'"):
        nmf(exact, RANK, method="als")


def test_bad_init_string(exact):
    with pytest.raises(ValueError, match=r"init must be one of \['nndsvd', 'nndsvda', 'random'\], "
                                         r"got 'svd'"):
        nmf(exact, RANK, init="svd")


def test_init_of_wrong_shape_or_rank(exact):
    wrong_rank = LowRankMatrix(jnp.ones((60, 3)), None, jnp.ones((3, 50)))
    with pytest.raises(ValueError, match=r"init must be a LowRankMatrix of shape \(60, 50\) and "
                                         r"rank 4, got shape \(60, 50\) and rank 3"):
        nmf(exact, RANK, init=wrong_rank)
    wrong_shape = LowRankMatrix(jnp.ones((60, 4)), None, jnp.ones((4, 49)))
    with pytest.raises(ValueError, match=r"got shape \(60, 49\) and rank 4"):
        nmf(exact, RANK, init=wrong_shape)


def test_missing_key_for_random_init(exact):
    with pytest.raises(ValueError, match=r'key is required for init="random"'):
        nmf(exact, RANK, init="random")


def test_mask_of_wrong_shape(exact):
    with pytest.raises(ValueError, match=r"mask must have the shape of the data \(60, 50\), "
                                         r"got \(60, 5\)"):
        nmf(exact, RANK, mask=jnp.ones((60, 5), bool))


@pytest.mark.parametrize("name,value", [("tol", -1.0), ("l1", -0.5), ("l2", -2.0),
                                        ("l1", float("nan"))])
def test_negative_hyperparameters(exact, name, value):
    with pytest.raises(ValueError, match=re.escape(f"{name} must be >= 0, got {value!r}")):
        nmf(exact, RANK, **{name: value})


def test_checks_run_under_jit_but_data_are_not_checked(exact):
    with pytest.raises(ValueError, match="rank must be a positive integer, got 0"):
        jax.jit(lambda m: nmf(m, 0))(exact)
    with pytest.raises(ValueError, match="method must be one of"):
        jax.jit(lambda m: nmf(m, RANK, method="x"))(exact)
    # documented: under jit negative data are abstract, hence not checked
    approx = jax.jit(functools.partial(nmf, rank=RANK, n_iter=1))(exact.at[3, 4].set(-0.5))
    assert_nonneg_factors(approx)


def test_mu_default_init_fills_nndsvd_zeros(exact):
    # MU cannot leave zero: from plain NNDSVD it stalls; the default for MU is NNDSVDa
    plain = nmf(exact, RANK, method="mu", init="nndsvd", n_iter=300, tol=0)
    default = nmf(exact, RANK, method="mu", n_iter=300, tol=0)
    err_plain = rel(exact, plain.to_dense())
    err_default = rel(exact, default.to_dense())
    assert err_default < 0.5 * err_plain and err_default < 0.05
