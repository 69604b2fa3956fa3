"""Contracts of the matrix fits (``svd``, ``nmf``, ``cur``, ``complete``, ``rpca``), the matrix
types and the rank tools (issues 14 and 15): scale equivariance over 1e-30 … 1e30 in float32,
finite gradients at degenerate inputs, non-finite values, masks, integer arguments, empty
inputs, and the shared vocabulary (``key``, ``Literal`` options, ``tol``, ``return_info``,
``precision``, exactly 2-D inputs).

Every fit runs on one 20 × 15 nonnegative matrix of rank 3 plus noise, so JAX compiles each
configuration once; the references are float64 NumPy computations on the returned arrays.
"""

from __future__ import annotations

import inspect
import re
import typing

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import tensorfact as tfa
from tensorfact.decomposition import FitInfo
from tensorfact.decomposition._matrix_common import thin_svd
from _helpers import x64

SHAPE = (20, 15)
RANK = 3
KEY = jax.random.key(0)


def _data():
    rng = np.random.default_rng(0)
    x = np.abs(rng.standard_normal((SHAPE[0], RANK))) @ np.abs(rng.standard_normal((RANK,
                                                                                   SHAPE[1])))
    return (x + 0.05 * np.abs(rng.standard_normal(SHAPE))).astype(np.float32)


X = _data()
MASK = np.random.default_rng(1).random(SHAPE) < 0.7


def _degenerate():
    """Two zero rows and two zero columns: repeated zero singular values, zero NNDSVD parts."""
    x = X.copy()
    x[[2, 7]] = 0
    x[:, [1, 4]] = 0
    return x


# name -> (fit returning (result, FitInfo or None), mask its rel_error is measured on)
FITS = {
    "svd": (lambda m: (tfa.svd(m, RANK), None), None),
    "svd_randomized": (lambda m: (tfa.svd(m, RANK, key=KEY, method="randomized"), None), None),
    "nmf_hals": (lambda m: tfa.nmf(m, RANK, n_iter=50, tol=0, return_info=True), None),
    "nmf_mu": (lambda m: tfa.nmf(m, RANK, method="mu", n_iter=50, tol=0, return_info=True),
               None),
    "nmf_masked": (lambda m: tfa.nmf(m, RANK, mask=MASK, n_iter=50, tol=0, return_info=True),
                   MASK),
    "nmf_random": (lambda m: tfa.nmf(m, RANK, key=KEY, init="random", n_iter=50, tol=0,
                                     return_info=True), None),
    "complete_als": (lambda m: tfa.complete(m, MASK, RANK, n_iter=30, tol=0, return_info=True),
                     MASK),
    "complete_soft_impute": (lambda m: tfa.complete(m, MASK, RANK, method="soft_impute",
                                                    n_iter=30, tol=0, return_info=True), MASK),
    "rpca": (lambda m: tfa.rpca(m, n_iter=50, tol=0, return_info=True), None),
    "cur_pivoted": (lambda m: (tfa.cur(m, RANK), None), None),
    "cur_leverage": (lambda m: (tfa.cur(m, RANK, key=KEY, method="leverage"), None), None),
}


def _dense(result):
    if isinstance(result, tuple):  # rpca: (low, sparse)
        return np.asarray(result[0], np.float64) + np.asarray(result[1], np.float64)
    return np.asarray(result.to_dense(), np.float64)


def _rel(x, y, mask=None):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if mask is not None:
        x, y = np.where(mask, x, 0), np.where(mask, y, 0)
    return float(np.linalg.norm(x - y) / np.linalg.norm(x))


_REFERENCE = {}


def _reference(name):
    if name not in _REFERENCE:
        _REFERENCE[name] = FITS[name][0](X)
    return _REFERENCE[name]


