"""Gradient descent on tubal factorizations (Karnik, Veselovska, Iwen & Krahmer, ICML 2025):
the loss and its gradient against a NumPy float64 block-circulant reference, singular tubes,
recovery of planted low-tubal-rank tensors from a small initialisation and the failure from a
large one (the paper's claim), completion from entries, Optax optimizers, jit/vmap, argument
checks, and the two examples.

Shapes are shared (10 × 10 × 4, inner size 10, 150 or 300 measurements) so that the jitted fit
compiles only a few times.
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from _helpers import rel, x64
import tensorfact as tfa
from tensorfact import GDInfo, TubalFactors
from tensorfact.tubal import effective_rank, factorize_gd, measure, singular_tube_norms
from tensorfact.tubal import loss as tubal_loss

KEY = jax.random.key(0)
N, N3, TRUE_RANK, INNER = 10, 4, 2, 10
EXAMPLES = pathlib.Path(__file__).parents[1] / "examples"


# -- NumPy float64 reference of the t-product (Kilmer & Martin 2011: circular convolution) ------

def np_tprod(a, b):
    """``C[:, :, t] = Σ_s A[:, :, s] B[:, :, (t − s) mod n3]``, the block-circulant product."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n3 = a.shape[2]
    c = np.zeros((a.shape[0], b.shape[1], n3))
    for t in range(n3):
        for s in range(n3):
            c[:, :, t] += a[:, :, s] @ b[:, :, (t - s) % n3]
    return c


def np_ttranspose(a):
    """Transpose every frontal slice and reverse the order of slices 2 … n3."""
    a = np.asarray(a, np.float64)
    return np.concatenate([a[:, :, :1], a[:, :, :0:-1]], axis=2).transpose(1, 0, 2)


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def sensing_problem(n_measurements, seed=1):
    """``X* = V * Vᵀ`` (10 × 10 × 4, tubal rank 2, ‖X*‖_F = 1) and Gaussian measurements."""
    k_v, k_a = jax.random.split(jax.random.key(seed))
    v = np.asarray(jax.random.normal(k_v, (N, TRUE_RANK, N3)), np.float64)
    x = np_tprod(v, np_ttranspose(v))
    x = jnp.asarray(x / np.linalg.norm(x), jnp.float32)
    a = tfa.tubal.gaussian_measurements(x.shape, n_measurements, key=k_a)
    return x, a, measure(a, x)


def final_error(factors, x):
    return rel(x, factors.to_dense())


# -- measurements, the factorized type and singular tubes ---------------------------------------

def test_measure_and_gaussian_measurements(rng):
    a = tfa.tubal.gaussian_measurements((3, 4, 5), 2000, key=KEY)
    assert a.shape == (2000, 3, 4, 5) and a.dtype == jnp.float32
    x = rng.standard_normal((3, 4, 5))
    y = measure(a, x.astype(np.float32))
    np.testing.assert_allclose(y, np.einsum("iabc,abc->i", np.asarray(a, np.float64), x),
                               rtol=1e-4, atol=1e-4)
    # E⟨A_i, X⟩² = ‖X‖²_F: the normalisation of the loss
    assert float(np.mean(np.asarray(y, np.float64) ** 2)) == pytest.approx(
        np.sum(x ** 2), rel=0.1)
    f = TubalFactors(rng.standard_normal((3, 2, 5)), rng.standard_normal((4, 2, 5)))
    np.testing.assert_allclose(measure(a, f), measure(a, f.to_dense()), rtol=1e-5,
                               atol=1e-4)


def test_tubal_factors_match_block_circulant_reference(rng):
    left = rng.standard_normal((5, 3, 4)).astype(np.float32)
    right = rng.standard_normal((6, 3, 4)).astype(np.float32)
    f = TubalFactors(left, right)
    ref = np_tprod(left, np_ttranspose(right))
    assert f.shape == (5, 6, 4) and f.rank == 3 and f.n_params == left.size + right.size
    assert not f.symmetric and f.kind == "fft" and f.transform.kind == "fft"
    assert rel(ref, f.to_dense()) < 1e-6
    assert float(f.norm()) == pytest.approx(np.linalg.norm(ref), rel=1e-5)
    sym = TubalFactors(left)
    assert sym.symmetric and sym.shape == (5, 5, 4) and sym.n_params == left.size
    dense = np.asarray(sym.to_dense(), np.float64)
    assert rel(np_tprod(left, np_ttranspose(left)), dense) < 1e-6
    np.testing.assert_allclose(np_ttranspose(dense), dense, atol=1e-4)  # X = Xᵀ
    # a jit round trip keeps the type and its static transform
    out = jax.jit(lambda t: t)(TubalFactors(left, right, transform="dct"))
    assert isinstance(out, TubalFactors) and out.kind == "dct"


