"""Tests for the factorized tensor types, tensorfact.random and tensorfact.metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorly as tl
from jax.test_util import check_grads
from tensorly import tenalg

import tensorfact as tfa
from tensorfact import CPTensor, FactorizedTensor, TuckerTensor

tl.set_backend("numpy")


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def f64(a):
    return np.asarray(a, dtype=np.float64)


def cp_dense64(cp):
    """TensorLy's reconstruction of a CPTensor, in float64."""
    return tl.cp_to_tensor((f64(cp.weights), [f64(a) for a in cp.factors]))


def tucker_dense64(tk):
    """TensorLy's reconstruction of a (possibly partial) TuckerTensor, in float64."""
    core, factors = f64(tk.core), [f64(u) for u in tk.factors]
    if tk.modes == tuple(range(tk.core.ndim)):
        return tl.tucker_to_tensor((core, factors))
    return tenalg.multi_mode_dot(core, factors, list(tk.modes))


def make_cp(rng, shape, rank):
    return CPTensor(jnp.asarray(randn(rng, rank)), [jnp.asarray(randn(rng, n, rank)) for n in shape])


def make_tucker(rng, shape, ranks, modes=None):
    """Core of shape ``ranks`` (for a partial Tucker: the full core shape); factors for ``modes``."""
    modes = range(len(ranks)) if modes is None else modes
    return TuckerTensor(jnp.asarray(randn(rng, *ranks)),
                        [jnp.asarray(randn(rng, shape[m], ranks[m])) for m in modes], modes)


def assert_tree_close(a, b, rtol=1e-5, atol=1e-6):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# -- CPTensor --------------------------------------------------------------------------------

def test_cp_properties(rng):
    cp = make_cp(rng, (3, 4, 5), 2)
    assert isinstance(cp, FactorizedTensor)
    assert cp.shape == (3, 4, 5)
    assert cp.ndim == 3
    assert cp.size == 60
    assert cp.rank == 2
    assert cp.n_params == 2 + (3 + 4 + 5) * 2
    assert cp.compression_ratio == pytest.approx(60 / 26)
    assert cp.dtype == jnp.float32
    assert isinstance(cp.factors, tuple) and len(cp.factors) == 3
    assert "CPTensor(" in repr(cp) and "float32[3, 2]" in repr(cp)


def test_cp_default_weights_are_ones(rng):
    factors = [jnp.asarray(randn(rng, n, 3)) for n in (2, 3)]
    cp = CPTensor(None, factors)
    np.testing.assert_array_equal(np.asarray(cp.weights), np.ones(3, np.float32))
    assert cp.weights.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(cp.to_dense()),
                               f64(factors[0]) @ f64(factors[1]).T, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(4,), (3, 5), (3, 4, 5), (2, 3, 1, 4)])
def test_cp_to_dense_matches_tensorly(rng, shape):
    cp = make_cp(rng, shape, 3)
    dense = cp.to_dense()
    assert dense.shape == shape
    assert dense.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(dense), cp_dense64(cp), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,rank", [((3, 4, 5), 3), ((2, 3, 4, 5), 4), ((6, 7), 1)])
def test_cp_norm_matches_dense_norm(rng, shape, rank):
    cp = make_cp(rng, shape, rank)
    expected = np.linalg.norm(cp_dense64(cp))
    got = cp.norm()
    assert got.shape == () and got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_cp_normalize_keeps_tensor(rng):
    cp = make_cp(rng, (3, 4, 5), 3)
    normed = cp.normalize()
    assert isinstance(normed, CPTensor)
    np.testing.assert_allclose(np.asarray(normed.to_dense()), cp_dense64(cp), rtol=1e-5, atol=1e-5)
    for a in normed.factors:
        np.testing.assert_allclose(np.linalg.norm(np.asarray(a), axis=0), 1.0, rtol=1e-6)
    # the weights absorb the column norms
    scales = np.prod([np.linalg.norm(f64(a), axis=0) for a in cp.factors], axis=0)
    np.testing.assert_allclose(np.asarray(normed.weights), f64(cp.weights) * scales, rtol=1e-5)


