"""Stochastic GCP of sparse (BCOO) tensors: the stratified sampler's gradient estimate against
the exact gradient (NumPy-free: the dense loss by JAX on a tiny tensor), recovery of a planted
sparse Poisson model (FMS against the planted factors), Bernoulli on sparse binary data against
the constant model, the memory of a large fit read from its jaxpr, and the argument errors.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tensorfact as tfa
from tensorfact.decomposition._gcp import (EPS, LOSSES, _is_stored, _lex_sorted,
                                           _sampled_loss, _stratified_sample)


def factor_match_score(true, fitted):
    """Mean over components of ``∏_n |cos(a_nr, b_nπ(r))|`` at the best permutation ``π``."""
    rank = true[0].shape[1]
    cos = np.ones((rank, rank))
    for a, b in zip(true, fitted):
        a = np.asarray(a, np.float64)
        b = np.asarray(b, np.float64)
        cos = cos * np.abs((a / np.linalg.norm(a, axis=0)).T @ (b / np.linalg.norm(b, axis=0)))
    return max(np.mean(cos[np.arange(rank), list(p)])
               for p in itertools.permutations(range(rank)))


def to_bcoo(x):
    x = np.asarray(x)
    idx = np.argwhere(x != 0)
    return tfa.sparse_tensor(idx, x[tuple(idx.T)].astype(np.float32), x.shape)


def test_is_stored_against_numpy():
    rng = np.random.default_rng(0)
    shape = (7, 5, 9)
    idx = np.unique(rng.integers(0, 5, (40, 3)) % np.array(shape), axis=0)
    rng.shuffle(idx)
    sorted_idx, _ = _lex_sorted(jnp.asarray(idx, jnp.int32))
    queries = np.concatenate([idx[:10], rng.integers(0, 5, (200, 3))])
    got = np.asarray(_is_stored(sorted_idx, jnp.asarray(queries, jnp.int32)))
    stored = {tuple(r) for r in idx}
    np.testing.assert_array_equal(got, [tuple(r) in stored for r in queries])


@pytest.mark.parametrize("loss", ["gaussian", "bernoulli"])
def test_stratified_gradient_is_unbiased(loss):
    """The mean over many keys of the sampled gradient equals the exact gradient of the mean
    loss over all entries; weights off by 2× on either stratum would miss by far more."""
    rng = np.random.default_rng(1)
    shape, rank = (6, 7, 8), 2
    x = (rng.random(shape) < 0.1).astype(np.float32) * (1.0 if loss == "bernoulli"
                                                           else rng.normal(size=shape))
    bcoo = to_bcoo(x)
    factors = tuple(jnp.asarray(rng.uniform(0.2, 1.0, (n, rank)), jnp.float32) for n in shape)
    f = LOSSES[loss].f

    def dense_loss(fs):
        m = jnp.einsum("ir,jr,kr->ijk", *fs)
        return jnp.mean(f(jnp.asarray(x), m, 1.0))

    exact = jax.grad(dense_loss)(factors)
    sorted_idx, order = _lex_sorted(bcoo.indices)
    values = bcoo.data[order]

    def estimate(key, nz_scale, z_scale):
        coords, xv, w = _stratified_sample(key, values, sorted_idx, shape, 15, 25)
        p = xv.shape[0] - 25
        w = w.at[:p].multiply(nz_scale).at[p:].multiply(z_scale)
        return jax.grad(_sampled_loss, argnums=1)(lambda a, b: f(a, b, 1.0), factors,
                                                   (coords, xv, w))

    keys = jax.random.split(jax.random.key(2), 20000)

    def rel_dev(nz_scale, z_scale):
        mean = jax.vmap(lambda k: estimate(k, nz_scale, z_scale))(keys)
        num = sum(float(jnp.sum((jnp.mean(g, 0) - e) ** 2)) for g, e in zip(mean, exact))
        den = sum(float(jnp.sum(e ** 2)) for e in exact)
        return math.sqrt(num / den)

    assert rel_dev(1.0, 1.0) < 0.03
    assert rel_dev(2.0, 1.0) > 0.1
    assert rel_dev(1.0, 2.0) > 0.1


def test_poisson_stochastic_recovers_planted_sparse_counts():
    rng = np.random.default_rng(3)
    shape, rank = (40, 45, 50), 3
    true = []
    for n in shape:  # each component lives on its own block of every mode: sparse rates
        a = np.zeros((n, rank))
        for r in range(rank):
            lo = r * n // rank
            a[lo:lo + n // rank, r] = rng.uniform(0.5, 1.5, n // rank)
        true.append(a)
    rates = np.einsum("ir,jr,kr->ijk", *true) * 3.0
    x = rng.poisson(rates).astype(np.float32)
    bcoo = to_bcoo(x)
    assert bcoo.nse < 0.1 * x.size
    fit, info = tfa.gcp(bcoo, rank, loss="poisson", init="random", key=jax.random.key(0),
                        n_samples=(1000, 1000), n_iter=1500, tol=0, learning_rate=3e-2,
                        return_info=True)
    assert factor_match_score(true, fit.factors) >= 0.9
    m = np.asarray(fit.to_dense(), np.float64)
    exact = np.mean(m - x * np.log(m + EPS))
    # the recorded losses estimate F on a fixed sample: close to the exact loss at the end
    assert abs(float(info.losses[-1]) - exact) < 0.1 * abs(exact) + 1e-3
    # rel_error is exact for the identity-mean losses (from the Grams, never densified)
    np.testing.assert_allclose(float(info.rel_error),
                               np.linalg.norm(x - m) / np.linalg.norm(x), rtol=1e-3)
    assert m.min() >= 0


def test_bernoulli_stochastic_beats_the_constant_model():
    rng = np.random.default_rng(4)
    shape, rank = (30, 35, 40), 2
    true = [rng.uniform(0, 1, (n, rank)) * (rng.random((n, rank)) < 0.4) for n in shape]
    odds = np.einsum("ir,jr,kr->ijk", *true) * 2.0
    x = (rng.random(shape) < odds / (1 + odds)).astype(np.float32)
    fit = tfa.gcp(to_bcoo(x), rank, loss="bernoulli", init="random", key=jax.random.key(1),
                  n_samples=2000, n_iter=1000, tol=1e-4)
    m = np.asarray(fit.to_dense(), np.float64)
    ours = np.mean(np.log1p(m) - x * np.log(m + EPS))
    rho = x.mean()                         # the best constant model: odds rho / (1 - rho)
    c = rho / (1 - rho)
    constant = np.mean(np.log1p(c) - x * np.log(c))
    assert np.all(np.isfinite(m)) and m.min() >= 0
    assert ours < constant - 0.02 * abs(constant)


def _largest_array(jaxpr):
    best = max([math.prod(v.aval.shape) for v in jaxpr.invars] or [0])
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            best = max(best, math.prod(getattr(v.aval, "shape", ())))
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (list, tuple)) else [p]):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    best = max(best, _largest_array(inner))
    return best


def test_memory_scales_with_nonzeros_and_samples():
    shape = (2000, 2000, 500)
    rng = np.random.default_rng(5)
    idx = np.stack([rng.integers(0, n, 20000) for n in shape], axis=1)
    x = tfa.sparse_tensor(idx, rng.poisson(2.0, 20000) + 1.0, shape)

    def fit(data):
        return tfa.gcp(jax.experimental.sparse.BCOO((data, x.indices), shape=shape), 4,
                       loss="poisson", init="random", key=jax.random.key(0),
                       n_samples=4000, n_iter=10, tol=1e-4, return_info=True)

    largest = _largest_array(jax.make_jaxpr(fit)(x.data).jaxpr)
    assert largest < 1e7
    assert largest >= x.nse  # the nonzeros themselves are there


def test_errors():
    x = to_bcoo(np.eye(4)[:, :, None] * np.ones(3))
    key = jax.random.key(0)
    for loss in ("gamma", "rayleigh"):
        with pytest.raises(ValueError, match="needs x > 0"):
            tfa.gcp(x, 2, loss=loss, init="random", key=key, n_samples=10)
    for bad in (0, 1, -3, 2.5, (5,), (5, 0), (1, 2, 3)):
        with pytest.raises(ValueError, match="n_samples"):
            tfa.gcp(x, 2, loss="poisson", init="random", key=key, n_samples=bad)
    with pytest.raises(ValueError, match="key"):
        tfa.gcp(x, 2, loss="poisson", init="random", n_samples=10)
    with pytest.raises(ValueError, match='"lbfgs" needs the full gradient'):
        tfa.gcp(x, 2, loss="poisson", init="random", key=key, n_samples=10, optimizer="lbfgs")
    with pytest.raises(ValueError, match="x must be nonnegative"):
        tfa.gcp(-x, 2, loss="poisson", init="random", key=key, n_samples=10)


def test_stochastic_tol_stops_on_the_estimate():
    """With ``tol > 0`` a stochastic fit (dense or sparse) stops once its estimated loss has
    failed to improve ``MAX_FAILS`` times in a row: before ``n_iter``, ``converged`` True."""
    rng = np.random.default_rng(6)
    x = rng.poisson(2.0, (8, 9, 10)).astype(np.float32)
    for data in (x, to_bcoo(x)):
        _, info = tfa.gcp(data, 2, loss="poisson", init="random", key=jax.random.key(0),
                          n_samples=200, n_iter=3000, tol=1e-3, return_info=True)
        n = int(info.n_iter)
        assert n < 3000 and bool(info.converged)
        assert np.all(np.isfinite(np.asarray(info.losses)[:n]))
        assert np.all(np.isnan(np.asarray(info.losses)[n:]))
