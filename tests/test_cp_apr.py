"""CP-APR (``tfa.cp_apr``, Chi & Kolda 2012): recovery of a planted Poisson model, the same
optimum as ``gcp(loss="poisson")``, the column-stochastic normalisation, scale and errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import tensorfact as tfa

SHAPE, RANK = (10, 12, 14), 3


def _planted(seed, mean=5.0):
    rng = np.random.default_rng(seed)
    factors = [rng.gamma(0.5, 1.0, (n, RANK)) for n in SHAPE]
    rates = np.einsum("ir,jr,kr->ijk", *factors)
    rates *= mean / rates.mean()
    return factors, rng.poisson(rates).astype(np.float32)


def _fms(true, fitted):
    cos = np.ones((RANK, RANK))
    for a, b in zip(true, fitted):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        cos = cos * np.abs((a / np.linalg.norm(a, axis=0)).T @ (b / np.linalg.norm(b, axis=0)))
    return max(np.mean(cos[np.arange(RANK), list(p)])
               for p in itertools.permutations(range(RANK)))


def _poisson_loss(x, m):
    x, m = np.asarray(x, np.float64), np.asarray(m, np.float64)
    return float(np.mean(m - x * np.log(m + 1e-10)))


def test_recovers_a_planted_model_at_the_gcp_optimum():
    factors, counts = _planted(0)
    fit, info = tfa.cp_apr(counts, RANK, return_info=True)
    assert bool(info.converged)
    assert _fms(factors, fit.factors) >= 0.95
    for a in fit.factors:  # nonnegative, column-stochastic
        a = np.asarray(a)
        assert a.min() >= 0
        np.testing.assert_allclose(a.sum(axis=0), 1, rtol=1e-5)
    model = np.asarray(fit.to_dense())
    np.testing.assert_allclose(float(info.rel_error),
                               np.linalg.norm(counts - model) / np.linalg.norm(counts), rtol=1e-4)
    # the same objective as gcp(loss="poisson"): the same optimum, to 1e-4 of the loss
    gcp = np.asarray(tfa.gcp(counts, RANK, loss="poisson").to_dense())
    np.testing.assert_allclose(_poisson_loss(counts, model), _poisson_loss(counts, gcp),
                               rtol=1e-4)


def test_scale_by_powers_of_two_is_exact():
    """Same factors, weights scaled by ``c`` (compared factor-wise: the dense model of a
    2^-100-scaled fit has subnormal entries in float32)."""
    _, counts = _planted(1)
    base = tfa.cp_apr(counts, RANK, return_info=True)[0]
    for c in (np.float32(2.0 ** -100), np.float32(2.0 ** 100)):
        fit = tfa.cp_apr(counts * c, RANK, return_info=True)[0]
        np.testing.assert_array_equal(np.asarray(fit.weights, np.float64) / c,
                                      np.asarray(base.weights, np.float64))
        for a, b in zip(fit.factors, base.factors):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_errors():
    with pytest.raises(ValueError, match="x must be nonnegative"):
        tfa.cp_apr(-np.ones(SHAPE), RANK)
    with pytest.raises(ValueError, match="key"):
        tfa.cp_apr(np.ones(SHAPE), RANK, init="random")
    with pytest.raises(ValueError, match="inner_iter"):
        tfa.cp_apr(np.ones(SHAPE), RANK, inner_iter=0)
