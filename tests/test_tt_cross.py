"""Tests of ``tensorfact.tt_cross`` (TT-cross interpolation of a black-box function) and of its
``maxvol``: accuracy on a 10-way grid that is never formed, the number of function values it
uses, the error estimates of its info, exact recovery of planted tensor trains, scale, non-finite
values of the function, jit/vmap, and the argument checks.

References in the tests: NumPy float64 (the planted tensors' dense form, brute-force volumes of
submatrices) and the function itself at random grid points.
"""

from __future__ import annotations

import inspect
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorfact as tfa
from tensorfact.decomposition._tt_cross import maxvol
from _helpers import x64, rel

GRID = (10,) * 10  # 10^10 entries: never formed


def inverse_sum(idx):
    """``1 / (1 + Σ_k i_k)``: smooth, of low numerical TT rank."""
    return 1.0 / (1.0 + jnp.sum(idx, axis=1).astype(jnp.result_type(float)))


def planted_tt(seed, shape, ranks, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(seed), len(shape))
    return tfa.TTTensor([jax.random.normal(k, (ranks[i], n, ranks[i + 1]), dtype)
                         for i, (k, n) in enumerate(zip(keys, shape))])


def counting(fn, counter):
    """``fn`` that adds the size of every batch it is called on to ``counter`` (at run time,
    from inside the compiled program)."""
    def record(n):
        counter.append(int(n))

    def wrapped(idx):
        jax.debug.callback(record, idx.shape[0])
        return fn(idx)
    return wrapped


KEY = jax.random.key(0)

# ---------------------------------------------------------------------------------------------
# accuracy and cost on a grid too large to form


def n_evals(shape, ranks, n_iter, n_check):
    """The documented count: the check set, then per sweep both passes' fibers and G_0's."""
    sizes = [ranks[k] * shape[k] * ranks[k + 1] for k in range(len(shape))]
    return n_check + n_iter * (sum(sizes[:-1]) + sum(sizes[1:]) + sizes[0])


def test_smooth_function_on_a_10_way_grid_with_few_evaluations():
    with x64():
        t, info = tfa.tt_cross(inverse_sum, GRID, 10, key=jax.random.key(0), n_iter=4,
                               return_info=True)
        assert isinstance(t, tfa.TTTensor)
        assert t.shape == GRID and t.rank == (1,) + (10,) * 9 + (1,)
        assert t.dtype == jnp.float64
        idx = jax.random.randint(jax.random.key(1), (3000, len(GRID)), 0, 10)
        approx = np.asarray(t.gather(idx))
        exact = 1.0 / (1.0 + np.asarray(idx, np.float64).sum(axis=1))  # NumPy, not the fn
        # the extreme corners of the grid, too: value 1 at the origin, 1/91 at the far end
        corners = np.asarray(t.gather(jnp.array([[0] * 10, [9] * 10, [9] + [0] * 9])))
    assert rel(exact, approx) < 1e-6
    assert np.max(np.abs(approx - exact) / exact) < 1e-5
    np.testing.assert_allclose(corners, [1.0, 1 / 91, 0.1], rtol=1e-5)
    # the error estimate (on 1024 other random grid points) agrees with the independent one.
    # It reaches ~3e-7 after 3 sweeps and then moves by a few 1e-8 (float64 rounding in the
    # maxvol steps, which differs between CPUs), so the default tol of 1e-8 may or may not stop
    # the fit before the 4th sweep: either is right
    n = int(info.n_iter)
    assert n in (3, 4) and bool(info.converged) == (n == 3) and float(info.rel_error) < 1e-6
    assert 0.5 < float(info.rel_error) / rel(exact, approx) < 2
    # 49,924 values of fn after 3 sweeps (66,224 after 4; counted for real in
    # test_n_evals_is_the_real_count) for 10^10 entries
    assert int(info.n_evals) == n_evals(GRID, t.rank, n, 1024) == {3: 49_924, 4: 66_224}[n]
    assert int(info.n_evals) < 1e-5 * 10 ** 10