# ---------------------------------------------------------------------------------------------
# 15.1 Scale: fit(c·x) = c·fit(x) with the same, true, reported error
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(FITS))
@settings(max_examples=4, deadline=None)
@given(exponent=st.floats(-30, 30))
@example(exponent=-30.0)
@example(exponent=-20.0)
@example(exponent=20.0)
@example(exponent=30.0)
def test_fit_is_scale_equivariant(name, exponent):
    fit, mask = FITS[name]
    c = float(np.float32(10.0 ** exponent))
    ref, ref_info = _reference(name)
    out, info = fit(np.float32(c) * X)
    dense = _dense(out)
    assert np.all(np.isfinite(dense))
    # c·fit(x): the scaled data differ from c·x only by the rounding of c·x
    assert _rel(_dense(ref), dense / c) < 1e-4
    if info is not None:
        assert float(info.rel_error) == pytest.approx(float(ref_info.rel_error), rel=1e-3,
                                                      abs=1e-6)
        # ... and it is the true error of what is returned, in float64
        true = _rel(np.float32(c) * X.astype(np.float64), dense, mask)
        assert float(info.rel_error) == pytest.approx(true, rel=1e-3, abs=1e-6)
        assert 0 < float(info.rel_error) < 0.2
    if name.startswith("cur"):
        np.testing.assert_array_equal(np.asarray(out.col_index), np.asarray(ref.col_index))
        np.testing.assert_array_equal(np.asarray(out.row_index), np.asarray(ref.row_index))
    if not isinstance(out, tuple):
        norm = float(out.norm())
        assert np.isfinite(norm)
        assert norm / c == pytest.approx(float(ref.norm()), rel=1e-4)
        assert norm / c == pytest.approx(np.linalg.norm(dense) / c, rel=1e-4)


@settings(max_examples=10, deadline=None)
@given(exponent=st.floats(-30, 30), seed=st.integers(0, 2**16))
@example(exponent=-30.0, seed=0)
@example(exponent=20.0, seed=0)
@example(exponent=30.0, seed=0)
def test_type_norms_do_not_overflow(exponent, seed):
    """The squares of 1e20 overflow float32 (and those of 1e-30 underflow); the norms do not."""
    rng = np.random.default_rng(seed)
    c = np.float32(10.0 ** exponent)
    u, v = rng.standard_normal((7, 3)), rng.standard_normal((3, 5))
    s = rng.uniform(1, 2, 3)
    lr = tfa.LowRankMatrix(u.astype(np.float32), (c * s).astype(np.float32), v.astype(np.float32))
    expected = np.linalg.norm((u * s) @ v) * float(c)
    assert float(lr.norm()) == pytest.approx(expected, rel=1e-4)
    # a CUR with huge outer factors and a tiny middle one (as C⁺ M R⁺ has for huge data)
    cc, uu, rr = (rng.standard_normal(shape) for shape in ((7, 3), (3, 4), (4, 5)))
    cm = tfa.CURMatrix((c * cc).astype(np.float32), (uu / c).astype(np.float32),
                       (c * rr).astype(np.float32), np.arange(3), np.arange(4))
    assert float(cm.norm()) == pytest.approx(np.linalg.norm(cc @ uu @ rr) * float(c), rel=1e-4)


def test_norm_of_a_singular_value_of_1e20():
    lr = tfa.LowRankMatrix(jnp.eye(3, 2), jnp.array([3e20, 4e20]), jnp.eye(2, 4))
    assert float(lr.norm()) == pytest.approx(5e20, rel=1e-6)
    assert np.isnan(float(tfa.LowRankMatrix(jnp.eye(3, 2), jnp.array([jnp.nan, 1.0]),
                                            jnp.eye(2, 4)).norm()))


@pytest.mark.parametrize("exponent", [-30, -20, 20, 30])
def test_rank_tools_are_scale_free(exponent):
    c = np.float32(10.0 ** exponent)
    s = np.array([4.0, 2.0, 1.0, 1.0], np.float32)
    assert float(tfa.stable_rank(c * X)) == pytest.approx(float(tfa.stable_rank(X)), rel=1e-5)
    assert float(tfa.effective_rank(c * X)) == pytest.approx(float(tfa.effective_rank(X)),
                                                             rel=1e-5)
    assert tfa.rank_for_energy(c * s, 0.75) == 2


