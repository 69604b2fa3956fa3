"""Tests of matrix completion (``complete``: ALS and Soft-Impute) and robust PCA (``rpca``):
recovery, FitInfo semantics, jit/vmap, determinism, argument checks.

The expensive fits (200 × 200 completion, 100 × 100 RPCA) run once per module in fixtures;
the transformation and argument tests use small matrices.
"""

from __future__ import annotations

import doctest
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tensorfact as tfa
from tensorfact.decomposition import _completion as completion
from tensorfact.decomposition._completion import complete, rpca

KEY = jax.random.key(7)


def rel(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return float(np.linalg.norm(x - y) / np.linalg.norm(x))


def low_rank(seed, shape, rank):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return jax.random.normal(k1, (shape[0], rank)) @ jax.random.normal(k2, (rank, shape[1]))


def problem(seed, shape=(200, 200), rank=4, p=0.3):
    """A planted rank-``rank`` matrix, its observation mask, and the data with NaN gaps."""
    m = low_rank(seed, shape, rank)
    mask = jax.random.bernoulli(jax.random.key(1000 + seed), p, shape)
    return m, mask, jnp.where(mask, m, jnp.nan)


def corrupted(seed, shape=(100, 100), rank=5, frac=0.05):
    """Low rank plus gross sparse errors of magnitude 10-20 × the typical entry."""
    low = low_rank(seed, shape, rank)
    k1, k2, k3 = jax.random.split(jax.random.key(2000 + seed), 3)
    support = jax.random.bernoulli(k1, frac, shape)
    size = float(jnp.std(low)) * jax.random.uniform(k2, shape, minval=10.0, maxval=20.0)
    sign = jnp.where(jax.random.bernoulli(k3, 0.5, shape), 1.0, -1.0)
    return low, jnp.where(support, sign * size, 0.0), support


def assert_svd_form(lr, rank, atol=1e-5):
    u, s, vt = (np.asarray(a, np.float64) for a in lr)
    np.testing.assert_allclose(u.T @ u, np.eye(rank), atol=atol)
    np.testing.assert_allclose(vt @ vt.T, np.eye(rank), atol=atol)
    assert np.all(s >= 0) and np.all(np.diff(s) <= 0)


@pytest.fixture(scope="module")
def planted():
    return problem(0)


@pytest.fixture(scope="module")
def als_fit(planted):
    _, mask, data = planted
    return complete(data, mask, 4, return_info=True)


@pytest.fixture(scope="module")
def soft_fit(planted):
    _, mask, data = planted
    return complete(data, mask, 4, method="soft_impute", return_info=True)


@pytest.fixture(scope="module")
def rpca_problem():
    low, sparse, support = corrupted(0)
    return low, sparse, support, rpca(low + sparse, return_info=True)


# ---------------------------------------------------------------------------------------------
# complete: recovery and info
# ---------------------------------------------------------------------------------------------

def test_als_recovers_rank4_from_30_percent(planted, als_fit):
    m, _mask, _ = planted
    lr, info = als_fit
    assert isinstance(lr, tfa.LowRankMatrix)
    assert lr.shape == (200, 200) and lr.rank == 4
    assert rel(m, lr.to_dense()) < 1e-3  # on ALL entries, 70 % of which were never seen
    assert float(info.rel_error) < 1e-4
    assert bool(info.converged) and 1 < int(info.n_iter) < 100


def test_soft_impute_recovers_rank4_from_30_percent(planted, soft_fit):
    m, _, _ = planted
    lr, info = soft_fit
    assert lr.shape == (200, 200) and lr.rank == 4
    assert rel(m, lr.to_dense()) < 2e-3
    assert bool(info.converged)


@pytest.mark.parametrize("fit", ["als_fit", "soft_fit"])
def test_result_is_an_svd(fit, request):
    lr, _ = request.getfixturevalue(fit)
    assert_svd_form(lr, 4)


def test_als_svd_matches_dense_svd(planted, als_fit):
    """The QR + core-SVD route gives the singular values of the dense product."""
    lr, _ = als_fit
    dense = np.asarray(lr.to_dense(), np.float64)
    s = np.linalg.svd(dense, compute_uv=False)[:4]
    np.testing.assert_allclose(np.asarray(lr.s), s, rtol=1e-5)


def test_als_observed_error_is_nonincreasing(als_fit):
    _, info = als_fit
    n = int(info.n_iter)
    errors = np.asarray(info.errors)
    assert np.all(np.isnan(errors[n:])) and np.all(np.isfinite(errors[:n]))
    assert np.all(np.diff(errors[:n]) <= 1e-6 + 1e-3 * errors[:n - 1])
    assert errors[n - 1] < 1e-3 * errors[0]


def test_als_observed_error_is_nonincreasing_on_noisy_data():
    """On data with no exact fit the error plateaus; it must still never go up (by more than
    float32 rounding) over a fixed number of sweeps."""
    m, mask, _ = problem(3, (60, 50), 3, 0.5)
    noisy = m + 0.3 * jax.random.normal(jax.random.key(3), m.shape)
    _, info = complete(noisy, mask, 3, init="random", key=KEY, n_iter=30, tol=0,
                       return_info=True)
    errors = np.asarray(info.errors)
    assert int(info.n_iter) == 30 and not bool(info.converged)
    assert np.all(np.diff(errors) <= 1e-5 * errors[:-1])
    assert 0.05 < errors[-1] < errors[0]


def test_info_rel_error_is_the_observed_error(planted, soft_fit):
    m, mask, _ = planted
    lr, info = soft_fit
    assert float(info.rel_error) == pytest.approx(
        float(tfa.relative_error(jnp.where(mask, m, 0), lr.to_dense(), mask)), rel=1e-4)


def test_als_random_init_also_recovers():
    m, mask, data = problem(1, (80, 70), 3, 0.4)
    lr = complete(data, mask, 3, init="random", key=KEY)
    assert rel(m, lr.to_dense()) < 1e-3
    assert_svd_form(lr, 3)


def test_unobserved_values_are_ignored(planted):
    """NaN, zeros or garbage off the mask give bit-identical fits."""
    m, mask, data = problem(2, (40, 30), 2, 0.5)
    garbage = jnp.where(mask, m, 1e6)
    for method in ("als", "soft_impute"):
        a = complete(data, mask, 2, method=method, n_iter=20)
        b = complete(garbage, mask, 2, method=method, n_iter=20)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_als_rows_with_few_or_no_observations_stay_finite():
    m, mask, _ = problem(4, (40, 30), 3, 0.5)
    mask = mask.at[0].set(False).at[1].set(False).at[1, 0].set(True)  # 0 and 1 observations
    mask = mask.at[:, 2].set(False)  # an unobserved column
    lr = complete(jnp.where(mask, m, jnp.nan), mask, 3, n_iter=50)
    dense = np.asarray(lr.to_dense())
    assert np.all(np.isfinite(dense))
    np.testing.assert_allclose(dense[0], 0.0, atol=1e-6)  # nothing seen: ridge gives zero
    np.testing.assert_allclose(dense[:, 2], 0.0, atol=1e-6)
    rows = np.r_[2:40]
    cols = np.r_[0:2, 3:30]
    assert rel(np.asarray(m)[np.ix_(rows, cols)], dense[np.ix_(rows, cols)]) < 1e-2


def test_fully_observed_matches_truncated_svd():
    x = np.random.default_rng(0).standard_normal((30, 20)).astype(np.float32)
    s = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    optimum = np.sqrt(np.sum(s[3:] ** 2)) / np.linalg.norm(s)
    for mask in (None, np.ones(x.shape, bool)):
        lr = complete(x, mask, 3, n_iter=200, tol=1e-9)
        assert rel(x, lr.to_dense()) == pytest.approx(optimum, abs=1e-4)
        np.testing.assert_allclose(np.asarray(lr.s), s[:3], rtol=1e-3)


def test_l2_shrinks_the_fit():
    _m, mask, data = problem(5, (40, 30), 2, 0.5)
    plain = complete(data, mask, 2, n_iter=30)
    ridge = complete(data, mask, 2, n_iter=30, l2=50.0)
    assert np.all(np.asarray(ridge.s) < np.asarray(plain.s))


def test_soft_impute_large_lam_gives_zero():
    """λ ≥ σ_max(P_Ω M) thresholds every singular value away: the fit is 0 from the start."""
    m, mask, data = problem(6, (40, 30), 2, 0.5)
    smax = float(np.linalg.svd(np.asarray(jnp.where(mask, m, 0)), compute_uv=False)[0])
    lr, info = complete(data, mask, 2, method="soft_impute", lam=1.01 * smax, return_info=True)
    np.testing.assert_array_equal(np.asarray(lr.s), 0.0)
    assert float(info.rel_error) == pytest.approx(1.0)


def test_soft_impute_lam_controls_bias(planted):
    """A larger λ shrinks the singular values more (and fits the data less well)."""
    m, mask, data = problem(7, (60, 50), 3, 0.5)
    small = complete(data, mask, 3, method="soft_impute", lam=0.01)
    big = complete(data, mask, 3, method="soft_impute", lam=5.0)
    assert np.all(np.asarray(big.s) < np.asarray(small.s))
    assert rel(m, small.to_dense()) < rel(m, big.to_dense())


def test_fixed_iterations_with_literal_zero_tol():
    _, mask, data = problem(8, (40, 30), 2, 0.5)
    for method in ("als", "soft_impute"):
        _, info = complete(data, mask, 2, method=method, n_iter=7, tol=0, return_info=True)
        assert int(info.n_iter) == 7 and not bool(info.converged)
        assert np.all(np.isfinite(np.asarray(info.errors)))


# ---------------------------------------------------------------------------------------------
# rpca
# ---------------------------------------------------------------------------------------------

def test_rpca_separates_low_rank_and_sparse(rpca_problem):
    low, sparse, _, ((l_hat, s_hat), _info) = rpca_problem
    assert l_hat.shape == low.shape and s_hat.shape == sparse.shape
    assert rel(low, l_hat) < 1e-4
    assert rel(sparse, s_hat) < 1e-4
    s = np.linalg.svd(np.asarray(l_hat, np.float64), compute_uv=False)
    assert s[5] < 1e-4 * s[0]  # rank 5


def test_rpca_finds_the_corruption_support(rpca_problem):
    low, _, support, ((_, s_hat), _) = rpca_problem
    found = np.abs(np.asarray(s_hat)) > 0.01 * float(jnp.std(low))  # corruptions are >= 10 std
    np.testing.assert_array_equal(found, np.asarray(support))


def test_rpca_info_records_the_residual(rpca_problem):
    low, sparse, _, ((l_hat, s_hat), info) = rpca_problem
    m = low + sparse
    n = int(info.n_iter)
    errors = np.asarray(info.errors)
    assert bool(info.converged) and 1 < n < 500
    assert np.all(np.isnan(errors[n:])) and np.all(np.isfinite(errors[:n]))
    assert errors[n - 1] < 1e-6 <= errors[n - 2]  # stopped at the first residual below tol
    assert float(info.rel_error) == pytest.approx(rel(m, l_hat + s_hat), rel=0.05)  # float32 floor


def test_rpca_explicit_defaults_match(rpca_problem):
    low, sparse, _, ((l_hat, s_hat), _) = rpca_problem
    m = low + sparse
    norm2 = float(jnp.linalg.svd(m, compute_uv=False)[0])
    l2, s2 = rpca(m, lam=1 / np.sqrt(100), mu=1.25 / norm2)
    np.testing.assert_allclose(np.asarray(l2), np.asarray(l_hat), atol=1e-4)
    np.testing.assert_allclose(np.asarray(s2), np.asarray(s_hat), atol=1e-4)


def test_rpca_huge_lam_puts_everything_in_low_rank():
    m = np.random.default_rng(1).standard_normal((20, 15)).astype(np.float32)
    low, sparse = rpca(m, lam=1e6)
    np.testing.assert_array_equal(np.asarray(sparse), 0.0)
    assert rel(m, low) < 1e-5


def test_rpca_fixed_iterations():
    low, sparse, _ = corrupted(1, (30, 25), 2)
    _, info = rpca(low + sparse, n_iter=5, tol=0, return_info=True)
    assert int(info.n_iter) == 5 and not bool(info.converged)
    assert np.all(np.isfinite(np.asarray(info.errors)))


# ---------------------------------------------------------------------------------------------
# jit, vmap, determinism
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["als", "soft_impute"])
def test_complete_vmap_matches_loop(method):
    probs = [problem(20 + i, (50, 40), 3, 0.5) for i in range(3)]
    data = jnp.stack([p[2] for p in probs])
    masks = jnp.stack([p[1] for p in probs])
    fit = functools.partial(complete, rank=3, method=method, n_iter=40, return_info=True)
    lr_b, info_b = jax.vmap(fit)(data, masks)
    assert lr_b.u.shape == (3, 50, 3) and lr_b.vt.shape == (3, 3, 40)
    for i in range(3):
        lr_i, info_i = fit(data[i], masks[i])
        dense_b = np.asarray(lr_b.u[i] * lr_b.s[i]) @ np.asarray(lr_b.vt[i])
        np.testing.assert_allclose(dense_b, np.asarray(lr_i.to_dense()), atol=1e-4)
        assert int(info_b.n_iter[i]) == int(info_i.n_iter)
        assert rel(probs[i][0], dense_b) < 1e-2


