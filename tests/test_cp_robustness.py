"""No silent wrong answer from ``tensorfact.cp`` (issue 15): scale equivariance, over-ranked fits,
degeneracy reported in ``CPInfo``, finite gradients at degenerate inputs, non-finite and empty
inputs, the deterministic SVD start; and the scale-safe norms of ``CPTensor`` and ``metrics``.

References are independent of the library: NumPy float64, TensorLy, closed forms.
"""

from __future__ import annotations

import inspect
import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorfact as tfa
from tensorfact import _checks
from tensorfact.decomposition import _loop
from _helpers import rel

SHAPE = (6, 7, 8)
RANK = 3
SCALES = (1e-30, 1e-20, 1e20, 1e30)


def planted(seed, shape=SHAPE, rank=RANK, noise=0.05):
    clean = tfa.random_cp(jax.random.key(seed), shape, rank).to_dense()
    return tfa.noisy(jax.random.key(seed + 100), clean, noise) if noise else clean


@pytest.fixture(scope="module")
def data():
    x = planted(0)
    mask = jax.random.bernoulli(jax.random.key(1), 0.7, SHAPE)
    return x, mask


def nonneg_data(x):
    """A nonnegative tensor of nonnegative rank 3 near ``x``'s scale (rectified Gaussian factors:
    well conditioned, unlike uniform ones), 5% noise, clipped at zero."""
    keys = jax.random.split(jax.random.key(7), len(SHAPE))
    clean = tfa.CPTensor(None, [jnp.maximum(jax.random.normal(k, (n, RANK)), 0.0)
                                for k, n in zip(keys, SHAPE)]).to_dense()
    scale = jnp.max(jnp.abs(x)) / jnp.max(clean)  # carry x's magnitude (and its scale c)
    return jnp.maximum(tfa.noisy(jax.random.key(8), clean, 0.05), 0.0) * scale


# every CP variant whose scale behaviour the issue lists; each is one compiled program. A fixed
# number of sweeps: with a tolerance, the rounding of c·x may stop the fit one sweep earlier
VARIANTS = {
    "als": dict(n_iter=30, tol=0),
    "hals": dict(nonneg=True, n_iter=30, tol=0),
    "mask": dict(mask=True, n_iter=30, tol=0),
    "pallas": dict(impl="pallas", n_iter=6, tol=0),
    "l2": dict(l2=0.1, n_iter=20, tol=0),  # with normalized factors the ridge is equivariant
    "normalize_false": dict(normalize=False, n_iter=30, tol=0),
}


def fit_variant(x, mask, name):
    kw = dict(VARIANTS[name])
    if kw.pop("mask", False):
        kw["mask"] = mask
    if kw.get("nonneg"):
        x = nonneg_data(x)
    return tfa.cp(x, RANK, return_info=True, **kw)


def assert_scaled_fit(x, mask, name, c):
    """``cp(c·x) ≈ c·cp(x)``: the same weights times ``c`` (the factors of a normalized fit are
    scale-free), the same reported error, and that error is the true one (float64 NumPy)."""
    base, info = fit_variant(x, mask, name)
    scaled, info_c = fit_variant(jnp.float32(c) * x, mask, name)
    truth = np.asarray(nonneg_data(x) if VARIANTS[name].get("nonneg") else x, np.float64)
    dense_c = np.asarray(scaled.to_dense(), np.float64)
    assert np.all(np.isfinite(dense_c)) and np.any(dense_c != 0)
    np.testing.assert_allclose(dense_c / c, np.asarray(base.to_dense()), rtol=1e-3, atol=1e-4)
    assert float(info_c.rel_error) == pytest.approx(float(info.rel_error), rel=1e-3, abs=1e-6)
    m = np.asarray(mask) if name == "mask" else np.ones(SHAPE, bool)
    true_error = (np.linalg.norm(((truth * c - dense_c) / c)[m]) / np.linalg.norm(truth[m]))
    assert float(info_c.rel_error) == pytest.approx(true_error, rel=1e-3)
    assert 0.0 < float(info_c.rel_error) < 0.5  # a real fit, not a reported zero
    norms = np.asarray(info_c.component_norms, np.float64) / c
    np.testing.assert_allclose(norms, np.asarray(info.component_norms), rtol=1e-3)


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("c", SCALES)
def test_fit_is_scale_equivariant(data, name, c):
    assert_scaled_fit(*data, name, c)


