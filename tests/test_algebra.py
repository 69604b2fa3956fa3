"""Tests for tensorfact.algebra against NumPy (float64) and TensorLy's NumPy backend."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorly as tl
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorly import tenalg

from tensorfact import algebra
from tensorfact import kernels as tfa_kernels
from tensorfact.algebra import (contract_with_rank, fold, khatri_rao, kronecker, mode_dot, mttkrp,
                                multi_mode_dot, natural_rank_axis, partial_mttkrp, unfold)

tl.set_backend("numpy")

HYP = settings(max_examples=15, deadline=None)
TOL = 1e-5  # float32 results vs float64 references, relative to the sum of |terms|


# -- helpers ---------------------------------------------------------------------------------

def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def f64(a):
    return np.asarray(a, dtype=np.float64)


def reference(fn, *arrays):
    """``fn`` in float64 on the arrays, plus the same on |arrays|: an elementwise scale for
    the rounding error of a float32 computation of the same sums of products."""
    ref = fn(*[f64(a) for a in arrays])
    bound = fn(*[np.abs(f64(a)) for a in arrays])
    return ref, bound


def assert_matches(got, ref, bound, tol=TOL):
    got = np.asarray(got)
    assert got.shape == np.shape(ref), (got.shape, np.shape(ref))
    err = np.abs(f64(got) - ref)
    allowed = tol * bound + 1e-30
    assert np.all(err <= allowed), f"max excess {np.max(err - allowed)}; max err {np.max(err)}"


def np_kr(mats):
    """Khatri-Rao in NumPy, last matrix's row index fastest."""
    out = mats[0]
    for a in mats[1:]:
        out = np.einsum("ir,jr->ijr", out, a).reshape(-1, out.shape[1])
    return out


def mttkrp_reference(x, factors, n):
    """``unfold(x, n) @ khatri_rao(factors, skip=n)`` in NumPy float64."""
    others = [f for k, f in enumerate(factors) if k != n]
    return tl.base.unfold(x, n) @ np_kr(others)


@st.composite
def shapes_and_rank(draw):
    ndim = draw(st.integers(2, 4))
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim)))
    rank = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    return shape, rank, seed


# -- unfold / fold ---------------------------------------------------------------------------

@HYP
@given(shapes_and_rank())
def test_unfold_fold_round_trip_and_tensorly(case):
    shape, _, seed = case
    x = randn(np.random.default_rng(seed), *shape)
    modes = range(len(shape))
    # one compilation per example (rather than one per eager op per mode)
    unfolds, backs = jax.jit(
        lambda x: ([unfold(x, m) for m in modes], [fold(unfold(x, m), m, shape) for m in modes])
    )(jnp.asarray(x))
    for mode, u, back in zip(modes, unfolds, backs):
        np.testing.assert_array_equal(np.asarray(u), tl.base.unfold(x, mode))
        assert u.shape == (shape[mode], x.size // shape[mode])
        np.testing.assert_array_equal(np.asarray(back), x)
        np.testing.assert_array_equal(np.asarray(back), tl.base.fold(np.asarray(u), mode, shape))


def test_unfold_negative_mode_is_last_mode(rng):
    x = jnp.asarray(randn(rng, 2, 3, 4))
    np.testing.assert_array_equal(np.asarray(unfold(x, -1)), np.asarray(unfold(x, 2)))
    np.testing.assert_array_equal(np.asarray(fold(unfold(x, -1), -1, x.shape)), np.asarray(x))


def test_unfold_of_cp_tensor_matches_closed_form(rng):
    # unfold([[w; A0, A1, A2]], 1) = A1 diag(w) khatri_rao(A0, A2)^T
    a = [randn(rng, n, 3) for n in (2, 4, 5)]
    w = randn(rng, 3)
    x = np.einsum("r,ir,jr,kr->ijk", f64(w), *map(f64, a))
    expected = f64(a[1]) @ np.diag(f64(w)) @ np_kr([f64(a[0]), f64(a[2])]).T
    got = unfold(jnp.asarray(x.astype(np.float32)), 1)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)