def test_rpca_vmap_matches_loop():
    parts = [corrupted(30 + i, (40, 30), 2) for i in range(3)]
    batch = jnp.stack([low + sparse for low, sparse, _ in parts])
    fit = functools.partial(rpca, n_iter=200, tol=1e-6, return_info=True)
    (l_b, s_b), info_b = jax.vmap(fit)(batch)
    for i in range(3):
        (l_i, s_i), info_i = fit(batch[i])
        np.testing.assert_allclose(np.asarray(l_b[i]), np.asarray(l_i), atol=1e-4)
        np.testing.assert_allclose(np.asarray(s_b[i]), np.asarray(s_i), atol=1e-4)
        assert int(info_b.n_iter[i]) == int(info_i.n_iter)
        assert rel(parts[i][0], l_b[i]) < 0.05  # 40 x 30 is near the edge of exact PCP recovery


def test_docstring_examples_run():
    failures, tried = doctest.testmod(completion, verbose=False)[:2]
    assert tried >= 2 and failures == 0


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------

SMALL = np.arange(12, dtype=np.float32).reshape(4, 3)
MASK = np.ones((4, 3), bool)


@pytest.mark.parametrize("bad", [np.ones(5, np.float32), np.ones((2, 3, 4), np.float32)])
def test_m_must_be_2d(bad):
    with pytest.raises(ValueError, match=r"m must (have at least 2 dimensions|be a 2-D matrix)"):
        complete(bad, np.ones(bad.shape, bool), 1)
    with pytest.raises(ValueError, match=r"m must (have at least 2 dimensions|be a 2-D matrix)"):
        rpca(bad)


