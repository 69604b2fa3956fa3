"""Tests of ``tensorfact.cp``: recovery, FitInfo semantics, transformations, TensorLy parity,
argument checks.

JAX compiles one program per combination of shapes and static arguments, so the tests share a
small set of shapes and call signatures (see the constants below); most fits run in float32,
the comparisons with TensorLy and the gradient checks in float64 under a local x64 context.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorfact as tfa
from _helpers import x64, rel

SHAPE = (8, 9, 10)
SHAPE4 = (5, 6, 7, 8)
RANK = 3
NOISE = 0.1
KEY = jax.random.key(42)


def planted(seed, shape=SHAPE, rank=RANK, dtype=jnp.float32, nonneg=False):
    return tfa.random_cp(jax.random.key(seed), shape, rank, nonneg=nonneg, dtype=dtype)


def relu_cp(seed, shape=SHAPE, rank=RANK):
    """A nonnegative CP tensor with sparse-ish (rectified Gaussian) factors: nonnegative and
    well conditioned, unlike uniform factors whose columns are nearly collinear."""
    keys = jax.random.split(jax.random.key(seed), len(shape))
    return tfa.CPTensor(None, [jnp.maximum(jax.random.normal(k, (n, rank)), 0.0)
                               for k, n in zip(keys, shape)])


def random_mask(seed, shape=SHAPE, p=0.5):
    return jax.random.bernoulli(jax.random.key(seed), p, shape)


@pytest.fixture(scope="module")
def exact():
    return planted(0)


@pytest.fixture(scope="module")
def noisy_pair():
    clean = planted(1).to_dense()
    return clean, tfa.noisy(jax.random.key(101), clean, NOISE)


# ---------------------------------------------------------------------------------------------
# Recovery
# ---------------------------------------------------------------------------------------------

def test_exact_recovery_3way(exact):
    x = exact.to_dense()
    approx, info = tfa.cp(x, RANK, return_info=True)
    assert isinstance(approx, tfa.CPTensor)
    assert approx.shape == SHAPE and approx.rank == RANK
    assert rel(x, approx.to_dense()) < 1e-5
    assert float(info.rel_error) < 1e-5


def test_exact_recovery_4way():
    x = planted(2, SHAPE4).to_dense()
    approx, info = tfa.cp(x, RANK, return_info=True)
    assert approx.shape == SHAPE4 and approx.rank == RANK
    assert rel(x, approx.to_dense()) < 1e-5
    assert abs(float(info.rel_error) - rel(x, approx.to_dense())) < 1e-6


def test_exact_recovery_identifies_the_components(exact):
    """CP is essentially unique here: every planted rank-one term is found (up to order and
    scaling), i.e. the normalized factor columns match with |cosine| ~ 1."""
    approx = tfa.cp(exact.to_dense(), RANK, return_info=True)[0]
    for a, b in zip(exact.factors, approx.factors):
        a = np.asarray(a) / np.linalg.norm(np.asarray(a), axis=0)
        cos = np.abs(a.T @ np.asarray(b))
        np.testing.assert_allclose(np.sort(cos.max(axis=1)), 1.0, atol=1e-4)


def test_noisy_recovery_close_to_optimum(noisy_pair):
    clean, x = noisy_pair
    approx, info = tfa.cp(x, RANK, return_info=True)
    err = float(info.rel_error)
    truth_err = rel(x, clean)  # the planted tensor's own error, ~ the noise level
    # at least as good as the planted tensor (the optimum is at most that) ...
    assert err <= truth_err + 1e-4
    # ... but no overfitting: 81 parameters cannot explain much of 720 noise entries
    assert err >= 0.85 * truth_err
    # and the fit denoises: closer to the clean tensor than the data are
    assert rel(clean, approx.to_dense()) < 0.5 * NOISE


def test_matrix_case_reaches_eckart_young_optimum():
    x = np.random.default_rng(0).standard_normal((12, 9)).astype(np.float32)
    approx = tfa.cp(x, RANK, return_info=True)[0]
    s = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    optimum = np.sqrt(np.sum(s[RANK:] ** 2)) / np.linalg.norm(s)
    assert rel(x, approx.to_dense()) == pytest.approx(optimum, abs=1e-5)


def test_rank_above_the_product_of_the_other_modes():
    """The rank may exceed the mode sizes (documented); the SVD init completes the missing
    columns deterministically (no key). Here rank 5 also exceeds 2 * 2, the column count of the
    mode-2 unfolding of a 7 x 2 x 2 tensor, where the SVD yields only 4 singular vectors."""
    x = np.random.default_rng(0).standard_normal((7, 2, 2)).astype(np.float32)
    approx, info = tfa.cp(x, 5, return_info=True)
    assert approx.rank == 5
    assert [tuple(a.shape) for a in approx.factors] == [(7, 5), (2, 5), (2, 5)]
    assert np.all(np.isfinite(np.asarray(approx.to_dense())))
    assert float(info.rel_error) < 0.5


def test_normalize_gives_unit_columns_and_nonnegative_weights(noisy_pair):
    approx = tfa.cp(noisy_pair[1], RANK, return_info=True)[0]
    for a in approx.factors:
        np.testing.assert_allclose(np.linalg.norm(np.asarray(a), axis=0), 1.0, atol=1e-5)
    assert np.all(np.asarray(approx.weights) >= 0)


def test_nonneg_recovers_planted_nonnegative_tensor():
    truth = relu_cp(3)
    x = truth.to_dense()
    approx, info = tfa.cp(x, RANK, nonneg=True, return_info=True)
    for a in approx.factors:
        assert np.all(np.asarray(a) >= 0)
    assert np.all(np.asarray(approx.weights) >= 0)
    assert rel(x, approx.to_dense()) < 1e-4


def test_nonneg_factors_on_mixed_sign_data(noisy_pair):
    """Nonnegativity holds whatever the data; the fit is still a real approximation."""
    x = noisy_pair[1]
    approx, info = tfa.cp(x, RANK, nonneg=True, return_info=True)
    for a in approx.factors:
        assert np.all(np.asarray(a) >= 0)
    assert np.all(np.asarray(approx.weights) >= 0)
    assert 0.0 < float(info.rel_error) < 1.0
    errors = np.asarray(info.errors)[: int(info.n_iter)]
    assert np.all(np.diff(errors) <= 2e-5)  # HALS never increases the error


def test_masked_recovery_ignores_missing_entries():
    x = planted(4).to_dense()
    mask = random_mask(5)
    x_holes = jnp.where(mask, x, jnp.nan)  # missing entries are NaN: they must be ignored
    approx, info = tfa.cp(x_holes, RANK, mask=mask, return_info=True)
    dense = np.asarray(approx.to_dense())
    assert np.all(np.isfinite(dense))
    assert rel(x, dense) < 1e-4  # error on ALL entries, the missing ones included
    assert float(info.rel_error) < 1e-4
    assert np.isfinite(float(info.rel_error))


# ---------------------------------------------------------------------------------------------
# FitInfo semantics
# ---------------------------------------------------------------------------------------------

def random_start_fit(x, n_iter=30, tol=0):
    return tfa.cp(x, RANK, init="random", key=KEY, n_iter=n_iter, tol=tol, return_info=True)


def test_info_errors_padding_and_final_error(noisy_pair):
    x = noisy_pair[1]
    approx, info = tfa.cp(x, RANK, tol=1e-6, return_info=True)
    errors = np.asarray(info.errors)
    n = int(info.n_iter)
    assert errors.shape == (100,)
    assert 1 <= n < 100
    assert np.all(np.isfinite(errors[:n]))
    assert np.all(np.isnan(errors[n:]))
    assert float(info.rel_error) == pytest.approx(rel(x, approx.to_dense()), abs=1e-6)
    assert errors[n - 1] == pytest.approx(float(info.rel_error), abs=1e-4)


def test_tol_zero_runs_exactly_n_iter_and_errors_decrease(noisy_pair):
    x = noisy_pair[1]
    _, info = random_start_fit(x)
    errors = np.asarray(info.errors)
    assert int(info.n_iter) == 30
    assert errors.shape == (30,) and np.all(np.isfinite(errors))
    assert not bool(info.converged)
    # ALS is monotone; allow float32 rounding of the norm-formula error
    assert np.all(np.diff(errors) <= 2e-5), np.diff(errors).max()
    assert errors[-1] < errors[0] - 1e-3  # a random start really improves
    assert errors[-1] < 0.1


def test_converged_flag_follows_the_tolerance(noisy_pair):
    x = noisy_pair[1]
    tol = 1e-4
    _, info = tfa.cp(x, RANK, tol=tol, return_info=True)
    n = int(info.n_iter)
    errors = np.asarray(info.errors)[:n]
    assert bool(info.converged)
    assert 2 <= n < 100
    steps = np.abs(np.diff(errors))
    assert steps[-1] < tol  # stopped because of the test ...
    assert np.all(steps[:-1] >= tol)  # ... and not before it was met


def test_init_at_the_solution_stays_there(exact):
    x = exact.to_dense()
    approx, info = tfa.cp(x, RANK, init=exact, n_iter=30, tol=0, return_info=True)
    assert rel(x, approx.to_dense()) < 1e-5
    assert np.all(np.asarray(info.errors) < 1e-5)


def test_determinism_same_key_same_result(noisy_pair):
    x = noisy_pair[1]
    a, info_a = random_start_fit(x)
    b, info_b = random_start_fit(x)
    for u, v in zip(jax.tree_util.tree_leaves((a, info_a)), jax.tree_util.tree_leaves((b, info_b))):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    # a different key is a different start
    _, info_c = tfa.cp(x, RANK, init="random", key=jax.random.key(7), n_iter=30, tol=0,
                       return_info=True)
    assert float(info_c.errors[0]) != float(info_a.errors[0])


def test_l2_shrinks_the_factors(noisy_pair):
    x = noisy_pair[1]

    def fit(l2):
        approx, info = tfa.cp(x, RANK, l2=l2, normalize=False, n_iter=30, tol=0,
                              return_info=True)
        sq = sum(float(jnp.sum(a ** 2)) for a in approx.factors)
        return approx, info, sq

    a0, info0, sq0 = fit(0.0)
    a1, info1, sq1 = fit(1.0)
    np.testing.assert_array_equal(np.asarray(a0.weights), 1.0)  # normalize=False
    assert sq1 < 0.5 * sq0  # the penalised quantity is much smaller
    assert float(a1.norm()) < float(a0.norm())  # and so is the fitted tensor
    assert float(info1.rel_error) > float(info0.rel_error)  # at a small cost in fit
    assert float(info1.rel_error) < 0.2


# ---------------------------------------------------------------------------------------------
# Differential tests against TensorLy (NumPy backend, float64)
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def tensorly():
    """TensorLy with its NumPy backend (restored afterwards); skips if it is not installed."""
    tl = pytest.importorskip("tensorly")
    pytest.importorskip("tensorly.decomposition")
    previous = tl.get_backend()
    tl.set_backend("numpy")
    yield tl
    tl.set_backend(previous)


@pytest.mark.parametrize("seed", [0, 1])
def test_fit_matches_tensorly_parafac(seed, tensorly):
    tl = tensorly
    with x64():
        clean = planted(10 + seed, dtype=jnp.float64).to_dense()
        x = tfa.noisy(jax.random.key(20 + seed), clean, NOISE)
        assert x.dtype == jnp.float64
        approx, info = tfa.cp(x, RANK, n_iter=100, tol=0, return_info=True)
        ours = 1 - rel(x, approx.to_dense())
    xn = np.asarray(x, np.float64)
    cp_tl = tl.decomposition.parafac(xn, RANK, n_iter_max=100, init="svd", tol=0)
    theirs = 1 - rel(xn, tl.cp_to_tensor(cp_tl))
    assert ours >= theirs - 1e-3, (ours, theirs)
    assert ours > 1 - 1.05 * NOISE


@pytest.mark.parametrize("seed", [0, 1])
def test_nonneg_fit_matches_tensorly_hals(seed, tensorly):
    tl = tensorly
    with x64():
        clean = planted(30 + seed, dtype=jnp.float64, nonneg=True).to_dense()
        x = jnp.maximum(tfa.noisy(jax.random.key(40 + seed), clean, NOISE), 0.0)
        approx, info = tfa.cp(x, RANK, n_iter=100, tol=0, nonneg=True, return_info=True)
        ours = 1 - rel(x, approx.to_dense())
        assert all(np.all(np.asarray(a) >= 0) for a in approx.factors)
    xn = np.asarray(x, np.float64)
    cp_tl = tl.decomposition.non_negative_parafac_hals(xn, RANK, n_iter_max=100, init="svd", tol=0)
    theirs = 1 - rel(xn, tl.cp_to_tensor(cp_tl))
    assert ours >= theirs - 1e-3, (ours, theirs)


@pytest.mark.parametrize("factor", [3.0, 0.7, 1e6])
def test_nonneg_fit_does_not_depend_on_the_scale_of_the_data(factor):
    # HALS's path depends on the scale of its start against the data's; the start is matched to
    # the data's norm, so scaling by a factor that is not a power of two (which the fit's exact
    # power-of-two rescaling does not absorb) must give the same fit, scaled
    with x64():
        clean = planted(31, dtype=jnp.float64, nonneg=True).to_dense()
        x = jnp.maximum(tfa.noisy(jax.random.key(41), clean, NOISE), 0.0)
        base = tfa.cp(x, RANK, n_iter=100, tol=0, nonneg=True).to_dense()
        scaled = tfa.cp(x * factor, RANK, n_iter=100, tol=0, nonneg=True).to_dense()
        np.testing.assert_allclose(np.asarray(scaled) / factor, np.asarray(base), rtol=0,
                                   atol=1e-9 * float(jnp.max(x)))


# ---------------------------------------------------------------------------------------------
# jit, vmap, grad
# ---------------------------------------------------------------------------------------------

def test_jit_with_traced_tol_stops_early(noisy_pair):
    x = noisy_pair[1]
    fit = jax.jit(lambda x, tol: tfa.cp(x, RANK, n_iter=50, tol=tol, return_info=True))
    _, info = fit(x, 1e-3)
    assert bool(info.converged) and int(info.n_iter) < 50
    _, info0 = fit(x, 0.0)  # a traced zero never passes |Δ| < 0: the full budget
    assert int(info0.n_iter) == 50 and not bool(info0.converged)


def test_vmap_matches_python_loop(noisy_pair):
    clean = noisy_pair[0]
    batch = jnp.stack([tfa.noisy(jax.random.key(200 + i), clean, 0.05 * (i + 1))
                       for i in range(4)])
    fit = functools.partial(tfa.cp, rank=RANK, init="random", key=KEY, n_iter=30, tol=1e-5,
                            return_info=True)
    approx_b, info_b = jax.vmap(fit)(batch)
    assert approx_b.weights.shape == (4, RANK)
    for i in range(4):
        approx_i, info_i = fit(batch[i])
        np.testing.assert_allclose(np.asarray(approx_b.weights[i]), np.asarray(approx_i.weights),
                                   rtol=1e-4, atol=1e-5)
        for a_b, a_i in zip(approx_b.factors, approx_i.factors):
            np.testing.assert_allclose(np.asarray(a_b[i]), np.asarray(a_i), atol=1e-4)
        assert int(info_b.n_iter[i]) == int(info_i.n_iter)
        assert float(info_b.rel_error[i]) == pytest.approx(float(info_i.rel_error), abs=1e-5)


def test_grad_matches_finite_difference():
    shape = (4, 5, 6)
    with x64():
        k1, k2, k3, k4 = jax.random.split(jax.random.key(3), 4)
        x = tfa.noisy(k2, planted(9, shape, 2, dtype=jnp.float64).to_dense(), NOISE)
        w = jax.random.normal(k3, shape, jnp.float64)
        d = jax.random.normal(k4, shape, jnp.float64)

        def f(x):
            return jnp.vdot(w, tfa.cp(x, 2, tol=0, n_iter=5).to_dense())

        g = jax.grad(f)(x)
        assert g.shape == shape and g.dtype == jnp.float64
        assert bool(jnp.all(jnp.isfinite(g)))
        eps = 1e-5
        fd = (f(x + eps * d) - f(x - eps * d)) / (2 * eps)
        assert float(jnp.vdot(g, d)) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)
        # not a trivial gradient: reconstructing a near-rank-2 tensor is close to the identity
        assert float(jnp.vdot(g, w)) > 0


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow  # ~20 s: every example is a new shape, hence a new compilation
@settings(max_examples=10, deadline=None)
@given(shape=st.tuples(*[st.integers(2, 7)] * 3), rank=st.integers(1, 4),
       seed=st.integers(0, 2**16))
def test_property_shapes_ranks_and_monotone_fit(shape, rank, seed):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    approx, info = tfa.cp(x, rank, key=KEY, n_iter=10, tol=0, return_info=True)
    assert approx.shape == shape and approx.rank == rank
    assert approx.weights.shape == (rank,)
    assert [tuple(a.shape) for a in approx.factors] == [(n, rank) for n in shape]
    assert all(a.dtype == jnp.float32 for a in approx.factors)
    dense = np.asarray(approx.to_dense())
    assert dense.shape == shape and np.all(np.isfinite(dense))
    errors = np.asarray(info.errors)
    assert errors.shape == (10,) and int(info.n_iter) == 10
    # ALS never increases the error; in float32 the sweeps may wobble by ~1e-4 where the rank
    # exceeds the mode sizes (singular Gram matrices, solved up to their jitter)
    assert np.all(np.diff(errors) <= 1e-3)
    # never worse than the zero tensor, and the reported error is the real one
    assert 0 <= float(info.rel_error) <= 1 + 1e-5
    assert float(info.rel_error) == pytest.approx(rel(x, dense), abs=1e-5)


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def x3():
    return planted(0).to_dense()


@pytest.mark.parametrize("rank", [0, -1, 2.5, True])
def test_bad_rank(x3, rank):
    with pytest.raises(ValueError, match=re.escape(f"rank must be a positive integer, got {rank!r}")):
        tfa.cp(x3, rank)


def test_one_dimensional_input():
    with pytest.raises(ValueError, match=r"x must have at least 2 dimensions, got shape \(5,\)"):
        tfa.cp(jnp.ones(5), 1)


def test_complex_input():
    with pytest.raises(TypeError, match="x must be real, got dtype complex64"):
        tfa.cp(jnp.ones(SHAPE, jnp.complex64), RANK)


def test_mask_of_wrong_shape(x3):
    with pytest.raises(ValueError, match=r"mask must have the shape of the data \(8, 9, 10\), "
                                         r"got \(8, 9\)"):
        tfa.cp(x3, RANK, mask=jnp.ones((8, 9), bool))


def test_init_of_wrong_rank(x3):
    wrong = planted(0, rank=RANK + 1)
    with pytest.raises(ValueError, match=r"init must be a CPTensor of shape \(8, 9, 10\) and "
                                         r"rank 3, got shape \(8, 9, 10\) and rank 4"):
        tfa.cp(x3, RANK, init=wrong)


def test_init_of_wrong_shape(x3):
    wrong = planted(0, shape=(8, 9, 11))
    with pytest.raises(ValueError, match=r"init must be a CPTensor .* got shape \(8, 9, 11\)"):
        tfa.cp(x3, RANK, init=wrong)


def test_bad_init_string(x3):
    with pytest.raises(ValueError, match=r"init must be one of \['random', 'svd'\], got 'hosvd'"):
        tfa.cp(x3, RANK, init="hosvd")


def test_nan_allowed_where_mask_is_false_only(x3):
    mask = random_mask(5)
    holes = jnp.where(mask, x3, jnp.nan)
    approx = tfa.cp(holes, RANK, mask=mask, return_info=True)[0]
    assert np.all(np.isfinite(np.asarray(approx.to_dense())))
    # an observed NaN is still an error
    idx = tuple(int(i[0]) for i in np.nonzero(np.asarray(mask)))
    with pytest.raises(ValueError, match=r"x contains 1 NaN or Inf value"):
        tfa.cp(x3.at[idx].set(jnp.nan), RANK, mask=mask)


def test_missing_key_for_random_init(x3):
    with pytest.raises(ValueError, match=r'key is required for init="random"'):
        tfa.cp(x3, RANK, init="random")


def test_no_key_needed_for_rank_beyond_a_mode(x3):
    """The SVD start is deterministic at every rank (glossary: ``key`` only where an option
    draws); before, a rank above a mode size drew random columns and required a key."""
    a, b = tfa.cp(x3, 12, n_iter=3), tfa.cp(x3, 12, n_iter=3)
    np.testing.assert_array_equal(np.asarray(a.to_dense()), np.asarray(b.to_dense()))
    assert np.all(np.isfinite(np.asarray(a.to_dense())))


@pytest.mark.parametrize("name,value", [("tol", -1.0), ("l2", -0.5), ("tol", float("nan"))])
def test_negative_hyperparameters(x3, name, value):
    with pytest.raises(ValueError, match=re.escape(f"{name} must be >= 0, got {value!r}")):
        tfa.cp(x3, RANK, **{name: value})


@pytest.mark.parametrize("n_iter", [0, -3, 2.0])
def test_bad_n_iter(x3, n_iter):
    with pytest.raises(ValueError, match=re.escape(f"n_iter must be a positive integer, got "
                                                   f"{n_iter!r}")):
        tfa.cp(x3, RANK, n_iter=n_iter)


def test_checks_also_run_under_jit(x3):
    with pytest.raises(ValueError, match="rank must be a positive integer, got 0"):
        jax.jit(lambda x: tfa.cp(x, 0))(x3)
    with pytest.raises(ValueError, match=r"mask must have the shape of the data"):
        jax.jit(lambda x, m: tfa.cp(x, RANK, mask=m))(x3, jnp.ones((8, 9, 3), bool))