# -- mode products ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0, 1, 2, -1])
def test_mode_dot_matrix(rng, mode):
    x = randn(rng, 3, 4, 5)
    m = randn(rng, 2, x.shape[mode])
    sub = "abc"
    letter = sub[mode]
    out_sub = sub.replace(letter, "z")
    ref, bound = reference(lambda x, m: np.einsum(f"{sub},z{letter}->{out_sub}", x, m), x, m)
    got = mode_dot(jnp.asarray(x), jnp.asarray(m), mode)
    assert_matches(got, ref, bound)
    # and TensorLy agrees
    np.testing.assert_allclose(np.asarray(got), tenalg.mode_dot(f64(x), f64(m), mode),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_mode_dot_transpose(rng, mode):
    x = randn(rng, 3, 4, 5)
    m = randn(rng, x.shape[mode], 6)
    sub = "abc"
    letter = sub[mode]
    ref, bound = reference(
        lambda x, m: np.einsum(f"{sub},{letter}z->{sub.replace(letter, 'z')}", x, m), x, m)
    got = mode_dot(jnp.asarray(x), jnp.asarray(m), mode, transpose=True)
    assert_matches(got, ref, bound)
    # transpose=True with M equals the plain product with M^T
    plain = mode_dot(jnp.asarray(x), jnp.asarray(m.T), mode)
    np.testing.assert_allclose(np.asarray(got), np.asarray(plain), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_mode_dot_vector_contracts_mode_away(rng, mode):
    x = randn(rng, 3, 4, 5)
    v = randn(rng, x.shape[mode])
    sub = "abc"
    ref, bound = reference(
        lambda x, v: np.einsum(f"{sub},{sub[mode]}->{sub.replace(sub[mode], '')}", x, v), x, v)
    got = mode_dot(jnp.asarray(x), jnp.asarray(v), mode)
    assert got.ndim == 2
    assert_matches(got, ref, bound)


def test_mode_dot_unfolding_identity(rng):
    # unfold(x ×_n M, n) = M · unfold(x, n)
    x = randn(rng, 3, 4, 5)
    m = randn(rng, 6, 4)
    got = unfold(mode_dot(jnp.asarray(x), jnp.asarray(m), 1), 1)
    ref, bound = reference(lambda x, m: m @ tl.base.unfold(x, 1), x, m)
    assert_matches(got, ref, bound)


def test_multi_mode_dot_all_modes(rng):
    x = randn(rng, 3, 4, 5)
    ms = [randn(rng, 2, 3), randn(rng, 6, 4), randn(rng, 1, 5)]
    ref, bound = reference(lambda x, a, b, c: np.einsum("ijk,pi,qj,rk->pqr", x, a, b, c), x, *ms)
    got = multi_mode_dot(jnp.asarray(x), [jnp.asarray(m) for m in ms])
    assert_matches(got, ref, bound)
    np.testing.assert_allclose(np.asarray(got), tenalg.multi_mode_dot(f64(x), [f64(m) for m in ms]),
                               rtol=1e-5, atol=1e-5)


def test_multi_mode_dot_modes_and_skip(rng):
    x = randn(rng, 3, 4, 5, 2)
    ms = [randn(rng, 6, 5), randn(rng, 2, 3), randn(rng, 7, 2)]
    modes = [2, 0, -1]
    # every matrix, unordered modes including a negative one
    ref, bound = reference(
        lambda x, a, b, c: np.einsum("ijkl,pk,qi,rl->qjpr", x, a, b, c), x, *ms)
    got = multi_mode_dot(jnp.asarray(x), [jnp.asarray(m) for m in ms], modes)
    assert_matches(got, ref, bound)
    # skip=1 leaves out the matrix (and mode) at position 1
    ref, bound = reference(lambda x, a, c: np.einsum("ijkl,pk,rl->ijpr", x, a, c), x, ms[0], ms[2])
    got = multi_mode_dot(jnp.asarray(x), [jnp.asarray(m) for m in ms], modes, skip=1)
    assert_matches(got, ref, bound)
    # (TensorLy's `skip` counts positions after sorting by mode, so pass it the kept pairs)
    np.testing.assert_allclose(
        np.asarray(got), tenalg.multi_mode_dot(f64(x), [f64(ms[0]), f64(ms[2])], [2, 3]),
        rtol=1e-5, atol=1e-5)


def test_multi_mode_dot_transpose(rng):
    x = randn(rng, 3, 4, 5)
    ms = [randn(rng, 3, 2), randn(rng, 5, 6)]
    ref, bound = reference(lambda x, a, b: np.einsum("ijk,ip,kq->pjq", x, a, b), x, *ms)
    got = multi_mode_dot(jnp.asarray(x), [jnp.asarray(m) for m in ms], [0, 2], transpose=True)
    assert_matches(got, ref, bound)


def test_multi_mode_dot_vectors_mixed_with_matrices(rng):
    x = randn(rng, 3, 4, 5, 2)
    v0, m1, v2, m3 = randn(rng, 3), randn(rng, 6, 4), randn(rng, 5), randn(rng, 7, 2)
    ref, bound = reference(
        lambda x, v0, m1, v2, m3: np.einsum("ijkl,i,pj,k,ql->pq", x, v0, m1, v2, m3),
        x, v0, m1, v2, m3)
    got = multi_mode_dot(jnp.asarray(x), [jnp.asarray(a) for a in (v0, m1, v2, m3)])
    assert_matches(got, ref, bound)
    # with explicit, unordered modes
    got = multi_mode_dot(jnp.asarray(x), [jnp.asarray(a) for a in (v2, m3, v0, m1)], [2, 3, 0, 1])
    assert_matches(got, ref, bound)
    # vectors only (contract everything but mode 1)
    ref, bound = reference(lambda x, a, b, c: np.einsum("ijkl,i,k,l->j", x, a, b, c),
                           x, v0, v2, m3[0])
    got = multi_mode_dot(jnp.asarray(x), [jnp.asarray(a) for a in (m3[0], v0, v2)], [3, 0, 2])
    assert_matches(got, ref, bound)


def test_multi_mode_dot_empty_returns_input(rng):
    x = jnp.asarray(randn(rng, 2, 3))
    assert multi_mode_dot(x, []) is x


# -- Khatri-Rao and Kronecker ----------------------------------------------------------------

def test_khatri_rao_matches_tensorly_and_definition(rng):
    mats = [randn(rng, n, 3) for n in (2, 4, 3)]
    got = khatri_rao([jnp.asarray(a) for a in mats])
    assert got.shape == (24, 3)
    ref, bound = reference(lambda *m: tenalg.khatri_rao(list(m)), *mats)
    assert_matches(got, ref, bound)
    # column r is the Kronecker product of the columns r
    for r in range(3):
        col = np.kron(np.kron(f64(mats[0][:, r]), f64(mats[1][:, r])), f64(mats[2][:, r]))
        np.testing.assert_allclose(np.asarray(got[:, r]), col, rtol=1e-5, atol=1e-6)


def test_khatri_rao_weights_and_skip(rng):
    mats = [randn(rng, n, 4) for n in (3, 2, 5)]
    w = randn(rng, 4)
    got = khatri_rao([jnp.asarray(a) for a in mats], weights=jnp.asarray(w))
    ref, bound = reference(lambda w, *m: tenalg.khatri_rao(list(m), weights=w), w, *mats)
    assert_matches(got, ref, bound)
    got = khatri_rao([jnp.asarray(a) for a in mats], skip=1)
    ref, bound = reference(lambda *m: tenalg.khatri_rao(list(m), skip_matrix=1), *mats)
    assert got.shape == (15, 4)
    assert_matches(got, ref, bound)
    got = khatri_rao([jnp.asarray(a) for a in mats], weights=jnp.asarray(w), skip=0)
    ref, bound = reference(lambda w, *m: np_kr(list(m)[1:]) * w, w, *mats)
    assert_matches(got, ref, bound)


def test_khatri_rao_single_matrix(rng):
    a = randn(rng, 5, 2)
    w = randn(rng, 2)
    np.testing.assert_allclose(np.asarray(khatri_rao([jnp.asarray(a)], weights=jnp.asarray(w))),
                               f64(a) * f64(w), rtol=1e-6)
    b = randn(rng, 3, 2)
    np.testing.assert_array_equal(np.asarray(khatri_rao([jnp.asarray(a), jnp.asarray(b)], skip=0)),
                                  b)


def test_kronecker_matches_numpy_and_tensorly(rng):
    mats = [randn(rng, 2, 3), randn(rng, 3, 1), randn(rng, 2, 2)]
    got = kronecker([jnp.asarray(a) for a in mats])
    ref, bound = reference(lambda a, b, c: np.kron(np.kron(a, b), c), *mats)
    assert got.shape == (12, 6)
    assert_matches(got, ref, bound)
    np.testing.assert_allclose(np.asarray(got), tenalg.kronecker([f64(a) for a in mats]),
                               rtol=1e-5, atol=1e-6)
    got = kronecker([jnp.asarray(a) for a in mats], skip=1)
    ref, bound = reference(lambda a, c: np.kron(a, c), mats[0], mats[2])
    assert_matches(got, ref, bound)
    np.testing.assert_allclose(np.asarray(got),
                               tenalg.kronecker([f64(a) for a in mats], skip_matrix=1),
                               rtol=1e-5, atol=1e-6)


# -- MTTKRP ----------------------------------------------------------------------------------

@HYP
@given(shapes_and_rank())
def test_mttkrp_every_mode_hypothesis(case):
    shape, rank, seed = case
    rng = np.random.default_rng(seed)
    x = randn(rng, *shape)
    factors = [randn(rng, n, rank) for n in shape]
    # one compilation per example; eager calls are covered by test_mttkrp_every_mode
    every = jax.jit(lambda x, fs: [mttkrp(x, fs, n) for n in range(len(shape))])(
        jnp.asarray(x), [jnp.asarray(a) for a in factors])
    for n, got in enumerate(every):
        ref, bound = reference(lambda x, *fs: mttkrp_reference(x, list(fs), n), x, *factors)
        assert got.shape == (shape[n], rank)
        assert_matches(got, ref, bound)


@pytest.mark.parametrize("shape", [(3, 4, 5), (2, 3, 4, 5), (5, 1, 3, 2)])
def test_mttkrp_every_mode(rng, shape):
    rank = 3
    x = randn(rng, *shape)
    factors = [randn(rng, n, rank) for n in shape]
    for n in list(range(len(shape))) + [-1]:
        got = mttkrp(jnp.asarray(x), [jnp.asarray(a) for a in factors], n)
        ref, bound = reference(
            lambda x, *fs: mttkrp_reference(x, list(fs), n % len(shape)), x, *factors)
        assert_matches(got, ref, bound)
        # same value through khatri_rao/unfold of the library itself
        via_kr = unfold(jnp.asarray(x), n) @ khatri_rao([jnp.asarray(a) for a in factors], skip=n % len(shape))
        assert_matches(via_kr, ref, bound, tol=1e-4)


def test_mttkrp_ignores_factor_of_its_mode(rng):
    x = randn(rng, 3, 4, 5)
    factors = [jnp.asarray(randn(rng, n, 2)) for n in x.shape]
    expected = mttkrp(jnp.asarray(x), factors, 1)
    garbage = [factors[0], jnp.zeros((7, 9)), factors[2]]
    np.testing.assert_array_equal(np.asarray(mttkrp(jnp.asarray(x), garbage, 1)),
                                  np.asarray(expected))


def test_mttkrp_under_jit_matches_eager(rng):
    x = jnp.asarray(randn(rng, 3, 4, 5))
    factors = [jnp.asarray(randn(rng, n, 2)) for n in x.shape]
    jitted = jax.jit(mttkrp, static_argnums=2)
    for n in range(3):
        np.testing.assert_allclose(np.asarray(jitted(x, factors, n)),
                                   np.asarray(mttkrp(x, factors, n)), rtol=1e-5, atol=1e-6)


# -- partial MTTKRP / contract_with_rank -----------------------------------------------------

@pytest.mark.parametrize("modes", [(0, 2), (3,), (1, 2), (2, 0), (1,), (0, 1, 2, 3), (3, 1)])
def test_partial_mttkrp_subsets(rng, modes):
    shape = (3, 4, 5, 2)
    rank = 3
    x = randn(rng, *shape)
    factors = [randn(rng, shape[m], rank) for m in modes]
    letters = "abcd"
    rest = "".join(letters[m] for m in range(4) if m not in modes)
    spec = "abcd," + ",".join(f"{letters[m]}z" for m in modes) + f"->{rest}z"
    ref, bound = reference(lambda x, *fs: np.einsum(spec, x, *fs), x, *factors)
    got = partial_mttkrp(jnp.asarray(x), [jnp.asarray(a) for a in factors], modes)
    assert got.shape == tuple(shape[m] for m in range(4) if m not in modes) + (rank,)
    assert_matches(got, ref, bound)


def test_partial_mttkrp_all_but_one_is_mttkrp(rng):
    x = jnp.asarray(randn(rng, 3, 4, 5))
    factors = [jnp.asarray(randn(rng, n, 2)) for n in x.shape]
    np.testing.assert_allclose(
        np.asarray(partial_mttkrp(x, [factors[0], factors[2]], [0, 2])),
        np.asarray(mttkrp(x, factors, 1)), rtol=1e-5, atol=1e-6)


def test_contract_with_rank(rng):
    # t carries modes labelled (0, 2, 3) plus a rank axis of size 3
    t = randn(rng, 4, 5, 2, 3)
    a = randn(rng, 2, 3)   # for mode 3
    b = randn(rng, 4, 3)   # for mode 0
    ref, bound = reference(lambda t, a, b: np.einsum("ikmz,mz,iz->kz", t, a, b), t, a, b)
    got = contract_with_rank(jnp.asarray(t), (0, 2, 3), [jnp.asarray(a), jnp.asarray(b)], [3, 0])
    assert_matches(got, ref, bound)
    # a single contraction keeps the other labelled axes in order
    c = randn(rng, 5, 3)
    ref, bound = reference(lambda t, c: np.einsum("ikmz,kz->imz", t, c), t, c)
    got = contract_with_rank(jnp.asarray(t), (0, 2, 3), [jnp.asarray(c)], [2])
    assert_matches(got, ref, bound)
    # no factors: unchanged
    np.testing.assert_array_equal(
        np.asarray(contract_with_rank(jnp.asarray(t), (0, 2, 3), [], [])), t)


def test_precision_argument_is_accepted(rng):
    x = jnp.asarray(randn(rng, 3, 4))
    m = jnp.asarray(randn(rng, 2, 4))
    hi = mode_dot(x, m, 1, precision=jax.lax.Precision.HIGHEST)
    default = mode_dot(x, m, 1)
    np.testing.assert_array_equal(np.asarray(hi), np.asarray(default))
    # one meaning everywhere: None is JAX's default; the core's default is "highest"
    assert algebra.resolve_precision(None) is None
    assert algebra.resolve_precision("highest") == jax.lax.Precision.HIGHEST
    assert algebra.resolve_precision("DEFAULT") == jax.lax.Precision.DEFAULT
    assert algebra.resolve_precision(jax.lax.Precision.DEFAULT) == jax.lax.Precision.DEFAULT
    with pytest.raises(ValueError, match="precision must be None, one of"):
        algebra.resolve_precision("fast")


# -- errors ----------------------------------------------------------------------------------

def test_mode_out_of_range_errors():
    x = jnp.zeros((2, 3, 4))
    for bad in (3, -4):
        with pytest.raises(ValueError, match=r"mode must be an int in \[-3, 3\) \(a mode of shape "
                                             r"\(2, 3, 4\)\), got " + str(bad)):
            unfold(x, bad)
        with pytest.raises(ValueError, match=r"mode must be an int in \[-3, 3\)"):
            mode_dot(x, jnp.zeros((2, 2)), bad)
        with pytest.raises(ValueError, match=r"mode must be an int in \[-3, 3\)"):
            mttkrp(x, [jnp.zeros((n, 2)) for n in x.shape], bad)
        with pytest.raises(ValueError, match=r"mode must be an int in \[-3, 3\)"):
            fold(jnp.zeros((2, 12)), bad, (2, 3, 4))
    with pytest.raises(ValueError, match=r"modes must hold mode indices"):
        multi_mode_dot(x, [jnp.zeros((2, 2))], [5])
    with pytest.raises(ValueError, match=r"modes must hold mode indices"):
        partial_mttkrp(x, [jnp.zeros((2, 2))], [3])
    with pytest.raises(ValueError, match=r"must not repeat a mode"):
        partial_mttkrp(x, [jnp.zeros((2, 2)), jnp.zeros((2, 2))], [0, 0])
    with pytest.raises(ValueError, match=r"must not repeat a mode"):
        multi_mode_dot(x, [jnp.zeros((2, 2)), jnp.zeros((2, 2))], [0, -3])


@pytest.mark.parametrize("bad", [1.0, np.float32(1), True, [1], "1", None, jnp.array([1, 2])])
def test_modes_that_are_not_ints_are_refused(bad):
    x = jnp.zeros((2, 3, 4))
    factors = [jnp.zeros((n, 2)) for n in x.shape]
    calls = [lambda: unfold(x, bad), lambda: fold(jnp.zeros((3, 8)), bad, (2, 3, 4)),
             lambda: mode_dot(x, jnp.zeros((5, 3)), bad), lambda: mttkrp(x, factors, bad),
             lambda: tfa_kernels.mttkrp(x, factors, bad, impl="pallas")]
    for call in calls:
        with pytest.raises(ValueError, match=r"mode must be an int in \[-3, 3\).*got " +
                           re.escape(repr(bad))):
            call()


def test_integer_like_modes_are_accepted(rng):
    x = jnp.asarray(randn(rng, 2, 3, 4))
    for mode in (np.int64(1), jnp.int32(1)):  # NumPy and concrete JAX integers
        np.testing.assert_array_equal(np.asarray(unfold(x, mode)), np.asarray(unfold(x, 1)))


def test_lists_and_numpy_arrays_are_accepted(rng):
    x = randn(rng, 2, 3, 4)
    m = randn(rng, 5, 3)
    factors = [randn(rng, n, 2) for n in x.shape]
    as_list = x.tolist()
    np.testing.assert_array_equal(np.asarray(unfold(as_list, 1)), tl.base.unfold(x, 1))
    np.testing.assert_array_equal(np.asarray(fold(tl.base.unfold(x, 1).tolist(), 1, list(x.shape))),
                                  x)
    ref, bound = reference(lambda x, m: np.einsum("ijk,pj->ipk", x, m), x, m)
    assert_matches(mode_dot(as_list, m.tolist(), 1), ref, bound)
    assert_matches(multi_mode_dot(x, [m], [1]), ref, bound)
    for n in range(3):
        ref, bound = reference(lambda x, *fs: mttkrp_reference(x, list(fs), n), x, *factors)
        assert_matches(mttkrp(as_list, [f.tolist() for f in factors], n), ref, bound)
        assert_matches(mttkrp(x, factors, n), ref, bound)  # NumPy arrays
    ref, bound = reference(lambda *m: np_kr(list(m)), *factors)
    assert_matches(khatri_rao([f.tolist() for f in factors]), ref, bound)
    np.testing.assert_allclose(np.asarray(kronecker([factors[0], factors[1].tolist()])),
                               np.kron(factors[0], factors[1]), rtol=1e-6)
    # integers and booleans are data too: cast to float32, as the fits do
    ints = np.arange(24).reshape(2, 3, 4)
    out = unfold(ints, 0)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), ints.reshape(2, 12))