def test_mask_shape():
    with pytest.raises(ValueError, match=re.escape("mask must have the shape of the data (4, 3), "
                                                   "got (3, 4)")):
        complete(SMALL, MASK.T, 1)


@pytest.mark.parametrize("rank", [0, -1, 2.0, True, "2"])
def test_rank_must_be_positive_int(rank):
    with pytest.raises(ValueError, match=re.escape(f"rank must be a positive integer, got "
                                                   f"{rank!r}")):
        complete(SMALL, MASK, rank)


def test_rank_at_most_min_dim():
    with pytest.raises(ValueError, match=r"rank must be at most min\(m.shape\) = 3 .*got 4"):
        complete(SMALL, MASK, 4)


def test_bad_method_and_init():
    with pytest.raises(ValueError, match=r"method must be one of \['als', 'soft_impute'\], "
                                         r"got 'svt'"):
        complete(SMALL, MASK, 1, method="svt")
    with pytest.raises(ValueError, match=r"init must be one of \['random', 'svd'\], got 'zero'"):
        complete(SMALL, MASK, 1, init="zero")


@pytest.mark.parametrize("kwargs,name", [
    ({"l2": -1.0}, "l2"), ({"tol": -1e-3}, "tol"),
    ({"method": "soft_impute", "lam": -0.5}, "lam"),
])
def test_complete_negative_numbers(kwargs, name):
    with pytest.raises(ValueError, match=re.escape(f"{name} must be >= 0, got {kwargs[name]!r}")):
        complete(SMALL, MASK, 1, **kwargs)