# ---------------------------------------------------------------------------------------------
# 15.5 Finite gradients at degenerate inputs
# ---------------------------------------------------------------------------------------------

GRAD_FITS = {
    "nmf_hals": lambda m: tfa.nmf(m, RANK, n_iter=10, tol=0).to_dense(),
    "nmf_mu": lambda m: tfa.nmf(m, RANK, method="mu", n_iter=10, tol=0).to_dense(),
    "nmf_masked": lambda m: tfa.nmf(m, RANK, mask=MASK, n_iter=10, tol=0).to_dense(),
    "nmf_random": lambda m: tfa.nmf(m, RANK, key=KEY, init="random", n_iter=10,
                                    tol=0).to_dense(),
    "nmf_info": lambda m: tfa.nmf(m, RANK, n_iter=10, tol=0, return_info=True)[1].errors,
    "complete_als": lambda m: tfa.complete(m, MASK, RANK, n_iter=10, tol=0).to_dense(),
    "complete_info": lambda m: tfa.complete(m, MASK, RANK, n_iter=10, tol=0,
                                            return_info=True)[1].errors,
    "complete_soft_impute": lambda m: tfa.complete(m, MASK, RANK, method="soft_impute",
                                                   n_iter=10, tol=0).to_dense(),
    "rpca": lambda m: sum(tfa.rpca(m, n_iter=10, tol=0)),
    "rpca_info": lambda m: tfa.rpca(m, n_iter=10, tol=0, return_info=True)[1].errors,
    "svd": lambda m: tfa.svd(m, RANK).to_dense(),
    "svd_randomized": lambda m: tfa.svd(m, RANK, key=KEY, method="randomized").to_dense(),
    "cur": lambda m: tfa.cur(m, RANK).to_dense(),
    "low_rank_norm": lambda m: tfa.svd(m, RANK).norm(),
    "cur_norm": lambda m: tfa.cur(m, RANK).norm(),
    "stable_rank": tfa.stable_rank,
    "effective_rank": tfa.effective_rank,
}


_GRADS = {}


def _grad(name, x):
    """The gradient of ``sum(sin(fn(m)))`` under ``jax.jit``, compiled once per fit and shared by
    the degenerate inputs below (forward and reverse passes in one program: eager ``jax.grad``
    compiles the linearized fit and its transpose apart, about twice the time)."""
    if name not in _GRADS:
        fn = GRAD_FITS[name]
        _GRADS[name] = jax.jit(jax.grad(lambda m: jnp.sum(jnp.sin(fn(m)))))
    return _GRADS[name](jnp.asarray(x))


@pytest.mark.parametrize("name", list(GRAD_FITS))
def test_grad_is_finite_with_zero_rows_and_columns(name):
    g = _grad(name, _degenerate())
    assert g.shape == SHAPE and bool(jnp.all(jnp.isfinite(g))), name


# the randomized range finder's QR has no derivative at an exactly zero matrix
@pytest.mark.parametrize("name", [n for n in GRAD_FITS if n != "svd_randomized"])
def test_grad_is_finite_at_zero_data(name):
    g = _grad(name, np.zeros(SHAPE, np.float32))
    assert bool(jnp.all(jnp.isfinite(g))), name


def test_nmf_default_init_gradient_matches_finite_differences():
    """Through NNDSVD (whose zero parts used to give a 100% NaN gradient) and HALS."""
    with x64():
        x = jnp.asarray(X, jnp.float64)
        direction = jnp.asarray(np.random.default_rng(2).standard_normal(SHAPE))

        def loss(m):
            return jnp.sum(jnp.sin(tfa.nmf(m, RANK, n_iter=3, tol=0).to_dense()))

        g = jax.grad(loss)(x)
        assert bool(jnp.all(jnp.isfinite(g)))
        h = 1e-6
        numeric = (loss(x + h * direction) - loss(x - h * direction)) / (2 * h)
        assert float(jnp.vdot(g, direction)) == pytest.approx(float(numeric), rel=1e-5)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5)])