@settings(max_examples=10, deadline=None)
@given(n1=st.integers(1, 5), n2=st.integers(1, 5), r=st.integers(1, 4), n3=st.integers(1, 5),
       symmetric=st.booleans(), seed=st.integers(0, 2**16))
def test_tubal_factors_properties(n1, n2, r, n3, symmetric, seed):
    """to_dense against the circular-convolution reference, the dense-free norm, and the
    singular tubes: their squares add up to ‖X‖²_F and at most min(n1, n2, R) are nonzero."""
    rng = np.random.default_rng(seed)
    left = rng.standard_normal((n1, r, n3))
    right = None if symmetric else rng.standard_normal((n2, r, n3))
    ref = np_tprod(left, np_ttranspose(left if symmetric else right))
    with x64():
        f = TubalFactors(left, right)
        assert f.shape == ref.shape and f.dtype == jnp.float64

        @jax.jit  # one compilation per drawn shape
        def summary(f):
            dense = f.to_dense()
            return dense, f.norm(), singular_tube_norms(f), singular_tube_norms(dense)

        dense, norm, norms, dense_norms = map(np.asarray, summary(f))
    np.testing.assert_allclose(dense, ref, atol=1e-10 * (1 + np.abs(ref).max()))
    assert float(norm) == pytest.approx(np.linalg.norm(ref), rel=1e-10, abs=1e-12)
    assert norms.shape == (min(n1, n1 if symmetric else n2, r),)
    assert np.all(np.diff(norms) <= 1e-9 * norms[0])
    assert np.sum(norms ** 2) == pytest.approx(np.sum(ref ** 2), rel=1e-9)
    np.testing.assert_allclose(dense_norms[:norms.size], norms, rtol=1e-8, atol=1e-10 * norms[0])


@pytest.mark.parametrize("transform", ["dct", "matrix"])
def test_tubal_factors_other_transforms(rng, transform):
    if transform == "matrix":
        transform = jnp.asarray(np.linalg.qr(rng.standard_normal((4, 4)))[0], jnp.float32)
    left = rng.standard_normal((5, 2, 4)).astype(np.float32)
    right = rng.standard_normal((3, 2, 4)).astype(np.float32)
    f = TubalFactors(left, right, transform=transform)
    ref = tfa.tubal.product(left, tfa.tubal.transpose(right, transform=transform),
                            transform=transform)
    assert rel(ref, f.to_dense()) < 1e-5
    assert float(f.norm()) == pytest.approx(float(jnp.linalg.norm(ref)), rel=1e-4)
    assert f.n_params == left.size + right.size  # the transform matrix is not a parameter
    grads = jax.grad(tubal_loss)(f, np.zeros(f.shape, np.float32))
    assert float(jnp.abs(grads.left).max()) > 0
    if grads.matrix is not None:  # nor does it get a gradient (an Optax step keeps it)
        np.testing.assert_array_equal(grads.matrix, 0)