def test_cp_normalize_zero_column_stays_finite(rng):
    a = randn(rng, 3, 2)
    a[:, 1] = 0
    cp = CPTensor(jnp.ones(2), [jnp.asarray(a), jnp.asarray(randn(rng, 4, 2))])
    normed = cp.normalize()
    assert all(bool(jnp.all(jnp.isfinite(f))) for f in normed.factors)
    assert float(normed.weights[1]) == 0.0
    np.testing.assert_allclose(np.asarray(normed.to_dense()), cp_dense64(cp), rtol=1e-5, atol=1e-6)


def test_cp_unpacks_like_tensorly(rng):
    cp = make_cp(rng, (2, 3), 2)
    w, f = cp
    assert w is cp.weights
    assert f is cp.factors
    np.testing.assert_allclose(tl.cp_to_tensor((np.asarray(w), [np.asarray(a) for a in f])),
                               np.asarray(cp.to_dense()), rtol=1e-5, atol=1e-6)


def test_cp_is_immutable(rng):
    cp = make_cp(rng, (2, 3), 2)
    with pytest.raises(AttributeError, match="immutable"):
        cp.weights = jnp.zeros(2)
    with pytest.raises(AttributeError):
        cp.factors = ()
    with pytest.raises(AttributeError):
        cp.something_new = 1
    assert cp.weights.shape == (2,)


# -- TuckerTensor ----------------------------------------------------------------------------

def test_tucker_properties(rng):
    tk = make_tucker(rng, (4, 5, 6), (2, 3, 2))
    assert isinstance(tk, FactorizedTensor)
    assert tk.shape == (4, 5, 6)
    assert tk.ndim == 3
    assert tk.size == 120
    assert tk.rank == (2, 3, 2)
    assert tk.modes == (0, 1, 2)
    assert tk.n_params == 12 + 4 * 2 + 5 * 3 + 6 * 2
    assert tk.compression_ratio == pytest.approx(120 / 47)
    assert tk.dtype == jnp.float32
    assert "TuckerTensor(" in repr(tk) and "modes=(0, 1, 2)" in repr(tk)


def test_partial_tucker_properties(rng):
    # Tucker-2 on modes 0 and 1 of a (4, 5, 7) tensor; mode 2 stays as the core's
    tk = make_tucker(rng, (4, 5, 7), (2, 3, 7), modes=(0, 1))
    assert tk.shape == (4, 5, 7)
    assert tk.rank == (2, 3)
    assert tk.modes == (0, 1)
    assert tk.n_params == 2 * 3 * 7 + 4 * 2 + 5 * 3
    assert tk.compression_ratio == pytest.approx(140 / tk.n_params)
    # unordered and negative modes
    tk2 = make_tucker(rng, (4, 5, 6), (2, 5, 3), modes=(2, 0))
    assert tk2.shape == (4, 5, 6)
    assert tk2.rank == (3, 2)
    tk3 = TuckerTensor(tk2.core, tk2.factors, modes=(-1, 0))
    assert tk3.modes == (2, 0)
    np.testing.assert_array_equal(np.asarray(tk3.to_dense()), np.asarray(tk2.to_dense()))


@pytest.mark.parametrize("shape,ranks", [((4, 5, 6), (2, 3, 2)), ((3, 4), (3, 1)),
                                         ((2, 3, 4, 5), (2, 2, 3, 1))])