def test_n_evals_formula():
    # N_check + n_iter · (Σ_{k<d-1} r_k n_k r_{k+1} + Σ_{k>0} r_k n_k r_{k+1} + n_0 r_1), with
    # the whole grid (60 points) as check set
    shape, ranks = (3, 4, 5), (1, 2, 3, 1)
    sizes = [1 * 3 * 2, 2 * 4 * 3, 3 * 5 * 1]  # r_k n_k r_{k+1}
    expected = 60 + 2 * ((sizes[0] + sizes[1]) + (sizes[1] + sizes[2]) + sizes[0])
    _, info = tfa.tt_cross(inverse_sum, shape, ranks, key=KEY, n_iter=2, tol=0, return_info=True)
    assert int(info.n_evals) == expected == 210


# ---------------------------------------------------------------------------------------------
# exact recovery of planted tensor trains


def test_planted_tt_is_recovered_from_a_gather():
    """Ranks (1, 3, 3, 3, 1) for a train of ranks (1, 2, 3, 2, 1): bonds 1 and 3 are asked for
    more than the tensor has, so their fibers are rank deficient, which the QR before maxvol
    must absorb (no inverse of a singular cross matrix). Exact from the first sweep, so the
    error estimate stops changing and the default tol ends the run early."""
    shape = (5, 5, 5, 5)  # equal sizes: the inner cores share one compiled step
    with x64():
        dense = planted_tt(0, shape, (1, 2, 3, 2, 1), jnp.float64).to_dense()
        t, info = tfa.tt_cross(lambda idx: dense[tuple(idx.T)], shape, (1, 3, 3, 3, 1),
                               key=jax.random.key(1), n_iter=10, return_info=True)
        assert t.rank == (1, 3, 3, 3, 1) and t.dtype == jnp.float64
        dense_t = np.asarray(t.to_dense())
    assert np.all(np.isfinite(dense_t))
    assert rel(np.asarray(dense), dense_t) < 1e-10
    n = int(info.n_iter)
    assert bool(info.converged) and n < 10
    errors = np.asarray(info.errors)
    assert np.all(errors[:n] < 1e-10) and np.all(np.isnan(errors[n:]))
    assert int(info.n_evals) == n_evals(shape, t.rank, n, 625)  # the grid: 625 ≤ 1024 points


def test_matrix_case_is_a_skeleton_decomposition():
    """d = 2: a rank-3 matrix from 3 of its rows and 3 of its columns."""
    rng = np.random.default_rng(0)
    m = rng.standard_normal((9, 3)) @ rng.standard_normal((3, 7))
    with x64():
        mj = jnp.asarray(m)
        t = tfa.tt_cross(lambda idx: mj[idx[:, 0], idx[:, 1]], (9, 7), 3, key=jax.random.key(0))
        assert rel(m, t.to_dense()) < 1e-10


def test_int_rank_is_lowered_to_what_each_bond_admits():
    shapes = jax.eval_shape(lambda: tfa.tt_cross(inverse_sum, (2, 3, 4), 10, key=KEY))
    assert [g.shape for g in shapes.cores] == [(1, 2, 2), (2, 3, 4), (4, 4, 1)]
    shapes = jax.eval_shape(lambda: tfa.tt_cross(inverse_sum, (10, 10, 10, 10, 3), 50, key=KEY))
    assert [g.shape[2] for g in shapes.cores] == [10, 50, 30, 3, 1]  # min(50, 10^k, ∏ n_{>k})
    _, info = tfa.tt_cross(inverse_sum, (2, 3, 4), 10, key=KEY, n_iter=1, tol=0,
                           return_info=True)
    assert int(info.n_evals) == 24 + (4 + 24) + (24 + 16) + 4


def test_inner_ranks_mean_the_full_list():
    full = jax.eval_shape(lambda: tfa.tt_cross(inverse_sum, (4, 5, 6), (1, 3, 2, 1), key=KEY))
    inner = jax.eval_shape(lambda: tfa.tt_cross(inverse_sum, (4, 5, 6), (3, 2), key=KEY))
    assert [g.shape for g in inner.cores] == [g.shape for g in full.cores]


def test_one_way_grid_is_the_function_itself():
    fn = lambda idx: 2.0 * idx[:, 0] + 1.0  # noqa: E731
    t = tfa.tt_cross(fn, (6,), 3, key=jax.random.key(0))
    assert t.rank == (1, 1)
    np.testing.assert_allclose(np.asarray(t.to_dense()), 2.0 * np.arange(6) + 1.0)


# ---------------------------------------------------------------------------------------------
# transformations and determinism (one fn object and one jitted function, compiled once each)

SMALL = (6, 6, 6, 6)