def test_singular_tube_norms_and_effective_rank(rng):
    v = rng.standard_normal((7, 2, 4))
    w = rng.standard_normal((6, 2, 4))
    x = np_tprod(v, np_ttranspose(w))
    # reference: SVD of every slice of the full FFT, ‖s_j‖² = (1/n3) Σ_k σ_j(X̂_k)²
    s = np.linalg.svd(np.moveaxis(np.fft.fft(x, axis=2), 2, 0), compute_uv=False)
    ref = np.sqrt(np.mean(s ** 2, axis=0))
    norms = singular_tube_norms(x.astype(np.float32))
    np.testing.assert_allclose(norms, ref, rtol=1e-4, atol=1e-4 * ref[0])
    assert float(np.sum(np.asarray(norms, np.float64) ** 2)) == pytest.approx(
        np.sum(x ** 2), rel=1e-4)
    from_factors = singular_tube_norms(TubalFactors(v.astype(np.float32),
                                                    w.astype(np.float32)))
    np.testing.assert_allclose(from_factors, ref[:2], rtol=1e-4)
    assert int(effective_rank(x.astype(np.float32))) == 2
    assert int(effective_rank(TubalFactors(v.astype(np.float32)))) == 2
    # tolerance: a third tube at 1e-3 of the first counts only for tol < 1e-3
    third = x + 1e-3 * ref[0] * np_tprod(rng.standard_normal((7, 1, 4)) / 4,
                                         rng.standard_normal((1, 6, 4)) / 4)
    ranks = [int(effective_rank(third.astype(np.float32), tol)) for tol in (1e-2, 1e-6)]
    assert ranks == [2, 3]
    batch = jnp.stack([x, third]).astype(jnp.float32)
    np.testing.assert_array_equal(jax.vmap(lambda x: effective_rank(x, 1e-6))(batch), [2, 3])
    assert int(effective_rank(np.zeros((3, 3, 2), np.float32))) == 0


# -- the loss and its gradient ---------------------------------------------------------------------

def closed_form_grad(left, right, g):
    """∇_L ⟨G, L * Rᵀ⟩ = G * R, ∇_R = Gᵀ * L; symmetric (right None): (G + Gᵀ) * U."""
    if right is None:
        return (np_tprod(g + np_ttranspose(g), left),)
    return np_tprod(g, right), np_tprod(np_ttranspose(g), left)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("model", ["measurements", "entries"])
def test_loss_gradient_matches_closed_form(rng, symmetric, model):
    n1, n2, r, n3 = 4, 4 if symmetric else 5, 3, 5
    left = rng.standard_normal((n1, r, n3))
    right = None if symmetric else rng.standard_normal((n2, r, n3))
    x = np_tprod(left, np_ttranspose(left if right is None else right))
    with x64():
        factors = TubalFactors(left, right)
        if model == "measurements":
            a = rng.standard_normal((9, n1, n2, n3))
            y = rng.standard_normal(9)
            resid = np.einsum("iabc,abc->i", a, x) - y
            loss_ref = 0.5 * np.mean(resid ** 2)
            g = np.einsum("i,iabc->abc", resid, a) / len(y)
            args, kwargs = (y, a), {}
        else:
            y = rng.standard_normal(x.shape)
            mask = rng.random(x.shape) < 0.6
            p = mask.mean()
            loss_ref = 0.5 / p * np.sum(np.where(mask, x - y, 0) ** 2)
            g = np.where(mask, x - y, 0) / p
            y = np.where(mask, y, np.nan)  # unobserved entries may be NaN
            args, kwargs = (y,), {"mask": mask}
        loss, grads = jax.value_and_grad(tubal_loss)(factors, *args, **kwargs)
        assert isinstance(grads, TubalFactors)
        assert float(loss) == pytest.approx(loss_ref, rel=1e-10)
        ref = closed_form_grad(left, right, g)
        np.testing.assert_allclose(grads.left, ref[0], rtol=1e-9, atol=1e-10)
        if not symmetric:
            np.testing.assert_allclose(grads.right, ref[1], rtol=1e-9, atol=1e-10)
        else:
            assert grads.right is None


def test_loss_check_grads(rng):
    with x64():
        a = jnp.asarray(rng.standard_normal((6, 3, 4, 3)))
        y = jnp.asarray(rng.standard_normal(6))

        def fn(left, right):
            return tubal_loss(TubalFactors(left, right), y, a)

        check_grads(fn, (jnp.asarray(rng.standard_normal((3, 2, 3))),
                         jnp.asarray(rng.standard_normal((4, 2, 3)))), order=1,
                    modes=("fwd", "rev"))


# -- recovery and the implicit bias of a small initialisation ------------------------------------

