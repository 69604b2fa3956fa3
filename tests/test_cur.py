"""Tests of the CUR decomposition (``tensorfact.decomposition.cur``) and the ``CURMatrix`` type.

The decompositions share a few shapes (``SHAPE`` and ``WIDE``) and call signatures so that JAX
compiles a handful of programs; the quality checks compare with the optimal rank-r error from a
NumPy float64 SVD on matrices with a prescribed, geometrically decaying spectrum.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorfact.decomposition._cur import cur
from tensorfact.tensors._cur import CURMatrix

SHAPE = (60, 50)
WIDE = (6, 40)
RANK = 5
METHODS = ("leverage", "pivoted")


def x64():
    """A context in which JAX creates float64 arrays (without touching the global config)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # older JAX
    return enable_x64()


def exact_low_rank(seed, shape=SHAPE, rank=RANK, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((shape[0], rank)) @ rng.standard_normal((rank, shape[1]))
            ).astype(dtype)


def decaying(seed, shape=SHAPE, decay=0.7):
    """Random singular vectors with singular values ``decay**i``: a spectrum with no gap."""
    rng = np.random.default_rng(seed)
    p = min(shape)
    q1, _ = np.linalg.qr(rng.standard_normal((shape[0], p)))
    q2, _ = np.linalg.qr(rng.standard_normal((shape[1], p)))
    return ((q1 * decay ** np.arange(p)) @ q2.T).astype(np.float32)


def optimal_error(x, rank):
    """``‖M − M_rank‖_F`` from a float64 SVD (Eckart–Young)."""
    s = np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)
    return float(np.sqrt(np.sum(s[rank:] ** 2)))


def error(x, approx):
    return float(np.linalg.norm(np.asarray(x, np.float64) - np.asarray(approx.to_dense(),
                                                                         np.float64)))


def rel(x, approx):
    return error(x, approx) / float(np.linalg.norm(np.asarray(x, np.float64)))


def call(x, method, seed=0, **kwargs):
    key = jax.random.key(seed) if method == "leverage" else None
    return cur(x, RANK, key=key, method=method, **kwargs)


def assert_selection(x, approx):
    """C and R are really columns and rows of x, the indices distinct and in range."""
    x = np.asarray(x)
    cols, rows = np.asarray(approx.col_index), np.asarray(approx.row_index)
    assert cols.dtype.kind == "i" and rows.dtype.kind == "i"
    assert len(set(cols.tolist())) == cols.size and len(set(rows.tolist())) == rows.size
    assert cols.min() >= 0 and cols.max() < x.shape[1]
    assert rows.min() >= 0 and rows.max() < x.shape[0]
    np.testing.assert_array_equal(np.asarray(approx.c), x[:, cols])
    np.testing.assert_array_equal(np.asarray(approx.r), x[rows, :])


def deim_reference(basis):
    """Sorensen & Embree's Algorithm 1 (DEIM), written out in NumPy."""
    idx = [int(np.argmax(np.abs(basis[:, 0])))]
    for s in range(1, basis.shape[1]):
        prev = basis[:, :s]
        coef = np.linalg.solve(prev[idx], basis[idx, s])
        idx.append(int(np.argmax(np.abs(basis[:, s] - prev @ coef))))
    return idx


# ---------------------------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_exact_rank_matrix_is_reconstructed(method):
    for seed in range(3):
        x = exact_low_rank(seed)
        approx = call(x, method, seed)
        assert isinstance(approx, CURMatrix)
        assert approx.shape == SHAPE and approx.dtype == jnp.float32
        k = 2 * RANK if method == "leverage" else RANK  # the documented defaults
        assert approx.c.shape == (SHAPE[0], k) and approx.u.shape == (k, k)
        assert approx.r.shape == (k, SHAPE[1]) and approx.rank == k
        assert_selection(x, approx)
        assert rel(x, approx) < 1e-4


def test_pivoted_is_near_optimal_on_decaying_spectrum():
    ratios = []
    for seed in range(5):
        x = decaying(seed)
        approx = call(x, "pivoted")
        assert approx.c.shape[1] == RANK and approx.r.shape[0] == RANK
        ratios.append(error(x, approx) / optimal_error(x, RANK))
    assert max(ratios) <= 3.0, ratios
    assert min(ratios) >= 1.0 - 1e-3  # k = rank columns cannot beat the truncated SVD


def test_oversampled_leverage_is_near_optimal_on_decaying_spectrum():
    for seed in range(5):
        x = decaying(seed)
        approx = call(x, "leverage", seed)  # 2·rank columns and rows
        assert error(x, approx) <= 2.0 * optimal_error(x, RANK)