def shifted(a):
    return lambda idx: 1.0 / (a + jnp.sum(idx, axis=1))


CALLS = []  # batch sizes SHIFTED_2 was called on, recorded at run time
SHIFTED_2 = counting(shifted(2.0), CALLS)


def eager(key=jax.random.key(0)):
    return tfa.tt_cross(SHIFTED_2, SMALL, 4, key=key, n_iter=2, return_info=True)


@jax.jit
def jitted(a, key):
    return tfa.tt_cross(shifted(a), SMALL, 4, key=key, n_iter=2, return_info=True)


def test_jit_with_fn_closed_over_matches_eager():
    e, e_info = eager()
    j, j_info = jitted(2.0, jax.random.key(0))
    assert int(j_info.n_iter) == int(e_info.n_iter)
    assert float(j_info.rel_error) == pytest.approx(float(e_info.rel_error), rel=1e-3)
    for g, h in zip(e.cores, j.cores):
        np.testing.assert_allclose(np.asarray(g), np.asarray(h), rtol=1e-5, atol=1e-6)
    idx = jax.random.randint(jax.random.key(5), (500, 4), 0, 6)
    assert rel(SHIFTED_2(idx), j.gather(idx)) < 1e-3


def test_vmap_over_a_parameter_of_fn_matches_single_calls():
    a = jnp.array([1.0, 2.5, 4.0])
    batched = jax.vmap(lambda a: tfa.tt_cross(shifted(a), SMALL, 4, key=jax.random.key(0),
                                              n_iter=2, tol=0))(a)
    assert batched.cores[0].shape == (3, 1, 6, 4)
    idx = jax.random.randint(jax.random.key(5), (500, 4), 0, 6)
    for i, ai in enumerate(a):
        single, _ = jitted(ai, jax.random.key(0))
        for g, h in zip(batched.cores, single.cores):
            np.testing.assert_allclose(np.asarray(g[i]), np.asarray(h), rtol=1e-5, atol=1e-6)
        one = tfa.TTTensor([g[i] for g in batched.cores])
        assert rel(shifted(ai)(idx), one.gather(idx)) < 1e-2


def test_n_evals_is_the_real_count():
    CALLS.clear()
    _, info = jax.block_until_ready(eager(jax.random.key(9)))
    jax.effects_barrier()
    # ranks (1, 4, 4, 4, 1), sizes r_k n_k r_{k+1} = 24, 96, 96, 24: 1024 (check set) +
    # 2 · (216 + 216 + 24)
    assert int(info.n_iter) == 2
    assert sum(CALLS) == int(info.n_evals) == n_evals(SMALL, (1, 4, 4, 4, 1), 2, 1024) == 1936


def test_same_key_same_result_and_other_keys_agree_in_value():
    (a, _), (b, _) = eager(jax.random.key(3)), eager(jax.random.key(3))
    for g, h in zip(a.cores, b.cores):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(h))
    c, _ = eager(jax.random.key(4))
    assert rel(a.to_dense(), c.to_dense()) < 1e-3  # possibly other crosses, same function


# ---------------------------------------------------------------------------------------------
# maxvol


def brute_force_single_swaps(a, rows):
    """Largest |det| ratio that replacing one selected row by another one could give."""
    a = np.asarray(a, np.float64)
    base = abs(np.linalg.det(a[rows]))
    best = 0.0
    for j in range(len(rows)):
        for i in range(a.shape[0]):
            trial = list(rows)
            trial[j] = i
            best = max(best, abs(np.linalg.det(a[trial])) / base)
    return best


@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 8), r=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_maxvol_gives_a_dominant_submatrix(n, r, seed):
    r = min(r, n)
    a = np.random.default_rng(seed).standard_normal((n, r))
    with x64():
        rows, b = maxvol(jnp.asarray(a))
        rows, b = np.asarray(rows), np.asarray(b)
    assert rows.shape == (r,) and len(set(rows.tolist())) == r
    np.testing.assert_allclose(b, a @ np.linalg.inv(a[rows]), atol=1e-8)
    np.testing.assert_allclose(b[rows], np.eye(r), atol=1e-10)
    assert np.abs(b).max() <= 1.05 + 1e-9
    assert brute_force_single_swaps(a, rows) <= 1.05 + 1e-9  # no swap gains more than tol


