"""Scale: the tensor-train family on data from 1e-30 to 1e30 in float32.

``tt`` (fixed ranks, ``eps`` eagerly and under jit), ``tt_matrix``, ``tt_round`` and
``tensor_ring`` (TR-SVD and TR-ALS) must give ``fit(c·x) = c·fit(x)`` and the same, true, error;
``TTTensor.norm``, ``TTMatrix.norm``, ``TRTensor.norm`` and ``tt_inner`` must be finite whenever
the result is representable, however the scale is spread over the cores. References: NumPy
float64 (dense reconstructions from the cores, errors) and the unscaled fit.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorfact as tfa
from _helpers import rel

SCALES = [1e-30, 1e-20, 1e20, 1e30]
# the scales the issue names, and any power of ten in between (float32 throughout)
SCALE = st.sampled_from(SCALES) | st.floats(-30.0, 30.0).map(lambda e: 10.0 ** e)

SHAPE, RANKS = (5, 6, 7), (1, 3, 3, 1)
EPS = 0.05  # between the noise (1%) and the signal: eps picks the planted ranks


def np_train(cores):
    """The chain of cores contracted over its inner bonds, in float64: ``(r_0, n.., r_d)``."""
    out = np.asarray(cores[0], np.float64)
    for g in cores[1:]:
        out = np.tensordot(out, np.asarray(g, np.float64), axes=(-1, 0))
    return out


def np_ring(cores):
    return np.trace(np_train(cores), axis1=0, axis2=-1)


def cores_of(seed, shape, ranks, ring=False):
    rng = np.random.default_rng(seed)
    d = len(shape)
    nxt = (lambda k: ranks[(k + 1) % d]) if ring else (lambda k: ranks[k + 1])
    return [rng.standard_normal((ranks[k], n, nxt(k))) / math.sqrt(ranks[k] * n)
            for k, n in enumerate(shape)]


def noisy(dense, seed, level=0.01):
    noise = np.random.default_rng(seed).standard_normal(dense.shape)
    return (dense + level * np.linalg.norm(dense) / np.linalg.norm(noise) * noise).astype(
        np.float32)


X = noisy(np_train(cores_of(0, SHAPE, RANKS))[0, ..., 0], 1)
W = np.random.default_rng(2).standard_normal((12, 20)).astype(np.float32)
TR_SHAPE, TR_RANKS = (6, 7, 8), (2, 2, 2)
XR = noisy(np_ring(cores_of(3, TR_SHAPE, TR_RANKS, ring=True)), 4)


def scaled(a, c):
    """``c · a`` computed in float32, as a user would have it."""
    return jnp.asarray(a, jnp.float32) * jnp.float32(c)


def f64(a):
    return np.asarray(a, np.float64)


@pytest.fixture(scope="module")
def base():
    """The unscaled fits, the references of the scaled ones."""
    jitted = jax.jit(lambda x: tfa.tt(x, eps=EPS, max_rank=6))
    return dict(
        tt=f64(tfa.tt(X, RANKS).to_dense()),
        eps=tfa.tt(X, eps=EPS),
        eps_jit=jitted,
        matrix=f64(tfa.tt_matrix(W, (3, 4), (4, 5), 3).to_dense()),
        tr_svd=tfa.tensor_ring(XR, TR_RANKS, return_info=True),
        tr_als=tfa.tensor_ring(XR, TR_RANKS, method="als", n_iter=5, tol=0, return_info=True),
    )


@settings(max_examples=8, deadline=None)
@given(c=SCALE)
def test_tt_is_scale_equivariant(base, c):
    x = scaled(X, c)
    dense = f64(tfa.tt(x, RANKS).to_dense())
    assert np.all(np.isfinite(dense))
    assert rel(base["tt"], dense / c) < 1e-5
    assert rel(f64(x), dense) == pytest.approx(rel(X, base["tt"]), rel=1e-4)


@settings(max_examples=8, deadline=None)
@given(c=SCALE)
def test_tt_eps_bound_holds_at_every_scale_eagerly_and_under_jit(base, c):
    x = scaled(X, c)
    eager = tfa.tt(x, eps=EPS)
    assert eager.rank == base["eps"].rank == RANKS  # the planted ranks, whatever the scale
    assert rel(f64(x), eager.to_dense()) <= EPS
    jitted = base["eps_jit"](x)
    assert jitted.rank == (1, 5, 6, 1) and jitted.trim().rank == RANKS  # static cap, padding
    assert rel(f64(x), jitted.to_dense()) <= EPS
    assert rel(f64(eager.to_dense()), jitted.to_dense()) < 1e-5


@settings(max_examples=8, deadline=None)
@given(c=SCALE)
def test_tt_matrix_is_scale_equivariant(base, c):
    w = scaled(W, c)
    dense = f64(tfa.tt_matrix(w, (3, 4), (4, 5), 3).to_dense())
    assert rel(base["matrix"], dense / c) < 1e-5
    assert rel(f64(w), dense) == pytest.approx(rel(W, base["matrix"]), rel=1e-4)


@settings(max_examples=8, deadline=None)
@given(c=SCALE)
def test_tt_round_is_scale_equivariant_however_the_scale_is_spread(c):
    """The scale c on one core, and split as (c^½·1e10, c^½·1e-10, 1) over the cores: there
    the QR of a core of entries 1e25 moves an R of that size into a core of entries 1e-5."""
    cores = [jnp.asarray(g, jnp.float32) for g in cores_of(5, SHAPE, RANKS)]
    ref = np_train(cores)[0, ..., 0]
    half = math.sqrt(c)
    for factors in [(c, 1.0, 1.0), (1.0, 1.0, c), (half * 1e10, half * 1e-10, 1.0)]:
        t = tfa.TTTensor([g * jnp.float32(f) for g, f in zip(cores, factors)])
        twice = t + t
        rounded = tfa.tt_round(twice, eps=1e-5)
        assert rounded.rank == RANKS
        dense = f64(rounded.to_dense())
        assert rel(2 * ref, dense / c) < 1e-5
        fixed = tfa.tt_round(twice, 2)
        assert rel(f64(twice.to_dense()), fixed.to_dense()) < 0.9  # finite, and a real cut
        assert np.all(np.isfinite(f64(fixed.to_dense())))


@settings(max_examples=8, deadline=None)
@given(c=SCALE)
def test_tensor_ring_is_scale_equivariant(base, c):
    x = scaled(XR, c)
    for method, kw in [("svd", {}), ("als", dict(n_iter=5, tol=0))]:
        ring, info = tfa.tensor_ring(x, TR_RANKS, method=method, return_info=True, **kw)
        ref_ring, ref_info = base[f"tr_{method}"]
        dense = f64(ring.to_dense())
        assert np.all(np.isfinite(dense))
        assert rel(f64(ref_ring.to_dense()), dense / c) < 1e-4, method
        true_error = rel(f64(x), dense)
        assert float(info.rel_error) == pytest.approx(true_error, rel=1e-3), method
        assert float(info.rel_error) == pytest.approx(float(ref_info.rel_error), rel=1e-3)
        assert 0.005 < true_error < 0.5  # a real (noise-level) error, not 0


@pytest.mark.parametrize("factors", [
    (1e25, 1e-10, 1e5),     # scale 1e20: the squared norm (1e40) overflows float32
    (1e-25, 1e-10, 1e5),    # scale 1e-30: the squared norm (1e-60) underflows
    (1e25, 1e25, 1e-35),    # scale 1e15: partial products of 1e50 in the sweep
])
def test_norms_and_inner_products_of_spread_scales(factors):
    scale = math.prod(factors)
    representable = 1e-37 < scale ** 2 < 1e38  # the squared norm itself (float32)
    tt_cores = [g.astype(np.float32) for g in cores_of(6, SHAPE, RANKS)]
    ref = np_train(tt_cores)[0, ..., 0]
    t = tfa.TTTensor([jnp.asarray(g) * jnp.float32(f) for g, f in zip(tt_cores, factors)])
    assert float(t.norm()) == pytest.approx(np.linalg.norm(ref) * scale, rel=1e-5, abs=0)
    # ⟨t, t / scale²⟩ = ‖ref‖²: representable, though each factor is not
    inv = tfa.TTTensor([jnp.asarray(g) / jnp.float32(f) for g, f in zip(tt_cores, factors)])
    assert float(tfa.tt_inner(t, inv)) == pytest.approx(np.sum(ref * ref), rel=1e-5, abs=0)
    if representable:
        expected = np.sum(ref * ref) * scale ** 2
        assert float(tfa.tt_inner(t, t)) == pytest.approx(expected, rel=1e-5, abs=0)
    # a TT-matrix: the same cores with the mode split as (1, n)
    tm = tfa.TTMatrix([g.reshape(g.shape[0], 1, g.shape[1], g.shape[2]) for g in t.cores])
    assert float(tm.norm()) == pytest.approx(np.linalg.norm(ref) * scale, rel=1e-5, abs=0)
    # a ring
    tr_cores = [g.astype(np.float32) for g in cores_of(7, SHAPE, (2, 3, 2), ring=True)]
    ring_ref = np_ring(tr_cores)
    ring = tfa.TRTensor([jnp.asarray(g) * jnp.float32(f) for g, f in zip(tr_cores, factors)])
    expected = np.linalg.norm(ring_ref) * scale
    assert float(ring.norm()) == pytest.approx(expected, rel=1e-5, abs=0)
    ring_inv = tfa.TRTensor([jnp.asarray(g) / jnp.float32(f) for g, f in zip(tr_cores, factors)])
    assert float(ring.inner(ring_inv)) == pytest.approx(np.sum(ring_ref ** 2), rel=1e-5,
                                                        abs=0)
    if representable:
        expected = np.sum(ring_ref ** 2) * scale ** 2
        assert float(ring.inner(ring)) == pytest.approx(expected, rel=1e-5, abs=0)


def test_norm_gradients_are_finite_at_zero_and_exact_elsewhere():
    zero = tfa.TTTensor([jnp.zeros((1, 3, 2)), jnp.zeros((2, 4, 1))])
    g = jax.grad(lambda t: t.norm())(zero)
    assert all(np.all(np.asarray(c) == 0) for c in g.cores)
    ring0 = tfa.TRTensor([jnp.zeros((2, 3, 2)), jnp.zeros((2, 4, 2))])
    g = jax.grad(lambda t: t.norm())(ring0)
    assert all(np.all(np.asarray(c) == 0) for c in g.cores)
    # elsewhere: d‖t‖/dt = t/‖t‖ mapped to the cores, as through the dense tensor
    t = tfa.TTTensor([jnp.asarray(g, jnp.float32) * 1e15 for g in cores_of(8, (3, 4), (1, 2, 1))])
    g = jax.grad(lambda t: t.norm())(t)
    gd = jax.grad(lambda t: jnp.linalg.norm(t.to_dense() / 1e15) * 1e15)(t)
    for a, b in zip(g.cores, gd.cores):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * float(jnp.abs(b).max()))
