"""PARAFAC2 (Kiers, ten Berge & Bro 1999): the Parafac2Tensor type, recovery of planted ragged
models, agreement with TensorLy's parafac2, the nonnegative and masked variants, transforms,
scale and bad input."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _helpers import x64

import tensorfact as tfa

ROWS = (5, 9, 7, 6, 10, 8)


def _planted(rows=ROWS, n_cols=8, rank=3, seed=0, nonneg=False):
    """Ragged slices ``P_k B diag(a_k) Cᵀ`` of a planted PARAFAC2 model (float64 NumPy)."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 1.5, (len(rows), rank))
    b = rng.standard_normal((rank, rank))
    c = rng.uniform(0, 1, (n_cols, rank)) if nonneg else rng.standard_normal((n_cols, rank))
    ps = [np.linalg.qr(rng.standard_normal((n, rank)))[0] for n in rows]
    return [p @ b @ np.diag(a[k]) @ c.T for k, p in enumerate(ps)]


def _rel(slices, approx):
    num = sum(np.sum((np.asarray(s, np.float64) - np.asarray(x)) ** 2)
              for s, x in zip(approx, slices))
    return np.sqrt(num / sum(np.sum(np.asarray(x) ** 2) for x in slices))


def test_tensor_type_padding_norm_and_unpacking():
    rng = np.random.default_rng(1)
    ps = [np.linalg.qr(rng.standard_normal((n, 2)))[0] for n in (3, 5)]
    a, b, c = rng.standard_normal((2, 2)), rng.standard_normal((2, 2)), rng.standard_normal((4, 2))
    w = np.array([2.0, 0.5])
    t = tfa.Parafac2Tensor(w, (a, b, c), ps)
    assert t.shape == (2, 5, 4) and t.rank == 2 and t.row_counts == (3, 5)
    dense = np.asarray(t.to_dense())
    for k, (p, n) in enumerate(zip(ps, (3, 5))):
        ref = p @ b @ np.diag(w * a[k]) @ c.T
        np.testing.assert_allclose(np.asarray(t.to_slices()[k]), ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dense[k, :n], ref, rtol=1e-5, atol=1e-5)
    assert np.all(dense[0, 3:] == 0)  # the padding is zero
    np.testing.assert_allclose(float(t.norm()), np.linalg.norm(dense), rtol=1e-5)
    assert t.n_params == 2 + 4 + 4 + 8 + (3 + 5) * 2
    weights, (a2, b2, c2), proj = t
    assert proj.shape == (2, 5, 2) and np.all(np.asarray(proj)[0, 3:] == 0)
    assert [p.shape for p in t.projection_list] == [(3, 2), (5, 2)]
    # a pytree through jit keeps its static row counts
    out = jax.jit(lambda t: t)(t)
    assert out.row_counts == (3, 5)
    # a huge scale does not overflow the norm
    big = tfa.Parafac2Tensor(w * 1e30, (a, b, c), ps)
    np.testing.assert_allclose(float(big.norm()) / 1e30, np.linalg.norm(dense), rtol=1e-5)
    with pytest.raises(ValueError, match="factors"):
        tfa.Parafac2Tensor(w, (a, b), ps)
    with pytest.raises(ValueError, match="row_counts"):
        tfa.Parafac2Tensor(w, (a, b, c), np.stack([np.pad(ps[0], ((0, 2), (0, 0))), ps[1]]),
                           row_counts=(3, 6))


