"""Generalized CP (``tfa.gcp``): the losses against NumPy float64 formulas, the Gaussian fit
against CP-ALS, recovery of planted Poisson and Bernoulli models, callable losses, masks, scale
and the argument errors.

Every fit here is 10 × 12 × 14 at rank 3 with ``return_info=True`` and the default ``n_iter``
and ``tol``, so the compiled fits are shared between tests (compilation dominates the time).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import sparse

import tensorfact as tfa
from tensorfact.decomposition._gcp import EPS, LOSSES

SHAPE, RANK = (10, 12, 14), 3


def factor_match_score(true, fitted):
    """Mean over components of ``∏_n |cos(a_nr, b_nπ(r))|`` at the best permutation ``π``
    (Acar et al.): 1 for identical components up to scale and order."""
    cos = np.ones((RANK, RANK))
    for a, b in zip(true, fitted):
        a = np.asarray(a, np.float64)
        b = np.asarray(b, np.float64)
        cos = cos * np.abs((a / np.linalg.norm(a, axis=0)).T @ (b / np.linalg.norm(b, axis=0)))
    return max(np.mean(cos[np.arange(RANK), list(p)])
               for p in itertools.permutations(range(RANK)))


def planted(seed, mean):
    """Nonnegative factors (Gamma(0.5) entries: sparse-ish, well separated) and the dense model
    scaled to the given mean entry, float64."""
    rng = np.random.default_rng(seed)
    factors = [rng.gamma(0.5, 1.0, (n, RANK)) for n in SHAPE]
    model = np.einsum("ir,jr,kr->ijk", *factors)
    return rng, factors, model * (mean / model.mean())


def numpy_loss(name, x, m, delta=1.0):
    x, m = np.asarray(x, np.float64), np.asarray(m, np.float64)
    if name == "gaussian":
        return (x - m) ** 2
    if name == "poisson":
        return m - x * np.log(m + EPS)
    if name == "poisson_log":
        return np.exp(m) - x * m
    if name == "bernoulli":
        return np.log(m + 1) - x * np.log(m + EPS)
    if name == "gamma":
        return x / (m + EPS) + np.log(m + EPS)
    if name == "rayleigh":
        return 2 * np.log(m + EPS) + np.pi / 4 * (x / (m + EPS)) ** 2
    r = np.abs(x - m)
    return np.where(r <= delta, 0.5 * r ** 2, delta * (r - 0.5 * delta))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_match_numpy_float64(name):
    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 3.0, 200)
    if name == "bernoulli":
        x = (x > 1.5).astype(np.float64)
    m = rng.uniform(0.05, 2.5, 200)
    got = LOSSES[name].f(jnp.asarray(x, jnp.float32), jnp.asarray(m, jnp.float32), 0.7)
    np.testing.assert_allclose(np.asarray(got), numpy_loss(name, x, m, 0.7), rtol=2e-5,
                               atol=2e-5)


def test_gaussian_reaches_the_als_fit():
    """Same noisy rank-3 data: the Gaussian GCP fit (L-BFGS) reaches CP-ALS's error to 1e-4
    (relative error about 0.1, both at the least-squares optimum)."""
    x = tfa.random_cp(jax.random.key(0), SHAPE, rank=RANK).to_dense()
    x = x + 0.1 * jnp.linalg.norm(x) / np.sqrt(x.size) * jax.random.normal(
        jax.random.key(1), SHAPE)
    _, als = tfa.cp(x, RANK, return_info=True)
    fit, info = tfa.gcp(x, RANK, return_info=True)
    assert float(info.rel_error) <= float(als.rel_error) + 1e-4
    # rel_error is the true error of the returned model, and losses end at its mean loss
    ref = np.asarray(x, np.float64)
    model = np.asarray(fit.to_dense(), np.float64)
    np.testing.assert_allclose(float(info.rel_error),
                               np.linalg.norm(ref - model) / np.linalg.norm(ref), rtol=1e-4)
    last = np.asarray(info.losses)[int(info.n_iter) - 1]
    np.testing.assert_allclose(last, np.mean((ref - model) ** 2), rtol=1e-3)


def test_poisson_recovers_a_planted_model_and_reports_the_loss_of_x():
    """Counts drawn from a planted rank-3 rate tensor (mean 5): the factor match score of the
    fit is ≥ 0.95, the model is nonnegative, and ``losses`` ends at the NumPy mean Poisson loss
    of the returned model on the counts as given (the fit ran on counts / 2^k)."""
    rng, factors, rates = planted(0, 5.0)
    counts = rng.poisson(rates).astype(np.float32)
    fit, info = tfa.gcp(counts, RANK, loss="poisson", return_info=True)
    assert factor_match_score(factors, fit.factors) >= 0.95
    model = np.asarray(fit.to_dense(), np.float64)
    assert model.min() >= 0
    last = np.asarray(info.losses)[int(info.n_iter) - 1]
    np.testing.assert_allclose(last, np.mean(numpy_loss("poisson", counts, model)), rtol=1e-4)
    # the fit beats the planted rates on its own data (it is the maximum-likelihood fit)
    assert last <= np.mean(numpy_loss("poisson", counts, rates)) + 1e-4


def test_bernoulli_fits_binary_data_as_well_as_the_truth():
    """Binary data from planted odds (odds link): the fitted negative log-likelihood is no worse
    than that of the true odds (maximum likelihood on the training data), far below the constant
    model's, and the fitted probabilities correlate with the true ones (≥ 0.85; 1680 binary
    entries do not pin down the factors themselves: FMS is about 0.8 here)."""
    rng, _, odds = planted(1, 1.0)
    prob = odds / (1 + odds)
    x = (rng.uniform(size=SHAPE) < prob).astype(np.float32)
    fit, _ = tfa.gcp(x, RANK, loss="bernoulli", return_info=True)
    m = np.asarray(fit.to_dense(), np.float64)
    nll = np.mean(numpy_loss("bernoulli", x, m))
    p0 = x.mean()
    constant = -np.mean(x * np.log(p0) + (1 - x) * np.log(1 - p0))
    assert nll <= np.mean(numpy_loss("bernoulli", x, odds)) + 1e-3
    assert nll < 0.8 * constant
    assert np.corrcoef((m / (1 + m)).ravel(), prob.ravel())[0, 1] >= 0.85


def test_callable_loss_equals_the_builtin():
    """``loss=lambda x, m: (x - m)**2`` follows the same path as ``"gaussian"`` (the data have
    max |x| in [1, 2), so the built-in's rescaling is by 1)."""
    x = np.asarray(tfa.random_cp(jax.random.key(2), SHAPE, rank=RANK).to_dense())
    x = x / 2.0 ** np.floor(np.log2(np.abs(x).max()))
    builtin, _ = tfa.gcp(x, RANK, return_info=True)
    custom, info = tfa.gcp(x, RANK, loss=lambda a, m: (a - m) ** 2, return_info=True)
    np.testing.assert_allclose(np.asarray(custom.to_dense()), np.asarray(builtin.to_dense()),
                               rtol=1e-5, atol=1e-6)
    assert float(info.rel_error) < 1e-3


def test_mask_ignores_the_masked_entries():
    """Changing the masked-out entries (to NaN, to 1e3) changes nothing; the fit recovers the
    low-rank tensor on the missing entries too."""
    x = np.asarray(tfa.random_cp(jax.random.key(3), SHAPE, rank=RANK).to_dense())
    mask = np.random.default_rng(3).uniform(size=SHAPE) < 0.6
    outs = []
    for fill in (0.0, np.nan, 1e3):
        fit, info = tfa.gcp(np.where(mask, x, fill), RANK, mask=mask, return_info=True)
        outs.append(np.asarray(fit.to_dense()))
    np.testing.assert_array_equal(outs[1], outs[0])
    np.testing.assert_array_equal(outs[2], outs[0])
    assert np.linalg.norm(outs[0] - x) / np.linalg.norm(x) < 1e-2


@pytest.mark.parametrize("loss", ["gaussian", "poisson"])
def test_result_is_independent_of_tensor_scale_where_the_loss_is(loss):
    """``gcp(c·x) = c·gcp(x)`` for the scale-equivariant losses: exactly for powers of two (the
    fit runs on the same ``x / 2^k``), and for other ``c`` (1e-30, 3.7, 1e30: the rescaled data
    differ by rounding, and a float32 L-BFGS stops where the loss stops changing, on a flat
    optimum for the Poisson loss) to 1e-2 in the model and 2% in the excess loss over the
    saturated model."""
    _, _, rates = planted(4, 500.0)  # counts near their rank-3 rates: a well-defined optimum
    x = np.random.default_rng(4).poisson(rates).astype(np.float32)
    base, info = tfa.gcp(x, RANK, loss=loss, return_info=True)
    base = np.asarray(base.to_dense(), np.float64)
    for c in (np.float32(2.0 ** -100), np.float32(2.0 ** 90)):
        fit, _ = tfa.gcp(x * c, RANK, loss=loss, return_info=True)
        np.testing.assert_array_equal(np.asarray(fit.to_dense(), np.float64) / c, base)
    for c in (np.float32(1e-30), np.float32(3.7), np.float32(1e30)):
        fit, info_c = tfa.gcp(x * c, RANK, loss=loss, return_info=True)
        out = np.asarray(fit.to_dense(), np.float64) / c
        np.testing.assert_allclose(out, base, rtol=1e-2, atol=1e-2 * np.abs(base).max())
        # the objective's excess over the saturated model (the deviance), to 2%
        np.testing.assert_allclose(excess(loss, x, out), excess(loss, x, base), rtol=2e-2)


def excess(loss, x, m):
    """Mean loss of ``m`` minus that of the saturated model ``m = x``, float64."""
    x = np.asarray(x, np.float64)
    return float(np.mean(numpy_loss(loss, x, m) - numpy_loss(loss, x, x)))


def test_bernoulli_is_not_scale_equivariant_and_says_so():
    """Binary data scaled are no longer binary: an error naming ``x``, not a silent fit."""
    with pytest.raises(ValueError, match="x must hold only 0 and 1"):
        tfa.gcp(np.full(SHAPE, 2.0, np.float32), RANK, loss="bernoulli")


def test_stochastic_poisson_gets_close_to_the_full_fit():
    """Stochastic GCP (Adam on 300 sampled entries per step, 400 steps) reaches a Poisson loss
    within 2% of the full L-BFGS fit's, and its factors match the planted ones (FMS ≥ 0.9)."""
    rng, factors, rates = planted(0, 5.0)
    counts = rng.poisson(rates).astype(np.float32)
    _, full = tfa.gcp(counts, RANK, loss="poisson", return_info=True)
    fit, info = tfa.gcp(counts, RANK, loss="poisson", n_samples=300, n_iter=400, tol=0,
                        key=jax.random.key(0), return_info=True)
    full_loss = np.asarray(full.losses)[int(full.n_iter) - 1]
    m = np.asarray(fit.to_dense(), np.float64)
    exact = np.mean(numpy_loss("poisson", counts, m))
    assert exact <= full_loss + 0.02 * abs(full_loss)
    # the recorded losses are estimates on a fixed sample of 4 × 300 entries; rel_error exact
    assert abs(np.asarray(info.losses)[-1] - exact) < 0.1 * abs(exact)
    np.testing.assert_allclose(float(info.rel_error),
                               np.linalg.norm(counts - m) / np.linalg.norm(counts), rtol=1e-3)
    assert factor_match_score(factors, fit.factors) >= 0.9
    # equivariant to powers of two exactly (the same samples, the same rescaled data)
    for c in (np.float32(2.0 ** -90), np.float32(2.0 ** 90)):
        scaled = tfa.gcp(counts * c, RANK, loss="poisson", n_samples=300, n_iter=400, tol=0,
                         key=jax.random.key(0), return_info=True)[0]
        np.testing.assert_array_equal(np.asarray(scaled.to_dense(), np.float64) / c,
                                      np.asarray(fit.to_dense(), np.float64))


@pytest.mark.parametrize("loss, x, match", [
    ("poisson", -np.ones(SHAPE), "x must be nonnegative"),
    ("poisson_log", -np.ones(SHAPE), "x must be nonnegative"),
    ("bernoulli", np.full(SHAPE, 0.5), "x must hold only 0 and 1"),
    ("gamma", np.zeros(SHAPE), "x must be positive"),
    ("rayleigh", -np.ones(SHAPE), "x must be positive"),
])
def test_data_outside_the_loss_domain_names_x(loss, x, match):
    with pytest.raises(ValueError, match=match):
        tfa.gcp(x, RANK, loss=loss)


def test_argument_errors():
    x = np.ones(SHAPE, np.float32)
    with pytest.raises(ValueError, match="loss must be one of.*'bernoulli'.*'gaussian'"):
        tfa.gcp(x, RANK, loss="logistic")
    with pytest.raises(ValueError, match="n_samples"):
        tfa.gcp(x, RANK, optimizer="lbfgs", n_samples=10, key=jax.random.key(0))
    with pytest.raises(ValueError, match="key is required"):
        tfa.gcp(x, RANK, n_samples=10)
    with pytest.raises(ValueError, match="learning_rate"):
        tfa.gcp(x, RANK, learning_rate=0.1)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        tfa.gcp(x, RANK, optimizer="sgd")
    with pytest.raises(ValueError, match="key"):
        tfa.gcp(x, RANK, init="random")
    with pytest.raises(ValueError, match="x contains 1 NaN"):
        tfa.gcp(np.where(np.arange(x.size).reshape(SHAPE) == 0, np.nan, x), RANK)


@pytest.mark.parametrize("loss", ["gaussian", "poisson"])
def test_sparse_bcoo_matches_the_dense_fit(loss):
    """A BCOO count tensor (19% nonzero) fitted from the nonzeros and the closed-form sum over
    the zeros reaches the dense fit's loss (same random start) to 1e-4; the dense tensor is
    never formed."""
    rng, _, rates = planted(0, 0.3)
    counts = rng.poisson(rates).astype(np.float32)
    key = jax.random.key(0)
    dense_fit, dense_info = tfa.gcp(counts, RANK, loss=loss, init="random", key=key,
                                    return_info=True)
    x = sparse.BCOO.fromdense(jnp.asarray(counts))
    fit, info = tfa.gcp(x, RANK, loss=loss, init="random", key=key, return_info=True)
    m = np.asarray(fit.to_dense(), np.float64)
    got = np.mean(numpy_loss(loss, counts, m))
    want = np.mean(numpy_loss(loss, counts, np.asarray(dense_fit.to_dense(), np.float64)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(info.losses)[int(info.n_iter) - 1], got, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(float(info.rel_error),
                               np.linalg.norm(counts - m) / np.linalg.norm(counts), rtol=1e-3)
    if loss == "poisson":
        assert m.min() >= 0


def test_sparse_bcoo_errors():
    x = sparse.BCOO.fromdense(jnp.eye(4)[:, :, None] * jnp.ones(3))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="sparse .*loss in"):
        tfa.gcp(x, 2, loss="bernoulli", init="random", key=key)
    with pytest.raises(ValueError, match='init="svd"'):
        tfa.gcp(x, 2)
    with pytest.raises(ValueError, match="needs x > 0"):
        tfa.gcp(x, 2, loss="gamma", init="random", key=key, n_samples=5)
    with pytest.raises(ValueError, match="x must be nonnegative"):
        tfa.gcp(-x, 2, loss="poisson", init="random", key=key)


def test_zero_data_give_the_zero_model():
    fit, info = tfa.gcp(np.zeros(SHAPE, np.float32), RANK, return_info=True)
    assert np.all(np.asarray(fit.to_dense()) == 0) and float(info.rel_error) == 0


def test_an_optax_transformation_is_used_as_given():
    """``optimizer=optax.sgd(...)`` (a NamedTuple, as every Optax transformation): plain
    gradient descent on the mean loss lowers it at every step here."""
    import optax

    x = tfa.random_cp(jax.random.key(5), SHAPE, rank=RANK).to_dense()
    _, info = tfa.gcp(x, RANK, optimizer=optax.sgd(0.5), n_iter=30, tol=0, return_info=True)
    losses = np.asarray(info.losses)
    assert np.all(np.diff(losses) < 0) and losses[-1] < 0.6 * losses[0]