def test_tucker_to_dense_matches_tensorly(rng, shape, ranks):
    tk = make_tucker(rng, shape, ranks)
    dense = tk.to_dense()
    assert dense.shape == shape
    np.testing.assert_allclose(np.asarray(dense), tucker_dense64(tk), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("modes", [(0, 1), (2,), (2, 0), (1, 2)])
def test_partial_tucker_to_dense_matches_tensorly(rng, modes):
    shape = (4, 5, 6)
    ranks = tuple(2 if m in modes else shape[m] for m in range(3))
    tk = make_tucker(rng, shape, ranks, modes)
    dense = tk.to_dense()
    assert dense.shape == shape
    np.testing.assert_allclose(np.asarray(dense), tucker_dense64(tk), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("modes", [None, (0, 2), (1,)])
def test_tucker_norm_matches_dense_norm(rng, modes):
    shape = (4, 5, 6)
    ranks = (2, 3, 2) if modes is None else tuple(
        2 if m in modes else shape[m] for m in range(3))
    tk = make_tucker(rng, shape, ranks, modes)
    np.testing.assert_allclose(float(tk.norm()), np.linalg.norm(tucker_dense64(tk)), rtol=1e-5)


def test_tucker_unpacks_and_is_immutable(rng):
    tk = make_tucker(rng, (3, 4), (2, 2))
    core, factors = tk
    assert core is tk.core and factors is tk.factors
    np.testing.assert_allclose(tl.tucker_to_tensor((np.asarray(core), [np.asarray(u) for u in factors])),
                               np.asarray(tk.to_dense()), rtol=1e-5, atol=1e-6)
    with pytest.raises(AttributeError, match="immutable"):
        tk.core = jnp.zeros((2, 2))
    with pytest.raises(AttributeError):
        tk.modes = (0,)
    assert tk.modes == (0, 1)


# -- constructor errors ----------------------------------------------------------------------

def test_cp_constructor_errors():
    with pytest.raises(ValueError, match=r"factors must share their number of columns"):
        CPTensor(None, [jnp.zeros((3, 2)), jnp.zeros((4, 3))])
    with pytest.raises(ValueError, match=r"weights must have shape \(2,\).*got \(3,\)"):
        CPTensor(jnp.ones(3), [jnp.zeros((3, 2)), jnp.zeros((4, 2))])
    with pytest.raises(ValueError, match=r"weights must have shape \(2,\)"):
        CPTensor(jnp.ones((2, 1)), [jnp.zeros((3, 2)), jnp.zeros((4, 2))])
    with pytest.raises(ValueError, match=r"factors\[1\] must be 2-D"):
        CPTensor(None, [jnp.zeros((3, 2)), jnp.zeros(4)])
    with pytest.raises(ValueError, match=r"factors\[0\] must be 2-D"):
        CPTensor(None, [jnp.zeros((3, 2, 1))])
    with pytest.raises(ValueError, match=r"factors must be a non-empty sequence"):
        CPTensor(None, [])
    with pytest.raises(ValueError, match=r"factors must be a non-empty sequence"):
        CPTensor(None, jnp.zeros((3, 3, 2)))


def test_tucker_constructor_errors():
    core = jnp.zeros((2, 3, 4))
    with pytest.raises(ValueError, match=r"factors\[1\] must have shape \(I, 3\) to match core "
                                         r"mode 1"):
        TuckerTensor(core, [jnp.zeros((5, 2)), jnp.zeros((5, 2)), jnp.zeros((5, 4))])
    with pytest.raises(ValueError, match=r"factors\[0\] must have shape \(I, 2\)"):
        TuckerTensor(core, [jnp.zeros(5), jnp.zeros((5, 3)), jnp.zeros((5, 4))])
    with pytest.raises(ValueError, match=r"factors must hold one matrix per factorized mode \(3"):
        TuckerTensor(core, [jnp.zeros((5, 2)), jnp.zeros((5, 3))])
    with pytest.raises(ValueError, match=r"one matrix per factorized mode \(1 for modes \(2,\)\), "
                                         r"got 2"):
        TuckerTensor(core, [jnp.zeros((5, 4)), jnp.zeros((5, 3))], modes=(2,))
    # partial Tucker: the factor must match the core on its own mode
    with pytest.raises(ValueError, match=r"factors\[0\] must have shape \(I, 4\) to match core "
                                         r"mode 2"):
        TuckerTensor(core, [jnp.zeros((5, 3))], modes=(2,))
    with pytest.raises(ValueError, match=r"modes must hold mode indices"):
        TuckerTensor(core, [jnp.zeros((5, 2))], modes=(3,))
    with pytest.raises(ValueError, match=r"factors must be a sequence"):
        TuckerTensor(jnp.zeros((2, 2)), jnp.zeros((2, 5, 2)))


# -- pytree behaviour ------------------------------------------------------------------------

def test_cp_through_jit(rng):
    traces = []

    @jax.jit
    def scale(t, s):
        traces.append(1)
        return CPTensor(t.weights * s, t.factors)

    cp = make_cp(rng, (3, 4, 5), 2)
    out = scale(cp, 3.0)
    assert isinstance(out, CPTensor)
    assert out.shape == cp.shape and out.rank == 2
    np.testing.assert_allclose(np.asarray(out.to_dense()), 3 * cp_dense64(cp), rtol=1e-5, atol=1e-5)
    # a second tensor of the same structure reuses the compiled function
    out2 = scale(make_cp(rng, (3, 4, 5), 2), 2.0)
    assert isinstance(out2, CPTensor)
    assert len(traces) == 1
    # to_dense and norm inside jit
    dense = jax.jit(lambda t: t.to_dense())(cp)
    np.testing.assert_allclose(np.asarray(dense), cp_dense64(cp), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(float(jax.jit(lambda t: t.norm())(cp)),
                               np.linalg.norm(cp_dense64(cp)), rtol=1e-5)


def test_tucker_through_jit_keeps_modes(rng):
    traces = []

    @jax.jit
    def double(t):
        traces.append(1)
        return TuckerTensor(2 * t.core, t.factors, t.modes)

    tk = make_tucker(rng, (4, 5, 6), (2, 5, 3), modes=(2, 0))
    out = double(tk)
    assert isinstance(out, TuckerTensor)
    assert out.modes == (2, 0)
    assert out.shape == (4, 5, 6)
    np.testing.assert_allclose(np.asarray(out.to_dense()), 2 * tucker_dense64(tk), rtol=1e-5,
                               atol=1e-5)
    double(make_tucker(rng, (4, 5, 6), (2, 5, 3), modes=(2, 0)))
    assert len(traces) == 1
    # different static modes is a different structure: retraces and stays correct
    other = make_tucker(rng, (4, 5, 6), (4, 2, 3), modes=(1, 2))
    out = double(other)
    assert out.modes == (1, 2)
    assert len(traces) == 2


def test_tree_flatten_unflatten_round_trip(rng):
    cp = make_cp(rng, (3, 4, 5), 2)
    leaves, treedef = jax.tree_util.tree_flatten(cp)
    assert len(leaves) == 1 + 3
    assert leaves[0] is cp.weights
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert isinstance(back, CPTensor)
    assert back.weights is cp.weights
    assert all(a is b for a, b in zip(back.factors, cp.factors))
    # tree_map builds a new tensor of the same type
    doubled = jax.tree_util.tree_map(lambda a: 2 * a, cp)
    assert isinstance(doubled, CPTensor)
    np.testing.assert_allclose(np.asarray(doubled.to_dense()), 2 ** 4 * cp_dense64(cp), rtol=1e-5,
                               atol=1e-5)

    tk = make_tucker(rng, (4, 5, 7), (2, 3, 7), modes=(0, 1))
    leaves, treedef = jax.tree_util.tree_flatten(tk)
    assert len(leaves) == 1 + 2
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert isinstance(back, TuckerTensor)
    assert back.modes == (0, 1)
    assert back.shape == tk.shape
    np.testing.assert_array_equal(np.asarray(back.to_dense()), np.asarray(tk.to_dense()))
    # the static metadata is part of the structure
    tk_other = TuckerTensor(jnp.zeros((4, 3, 7)), [jnp.zeros((4, 4)), jnp.zeros((5, 3))],
                            modes=(0, 1))
    assert jax.tree_util.tree_structure(tk_other) == treedef
    tk_diff = TuckerTensor(jnp.zeros((4, 5, 7)), [jnp.zeros((4, 4)), jnp.zeros((7, 7))],
                           modes=(0, 2))
    assert jax.tree_util.tree_structure(tk_diff) != treedef


def test_vmap_over_batch_of_cp(rng):
    cps = [make_cp(rng, (3, 4, 5), 2) for _ in range(4)]
    batched = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *cps)
    assert isinstance(batched, CPTensor)
    assert batched.weights.shape == (4, 2)
    dense = jax.jit(jax.vmap(lambda t: t.to_dense()))(batched)
    assert dense.shape == (4, 3, 4, 5)
    np.testing.assert_allclose(np.asarray(dense), np.stack([cp_dense64(c) for c in cps]),
                               rtol=1e-5, atol=1e-5)
    norms = jax.jit(jax.vmap(lambda t: t.norm()))(batched)
    np.testing.assert_allclose(np.asarray(norms),
                               [np.linalg.norm(cp_dense64(c)) for c in cps], rtol=1e-5)
    # vmap can also return the type: a batch of random CP tensors from a batch of keys
    keys = jax.random.split(jax.random.key(1), 3)
    made = jax.jit(jax.vmap(lambda k: tfa.random_cp(k, (3, 4), 2)))(keys)
    assert isinstance(made, CPTensor)
    assert made.factors[0].shape == (3, 3, 2)
    np.testing.assert_allclose(np.asarray(made.factors[1][1]),
                               np.asarray(tfa.random_cp(keys[1], (3, 4), 2).factors[1]),
                               rtol=1e-6)


def test_vmap_over_batch_of_partial_tucker(rng):
    tks = [make_tucker(rng, (4, 5, 3), (2, 2, 3), modes=(0, 1)) for _ in range(3)]
    batched = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *tks)
    assert isinstance(batched, TuckerTensor) and batched.modes == (0, 1)
    dense = jax.jit(jax.vmap(lambda t: t.to_dense()))(batched)
    assert dense.shape == (3, 4, 5, 3)
    np.testing.assert_allclose(np.asarray(dense), np.stack([tucker_dense64(t) for t in tks]),
                               rtol=1e-5, atol=1e-5)
    norms = jax.jit(jax.vmap(lambda t: t.norm()))(batched)
    np.testing.assert_allclose(np.asarray(norms),
                               [np.linalg.norm(tucker_dense64(t)) for t in tks], rtol=1e-5)


def _grads_agree(t):
    # (jit-wrapped: one compilation instead of many eager op-by-op ones)
    g_norm = jax.jit(jax.grad(lambda t: t.norm() ** 2))(t)
    g_dense = jax.jit(jax.grad(lambda t: jnp.sum(t.to_dense() ** 2)))(t)
    assert type(g_norm) is type(t) and type(g_dense) is type(t)
    scale = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree_util.tree_leaves(g_dense))
    assert_tree_close(g_norm, g_dense, rtol=1e-4, atol=1e-5 * scale)
    return g_norm


