"""Tests of ``tensorfact.tt_cross`` (TT-cross interpolation of a black-box function) and of its
``maxvol``: accuracy on a 10-way grid that is never formed, the number of function values it
uses, exact recovery of planted tensor trains, jit/vmap, and the argument checks.

References in the tests: NumPy float64 (the planted tensors' dense form, brute-force volumes of
submatrices) and the function itself at random grid points.
"""

from __future__ import annotations

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


def test_smooth_function_on_a_10_way_grid_with_few_evaluations():
    with x64():
        t = tfa.tt_cross(inverse_sum, GRID, 10, key=jax.random.key(0), n_sweeps=4)
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
    # 64,900 values of fn (counted for real in test_n_evals_is_the_real_count) for 10^10 entries
    assert tfa.tt_cross_n_evals(GRID, 10, 4) == 64_900 < 1e-5 * 10 ** 10


def test_n_evals_formula():
    # n_sweeps · (Σ_{k<d-1} r_k n_k r_{k+1} + Σ_{k>0} r_k n_k r_{k+1}) + n_0 r_1
    shape, ranks = (3, 4, 5), (1, 2, 3, 1)
    sizes = [1 * 3 * 2, 2 * 4 * 3, 3 * 5 * 1]  # r_k n_k r_{k+1}
    expected = 2 * ((sizes[0] + sizes[1]) + (sizes[1] + sizes[2])) + sizes[0]
    assert tfa.tt_cross_n_evals(shape, ranks, 2) == expected == 144


# ---------------------------------------------------------------------------------------------
# exact recovery of planted tensor trains


def test_planted_tt_is_recovered_from_a_gather():
    """Ranks (1, 3, 3, 3, 1) for a train of ranks (1, 2, 3, 2, 1): bonds 1 and 3 are asked for
    more than the tensor has, so their fibers are rank deficient, which the QR before maxvol
    must absorb (no inverse of a singular cross matrix)."""
    shape = (5, 5, 5, 5)  # equal sizes: the inner cores share one compiled step
    with x64():
        dense = planted_tt(0, shape, (1, 2, 3, 2, 1), jnp.float64).to_dense()
        t = tfa.tt_cross(lambda idx: dense[tuple(idx.T)], shape, (1, 3, 3, 3, 1),
                         key=jax.random.key(1), n_sweeps=2)
        assert t.rank == (1, 3, 3, 3, 1) and t.dtype == jnp.float64
        dense_t = np.asarray(t.to_dense())
    assert np.all(np.isfinite(dense_t))
    assert rel(np.asarray(dense), dense_t) < 1e-10


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
    assert tfa.tt_cross_n_evals((2, 3, 4), 10, 1) == (4 + 24) + (24 + 16) + 4


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
    return tfa.tt_cross(SHIFTED_2, SMALL, 4, key=key, n_sweeps=2)


@jax.jit
def jitted(a, key):
    return tfa.tt_cross(shifted(a), SMALL, 4, key=key, n_sweeps=2)


def test_jit_with_fn_closed_over_matches_eager():
    e = eager()
    j = jitted(2.0, jax.random.key(0))
    for g, h in zip(e.cores, j.cores):
        np.testing.assert_allclose(np.asarray(g), np.asarray(h), rtol=1e-5, atol=1e-6)
    idx = jax.random.randint(jax.random.key(5), (500, 4), 0, 6)
    assert rel(SHIFTED_2(idx), j.gather(idx)) < 1e-3


def test_vmap_over_a_parameter_of_fn_matches_single_calls():
    a = jnp.array([1.0, 2.5, 4.0])
    batched = jax.vmap(lambda a: tfa.tt_cross(shifted(a), SMALL, 4, key=jax.random.key(0),
                                              n_sweeps=2))(a)
    assert batched.cores[0].shape == (3, 1, 6, 4)
    idx = jax.random.randint(jax.random.key(5), (500, 4), 0, 6)
    for i, ai in enumerate(a):
        single = jitted(ai, jax.random.key(0))
        for g, h in zip(batched.cores, single.cores):
            np.testing.assert_allclose(np.asarray(g[i]), np.asarray(h), rtol=1e-5, atol=1e-6)
        one = tfa.TTTensor([g[i] for g in batched.cores])
        assert rel(shifted(ai)(idx), one.gather(idx)) < 1e-2


def test_n_evals_is_the_real_count():
    CALLS.clear()
    jax.block_until_ready(eager(jax.random.key(9)))
    jax.effects_barrier()
    # ranks (1, 4, 4, 4, 1), sizes r_k n_k r_{k+1} = 24, 96, 96, 24: 2 · (216 + 216) + 24
    assert sum(CALLS) == tfa.tt_cross_n_evals(SMALL, 4, n_sweeps=2) == 888


def test_same_key_same_result_and_other_keys_agree_in_value():
    a, b = eager(jax.random.key(3)), eager(jax.random.key(3))
    for g, h in zip(a.cores, b.cores):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(h))
    c = eager(jax.random.key(4))
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
    ((1, 2, 1), "ranks must hold 4 TT ranks (1, r_1, ..., r_2, 1) for a 3-way grid of shape "
                "(4, 5, 6), got 3: (1, 2, 1)"),
    ((2, 2, 2, 1), "ranks must start and end with 1, got (2, 2, 2, 1)"),
    ((1, 0, 2, 1), "ranks[1] must be a positive integer, got 0"),
    ((1, 2, -1, 1), "ranks[2] must be a positive integer, got -1"),
    ((1, 2.5, 2, 1), "ranks[1] must be a positive integer, got 2.5"),
    ((1, 5, 2, 1), "ranks[1] = 5 exceeds 4, the largest rank of the unfolding of a tensor of "
                   "shape (4, 5, 6) at bond 1"),
    ((1, 1, 6, 1), "ranks[1] = 1 and ranks[2] = 6 do not fit mode 1 of size 5"),
    (0, "ranks must be a positive integer, got 0"),
    ("3", "ranks must be an int or a sequence of 4 ints"),
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


def test_missing_key_and_bad_n_sweeps():
    with pytest.raises(ValueError, match=r"key is required for the random start of tt_cross"):
        tfa.tt_cross(inverse_sum, (4, 5, 6), 2, key=None)
    with pytest.raises(ValueError, match=r"n_sweeps must be a positive integer, got 0"):
        tfa.tt_cross(inverse_sum, (4, 5, 6), 2, key=KEY, n_sweeps=0)