def test_low_precision_floats_keep_their_dtype():
    # the layers run the algebra on bfloat16 parameters: no silent upcast
    x = jnp.ones((2, 3, 4), jnp.bfloat16)
    a = [jnp.ones((n, 2), jnp.bfloat16) for n in x.shape]
    assert unfold(x, 1).dtype == jnp.bfloat16
    assert mode_dot(x, jnp.ones((5, 3), jnp.bfloat16), 1).dtype == jnp.bfloat16
    assert khatri_rao(a).dtype == jnp.bfloat16
    assert float(khatri_rao(a)[0, 0]) == 1.0


@pytest.mark.parametrize("bad", ["abc", [[1.0, 2.0], [3.0]], np.ones(3, complex),
                                 np.array(["a", "b"])])
def test_non_numeric_data_is_refused(bad):
    with pytest.raises(TypeError, match=r"^x must be"):
        unfold(bad, 0)
    with pytest.raises(TypeError, match=r"^matrix_or_vector must be"):
        mode_dot(jnp.ones((3, 2)), bad, 0)


def test_mismatched_matrix_shape_errors():
    x = jnp.zeros((2, 3, 4))
    with pytest.raises(ValueError, match=r"matrix_or_vector: matrix of shape \(5, 4\) does not "
                                         r"match mode 1 of size 3 \(x has shape \(2, 3, 4\)\)"):
        mode_dot(x, jnp.zeros((5, 4)), 1)
    with pytest.raises(ValueError, match=r"\(transposed\) \(5, 3\) does not match mode 1 of size 3"):
        mode_dot(x, jnp.zeros((5, 3)), 1, transpose=True)
    with pytest.raises(ValueError, match=r"vector of length 5 does not match mode 2 of size 4"):
        mode_dot(x, jnp.zeros(5), 2)
    with pytest.raises(ValueError, match=r"matrix_or_vector must be 1-D \(a vector\) or 2-D \(a "
                                         r"matrix\), got shape \(2, 2, 2\)"):
        mode_dot(x, jnp.zeros((2, 2, 2)), 0)
    with pytest.raises(ValueError, match=r"must be 1-D .* got shape \(\)"):
        mode_dot(x, 2.0, 0)
    with pytest.raises(ValueError, match=r"x must have at least 1 dimension"):
        mode_dot(3.0, jnp.zeros((2, 2)), 0)
    with pytest.raises(ValueError, match=r"matrices\[2\]: matrix of shape \(1, 5\) does not match "
                                         r"mode 2"):
        multi_mode_dot(x, [jnp.zeros((1, 2)), jnp.zeros((1, 3)), jnp.zeros((1, 5))])
    with pytest.raises(ValueError, match=r"matrices\[1\] must be 1-D .* got shape \(3, 3, 1\)"):
        multi_mode_dot(x, [jnp.zeros((1, 2)), jnp.zeros((3, 3, 1))])
    with pytest.raises(ValueError, match=r"got 2 matrices for 1 modes"):
        multi_mode_dot(x, [jnp.zeros((1, 2)), jnp.zeros((1, 3))], [0])
    with pytest.raises(ValueError, match=r"matrices holds 4 matrices, but x has only 3 modes"):
        multi_mode_dot(x, [jnp.zeros((1, 2)), jnp.zeros((1, 3)), jnp.zeros((1, 4)),
                           jnp.zeros((1, 1))])
    for bad in (2, 1.0, "0"):
        with pytest.raises(ValueError, match=r"skip must be None or an int in \[-2, 2\).*got "
                           + re.escape(repr(bad))):
            multi_mode_dot(x, [jnp.zeros((1, 2)), jnp.zeros((1, 3))], skip=bad)
    with pytest.raises(TypeError, match=r"matrices must be a list or tuple of arrays, got ArrayImpl"):
        multi_mode_dot(x, jnp.zeros((2, 2)))


