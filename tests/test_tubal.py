"""Tests of the tubal decompositions (``tensorfact.tubal``: svd, rank, tnn, prox, rpca,
complete) and ``TSVDTensor``.

The reference is NumPy float64, slice-wise in the full Fourier domain (``np.fft.fft`` over all
``n3`` frequencies, no half-spectrum trick) or with an explicit DCT-II matrix: singular values
of every transformed slice, the truncation error of the t-SVD (Eckart–Young), the tensor
nuclear norm. Also: exact reconstruction and t-orthogonality (``Uᵀ * U = I`` with
``tensorfact.tubal.product``), tubal rank and TNN of planted tensors, the optimality conditions
of the TNN prox, TRPCA and completion of planted tensors, scale equivariance (hypothesis over
1e-30 … 1e30), jit/vmap/grad and argument errors.

Compiling is what costs time here, so the tests share a few shapes and jitted wrappers.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import tensorfact as tfa
from tensorfact import TSVDTensor
from tensorfact.tubal._common import check_rank
from _helpers import rel, x64


# ---------------------------------------------------------------------------------------------
# the NumPy reference and planted data
# ---------------------------------------------------------------------------------------------

def dct_matrix(n):
    k, j = np.arange(n)[:, None], np.arange(n)[None, :]
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * j + 1) * k / (2 * n))
    c[0] /= np.sqrt(2.0)
    return c


def orthogonal_matrix(n, seed=4):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q


def ref_slices(x, kind="fft"):
    """All ``n3`` transformed frontal slices, ``(n3, n1, n2)``, in float64."""
    x = np.asarray(x, np.float64)
    if isinstance(kind, str) and kind == "fft":
        return np.moveaxis(np.fft.fft(x, axis=2), 2, 0)
    mat = dct_matrix(x.shape[2]) if isinstance(kind, str) else np.asarray(kind, np.float64)
    return np.einsum("kj,abj->kab", mat, x)


def ref_sigma(x, kind="fft"):
    """Singular values of every transformed slice, ``(n3, min(n1, n2))``."""
    return np.stack([np.linalg.svd(s, compute_uv=False) for s in ref_slices(x, kind)])


def ref_weight(kind, n3):
    """``‖X‖²_F = weight · Σ_k ‖X̂_k‖²_F`` over all n3 slices (1/n3 for the unitary-up-to-scale
    DFT, 1 for an orthogonal transform)."""
    return 1.0 / n3 if isinstance(kind, str) and kind == "fft" else 1.0


def ref_tnn(x, kind="fft"):
    return ref_weight(kind, np.shape(x)[2]) * float(np.sum(ref_sigma(x, kind)))


def planted(seed, shape, rank, kind="fft", dtype=jnp.float32):
    """``A * B`` with Gaussian ``A (n1, r, n3)``, ``B (r, n2, n3)``: tubal rank ``r``, computed
    in NumPy (slice-wise in the full Fourier domain, or with the DCT matrix)."""
    n1, n2, n3 = shape
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((n1, rank, n3)), rng.standard_normal((rank, n2, n3))
    ch = np.einsum("kil,klj->kij", ref_slices(a, kind), ref_slices(b, kind))
    if kind == "fft":
        c = np.real(np.fft.ifft(np.moveaxis(ch, 0, 2), axis=2))
    else:
        c = np.einsum("kj,kab->abj", dct_matrix(n3), ch)
    return jnp.asarray(c, dtype)


def random_mask(seed, shape, p):
    return jnp.asarray(np.random.default_rng(seed).random(shape) < p)


def transform_arg(kind, n3):
    if kind == "matrix":
        return jnp.asarray(orthogonal_matrix(n3), jnp.float32), orthogonal_matrix(n3)
    return kind, kind


@functools.partial(jax.jit, static_argnames=("rank", "kind"))
def tsvd_parts(x, matrix, rank, kind):
    """The t-SVD and what the tests check on it, in one program (the matrix is traced)."""
    tr = matrix if kind == "matrix" else kind
    t = tfa.tubal.svd(x, rank, transform=tr)
    eye_u = tfa.tubal.product(tfa.tubal.transpose(t.u, transform=tr), t.u, transform=tr)
    eye_v = tfa.tubal.product(tfa.tubal.transpose(t.v, transform=tr), t.v, transform=tr)
    sigma = tfa.tubal.to_transform_domain(t.s[:, None, :], tr)[..., 0]   # (k, r)
    return t, t.to_dense(), t.norm(), eye_u, eye_v, sigma


# ---------------------------------------------------------------------------------------------
# t-SVD
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, shape", (("fft", (6, 4, 5)), ("dct", (4, 6, 4)),
                                         ("matrix", (6, 4, 5)), ("fft", (5, 3, 1))))
def test_tsvd_full_reconstructs_and_is_t_orthogonal(rng, kind, shape):
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    tr, ref_kind = transform_arg(kind, shape[2])
    t, dense, norm, eye_u, eye_v, sigma = tsvd_parts(x, tr if kind == "matrix" else None,
                                                     None, kind)
    m = min(shape[:2])
    assert isinstance(t, TSVDTensor) and t.rank == m and t.shape == shape
    assert t.u.shape == (shape[0], m, shape[2]) and t.s.shape == (m, shape[2])
    assert t.v.shape == (shape[1], m, shape[2])
    assert dense.dtype == jnp.float32 and t.u.dtype == jnp.float32
    assert rel(x, dense) < 1e-5
    assert float(norm) == pytest.approx(np.linalg.norm(np.asarray(x, np.float64)), rel=1e-5)
    eye = np.asarray(tfa.tubal.identity(m, shape[2], transform=tr), np.float64)
    np.testing.assert_allclose(np.asarray(eye_u), eye, atol=1e-5)
    np.testing.assert_allclose(np.asarray(eye_v), eye, atol=1e-5)
    # the transformed singular values are those of NumPy's slice-wise SVDs
    k = sigma.shape[0]
    np.testing.assert_allclose(np.real(np.asarray(sigma)), ref_sigma(x, ref_kind)[:k],
                               rtol=1e-5, atol=1e-5)
    assert np.max(np.abs(np.imag(np.asarray(sigma)))) < 1e-5


@pytest.mark.parametrize("kind", ("fft", "dct"))
def test_truncated_tsvd_error_is_discarded_spectrum(kind):
    """Eckart–Young for the tubal rank: ‖X − X_r‖² = w Σ_k Σ_{i>r} σ_{k,i}² over all n3 slices."""
    with x64():
        x = jnp.asarray(np.random.default_rng(1).standard_normal((7, 5, 6)))
        sigma = ref_sigma(x, kind)
        w = ref_weight(kind, 6)
        for r in (2, 4):
            t, dense, norm, *_ = tsvd_parts(x, None, r, kind)
            assert t.rank == r and t.u.dtype == jnp.float64
            err_sq = float(np.sum((np.asarray(x) - np.asarray(dense)) ** 2))
            assert err_sq == pytest.approx(w * float(np.sum(sigma[:, r:] ** 2)), rel=1e-10,
                                           abs=1e-20)
            kept = w * float(np.sum(sigma[:, :r] ** 2))
            assert float(norm) ** 2 == pytest.approx(kept, rel=1e-10)
        # locally optimal: moving the factors of the rank-4 truncation increases the error
        best = rel(x, dense)
        rng = np.random.default_rng(2)
        for _ in range(3):
            moved = TSVDTensor(t.u + 1e-3 * rng.standard_normal(t.u.shape), t.s,
                               t.v + 1e-3 * rng.standard_normal(t.v.shape), kind)
            assert rel(x, moved.to_dense()) > best


def test_tsvd_vmap_and_batched_type(rng):
    """svd takes one tensor; jax.vmap maps it, and the batched TSVDTensor's methods map over
    its leading axis."""
    x = jnp.asarray(rng.standard_normal((2, 5, 4, 6)), jnp.float32)
    with pytest.raises(ValueError, match=r"x must be a third-order tensor \(n1, n2, n3\), got "
                                         r"shape \(2, 5, 4, 6\); map over a batch with jax.vmap"):
        tfa.tubal.svd(x, 2)
    mapped = jax.jit(jax.vmap(lambda x: tfa.tubal.svd(x, 2)))(x)
    assert mapped.shape == (2, 5, 4, 6) and mapped.rank == 2
    norms = mapped.norm()
    dense = mapped.to_dense()
    assert norms.shape == (2,) and dense.shape == (2, 5, 4, 6)
    for i in range(2):
        single = tfa.tubal.svd(x[i], 2)
        assert rel(single.to_dense(), dense[i]) < 1e-5
        assert float(norms[i]) == pytest.approx(float(single.norm()), rel=1e-5)
    uh, sh, vh = mapped.transformed()
    assert uh.shape == (2, 4, 5, 2) and sh.shape == (2, 4, 2) and vh.shape == (2, 4, 4, 2)
    # vmap with a transform matrix broadcasts it with the factors; to_dense maps over it
    m = jnp.asarray(orthogonal_matrix(6), jnp.float32)
    mapped_m = jax.vmap(lambda x: tfa.tubal.svd(x, transform=m))(x)
    assert mapped_m.matrix.shape == (2, 6, 6)
    assert rel(x, mapped_m.to_dense()) < 1e-5
    np.testing.assert_allclose(np.asarray(mapped_m.norm()),
                               np.linalg.norm(np.asarray(x).reshape(2, -1), axis=1), rtol=1e-5)


def test_tsvd_grad(rng):
    with x64():
        x = jnp.asarray(rng.standard_normal((4, 3, 4)))
        check_grads(jax.jit(lambda x: tfa.tubal.svd(x, 2).to_dense()), (x,), order=1,
                    modes=("rev",))


# ---------------------------------------------------------------------------------------------
# TSVDTensor
# ---------------------------------------------------------------------------------------------

def test_tsvd_tensor_type(rng):
    u, s, v = (jnp.asarray(rng.standard_normal(shape), jnp.float32)
               for shape in ((5, 2, 4), (2, 4), (3, 2, 4)))
    t = TSVDTensor(u, s, v)
    assert t.shape == (5, 3, 4) and t.ndim == 3 and t.rank == 2 and t.dtype == jnp.float32
    assert t.n_params == 5 * 2 * 4 + 2 * 4 + 3 * 2 * 4 and t.transform.kind == "fft"
    # the dense form is U * S * Vᵀ with S the f-diagonal tensor of the tubes s
    big_s = jnp.zeros((2, 2, 4)).at[0, 0].set(s[0]).at[1, 1].set(s[1])
    ref = tfa.tubal.product(tfa.tubal.product(u, big_s), tfa.tubal.transpose(v))
    assert rel(ref, t.to_dense()) < 1e-5
    # norm() from the factors (not orthogonal here), for every kind of transform
    m = np.random.default_rng(5).standard_normal((4, 4)) + 3 * np.eye(4)
    for tr in ("fft", "dct", jnp.asarray(m, jnp.float32)):
        tt = TSVDTensor(u, s, v, tr)
        assert float(tt.norm()) == pytest.approx(float(jnp.linalg.norm(tt.to_dense())),
                                                 rel=1e-5)
    leaves, treedef = jax.tree_util.tree_flatten(t)
    assert len(leaves) == 3  # no matrix leaf for the FFT
    back = jax.tree_util.tree_unflatten(treedef, leaves)
    assert isinstance(back, TSVDTensor) and back.kind == "fft"
    uu, ss, vv = t
    assert uu is t.u and ss is t.s and vv is t.v
    with pytest.raises(AttributeError, match="immutable"):
        t.u = u
    assert "TSVDTensor(u=float32[5, 2, 4]" in repr(t)


def test_tsvd_tensor_errors(rng):
    u, s, v = jnp.ones((5, 2, 4)), jnp.ones((2, 4)), jnp.ones((3, 2, 4))
    with pytest.raises(ValueError, match=r"u must be \(\.\.\., n1, r, n3\), s \(\.\.\., r, n3\)"):
        TSVDTensor(u[0], s, v)
    with pytest.raises(ValueError, match=r"must agree on the batch, r and n3, got shapes "
                                         r"\(5, 2, 4\), \(3, 4\) and \(3, 2, 4\)"):
        TSVDTensor(u, jnp.ones((3, 4)), v)
    with pytest.raises(ValueError, match=r"agree on the batch"):
        TSVDTensor(u, s, jnp.ones((3, 2, 5)))
    with pytest.raises(TypeError, match=r"u must be a real floating array, got dtype int32"):
        TSVDTensor(jnp.ones((5, 2, 4), jnp.int32), s, v)
    with pytest.raises(ValueError, match=r"transform must be 'fft', 'dct'"):
        TSVDTensor(u, s, v, "wavelet")


# ---------------------------------------------------------------------------------------------
# tubal rank, TNN, prox
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ("fft", "dct"))
def test_tubal_rank_of_planted(kind):
    for r, shape in ((1, (6, 5, 4)), (5, (6, 5, 4))):
        assert tfa.tubal.rank(planted(r, shape, r, kind), transform=kind) == r
    x = planted(3, (8, 6, 5), 3, kind)
    assert tfa.tubal.rank(jnp.zeros((3, 4, 5)), transform=kind) == 0
    # an absolute tol above all but the largest singular values leaves rank 1
    sigma = ref_sigma(x, kind)
    assert tfa.tubal.rank(x, tol=float(np.max(sigma[:, 1])) * 1.0001, transform=kind) == 1
    jitted = jax.jit(lambda x: tfa.tubal.rank(x, transform=kind))(x)
    assert isinstance(jitted, jax.Array) and jitted.dtype == jnp.int32 and int(jitted) == 3
    batch = jax.vmap(lambda x: tfa.tubal.rank(x, transform=kind))(jnp.stack([x, 0 * x]))
    assert batch.shape == (2,) and list(np.asarray(batch)) == [3, 0]


def test_tubal_rank_of_a_single_frequency():
    """A tensor whose only nonzero frequency pair is k = ±1 has tubal rank of that slice."""
    rng = np.random.default_rng(6)
    a = rng.standard_normal((6, 2)) @ rng.standard_normal((2, 5))        # rank 2
    tube = np.cos(2 * np.pi * np.arange(8) / 8)                          # frequencies ±1 only
    x = a[:, :, None] * tube
    assert tfa.tubal.rank(jnp.asarray(x, jnp.float32)) == 2
    assert int(np.sum(ref_sigma(x)[0] > 1e-8)) == 0                      # the mean is zero


@pytest.mark.parametrize("kind", ("fft", "dct", "matrix"))
def test_tnn_matches_reference_and_closed_forms(rng, kind):
    x = jnp.asarray(rng.standard_normal((6, 4, 5)), jnp.float32)
    tr, ref_kind = transform_arg(kind, 5)
    assert float(tfa.tubal.tnn(x, transform=tr)) == pytest.approx(ref_tnn(x, ref_kind), rel=1e-5)
    # the identity: every transformed slice is I_3, so TNN = 3 for the FFT (n3 slices, weight
    # 1/n3) and 3 · n3 for an orthogonal transform (Lu, Peng & Wei 2019: weight 1/ℓ = 1)
    assert float(tfa.tubal.tnn(tfa.tubal.identity(3, 5, transform=tr), transform=tr)) == pytest.approx(
        3.0 * 5 * ref_weight(ref_kind, 5), rel=1e-5)


def test_tnn_closed_forms():
    rng = np.random.default_rng(7)
    m = rng.standard_normal((5, 4))
    nuc = float(np.sum(np.linalg.svd(m, compute_uv=False)))
    # only the first frontal slice nonzero: every Fourier slice is M, so TNN = ‖M‖_*
    x = np.zeros((5, 4, 6))
    x[:, :, 0] = m
    assert float(tfa.tubal.tnn(jnp.asarray(x, jnp.float32))) == pytest.approx(nuc, rel=1e-5)
    # constant tubes: only the zero frequency is nonzero, n3 M there, so TNN = ‖M‖_*
    assert float(tfa.tubal.tnn(jnp.asarray(m[:, :, None] * np.ones(6), jnp.float32))) == \
        pytest.approx(nuc, rel=1e-5)
    # scaling and batch
    batch = jax.vmap(tfa.tubal.tnn)(jnp.asarray(np.stack([x, 2 * x]), jnp.float32))
    np.testing.assert_allclose(np.asarray(batch), [nuc, 2 * nuc], rtol=1e-5)


def test_tnn_grad_is_u_times_v_transpose(rng):
    """∇‖X‖_TNN = U * Vᵀ (Lu et al. 2019) for a tensor with distinct nonzero singular values."""
    with x64():
        x = jnp.asarray(rng.standard_normal((5, 4, 6)))
        g = jax.jit(jax.grad(tfa.tubal.tnn))(x)
        t = tfa.tubal.svd(x)
        assert rel(tfa.tubal.product(t.u, tfa.tubal.transpose(t.v)), g) < 1e-10
        # independent: the slice-wise U_k V_kᴴ of NumPy, transformed back
        xh = ref_slices(x)
        uvh = np.stack([u @ vh for u, _, vh in (np.linalg.svd(s, full_matrices=False)
                                                 for s in xh)])
        ref = np.real(np.fft.ifft(np.moveaxis(uvh, 0, 2), axis=2))
        assert rel(ref, g) < 1e-10
        check_grads(jax.jit(tfa.tubal.tnn), (x,), order=1, modes=("rev",))


@pytest.mark.parametrize("kind", ("fft", "dct"))
def test_prox_optimality(rng, kind):
    """Z = prox_{τ TNN}(X) iff G = (X − Z)/τ ∈ ∂‖Z‖_TNN, i.e. ‖G‖ ≤ 1 (the spectral norm, the
    dual norm) and ⟨G, Z⟩ = ‖Z‖_TNN; also, Z beats random perturbations of itself."""
    with x64():
        x = jnp.asarray(rng.standard_normal((6, 5, 4)))
        tau = 1.5
        z = tfa.tubal.prox(x, tau, transform=kind)
        assert z.dtype == jnp.float64 and z.shape == x.shape
        sigma_x = ref_sigma(x, kind)
        assert 0 < np.sum(sigma_x > tau) < sigma_x.size  # some, not all, values are cut
        g = (x - z) / tau
        assert float(tfa.tubal.norm(g, "spectral", transform=kind)) <= 1 + 1e-10
        assert float(jnp.vdot(g, z)) == pytest.approx(float(tfa.tubal.tnn(z, transform=kind)),
                                                      rel=1e-10)

        def objective(y):
            return tau * ref_tnn(y, kind) + 0.5 * float(np.sum((np.asarray(y) - x) ** 2))

        best = objective(z)
        for eps in (1e-1, 1e-3):
            for _ in range(3):
                assert objective(z + eps * rng.standard_normal(x.shape)) > best
        # slice-wise soft-thresholding of the singular values, as in the reference
        kept = np.maximum(sigma_x - tau, 0)
        np.testing.assert_allclose(ref_sigma(z, kind), kept, atol=1e-10)
        assert rel(x, tfa.tubal.prox(x, 0.0, transform=kind)) < 1e-12


def test_prox_jit_vmap_grad(rng):
    x = jnp.asarray(rng.standard_normal((3, 5, 4, 6)), jnp.float32)
    eager = jnp.stack([tfa.tubal.prox(xi, 0.7) for xi in x])
    mapped = jax.jit(jax.vmap(lambda x, tau: tfa.tubal.prox(x, tau), in_axes=(0, None)))(x, 0.7)
    assert rel(eager, mapped) < 1e-5
    g = jax.jit(jax.grad(lambda tau: jnp.sum(tfa.tubal.prox(x[0], tau) ** 2)))(0.7)
    assert np.isfinite(float(g)) and float(g) < 0  # more shrinkage, smaller result


# ---------------------------------------------------------------------------------------------
# TRPCA and completion of planted tensors
# ---------------------------------------------------------------------------------------------

SHAPE = (30, 30, 8)


def corrupted(seed, rank=2, frac=0.1):
    low = planted(seed, SHAPE, rank)
    rng = np.random.default_rng(100 + seed)
    support = rng.random(SHAPE) < frac
    size = 10 * float(np.std(np.asarray(low)))
    sparse = jnp.asarray(np.where(support, size * rng.choice([-1.0, 1.0], SHAPE), 0), jnp.float32)
    return low, sparse


@pytest.fixture(scope="module")
def rpca_fit():
    low, sparse = corrupted(0)
    return low, sparse, tfa.tubal.rpca(low + sparse, return_info=True)


def test_rpca_recovers_planted(rpca_fit):
    low, sparse, ((l, s), info) = rpca_fit
    assert l.shape == SHAPE and l.dtype == jnp.float32
    assert rel(low, l) < 1e-4 and rel(sparse, s) < 1e-4
    assert tfa.tubal.rank(l, tol=1e-3 * float(tfa.tubal.norm(l, "spectral"))) == 2
    assert bool(info.converged) and float(info.rel_error) < 1e-6
    n = int(info.n_iter)
    assert 1 < n < 500 and np.all(np.isfinite(np.asarray(info.errors[:n])))
    assert np.all(np.isnan(np.asarray(info.errors[n:])))


def test_rpca_vmap_and_fixed_length():
    lows, sparses = zip(*(corrupted(seed, frac=0.05) for seed in (1, 2)))
    xs = jnp.stack([a + b for a, b in zip(lows, sparses)])
    fit = jax.jit(jax.vmap(lambda x: tfa.tubal.rpca(x, n_iter=60, tol=0)))
    ls, ss = fit(xs)
    for i in range(2):  # each problem solved as on its own
        assert rel(lows[i], ls[i]) < 1e-4 and rel(sparses[i], ss[i]) < 1e-4


@pytest.fixture(scope="module")
def completion_problem():
    x = planted(3, SHAPE, 2)
    mask = random_mask(33, SHAPE, 0.5)
    return x, mask, jnp.where(mask, x, jnp.nan)


def test_complete_tnn_recovers_planted(completion_problem):
    x, mask, data = completion_problem
    t, info = tfa.tubal.complete(data, mask, return_info=True)
    assert isinstance(t, TSVDTensor) and t.rank == 30 and t.shape == SHAPE
    assert rel(x, t.to_dense()) < 1e-4
    assert bool(info.converged) and float(info.rel_error) < 1e-5
    n = int(info.n_iter)
    assert 1 < n < 500 and np.all(np.isnan(np.asarray(info.errors[n:])))
    # the trailing singular tubes are (near) zero: the result has the planted tubal rank
    assert tfa.tubal.rank(t.to_dense(), tol=1e-4 * float(tfa.tubal.norm(x, "spectral"))) == 2


def test_complete_factor_recovers_planted(completion_problem):
    x, mask, data = completion_problem
    t, info = tfa.tubal.complete(data, mask, rank=2, method="factor", return_info=True)
    assert isinstance(t, TSVDTensor) and t.rank == 2
    assert rel(x, t.to_dense()) < 1e-4 and float(info.rel_error) < 1e-5
    # the result is a t-SVD: t-orthogonal factors, norm from the factors
    eye = tfa.tubal.product(tfa.tubal.transpose(t.u), t.u)
    np.testing.assert_allclose(np.asarray(eye), np.asarray(tfa.tubal.identity(2, 8)), atol=1e-4)
    assert float(t.norm()) == pytest.approx(float(jnp.linalg.norm(t.to_dense())), rel=1e-5)
    n = int(info.n_iter)
    errors = np.asarray(info.errors[:n])
    assert n < 500 and errors[-1] < 1e-5 and errors[-1] <= errors[0]


def test_complete_factor_dct():
    """The factor model under another transform: X = A *_L Bᵀ with the DCT."""
    x = planted(4, (10, 9, 4), 2, "dct")
    mask = random_mask(44, x.shape, 0.6)
    t = tfa.tubal.complete(x, mask, rank=2, method="factor", transform="dct", n_iter=30)
    assert t.kind == "dct" and rel(x, t.to_dense()) < 1e-4


def test_complete_jit_vmap():
    """vmap over problems, for the factor model from a random start and the TNN model
    truncated to ``rank``."""
    xs = jnp.stack([planted(s, (10, 9, 4), 1) for s in (5, 6)])
    masks = random_mask(55, xs.shape, 0.7)

    @jax.jit
    def fit(xs, masks, key):
        def one(x, m):
            f = tfa.tubal.complete(x, m, rank=1, method="factor", init="random", key=key,
                                   n_iter=30)
            t = tfa.tubal.complete(x, m, rank=1, n_iter=300)
            assert t.rank == 1
            return f.to_dense(), t.to_dense()
        return jax.vmap(one)(xs, masks)

    factor, tnn = fit(xs, masks, jax.random.key(1))
    for i in range(2):
        assert rel(xs[i], factor[i]) < 1e-4 and rel(xs[i], tnn[i]) < 1e-3


# ---------------------------------------------------------------------------------------------
# properties and errors
# ---------------------------------------------------------------------------------------------

@settings(max_examples=8, deadline=None)
@given(n1=st.integers(1, 5), n2=st.integers(1, 5), n3=st.integers(1, 5),
       seed=st.integers(0, 2**16))
def test_property_tsvd(n1, n2, n3, seed):
    """Over shapes (n3 = 1, odd, even; tall, wide): full reconstruction, and the t-SVD's
    transformed singular values are NumPy's slice-wise ones."""
    x = jnp.asarray(np.random.default_rng(seed).standard_normal((n1, n2, n3)), jnp.float32)
    t, dense, norm, eye_u, _, sigma = tsvd_parts(x, None, None, "fft")
    assert rel(x, dense) < 1e-5
    np.testing.assert_allclose(np.real(np.asarray(sigma)), ref_sigma(x)[: n3 // 2 + 1],
                               rtol=1e-5, atol=1e-5)
    eye = np.asarray(tfa.tubal.identity(min(n1, n2), n3))
    np.testing.assert_allclose(np.asarray(eye_u), eye, atol=1e-5)


def test_errors(rng):
    x = jnp.asarray(rng.standard_normal((6, 5, 4)), jnp.float32)
    mask = jnp.ones(x.shape, bool)
    with pytest.raises(ValueError, match=r"x must be a third-order tensor .* got shape \(6, 5\)"):
        tfa.tubal.svd(x[:, :, 0])
    with pytest.raises(ValueError, match=r"rank must be at most min\(n1, n2\) = 5 .* got 6"):
        tfa.tubal.svd(x, 6)
    with pytest.raises(ValueError, match=r"rank must be a positive integer, got 0"):
        tfa.tubal.svd(x, 0)
    with pytest.raises(ValueError, match=r"transform must be 'fft', 'dct' .* got 'haar'"):
        tfa.tubal.svd(x, transform="haar")
    with pytest.raises(ValueError, match=r"transform matrix must have shape \(4, 4\)"):
        tfa.tubal.svd(x, transform=np.eye(3))
    with pytest.raises(ValueError, match=r"transform matrix must be invertible"):
        tfa.tubal.svd(x, transform=np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"x must be a third-order tensor"):
        tfa.tubal.tnn(x[0])
    with pytest.raises(ValueError, match=r"must be orthogonal \(M Mᵀ = I\)"):
        tfa.tubal.tnn(x, transform=np.eye(4) * 2)
    with pytest.raises(ValueError, match=r"tau must be >= 0, got -1"):
        tfa.tubal.prox(x, -1)
    with pytest.raises(ValueError, match=r"tol must be >= 0"):
        tfa.tubal.rank(x, tol=-1.0)
    with pytest.raises(ValueError, match=r"x must be a third-order tensor \(n1, n2, n3\), got "
                                         r"shape \(2, 6, 5, 4\); map over a batch with jax.vmap"):
        tfa.tubal.rpca(jnp.stack([x, x]))
    with pytest.raises(ValueError, match=r"x has a mode of size zero"):
        tfa.tubal.svd(x[:0])
    for bad_mu in (0, np.inf, -1.0):
        with pytest.raises(ValueError, match=r"mu must be > 0"):
            tfa.tubal.rpca(x, mu=bad_mu)
        with pytest.raises(ValueError, match=r"mu must be > 0"):
            tfa.tubal.complete(x, mask, mu=bad_mu)
    for name in ("lam",):
        with pytest.raises(ValueError, match=rf"{name} must be >= 0"):
            tfa.tubal.rpca(x, **{name: np.inf})
    with pytest.raises(ValueError, match=r"l2 must be >= 0"):
        tfa.tubal.complete(x, mask, rank=2, method="factor", l2=np.inf)
    with pytest.raises(ValueError, match=r"tau must be >= 0"):
        tfa.tubal.prox(x, np.inf)
    with pytest.raises(ValueError, match=r"mask must hold only 0/1"):
        tfa.tubal.complete(x, jnp.full(x.shape, 0.5))
    with pytest.raises(ValueError, match=r"lam must be >= 0"):
        tfa.tubal.rpca(x, lam=-1.0)
    with pytest.raises(ValueError, match=r"n_iter must be a positive integer"):
        tfa.tubal.rpca(x, n_iter=0)
    with pytest.raises(ValueError, match=r"mask must have the shape of the data \(6, 5, 4\)"):
        tfa.tubal.complete(x, mask[0])
    with pytest.raises(ValueError, match=r"rank is required for method='factor'"):
        tfa.tubal.complete(x, mask, method="factor")
    with pytest.raises(ValueError, match=r"method must be one of \['factor', 'tnn'\]"):
        tfa.tubal.complete(x, mask, method="als")
    with pytest.raises(ValueError, match=r"mu is the ADMM penalty of method='tnn'"):
        tfa.tubal.complete(x, mask, rank=2, method="factor", mu=1.0)
    with pytest.raises(ValueError, match=r"l2 is the ridge of method='factor'"):
        tfa.tubal.complete(x, mask, l2=0.1)
    with pytest.raises(ValueError, match=r"key is required for init=\"random\""):
        tfa.tubal.complete(x, mask, rank=2, method="factor", init="random")
    with pytest.raises(ValueError, match=r"init must be one of"):
        tfa.tubal.complete(x, mask, rank=2, method="factor", init="hosvd")
    bad = x.at[0, 0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match=r"x contains 1 NaN or Inf"):
        tfa.tubal.svd(bad)
    with pytest.raises(ValueError, match=r"x \(observed entries\) contains 1 NaN"):
        tfa.tubal.complete(bad, mask, rank=1, method="factor", n_iter=1)
    # NaN where unobserved is fine
    assert check_rank(None, 6, 5, required=False) == 5


def test_rpca_grad_fixed_length(rng):
    """With ``tol=0`` the ADMM is a ``lax.scan`` that reverse-mode autodiff traverses."""
    with x64():
        x = jnp.asarray(rng.standard_normal((5, 4, 3)))
        d = jnp.asarray(rng.standard_normal(x.shape))

        def loss(x):
            low, sparse = tfa.tubal.rpca(x, n_iter=3, tol=0)
            return jnp.sum(low * jnp.cos(x)) + jnp.sum(sparse ** 2)

        value_and_grad = jax.jit(jax.value_and_grad(loss))
        _, g = value_and_grad(x)
        eps = 1e-6  # central difference along d against the directional derivative
        fd = (value_and_grad(x + eps * d)[0] - value_and_grad(x - eps * d)[0]) / (2 * eps)
        assert float(jnp.vdot(g, d)) == pytest.approx(float(fd), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# scale: every fit is scale-equivariant in float32 for data of 1e-30 … 1e30
# ---------------------------------------------------------------------------------------------

SCALES = (1e-30, 1e-20, 1e20, 1e30)
SCALE_SHAPE = (12, 10, 4)


@functools.cache
def scale_problem():
    low = planted(7, SCALE_SHAPE, 1)
    rng = np.random.default_rng(70)
    sparse = np.where(rng.random(SCALE_SHAPE) < 0.05, 5.0 * rng.choice([-1.0, 1.0], SCALE_SHAPE),
                      0.0)
    mask = random_mask(71, SCALE_SHAPE, 0.7)
    return low, jnp.asarray(sparse, jnp.float32), mask


def fits_at(c):
    """Every tubal fit of the data scaled by c (fixed iteration counts, so that the runs at
    different scales make the same number of steps)."""
    low, sparse, mask = scale_problem()
    x = low * np.float32(c)
    corrupted = (low + sparse) * np.float32(c)
    observed = jnp.where(mask, x, jnp.nan)
    return dict(
        svd=(tfa.tubal.svd(x, 1).to_dense(), None),
        rpca=(lambda ls, info: (jnp.stack(ls), info))(
            *tfa.tubal.rpca(corrupted, n_iter=60, tol=0, return_info=True)),
        tnn=(lambda t, info: (t.to_dense(), info))(
            *tfa.tubal.complete(observed, mask, n_iter=60, tol=0, return_info=True)),
        factor=(lambda t, info: (t.to_dense(), info))(
            *tfa.tubal.complete(observed, mask, rank=1, method="factor", n_iter=8, tol=0,
                                return_info=True)),
    )


@functools.cache
def reference_fits():
    return fits_at(1.0)


@settings(max_examples=4, deadline=None)
@given(c=st.sampled_from(SCALES))
def test_property_fits_are_scale_equivariant(c):
    """fit(c·x) = c·fit(x), with the same reported error, for svd, rpca and both completion
    methods (before the fix: zeros or NaN at these scales, and rel_error 0)."""
    ref = reference_fits()
    got = fits_at(c)
    for name, (value, info) in got.items():
        base, base_info = ref[name]
        value = np.asarray(value, np.float64) / c
        assert np.all(np.isfinite(value)), name
        assert rel(base, value) < 1e-4, (name, c, rel(base, value))
        if info is not None:
            assert float(info.rel_error) == pytest.approx(float(base_info.rel_error), rel=1e-3,
                                                          abs=1e-6), (name, c)
            assert 0 < float(base_info.rel_error) < 0.5, name   # a real fit, not a zero one
            np.testing.assert_allclose(np.asarray(info.errors), np.asarray(base_info.errors),
                                       rtol=1e-3, atol=1e-6)


@settings(max_examples=4, deadline=None)
@given(c=st.sampled_from(SCALES))
def test_property_tsvd_tensor_norm_is_scale_equivariant(c):
    """TSVDTensor.norm() from the factors at scales where the squares over/underflow, also for
    factors whose scales differ wildly (the norm itself representable)."""
    x = planted(8, (6, 5, 4), 5)
    ref = float(np.linalg.norm(np.asarray(x, np.float64)))
    t = tfa.tubal.svd(x * np.float32(c))
    assert float(t.norm()) == pytest.approx(ref * c, rel=1e-5)
    lopsided = TSVDTensor(t.u * np.float32(1e20), t.s / np.float32(c), t.v * np.float32(1e-20))
    assert float(lopsided.norm()) == pytest.approx(ref, rel=1e-4)


def test_gradients_are_finite_at_zero():
    """The prox (and so the ADMM steps) and the types' norms at zero: the SVD's derivative at
    repeated zero singular values and that of sqrt at 0 would give NaN where the math has
    finite gradients (the prox is locally zero; a norm is minimal)."""
    z = jnp.zeros((4, 3, 5))
    g = jax.jit(jax.grad(lambda x: jnp.sum(tfa.tubal.prox(x, 0.5))))(z)
    np.testing.assert_array_equal(np.asarray(g), 0)
    x = jnp.asarray(np.random.default_rng(9).standard_normal((4, 3, 5)), jnp.float32)
    # a slice thresholded away next to kept ones: still the derivative of the kept part
    g = jax.grad(lambda x: jnp.sum(tfa.tubal.prox(x, 1.0) ** 2))(x)
    assert np.all(np.isfinite(np.asarray(g))) and float(jnp.abs(g).max()) > 0
    for norm in (lambda f: TSVDTensor(f, jnp.ones((3, 5)), f).norm(),
                 lambda f: tfa.TubalFactors(f, f).norm(),
                 lambda f: tfa.TubalFactors(f).norm()):
        g = jax.grad(norm)(jnp.zeros((4, 3, 5)))
        np.testing.assert_array_equal(np.asarray(g), 0)