@pytest.mark.parametrize("c", [1e-30, 1e-3, 1.0, 1e3, 1e30])
def test_ridge_of_unnormalized_factors_matches_tensorly(data, c):
    """With ``normalize=False`` the factors carry the scale and ``λ‖A_n‖²`` is not scale-free:
    the fit of ``x / 2^k`` must solve the problem posed for ``x`` itself. TensorLy's ALS with
    ``l2_reg`` (float64, the same start and number of sweeps) is the reference; at 1e-30 the
    ridge wins and both fits are (nearly) zero."""
    tl = pytest.importorskip("tensorly")
    from tensorly.decomposition import parafac
    tl.set_backend("numpy")
    x = np.asarray(data[0], np.float64) * c
    start = tfa.CPTensor(None, tfa.random_cp(jax.random.key(3), SHAPE, RANK).factors)
    ours = tfa.cp(jnp.asarray(x, jnp.float32), RANK, init=start, normalize=False, l2=0.1,
                  n_iter=20, tol=0).to_dense()
    theirs = parafac(x, RANK, init=(np.ones(RANK), [np.asarray(a, np.float64)
                                                    for a in start.factors]),
                     l2_reg=0.1, n_iter_max=20, tol=0)
    diff = np.linalg.norm(np.asarray(ours, np.float64) - tl.cp_to_tensor(theirs))
    assert diff <= 1e-3 * np.linalg.norm(x)


@settings(max_examples=12, deadline=None)
@given(exponent=st.floats(-30, 30), negative=st.booleans(),
       name=st.sampled_from(["als", "hals", "mask"]))
def test_property_scale_equivariance(data, exponent, negative, name):
    c = (-1.0 if negative and name != "hals" else 1.0) * 10.0 ** exponent
    x, mask = data
    if c < 0:  # a sign flips one factor: the reconstruction flips, the error does not change
        base, info = fit_variant(x, mask, name)
        flipped, info_c = fit_variant(jnp.float32(c) * x, mask, name)
        np.testing.assert_allclose(np.asarray(flipped.to_dense(), np.float64) / c,
                                   np.asarray(base.to_dense()), rtol=1e-3, atol=1e-4)
        assert float(info_c.rel_error) == pytest.approx(float(info.rel_error), rel=1e-3)
    else:
        assert_scaled_fit(x, mask, name, c)


def test_power_of_two_scales_are_exact(data):
    """Scaling by a power of two is exact in binary floating point, and so is the fit."""
    x = data[0]
    base = tfa.cp(x, RANK)
    for k in (-90, 90):
        scaled = tfa.cp(jnp.ldexp(x, k), RANK)
        np.testing.assert_array_equal(np.asarray(scaled.weights), np.asarray(
            jnp.ldexp(base.weights, k)))
        for a, b in zip(scaled.factors, base.factors):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cp_tensor_norm_does_not_overflow():
    factors = [jnp.asarray(np.random.default_rng(k).standard_normal((n, 2)), jnp.float32)
               for k, n in enumerate((3, 4, 5))]
    for w in ([1e20, 3e19], [1e-25, 2e-25], [1e30, 1e-30]):
        t = tfa.CPTensor(jnp.asarray(w, jnp.float32), factors)
        ref = np.linalg.norm(np.einsum("r,ir,jr,kr->ijk", np.asarray(w, np.float64),
                                       *[np.asarray(a, np.float64) for a in factors]))
        assert float(t.norm()) == pytest.approx(ref, rel=1e-5)
    # factors carrying huge scales (normalize=False fits) and a zero tensor
    big = tfa.CPTensor(None, [a * 1e12 for a in factors])
    ref = np.linalg.norm(np.einsum("ir,jr,kr->ijk", *[np.asarray(a, np.float64) * 1e12
                                                      for a in factors]))
    assert float(big.norm()) == pytest.approx(ref, rel=1e-5)
    zero = tfa.CPTensor(jnp.zeros(2), factors)
    assert float(zero.norm()) == 0.0
    assert np.all(np.isfinite(np.asarray(jax.grad(lambda w: tfa.CPTensor(w, factors).norm())(
        jnp.zeros(2)))))


