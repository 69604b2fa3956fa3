"""Truncated and randomized SVD, and the LowRankMatrix type."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tensorfact as tfa

KEY = jax.random.key(0)


def _decaying(rng, rows=120, cols=80, decay=0.9):
    u, _ = np.linalg.qr(rng.standard_normal((rows, cols)))
    v, _ = np.linalg.qr(rng.standard_normal((cols, cols)))
    s = decay ** np.arange(cols)
    return (u * s) @ v.T, s


def _optimal_error(m, rank):
    s = np.linalg.svd(np.asarray(m, np.float64), compute_uv=False)
    return np.sqrt(np.sum(s[rank:] ** 2)) / np.linalg.norm(s)


@pytest.mark.parametrize("rank", [1, 7, 20])
def test_exact_svd_is_eckart_young_optimal(rank):
    m, _ = _decaying(np.random.default_rng(rank))
    lr = tfa.svd(m.astype(np.float32), rank)
    err = float(tfa.relative_error(m, lr.to_dense()))
    assert err == pytest.approx(_optimal_error(m, rank), rel=1e-4)
    s_ref = np.linalg.svd(m, compute_uv=False)[:rank]
    np.testing.assert_allclose(np.asarray(lr.s), s_ref, rtol=1e-4)


def test_randomized_svd_within_one_percent_of_optimal():
    m, _ = _decaying(np.random.default_rng(0), 300, 200, decay=0.97)
    for rank in (10, 40):
        lr = tfa.svd(m.astype(np.float32), rank, method="randomized", key=KEY)
        err = float(tfa.relative_error(m, lr.to_dense()))
        assert err <= 1.01 * _optimal_error(m, rank)


def test_power_iterations_help_on_a_flat_spectrum():
    m, _ = _decaying(np.random.default_rng(1), 300, 200, decay=0.995)
    errs = [float(tfa.relative_error(m, tfa.svd(m.astype(np.float32), 20, method="randomized",
                                                  key=KEY, n_power_iter=q).to_dense()))
            for q in (0, 3)]
    assert errs[1] < errs[0]
    assert errs[1] <= 1.02 * _optimal_error(m, 20)


@pytest.mark.parametrize("method", ["exact", "randomized"])
def test_orthonormal_factors(method):
    m, _ = _decaying(np.random.default_rng(2))
    lr = tfa.svd(m.astype(np.float32), 12, method=method, key=KEY)
    np.testing.assert_allclose(lr.u.T @ lr.u, np.eye(12), atol=1e-5)
    np.testing.assert_allclose(lr.vt @ lr.vt.T, np.eye(12), atol=1e-5)
    assert np.all(np.diff(np.asarray(lr.s)) <= 1e-6) and np.all(np.asarray(lr.s) >= 0)


def test_gradient_through_exact_svd_reconstruction():
    m, _ = _decaying(np.random.default_rng(4), 10, 8, decay=0.5)
    m = jnp.asarray(m, jnp.float32)
    g = jax.grad(lambda x: jnp.sum(tfa.svd(x, 3).to_dense() ** 2))(m)
    assert g.shape == m.shape and bool(jnp.all(jnp.isfinite(g)))
    # d/dM ‖P_3 M‖² = 2 P_3 M for the projection onto the top-3 singular subspace
    np.testing.assert_allclose(g, 2 * tfa.svd(m, 3).to_dense(), atol=1e-3)


def test_svd_bad_input():
    m = jnp.ones((6, 4))
    with pytest.raises(ValueError, match=r"rank = 5 is larger than min\(m.shape\) = 4"):
        tfa.svd(m, 5)
    with pytest.raises(ValueError, match=r"rank must be a positive integer, got 0"):
        tfa.svd(m, 0)
    with pytest.raises(ValueError, match=r"m must be a 2-D matrix, got shape \(6,\)"):
        tfa.svd(jnp.ones(6), 1)
    with pytest.raises(ValueError, match=r"key is required for method=\"randomized\""):
        tfa.svd(m, 2, method="randomized")
    with pytest.raises(ValueError, match=r"method must be one of"):
        tfa.svd(m, 2, method="qr")
    with pytest.raises(ValueError, match=r"oversample must be a non-negative integer, got -1"):
        tfa.svd(m, 2, method="randomized", key=KEY, oversample=-1)
    with pytest.raises(ValueError, match=r"m contains 1 NaN or Inf"):
        tfa.svd(m.at[0, 0].set(jnp.nan), 2)


def test_low_rank_matrix_type():
    rng = np.random.default_rng(5)
    u, v, s = rng.standard_normal((7, 3)), rng.standard_normal((3, 5)), rng.uniform(1, 2, 3)
    lr = tfa.LowRankMatrix(u, s, v)
    dense = (u * s) @ v
    assert lr.shape == (7, 5) and lr.rank == 3 and lr.n_params == 7 * 3 + 3 + 3 * 5
    np.testing.assert_allclose(lr.to_dense(), dense, rtol=1e-5)
    np.testing.assert_allclose(lr.norm(), np.linalg.norm(dense), rtol=1e-5)  # not orthonormal
    x, y = rng.standard_normal(5), rng.standard_normal((2, 7))
    np.testing.assert_allclose(lr @ x, dense @ x, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y @ lr, y @ dense, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(jnp.asarray(y) @ lr, y @ dense, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(lr.T.to_dense(), dense.T, rtol=1e-5)
    left, right = lr.factors()
    np.testing.assert_allclose(left @ right, dense, rtol=1e-5)
    out = jax.jit(lambda t: t)(lr)
    assert isinstance(out, tfa.LowRankMatrix) and out.shape == (7, 5)
    assert tfa.LowRankMatrix(u, None, v).s.shape == (3,)
    with pytest.raises(ValueError, match=r"u must be \(m, r\) and vt \(r, n\)"):
        tfa.LowRankMatrix(u, s, v.T)
    with pytest.raises(ValueError, match=r"s must have shape \(3,\)"):
        tfa.LowRankMatrix(u, s[:2], v)
    with pytest.raises(ValueError, match=r"x must have 5 rows"):
        lr @ np.ones(4)


def test_randomized_svd_resolves_six_decades():
    """Singular values 1 … 1e-6 of a rank-7 matrix, all to 1% (float32 data: the last is only
    known to ~1e-3): the power iterations' Cholesky orthonormalisation must not lose the weak
    directions (one shifted pass gave 0.16× from 1e-4 down, two passes 0.7× at 1e-5), and the
    sketch's exactly zero directions must not break it."""
    rng = np.random.default_rng(5)
    u, _ = np.linalg.qr(rng.standard_normal((128, 7)))
    v, _ = np.linalg.qr(rng.standard_normal((96, 7)))
    s = 10.0 ** -np.arange(7)
    lr = tfa.svd(((u * s) @ v.T).astype(np.float32), 7, method="randomized", key=KEY)
    np.testing.assert_allclose(np.asarray(lr.s), s, rtol=1e-2)
    np.testing.assert_allclose(lr.u.T @ lr.u, np.eye(7), atol=1e-5)


@pytest.mark.parametrize("kind", ["zero", "ones", "rank2", "square"])
def test_randomized_factors_are_orthonormal_whatever_the_rank(kind):
    """The Cholesky orthonormalisation completes the sketch's empty directions (as a Householder
    QR would): u and vt are orthonormal on a zero, an all-ones (whose sketch is exactly rank 1
    in floating point), an exactly rank-2 and a square matrix, and the fit is still right."""
    rng = np.random.default_rng(3)
    m = {"zero": np.zeros((50, 40)), "ones": np.ones((50, 40)),
         "rank2": rng.standard_normal((50, 2)) @ rng.standard_normal((2, 40)),
         "square": rng.standard_normal((12, 12))}[kind].astype(np.float32)
    lr = tfa.svd(m, 5, method="randomized", key=KEY)
    np.testing.assert_allclose(lr.u.T @ lr.u, np.eye(5), atol=1e-5)
    np.testing.assert_allclose(lr.vt @ lr.vt.T, np.eye(5), atol=1e-5)
    s_ref = np.linalg.svd(m.astype(np.float64), compute_uv=False)[:5]
    np.testing.assert_allclose(np.asarray(lr.s), s_ref, atol=1e-5 * max(s_ref[0], 1), rtol=2e-2)