def test_small_init_recovers_and_large_init_does_not_symmetric_sensing():
    """The paper's claim: from fewer measurements (150) than unknowns (210), gradient descent on
    U * Uᵀ with R = 10 finds the tubal-rank-2 X* from a small init and not from a large one.
    The α's run as one vmapped program."""
    x, a, y = sensing_problem(150)
    alphas = jnp.asarray([1e-6, 1e-5, 0.1, 1.0])

    def fit(alpha):
        return factorize_gd(y, a, INNER, key=KEY, symmetric=True, init_scale=alpha,
                            n_iter=2000, x_true=x, return_info=True)

    factors, info = jax.vmap(fit)(alphas)
    assert isinstance(info, GDInfo) and info.losses.shape == (4, 2000)
    assert factors.shape == (N, N, N3) and factors.left.shape == (4, N, INNER, N3)
    dense = np.asarray(factors.to_dense(), np.float64)  # a batch of four tensors
    errors = np.array([rel(x, d) for d in dense])
    # the info's last entry describes the returned result
    np.testing.assert_allclose(info.true_errors[:, -1], errors, rtol=1e-4)
    ranks = np.asarray(info.ranks[:, -1])
    small, large = slice(0, 2), slice(2, 4)
    assert max(errors[small]) < 1e-2, errors
    assert np.all(ranks[small] == TRUE_RANK), ranks
    assert min(errors[large]) > 0.1, errors
    assert np.all(ranks[large] > TRUE_RANK + 2), ranks
    # every run decreases the training loss: the large-α runs fit the data, but not X*
    assert np.all(np.asarray(info.losses[:, -1]) < 1e-2 * np.asarray(info.losses[:, 0]))


def test_small_init_recovers_asymmetric_sensing():
    x, a, y = sensing_problem(300)
    factors, info = factorize_gd(y, a, INNER, key=KEY, init_scale=1e-6, n_iter=2000,
                                 x_true=x, return_info=True)
    assert factors.right is not None and factors.shape == (N, N, N3) and factors.rank == INNER
    assert final_error(factors, x) < 1e-2
    assert int(info.ranks[-1]) == TRUE_RANK


def completion_fit(y, mask):
    x, _, _ = sensing_problem(150)
    return factorize_gd(y, None, INNER, key=KEY, symmetric=True, mask=mask,
                        init_scale=1e-6, n_iter=1500, x_true=x, return_info=True)


def test_completion_from_entries_small_init():
    x, _, _ = sensing_problem(150)
    mask = jax.random.bernoulli(jax.random.key(3), 0.5, x.shape)
    factors, info = completion_fit(jnp.where(mask, x, jnp.nan), mask)
    assert final_error(factors, x) < 1e-3  # on all entries, half of them never observed
    assert int(info.ranks[-1]) == TRUE_RANK


def sym_fit(y, a, **kwargs):
    """The configuration of the example's quick run (symmetric, R = 10, 2000 steps, with
    x_true): calls with other values but these static arguments reuse one compiled program."""
    x, _, _ = sensing_problem(150)
    kwargs = {"key": KEY, "symmetric": True, "n_iter": 2000, "x_true": x, "return_info": True,
              **kwargs}
    return factorize_gd(y, a, INNER, **kwargs)


def test_loss_nonincreasing_with_small_step():
    _, a, y = sensing_problem(150)
    _, info = sym_fit(y, a, init_scale=0.1, learning_rate=0.02)
    loss = np.asarray(info.losses, np.float64)
    assert np.all(np.diff(loss) <= 1e-6 * loss[:-1])
    assert loss[-1] < 1e-2 * loss[0]


def test_jit_matches_eager_and_is_deterministic():
    _, a, y = sensing_problem(150)
    keys = jax.random.split(KEY, 2)
    jitted = jax.jit(lambda k, y: sym_fit(y, a, key=k, init_scale=0.1))
    f, info = jitted(keys[0], y)
    assert isinstance(f, TubalFactors) and isinstance(info, GDInfo)
    assert f.symmetric and info.spectra.shape == (2000, INNER)
    eager, eager_info = sym_fit(y, a, key=keys[0], init_scale=0.1)
    np.testing.assert_allclose(f.to_dense(), eager.to_dense(), atol=1e-5)
    np.testing.assert_array_equal(info.ranks, eager_info.ranks)
    again, again_info = sym_fit(y, a, key=keys[0], init_scale=0.1)
    np.testing.assert_array_equal(eager.left, again.left)
    np.testing.assert_array_equal(eager_info.losses, again_info.losses)
    other, _ = sym_fit(y, a, key=keys[1], init_scale=0.1)
    assert not np.allclose(other.left, eager.left)