def test_grad_of_cp_norm_matches_grad_of_dense(rng):
    cp = make_cp(rng, (3, 4, 5), 3)
    g = _grads_agree(cp)
    # closed form for the weights: d‖x‖²/dw = 2 (⊛_k A_kᵀA_k) w
    gram = np.prod([f64(a).T @ f64(a) for a in cp.factors], axis=0)
    np.testing.assert_allclose(np.asarray(g.weights), 2 * gram @ f64(cp.weights), rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("modes", [None, (0, 2)])
def test_grad_of_tucker_norm_matches_grad_of_dense(rng, modes):
    ranks = (2, 3, 2) if modes is None else (2, 5, 3)
    tk = make_tucker(rng, (4, 5, 6), ranks, modes)
    g = _grads_agree(tk)
    assert g.modes == tk.modes


def test_check_grads_float64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        w = jnp.asarray(rng.standard_normal(2))
        fs = [jnp.asarray(rng.standard_normal((n, 2))) for n in (2, 3, 2)]
        cp = CPTensor(w, fs)
        assert cp.dtype == jnp.float64 and cp.to_dense().dtype == jnp.float64
        # (jit-wrapped to keep the test fast; the constructor runs on tracers)
        check_grads(jax.jit(lambda w, a, b, c: CPTensor(w, [a, b, c]).to_dense()), (w, *fs),
                    order=1, modes=["rev"])
        check_grads(jax.jit(lambda w, a, b, c: CPTensor(w, [a, b, c]).norm()), (w, *fs),
                    order=1, modes=["rev"])
        core = jnp.asarray(rng.standard_normal((2, 2, 3)))
        us = [jnp.asarray(rng.standard_normal((3, 2))), jnp.asarray(rng.standard_normal((2, 3)))]
        check_grads(jax.jit(lambda g, u, v: TuckerTensor(g, [u, v], modes=(0, 2)).to_dense()),
                    (core, *us), order=1, modes=["rev"])
        check_grads(jax.jit(lambda g, u, v: TuckerTensor(g, [u, v], modes=(0, 2)).norm()),
                    (core, *us), order=1, modes=["rev"])
    assert jnp.zeros(1).dtype == jnp.float32  # x64 did not leak out of the test


# -- random ----------------------------------------------------------------------------------

def test_random_cp(key):
    cp = tfa.random_cp(key, (3, 4, 5), 2)
    assert isinstance(cp, CPTensor)
    assert cp.shape == (3, 4, 5) and cp.rank == 2 and cp.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(cp.weights), 2 ** -0.5, rtol=1e-6)
    assert any(bool(jnp.any(a < 0)) for a in cp.factors)
    # deterministic in the key, different for another key
    again = tfa.random_cp(key, (3, 4, 5), 2)
    assert_tree_close(cp, again, rtol=0, atol=0)
    other = tfa.random_cp(jax.random.key(1), (3, 4, 5), 2)
    assert not np.allclose(np.asarray(other.factors[0]), np.asarray(cp.factors[0]))