def test_mismatched_matrix_shape_error_also_under_jit():
    f = jax.jit(lambda x, m: mode_dot(x, m, 1))
    with pytest.raises(ValueError, match=r"does not match mode 1 of size 3"):
        f(jnp.zeros((2, 3)), jnp.zeros((2, 2)))


def test_factor_errors():
    x = jnp.zeros((2, 3, 4))
    with pytest.raises(ValueError, match=r"factors\[1\] has 5 rows, but mode 1 of x has size 3 "
                                         r"\(x has shape \(2, 3, 4\)\)"):
        mttkrp(x, [jnp.zeros((2, 2)), jnp.zeros((5, 2)), jnp.zeros((4, 2))], 0)
    with pytest.raises(ValueError, match=r"factors\[0\] has 1 rows, but mode 2 of x has size 4"):
        partial_mttkrp(x, [jnp.zeros((1, 2))], [2])
    with pytest.raises(ValueError, match=r"one matrix per mode \(3\), got 2"):
        mttkrp(x, [jnp.zeros((2, 2)), jnp.zeros((3, 2))], 0)
    with pytest.raises(ValueError, match=r"common number of columns"):
        mttkrp(x, [jnp.zeros((2, 2)), jnp.zeros((3, 2)), jnp.zeros((4, 3))], 0)
    with pytest.raises(ValueError, match=r"factors must hold one matrix per mode of \(0, 1\) "
                                         r"\(2\), got 1"):
        partial_mttkrp(x, [jnp.zeros((2, 2))], [0, 1])
    with pytest.raises(ValueError, match=r"common number of columns"):
        khatri_rao([jnp.zeros((2, 2)), jnp.zeros((3, 3))])
    with pytest.raises(ValueError, match=r"at least one matrix"):
        khatri_rao([jnp.zeros((2, 2))], skip=0)
    with pytest.raises(ValueError, match=r"at least one matrix"):
        kronecker([])
    with pytest.raises(ValueError, match=r"weights must have one entry per column \(2\), got "
                                         r"shape \(3,\)"):
        khatri_rao([jnp.zeros((2, 2)), jnp.zeros((3, 2))], weights=jnp.ones(3))
    with pytest.raises(ValueError, match=r"skip must be None or an int in \[-2, 2\)"):
        kronecker([jnp.zeros((2, 2)), jnp.zeros((3, 2))], skip=5)
    with pytest.raises(ValueError, match=r"x must have at least 2 dimension"):
        mttkrp(jnp.zeros(3), [jnp.zeros((3, 2))], 0)
    with pytest.raises(TypeError, match=r"factors must be a list or tuple of arrays"):
        mttkrp(x, jnp.zeros((3, 3, 2)), 0)