def test_float64_adam_fit_without_ground_truth():
    x, a, y = sensing_problem(150)
    with x64():
        a64, y64 = jnp.asarray(a, jnp.float64), jnp.asarray(y, jnp.float64)
        f, info = factorize_gd(y64, a64, 3, key=KEY, symmetric=True, init_scale=0.1,
                               optimizer=optax.adam(1e-2), n_iter=400, return_info=True)
        assert f.left.dtype == jnp.float64 and f.symmetric
        assert info.losses.dtype == info.spectra.dtype == jnp.float64
        assert info.ranks.dtype == jnp.int32 and info.spectra.shape == (400, 3)
        assert np.all(np.isnan(np.asarray(info.true_errors)))  # no x_true: NaN
        assert float(info.losses[-1]) < 1e-3 * float(info.losses[0])
        assert final_error(f, x) < 0.1  # close to X* (the start is at relative error ~ 1)


def test_dct_transform_recovers_dct_planted_tensor():
    v = jax.random.normal(jax.random.key(5), (N, TRUE_RANK, N3))
    x = tfa.tubal.product(v, tfa.tubal.transpose(v, transform="dct"), transform="dct")
    x = x / jnp.linalg.norm(x.ravel())
    assert int(effective_rank(x, transform="dct")) == TRUE_RANK
    # fully observed (mask=None): the loss is ½‖X − Y‖²_F
    factors, info = factorize_gd(x, None, INNER, key=KEY, symmetric=True, init_scale=1e-6,
                                 n_iter=1500, x_true=x, transform="dct", return_info=True)
    assert factors.kind == "dct" and final_error(factors, x) < 1e-3
    assert int(info.ranks[-1]) == TRUE_RANK


def test_nonfinite_observations_are_reported_by_name():
    x, a, y = sensing_problem(150)
    with pytest.raises(ValueError, match=r"^y contains 1 NaN or Inf"):
        sym_fit(y.at[0].set(jnp.nan), a)
    with pytest.raises(ValueError, match=r"^a contains 1 NaN or Inf"):
        sym_fit(y, a.at[0, 1, 2, 3].set(-jnp.inf))
    with pytest.raises(ValueError, match=r"^x_true contains 1 NaN or Inf"):
        sym_fit(y, a, x_true=x.at[0, 0, 0].set(jnp.inf))
    mask = np.ones(x.shape, bool)
    mask[0, 0, 0] = False
    # a NaN where the mask says unobserved is fine, one in an observed entry is not
    completion_fit(x.at[0, 0, 0].set(jnp.nan), mask)
    with pytest.raises(ValueError, match=r"^y \(observed entries\) contains 1 NaN or Inf"):
        completion_fit(x.at[1, 0, 0].set(jnp.nan), mask)


def test_all_zero_observations_take_a_sane_default_step():
    """Zero measurements or entries: a finite default step (no division by zero); the start
    shrinks toward X* = 0 and the error relative to zero data is Inf, not 0."""
    x, a, y = sensing_problem(150)
    for args, kwargs in (((jnp.zeros_like(y), a), {}),
                         ((jnp.zeros_like(x), None), {"mask": np.ones(x.shape, bool)})):
        f, info = factorize_gd(*args, 3, key=KEY, init_scale=0.1, n_iter=100, return_info=True,
                               **kwargs)
        start = factorize_gd(*args, 3, key=KEY, init_scale=0.1, n_iter=1, **kwargs)
        dense = np.asarray(f.to_dense())
        assert np.all(np.isfinite(dense)) and np.all(np.isfinite(np.asarray(info.losses)))
        assert np.linalg.norm(dense) < 0.5 * np.linalg.norm(np.asarray(start.to_dense()))
        assert np.isinf(float(info.rel_error))