def test_u_is_the_optimal_middle_matrix():
    x = decaying(7)
    for method in METHODS:
        approx = call(x, method)
        c, r, xf = (np.asarray(a, np.float64) for a in (approx.c, approx.r, x))
        best = np.linalg.pinv(c) @ xf @ np.linalg.pinv(r)
        np.testing.assert_allclose(np.asarray(approx.u), best, rtol=1e-3,
                                   atol=1e-3 * np.abs(best).max())
        # any other U does worse: perturbing the optimum increases the error
        worse = CURMatrix(approx.c, approx.u + 1e-2 * np.abs(best).max(), approx.r,
                          approx.col_index, approx.row_index)
        assert error(x, worse) > error(x, approx)


def test_float64_input_stays_float64():
    with x64():
        x = exact_low_rank(3, dtype=np.float64)
        for method in METHODS:
            approx = call(x, method)
            assert approx.dtype == jnp.float64 and approx.u.dtype == jnp.float64
            assert rel(x, approx) < 1e-10


def test_integer_input_is_cast_to_float32():
    x = np.rint(4 * exact_low_rank(4)).astype(np.int32)  # full rank after rounding
    approx = call(x, "pivoted")
    assert approx.dtype == jnp.float32
    assert_selection(x.astype(np.float32), approx)


# ---------------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------------

def test_pivoted_indices_are_the_deim_indices():
    for seed in range(3):
        x = decaying(seed)
        approx = call(x, "pivoted")
        u, _, vt = np.linalg.svd(x.astype(np.float64))
        assert np.asarray(approx.col_index).tolist() == deim_reference(vt[:RANK].T)
        assert np.asarray(approx.row_index).tolist() == deim_reference(u[:, :RANK])


@pytest.mark.parametrize("method", METHODS)
def test_custom_counts(method):
    x = decaying(1)
    approx = call(x, method, n_cols=7, n_rows=12)
    assert approx.c.shape == (60, 7) and approx.u.shape == (7, 12) and approx.r.shape == (12, 50)
    assert approx.rank == 7 and approx.n_params == 60 * 7 + 7 * 12 + 12 * 50
    assert_selection(x, approx)
    # more columns and rows than the rank: at least as good as the optimal rank-5 error
    assert error(x, approx) <= optimal_error(x, RANK) * (1.0 if method == "pivoted" else 2.0)


def test_all_columns_and_rows_reproduce_the_matrix():
    x = decaying(2)
    approx = cur(x, RANK, method="pivoted", n_cols=SHAPE[1], n_rows=SHAPE[0])
    assert sorted(np.asarray(approx.col_index).tolist()) == list(range(SHAPE[1]))
    assert sorted(np.asarray(approx.row_index).tolist()) == list(range(SHAPE[0]))
    # C = M up to a permutation; its pseudoinverse drops the singular values below
    # RCOND = 1e-4 of the largest (0.7**26 ≈ 1e-4), whose energy is ~1e-4 of the total
    assert rel(x, approx) < 3e-4


@pytest.mark.parametrize("method", METHODS)
def test_more_columns_than_the_short_side(method):
    """A 6 × 40 matrix: 10 columns exceed min(m.shape) = 6, so DEIM needs the full SVD."""
    x = exact_low_rank(5, shape=WIDE, rank=3)
    approx = cur(x, 3, key=jax.random.key(0), method=method, n_cols=10, n_rows=6)
    assert approx.c.shape == (6, 10) and approx.r.shape == (6, 40)
    assert_selection(x, approx)
    assert rel(x, approx) < 1e-4


def test_leverage_skips_zero_leverage_columns_while_it_can():
    """Columns outside the top singular subspace have zero leverage and are never sampled
    before the ones that have some."""
    x = np.zeros(SHAPE, np.float32)
    x[:, :20] = exact_low_rank(6, shape=(SHAPE[0], 20))
    for seed in range(5):
        approx = cur(x, RANK, key=jax.random.key(seed), n_cols=10, n_rows=10)
        assert np.asarray(approx.col_index).max() < 20
        assert rel(x, approx) < 1e-4


# ---------------------------------------------------------------------------------------------
# Determinism and transformations
# ---------------------------------------------------------------------------------------------

def test_leverage_is_determined_by_the_key():
    x = decaying(3)
    a, b = call(x, "leverage", 11), call(x, "leverage", 11)
    np.testing.assert_array_equal(np.asarray(a.col_index), np.asarray(b.col_index))
    np.testing.assert_array_equal(np.asarray(a.row_index), np.asarray(b.row_index))
    np.testing.assert_array_equal(np.asarray(a.u), np.asarray(b.u))
    draws = {tuple(np.asarray(call(x, "leverage", s).col_index).tolist()) for s in range(5)}
    assert len(draws) > 1  # it is random: other keys choose other columns