@pytest.mark.parametrize("c", SCALES)
def test_metrics_neither_under_nor_overflow(c):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 30))
    ref = np.linalg.norm(x - y) / np.linalg.norm(x)
    xs, ys = (jnp.asarray(v * c, jnp.float32) for v in (x, y))
    assert float(tfa.relative_error(xs, ys)) == pytest.approx(ref, rel=1e-5)
    assert float(tfa.fit(xs, ys)) == pytest.approx(1 - ref, rel=1e-5)
    mask = rng.random(30) > 0.5
    ref_m = np.linalg.norm((x - y)[mask]) / np.linalg.norm(x[mask])
    assert float(tfa.relative_error(xs, ys, mask)) == pytest.approx(ref_m, rel=1e-5)


def test_relative_error_of_a_perfect_fit_has_a_finite_gradient():
    x = jnp.arange(1.0, 7.0)
    g = jax.grad(lambda a: tfa.relative_error(x, a))(x)
    assert np.all(np.isfinite(np.asarray(g)))


# ---------------------------------------------------------------------------------------------
# Over-ranked CP (issue 15.2)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, true_rank", [((5, 6, 7), 2), ((4, 5, 6), 3)])
def test_over_ranked_fit_reaches_float32_accuracy(shape, true_rank):
    """Ranks up to 3× the largest mode on exactly low-rank data: the singular normal equations
    are solved by pseudo-inverse, so the fit converges instead of diverging (before: errors of
    ~1000 during the fit and NaN at rank 100), and it is at least as accurate as TensorLy's
    float32 ALS on the same data."""
    tl = pytest.importorskip("tensorly")
    from tensorly.decomposition import parafac
    tl.set_backend("numpy")
    x = tfa.random_cp(jax.random.key(1), shape, true_rank).to_dense()
    xn = np.asarray(x)
    for rank in (max(shape), 2 * max(shape), 3 * max(shape)):
        approx, info = tfa.cp(x, rank, return_info=True)
        errors = np.asarray(info.errors)[: int(info.n_iter)]
        # no divergence: never above the first sweep's error, except for float32 noise
        assert np.all(np.isfinite(errors)) and np.all(errors <= max(errors[0], 1e-3)), rank
        ours = rel(xn, approx.to_dense())
        # over-parametrized ALS in float32 ends at 1e-6 … 3e-4 depending on the CPU's rounding
        # (normal equations square the conditioning; divergence gave ~1e3 and NaN); TensorLy's
        # ends at 1e-5 … 5e-4 on these data
        assert ours < 5e-4, (rank, ours)
        assert float(info.rel_error) == pytest.approx(ours, abs=1e-6)
        theirs_cp = parafac(xn, rank, init="svd", n_iter_max=100, tol=1e-8, random_state=0)
        theirs = rel(xn, tl.cp_to_tensor(theirs_cp))
        assert ours <= max(theirs, 3e-4), (rank, ours, theirs)


def test_rank_far_above_every_mode_stays_finite():
    x = tfa.random_cp(jax.random.key(2), (4, 5, 6), 2).to_dense()
    approx, info = tfa.cp(x, 100, n_iter=30, tol=0, return_info=True)
    assert np.all(np.isfinite(np.asarray(approx.to_dense())))
    assert np.all(np.asarray(info.errors) <= 1.0)  # never worse than the zero tensor
    assert float(info.rel_error) < 1e-4


def test_over_ranked_masked_fit_has_no_blow_up():
    """Rows of a masked fit with fewer observations than the rank have singular per-row Gram
    matrices: they get the minimum-norm solution, not a blow-up."""
    x = tfa.random_cp(jax.random.key(3), SHAPE, 2).to_dense()
    mask = jax.random.bernoulli(jax.random.key(4), 0.3, SHAPE)
    approx, info = tfa.cp(x, 12, mask=mask, return_info=True)
    dense = np.asarray(approx.to_dense())
    assert np.all(np.isfinite(dense))
    assert float(info.rel_error) < 1e-3
    assert np.abs(dense).max() < 10 * np.abs(np.asarray(x)).max()


# ---------------------------------------------------------------------------------------------
# The SVD start needs no key (glossary: key only where an option draws)
# ---------------------------------------------------------------------------------------------