@settings(max_examples=4, deadline=None)
@given(c=st.sampled_from((1e-30, 1e-20, 1e20, 1e30)), model=st.sampled_from(("a", "entries")))
def test_property_scale_equivariance(c, model):
    """The factors of c·y are √c times those of y and the reported errors are the same, from
    measurements and from entries (before: NaN or zeros at these scales)."""
    x, a, y = sensing_problem(150)
    mask = jax.random.bernoulli(jax.random.key(3), 0.6, x.shape)
    data = (y, a) if model == "a" else (jnp.where(mask, x, jnp.nan), None)
    kwargs = dict(key=KEY, symmetric=True, init_scale=1e-3, n_iter=400, return_info=True,
                  mask=None if model == "a" else mask)
    base, base_info = factorize_gd(*data, INNER, x_true=x, **kwargs)
    got, info = factorize_gd(data[0] * np.float32(c), data[1], INNER, x_true=x * np.float32(c),
                             **kwargs)
    np.testing.assert_allclose(np.asarray(got.left, np.float64) / np.sqrt(c), base.left,
                               rtol=1e-3, atol=1e-4 * float(np.abs(base.left).max()))
    assert rel(base.to_dense(), np.asarray(got.to_dense(), np.float64) / c) < 1e-3
    for field in ("errors", "true_errors"):
        np.testing.assert_allclose(getattr(info, field), getattr(base_info, field), rtol=1e-3,
                                   atol=1e-6)
    np.testing.assert_array_equal(info.ranks, base_info.ranks)
    np.testing.assert_allclose(np.asarray(info.spectra, np.float64) / c, base_info.spectra,
                               rtol=1e-3, atol=1e-6)
    assert float(base_info.true_errors[-1]) < 0.1       # a real fit, not a zero or a NaN one


def _bad_calls():
    a = np.zeros((6, 4, 4, 3), np.float32)
    y = np.zeros((6,), np.float32)
    rect = np.zeros((6, 4, 5, 3), np.float32)
    t = np.zeros((4, 4, 3), np.float32)
    return [
        (dict(y=y, a=a, rank=0), "rank"),
        (dict(y=y, a=a, rank=2.0), "rank"),
        (dict(y=y, a=a, rank=True), "rank"),
        (dict(y=y, a=a, rank=2, n_iter=0), "n_iter"),
        (dict(y=y[:5], a=a, rank=2), "y must have shape"),
        (dict(y=y, a=a[..., 0], rank=2), "a must have shape"),
        (dict(y=y, a=rect, rank=2, symmetric=True), "symmetric"),
        (dict(y=y, a=a, rank=2, key=None), "key"),
        (dict(y=y, a=a, rank=2, init_scale=-1e-3), "init_scale"),
        (dict(y=y, a=a, rank=2, init_scale=np.inf), "init_scale"),
        (dict(y=y, a=a, rank=2, learning_rate=np.inf), "learning_rate"),
        (dict(y=y, a=a, rank=2, learning_rate=-0.1), "learning_rate"),
        (dict(y=y, a=a, rank=2, learning_rate=0.1, optimizer=optax.sgd(0.1)),
         "optimizer"),
        (dict(y=y, a=a, rank=2, x_true=np.zeros((4, 4, 4))), "x_true"),
        (dict(y=y, a=a, rank=2, mask=np.ones((4, 4, 3))), "mask"),
        (dict(y=y, a=a, rank=2, rank_tol=1.5), "rank_tol"),
        (dict(y=y, a=a, rank=2, transform="wavelet"), "transform"),
        (dict(y=y, a=a, rank=2, transform=np.zeros((3, 3))), "invertible"),
        (dict(y=t[0], a=None, rank=2), "y must be the observed"),
        (dict(y=t, a=None, rank=2, mask=np.ones((4, 4, 2))), "mask must have the shape"),
    ]


@pytest.mark.parametrize("kwargs, match", _bad_calls())
def test_bad_inputs(kwargs, match):
    kwargs = {"key": KEY, **kwargs}
    with pytest.raises(ValueError, match=match):
        factorize_gd(**kwargs)