def test_pivoted_is_deterministic_and_ignores_the_key():
    x = decaying(3)
    a = cur(x, RANK, method="pivoted")
    b = cur(x, RANK, method="pivoted", key=jax.random.key(99))
    np.testing.assert_array_equal(np.asarray(a.col_index), np.asarray(b.col_index))
    np.testing.assert_array_equal(np.asarray(a.row_index), np.asarray(b.row_index))
    np.testing.assert_array_equal(np.asarray(a.to_dense()), np.asarray(b.to_dense()))


def test_legacy_uint32_key_is_accepted():
    x = decaying(3)
    approx = cur(x, RANK, key=jax.random.PRNGKey(0))
    assert_selection(x, approx)


@pytest.mark.parametrize("method", METHODS)
def test_vmap_over_a_batch(method):
    xs = np.stack([decaying(s) for s in range(3)])
    keys = jax.random.split(jax.random.key(8), 3)
    batched = jax.vmap(lambda m, k: cur(m, RANK, key=k, method=method))(xs, keys)
    assert batched.c.shape == (3, 60, RANK * (2 if method == "leverage" else 1))
    assert batched.col_index.shape[0] == 3
    for i in range(3):
        one = cur(xs[i], RANK, key=keys[i], method=method)
        np.testing.assert_array_equal(np.asarray(batched.col_index[i]), np.asarray(one.col_index))
        np.testing.assert_array_equal(np.asarray(batched.row_index[i]), np.asarray(one.row_index))
        np.testing.assert_array_equal(np.asarray(batched.c[i]), xs[i][:, np.asarray(one.col_index)])
        np.testing.assert_allclose(np.asarray(batched.u[i]), np.asarray(one.u), rtol=1e-3,
                                   atol=1e-3 * float(np.abs(np.asarray(one.u)).max()))


# ---------------------------------------------------------------------------------------------
# CURMatrix
# ---------------------------------------------------------------------------------------------

def random_cur(rng, m=7, k=3, l=4, n=6):
    return CURMatrix(rng.standard_normal((m, k)).astype(np.float32),
                     rng.standard_normal((k, l)).astype(np.float32),
                     rng.standard_normal((l, n)).astype(np.float32),
                     np.arange(k) % n, (np.arange(l) + 1) % m)


def test_curmatrix_properties(rng):
    cm = random_cur(rng)
    assert cm.shape == (7, 6) and cm.ndim == 2 and cm.size == 42
    assert cm.rank == 3 and cm.dtype == jnp.float32
    assert cm.n_params == 7 * 3 + 3 * 4 + 4 * 6  # the integer indices are not counted
    dense = np.asarray(cm.c, np.float64) @ np.asarray(cm.u) @ np.asarray(cm.r)
    np.testing.assert_allclose(np.asarray(cm.to_dense()), dense, rtol=1e-5, atol=1e-5)
    c, u, r = cm
    assert c is cm.c and u is cm.u and r is cm.r
    with pytest.raises(AttributeError, match="immutable"):
        cm.u = cm.u
    assert "CURMatrix(c=float32[7, 3], u=float32[3, 4]" in repr(cm)


@settings(max_examples=20, deadline=None)
@given(m=st.integers(1, 6), k=st.integers(1, 4), l=st.integers(1, 4), n=st.integers(1, 6),
       seed=st.integers(0, 2**16))
def test_curmatrix_norm_equals_dense_norm(m, k, l, n, seed):
    cm = random_cur(np.random.default_rng(seed), m, k, l, n)
    dense = np.asarray(cm.c, np.float64) @ np.asarray(cm.u) @ np.asarray(cm.r)
    np.testing.assert_allclose(float(cm.norm()), np.linalg.norm(dense), rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(cm.to_dense()), dense, rtol=1e-4, atol=1e-4)


def test_curmatrix_norm_of_a_decomposition():
    x = decaying(9)
    for method in METHODS:
        approx = call(x, method)
        np.testing.assert_allclose(float(approx.norm()), float(jnp.linalg.norm(approx.to_dense())),
                                   rtol=1e-4)