def test_random_cp_entries_are_of_order_one(key):
    x = tfa.random_cp(key, (20, 20, 20), 4).to_dense()
    assert 0.6 < float(jnp.std(x)) < 1.6


def test_random_cp_nonneg(key):
    cp = tfa.random_cp(key, (3, 4, 5), 3, nonneg=True)
    for a in cp.factors:
        assert bool(jnp.all(a >= 0)) and bool(jnp.all(a < 1))
    assert bool(jnp.all(cp.weights > 0))
    assert bool(jnp.all(cp.to_dense() >= 0))


def test_random_tucker_orthonormal(key):
    tk = tfa.random_tucker(key, (4, 5, 6), (2, 3, 2))
    assert isinstance(tk, TuckerTensor)
    assert tk.shape == (4, 5, 6) and tk.rank == (2, 3, 2)
    assert [u.shape for u in tk.factors] == [(4, 2), (5, 3), (6, 2)]
    for u in tk.factors:
        np.testing.assert_allclose(np.asarray(u.T @ u), np.eye(u.shape[1]), atol=1e-5)
    # orthonormal factors preserve the norm of the core
    np.testing.assert_allclose(float(tk.norm()), np.linalg.norm(f64(tk.core)), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(tk.to_dense())),
                               np.linalg.norm(f64(tk.core)), rtol=1e-5)
    # an int rank means the same rank on every mode
    assert tfa.random_tucker(key, (4, 5, 6), 2).rank == (2, 2, 2)