def test_thin_svd_derivative_is_jaxs_where_defined(shape):
    with x64():
        rng = np.random.default_rng(sum(shape))
        a, da = rng.standard_normal(shape), rng.standard_normal(shape)
        _, ours = jax.jvp(thin_svd, (a,), (da,))
        _, theirs = jax.jvp(lambda m: tuple(jnp.linalg.svd(m, full_matrices=False)), (a,), (da,))
        for x, y in zip(ours, theirs):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-10)


def test_thin_svd_derivative_at_repeated_singular_values():
    """A rank-one matrix (repeated zero singular values): JAX's rule gives NaN; the projection
    onto the leading singular pair has the derivative U Uᵀ dA + dA V Vᵀ − U Uᵀ dA V Vᵀ."""
    a = np.zeros((6, 4), np.float32)
    a[:, 0] = 1.0

    def rank_one(m):
        u, s, vt = thin_svd(m)
        return jnp.sum(u[:, :1] * s[:1] @ vt[:1])

    np.testing.assert_allclose(np.asarray(jax.grad(rank_one)(a)), np.ones((6, 4)), atol=1e-5)
    assert not bool(jnp.all(jnp.isfinite(jax.grad(
        lambda m: jnp.sum(jnp.linalg.svd(m, full_matrices=False)[0][:, :1]))(a))))


# ---------------------------------------------------------------------------------------------
# 15.4 Non-finite values: init and hyper-parameters
# ---------------------------------------------------------------------------------------------

def _start(bad):
    lr = tfa.svd(X, RANK)
    return tfa.LowRankMatrix(lr.u.at[3, 1].set(bad), lr.s, lr.vt)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("fit", [
    lambda init: tfa.nmf(X, RANK, init=init, n_iter=2),
    lambda init: tfa.complete(X, MASK, RANK, init=init, n_iter=2),
    lambda init: tfa.complete(X, MASK, RANK, method="soft_impute", init=init, n_iter=2),
], ids=["nmf", "complete_als", "complete_soft_impute"])
def test_nonfinite_init_is_reported(fit, bad):
    with pytest.raises(ValueError, match=r"init contains 1 NaN or Inf value"):
        fit(_start(bad))
    fit(_start(0.5))  # the same start, finite, is fine


@pytest.mark.parametrize("call, name", [
    (lambda v: tfa.nmf(X, RANK, l1=v), "l1"),
    (lambda v: tfa.nmf(X, RANK, l2=v), "l2"),
    (lambda v: tfa.nmf(X, RANK, tol=v), "tol"),
    (lambda v: tfa.complete(X, MASK, RANK, l2=v), "l2"),
    (lambda v: tfa.complete(X, MASK, RANK, method="soft_impute", lam=v), "lam"),
    (lambda v: tfa.complete(X, MASK, RANK, tol=v), "tol"),
    (lambda v: tfa.rpca(X, lam=v), "lam"),
    (lambda v: tfa.rpca(X, mu=v), "mu"),
    (lambda v: tfa.rpca(X, tol=v), "tol"),
])
@pytest.mark.parametrize("value", [np.inf, np.nan])
def test_nonfinite_hyperparameters_are_refused(call, name, value):
    with pytest.raises(ValueError, match=rf"{name} must be .*got {value!r}.*finite"):
        call(value)


# ---------------------------------------------------------------------------------------------
# 15.8 Masks and integers
# ---------------------------------------------------------------------------------------------