@pytest.mark.parametrize("shape", [(3,), (3, 2, 2), ()])
def test_factors_that_are_not_matrices_are_refused(shape):
    # 1-D and 3-D factors (and scalars) where matrices are needed: an error naming the factor
    x = jnp.zeros((2, 3, 4))
    good = [jnp.zeros((n, 2)) for n in x.shape]
    bad = jnp.zeros(shape)
    pattern = r"factors\[2\] must be 2-D \(a matrix of shape \(4, rank\)\), got shape " + \
        re.escape(str(shape))
    for call in (lambda: mttkrp(x, good[:2] + [bad], 0),
                 lambda: tfa_kernels.mttkrp(x, good[:2] + [bad], 1, impl="pallas"),
                 lambda: partial_mttkrp(x, good[:2] + [bad], [0, 1, 2])):
        with pytest.raises(ValueError, match=pattern):
            call()
    with pytest.raises(ValueError, match=r"matrices\[1\] must be 2-D \(a matrix\), got shape "
                       + re.escape(str(shape))):
        khatri_rao([good[0], bad])
    with pytest.raises(ValueError, match=r"matrices\[0\] must be 2-D"):
        kronecker([bad, good[0]])


def test_khatri_rao_rejects_non_matrix_with_value_error():
    # A 1-D input must be rejected with the documented "must be 2-D" ValueError.
    with pytest.raises(ValueError, match=r"must be 2-D"):
        khatri_rao([jnp.zeros(3), jnp.zeros((2, 2))])
    with pytest.raises(ValueError, match=r"must be 2-D"):
        khatri_rao([jnp.zeros((2, 2)), jnp.zeros((2, 2, 2))])
    with pytest.raises(ValueError, match=r"must be 2-D"):
        mttkrp(jnp.zeros((2, 3, 4)), [jnp.zeros((2, 2)), jnp.zeros((3, 2)), jnp.zeros(4)], 0)