def test_recovers_a_planted_ragged_model_and_matches_tensorly():
    from tensorly.decomposition import parafac2 as tl_parafac2
    from tensorly.parafac2_tensor import parafac2_to_slices

    xs = _planted()
    fit, info = tfa.parafac2([x.astype(np.float32) for x in xs], 3, n_iter=500, tol=0,
                             return_info=True)
    ours = _rel(xs, fit.to_slices())
    assert fit.row_counts == ROWS
    assert 1 - ours > 0.999
    np.testing.assert_allclose(float(info.rel_error), ours, rtol=1e-2, atol=1e-5)
    # the projections are orthonormal
    for p in fit.projection_list:
        np.testing.assert_allclose(np.asarray(p.T @ p), np.eye(3), atol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = tl_parafac2(xs, 3, n_iter_max=500, init="svd", tol=0, linesearch=False)
    theirs = _rel(xs, parafac2_to_slices(ref))
    assert (1 - ours) >= (1 - theirs) - 1e-3, (ours, theirs)


def test_errors_follow_tensorly_iteration_by_iteration():
    """Same start (SVD), same algorithm (TensorLy's n_iter_parafac = our cp_sweeps): the same
    error after a few iterations, in float64."""
    from tensorly.decomposition import parafac2 as tl_parafac2
    from tensorly.parafac2_tensor import parafac2_to_slices

    xs = _planted(seed=3)
    with x64():
        fit = tfa.parafac2([jnp.asarray(x) for x in xs], 3, n_iter=8, tol=0, cp_sweeps=2)
        ours = _rel(xs, fit.to_slices())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = tl_parafac2(xs, 3, n_iter_max=8, init="svd", tol=0, linesearch=False,
                          n_iter_parafac=2)
    theirs = _rel(xs, parafac2_to_slices(ref))
    # TensorLy returns the projections of its last iteration, we recompute them once more
    assert ours <= theirs * (1 + 1e-6) and ours > 0.5 * theirs, (ours, theirs)


def test_nonneg_gives_nonnegative_a_and_c():
    xs = _planted(seed=2, nonneg=True)
    fit, info = tfa.parafac2(xs, 3, n_iter=200, tol=0, nonneg=True, return_info=True)
    a, _, c = fit.factors
    assert float(jnp.min(a)) >= 0 and float(jnp.min(c)) >= 0
    assert float(jnp.min(fit.weights)) >= 0
    assert float(info.rel_error) < 0.05


def test_mask_fits_the_observed_entries_and_predicts_the_missing():
    xs = _planted(seed=4)
    rng = np.random.default_rng(5)
    masks = [rng.uniform(size=x.shape) > 0.15 for x in xs]
    holed = [np.where(m, x, np.nan) for x, m in zip(xs, masks)]  # missing values may be NaN
    fit, info = tfa.parafac2(holed, 3, n_iter=500, tol=0, mask=masks, return_info=True)
    approx = fit.to_slices()
    obs = np.sqrt(sum(np.sum(np.where(m, x - np.asarray(s), 0) ** 2)
                      for x, s, m in zip(xs, approx, masks))
                  / sum(np.sum(np.where(m, x, 0) ** 2) for x, m in zip(xs, masks)))
    miss = np.sqrt(sum(np.sum(np.where(m, 0, x - np.asarray(s)) ** 2)
                       for x, s, m in zip(xs, approx, masks))
                   / sum(np.sum(np.where(m, 0, x) ** 2) for x, m in zip(xs, masks)))
    np.testing.assert_allclose(float(info.rel_error), obs, rtol=1e-2, atol=1e-5)
    assert obs < 0.02 and miss < 0.1, (obs, miss)


def test_jit_and_vmap_over_the_three_way_form():
    xs = np.stack([x[:5] for x in _planted(seed=6)]).astype(np.float32)  # (6, 5, 8)
    batch = np.stack([xs, 3 * xs[::-1]])
    mapped = jax.jit(jax.vmap(lambda x: tfa.parafac2(x, 3, n_iter=30, tol=0).to_dense()))
    mapped = np.asarray(mapped(batch))
    for i in range(2):  # eager, one slice of the batch at a time
        single = np.asarray(tfa.parafac2(batch[i], 3, n_iter=30, tol=0).to_dense())
        np.testing.assert_allclose(mapped[i], single, rtol=1e-3, atol=1e-3 * np.abs(single).max())


def test_scale_equivariant_at_1e30():
    xs = [x.astype(np.float32) for x in _planted(seed=7)]
    base, info = tfa.parafac2(xs, 3, n_iter=40, tol=0, return_info=True)
    big, info_big = tfa.parafac2([x * np.float32(1e30) for x in xs], 3, n_iter=40, tol=0,
                                 return_info=True)
    out = np.asarray(big.to_dense(), np.float64) / 1e30
    assert np.all(np.isfinite(out))
    ref = np.asarray(base.to_dense(), np.float64)
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
    np.testing.assert_allclose(float(info_big.rel_error), float(info.rel_error), rtol=1e-2)


def test_bad_input_names_slices():
    good = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="slices"):
        tfa.parafac2([], 2)
    with pytest.raises(ValueError, match="slices"):
        tfa.parafac2([good, np.ones((5, 4), np.float32)], 2)
    with pytest.raises(ValueError, match=r"slices\[1\]"):
        tfa.parafac2([good, np.ones(3, np.float32)], 2)
    with pytest.raises(ValueError, match="slices"):
        tfa.parafac2(np.ones((4, 3), np.float32), 2)
    with pytest.raises(ValueError, match="slices"):
        tfa.parafac2([good, np.full((2, 3), np.nan, np.float32)], 2, n_iter=2)
    with pytest.raises(ValueError, match="mask"):
        tfa.parafac2([good, good], 2, mask=[np.ones((4, 3), bool)])
    with pytest.raises(ValueError, match="rank"):
        tfa.parafac2([good, good], 0)
    with pytest.raises(ValueError, match="key"):
        tfa.parafac2([good, good], 2, init="random")


def test_derivative_matches_finite_differences():
    """The Procrustes step's derivative (the polar factor's, written without 1/(s_i − s_j))
    through a fixed number of iterations, against central differences in float64."""
    xs = np.stack([x[:5] for x in _planted(seed=8)])  # (6, 5, 8)
    direction = np.random.default_rng(9).standard_normal(xs.shape)
    with x64():
        def f(x):
            return tfa.parafac2(x, 3, n_iter=3, tol=0).to_dense()

        x = jnp.asarray(xs)
        _, tangent = jax.jvp(f, (x,), (jnp.asarray(direction),))
        h = 1e-6
        fd = (f(x + h * direction) - f(x - h * direction)) / (2 * h)
        np.testing.assert_allclose(np.asarray(tangent), np.asarray(fd), rtol=1e-4,
                                   atol=1e-5 * float(jnp.abs(fd).max()))
