"""Tests of ``TRTensor`` (tensor ring type) and ``tensorfact.tensor_ring`` (TR-SVD, TR-ALS):
dense reconstruction and in-format norm/inner against a NumPy float64 reference written from
the definition, exact recovery of planted rings, Eckart–Young and unfolding-rank bounds,
TR-ALS improving on its TR-SVD start, FitInfo semantics, TensorLy parity, jit/vmap/grad, and
the argument checks.

Shapes and call signatures are shared between tests so that each compiled fit is reused.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import tensorfact as tfa
from _helpers import x64, rel

SHAPE = (8, 9, 10)
RANKS = (2, 3, 2)
NOISE = 0.1
KEY = jax.random.key(3)  # a start from which ALS reaches the global optimum on these data


def ring_cores(seed, shape, ranks, dtype=np.float64):
    rng = np.random.default_rng(seed)
    d = len(shape)
    return [rng.standard_normal((ranks[k], shape[k], ranks[(k + 1) % d])).astype(dtype)
            for k in range(d)]


def planted(seed, shape=SHAPE, ranks=RANKS, dtype=np.float32):
    return tfa.TRTensor([jnp.asarray(g) for g in ring_cores(seed, shape, ranks, dtype)])


def dense_reference(cores):
    """The definition, entry by entry, in float64: x[i] = Tr(G_0[:, i_0, :] ··· G_{d-1}[:, i_{d-1}, :])."""
    cores = [np.asarray(g, np.float64) for g in cores]
    shape = tuple(g.shape[1] for g in cores)
    out = np.empty(shape)
    for idx in np.ndindex(*shape):
        m = np.eye(cores[0].shape[0])
        for g, i in zip(cores, idx):
            m = m @ g[:, i, :]
        out[idx] = np.trace(m)
    return out


def unfolding_tail(x, k, r):
    """Squared singular values of the (i_0..i_k) × rest unfolding beyond rank r."""
    x = np.asarray(x, np.float64)
    s = np.linalg.svd(x.reshape(int(np.prod(x.shape[:k + 1])), -1), compute_uv=False)
    return float(np.sum(s[r:] ** 2))


@pytest.fixture(scope="module")
def exact():
    return planted(0)


@pytest.fixture(scope="module")
def noisy_pair():
    clean = planted(1).to_dense()
    return clean, tfa.noisy(jax.random.key(101), clean, NOISE)


# ---------------------------------------------------------------------------------------------
# the type


@pytest.mark.parametrize("shape,ranks", [
    ((3, 4, 5), (2, 3, 4)),
    ((4, 3, 2, 3), (1, 2, 2, 3)),  # r_0 = 1: a tensor train
    ((5,), (3,)),                  # one core: x[i] = Tr(G[:, i, :])
])
def test_to_dense_matches_the_definition(shape, ranks):
    cores = ring_cores(0, shape, ranks)
    with x64():
        ring = tfa.TRTensor(cores)
        assert ring.shape == shape and ring.rank == ranks and ring.ndim == len(shape)
        np.testing.assert_allclose(np.asarray(ring.to_dense()), dense_reference(cores),
                                   rtol=1e-12, atol=1e-12)


def test_norm_and_inner_in_the_format():
    a_cores = ring_cores(1, (3, 4, 5, 2), (2, 3, 1, 4))
    b_cores = ring_cores(2, (3, 4, 5, 2), (3, 1, 2, 2))
    a_ref, b_ref = dense_reference(a_cores), dense_reference(b_cores)
    with x64():
        a, b = tfa.TRTensor(a_cores), tfa.TRTensor(b_cores)
        assert float(a.norm()) == pytest.approx(np.linalg.norm(a_ref), rel=1e-12)
        assert float(a.inner(b)) == pytest.approx(np.sum(a_ref * b_ref), rel=1e-12)
        assert float(b.inner(a)) == pytest.approx(np.sum(a_ref * b_ref), rel=1e-12)
        # a tensor train is a ring with r_0 = 1: inner products mix the two formats
        tt = tfa.TTTensor(ring_cores(3, (3, 4, 5, 2), (1, 2, 2, 3)))  # r_0 = r_4 = 1
        assert float(a.inner(tt)) == pytest.approx(np.sum(a_ref * np.asarray(tt.to_dense())),
                                                    rel=1e-10)


def test_norm_in_float32_is_accurate(exact):
    dense = dense_reference(exact.cores)
    assert float(exact.norm()) == pytest.approx(np.linalg.norm(dense), rel=1e-5)
    assert rel(dense, exact.to_dense()) < 1e-6


def test_counts_and_conveniences(exact):
    assert exact.n_params == 2 * 8 * 3 + 3 * 9 * 2 + 2 * 10 * 2
    assert exact.size == 8 * 9 * 10
    assert exact.compression_ratio == pytest.approx(exact.size / exact.n_params)
    assert exact.dtype == jnp.float32
    assert len(exact) == 3 and exact[2] is exact.cores[2] and list(exact) == list(exact.cores)
    assert repr(exact) == "TRTensor(cores=[float32[2, 8, 3], float32[3, 9, 2], float32[2, 10, 2]])"
    with pytest.raises(AttributeError, match="TRTensor is immutable"):
        exact.cores = ()


def test_pytree_jit_vmap(exact):
    leaves, treedef = jax.tree_util.tree_flatten(exact)
    assert len(leaves) == 3
    assert jax.tree_util.tree_unflatten(treedef, leaves).rank == RANKS
    assert float(jax.jit(lambda t: t.norm())(exact)) == pytest.approx(float(exact.norm()),
                                                                        rel=1e-6)
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), exact, planted(2), planted(3))
    norms = jax.vmap(lambda t: t.norm())(stacked)
    for i, seed in enumerate((0, 2, 3)):
        assert float(norms[i]) == pytest.approx(
            np.linalg.norm(dense_reference(planted(seed).cores)), rel=1e-5)


def test_norm_gradient():
    with x64():
        cores = [jnp.asarray(g) for g in ring_cores(5, (3, 4, 2), (2, 3, 2))]
        check_grads(jax.jit(lambda *c: tfa.TRTensor(c).norm()), cores, order=1, modes=("rev",))


@pytest.mark.parametrize("cores,message", [
    (jnp.ones((2, 3, 2)), "cores must be a non-empty sequence of 3-D arrays, got ArrayImpl"),
    ([], "cores must be a non-empty sequence of 3-D arrays, got list"),
    ([jnp.ones((2, 3))], "cores[0] must be 3-D (r_k, n_k, r_k+1), got shape (2, 3)"),
    ([jnp.ones((2, 3, 4)), jnp.ones((3, 4, 2))],
     "cores[0] of shape (2, 3, 4) must match cores[1] of shape (3, 4, 2): cores[0].shape[2] "
     "must equal cores[1].shape[0], got 4 and 3"),
    ([jnp.ones((2, 3, 4)), jnp.ones((4, 4, 3))],
     "cores[1] of shape (4, 4, 3) closes the ring with cores[0] of shape (2, 3, 4): "
     "cores[1].shape[2] must equal cores[0].shape[0], got 3 and 2"),
])
def test_constructor_errors(cores, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tfa.TRTensor(cores)


def test_inner_errors(exact):
    with pytest.raises(ValueError, match=r"other must have the shape of this tensor \(8, 9, 10\), "
                                         r"got \(8, 9, 4\)"):
        exact.inner(planted(0, (8, 9, 4)))
    with pytest.raises(TypeError, match="other must be a TRTensor"):
        exact.inner(jnp.ones(SHAPE))


@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_property_dense_and_norm_match_the_definition(data):
    d = data.draw(st.integers(1, 4))
    shape = tuple(data.draw(st.lists(st.integers(1, 4), min_size=d, max_size=d)))
    ranks = tuple(data.draw(st.lists(st.integers(1, 3), min_size=d, max_size=d)))
    cores = ring_cores(data.draw(st.integers(0, 2**16)), shape, ranks)
    reference = dense_reference(cores)
    with x64():
        ring = tfa.TRTensor(cores)
        np.testing.assert_allclose(np.asarray(ring.to_dense()), reference, atol=1e-10)
        assert float(ring.norm()) == pytest.approx(np.linalg.norm(reference), rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# TR-SVD


def test_svd_recovers_a_planted_ring_with_the_ranks_it_needs(exact):
    """TR-SVD's split of the first bond is arbitrary, so a later bond k carries the planted bond
    and two copies of the r_0 bond: ranks (2, 3, 2·2·2) make it exact, the planted ranks
    themselves do not."""
    x = exact.to_dense()
    approx, info = tfa.tensor_ring(x, (2, 3, 8), return_info=True)
    assert isinstance(approx, tfa.TRTensor) and approx.rank == (2, 3, 8)
    assert rel(x, approx.to_dense()) < 1e-5
    assert float(info.rel_error) < 1e-5 and int(info.n_iter) == 0
    assert info.errors.shape == (0,) and bool(info.converged)
    assert rel(x, tfa.tensor_ring(x, RANKS).to_dense()) > 0.1


def test_svd_recovers_a_tensor_train_exactly():
    x = planted(4, (6, 7, 8), (1, 3, 2)).to_dense()
    approx = tfa.tensor_ring(x, (1, 3, 2))
    assert approx.rank == (1, 3, 2)
    assert rel(x, approx.to_dense()) < 1e-5


def test_svd_of_a_matrix_is_the_truncated_svd():
    """d = 2: x ≈ Σ_{a,b} G_0[a, :, b] G_1[b, :, a] is a rank-(r_0 r_1) matrix and TR-SVD takes
    its truncated SVD: Eckart–Young."""
    m = np.random.default_rng(0).standard_normal((12, 9)).astype(np.float32)
    approx = tfa.tensor_ring(m, (2, 3))
    s = np.linalg.svd(m.astype(np.float64), compute_uv=False)
    assert rel(m, approx.to_dense()) == pytest.approx(np.sqrt(np.sum(s[6:] ** 2) / np.sum(s ** 2)),
                                                      abs=1e-5)


def test_bonds_above_the_unfolding_rank_are_zero_padded():
    x = planted(5, (2, 3, 4), (1, 2, 2)).to_dense()
    approx = tfa.tensor_ring(x, (1, 2, 9))  # bond 2 of (2·3) × 4 unfoldings: rank ≤ 4
    assert approx.rank == (1, 2, 9) and approx.cores[2].shape == (9, 4, 1)
    assert rel(x, approx.to_dense()) < 1e-5
    assert np.all(np.asarray(approx.cores[2])[4:] == 0)


# ---------------------------------------------------------------------------------------------
# TR-ALS


def als(x, **kw):
    kw.setdefault("return_info", True)
    kw.setdefault("n_iter", 100)
    return tfa.tensor_ring(x, RANKS, method="als", **kw)


@pytest.mark.parametrize("init", ["svd", "random"])
def test_als_recovers_a_planted_ring(exact, init):
    """TR-ALS has local minima (TensorLy's TR-ALS stalls at the same ones): the starts here are
    ones that reach the global minimum, as most do for this tensor."""
    x = exact.to_dense()
    approx, info = als(x, init=init, key=KEY)
    assert approx.rank == RANKS
    assert rel(x, approx.to_dense()) < 1e-5
    assert float(info.rel_error) == pytest.approx(rel(x, approx.to_dense()), abs=1e-6)
    assert bool(info.converged) and int(info.n_iter) < 100


def test_als_improves_on_its_svd_start_on_noisy_data(noisy_pair):
    clean, x = noisy_pair
    svd_err = rel(x, tfa.tensor_ring(x, RANKS).to_dense())
    approx, info = als(x)  # the default start: TR-SVD
    n = int(info.n_iter)
    errors = np.asarray(info.errors)[:n]
    assert 1 < n < 100 and bool(info.converged)
    assert np.all(np.diff(errors) <= 1e-5), np.diff(errors).max()  # each core solve is exact LS
    err = rel(x, approx.to_dense())
    assert err < 0.5 * svd_err, (err, svd_err)
    assert err <= rel(x, clean) + 1e-4  # here it reaches the noise level
    assert float(info.rel_error) == pytest.approx(err, abs=1e-6)
    assert errors[-1] == pytest.approx(err, abs=1e-4)


def test_als_from_random_start_reaches_the_noise_level(noisy_pair):
    clean, x = noisy_pair
    approx, info = als(x, init="random", key=KEY, tol=1e-6)
    err = rel(x, approx.to_dense())
    truth = rel(x, clean)
    assert err <= truth + 1e-4  # at least as good as the planted ring
    assert err >= 0.85 * truth  # 142 parameters for 720 entries: no overfitting
    assert rel(clean, approx.to_dense()) < 0.5 * NOISE  # denoises
    n = int(info.n_iter)
    errors = np.asarray(info.errors)
    assert np.all(np.isfinite(errors[:n])) and np.all(np.isnan(errors[n:]))
    assert bool(info.converged) and abs(errors[n - 1] - errors[n - 2]) < 1e-6


@pytest.mark.parametrize("seed", range(6))
def test_als_from_random_starts_at_ranks_the_data_cannot_fill_stays_finite(seed):
    """Ranks 5 on a 4 × 5 × 6 tensor: the Gram matrix of a core solve is 25 × 25 but its
    subchain has only 20 to 30 entries per row, so it is singular (and, formed from transfer
    matrices in float32, not even numerically positive semi-definite). A plain Cholesky solve
    gave NaN from the first sweep for most keys; the proximal solve stays finite, and with 125
    parameters for 120 entries the ring all but interpolates the data."""
    y = np.random.default_rng(50).standard_normal((4, 5, 6)).astype(np.float32)
    approx, info = tfa.tensor_ring(y, 5, method="als", init="random", key=jax.random.key(seed),
                                   n_iter=30, tol=0, return_info=True)
    errors = np.asarray(info.errors)
    assert np.all(np.isfinite(errors)) and np.all(np.isfinite(np.asarray(approx.to_dense())))
    # each proximal step lowers the objective, down to float32 rounding of the error itself
    assert np.all(np.diff(errors) <= 1e-4) and np.all(errors[1:] < 1e-4)
    assert float(info.rel_error) == pytest.approx(rel(y, approx.to_dense()), abs=1e-6)
    assert rel(y, approx.to_dense()) < 1e-3


def test_unfolding_rank_bounds_hold_for_both_methods(noisy_pair):
    """The (i_0..i_k) × rest unfolding of any ring has rank ≤ r_0 r_{k+1}, so
    ‖x − x̂‖² ≥ its tail beyond that rank, for every k."""
    x = np.asarray(noisy_pair[1], np.float64)
    for approx in (tfa.tensor_ring(x, RANKS), als(x, init="random", key=KEY)[0]):
        err_sq = np.sum((x - np.asarray(approx.to_dense(), np.float64)) ** 2)
        for k in range(len(SHAPE) - 1):
            assert err_sq >= unfolding_tail(x, k, RANKS[0] * RANKS[k + 1]) - 1e-6 * np.sum(x ** 2)


def test_determinism_same_key_same_result(noisy_pair):
    x = noisy_pair[1]
    a = als(x, init="random", key=KEY)
    b = als(x, init="random", key=KEY)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    c = als(x, init="random", key=jax.random.key(8))
    assert float(c[1].errors[0]) != float(a[1].errors[0])


# ---------------------------------------------------------------------------------------------
# TensorLy (NumPy backend, float64)


@pytest.fixture
def tensorly():
    tl = pytest.importorskip("tensorly")
    pytest.importorskip("tensorly.decomposition")
    previous = tl.get_backend()
    tl.set_backend("numpy")
    yield tl
    tl.set_backend(previous)


@pytest.mark.parametrize("seed", [0, 1])
def test_svd_fits_no_worse_than_tensorly_tensor_ring(seed, tensorly):
    """Same algorithm and the same sign convention for the singular vectors (which decides how
    the first bond is split): the same fit, up to float32 rounding."""
    tl = tensorly
    clean = planted(10 + seed).to_dense()
    x = tfa.noisy(jax.random.key(20 + seed), clean, NOISE)
    ours = 1 - rel(x, tfa.tensor_ring(x, RANKS).to_dense())
    xn = np.asarray(x, np.float64)
    theirs = 1 - rel(xn, tl.tr_to_tensor(tl.decomposition.tensor_ring(xn, list(RANKS) + [2])))
    assert ours >= theirs - 1e-5, (ours, theirs)


def test_als_fits_no_worse_than_tensorly_tensor_ring_als(noisy_pair, tensorly):
    tl = tensorly
    x = noisy_pair[1]
    ours = 1 - rel(x, als(x, init="random", key=KEY)[0].to_dense())
    xn = np.asarray(x, np.float64)
    theirs_tr = tl.decomposition.tensor_ring_als(xn, list(RANKS) + [RANKS[0]], n_iter_max=100,
                                                 tol=1e-6, random_state=0)
    theirs = 1 - rel(xn, tl.tr_to_tensor(theirs_tr))
    assert ours >= theirs - 1e-4, (ours, theirs)
    assert ours > 1 - 1.05 * NOISE


# ---------------------------------------------------------------------------------------------
# jit, vmap, grad


def test_jit_matches_eager(noisy_pair):
    x = noisy_pair[1]
    run = functools.partial(tfa.tensor_ring, ranks=RANKS, method="als", init="random", key=KEY,
                            n_iter=100, return_info=True)
    eager, _ = run(x, tol=1e-6)  # the same arguments, the tolerance traced under jit
    jitted, info = jax.jit(lambda x, tol: run(x, tol=tol))(x, 1e-6)
    assert bool(info.converged) and 1 < int(info.n_iter) < 100
    np.testing.assert_allclose(np.asarray(jitted.to_dense()), np.asarray(eager.to_dense()),
                               atol=1e-4)


def test_vmap_matches_single_calls(noisy_pair):
    clean = noisy_pair[0]
    batch = jnp.stack([tfa.noisy(jax.random.key(200 + i), clean, 0.05 * (i + 1))
                       for i in range(3)])
    # tol=1e-4 (traced: the same compiled fit as the other ALS tests) stops well before the
    # float32 rounding of the batched and the single contractions could matter
    run = functools.partial(tfa.tensor_ring, ranks=RANKS, method="als", init="random", key=KEY,
                            n_iter=100, tol=1e-4, return_info=True)
    approx_b, info_b = jax.vmap(run)(batch)
    assert approx_b.cores[0].shape == (3, 2, 8, 3)
    svd_b = jax.vmap(lambda x: tfa.tensor_ring(x, RANKS).to_dense())(batch)
    for i in range(3):
        approx_i, info_i = run(batch[i])
        assert int(info_b.n_iter[i]) == int(info_i.n_iter)
        ring_i = tfa.TRTensor([g[i] for g in approx_b.cores])
        np.testing.assert_allclose(np.asarray(ring_i.to_dense()),
                                   np.asarray(approx_i.to_dense()), atol=1e-4)
        np.testing.assert_allclose(np.asarray(svd_b[i]),
                                   np.asarray(tfa.tensor_ring(batch[i], RANKS).to_dense()),
                                   atol=1e-4)


def test_given_init_at_the_solution_stays_and_grad_matches_finite_differences():
    shape, ranks = (5, 4), (1, 2)  # small and 2-way: the compile of grad-through-ALS is costly
    with x64():
        start = planted(6, shape, ranks, dtype=np.float64)
        fit = functools.partial(tfa.tensor_ring, ranks=ranks, method="als", init=start,
                                n_iter=3, tol=0)
        exact = start.to_dense()
        assert rel(exact, fit(exact).to_dense()) < 1e-10  # a fixed point of the sweeps

        x = tfa.noisy(jax.random.key(2), planted(9, shape, ranks, dtype=np.float64).to_dense(),
                      NOISE)
        w = jax.random.normal(jax.random.key(3), shape, jnp.float64)
        d = jax.random.normal(jax.random.key(4), shape, jnp.float64)

        def f(x):
            return jnp.vdot(w, fit(x).to_dense())

        g = jax.grad(f)(x)
        assert g.shape == shape and bool(jnp.all(jnp.isfinite(g)))
        eps = 1e-5
        fd = (f(x + eps * d) - f(x - eps * d)) / (2 * eps)
        assert float(jnp.vdot(g, d)) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)


# ---------------------------------------------------------------------------------------------
# argument checks


@pytest.fixture(scope="module")
def x3(exact):
    return exact.to_dense()


def test_tensorly_ranks_with_the_ring_closed_are_accepted(x3):
    """TensorLy's d + 1 ranks (r_0, ..., r_{d-1}, r_0) mean the same ring as our d."""
    ours = tfa.tensor_ring(x3, RANKS)
    theirs = tfa.tensor_ring(x3, list(RANKS) + [RANKS[0]])
    assert theirs.rank == RANKS
    for g, h in zip(ours.cores, theirs.cores):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(h))