MASKED = {
    "nmf": lambda mask: tfa.nmf(X, RANK, mask=mask, n_iter=2),
    "complete_als": lambda mask: tfa.complete(X, mask, RANK, n_iter=2),
    "complete_soft_impute": lambda mask: tfa.complete(X, mask, RANK, method="soft_impute",
                                                      n_iter=2),
}


@pytest.mark.parametrize("name", list(MASKED))
@pytest.mark.parametrize("value", [0.5, 2.0, -1.0, np.nan])
def test_masks_of_weights_are_refused(name, value):
    mask = MASK.astype(np.float32)
    mask[4, 5] = value
    with pytest.raises(ValueError, match=r"mask must hold only 0/1"):
        MASKED[name](mask)


@pytest.mark.parametrize("name", list(MASKED))
def test_all_false_mask_is_refused_and_01_mask_accepted(name):
    with pytest.raises(ValueError, match=r"mask observes no entry"):
        MASKED[name](np.zeros(SHAPE, bool))
    a, b = MASKED[name](MASK), MASKED[name](MASK.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(a.to_dense()), np.asarray(b.to_dense()))


INT_CALLS = {
    "svd.rank": lambda v: tfa.svd(X, v),
    "svd.oversample": lambda v: tfa.svd(X, RANK, key=KEY, method="randomized", oversample=v),
    "svd.n_power_iter": lambda v: tfa.svd(X, RANK, key=KEY, method="randomized",
                                          n_power_iter=v),
    "nmf.rank": lambda v: tfa.nmf(X, v, n_iter=2),
    "nmf.n_iter": lambda v: tfa.nmf(X, RANK, n_iter=v),
    "cur.rank": lambda v: tfa.cur(X, v),
    "cur.n_cols": lambda v: tfa.cur(X, 2, n_cols=v),
    "cur.n_rows": lambda v: tfa.cur(X, 2, n_rows=v),
    "complete.rank": lambda v: tfa.complete(X, MASK, v, n_iter=2),
    "complete.n_iter": lambda v: tfa.complete(X, MASK, RANK, n_iter=v),
    "rpca.n_iter": lambda v: tfa.rpca(X, n_iter=v),
    "rank_for_params.shape": lambda v: tfa.rank_for_params((v, 10), 0.5),
}


def _leaves(result):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(result)]


@pytest.mark.parametrize("name", list(INT_CALLS))
def test_numpy_integers_are_accepted_bools_and_floats_refused(name):
    call, arg = INT_CALLS[name], name.split(".")[1]
    for a, b in zip(_leaves(call(3)), _leaves(call(np.int64(3)))):
        np.testing.assert_array_equal(a, b)
    _leaves(call(np.int32(3)))
    for bad in (True, 3.0):
        with pytest.raises(ValueError, match=rf"{arg}(\[0\])? must be a (positive|non-negative) "
                                             rf"integer.*got {bad!r}|{arg} must be an integer in"
                                             rf".*got {bad!r}"):
            call(bad)


# ---------------------------------------------------------------------------------------------
# 15.7 Empty inputs; exactly 2-D
# ---------------------------------------------------------------------------------------------

MATRIX_FUNCTIONS = {
    "svd": lambda m: tfa.svd(m, 1),
    "nmf": lambda m: tfa.nmf(m, 1),
    "cur": lambda m: tfa.cur(m, 1),
    "complete": lambda m: tfa.complete(m, None, 1),
    "rpca": tfa.rpca,
    "stable_rank": tfa.stable_rank,
    "effective_rank": tfa.effective_rank,
}


@pytest.mark.parametrize("name", list(MATRIX_FUNCTIONS))
@pytest.mark.parametrize("shape", [(0, 5), (5, 0)])
def test_zero_size_dimension_names_m(name, shape):
    with pytest.raises(ValueError, match=re.escape(f"m has a dimension of size zero (shape "
                                                   f"{shape})") + "|m has a mode of size zero"):
        MATRIX_FUNCTIONS[name](np.zeros(shape, np.float32))