def test_random_tucker_not_orthonormal_and_nonneg(key):
    tk = tfa.random_tucker(key, (6, 5), (3, 2), orthonormal=False)
    u = np.asarray(tk.factors[0])
    assert not np.allclose(u.T @ u, np.eye(3), atol=1e-2)
    nn = tfa.random_tucker(key, (4, 5, 6), (2, 3, 2), nonneg=True)
    assert nn.shape == (4, 5, 6)
    assert bool(jnp.all(nn.core >= 0))
    assert all(bool(jnp.all(u >= 0)) for u in nn.factors)
    assert bool(jnp.all(nn.to_dense() >= 0))


def test_random_argument_errors(key):
    with pytest.raises(ValueError, match=r"rank must be a positive integer"):
        tfa.random_cp(key, (3, 4), 0)
    with pytest.raises(ValueError, match=r"shape\[1\] must be a positive integer"):
        tfa.random_cp(key, (3, 0), 2)
    with pytest.raises(ValueError, match=r"ranks\[1\] = 5 is larger than mode 1 of size 4"):
        tfa.random_tucker(key, (3, 4), (2, 5))
    with pytest.raises(ValueError, match=r"ranks must have one entry per decomposed mode"):
        tfa.random_tucker(key, (3, 4), (2, 2, 2))