def test_wrong_number_of_ranks(x3):
    with pytest.raises(ValueError, match=re.escape(
            "ranks must hold one bond size per mode (3: r_0, ..., r_2, with r_3 = r_0 closing "
            "the ring), or 4 with r_3 = r_0 repeated, got 5: (2, 3, 2, 2, 2)")):
        tfa.tensor_ring(x3, (2, 3, 2, 2, 2))
    with pytest.raises(ValueError, match=re.escape(
            "ranks of length 4 (TensorLy's convention) must close the ring with ranks[3] = "
            "ranks[0], got ranks[0] = 2 and ranks[3] = 1: (2, 3, 2, 1)")):
        tfa.tensor_ring(x3, (2, 3, 2, 1))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_rank_entries(x3, bad):
    with pytest.raises(ValueError, match=re.escape(f"ranks[2] must be a positive integer, got "
                                                   f"{bad!r}")):
        tfa.tensor_ring(x3, (2, 3, bad))


@pytest.mark.parametrize("bad,message", [
    (0, "ranks[0] must be a positive integer, got 0"),
    (2.5, "ranks must be an int or a sequence of ints, got 2.5"),
    ("2", "ranks must be an int or a sequence of ints, got '2'"),
])
def test_bad_scalar_rank(x3, bad, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tfa.tensor_ring(x3, bad)


def test_first_bonds_above_the_first_unfolding_rank(x3):
    message = ("ranks[0] * ranks[1] = 3 * 3 = 9 exceeds 8, the rank bound of the first unfolding "
               "of shape (8, 90)")
    with pytest.raises(ValueError, match=re.escape(message)):
        tfa.tensor_ring(x3, 3)
    with pytest.raises(ValueError, match=re.escape(message)):
        tfa.tensor_ring(x3, 3, method="als")  # the TR-SVD start needs it too
    # ALS from a random start does not (traced only: nothing to compile)
    out = jax.eval_shape(lambda x: tfa.tensor_ring(x, 3, method="als", init="random", key=KEY), x3)
    assert [g.shape for g in out.cores] == [(3, 8, 3), (3, 9, 3), (3, 10, 3)]


def test_input_checks():
    with pytest.raises(ValueError, match=r"x must have at least 2 dimensions, got shape \(5,\)"):
        tfa.tensor_ring(jnp.ones(5), 1)
    with pytest.raises(TypeError, match="x must be real, got dtype complex64"):
        tfa.tensor_ring(jnp.ones(SHAPE, jnp.complex64), RANKS)


@pytest.mark.parametrize("kw,message", [
    (dict(method="tt"), "method must be one of ['als', 'svd'], got 'tt'"),
    (dict(method="als", init="tucker"), "init must be one of ['random', 'svd'], got 'tucker'"),
    (dict(method="als", init=jnp.ones(3)), "init must be one of ['random', 'svd'], got Array"),
    (dict(method="als", init="random"), 'key is required for init="random"'),
    (dict(n_iter=0), "n_iter must be a positive integer, got 0"),
    (dict(tol=-1.0), "tol must be >= 0, got -1.0"),
])
def test_bad_options(x3, kw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tfa.tensor_ring(x3, RANKS, **kw)


def test_init_of_the_wrong_ranks(x3):
    with pytest.raises(ValueError, match=re.escape(
            "init must be a TRTensor of shape (8, 9, 10) and ranks (2, 3, 2); got shape "
            "(8, 9, 10) and ranks (2, 2, 2)")):
        tfa.tensor_ring(x3, RANKS, method="als", init=planted(0, ranks=(2, 2, 2)))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_init(x3, bad):
    cores = ring_cores(0, SHAPE, RANKS, np.float32)
    cores[1][0, 2, 1] = bad
    with pytest.raises(ValueError, match=r"init contains 1 NaN or Inf value"):
        tfa.tensor_ring(x3, RANKS, method="als", init=tfa.TRTensor(cores))


def test_zero_size_mode(x3):
    with pytest.raises(ValueError, match=re.escape("x has a mode of size zero (shape (8, 0, 10))")):
        tfa.tensor_ring(jnp.ones((8, 0, 10)), 1)


def test_key_is_the_first_keyword_only_argument():
    import inspect
    params = inspect.signature(tfa.tensor_ring).parameters.values()
    assert [p.name for p in params if p.kind is p.KEYWORD_ONLY][0] == "key"
