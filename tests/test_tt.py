"""Tests of the tensor-train core: ``TTTensor``/``TTMatrix``, TT-SVD (``tfa.tt``), TT-rounding,
arithmetic in the format, ``tt_matrix``/``tt_matmul``; jit, vmap, grad and argument checks.

References are written here in NumPy float64 (entry-by-entry products of core slices, a TT-SVD
with exact SVDs) or taken from TensorLy's ``tensor_train``. Shapes are few and small so that
each compiled program is reused; float64 comparisons run under a local x64 context.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import tensorfact as tfa
from _helpers import rel, x64

SHAPE = (4, 5, 3, 4, 3)          # 5-way, as the issue asks
RANKS = (1, 3, 4, 3, 2, 1)
MSHAPE, NSHAPE = (2, 3, 2), (3, 2, 4)   # a 12 × 24 TT-matrix
MRANKS = (1, 3, 2, 1)


def random_cores(seed, shape, ranks, dtype=np.float64, extra=()):
    """Standard normal cores (r_{k-1}, *extra_k, n_k, r_k) scaled so entries are O(1)."""
    rng = np.random.default_rng(seed)
    cores = []
    for k, n in enumerate(shape):
        mid = (extra[k], n) if extra else (n,)
        cores.append(rng.standard_normal((ranks[k], *mid, ranks[k + 1])) / math.sqrt(ranks[k]))
    return [c.astype(dtype) for c in cores]


def planted(seed=0, shape=SHAPE, ranks=RANKS, dtype=jnp.float32):
    return tfa.TTTensor([jnp.asarray(c, dtype) for c in random_cores(seed, shape, ranks)])


def np_entry(cores, *slices):
    """One entry: the product of the core slices, in float64."""
    out = np.ones((1, 1))
    for g, s in zip(cores, zip(*slices)):
        out = out @ np.asarray(g, np.float64)[(slice(None),) + s]
    return out[0, 0]


def np_tt_dense(cores):
    shape = tuple(g.shape[1] for g in cores)
    return np.array([np_entry(cores, i) for i in np.ndindex(*shape)]).reshape(shape)


def np_ttm_dense(cores):
    rows = tuple(g.shape[1] for g in cores)
    cols = tuple(g.shape[2] for g in cores)
    out = np.empty((math.prod(rows), math.prod(cols)))
    for a, i in enumerate(np.ndindex(*rows)):
        for b, j in enumerate(np.ndindex(*cols)):
            out[a, b] = np_entry(cores, i, j)
    return out


def np_tt_svd(x, eps=None, ranks=None):
    """TT-SVD with exact float64 SVDs: fixed ``ranks``, or Oseledets' threshold
    δ = eps‖x‖/√(d−1) on the discarded singular values. Returns (ranks, dense approximation)."""
    x = np.asarray(x, np.float64)
    d = x.ndim
    delta_sq = None if eps is None else eps ** 2 * np.sum(x * x) / (d - 1)
    out, c, r, approx = [1], x, 1, np.ones((1, 1))
    for k in range(d - 1):
        u, s, vt = np.linalg.svd(c.reshape(r * x.shape[k], -1), full_matrices=False)
        if eps is None:
            new = min(ranks[k + 1], s.size)
        else:
            tail = np.concatenate([np.cumsum((s ** 2)[::-1])[::-1], [0.0]])
            new = max(1, int(np.sum(tail > delta_sq)))
        approx = approx @ u[:, :new].reshape(r, -1)  # (∏ n_<=k, n_k·r_k), then flattened
        approx = approx.reshape(-1, new)
        out.append(new)
        c, r = s[:new, None] * vt[:new], new
    dense = (approx @ c.reshape(r, -1)).reshape(x.shape)
    return tuple(out + [1]), dense


def assert_left_orthonormal(t, atol):
    for g in t.cores[:-1]:
        q = np.asarray(g, np.float64).reshape(-1, g.shape[-1])
        used = np.any(q != 0, axis=0)  # masked (zero) columns are padding
        np.testing.assert_allclose(q[:, used].T @ q[:, used], np.eye(used.sum()), atol=atol)


@pytest.fixture(scope="module")
def p64():
    with x64():
        return planted(0, dtype=jnp.float64)


# ---------------------------------------------------------------------------------------------
# types
# ---------------------------------------------------------------------------------------------

def test_tttensor_shape_rank_dense_norm():
    cores = random_cores(1, (3, 2, 4), (1, 2, 3, 1))
    with x64():
        t = tfa.TTTensor(cores)
        assert t.shape == (3, 2, 4) and t.ndim == 3 and t.rank == (1, 2, 3, 1)
        assert t.n_params == sum(c.size for c in cores) == 6 + 12 + 12
        ref = np_tt_dense(cores)
        np.testing.assert_allclose(t.to_dense(), ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(t.norm(), np.linalg.norm(ref), rtol=1e-12)
        assert [c.shape for c in t] == [c.shape for c in cores] and len(t) == 3
        leaves, tree = jax.tree_util.tree_flatten(t)
        assert len(leaves) == 3
        doubled = jax.tree_util.tree_unflatten(tree, [2 * v for v in leaves])
        assert isinstance(doubled, tfa.TTTensor)
        np.testing.assert_allclose(doubled.to_dense(), 8 * ref, rtol=1e-12, atol=1e-12)
    assert "TTTensor(cores=[float" in repr(t)


def test_ttmatrix_shape_dense_transpose():
    cores = random_cores(2, NSHAPE, MRANKS, extra=MSHAPE)
    with x64():
        tm = tfa.TTMatrix(cores)
        assert tm.row_shape == MSHAPE and tm.col_shape == NSHAPE and tm.shape == (12, 24)
        assert tm.rank == MRANKS
        ref = np_ttm_dense(cores)
        np.testing.assert_allclose(tm.to_dense(), ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(tm.T.to_dense(), ref.T, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(tm.norm(), np.linalg.norm(ref), rtol=1e-12)
        # trim() drops exactly-zero rank indices (here: a zero column padded onto bond 1)
        padded = [np.concatenate([cores[0], np.zeros((1, 2, 3, 2))], axis=-1),
                  np.concatenate([cores[1], np.ones((2, 3, 2, 2))], axis=0), cores[2]]
        trimmed = tfa.TTMatrix(padded).trim()
        assert tfa.TTMatrix(padded).rank == (1, 5, 2, 1) and trimmed.rank == MRANKS
        np.testing.assert_allclose(trimmed.to_dense(), ref, rtol=1e-12, atol=1e-12)
    zero = tfa.TTTensor([jnp.zeros((1, 2, 2)), jnp.zeros((2, 3, 1))]).trim()
    assert zero.rank == (1, 1, 1) and not np.any(np.asarray(zero.to_dense()))
    with pytest.raises(AttributeError, match="immutable"):
        zero.cores = ()


@pytest.mark.parametrize("cores, match", [
    (jnp.ones((1, 2, 1)), "non-empty sequence"),
    ([], "non-empty sequence"),
    ([jnp.ones((1, 2))], r"cores\[0\] of a TTTensor must be 3-D"),
    ([jnp.ones((1, 2, 3)), jnp.ones((2, 2, 1))], r"cores\[1\] must start with rank 3"),
    ([jnp.ones((2, 2, 3)), jnp.ones((3, 2, 1))], "start and end with 1"),
    ([jnp.ones((1, 2, 3)), jnp.ones((3, 2, 2))], "start and end with 1"),
])
def test_tttensor_constructor_errors(cores, match):
    with pytest.raises(ValueError, match=match):
        tfa.TTTensor(cores)


def test_ttmatrix_constructor_errors():
    with pytest.raises(ValueError, match=r"cores\[0\] of a TTMatrix must be 4-D"):
        tfa.TTMatrix([jnp.ones((1, 2, 1))])
    with pytest.raises(ValueError, match="start and end with 1"):
        tfa.TTMatrix([jnp.ones((1, 2, 2, 2))])


# ---------------------------------------------------------------------------------------------
# TT-SVD
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.float64, 1e-12)])
def test_exact_recovery_of_planted_tt(dtype, tol):
    with x64():
        p = planted(3, dtype=dtype)
        x = p.to_dense()
        t = tfa.tt(x, RANKS)
        assert t.rank == RANKS and t.dtype == dtype
        assert rel(x, t.to_dense()) < tol
        assert_left_orthonormal(t, atol=10 * tol)
        # eps finds the planted ranks; an int max rank clipped to the unfoldings is exact
        t_eps = tfa.tt(x, eps=1e-3)
        assert t_eps.rank == RANKS
        assert rel(x, t_eps.to_dense()) < tol
        if dtype == jnp.float64:
            full = tfa.tt(x, 1000)
            assert full.rank == (1, 4, 20, 12, 3, 1)  # min(∏ left, ∏ right) per bond
            assert rel(x, full.to_dense()) < tol


@pytest.mark.parametrize("eps", [0.05, 0.3, 0.6])
def test_eps_ranks_match_numpy_tt_svd(eps):
    with x64():
        x = jax.random.normal(jax.random.key(4), SHAPE, jnp.float64)
        t = tfa.tt(x, eps=eps)
        assert rel(x, t.to_dense()) <= eps
        assert t.rank == np_tt_svd(x, eps)[0]


@pytest.mark.slow  # a few seconds: each example is a new shape, hence a new compilation
@settings(max_examples=6, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=2, max_size=3),
       eps=st.floats(0.0, 0.9), seed=st.integers(0, 2**16), f64=st.booleans())
def test_eps_bound_holds(shape, eps, seed, f64):
    with x64():
        dtype = jnp.float64 if f64 else jnp.float32
        x = jax.random.normal(jax.random.key(seed), tuple(shape), dtype)
        t = tfa.tt(x, eps=eps)
        slack = 1e-12 if f64 else 1e-5  # rounding of the reconstruction itself
        assert rel(x, t.to_dense()) <= eps + slack
        ref = np_tt_svd(x, eps)[0]
        assert all(r <= s + 1 for r, s in zip(t.rank, ref)), (t.rank, ref)


def test_fixed_ranks_match_tensorly():
    tl = pytest.importorskip("tensorly")
    from tensorly.decomposition import tensor_train
    with x64():
        x = jax.random.normal(jax.random.key(5), SHAPE, jnp.float64)
        ours = rel(x, tfa.tt(x, RANKS).to_dense())
    with tl.backend_context("numpy"):
        theirs_tt = tensor_train(np.asarray(x), list(RANKS))
        theirs = rel(np.asarray(x), tl.tt_to_tensor(theirs_tt))
    assert ours <= theirs * (1 + 1e-9), (ours, theirs)


def test_inner_ranks_mean_the_full_list(p64):
    with x64():
        x = p64.to_dense()
        full, inner = tfa.tt(x, RANKS), tfa.tt(x, RANKS[1:-1])
        assert inner.rank == RANKS
        for g, h in zip(full.cores, inner.cores):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(h))
        assert tfa.tt(x, eps=1e-3, max_rank=(2, 2, 2, 2)).rank == (1, 2, 2, 2, 2, 1)
        assert tfa.tt_round(full, (2, 3, 2, 1)).rank == (1, 2, 3, 2, 1, 1)


def test_eps_under_jit_is_masked_and_trims_to_eager(p64):
    with x64():
        x = p64.to_dense() + 1e-3 * jax.random.normal(jax.random.key(6), SHAPE, jnp.float64)
        eager = tfa.tt(x, eps=0.01)
        jitted = jax.jit(lambda x: tfa.tt(x, eps=0.01, max_rank=6))(x)
        assert jitted.rank == (1, 4, 6, 6, 3, 1)  # static: the cap, clipped per bond
        assert jitted.trim().rank == eager.rank == RANKS
        np.testing.assert_allclose(jitted.to_dense(), eager.to_dense(), atol=1e-12)
        assert rel(x, jitted.to_dense()) <= 0.01
        # the padding is exact zeros, and the kept columns are orthonormal
        assert np.all(np.asarray(jitted.cores[1])[..., RANKS[2]:] == 0)
        assert_left_orthonormal(jitted, atol=1e-12)
        # the same eps with max_rank eagerly: the cap binds, no padding
        capped = tfa.tt(x, eps=0.01, max_rank=2)
        assert capped.rank == (1, 2, 2, 2, 2, 1)
        with pytest.raises(ValueError, match="needs a static max_rank"):
            jax.jit(lambda x: tfa.tt(x, eps=0.01))(x)
        with pytest.raises(ValueError, match="cannot run under jax.jit"):
            jax.jit(lambda c: tfa.TTTensor(c).trim().cores)(jitted.cores)


def test_vmap_matches_loop(p64):
    with x64():
        xs = jnp.stack([p64.to_dense(), 2 * planted(7, dtype=jnp.float64).to_dense()])
        batched = jax.vmap(lambda x: tfa.tt(x, RANKS))(xs)
        dense = jax.vmap(lambda t: t.to_dense())(batched)
        np.testing.assert_allclose(dense, xs, atol=1e-10)
        masked = jax.vmap(lambda x: tfa.tt(x, eps=1e-6, max_rank=4).to_dense())(xs)
        np.testing.assert_allclose(masked, xs, atol=1e-10)


@pytest.mark.parametrize("kwargs, match", [
    (dict(ranks=(1, 3, 4, 3, 2)), r"ranks must have d \+ 1 = 6 entries"),
    (dict(ranks=(2, 3, 4, 3, 2, 1)), "must start and end with 1"),
    (dict(ranks=(1, 3, 4, 3, 2, 2)), "must start and end with 1"),
    (dict(ranks=(1, 3, 0, 3, 2, 1)), r"ranks\[2\] must be a positive integer"),
    (dict(ranks=(1, 5, 4, 3, 2, 1)), r"ranks\[1\] = 5 is larger than .* at most"),
    (dict(ranks=(1, 3, 4, 3, 4, 1)), r"ranks\[4\] = 4 is larger"),
    (dict(ranks=0), "ranks must be a positive integer"),
    (dict(ranks="3"), "ranks must be an int or a sequence"),
    (dict(), "give ranks"),
    (dict(ranks=3, eps=0.1), "either ranks or eps"),
    (dict(ranks=3, max_rank=4), "max_rank caps the ranks chosen by eps"),
    (dict(eps=-0.1), "eps must be >= 0"),
    (dict(eps=0.1, max_rank=(1, 2, 1)), r"max_rank must have d \+ 1 = 6 entries"),
])
def test_tt_argument_errors(kwargs, match):
    x = jnp.ones(SHAPE)
    with pytest.raises(ValueError, match=match):
        tfa.tt(x, **kwargs)


def test_tt_input_errors():
    with pytest.raises(ValueError, match="x must have at least 1 dimensions"):
        tfa.tt(jnp.ones(()), 1)
    with pytest.raises(ValueError, match="NaN or Inf"):
        tfa.tt(jnp.ones((3, 4)).at[0, 0].set(jnp.nan), 2)
    with pytest.raises(ValueError, match="NaN or Inf"):
        tfa.tt(jnp.ones((3, 4)).at[0, 0].set(jnp.inf), eps=0.1)
    one = tfa.tt(jnp.arange(5.0), [1, 1])
    assert one.rank == (1, 1) and np.allclose(one.to_dense(), np.arange(5.0))


# ---------------------------------------------------------------------------------------------
# arithmetic in the format (float64, against the dense results)
# ---------------------------------------------------------------------------------------------

def test_add_scale_hadamard_inner_norm(p64):
    with x64():
        q = planted(8, ranks=(1, 2, 2, 2, 2, 1), dtype=jnp.float64)
        a, b = p64.to_dense(), q.to_dense()
        cases = {
            "add": (p64 + q, a + b), "sub": (p64 - q, a - b), "neg": (-p64, -a),
            "scale": (2.5 * p64, 2.5 * a), "rscale": (p64 * np.float64(-3.0), -3.0 * a),
            "div": (p64 / 4, a / 4), "hadamard": (p64 * q, a * b),
            "tt_scale": (tfa.tt_scale(p64, jnp.asarray(0.5)), 0.5 * a),
        }
        for name, (t, ref) in cases.items():
            assert isinstance(t, tfa.TTTensor), name
            np.testing.assert_allclose(t.to_dense(), ref, rtol=1e-12, atol=1e-12, err_msg=name)
        assert (p64 + q).rank == tuple(r + s if 0 < k < 5 else 1
                                       for k, (r, s) in enumerate(zip(RANKS, q.rank)))
        assert (p64 * q).rank == tuple(r * s for r, s in zip(RANKS, q.rank))
        np.testing.assert_allclose(tfa.tt_inner(p64, q), np.vdot(a, b), rtol=1e-12)
        np.testing.assert_allclose((p64 - q).norm(), np.linalg.norm(a - b), rtol=1e-12)


@pytest.mark.parametrize("side", ["left", "right"])
def test_orthogonalize(p64, side):
    with x64():
        t = p64.orthogonalize(side)
        np.testing.assert_allclose(t.to_dense(), p64.to_dense(), atol=1e-12)
        inner = t.cores[:-1] if side == "left" else t.cores[1:]
        for g in inner:
            m = np.asarray(g).reshape(-1, g.shape[-1]) if side == "left" else \
                np.asarray(g).reshape(g.shape[0], -1).T
            np.testing.assert_allclose(m.T @ m, np.eye(m.shape[1]), atol=1e-12)
        carrier = t.cores[-1] if side == "left" else t.cores[0]
        np.testing.assert_allclose(np.linalg.norm(carrier), np.linalg.norm(p64.to_dense()),
                                   rtol=1e-12)
    with pytest.raises(ValueError, match="side must be one of"):
        tfa.tt_orthogonalize(p64, "up")


def test_gather(p64):
    with x64():
        dense = np.asarray(p64.to_dense())
        rng = np.random.default_rng(9)
        idx = np.stack([rng.integers(0, n, 7) for n in SHAPE], axis=1)
        idx[0] = [-1, -2, 0, 1, -3]  # negative indices count from the end, as in NumPy
        got = tfa.tt_gather(p64, idx)
        np.testing.assert_allclose(got, dense[tuple(idx.T)], rtol=1e-12)
        grid = idx.reshape(7, 1, 5)  # any leading batch shape
        assert p64.gather(grid).shape == (7, 1)
        np.testing.assert_allclose(p64.gather(idx[3]), dense[tuple(idx[3])], rtol=1e-12)
    with pytest.raises(ValueError, match=r"indices must have shape \(\.\.\., 5\)"):
        tfa.tt_gather(p64, np.zeros((3, 4), int))
    with pytest.raises(TypeError, match="indices must be integers"):
        tfa.tt_gather(p64, np.zeros((3, 5)))


def test_round_recovers_ranks_and_meets_eps(p64):
    with x64():
        twice = p64 + p64  # rank doubles, the tensor is 2·p
        rounded = tfa.tt_round(twice, eps=1e-8)
        assert rounded.rank == RANKS
        np.testing.assert_allclose(rounded.to_dense(), 2 * p64.to_dense(), atol=1e-10)
        assert_left_orthonormal(rounded, atol=1e-10)
        for eps in (0.1, 0.4):
            r = tfa.tt_round(p64, eps=eps)
            assert rel(p64.to_dense(), r.to_dense()) <= eps
            assert max(r.rank) < max(RANKS) or eps == 0.1
        # fixed ranks are upper bounds (nothing grows); the result equals the TT-SVD of the
        # dense tensor at those ranks, as rounding is TT-SVD through orthogonalised cores
        fixed = tfa.tt_round(p64, (1, 2, 9, 2, 9, 1))
        assert fixed.rank == (1, 2, 4, 2, 2, 1)
        ranks, ref = np_tt_svd(p64.to_dense(), ranks=fixed.rank)
        assert ranks == fixed.rank
        np.testing.assert_allclose(fixed.to_dense(), ref, atol=1e-10)
        jitted = jax.jit(lambda t: tfa.tt_round(t + t, eps=1e-8, max_rank=5))(p64)
        assert jitted.rank == (1, 4, 5, 5, 3, 1)
        assert jitted.trim().rank == RANKS
        np.testing.assert_allclose(jitted.to_dense(), 2 * p64.to_dense(), atol=1e-10)
    with pytest.raises(ValueError, match="needs a static max_rank"):
        jax.jit(lambda t: tfa.tt_round(t, eps=0.1))(p64)
    with pytest.raises(TypeError, match="t must be a TTTensor or TTMatrix"):
        tfa.tt_round(jnp.ones((3, 3)), 2)


def test_format_mismatch_errors(p64):
    other = planted(1, shape=(4, 5, 3, 4, 2), ranks=RANKS)
    tm = tfa.TTMatrix([jnp.ones((1, 2, 2, 1))])
    with pytest.raises(ValueError, match="same shape"):
        tfa.tt_add(p64, other)
    with pytest.raises(ValueError, match="same shape"):
        tfa.tt_inner(p64, other)
    with pytest.raises(TypeError, match="same type"):
        tfa.tt_hadamard(p64, tm)
    with pytest.raises(TypeError, match="alpha must be a scalar"):
        tfa.tt_scale(p64, jnp.ones(3))
    with pytest.raises(TypeError, match="a must be a TTTensor or TTMatrix"):
        tfa.tt_add(jnp.ones(3), p64)


# ---------------------------------------------------------------------------------------------
# TT-matrices
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dense_w():
    return np.random.default_rng(10).standard_normal((12, 24))


def test_tt_matrix_exact_at_full_rank_and_matmul(dense_w):
    with x64():
        w = jnp.asarray(dense_w)
        tm = tfa.tt_matrix(w, MSHAPE, NSHAPE, 10_000)
        assert tm.rank == (1, 6, 8, 1)  # m1 n1 = 6 and m3 n3 = 8 bound the bonds
        np.testing.assert_allclose(tm.to_dense(), dense_w, atol=1e-12)
        rng = np.random.default_rng(11)
        v1, v2 = rng.standard_normal(24), rng.standard_normal((24, 5))
        x1, x3 = rng.standard_normal(12), rng.standard_normal((2, 3, 12))
        np.testing.assert_allclose(tm @ v1, dense_w @ v1, atol=1e-11)
        np.testing.assert_allclose(tm @ v2, dense_w @ v2, atol=1e-11)
        np.testing.assert_allclose(tfa.tt_matmul(tm, v2), dense_w @ v2, atol=1e-11)
        np.testing.assert_allclose(x1 @ tm, x1 @ dense_w, atol=1e-11)
        np.testing.assert_allclose(jnp.asarray(x3) @ tm, x3 @ dense_w, atol=1e-11)


def test_tt_matrix_truncated_and_in_format_products():
    with x64():
        a = tfa.TTMatrix([jnp.asarray(c) for c in random_cores(12, NSHAPE, MRANKS, extra=MSHAPE)])
        b = tfa.TTMatrix([jnp.asarray(c) for c in random_cores(13, (2, 2, 2), (1, 2, 2, 1),
                                                                extra=NSHAPE)])
        da, db = np_ttm_dense(a.cores), np_ttm_dense(b.cores)
        # planted TT-matrix: recovered at its ranks; eps bound on a noisy one
        assert tfa.tt_matrix(da, MSHAPE, NSHAPE, MRANKS).rank == MRANKS
        np.testing.assert_allclose(tfa.tt_matrix(da, MSHAPE, NSHAPE, MRANKS).to_dense(), da,
                                   atol=1e-11)
        noisy = da + 0.05 * np.random.default_rng(14).standard_normal(da.shape)
        approx = tfa.tt_matrix(noisy, MSHAPE, NSHAPE, eps=0.1)
        assert rel(noisy, approx.to_dense()) <= 0.1 and approx.rank == MRANKS
        ab = a @ b
        assert isinstance(ab, tfa.TTMatrix) and ab.rank == (1, 6, 4, 1)
        np.testing.assert_allclose(ab.to_dense(), da @ db, rtol=1e-11, atol=1e-11)
        v = planted(15, shape=NSHAPE, ranks=(1, 2, 3, 1), dtype=jnp.float64)
        av = a @ v
        assert isinstance(av, tfa.TTTensor) and av.shape == MSHAPE
        np.testing.assert_allclose(av.to_dense().reshape(-1),
                                   da @ np.asarray(v.to_dense()).reshape(-1), atol=1e-11)
        u = planted(16, shape=MSHAPE, ranks=(1, 2, 2, 1), dtype=jnp.float64)
        np.testing.assert_allclose(tfa.tt_matmul(u, a).to_dense().reshape(-1),
                                   np.asarray(u.to_dense()).reshape(-1) @ da, atol=1e-11)
        # arithmetic and rounding work on TT-matrices as well
        np.testing.assert_allclose((a + a).to_dense(), 2 * da, atol=1e-12)
        np.testing.assert_allclose((a * a).to_dense(), da * da, atol=1e-11)
        np.testing.assert_allclose(tfa.tt_inner(a, a), np.sum(da * da), rtol=1e-12)
        rounded = tfa.tt_round(a + a, eps=1e-8)
        assert isinstance(rounded, tfa.TTMatrix) and rounded.rank == MRANKS
        np.testing.assert_allclose(rounded.to_dense(), 2 * da, atol=1e-10)


def test_tt_matrix_and_matmul_errors(dense_w):
    w = jnp.asarray(dense_w, jnp.float32)
    with pytest.raises(ValueError, match=r"row_shape \(3, 5\) multiplies to 15"):
        tfa.tt_matrix(w, (3, 5), (4, 6), 2)
    with pytest.raises(ValueError, match=r"col_shape \(4, 5\) multiplies to 20"):
        tfa.tt_matrix(w, (3, 4), (4, 5), 2)
    with pytest.raises(ValueError, match=r"row_shape\[1\] must be a positive integer"):
        tfa.tt_matrix(w, (12, 0), (4, 6), 2)
    with pytest.raises(ValueError, match="w must be a 2-D matrix"):
        tfa.tt_matrix(w.reshape(-1), (3, 4), (4, 6), 2)
    with pytest.raises(ValueError, match=r"ranks must have d \+ 1 = 3 entries"):
        tfa.tt_matrix(w, (3, 4), (4, 6), (1, 2, 2, 1))
    tm = tfa.tt_matrix(w, (3, 4), (4, 6), 2)
    with pytest.raises(ValueError, match=r"W @ v needs v of shape \(24,\)"):
        tm @ jnp.ones((12,))
    with pytest.raises(ValueError, match=r"x @ W needs x of shape \(\.\.\., 12\)"):
        jnp.ones((3, 24)) @ tm
    with pytest.raises(ValueError, match="a.col_shape == b.row_shape"):
        tm @ tm
    with pytest.raises(ValueError, match="col_shape"):
        tm @ tfa.TTTensor([jnp.ones((1, 4, 1)), jnp.ones((1, 5, 1))])
    with pytest.raises(TypeError, match="needs a TTMatrix on at least one side"):
        tfa.tt_matmul(jnp.ones((2, 2)), jnp.ones((2, 2)))


@pytest.mark.parametrize("row_shape, col_shape, padded_rows, padded_cols", [
    ((3, 4), (2, 3, 4), (3, 4, 1), (2, 3, 4)),   # fewer row factors: padded with 1s
    ((2, 3, 2), (24,), (2, 3, 2), (24, 1, 1)),   # one column factor (tensorly-torch style)
])
def test_tt_matrix_with_unequal_numbers_of_factors(dense_w, row_shape, col_shape, padded_rows,
                                                  padded_cols):
    with x64():
        tm = tfa.tt_matrix(jnp.asarray(dense_w), row_shape, col_shape, 10_000)
        assert tm.row_shape == padded_rows and tm.col_shape == padded_cols
        np.testing.assert_allclose(np_ttm_dense(tm.cores), dense_w, atol=1e-12)  # NumPy ref
        x = np.random.default_rng(30).standard_normal((3, 12))
        np.testing.assert_allclose(x @ tm, x @ dense_w, atol=1e-11)
        # truncated: the same as the TT-matrix of the explicitly padded shapes
        a = tfa.tt_matrix(jnp.asarray(dense_w), row_shape, col_shape, 2)
        b = tfa.tt_matrix(jnp.asarray(dense_w), padded_rows, padded_cols, 2)
        np.testing.assert_allclose(a.to_dense(), b.to_dense(), atol=1e-12)


@pytest.mark.parametrize("impl", ["xla", "pallas", "auto"])
def test_tt_matmul_of_an_empty_batch_is_empty(impl):
    tm = tfa.TTMatrix([jnp.asarray(c, jnp.float32)
                       for c in random_cores(31, NSHAPE, MRANKS, extra=MSHAPE)])
    for lead in [(0,), (2, 0), (0, 3)]:
        out = tfa.tt_matmul(jnp.zeros(lead + (12,)), tm, impl=impl)
        assert out.shape == lead + (24,) and out.dtype == jnp.float32
    assert (jnp.zeros((0, 12)) @ tm).shape == (0, 24)
    assert (tm @ jnp.zeros((24, 0))).shape == (12, 0)
    # and the gradient through an empty batch is the zero gradient, not an error
    g = jax.grad(lambda w: jnp.sum(jnp.zeros((0, 12)) @ w))(tm)
    assert all(not np.any(np.asarray(c)) for c in g.cores)


def test_tt_matmul_promotes_integer_input():
    tm = tfa.TTMatrix([jnp.asarray(c, jnp.float32)
                       for c in random_cores(32, NSHAPE, MRANKS, extra=MSHAPE)])
    x = np.arange(24, dtype=np.int32).reshape(2, 12)
    out = x @ tm
    assert out.dtype == jnp.float32
    assert rel(x.astype(np.float64) @ np_ttm_dense(tm.cores), out) < 1e-6
    v = np.arange(24, dtype=np.int8)
    assert rel(np_ttm_dense(tm.cores) @ v.astype(np.float64), tm @ v) < 1e-6


def test_zero_size_modes_are_refused_naming_the_argument():
    with pytest.raises(ValueError, match=r"x has a mode of size zero \(shape \(3, 0, 4\)\)"):
        tfa.tt(jnp.ones((3, 0, 4)), 2)
    with pytest.raises(ValueError, match=r"x has a mode of size zero"):
        tfa.tt(jnp.ones((3, 0, 4)), eps=0.1)
    with pytest.raises(ValueError, match=r"w has a dimension of size zero \(shape \(0, 24\)\)"):
        tfa.tt_matrix(jnp.ones((0, 24)), (1,), (24,), 2)


# ---------------------------------------------------------------------------------------------
# jit, vmap, grad of the differentiable pieces
# ---------------------------------------------------------------------------------------------

def test_jit_and_vmap_of_format_operations(p64):
    with x64():
        q = planted(17, dtype=jnp.float64)
        stacked = jax.tree_util.tree_map(lambda u, v: jnp.stack([u, v]), p64, q)
        inner = jax.vmap(tfa.tt_inner, in_axes=(0, None))(stacked, p64)
        np.testing.assert_allclose(inner, [tfa.tt_inner(p64, p64), tfa.tt_inner(q, p64)],
                                   rtol=1e-12)
        norms = jax.jit(jax.vmap(lambda t: t.norm()))(stacked)
        np.testing.assert_allclose(norms, [np.linalg.norm(p64.to_dense()),
                                           np.linalg.norm(q.to_dense())], rtol=1e-12)
        tm = tfa.TTMatrix([jnp.asarray(c) for c in random_cores(18, NSHAPE, MRANKS,
                                                                 extra=MSHAPE)])
        xs = jax.random.normal(jax.random.key(19), (3, 4, 12), jnp.float64)
        out = jax.jit(jax.vmap(lambda x: x @ tm))(xs)
        np.testing.assert_allclose(out, xs @ tm.to_dense(), atol=1e-11)
        idx = jnp.zeros((2, 5), jnp.int32)
        np.testing.assert_allclose(jax.jit(tfa.tt_gather)(p64, idx), p64.to_dense()[(0,) * 5])


def test_gradients():
    """check_grads (forward and reverse, float64) through to_dense, tt_inner and tt_matmul."""
    with x64():
        p = planted(20, shape=(3, 4, 2), ranks=(1, 2, 2, 1), dtype=jnp.float64)
        q = planted(21, shape=(3, 4, 2), ranks=(1, 3, 2, 1), dtype=jnp.float64)
        target = jax.random.normal(jax.random.key(22), (3, 4, 2), jnp.float64)
        tm = tfa.TTMatrix([jnp.asarray(c) for c in random_cores(23, (2, 3), (1, 2, 1),
                                                                 extra=(3, 2))])
        x = jax.random.normal(jax.random.key(24), (2, 6), jnp.float64)
        v = jax.random.normal(jax.random.key(25), (6, 2), jnp.float64)
        cases = [  # jitted: one compilation per derivative instead of one per operation
            (lambda p, q: jnp.sum(p.to_dense() * target) + tfa.tt_inner(p, q), (p, q)),
            (lambda w, x, v: jnp.sum(jnp.sin(x @ w)) + jnp.sum(jnp.cos(w @ v)), (tm, x, v)),
        ]
        for f, args in cases:
            check_grads(jax.jit(f), args, order=1, modes=("fwd", "rev"))
        # the TT layer's gradient equals the dense layer's gradient mapped to the cores
        g = jax.grad(lambda w: jnp.sum(jnp.sin(x @ w)))(tm)
        gd = jax.grad(lambda w: jnp.sum(jnp.sin(x @ w.to_dense())))(tm)
        for a, b in zip(g.cores, gd.cores):
            np.testing.assert_allclose(a, b, atol=1e-12)


def test_float32_precision_default():
    """Contractions run at full float32 (HIGHEST) precision unless asked otherwise."""
    p = planted(26)
    ref = np_tt_dense(p.cores)
    assert rel(ref, p.to_dense()) < 1e-6
    tm = tfa.TTMatrix([jnp.asarray(c, jnp.float32)
                       for c in random_cores(27, NSHAPE, MRANKS, extra=MSHAPE)])
    x = np.random.default_rng(28).standard_normal((4, 12)).astype(np.float32)
    ref = x.astype(np.float64) @ np_ttm_dense(tm.cores)
    assert rel(ref, x @ tm) < 1e-6
    assert rel(ref, tfa.tt_matmul(x, tm, precision=jax.lax.Precision.HIGHEST)) < 1e-6