def test_maxvol_finds_the_maximum_volume_rows_of_a_small_matrix():
    a = jnp.array([[1.0, 0.0], [0.0, 1.0], [3.0, 1.0], [1.0, 2.0], [0.5, 0.5]])
    rows, _ = maxvol(a)
    volumes = {pair: abs(np.linalg.det(np.asarray(a)[list(pair)]))
               for pair in itertools.combinations(range(5), 2)}
    assert tuple(sorted(rows.tolist())) == max(volumes, key=volumes.get)


def test_maxvol_needs_a_tall_matrix():
    with pytest.raises(ValueError, match=re.escape("maxvol needs a tall matrix (n >= r), got "
                                                   "shape (2, 3)")):
        maxvol(jnp.ones((2, 3)))


# ---------------------------------------------------------------------------------------------
# argument checks


@pytest.mark.parametrize("ranks,message", [
    ((1, 2, 1), "ranks must have d + 1 = 4 entries (1, r_1, ..., r_{d-1}, 1) or the d - 1 = 2 "
                "inner ones (r_1, ..., r_{d-1}) for a 3-way tensor of shape (4, 5, 6), got 3: "
                "(1, 2, 1)"),
    ((2, 2, 2, 1), "ranks must start and end with 1 (a tensor train has boundary ranks 1), got "
                   "(2, 2, 2, 1)"),
    ((1, 0, 2, 1), "ranks[1] must be a positive integer, got 0"),
    ((1, 2, -1, 1), "ranks[2] must be a positive integer, got -1"),
    ((1, 2.5, 2, 1), "ranks[1] must be a positive integer, got 2.5"),
    ((1, 5, 2, 1), "ranks[1] = 5 exceeds 4, the largest rank of the unfolding of a tensor of "
                   "shape (4, 5, 6) at bond 1"),
    ((1, 1, 6, 1), "ranks[1] = 1 and ranks[2] = 6 do not fit mode 1 of size 5"),
    (0, "ranks must be a positive integer, got 0"),
    ("3", "ranks must be an int or a sequence of ints"),
])
def test_bad_ranks(ranks, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tfa.tt_cross(inverse_sum, (4, 5, 6), ranks, key=KEY)


@pytest.mark.parametrize("shape,message", [
    (5, "shape must be a sequence of positive ints, got 5"),
    ((), "shape must have at least one mode, got ()"),
    ((4, 0, 3), "shape[1] must be a positive integer, got 0"),
])
def test_bad_shape(shape, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tfa.tt_cross(inverse_sum, shape, 2, key=KEY)


def test_fn_of_the_wrong_output_shape():
    with pytest.raises(ValueError, match=re.escape("fn must map int32 indices of shape (batch, 3) "
                                                   "to values of shape (batch,); on shape (2, 3) "
                                                   "it returned (2, 1)")):
        tfa.tt_cross(lambda idx: idx[:, :1] * 1.0, (4, 5, 6), 2, key=KEY)


def test_fn_not_callable_or_complex():
    with pytest.raises(TypeError, match="fn must be callable, got ndarray"):
        tfa.tt_cross(np.ones(3), (4, 5, 6), 2, key=KEY)
    with pytest.raises(TypeError, match="fn must return real values, got dtype complex64"):
        tfa.tt_cross(lambda idx: jnp.ones(idx.shape[0], jnp.complex64), (4, 5, 6), 2, key=KEY)


def test_missing_key_and_bad_n_iter_or_tol():
    with pytest.raises(ValueError, match=r"key is required for the random start of tt_cross"):
        tfa.tt_cross(inverse_sum, (4, 5, 6), 2, key=None)
    with pytest.raises(TypeError, match=r"key must be a jax.random key, got int 0"):
        tfa.tt_cross(inverse_sum, (4, 5, 6), 2, key=0)
    with pytest.raises(ValueError, match=r"n_iter must be a positive integer, got 0"):
        tfa.tt_cross(inverse_sum, (4, 5, 6), 2, key=KEY, n_iter=0)
    with pytest.raises(ValueError, match=r"tol must be >= 0, got -1.0"):
        tfa.tt_cross(inverse_sum, (4, 5, 6), 2, key=KEY, tol=-1.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'n_sweeps'"):
        tfa.tt_cross(inverse_sum, (4, 5, 6), 2, key=KEY, n_sweeps=2)  # renamed n_iter


def test_key_is_the_first_keyword_only_argument():
    params = inspect.signature(tfa.tt_cross).parameters.values()
    assert [p.name for p in params if p.kind is p.KEYWORD_ONLY][0] == "key"


# ---------------------------------------------------------------------------------------------
# the error estimates, scale, non-finite values


def test_error_estimate_is_exact_on_a_grid_no_larger_than_the_check_set():
    shape = (3, 4, 5)  # 60 points: the check set is the whole grid
    with x64():
        t, info = tfa.tt_cross(inverse_sum, shape, 2, key=KEY, n_iter=3, tol=0,
                               return_info=True)
        dense_t = np.asarray(t.to_dense())
    exact = 1.0 / (1.0 + np.indices(shape).sum(axis=0))
    err = rel(exact, dense_t)
    assert err > 1e-4  # rank 2 is not exact here: a real error, not 0
    assert float(info.rel_error) == pytest.approx(err, rel=1e-8)
    assert int(info.n_iter) == 3 and not bool(info.converged)  # tol=0 never tests convergence


def test_error_estimate_on_a_random_check_set_tracks_the_true_error():
    shape = (8, 8, 8, 8)  # 4096 points: 1024 of them are drawn
    t, info = tfa.tt_cross(inverse_sum, shape, 2, key=KEY, n_iter=2, tol=0, return_info=True)
    exact = 1.0 / (1.0 + np.indices(shape).sum(axis=0))
    err = rel(exact, t.to_dense())
    assert err > 1e-3
    assert 0.8 < float(info.rel_error) / err < 1.25


@jax.jit
def scaled_cross(c):
    """One compiled program for every scale c (traced)."""
    return tfa.tt_cross(lambda idx: c * inverse_sum(idx), (4, 5, 6), 3, key=KEY, n_iter=3,
                        tol=0, return_info=True)


@pytest.mark.parametrize("k", [-99, -66, 66, 99])  # c = 2^k: 1.6e-30, 1.4e-20, 7e19, 6e29
def test_scale_equivariance_for_powers_of_two(k):
    """fn·c gives c times the train and the same (here exact) error, for c from 1e-30 to 1e30
    in float32: the QRs and maxvol are scale-invariant, and the error estimate uses norms that
    neither over- nor underflow. With c a power of two the scaled values are exact, so the
    cross is the same one."""
    c = np.float32(2.0 ** k)
    t1, info1 = scaled_cross(np.float32(1.0))
    tc, infoc = scaled_cross(c)
    np.testing.assert_allclose(np.asarray(tc.to_dense(), np.float64) / np.float64(c),
                               np.asarray(t1.to_dense(), np.float64), rtol=1e-5, atol=1e-7)
    assert float(infoc.rel_error) == pytest.approx(float(info1.rel_error), rel=1e-4)
    assert float(info1.rel_error) > 1e-6


@settings(max_examples=8, deadline=None)
@given(exponent=st.sampled_from([-30.0, -20.0, 20.0, 30.0]) | st.floats(-30, 30))
def test_scaled_functions_are_fitted_as_well_and_their_error_is_reported_truly(exponent):
    """Any c from 1e-30 to 1e30: c·fn rounds differently from fn, so maxvol may break a near
    tie the other way and pick another cross, but the fit is as good and the reported error is
    the true one (the check set is the whole 120-point grid here)."""
    c = np.float32(10.0 ** exponent)
    exact = 1.0 / (1.0 + np.indices((4, 5, 6)).sum(axis=0))
    t1, _ = scaled_cross(np.float32(1.0))
    tc, infoc = scaled_cross(c)
    dense = np.asarray(tc.to_dense(), np.float64)
    assert np.all(np.isfinite(dense))
    err = rel(exact * np.float64(c), dense)
    assert float(infoc.rel_error) == pytest.approx(err, rel=1e-3)
    assert err < 1.5 * rel(exact, t1.to_dense())


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values_of_fn_are_reported(bad):
    def fn(idx):
        return jnp.where(idx[:, 0] == 2, bad, inverse_sum(idx))

    with pytest.raises(ValueError, match=r"fn returned \d+ NaN or Inf value\(s\)"):
        tfa.tt_cross(fn, (4, 5, 6), 2, key=KEY)
    # under jit the values are unknown at trace time: no error, as for the data of the fits
    out = jax.jit(lambda k: tfa.tt_cross(fn, (4, 5, 6), 2, key=k).cores[0])(KEY)
    assert out.shape == (1, 4, 2)