def test_fold_wrong_size_errors():
    with pytest.raises(ValueError, match=r"matrix of shape \(2, 10\) cannot be folded into shape "
                                         r"\(2, 3, 4\) along mode 0: that unfolding has shape "
                                         r"\(2, 12\)"):
        fold(jnp.zeros((2, 10)), 0, (2, 3, 4))
    # right size, wrong leading dimension
    with pytest.raises(ValueError, match=r"cannot be folded into shape \(2, 3, 4\) along mode 1"):
        fold(jnp.zeros((4, 6)), 1, (2, 3, 4))
    # not a matrix, even of the right size
    with pytest.raises(ValueError, match=r"matrix of shape \(3, 2, 4\) cannot be folded"):
        fold(jnp.zeros((3, 2, 4)), 1, (2, 3, 4))


@pytest.mark.parametrize("shape", [(2.0, 3), (2, -1), (2, "3"), 6, "23", (2, None)])
def test_fold_refuses_shapes_that_are_not_ints(shape):
    with pytest.raises(ValueError, match=r"shape must be a sequence of non-negative ints, got "
                       + re.escape(repr(tuple(shape) if isinstance(shape, tuple) else shape))):
        fold(jnp.zeros((2, 3)), 0, shape)
    with pytest.raises(ValueError, match=r"shape must have at least one mode"):
        fold(jnp.zeros((1, 1)), 0, ())