def test_curmatrix_pytree_round_trip_through_jit(rng):
    cm = random_cur(rng)
    leaves, _treedef = jax.tree_util.tree_flatten(cm)
    assert len(leaves) == 5
    back = jax.jit(lambda t: t)(cm)
    assert isinstance(back, CURMatrix)
    for a, b in zip(jax.tree_util.tree_leaves(cm), jax.tree_util.tree_leaves(back)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    doubled = jax.jit(lambda t: jax.tree_util.tree_map(lambda a: 2 * a, t))(cm)
    np.testing.assert_allclose(float(doubled.norm()), 8 * float(cm.norm()), rtol=1e-5)
    np.testing.assert_allclose(float(jax.jit(lambda t: t.norm())(cm)), float(cm.norm()),
                               rtol=1e-6)


def test_curmatrix_constructor_errors(rng):
    c, u, r = (rng.standard_normal(s).astype(np.float32) for s in ((7, 3), (3, 4), (4, 6)))
    ci, ri = np.arange(3), np.arange(4)
    with pytest.raises(ValueError, match=r"c, u and r must be 2-D"):
        CURMatrix(c[:, 0], u, r, ci, ri)
    with pytest.raises(ValueError, match=r"matching k and l, got shapes \(7, 3\), \(2, 4\)"):
        CURMatrix(c, u[:2], r, ci, ri)
    with pytest.raises(ValueError, match=r"matching k and l.*\(3, 4\) and \(5, 6\)"):
        CURMatrix(c, u, np.zeros((5, 6)), ci, ri)
    with pytest.raises(ValueError, match=r"col_index must have shape \(3,\).*got \(2,\)"):
        CURMatrix(c, u, r, ci[:2], ri)
    with pytest.raises(ValueError, match=r"row_index must have shape \(4,\).*got \(4, 1\)"):
        CURMatrix(c, u, r, ci, ri[:, None])
    with pytest.raises(ValueError, match=r"col_index must hold integers, got dtype float32"):
        CURMatrix(c, u, r, ci.astype(np.float32), ri)
    with pytest.raises(ValueError, match=r"col_index must lie in \[0, 6\)"):
        CURMatrix(c, u, r, np.array([0, 1, 6]), ri)
    with pytest.raises(ValueError, match=r"row_index must lie in \[0, 7\)"):
        CURMatrix(c, u, r, ci, np.array([0, -1, 2, 3]))
    with pytest.raises(TypeError, match=r"c must be an array"):
        CURMatrix(object(), u, r, ci, ri)


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------

BAD_CALLS = [
    ({"m": np.ones(5)}, r"m must be a 2-D matrix, got shape \(5,\)"),
    ({"m": np.ones((3, 4, 5))}, r"m must be a 2-D matrix, got shape \(3, 4, 5\)"),
    ({"rank": 0}, r"rank must be a positive integer, got 0"),
    ({"rank": -2}, r"rank must be a positive integer, got -2"),
    ({"rank": 2.0}, r"rank must be a positive integer, got 2.0"),
    ({"rank": True}, r"rank must be a positive integer, got True"),
    ({"rank": 51}, r"rank = 51 must be at most min\(m.shape\) = 50"),
    ({"n_cols": 4}, r"n_cols must be an integer in \[rank, columns\] = \[5, 50\].*got 4"),
    ({"n_cols": 51}, r"n_cols must be an integer in \[rank, columns\] = \[5, 50\].*got 51"),
    ({"n_cols": 6.0}, r"n_cols must be an integer .* got 6.0"),
    ({"n_rows": 3}, r"n_rows must be an integer in \[rank, rows\] = \[5, 60\].*got 3"),
    ({"n_rows": 61}, r"n_rows must be an integer in \[rank, rows\] = \[5, 60\].*got 61"),
    ({"n_rows": "8"}, r"n_rows must be an integer .* got '8'"),
    ({"method": "qr"}, r"method must be one of \['leverage', 'pivoted'\], got 'qr'"),
    ({"method": None}, r"method must be one of .* got None"),
    ({"key": None, "method": "leverage"}, r"key is required for method=\"leverage\""),
]


@pytest.mark.parametrize("kwargs, message", BAD_CALLS)
def test_bad_arguments(kwargs, message):
    args = {"m": np.ones(SHAPE, np.float32), "rank": RANK, "key": jax.random.key(0)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        cur(args.pop("m"), args.pop("rank"), **args)


def test_checks_also_run_under_jit():
    with pytest.raises(ValueError, match=r"rank = 51 must be at most"):
        jax.jit(lambda m: cur(m, 51, method="pivoted"))(np.ones(SHAPE, np.float32))
    with pytest.raises(ValueError, match=r"key is required"):
        jax.jit(lambda m: cur(m, RANK, method="leverage"))(np.ones(SHAPE, np.float32))