def test_svd_start_beyond_the_mode_sizes_is_deterministic():
    x = planted(5, (4, 5, 6))
    a, info_a = tfa.cp(x, 9, n_iter=5, tol=0, return_info=True)
    b = tfa.cp(x, 9, n_iter=5, tol=0)
    c = tfa.cp(x, 9, n_iter=5, tol=0, key=jax.random.key(3))  # a key changes nothing here
    for u, v, w in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b),
                       jax.tree_util.tree_leaves(c)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
        np.testing.assert_array_equal(np.asarray(u), np.asarray(w))
    # no two components start (or end) equal: ALS would keep duplicates equal forever
    assert float(info_a.min_congruence) < 0.999


@pytest.mark.parametrize("shape, rank", [((3, 4, 5), 11), ((3, 3, 3), 27), ((2, 2, 2), 7)])
def test_svd_start_is_well_conditioned_with_distinct_components(shape, rank):
    """The start of an over-ranked fit: each factor is ``U [I, C]`` with ``U`` orthonormal, so
    its singular values are all at least 1, and no two rank-one components coincide (ALS keeps
    equal components equal), even with three times as many columns as a mode has rows."""
    from tensorfact.decomposition._sweeps import cp_initial_factors
    x = planted(6, shape, rank=2)
    _, factors = cp_initial_factors(x, rank, None, "svd", False, "highest")
    congruence = np.ones((rank, rank))
    for a in factors:
        a = np.asarray(a, np.float64)
        assert a.shape == (a.shape[0], rank)
        assert np.linalg.svd(a, compute_uv=False).min() >= 1 - 1e-5
        unit = a / np.linalg.norm(a, axis=0)
        congruence *= unit.T @ unit
    assert np.abs(congruence[~np.eye(rank, dtype=bool)]).max() < 0.99


def test_random_init_still_needs_a_key():
    with pytest.raises(ValueError, match=r'key is required for init="random"'):
        tfa.cp(planted(0), RANK, init="random")


# ---------------------------------------------------------------------------------------------
# CPInfo: the FitInfo fields, then degeneracy
# ---------------------------------------------------------------------------------------------

def numpy_congruence(factors):
    g = np.ones((factors[0].shape[1],) * 2)
    for a in factors:
        a = np.asarray(a, np.float64)
        a = a / np.linalg.norm(a, axis=0)
        g = g * (a.T @ a)
    return g[~np.eye(g.shape[0], dtype=bool)].min()


def test_cp_info_extends_fit_info(data):
    approx, info = tfa.cp(data[0], RANK, return_info=True)
    assert isinstance(info, tfa.CPInfo)
    assert info._fields[:4] == tfa.FitInfo._fields
    assert float(info.min_congruence) == pytest.approx(numpy_congruence(approx.factors),
                                                       abs=1e-5)
    norms = np.abs(np.asarray(approx.weights)) * np.prod(
        [np.linalg.norm(np.asarray(a), axis=0) for a in approx.factors], axis=0)
    np.testing.assert_allclose(np.asarray(info.component_norms), norms, rtol=1e-5)
    _, info1 = tfa.cp(data[0], 1, return_info=True)
    assert float(info1.min_congruence) == 0.0  # no pair of components


def test_cp_info_shows_a_degenerate_fit_and_l2_prevents_it():
    """``a∘a∘b + a∘b∘a + b∘a∘a`` has rank 3 but border rank 2: a best rank-2 fit does not
    exist, and ALS drifts toward two cancelling components of growing norm (De Silva & Lim
    2008). CPInfo shows it; a ridge gives a fit that exists."""
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((6, 2)))
    a, b = q.T
    x = (np.einsum("i,j,k->ijk", a, a, b) + np.einsum("i,j,k->ijk", a, b, a)
         + np.einsum("i,j,k->ijk", b, a, a)).astype(np.float32)
    norm = np.linalg.norm(x)
    start = dict(init="random", key=jax.random.key(0), n_iter=1000, tol=0, return_info=True)
    approx, info = tfa.cp(x, 2, **start)
    assert float(info.min_congruence) < -0.9
    assert np.asarray(info.component_norms).min() > 2 * norm
    assert float(info.min_congruence) == pytest.approx(numpy_congruence(approx.factors),
                                                       abs=1e-4)
    _, ridge = tfa.cp(x, 2, l2=1e-2, **start)
    assert float(ridge.min_congruence) > -0.6
    assert np.asarray(ridge.component_norms).max() < norm