def test_bad_inputs_of_helpers():
    with pytest.raises(ValueError, match="shape must be"):
        tfa.tubal.gaussian_measurements((4, 4), 3, key=KEY)
    with pytest.raises(ValueError, match="n_measurements"):
        tfa.tubal.gaussian_measurements((4, 4, 2), 0, key=KEY)
    with pytest.raises(ValueError, match="key is required"):
        tfa.tubal.gaussian_measurements((4, 4, 2), 3, key=None)
    with pytest.raises(ValueError, match="x must have shape"):
        measure(np.zeros((3, 4, 4, 2)), np.zeros((4, 5, 2)))
    with pytest.raises(ValueError, match="right must have shape"):
        TubalFactors(np.zeros((4, 2, 3)), np.zeros((5, 3, 3)))
    with pytest.raises(ValueError, match="left must have shape"):
        TubalFactors(np.zeros((4, 2)))
    with pytest.raises(TypeError, match="factors must be TubalFactors"):
        tubal_loss((np.zeros((4, 2, 3)),), np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="match the factors"):
        tubal_loss(TubalFactors(np.zeros((4, 2, 3))), np.zeros((5, 4, 3)))
    with pytest.raises(ValueError, match=r"tol must be in \[0, 1\)"):
        effective_rank(np.zeros((3, 3, 2)), 1.0)
    with pytest.raises(ValueError, match="third-order"):
        singular_tube_norms(np.zeros((3, 3)))


# -- the examples --------------------------------------------------------------------------------

def test_implicit_regularization_example_quick(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    module = load_example("tubal_implicit_regularization")
    out = tmp_path / "tubal.png"
    results = module.main(["--quick", "--out", str(out)])
    assert out.exists() and out.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "test error" in printed and "recovered" in printed
    by_alpha = {r["alpha"]: r for r in results}
    for alpha in (1e-6, 1e-4):  # small α: recovers X*, at its tubal rank
        assert by_alpha[alpha]["error"][-1] < module.RECOVERY_THRESHOLD
        assert by_alpha[alpha]["tubal_rank"][-1] == 2 and by_alpha[alpha]["recovered"]
    for alpha in (1e-1, 1.0):   # large α: fits the data with a high tubal rank, misses X*
        assert by_alpha[alpha]["error"][-1] > 10 * module.RECOVERY_THRESHOLD
        assert by_alpha[alpha]["tubal_rank"][-1] > 4 and not by_alpha[alpha]["recovered"]


def synthetic_image(size=32):
    """A smooth colour image (a sum of a few separable waves per channel) in [0, 1]."""
    t = np.linspace(0, 1, size)
    img = np.stack([0.5 + 0.25 * np.outer(np.sin(2 * np.pi * (k + 1) * t), np.cos(np.pi * t))
                    + 0.2 * np.outer(t, 1 - t) * (k - 1) for k in range(3)], axis=2)
    return np.clip(img, 0, 1).astype(np.float32)


def test_image_completion_example_core(tmp_path):
    """The example's core on a synthetic image (no scikit-image needed): every completion
    beats the zero-filled observation by far, and the figure is written."""
    pytest.importorskip("matplotlib")
    module = load_example("tubal_image_completion")
    img = synthetic_image()
    result = module.complete_image(img, missing=0.7, block=2, gd_steps=300, tnn_iter=150,
                                   matrix_iter=100, matrix_rank=4)
    assert 0.25 < result["mask"].mean() < 0.35
    images, scores = result["images"], result["psnr"]
    assert set(images) == {"original", "observed", "tubal, TNN", "tubal, GD",
                           "matrix, per channel"}
    for name in ("tubal, TNN", "tubal, GD", "matrix, per channel"):
        assert images[name].shape == img.shape
        assert scores[name] > scores["observed"] + 15, scores
        # the observed pixels are reproduced (TNN interpolates them exactly)
        assert module.psnr(img[result["mask"]], images[name][result["mask"]]) > 30
    assert scores["tubal, TNN"] > 30, scores
    np.testing.assert_array_equal(module.from_blocks(module.to_blocks(img, 4), 4, img.shape), img)
    out = tmp_path / "completion.png"
    module.plot(result, out, "synthetic")
    assert out.exists() and out.stat().st_size > 5_000