def test_partial_mttkrp_and_contract_with_rank_argument_errors():
    x = jnp.zeros((2, 3, 4))
    f = [jnp.zeros((4, 2))]
    for bad in (1, 0.0, True, "0"):
        with pytest.raises(ValueError, match=r"rank_axis must be 0 or -1, got " +
                           re.escape(repr(bad))):
            partial_mttkrp(x, f, [2], rank_axis=bad)
    t = jnp.zeros((2, 3, 5))  # labels (0, 2) and a rank axis of 5
    with pytest.raises(ValueError, match=r"t_modes must hold one distinct label per axis of t "
                                         r"but the rank axis \(2"):
        contract_with_rank(t, (0, 2, 3), [jnp.zeros((3, 5))], [2])
    with pytest.raises(ValueError, match=r"t_modes must be a sequence of non-negative ints"):
        contract_with_rank(t, (0, 2.0), [jnp.zeros((3, 5))], [2])
    with pytest.raises(ValueError, match=r"modes must hold distinct labels among t_modes \(0, 2\), "
                                         r"got \(1,\)"):
        contract_with_rank(t, (0, 2), [jnp.zeros((3, 5))], [1])
    with pytest.raises(ValueError, match=r"factors\[0\] has 4 rows, but mode 2 of t has size 3"):
        contract_with_rank(t, (0, 2), [jnp.zeros((4, 5))], [2])
    with pytest.raises(ValueError, match=r"factors must have 5 columns, the size of the rank axis "
                                         r"of t"):
        contract_with_rank(t, (0, 2), [jnp.zeros((3, 4))], [2])
    with pytest.raises(ValueError, match=r"modes must hold mode indices"):
        natural_rank_axis(3, [3])