# ---------------------------------------------------------------------------------------------
# IL2 (TensorLy's bundled data, 3.8% missing in two whole slices): masked CP vs TensorLy
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def il2():
    tl = pytest.importorskip("tensorly")
    from tensorly.datasets import load_IL2data
    tl.set_backend("numpy")
    t = load_IL2data().tensor
    mask = ~np.isnan(t)
    return np.where(mask, t, 0.0), mask


def observed_fit_and_gap(x, mask, weights, factors):
    import tensorly as tl
    dense = tl.cp_to_tensor((np.asarray(weights, np.float64),
                             [np.asarray(a, np.float64) for a in factors]))
    fit = 1 - np.linalg.norm((dense - x)[mask]) / np.linalg.norm(x[mask])
    return fit, np.abs(dense[~mask]).max()


@pytest.mark.parametrize("rank", [3, 4])
@pytest.mark.parametrize("start", ["tensorly", "tensorfact"])
def test_il2_masked_fit_matches_tensorly_without_degeneracy(il2, rank, start):
    """From the same start (TensorLy's masked-SVD start, or ours) and at default settings:
    TensorLy's masked ``parafac`` (EM imputation, 100 sweeps) against ours (one sweep on the
    zero-filled data, then weighted ALS). Before, ours ended degenerate (congruence −0.997,
    predictions of 1e4 in the missing slices) with a worse fit.

    At rank 3 the fits agree. At rank 4 the best rank-4 fit of IL2 is itself degenerate (both
    methods drift toward congruence −0.99 when run for 1000 sweeps); after 100 sweeps TensorLy
    is further along that drift (congruence −0.90) and 0.26% better in fit, ours is nearer a
    proper solution."""
    from tensorly.decomposition import parafac
    from tensorly.decomposition._cp import initialize_cp
    from tensorfact.decomposition._sweeps import cp_initial_factors
    x, mask = il2
    if start == "tensorly":
        weights, factors = initialize_cp(x, rank, init="svd", mask=mask.astype(float))
        weights = np.ones(rank) if weights is None else weights
    else:
        w, f = cp_initial_factors(jnp.asarray(x, jnp.float32), rank, None, "svd", False,
                                  "highest")
        weights, factors = np.asarray(w, np.float64), [np.asarray(a, np.float64) for a in f]
    theirs = parafac(x, rank, mask=mask.astype(float),
                     init=(weights.copy(), [a.copy() for a in factors]))
    fit_tl, _ = observed_fit_and_gap(x, mask, *theirs)
    init = tfa.CPTensor(jnp.asarray(weights, jnp.float32),
                        [jnp.asarray(a, jnp.float32) for a in factors])
    ours, info = tfa.cp(x.astype(np.float32), rank, mask=mask, init=init, return_info=True)
    fit, gap = observed_fit_and_gap(x, mask, *ours)
    assert fit >= fit_tl - (1e-4 if rank == 3 else 3e-3), (fit, fit_tl)
    assert float(info.rel_error) == pytest.approx(1 - fit, abs=1e-5)
    # no degenerate component: congruence well away from −1, norms of the data's order, and
    # predictions in the missing slices within the range of the data (max |x| = 1)
    assert float(info.min_congruence) > -0.8
    assert float(info.min_congruence) == pytest.approx(numpy_congruence(ours.factors), abs=1e-4)
    assert np.asarray(info.component_norms).max() < 2 * np.linalg.norm(x[mask])
    assert gap < 1.0
    if rank == 4:  # TensorLy is the one further along the degenerate drift
        assert float(info.min_congruence) > numpy_congruence(theirs.factors)


def test_il2_default_start_is_not_degenerate(il2):
    x, mask = il2
    for rank in (3, 4):
        approx, info = tfa.cp(x.astype(np.float32), rank, mask=mask, return_info=True)
        fit, gap = observed_fit_and_gap(x, mask, approx.weights, approx.factors)
        assert fit > {3: 0.76, 4: 0.775}[rank]
        assert float(info.min_congruence) > -0.8 and gap < 1.0


# ---------------------------------------------------------------------------------------------
# Finite gradients at degenerate inputs (issue 15.5)
# ---------------------------------------------------------------------------------------------

