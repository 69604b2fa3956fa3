"""cmtf (coupled matrix–tensor factorization by ALS): against TensorLy 0.10's
``coupled_matrix_tensor_3d_factorization`` on the same noisy data (fit no worse), recovery of a
planted coupled model (any coupled mode, a 4-way tensor), joint scale equivariance, the weight
of the matrix term, and errors for bad input."""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import tensorly as tl
from tensorly.decomposition import coupled_matrix_tensor_3d_factorization

import tensorfact as tfa


def _coupled(shape=(10, 11, 12), cols=8, rank=3, mode=0, noise=0.0, seed=1):
    rng = np.random.default_rng(seed)
    factors = [rng.normal(size=(s, rank)) for s in shape]
    v = rng.normal(size=(cols, rank))
    x = tl.cp_to_tensor((None, factors))
    y = factors[mode] @ v.T
    if noise:
        x = x + noise * rng.normal(size=x.shape)
        y = y + noise * rng.normal(size=y.shape)
    return x, y, factors, v


def _sq(a, b):
    return float(np.sum((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def test_no_worse_than_tensorly():
    x, y, _, _ = _coupled(noise=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tx, ty, _ = coupled_matrix_tensor_3d_factorization(x, y, 3, n_iter_max=30, tol=0)
    ref = _sq(x, tl.cp_to_tensor(tx)) + _sq(y, tl.cp_to_tensor(ty))
    (ox, oy), info = tfa.cmtf(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), 3,
                              n_iter=30, tol=0, return_info=True)
    ours = _sq(x, ox.to_dense()) + _sq(y, oy.to_dense())
    assert ours <= ref * (1 + 1e-4), (ours, ref)  # the same ALS: equal up to float32
    np.testing.assert_allclose(float(info.rel_error),
                               np.sqrt(ours / (np.sum(x ** 2) + np.sum(y ** 2))), rtol=1e-3)
    np.testing.assert_allclose(float(info.rel_error_x),
                               np.sqrt(_sq(x, ox.to_dense()) / np.sum(x ** 2)), rtol=1e-3)
    np.testing.assert_allclose(float(info.rel_error_y),
                               np.sqrt(_sq(y, oy.to_dense()) / np.sum(y ** 2)), rtol=1e-3)
    # the shared factor is the same array in both results, with unit columns
    np.testing.assert_array_equal(np.asarray(ox.factors[0]), np.asarray(oy.factors[0]))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(oy.factors[1]), axis=0), 1, rtol=1e-5)


def _congruence(a, b):
    a = a / np.linalg.norm(a, axis=0)
    b = b / np.linalg.norm(b, axis=0)
    c = np.abs(a.T @ b)
    return c.max(axis=1).min()  # every true column matched by a fitted one


@pytest.mark.parametrize("shape, mode", [((6, 7, 8), 0), ((5, 6, 4, 7), -2)],
                         ids=["3way-mode0", "4way-mode2"])
def test_recovers_a_planted_coupled_model(shape, mode):
    x, y, factors, v = _coupled(shape, cols=5, rank=2, mode=mode % len(shape), seed=3)
    (ox, oy), info = tfa.cmtf(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), 2,
                              coupled_mode=mode, return_info=True)
    assert float(info.rel_error_x) < 1e-4 and float(info.rel_error_y) < 1e-4
    assert bool(info.converged)
    c = mode % len(shape)
    assert _congruence(factors[c], np.asarray(ox.factors[c], np.float64)) > 0.999
    assert _congruence(v, np.asarray(oy.factors[1], np.float64)) > 0.999


def test_joint_scaling_is_equivariant():
    x, y, _, _ = _coupled((5, 6, 7), cols=4, rank=2, noise=0.05)
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    bx, by = tfa.cmtf(x, y, 2, n_iter=20, tol=0)
    for c in (1e-30, 1e30):
        c = np.float32(c)
        sx, sy = tfa.cmtf(x * c, y * c, 2, n_iter=20, tol=0)
        for ours, base in ((sx, bx), (sy, by)):
            ref = np.asarray(base.to_dense(), np.float64)
            np.testing.assert_allclose(np.asarray(ours.to_dense(), np.float64) / c, ref,
                                       rtol=1e-3, atol=1e-3 * np.abs(ref).max())


def test_matrix_weight_shifts_the_balance():
    """A heavier matrix term fits y better at the tensor's expense (noisy, under-ranked data,
    where the two compete)."""
    x, y, _, _ = _coupled((6, 7, 8), cols=6, rank=3, noise=0.3, seed=5)
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    _, light = tfa.cmtf(x, y, 1, matrix_weight=0.01, n_iter=50, tol=0, return_info=True)
    _, heavy = tfa.cmtf(x, y, 1, matrix_weight=100.0, n_iter=50, tol=0, return_info=True)
    assert float(heavy.rel_error_y) < float(light.rel_error_y)
    assert float(heavy.rel_error_x) > float(light.rel_error_x)


def test_bad_input():
    x = jnp.ones((4, 5, 6))
    with pytest.raises(ValueError, match=r"y must have x.shape\[1\] = 5 rows"):
        tfa.cmtf(x, jnp.ones((4, 3)), 2, coupled_mode=1)
    with pytest.raises(ValueError, match="y must be a matrix"):
        tfa.cmtf(x, jnp.ones((4, 3, 2)), 2)
    with pytest.raises(ValueError, match="coupled_mode"):
        tfa.cmtf(x, jnp.ones((4, 3)), 2, coupled_mode=3)
    with pytest.raises(ValueError, match="matrix_weight"):
        tfa.cmtf(x, jnp.ones((4, 3)), 2, matrix_weight=-1.0)
    with pytest.raises(ValueError, match="init"):
        tfa.cmtf(x, jnp.ones((4, 3)), 2, init=tfa.cp(x, 2))


def test_given_start_continues_the_fit():
    x, y, _, _ = _coupled((6, 7, 8), cols=5, rank=2, noise=0.05, seed=4)
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    first, info1 = tfa.cmtf(x, y, 2, n_iter=3, tol=0, return_info=True)
    _, info2 = tfa.cmtf(x, y, 2, init=first, n_iter=3, tol=0, return_info=True)
    _, info6 = tfa.cmtf(x, y, 2, n_iter=6, tol=0, return_info=True)
    assert float(info2.rel_error) <= float(info1.rel_error) + 1e-6
    np.testing.assert_allclose(float(info2.rel_error), float(info6.rel_error), rtol=1e-3)