@pytest.mark.parametrize("level", [0.0, 0.1, 0.5])
def test_noisy_hits_noise_level(key, level):
    x = tfa.random_cp(key, (4, 5, 6), 2).to_dense()
    y = tfa.noisy(jax.random.key(7), x, level)
    assert y.shape == x.shape and y.dtype == x.dtype
    rel = np.linalg.norm(f64(y) - f64(x)) / np.linalg.norm(f64(x))
    np.testing.assert_allclose(rel, level, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(tfa.relative_error(x, y)), level, rtol=1e-4, atol=1e-7)
    if level:
        z = tfa.noisy(jax.random.key(8), x, level)
        assert not np.allclose(np.asarray(z), np.asarray(y))


# -- metrics ---------------------------------------------------------------------------------

def test_relative_error_and_fit(rng):
    x = randn(rng, 3, 4, 5)
    a = x + 0.1 * randn(rng, 3, 4, 5)
    expected = np.linalg.norm(f64(x) - f64(a)) / np.linalg.norm(f64(x))
    np.testing.assert_allclose(float(tfa.relative_error(x, a)), expected, rtol=1e-5)
    np.testing.assert_allclose(float(tfa.fit(x, a)), 1 - expected, rtol=1e-5)
    assert float(tfa.relative_error(x, x)) == 0.0
    assert float(tfa.fit(jnp.asarray(x), jnp.asarray(x))) == 1.0
    # matches TensorLy's fit convention: 1 - ‖x - a‖/‖x‖
    np.testing.assert_allclose(float(tfa.fit(x, a)),
                               1 - tl.norm(f64(x) - f64(a)) / tl.norm(f64(x)), rtol=1e-5)


def test_relative_error_with_mask(rng):
    x = randn(rng, 4, 5)
    a = x + 0.1 * randn(rng, 4, 5)
    mask = rng.random((4, 5)) < 0.6
    expected = (np.linalg.norm(np.where(mask, f64(x) - f64(a), 0))
                / np.linalg.norm(np.where(mask, f64(x), 0)))
    got = tfa.relative_error(x, a, mask=mask)
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)
    np.testing.assert_allclose(float(tfa.fit(x, a, mask=jnp.asarray(mask))), 1 - expected,
                               rtol=1e-5)
    # unobserved entries do not matter at all
    a2 = np.where(mask, a, 1e6).astype(np.float32)
    x2 = np.where(mask, x, -1e6).astype(np.float32)
    np.testing.assert_allclose(float(tfa.relative_error(x2, a2, mask=mask)), expected, rtol=1e-5)
    # an all-True mask is the unmasked error
    np.testing.assert_allclose(float(tfa.relative_error(x, a, mask=np.ones((4, 5), bool))),
                               float(tfa.relative_error(x, a)), rtol=1e-6)
    # 0/1 masks work like booleans
    np.testing.assert_allclose(float(tfa.relative_error(x, a, mask=mask.astype(np.int32))),
                               expected, rtol=1e-5)


def test_relative_error_shape_mismatch():
    with pytest.raises(ValueError, match=r"approx must have the shape of x \(3, 4\), got \(4, 3\)"):
        tfa.relative_error(jnp.zeros((3, 4)), jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"approx must have the shape of x"):
        tfa.fit(jnp.zeros((3, 4)), jnp.zeros((3, 4, 1)))


def test_relative_error_rejects_mask_of_wrong_shape():
    # A mask that merely broadcasts against x must not be silently accepted.
    x = jnp.ones((3, 4))
    with pytest.raises(ValueError, match=r"mask"):
        tfa.relative_error(x, 2 * x, mask=np.ones(4, bool))


def test_relative_error_of_integer_arrays():
    # integer data is promoted to float, as everywhere else in the library
    got = tfa.relative_error(np.arange(4), np.arange(4) + 1)
    np.testing.assert_allclose(float(got), 2 / np.sqrt(14), rtol=1e-6)