@pytest.mark.parametrize("name", [n for n in MATRIX_FUNCTIONS if n != "effective_rank"])
def test_batches_are_refused_with_a_pointer_to_vmap(name):
    with pytest.raises(ValueError, match=r"m must be a 2-D matrix, got shape \(2, 20, 15\).*"
                                         r"jax.vmap"):
        MATRIX_FUNCTIONS[name](np.stack([X, X]))


def test_rank_tools_vmap_matches_a_loop():
    batch = np.stack([X, X[::-1] ** 2, _degenerate()])
    for fn in (tfa.stable_rank, tfa.effective_rank):
        np.testing.assert_allclose(np.asarray(jax.vmap(fn)(batch)),
                                   [float(fn(m)) for m in batch], rtol=1e-5)
    s = np.sort(np.abs(np.random.default_rng(3).standard_normal((4, 6))), axis=1)[:, ::-1]
    ks = jax.vmap(lambda v: tfa.rank_for_energy(v, 0.8))(jnp.asarray(s.copy()))
    assert [int(k) for k in ks] == [tfa.rank_for_energy(v, 0.8) for v in s]


# ---------------------------------------------------------------------------------------------
# 14.3 Vocabulary
# ---------------------------------------------------------------------------------------------

KEYED = {"svd": tfa.svd, "nmf": tfa.nmf, "cur": tfa.cur, "complete": tfa.complete}


@pytest.mark.parametrize("name", list(KEYED))
def test_key_is_the_first_keyword_only_argument_and_optional(name):
    params = inspect.signature(KEYED[name]).parameters.values()
    keyword_only = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert keyword_only[0].name == "key" and keyword_only[0].default is None


@pytest.mark.parametrize("fn, arg, choices", [
    (tfa.svd, "method", {"exact", "randomized"}),
    (tfa.nmf, "method", {"hals", "mu"}),
    (tfa.nmf, "init", {"nndsvd", "nndsvda", "random"}),
    (tfa.cur, "method", {"pivoted", "leverage"}),
    (tfa.complete, "method", {"als", "soft_impute"}),
    (tfa.complete, "init", {"svd", "random"}),
])
def test_options_are_literals(fn, arg, choices):
    hint = typing.get_type_hints(fn)[arg]
    literals = [h for h in ([hint] + list(typing.get_args(hint)))
                if typing.get_origin(h) is typing.Literal]
    assert set(typing.get_args(literals[0])) == choices


@pytest.mark.parametrize("fn, tol", [(tfa.nmf, 1e-8), (tfa.complete, 1e-8), (tfa.rpca, 1e-6)])
def test_tol_and_precision_defaults(fn, tol):
    params = inspect.signature(fn).parameters
    assert params["tol"].default == tol  # change rule (NMF, completion) / residual rule (rpca)
    assert params["precision"].default == "highest"
    assert params["return_info"].default is False


def test_return_info_gives_result_and_fitinfo():
    lr, info = tfa.nmf(X, RANK, n_iter=3, return_info=True)
    assert isinstance(lr, tfa.LowRankMatrix) and isinstance(info, FitInfo)
    lr, info = tfa.complete(X, MASK, RANK, n_iter=3, return_info=True)
    assert isinstance(lr, tfa.LowRankMatrix) and isinstance(info, FitInfo)
    (low, sparse), info = tfa.rpca(X, n_iter=3, return_info=True)
    assert low.shape == sparse.shape == SHAPE and isinstance(info, FitInfo)
    assert isinstance(tfa.nmf(X, RANK, n_iter=3), tfa.LowRankMatrix)
    assert isinstance(tfa.complete(X, MASK, RANK, n_iter=3), tfa.LowRankMatrix)


def test_numpy_zero_tol_runs_exactly_n_iter():
    for fit in (lambda t: tfa.nmf(X, RANK, n_iter=4, tol=t, return_info=True),
                lambda t: tfa.complete(X, MASK, RANK, n_iter=4, tol=t, return_info=True)):
        _, info = fit(np.float32(0))
        assert int(info.n_iter) == 4 and not bool(info.converged)