# -- zero-size modes -------------------------------------------------------------------------

EMPTY_SHAPES = [(0, 3, 4), (2, 0, 4), (2, 3, 0), (0, 0, 0)]


@pytest.mark.parametrize("shape", EMPTY_SHAPES)
def test_unfold_fold_zero_size_modes(shape):
    x = np.zeros(shape, np.float32)
    for mode in range(3):
        u = unfold(x, mode)  # (TensorLy's own unfold fails here: reshape(0, -1))
        assert u.shape == (shape[mode], int(np.prod(shape[:mode] + shape[mode + 1:])))
        assert fold(u, mode, shape).shape == shape


@pytest.mark.parametrize("shape", EMPTY_SHAPES)
@pytest.mark.parametrize("mode", [0, 1, 2])
def test_mode_dot_zero_size_modes(rng, shape, mode):
    # an empty result of the right shape; a contracted mode of size zero is an empty sum: zeros
    x = np.zeros(shape, np.float32)
    m = randn(rng, 5, shape[mode])
    out_shape = shape[:mode] + (5,) + shape[mode + 1:]
    for got in (mode_dot(x, m, mode), mode_dot(x, m.T, mode, transpose=True),
                jax.jit(mode_dot, static_argnums=2)(x, m, mode),
                multi_mode_dot(x, [m], [mode])):
        assert got.shape == out_shape
        np.testing.assert_array_equal(np.asarray(got), np.zeros(out_shape))
    v = randn(rng, shape[mode])
    assert mode_dot(x, v, mode).shape == shape[:mode] + shape[mode + 1:]
    # every mode at once, matrices and a vector mixed
    ms = [randn(rng, 2, n) for n in shape]
    ms[mode] = randn(rng, shape[mode])
    got = multi_mode_dot(x, ms)
    assert got.shape == tuple(2 for k in range(3) if k != mode)
    np.testing.assert_array_equal(np.asarray(got), 0)


def test_mode_dot_empty_output_mode(rng):
    x = randn(rng, 2, 3, 4)
    assert mode_dot(x, np.zeros((0, 3), np.float32), 1).shape == (2, 0, 4)


@pytest.mark.parametrize("shape", EMPTY_SHAPES)
@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_mttkrp_zero_size_modes(rng, shape, impl):
    rank = 3
    x = np.zeros(shape, np.float32)
    factors = [randn(rng, n, rank) for n in shape]
    for mode in range(3):
        got = mttkrp(x, factors, mode, impl=impl)
        assert got.shape == (shape[mode], rank)
        np.testing.assert_array_equal(np.asarray(got), 0)
        got = tfa_kernels.mttkrp(x, factors, mode, impl=impl)
        assert got.shape == (shape[mode], rank)
        np.testing.assert_array_equal(np.asarray(got), 0)
    others = [1, 2]
    assert partial_mttkrp(x, [factors[m] for m in others], others).shape == (shape[0], rank)


def test_mttkrp_rank_zero(rng):
    x = randn(rng, 2, 3, 4)
    factors = [np.zeros((n, 0), np.float32) for n in x.shape]
    for impl in ("xla", "pallas"):
        assert mttkrp(x, factors, 1, impl=impl).shape == (3, 0)
    assert khatri_rao(factors).shape == (24, 0)


def test_khatri_rao_and_kronecker_zero_size(rng):
    a, b = randn(rng, 0, 3), randn(rng, 4, 3)
    assert khatri_rao([a, b]).shape == (0, 3)
    assert khatri_rao([b, a]).shape == (0, 3)
    assert kronecker([a, b]).shape == (0, 9)


def test_vmap_and_grad_through_the_checked_functions(rng):
    xs = jnp.asarray(randn(rng, 3, 2, 3, 4))  # a batch of three 2 × 3 × 4 tensors
    m = jnp.asarray(randn(rng, 5, 3))
    factors = [jnp.asarray(randn(rng, n, 2)) for n in (2, 3, 4)]
    batched = jax.vmap(lambda x: (mode_dot(x, m, 1), mttkrp(x, factors, 2), unfold(x, 0)))(xs)
    for i in range(3):
        for got, want in zip(batched, (mode_dot(xs[i], m, 1), mttkrp(xs[i], factors, 2),
                                       unfold(xs[i], 0))):
            np.testing.assert_allclose(np.asarray(got[i]), np.asarray(want), rtol=1e-6,
                                       atol=1e-6)
    # d/dM Σ (x ×_1 M) = Σ over the other modes of x, for every row of M
    g = jax.grad(lambda m: jnp.sum(mode_dot(xs[0], m, 1)))(m)
    np.testing.assert_allclose(np.asarray(g), np.broadcast_to(np.asarray(xs[0]).sum((0, 2)),
                                                              (5, 3)), rtol=1e-5)
