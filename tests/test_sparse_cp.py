"""Sparse tensors: the loader ``tfa.sparse_tensor``, ``tfa.mttkrp`` over the nonzeros of a
``BCOO`` and ``tfa.cp`` of a ``BCOO`` (ALS/HALS over the stored entries, never densified).

References: NumPy float64 (``np.add.at``, ``einsum``), the dense ``tfa.cp`` from the same start,
the dense leading singular vectors. No ``Fit`` line in tests/test_contracts.py: its contracts
build their inputs with array operations a ``BCOO`` does not have (``jnp.stack`` for the vmap
contract, ``.at[].set`` for the NaN contracts, slicing for the zero-size one), so the same
contracts are written here for a sparse ``x`` (jit == eager, vmap over a batched ``BCOO`` ==
a loop, deterministic, finite grad, NaN reported naming ``x``, scale equivariance 1e-30…1e30,
zero-size mode) and ``cp`` itself stays registered by its dense lines.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import sparse

import tensorfact as tfa
from tensorfact.decomposition import _sparse_cp
from tensorfact.decomposition._common import leading_subspace

SHAPE = (6, 7, 8)


def _sparse_data(shape=SHAPE, rank=3, density=0.4, seed=0):
    """A planted CP tensor kept on a random ``density`` of its entries: (BCOO, dense float32)."""
    rng = np.random.default_rng(seed)
    dense = np.asarray(tfa.random_cp(jax.random.key(seed), shape, rank=rank).to_dense())
    keep = rng.random(shape) < density
    dense = np.where(keep, dense, 0).astype(np.float32)
    return tfa.sparse_tensor(np.argwhere(keep), dense[keep], shape), dense


def _planted_sparse_cp(shape, rank, per_mode, seed=0, noise=0.0):
    """A CP tensor whose factor columns have ``per_mode[n]`` nonzeros each: exactly sparse and
    of rank ``rank``, built from its nonzeros alone. Returns (BCOO, factors)."""
    rng = np.random.default_rng(seed)
    factors, blocks = [], []
    for size, k in zip(shape, per_mode):
        a = np.zeros((size, rank))
        rows = [rng.choice(size, k, replace=False) for _ in range(rank)]
        for r in range(rank):
            a[rows[r], r] = rng.uniform(0.5, 1.5, k)
        factors.append(a)
        blocks.append(rows)
    idx = np.concatenate([np.stack(np.meshgrid(*[blocks[n][r] for n in range(len(shape))],
                                               indexing="ij"), -1).reshape(-1, len(shape))
                          for r in range(rank)])
    idx = np.unique(idx, axis=0)
    vals = np.zeros(len(idx))
    for r in range(rank):
        vals += np.prod([factors[n][idx[:, n], r] for n in range(len(shape))], axis=0)
    vals += noise * rng.standard_normal(len(idx)) * vals.std()
    return tfa.sparse_tensor(idx, vals.astype(np.float32), shape), factors


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


# -- the loader --------------------------------------------------------------------------------

def test_loader_sums_repeats_sorts_and_keeps_values_exact():
    rng = np.random.default_rng(1)
    shape = (4, 5, 3)
    idx = rng.integers(0, 3, (60, 3))                      # many repeats
    vals = rng.standard_normal(60).astype(np.float32)
    x = tfa.sparse_tensor(idx, vals, shape)
    expected = np.zeros(shape)
    np.add.at(expected, tuple(idx.T), vals.astype(np.float64))
    np.testing.assert_allclose(np.asarray(x.todense()), expected, rtol=1e-6, atol=1e-6)
    got = np.asarray(x.indices)
    assert x.unique_indices and x.indices_sorted and got.dtype == np.int32
    assert len(got) == len(np.unique(idx, axis=0))
    assert [tuple(r) for r in got] == sorted(tuple(r) for r in got)


def test_loader_takes_traced_values_and_an_empty_tensor():
    idx = np.array([[0, 1], [1, 0], [0, 1]])
    f = jax.jit(lambda v: tfa.sparse_tensor(idx, v, (2, 2)).todense())
    np.testing.assert_array_equal(f(jnp.array([1.0, 2.0, 3.0])), [[0, 4], [2, 0]])
    empty = tfa.sparse_tensor(np.zeros((0, 3), int), np.zeros(0), (2, 3, 4))
    assert empty.nse == 0 and empty.shape == (2, 3, 4)


@pytest.mark.parametrize("indices, values, shape, error, match", [
    ([[0, 1]], [1.0], (2, 0), ValueError, r"shape must be .*positive"),
    ([[0, 1]], [1.0], (2, 2.0), ValueError, "shape"),
    ([[0, 1]], [1.0], (), ValueError, "shape"),
    ([[0.0, 1.0]], [1.0], (2, 2), TypeError, "indices must be an integer"),
    ([[True, False]], [1.0], (2, 2), TypeError, "indices must be an integer"),
    ([[0, 1, 0]], [1.0], (2, 2), ValueError, r"indices must have shape \(nnz, 2\)"),
    ([[0, 2]], [1.0], (2, 2), ValueError, r"outside shape \(2, 2\), e.g. row 0: \[0, 2\]"),
    ([[0, 1], [-1, 0]], [1.0, 2.0], (2, 2), ValueError, r"e.g. row 1: \[-1, 0\]"),
    ([[0, 1]], [1.0, 2.0], (2, 2), ValueError, r"values must have shape \(1,\)"),
    ([[0, 1]], [np.nan], (2, 2), ValueError, "values contains 1 NaN or Inf"),
    ([[0, 1]], [np.inf], (2, 2), ValueError, "values contains 1 NaN or Inf"),
    ([[0, 1]], [1j], (2, 2), TypeError, "values must be real"),
])
def test_loader_validation_names_the_argument(indices, values, shape, error, match):
    with pytest.raises(error, match=match):
        tfa.sparse_tensor(np.asarray(indices), np.asarray(values), shape)


def test_loader_refuses_traced_indices():
    with pytest.raises(TypeError, match="indices must be concrete"):
        jax.jit(lambda i: tfa.sparse_tensor(i, jnp.ones(1), (2, 2)))(jnp.array([[0, 1]]))


# -- MTTKRP over the nonzeros --------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(5, 6, 7), (3, 4, 5, 6)], ids=["3-way", "4-way"])
def test_sparse_mttkrp_matches_dense_and_float64(shape):
    x, dense = _sparse_data(shape, density=0.3, seed=2)
    rng = np.random.default_rng(3)
    factors = [rng.standard_normal((s, 4)).astype(np.float32) for s in shape]
    letters = "abcd"[:len(shape)]
    for n in range(len(shape)):
        got = np.asarray(tfa.mttkrp(x, factors, n))
        spec = ",".join(f"{c}r" for k, c in enumerate(letters) if k != n)
        ref = np.einsum(f"{letters},{spec}->{letters[n]}r", dense.astype(np.float64),
                        *[f.astype(np.float64) for k, f in enumerate(factors) if k != n])
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
        np.testing.assert_allclose(got, np.asarray(tfa.mttkrp(jnp.asarray(dense), factors, n)),
                                   rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_sparse_mttkrp_reads_a_raw_bcoo_with_repeats_and_padding():
    """A BCOO built by hand may repeat coordinates (they add up) and carry padding entries
    outside the shape (``todense`` ignores them): MTTKRP means what ``todense`` means."""
    idx = jnp.array([[0, 1, 2], [1, 0, 0], [0, 1, 2], [2, 3, 4]])   # repeat, then padding
    x = sparse.BCOO((jnp.array([1.0, 2.0, 3.0, 100.0]), idx), shape=(2, 3, 4))
    factors = [jnp.arange(1.0, 5.0).reshape(2, 2), jnp.arange(6.0).reshape(3, 2),
               jnp.arange(8.0).reshape(4, 2)]
    for n in range(3):
        np.testing.assert_allclose(tfa.mttkrp(x, factors, n), tfa.mttkrp(x.todense(), factors, n))
    np.testing.assert_allclose(jax.jit(lambda x: tfa.mttkrp(x, factors, 1))(x),
                               tfa.mttkrp(x.todense(), factors, 1))


def test_sparse_mttkrp_errors():
    x, _ = _sparse_data()
    factors = [jnp.ones((s, 2)) for s in SHAPE]
    with pytest.raises(ValueError, match=r"factors\[2\] has 5 rows, but mode 2 of x"):
        tfa.mttkrp(x, factors[:2] + [jnp.ones((5, 2))], 0)
    with pytest.raises(ValueError, match='impl="pallas" has no kernel for a sparse x'):
        tfa.mttkrp(x, factors, 0, impl="pallas")
    with pytest.raises(TypeError, match="x must be a jax.experimental.sparse.BCOO"):
        tfa.mttkrp(sparse.BCSR.fromdense(jnp.eye(3)), [jnp.ones((3, 2))] * 2, 0)


# -- CP: the same path as the dense fit ----------------------------------------------------------

@pytest.mark.parametrize("options", [{}, {"nonneg": True}, {"l2": 0.05, "normalize": False}],
                         ids=["als", "hals", "l2-unnormalized"])
def test_sparse_cp_follows_the_dense_fit_from_the_same_start(options):
    x, dense = _sparse_data()
    if options.get("nonneg"):
        x, dense = tfa.sparse_tensor(x.indices, jnp.abs(x.data), SHAPE), np.abs(dense)
    start = tfa.random_cp(jax.random.key(5), SHAPE, rank=3)
    if options.get("nonneg"):
        start = tfa.CPTensor(start.weights, [jnp.abs(a) for a in start.factors])
    kw = dict(init=start, n_iter=12, tol=0, return_info=True, **options)
    got, info = tfa.cp(x, 3, **kw)
    ref, ref_info = tfa.cp(jnp.asarray(dense), 3, **kw)
    assert _rel(got.to_dense(), ref.to_dense()) < 1e-5
    for a, b in zip(got.factors, ref.factors):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())
    np.testing.assert_allclose(info.errors, ref_info.errors, rtol=1e-4)
    true = _rel(got.to_dense(), dense)                       # the error in float64
    assert float(info.rel_error) == pytest.approx(true, rel=1e-4)
    assert info.n_iter == 12 and info.component_norms.shape == (3,)


def test_sparse_cp_4way_and_while_loop_match_dense():
    x, dense = _sparse_data((4, 5, 3, 6), rank=2, density=0.5, seed=4)
    start = tfa.random_cp(jax.random.key(6), (4, 5, 3, 6), rank=2)
    got, info = tfa.cp(x, 2, init=start, n_iter=30, tol=1e-5, return_info=True)
    ref, ref_info = tfa.cp(jnp.asarray(dense), 2, init=start, n_iter=30, tol=1e-5,
                           return_info=True)
    assert int(info.n_iter) == int(ref_info.n_iter) and bool(info.converged)
    assert _rel(got.to_dense(), ref.to_dense()) < 1e-5


def test_sparse_svd_start_is_the_leading_subspace():
    """Modes larger than rank + OVERSAMPLE take the subspace iteration; on data with a spectral
    gap it finds the dense leading singular vectors, and the fit equals the dense SVD-started
    fit."""
    x, _ = _planted_sparse_cp((40, 30, 25), 3, (12, 10, 8), seed=7, noise=0.05)
    dense = jnp.asarray(x.todense())
    assert min(x.shape) > 3 + _sparse_cp.OVERSAMPLE
    for n in range(3):
        u = np.asarray(_sparse_cp.sparse_leading_subspace(x, n, 3))
        v = np.asarray(leading_subspace(tfa.unfold(dense, n), 3))
        np.testing.assert_allclose(u.T @ u, np.eye(3), atol=1e-5)
        cosines = np.linalg.svd(u.T @ v, compute_uv=False)
        assert cosines.min() > 1 - 1e-4, (n, cosines)
    got, info = tfa.cp(x, 3, n_iter=10, tol=0, return_info=True)
    ref, ref_info = tfa.cp(dense, 3, n_iter=10, tol=0, return_info=True)
    assert _rel(got.to_dense(), ref.to_dense()) < 1e-3
    assert float(info.rel_error) == pytest.approx(float(ref_info.rel_error), rel=1e-3)


def test_sparse_cp_random_start_and_rank_above_a_mode():
    x, dense = _sparse_data((3, 7, 8), rank=2)
    out = tfa.cp(x, 5, key=jax.random.key(0), init="random", n_iter=20, tol=0)
    assert all(a.shape == (s, 5) for a, s in zip(out.factors, (3, 7, 8)))
    assert _rel(out.to_dense(), dense) < 0.9 and np.isfinite(np.asarray(out.weights)).all()
    over = tfa.cp(x, 5, n_iter=20, tol=0)                         # svd start, rank > I_0 = 3
    assert np.isfinite(np.asarray(over.to_dense())).all() and _rel(over.to_dense(), dense) < 0.9
    with pytest.raises(ValueError, match='key is required for init="random"'):
        tfa.cp(x, 2, init="random")


# -- the contracts, for a sparse x ---------------------------------------------------------------

def _fit(x, **kw):
    return tfa.cp(x, 2, n_iter=8, tol=0, **kw)


def test_jit_matches_eager_and_is_deterministic():
    x, _ = _sparse_data()
    eager = np.asarray(_fit(x).to_dense())
    jitted = np.asarray(jax.jit(lambda x: _fit(x).to_dense())(x))
    np.testing.assert_allclose(jitted, eager, rtol=1e-4, atol=1e-5 * np.abs(eager).max())
    np.testing.assert_array_equal(np.asarray(_fit(x).to_dense()), eager)


def test_vmap_over_a_batched_bcoo_matches_a_loop():
    xs = [_sparse_data(seed=s, density=0.4)[0] for s in (0, 1)]
    nse = min(x.nse for x in xs)
    xs = [sparse.BCOO((x.data[:nse], x.indices[:nse]), shape=SHAPE) for x in xs]
    batch = sparse.BCOO((jnp.stack([x.data for x in xs]), jnp.stack([x.indices for x in xs])),
                        shape=(2,) + SHAPE)
    batched = jax.vmap(lambda x: _fit(x).to_dense())(batch)
    for i, x in enumerate(xs):
        single = np.asarray(_fit(x).to_dense())
        np.testing.assert_allclose(batched[i], single, rtol=1e-3, atol=1e-3 * np.abs(single).max())


def test_grad_through_the_values_is_finite():
    x, _ = _sparse_data()

    def loss(values):
        y = sparse.BCOO((values, x.indices), shape=SHAPE, indices_sorted=True,
                        unique_indices=True)
        return jnp.sum(_fit(y).to_dense() ** 2)

    g = jax.grad(loss)(x.data)
    assert g.shape == x.data.shape and np.isfinite(np.asarray(g)).all()


@pytest.mark.parametrize("exponent", [-30, 30])
def test_scale_equivariant_with_the_true_error(exponent):
    x, _ = _sparse_data()
    c = np.float32(10.0 ** exponent)
    base, info = _fit(x, return_info=True)
    out, info_c = _fit(x * c, return_info=True)
    out = np.asarray(out.to_dense(), np.float64) / c
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, base.to_dense(), rtol=1e-3,
                               atol=1e-3 * np.abs(np.asarray(base.to_dense())).max())
    assert float(info_c.rel_error) == pytest.approx(float(info.rel_error), rel=1e-3)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_values_reported_eagerly_and_nan_under_jit(bad):
    x, _ = _sparse_data()
    y = sparse.BCOO((x.data.at[3].set(bad), x.indices), shape=SHAPE)
    with pytest.raises(ValueError, match="x contains 1 NaN or Inf"):
        _fit(y)
    out = np.asarray(jax.jit(lambda y: _fit(y).to_dense())(y))
    assert np.isnan(out).all()


def test_bad_sparse_x_and_options_are_errors_naming_them():
    x, _ = _sparse_data()
    with pytest.raises(ValueError, match="mask cannot be given with a sparse x"):
        tfa.cp(x, 2, mask=jnp.ones(SHAPE, bool))
    with pytest.raises(ValueError, match='impl="pallas" has no kernel'):
        tfa.cp(x, 2, impl="pallas")
    batched = sparse.BCOO((x.data[None], x.indices[None]), shape=(1,) + SHAPE)
    with pytest.raises(ValueError, match="x must be a BCOO with sparse dimensions only "
                                         r"\(n_batch=0, n_dense=0\), got n_batch=1"):
        tfa.cp(batched, 2)
    with_dense = sparse.BCOO.fromdense(jnp.ones((3, 4, 2)), n_dense=1)
    with pytest.raises(ValueError, match="got n_batch=0, n_dense=1"):
        tfa.cp(with_dense, 2)
    with pytest.raises(TypeError, match="x must be a jax.experimental.sparse.BCOO.*to_bcoo"):
        tfa.cp(sparse.BCSR.fromdense(jnp.eye(3)), 2)
    with pytest.raises(ValueError, match="x must have at least 2 dimensions"):
        tfa.cp(sparse.BCOO.fromdense(jnp.ones(3)), 1)
    empty = sparse.BCOO((jnp.zeros(0), jnp.zeros((0, 3), jnp.int32)), shape=(2, 0, 3))
    with pytest.raises(ValueError, match=r"x has a mode of size zero \(shape \(2, 0, 3\)\)"):
        tfa.cp(empty, 2)
    with pytest.raises(ValueError, match="init must be a CPTensor of shape"):
        tfa.cp(x, 2, init=tfa.random_cp(jax.random.key(0), (6, 7, 9), rank=2))
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        tfa.cp(x, 0)


# -- scale: memory that follows the nonzeros -----------------------------------------------------

def _largest_array(jaxpr):
    """The largest number of entries of any value a jaxpr (and the jaxprs inside it) makes."""
    best = max([math.prod(v.aval.shape) for v in jaxpr.invars] or [0])
    for eqn in jaxpr.eqns:
        for v in eqn.outvars:
            best = max(best, math.prod(getattr(v.aval, "shape", ())))
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (tuple, list)) else (p,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    best = max(best, _largest_array(inner))
    return best


def test_medium_sparse_fit_never_forms_a_dense_array():
    """2000 × 2000 × 500 (2·10⁹ entries) with about 2·10⁴ nonzeros, an exact sparse rank-3
    tensor: recovered from the SVD start, and no value of the compiled program (scan, while and
    cond bodies included) is larger than a few times ``nnz · (rank + OVERSAMPLE)``."""
    shape, rank = (2000, 2000, 500), 3
    x, _ = _planted_sparse_cp(shape, rank, (40, 40, 5), seed=3)
    assert 1.5e4 < x.nse < 2.5e4

    def fit(x):
        return tfa.cp(x, rank, n_iter=40, return_info=True)

    largest = _largest_array(jax.make_jaxpr(fit)(x).jaxpr)
    assert largest <= x.nse * (rank + _sparse_cp.OVERSAMPLE) < math.prod(shape) // 10**3
    out, info = jax.jit(fit)(x)
    assert float(info.rel_error) < 1e-4, info.errors