def test_cur_default_is_deterministic_and_draws_nothing():
    a, b = tfa.cur(X, RANK), tfa.cur(X, RANK, method="pivoted")
    np.testing.assert_array_equal(np.asarray(a.col_index), np.asarray(b.col_index))
    np.testing.assert_array_equal(np.asarray(a.u), np.asarray(b.u))
    with pytest.raises(ValueError, match=r'key is required for method="leverage"'):
        tfa.cur(X, RANK, method="leverage")


BAD_KEYS = [0, np.zeros(2, np.float32), jax.random.split(KEY, 2)]
KEY_CALLS = {
    "svd_randomized": lambda k: tfa.svd(X, RANK, key=k, method="randomized"),
    "svd_exact": lambda k: tfa.svd(X, RANK, key=k),
    "nmf_random": lambda k: tfa.nmf(X, RANK, key=k, init="random", n_iter=2),
    "nmf_nndsvd": lambda k: tfa.nmf(X, RANK, key=k, n_iter=2),
    "cur_leverage": lambda k: tfa.cur(X, RANK, key=k, method="leverage"),
    "cur_pivoted": lambda k: tfa.cur(X, RANK, key=k),
    "complete_random": lambda k: tfa.complete(X, MASK, RANK, key=k, init="random", n_iter=2),
    "complete_svd": lambda k: tfa.complete(X, MASK, RANK, key=k, n_iter=2),
}


@pytest.mark.parametrize("name", list(KEY_CALLS))
@pytest.mark.parametrize("bad", range(len(BAD_KEYS)), ids=["int", "float_array", "batch"])
def test_bad_keys_name_key(name, bad):
    with pytest.raises((TypeError, ValueError), match=r"^key must be"):
        KEY_CALLS[name](BAD_KEYS[bad])
    KEY_CALLS[name](KEY)  # a real key is fine


@pytest.mark.parametrize("call", [
    lambda p: tfa.svd(X, RANK, precision=p), lambda p: tfa.nmf(X, RANK, precision=p),
    lambda p: tfa.cur(X, RANK, precision=p), lambda p: tfa.complete(X, MASK, RANK, precision=p),
    lambda p: tfa.rpca(X, precision=p),
], ids=["svd", "nmf", "cur", "complete", "rpca"])
def test_bad_precision_names_precision(call):
    with pytest.raises(ValueError, match=r"precision must be None, one of"):
        call("fast")


def test_soft_impute_refuses_a_string_start_and_takes_a_warm_start():
    with pytest.raises(ValueError, match=r"Soft-Impute starts from Z = 0 or from a "
                                         r"LowRankMatrix.*init='svd'"):
        tfa.complete(X, MASK, RANK, method="soft_impute", init="svd")
    cold, info_cold = tfa.complete(X, MASK, RANK, method="soft_impute", n_iter=5, tol=0,
                                   return_info=True)
    warm, info_warm = tfa.complete(X, MASK, RANK, method="soft_impute", init=cold, n_iter=5,
                                   tol=0, return_info=True)
    assert float(info_warm.errors[0]) <= float(info_cold.errors[-1]) * (1 + 1e-3)
    # an ALS start from a LowRankMatrix: at the truncated SVD of fully observed data, ALS
    # is already at its fixed point
    full = tfa.svd(X, RANK)
    again = tfa.complete(X, None, RANK, init=full, n_iter=3, tol=0)
    assert _rel(full.to_dense(), again.to_dense()) < 1e-4
    with pytest.raises(ValueError, match=r"init must be a LowRankMatrix of shape \(20, 15\) and "
                                         r"rank 3, got shape \(20, 15\) and rank 2"):
        tfa.complete(X, MASK, RANK, init=tfa.svd(X, 2))