def exact_rank_one():
    """A rank-1 tensor of exactly representable numbers with zero entries: the fits reach it
    exactly (zero error, zero columns, repeated zero singular values)."""
    a, b, c = jnp.array([1., 2., 0., 4.]), jnp.array([2., 1., 1.]), jnp.array([1., 0., 0., .5])
    return jnp.einsum("i,j,k->ijk", a, b, c)


@pytest.mark.parametrize("case", ["info", "rank1", "rank2", "rank2_nonneg", "over_ranked",
                                  "masked", "normalize_false"])
def test_grad_is_finite_at_degenerate_inputs(case):
    """Each of these was NaN before: a square root of a zero error, the norm of a zero column
    in the normalisation, eigenvalue gaps of zero in the SVD start."""
    x = exact_rank_one()
    mask = jnp.ones(x.shape, bool).at[0, 0, 0].set(False)
    fits = {
        "info": lambda x: tfa.cp(x, 1, tol=0, n_iter=3, return_info=True)[1].rel_error,
        "rank1": lambda x: jnp.sum(tfa.cp(x, 1, tol=0, n_iter=3).to_dense()),
        "rank2": lambda x: jnp.sum(tfa.cp(x, 2, tol=0, n_iter=3).to_dense()),
        "rank2_nonneg": lambda x: jnp.sum(tfa.cp(x, 2, tol=0, n_iter=3,
                                                 nonneg=True).to_dense()),
        "over_ranked": lambda x: jnp.sum(tfa.cp(x, 6, tol=0, n_iter=3).to_dense()),
        "masked": lambda x: jnp.sum(tfa.cp(x, 2, tol=0, n_iter=3, mask=mask).to_dense()),
        "normalize_false": lambda x: jnp.sum(tfa.cp(x, 2, tol=0, n_iter=3,
                                                    normalize=False).to_dense()),
    }
    # under jit: forward and reverse passes in one program (eager value_and_grad compiles the
    # linearized fit and its transpose apart, about twice the compile time)
    value, grad = jax.jit(jax.value_and_grad(fits[case]))(x)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(np.asarray(grad)))
    if case in ("rank1", "rank2", "over_ranked", "normalize_false"):
        # the fit reproduces x exactly, so d sum(fit)/dx is 1 along x itself
        assert float(jnp.vdot(grad, x) / jnp.vdot(jnp.ones_like(x), x)) == pytest.approx(
            1.0, abs=1e-3)


# ---------------------------------------------------------------------------------------------
# Non-finite init, empty modes, vocabulary
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("where", ["weights", "factor"])
def test_non_finite_init_is_reported_naming_init(bad, where):
    x = planted(0)
    start = tfa.random_cp(jax.random.key(1), SHAPE, RANK)
    if where == "weights":
        start = tfa.CPTensor(start.weights.at[0].set(bad), start.factors)
    else:
        start = tfa.CPTensor(start.weights, [start.factors[0].at[1, 1].set(bad),
                                             *start.factors[1:]])
    with pytest.raises(ValueError, match=r"init contains 1 NaN or Inf value\(s\)"):
        tfa.cp(x, RANK, init=start)


@pytest.mark.parametrize("shape", [(0, 3, 4), (3, 0), (2, 3, 0)])
def test_zero_size_mode_names_x(shape):
    with pytest.raises(ValueError, match=r"x has a mode of size zero \(shape "
                                         + str(shape).replace("(", r"\(").replace(")", r"\)")):
        tfa.cp(jnp.zeros(shape), 1)
    with pytest.raises(ValueError, match=r"x has a mode of size zero"):
        jax.jit(lambda v: tfa.cp(v, 1))(jnp.zeros(shape))


def test_signature_follows_the_glossary():
    sig = inspect.signature(tfa.cp)
    keyword_only = [p for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY]
    assert keyword_only[0].name == "key" and keyword_only[0].default is None
    assert sig.parameters["tol"].default == _loop.DEFAULT_TOL == 1e-8
    assert sig.parameters["precision"].default == "highest"
    hints = typing.get_type_hints(tfa.decomposition._cp.cp)
    assert hints["impl"] == _checks.Impl and hints["precision"] == _checks.Precision
    assert _checks.Init in typing.get_args(hints["init"])