def test_method_specific_parameters():
    with pytest.raises(ValueError, match=r"lam is the Soft-Impute threshold.*got lam=0.1"):
        complete(SMALL, MASK, 1, lam=0.1)
    with pytest.raises(ValueError, match=r"l2 is the ALS ridge.*got l2=0.1"):
        complete(SMALL, MASK, 1, method="soft_impute", l2=0.1)


def test_missing_key_for_random_init():
    with pytest.raises(ValueError, match=r'key is required for init="random"'):
        complete(SMALL, MASK, 1, init="random")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("method", ["als", "soft_impute"])
def test_nonfinite_observed_entries(bad, method):
    x = SMALL.copy()
    x[1, 2] = bad
    with pytest.raises(ValueError, match=r"m \(observed entries\) contains 1 NaN or Inf"):
        complete(x, MASK, 1, method=method)
    mask = MASK.copy()
    mask[1, 2] = False  # the same value off the mask is fine
    lr = complete(x, mask, 1, method=method)
    assert np.all(np.isfinite(np.asarray(lr.to_dense())))


@pytest.mark.parametrize("kwargs,msg", [
    ({"lam": -1.0}, "lam must be >= 0, got -1.0"),
    ({"tol": -1.0}, "tol must be >= 0, got -1.0"),
    ({"mu": 0.0}, "mu must be > 0, got 0.0"),
    ({"mu": -2.0}, "mu must be > 0, got -2.0"),
    ({"n_iter": 0}, "n_iter must be a positive integer, got 0"),
])
def test_rpca_bad_arguments(kwargs, msg):
    with pytest.raises(ValueError, match=re.escape(msg)):
        rpca(SMALL, **kwargs)


