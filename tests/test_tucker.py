"""Tests of ``tensorfact.tucker``: HOOI/HOSVD/ST-HOSVD recovery and optimality bounds,
nonnegative, masked and partial Tucker, FitInfo semantics, transformations, TensorLy parity,
argument checks.

JAX compiles one program per combination of shapes and static arguments, so the tests share a
small set of shapes and call signatures; the comparisons with TensorLy and the gradient checks
run in float64 under a local x64 context.
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
RANKS = (2, 3, 4)
NOISE = 0.1
METHODS = ("hooi", "hosvd", "st_hosvd")
KEY = jax.random.key(7)


def planted(seed, shape=SHAPE, ranks=RANKS, dtype=jnp.float32, nonneg=False):
    return tfa.random_tucker(jax.random.key(seed), shape, ranks, nonneg=nonneg, dtype=dtype)


def random_mask(seed, shape=SHAPE, p=0.5):
    return jax.random.bernoulli(jax.random.key(seed), p, shape)


def assert_orthonormal(u, atol=1e-5):
    u = np.asarray(u, np.float64)
    np.testing.assert_allclose(u.T @ u, np.eye(u.shape[1]), atol=atol)


def unfolding_tails(x, ranks, modes=None):
    """Squared singular values discarded by truncating each mode-n unfolding at rank r_n."""
    x = np.asarray(x, np.float64)
    modes = range(x.ndim) if modes is None else modes
    tails = []
    for m, r in zip(modes, ranks):
        s = np.linalg.svd(np.moveaxis(x, m, 0).reshape(x.shape[m], -1), compute_uv=False)
        tails.append(float(np.sum(s[r:] ** 2)))
    return np.array(tails)


def fit(x, method="hooi", **kw):
    kw.setdefault("return_info", True)
    return tfa.tucker(x, RANKS, method=method, **kw)


@pytest.fixture(scope="module")
def exact():
    return planted(0)


@pytest.fixture(scope="module")
def noisy_pair():
    clean = planted(1).to_dense()
    return clean, tfa.noisy(jax.random.key(101), clean, NOISE)


# ---------------------------------------------------------------------------------------------
# Recovery, optimality, orthonormality
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_exact_recovery(exact, method):
    x = exact.to_dense()
    approx, info = fit(x, method)
    assert isinstance(approx, tfa.TuckerTensor)
    assert approx.shape == SHAPE and approx.rank == RANKS and approx.core.shape == RANKS
    assert rel(x, approx.to_dense()) < 1e-5
    assert float(info.rel_error) < 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_orthonormal_factors(noisy_pair, method):
    approx, _ = fit(noisy_pair[1], method)
    for u, n, r in zip(approx.factors, SHAPE, RANKS):
        assert u.shape == (n, r)
        assert_orthonormal(u)
    # orthonormal factors: the norm of the Tucker tensor is the norm of its core
    assert float(approx.norm()) == pytest.approx(float(jnp.linalg.norm(approx.core)), rel=1e-5)


def test_exact_recovery_4way():
    shape, ranks = (5, 6, 7, 4), (2, 3, 2, 3)
    x = planted(2, shape, ranks).to_dense()
    approx, info = tfa.tucker(x, ranks, return_info=True)
    assert approx.core.shape == ranks
    assert rel(x, approx.to_dense()) < 1e-5


def test_noisy_recovery_close_to_optimum_and_hooi_best(noisy_pair):
    clean, x = noisy_pair
    truth_err = rel(x, clean)
    errs = {}
    for method in METHODS:
        approx, info = fit(x, method)
        errs[method] = rel(x, approx.to_dense())
        assert float(info.rel_error) == pytest.approx(errs[method], abs=1e-6)
        assert errs[method] <= truth_err + 1e-4, method  # as good as the planted tensor
        assert errs[method] >= 0.85 * truth_err, method  # 24 + 91 parameters: no overfitting
        assert rel(clean, approx.to_dense()) < 0.5 * NOISE, method  # denoises
    assert errs["hooi"] <= errs["hosvd"] + 1e-6
    assert errs["hooi"] <= errs["st_hosvd"] + 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_error_within_the_hosvd_bounds(noisy_pair, method):
    """For any Tucker approximation of ranks r, ‖x − x̂‖² ≥ max_n tail_n (mode-n truncation is
    optimal for mode n alone); (ST-)HOSVD and HOOI also satisfy ‖x − x̂‖² ≤ Σ_n tail_n."""
    x = np.asarray(noisy_pair[1], np.float64)
    approx, _ = fit(noisy_pair[1], method)
    err_sq = np.sum((x - np.asarray(approx.to_dense(), np.float64)) ** 2)
    tails = unfolding_tails(x, RANKS)
    scale = np.sum(x ** 2)
    assert err_sq >= tails.max() - 1e-6 * scale
    assert err_sq <= tails.sum() + 1e-6 * scale


def test_matrix_case_is_the_truncated_svd():
    x = np.random.default_rng(0).standard_normal((12, 9)).astype(np.float32)
    approx = tfa.tucker(x, (3, 3), return_info=True)[0]
    s = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    optimum = np.sqrt(np.sum(s[3:] ** 2)) / np.linalg.norm(s)
    assert rel(x, approx.to_dense()) == pytest.approx(optimum, abs=1e-5)


def test_full_ranks_reconstruct_exactly(noisy_pair):
    x = noisy_pair[1][:4, :5, :6]
    approx = tfa.tucker(x, (4, 5, 6), method="st_hosvd")
    assert rel(x, approx.to_dense()) < 1e-5


# ---------------------------------------------------------------------------------------------
# Nonnegative, masked and partial Tucker
# ---------------------------------------------------------------------------------------------

def test_nonneg_core_and_factors_are_nonnegative(noisy_pair):
    approx, info = fit(noisy_pair[1], nonneg=True)  # mixed-sign data
    assert np.all(np.asarray(approx.core) >= 0)
    for u in approx.factors:
        assert np.all(np.asarray(u) >= 0)
    assert 0 < float(info.rel_error) < 1


def test_nonneg_fits_a_planted_nonnegative_tensor():
    x = planted(3, nonneg=True).to_dense()
    approx, info = fit(x, nonneg=True)
    assert np.all(np.asarray(approx.core) >= 0)
    for u in approx.factors:
        assert np.all(np.asarray(u) >= 0)
    assert rel(x, approx.to_dense()) < 0.05
    assert float(info.rel_error) == pytest.approx(rel(x, approx.to_dense()), abs=1e-6)
    errors = np.asarray(info.errors)[: int(info.n_iter)]
    assert errors[-1] < errors[0]


def test_masked_recovery_ignores_missing_entries():
    x = planted(4).to_dense()
    mask = random_mask(5)
    x_holes = jnp.where(mask, x, jnp.nan)  # missing entries are NaN: they must be ignored
    approx, info = fit(x_holes, mask=mask, n_iter=300)
    dense = np.asarray(approx.to_dense())
    assert np.all(np.isfinite(dense))
    assert rel(x, dense) < 1e-4  # error on ALL entries, the missing ones included
    assert float(info.rel_error) < 1e-4
    for u in approx.factors:
        assert_orthonormal(u)


def test_partial_tucker_shapes_and_fit(noisy_pair):
    x = noisy_pair[1]
    modes, ranks = (0, 2), (2, 4)
    approx, info = tfa.tucker(x, ranks, modes=modes, return_info=True)
    assert approx.modes == modes
    assert approx.core.shape == (2, 9, 4)
    assert [tuple(u.shape) for u in approx.factors] == [(8, 2), (10, 4)]
    assert approx.shape == SHAPE and approx.rank == ranks
    for u in approx.factors:
        assert_orthonormal(u)
    hosvd = tfa.tucker(x, ranks, modes=modes, method="hosvd")
    err = rel(x, approx.to_dense())
    assert err <= rel(x, hosvd.to_dense()) + 1e-6
    # the untouched mode is kept whole, so the fit beats the full Tucker of the same ranks
    full = tfa.tucker(x, RANKS, return_info=True)[0]
    assert err < rel(x, full.to_dense())
    # and obeys the same per-mode lower bound
    tails = unfolding_tails(x, ranks, modes)
    assert err ** 2 >= tails.max() / np.sum(np.asarray(x, np.float64) ** 2) - 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_rank_above_the_other_modes_product(method):
    """Mode 2 of a 2 x 2 x 5 tensor has rank at most 2 * 2 = 4, yet ranks (1, 1, 5) pass the
    argument checks (5 <= 5). The result must then honour the requested ranks (padding the
    factor with an orthonormal complement), or the call must raise a clear ValueError about
    ranks[2]: silently returning ranks (1, 1, 4) breaks the documented shapes."""
    x = np.random.default_rng(0).standard_normal((2, 2, 5)).astype(np.float32)
    try:
        approx = tfa.tucker(x, (1, 1, 5), method=method)
    except ValueError as err:
        assert "ranks[2]" in str(err)
    else:
        assert approx.rank == (1, 1, 5) and approx.core.shape == (1, 1, 5)
        assert approx.factors[2].shape == (5, 5)
        assert_orthonormal(approx.factors[2])


def test_partial_tucker_ranks_follow_the_order_of_modes(noisy_pair):
    """``ranks[i]`` belongs to ``modes[i]`` (as in TensorLy's partial_tucker), whatever the order
    in which the modes are listed."""
    x = noisy_pair[1]
    approx = tfa.tucker(x, (4, 2), modes=(2, 0), method="hosvd")
    by_mode = dict(zip(approx.modes, approx.factors))
    assert by_mode[2].shape == (10, 4)
    assert by_mode[0].shape == (8, 2)


# ---------------------------------------------------------------------------------------------
# FitInfo semantics, init, determinism
# ---------------------------------------------------------------------------------------------

def random_start_fit(x, n_iter=30, tol=0, key=KEY):
    return fit(x, init="random", key=key, n_iter=n_iter, tol=tol)


def test_info_errors_padding_and_final_error(noisy_pair):
    x = noisy_pair[1]
    approx, info = random_start_fit(x, tol=1e-6)
    errors = np.asarray(info.errors)
    n = int(info.n_iter)
    assert errors.shape == (30,)
    assert 1 <= n < 30 and bool(info.converged)
    assert np.all(np.isfinite(errors[:n])) and np.all(np.isnan(errors[n:]))
    assert abs(errors[n - 1] - errors[n - 2]) < 1e-6
    assert np.all(np.abs(np.diff(errors[: n - 1])) >= 1e-6)
    assert float(info.rel_error) == pytest.approx(rel(x, approx.to_dense()), abs=1e-6)
    assert errors[n - 1] == pytest.approx(float(info.rel_error), abs=1e-4)


def test_tol_zero_runs_exactly_n_iter_and_errors_decrease(noisy_pair):
    x = noisy_pair[1]
    approx, info = random_start_fit(x)
    errors = np.asarray(info.errors)
    assert int(info.n_iter) == 30 and errors.shape == (30,)
    assert np.all(np.isfinite(errors)) and not bool(info.converged)
    assert np.all(np.diff(errors) <= 2e-5), np.diff(errors).max()  # HOOI is monotone
    assert errors[-1] < errors[0] - 1e-2  # from a random start it really improves ...
    hosvd = tfa.tucker(x, RANKS, method="hosvd")
    assert errors[-1] <= rel(x, hosvd.to_dense()) + 1e-5  # ... to HOSVD quality or better
    for u in approx.factors:
        assert_orthonormal(u)


def test_one_pass_methods_report_no_iterations(noisy_pair):
    _, info = fit(noisy_pair[1], "st_hosvd")
    assert int(info.n_iter) == 0 and info.errors.shape == (0,)
    assert bool(info.converged)


def test_nonneg_errors_decrease(noisy_pair):
    x = jnp.abs(noisy_pair[1])
    _, info = fit(x, nonneg=True, n_iter=30, tol=0)
    errors = np.asarray(info.errors)
    assert int(info.n_iter) == 30
    assert np.all(np.diff(errors) <= 2e-5), np.diff(errors).max()


def test_init_at_the_solution_stays_there(exact):
    x = exact.to_dense()
    approx, info = fit(x, init=exact, n_iter=30, tol=0)
    assert rel(x, approx.to_dense()) < 1e-5
    assert np.all(np.asarray(info.errors) < 1e-5)


def test_init_tucker_tensor_for_partial_tucker(noisy_pair):
    x = noisy_pair[1]
    start = tfa.tucker(x, (2, 4), modes=(0, 2), method="hosvd")
    approx, info = tfa.tucker(x, (2, 4), modes=(0, 2), init=start, n_iter=5, tol=0,
                              return_info=True)
    assert approx.modes == (0, 2)
    assert float(info.rel_error) <= rel(x, start.to_dense()) + 1e-6


def test_determinism_same_key_same_result(noisy_pair):
    x = noisy_pair[1]
    a = random_start_fit(x)
    b = random_start_fit(x)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    c = random_start_fit(x, key=jax.random.key(8))
    assert float(c[1].errors[0]) != float(a[1].errors[0])


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
def test_hooi_matches_tensorly_tucker(seed, tensorly):
    tl = tensorly
    with x64():
        clean = planted(10 + seed, dtype=jnp.float64).to_dense()
        x = tfa.noisy(jax.random.key(20 + seed), clean, NOISE)
        assert x.dtype == jnp.float64
        approx = tfa.tucker(x, RANKS, n_iter=50, tol=0)
        ours = 1 - rel(x, approx.to_dense())
    xn = np.asarray(x, np.float64)
    tk = tl.decomposition.tucker(xn, list(RANKS), n_iter_max=50, init="svd", tol=0)
    theirs = 1 - rel(xn, tl.tucker_to_tensor(tk))
    assert ours >= theirs - 1e-3, (ours, theirs)
    assert ours > 1 - 1.05 * NOISE


@pytest.mark.parametrize("seed", [0, 1])
def test_nonneg_matches_tensorly_non_negative_tucker(seed, tensorly):
    tl = tensorly
    with x64():
        clean = planted(30 + seed, dtype=jnp.float64, nonneg=True).to_dense()
        x = jnp.maximum(tfa.noisy(jax.random.key(40 + seed), clean, NOISE), 0.0)
        approx = tfa.tucker(x, RANKS, n_iter=100, tol=0, nonneg=True)
        ours = 1 - rel(x, approx.to_dense())
        assert np.all(np.asarray(approx.core) >= 0)
    xn = np.asarray(x, np.float64)
    tk = tl.decomposition.non_negative_tucker(xn, list(RANKS), n_iter_max=100, init="svd", tol=0)
    theirs = 1 - rel(xn, tl.tucker_to_tensor(tk))
    assert ours >= theirs - 1e-3, (ours, theirs)


# ---------------------------------------------------------------------------------------------
# jit, vmap, grad
# ---------------------------------------------------------------------------------------------

def test_jit_with_traced_tol_stops_early(noisy_pair):
    x = noisy_pair[1]
    run = jax.jit(lambda x, tol: tfa.tucker(x, RANKS, init="random", key=KEY, n_iter=50,
                                            tol=tol, return_info=True))
    _, info = run(x, 1e-3)
    assert bool(info.converged) and 1 < int(info.n_iter) < 50
    _, info0 = run(x, 0.0)
    assert int(info0.n_iter) == 50 and not bool(info0.converged)


def test_vmap_matches_python_loop(noisy_pair):
    clean = noisy_pair[0]
    batch = jnp.stack([tfa.noisy(jax.random.key(200 + i), clean, 0.05 * (i + 1))
                       for i in range(4)])
    run = functools.partial(tfa.tucker, ranks=RANKS, init="random", key=KEY, n_iter=30,
                            tol=1e-5, return_info=True)
    approx_b, info_b = jax.vmap(run)(batch)
    assert approx_b.core.shape == (4,) + RANKS
    for i in range(4):
        approx_i, info_i = run(batch[i])
        np.testing.assert_allclose(np.asarray(approx_b.core[i]), np.asarray(approx_i.core),
                                   atol=1e-4)
        for u_b, u_i in zip(approx_b.factors, approx_i.factors):
            np.testing.assert_allclose(np.asarray(u_b[i]), np.asarray(u_i), atol=1e-4)
        assert int(info_b.n_iter[i]) == int(info_i.n_iter)
        assert float(info_b.rel_error[i]) == pytest.approx(float(info_i.rel_error), abs=1e-5)


@pytest.mark.parametrize("method", ["hooi", "hosvd"])
def test_grad_matches_finite_difference(method):
    shape, ranks = (4, 5, 6), (2, 2, 3)
    with x64():
        k1, k2, k3, k4 = jax.random.split(jax.random.key(3), 4)
        x = tfa.noisy(k2, planted(9, shape, ranks, dtype=jnp.float64).to_dense(), NOISE)
        w = jax.random.normal(k3, shape, jnp.float64)
        d = jax.random.normal(k4, shape, jnp.float64)

        def f(x):
            kw = dict(tol=0, n_iter=5) if method == "hooi" else {}
            return jnp.vdot(w, tfa.tucker(x, ranks, method=method, **kw).to_dense())

        g = jax.grad(f)(x)
        assert g.shape == shape and g.dtype == jnp.float64
        assert bool(jnp.all(jnp.isfinite(g)))
        eps = 1e-5
        fd = (f(x + eps * d) - f(x - eps * d)) / (2 * eps)
        assert float(jnp.vdot(g, d)) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

@st.composite
def shapes_and_ranks(draw):
    """A 3-way shape and ranks r_n <= I_n. Ranks above the product of the other mode sizes
    (which no tensor attains) are left to ``test_rank_above_the_other_modes_product``."""
    shape = draw(st.tuples(*[st.integers(2, 7)] * 3))
    ranks = tuple(draw(st.integers(1, min(n, int(np.prod(shape)) // n))) for n in shape)
    return shape, ranks


@pytest.mark.slow  # ~20 s: every example is a new shape, hence two new compilations
@settings(max_examples=10, deadline=None)
@given(case=shapes_and_ranks(), seed=st.integers(0, 2**16))
def test_property_shapes_orthonormality_and_hooi_beats_hosvd(case, seed):
    shape, ranks = case
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    hooi, info = tfa.tucker(x, ranks, n_iter=10, tol=0, return_info=True)
    hosvd = tfa.tucker(x, ranks, method="hosvd")
    for approx in (hooi, hosvd):
        assert approx.shape == shape and approx.rank == ranks and approx.core.shape == ranks
        assert [tuple(u.shape) for u in approx.factors] == list(zip(shape, ranks))
        for u in approx.factors:
            assert_orthonormal(u, atol=1e-4)
    err_hooi = rel(x, hooi.to_dense())
    err_hosvd = rel(x, hosvd.to_dense())
    assert err_hooi <= err_hosvd + 1e-5
    assert float(info.rel_error) == pytest.approx(err_hooi, abs=1e-5)
    tails = unfolding_tails(x, ranks) / np.sum(np.asarray(x, np.float64) ** 2)
    assert err_hosvd ** 2 <= tails.sum() + 1e-5
    assert err_hooi ** 2 >= tails.max() - 1e-5


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def x3():
    return planted(0).to_dense()


def test_rank_larger_than_mode(x3):
    with pytest.raises(ValueError, match=re.escape("ranks[0] = 9 is larger than mode 0 of size 8")):
        tfa.tucker(x3, (9, 3, 4))
    with pytest.raises(ValueError, match=re.escape("ranks[2] = 11 is larger than mode 2 of size "
                                                   "10")):
        tfa.tucker(x3, (2, 3, 11))


def test_rank_larger_than_mode_of_a_partial_tucker_names_the_real_mode(x3):
    """With ``modes=(1, 2)`` a rank 10 on the first listed mode exceeds mode 1 (size 9): the
    message must name mode 1 and its size, not 'mode 0'."""
    with pytest.raises(ValueError, match=r"larger than mode 1 of size 9"):
        tfa.tucker(x3, (10, 2), modes=(1, 2))


def test_wrong_number_of_ranks(x3):
    with pytest.raises(ValueError, match=r"ranks must have one entry per decomposed mode \(3: "
                                         r"modes \(0, 1, 2\) of shape \(8, 9, 10\)\), got 2: \(3, 4\)"):
        tfa.tucker(x3, (3, 4))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_rank_entries(x3, bad):
    with pytest.raises(ValueError, match=re.escape(f"ranks[1] must be a positive integer, got "
                                                   f"{bad!r}")):
        tfa.tucker(x3, (2, bad, 2))


@pytest.mark.parametrize("bad", [0, -1])
def test_bad_scalar_rank(x3, bad):
    with pytest.raises(ValueError, match=re.escape(f"must be a positive integer, got {bad!r}")):
        tfa.tucker(x3, bad)


@pytest.mark.parametrize("bad", [2.5, True])
def test_non_integer_scalar_rank(x3, bad):
    with pytest.raises(ValueError, match=re.escape(f"ranks must be an int or a sequence of ints, "
                                                   f"got {bad!r}")):
        tfa.tucker(x3, bad)


def test_one_dimensional_input():
    with pytest.raises(ValueError, match=r"x must have at least 2 dimensions, got shape \(5,\)"):
        tfa.tucker(jnp.ones(5), 2)


def test_complex_input():
    with pytest.raises(TypeError, match="x must be real, got dtype complex64"):
        tfa.tucker(jnp.ones(SHAPE, jnp.complex64), RANKS)


def test_mask_of_wrong_shape(x3):
    with pytest.raises(ValueError, match=r"mask must have the shape of the data \(8, 9, 10\), "
                                         r"got \(8, 9\)"):
        tfa.tucker(x3, RANKS, mask=np.ones((8, 9), bool))


def test_init_of_wrong_ranks(x3):
    wrong = planted(0, ranks=(2, 3, 3))
    with pytest.raises(ValueError, match=r"init must be a TuckerTensor of shape \(8, 9, 10\), "
                                         r"ranks \(2, 3, 4\).*got .*ranks \(2, 3, 3\)"):
        tfa.tucker(x3, RANKS, init=wrong)


@pytest.mark.parametrize("name,value,choices", [
    ("method", "svd", r"\['hooi', 'hosvd', 'st_hosvd'\]"),
    ("method", "HOOI", r"\['hooi', 'hosvd', 'st_hosvd'\]"),
    ("init", "hosvd", r"\['random', 'svd'\]"),
])
def test_bad_choice_strings(x3, name, value, choices):
    with pytest.raises(ValueError, match=f"{name} must be one of {choices}, got '{value}'"):
        tfa.tucker(x3, RANKS, **{name: value})


def test_nan_allowed_where_mask_is_false_only(x3):
    mask = random_mask(5)
    holes = jnp.where(mask, x3, jnp.nan)
    approx = fit(holes, mask=mask, n_iter=300)[0]
    assert np.all(np.isfinite(np.asarray(approx.to_dense())))
    idx = tuple(int(i[0]) for i in np.nonzero(np.asarray(mask)))
    with pytest.raises(ValueError, match=r"x contains 1 NaN or Inf value"):
        tfa.tucker(x3.at[idx].set(jnp.nan), RANKS, mask=mask)


def test_missing_key_for_random_init(x3):
    with pytest.raises(ValueError, match=r'key is required for init="random"'):
        tfa.tucker(x3, RANKS, init="random")


@pytest.mark.parametrize("method", ["hosvd", "st_hosvd"])
def test_mask_or_nonneg_need_hooi(x3, method):
    with pytest.raises(ValueError, match=f"mask needs the iterative method='hooi', got "
                                         f"method='{method}'"):
        tfa.tucker(x3, RANKS, method=method, mask=np.ones(SHAPE, bool))
    with pytest.raises(ValueError, match=f"nonneg=True needs the iterative method='hooi', got "
                                         f"method='{method}'"):
        tfa.tucker(x3, RANKS, method=method, nonneg=True)


@pytest.mark.parametrize("kw,message", [
    (dict(tol=-1e-3), "tol must be >= 0, got -0.001"),
    (dict(n_iter=0), "n_iter must be a positive integer, got 0"),
    (dict(subspace_iter=0), "subspace_iter must be a positive integer, got 0"),
    (dict(modes=(0, 0)), "modes must not repeat a mode, got (0, 0)"),
    (dict(modes=(3,)), "modes must hold mode indices in [-3, 3), got (3,)"),
])
def test_bad_loop_and_mode_arguments(x3, kw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tfa.tucker(x3, 2, **kw)


# ---------------------------------------------------------------------------------------------
# No silent wrong answer (issue 15): scale, norms, gradients at degenerate inputs, non-finite
# init, empty modes; the vocabulary of the signature (issue 14)
# ---------------------------------------------------------------------------------------------

SCALE_VARIANTS = {
    "hooi": dict(n_iter=20, tol=0),
    "hosvd": dict(method="hosvd"),
    "st_hosvd": dict(method="st_hosvd"),
    "nonneg": dict(nonneg=True, n_iter=20, tol=0),
    "mask": dict(mask=True, n_iter=20, tol=0),
}


def scale_fit(x, name):
    kw = dict(SCALE_VARIANTS[name])
    if kw.pop("mask", False):
        kw["mask"] = random_mask(3, p=0.7)
    if kw.get("nonneg"):
        x = jnp.abs(x)
    return tfa.tucker(x, RANKS, return_info=True, **kw)


def assert_tucker_scaled(x, name, c):
    """``tucker(c·x) ≈ c·tucker(x)`` (the same orthonormal factors, the core times ``c``), the
    same reported error, and that error is the true one (NumPy float64)."""
    base, info = scale_fit(x, name)
    scaled, info_c = scale_fit(jnp.float32(c) * x, name)
    dense_c = np.asarray(scaled.to_dense(), np.float64)
    assert np.all(np.isfinite(dense_c)) and np.any(dense_c != 0)
    np.testing.assert_allclose(dense_c / c, np.asarray(base.to_dense()), rtol=1e-3, atol=1e-4)
    assert float(info_c.rel_error) == pytest.approx(float(info.rel_error), rel=1e-3, abs=1e-6)
    truth = np.asarray(jnp.abs(x) if name == "nonneg" else x, np.float64)
    m = np.asarray(random_mask(3, p=0.7)) if name == "mask" else np.ones(SHAPE, bool)
    true_error = np.linalg.norm((truth - dense_c / c)[m]) / np.linalg.norm(truth[m])
    assert float(info_c.rel_error) == pytest.approx(true_error, rel=1e-3)
    assert 0.0 < float(info_c.rel_error) < 0.5
    assert float(scaled.norm()) / c == pytest.approx(float(base.norm()), rel=1e-4)


@pytest.mark.parametrize("name", sorted(SCALE_VARIANTS))
@pytest.mark.parametrize("c", [1e-30, 1e-20, 1e20, 1e30])
def test_fit_is_scale_equivariant(noisy_pair, name, c):
    assert_tucker_scaled(noisy_pair[1], name, c)


@settings(max_examples=10, deadline=None)
@given(exponent=st.floats(-30, 30), name=st.sampled_from(["hooi", "hosvd", "mask"]))
def test_property_scale_equivariance(noisy_pair, exponent, name):
    assert_tucker_scaled(noisy_pair[1], name, 10.0 ** exponent)


def test_tucker_tensor_norm_does_not_overflow():
    t = planted(4)
    ref = np.linalg.norm(np.asarray(t.to_dense(), np.float64))
    for c in (1e-30, 1e20, 1e30):
        scaled = tfa.TuckerTensor(t.core * c, t.factors)
        assert float(scaled.norm()) == pytest.approx(c * ref, rel=1e-5)
    # non-orthonormal factors carrying the scale
    big = tfa.TuckerTensor(t.core, [u * 1e12 for u in t.factors])
    assert float(big.norm()) == pytest.approx(1e36 * ref, rel=1e-5)
    zero = tfa.TuckerTensor(jnp.zeros(RANKS), t.factors)
    assert float(zero.norm()) == 0.0
    g = jax.grad(lambda core: tfa.TuckerTensor(core, t.factors).norm())(jnp.zeros(RANKS))
    assert np.all(np.isfinite(np.asarray(g)))


def exact_rank_one():
    """A rank-(1,1,1) tensor of exactly representable numbers with zero entries: HOOI at ranks
    above 1 meets repeated zero singular values, and a rank-1 fit has zero error."""
    a, b, c = jnp.array([1., 2., 0., 4.]), jnp.array([2., 1., 1.]), jnp.array([1., 0., 0., .5])
    return jnp.einsum("i,j,k->ijk", a, b, c)


@pytest.mark.parametrize("case", ["info", "hooi", "hosvd", "st_hosvd", "nonneg", "mask",
                                  "tall"])
def test_grad_is_finite_at_degenerate_inputs(case):
    """Each was NaN before (``info``, ``hooi``: a square root of a zero error and QR of a
    rank-deficient matrix), or stands for one of the degenerate routes (repeated zero
    eigenvalues of the unfoldings' Gram matrices, tall unfoldings through the SVD)."""
    x = exact_rank_one()
    mask = jnp.ones(x.shape, bool).at[0, 0, 0].set(False)
    fits = {
        "info": lambda x: tfa.tucker(x, (1, 1, 1), tol=0, n_iter=3,
                                     return_info=True)[1].rel_error,
        "hooi": lambda x: jnp.sum(tfa.tucker(x, (2, 2, 2), tol=0, n_iter=3).to_dense()),
        "hosvd": lambda x: jnp.sum(tfa.tucker(x, (2, 2, 2), method="hosvd").to_dense()),
        "st_hosvd": lambda x: jnp.sum(tfa.tucker(x, (2, 2, 2), method="st_hosvd").to_dense()),
        "nonneg": lambda x: jnp.sum(tfa.tucker(x, (2, 2, 2), tol=0, n_iter=3,
                                               nonneg=True).to_dense()),
        "mask": lambda x: jnp.sum(tfa.tucker(x, (2, 2, 2), tol=0, n_iter=3,
                                             mask=mask).to_dense()),
        # mode 0 (size 4) is taller than the product of the others (2 · 1 = 2)
        "tall": lambda x: jnp.sum(tfa.tucker(x[:, :2, :1], (3, 2, 1), tol=0,
                                             n_iter=3).to_dense()),
    }
    value, grad = jax.value_and_grad(fits[case])(x)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(np.asarray(grad)))
    if case in ("hooi", "hosvd", "st_hosvd"):
        # the fit reproduces x exactly, so d sum(fit)/dx is 1 along x itself
        assert float(jnp.vdot(grad, x) / jnp.sum(x)) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_init_is_reported_naming_init(x3, bad):
    start = tfa.tucker(x3, RANKS, n_iter=2)
    broken = tfa.TuckerTensor(start.core.at[0, 0, 0].set(bad), start.factors)
    with pytest.raises(ValueError, match=r"init contains 1 NaN or Inf value\(s\)"):
        tfa.tucker(x3, RANKS, init=broken)
    broken = tfa.TuckerTensor(start.core, [start.factors[0].at[2, 1].set(bad),
                                           *start.factors[1:]])
    with pytest.raises(ValueError, match=r"init contains 1 NaN or Inf value\(s\)"):
        tfa.tucker(x3, RANKS, init=broken)


@pytest.mark.parametrize("shape", [(0, 3, 4), (3, 0), (2, 3, 0)])
def test_zero_size_mode_names_x(shape):
    with pytest.raises(ValueError, match=r"x has a mode of size zero"):
        tfa.tucker(jnp.zeros(shape), 1)
    with pytest.raises(ValueError, match=r"x has a mode of size zero"):
        jax.jit(lambda v: tfa.tucker(v, 1, method="hosvd"))(jnp.zeros(shape))


def test_signature_follows_the_glossary():
    import inspect
    import typing
    from tensorfact import _checks
    from tensorfact.decomposition import _loop, _tucker
    sig = inspect.signature(tfa.tucker)
    keyword_only = [p for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY]
    assert keyword_only[0].name == "key" and keyword_only[0].default is None
    assert sig.parameters["tol"].default == _loop.DEFAULT_TOL
    hints = typing.get_type_hints(_tucker.tucker)
    assert typing.get_args(hints["method"]) == ("hooi", "hosvd", "st_hosvd")
    assert hints["precision"] == _checks.Precision
    assert _checks.Init in typing.get_args(hints["init"])
