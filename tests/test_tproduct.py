"""Tests of the t-product algebra (``tensorfact._tproduct``, public as ``tensorfact.tubal``) against an independent NumPy float64
implementation written here: the block-circulant matrix ``bcirc(A)`` for the FFT product (no
FFT at all), and the explicit transform matrices (orthonormal DCT-II, a random invertible
matrix) applied along the tubes for the other transforms.

Covers ``product``, ``transpose`` (with ``(A * B)ᵀ = Bᵀ * Aᵀ``), ``identity``, ``inverse``,
``norm`` (Frobenius, and spectral = ``‖bcirc(A)‖₂``), the transform-domain helpers, vmap over
batches (and the errors for a batch passed directly), odd/even ``n3`` and ``n3 = 1``,
``jit``/``grad``, singular inverses, scale, and the argument errors.
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
from tensorfact import _tproduct as tproduct
from _helpers import rel, x64



# ---------------------------------------------------------------------------------------------
# the NumPy reference
# ---------------------------------------------------------------------------------------------

def dct_matrix(n):
    """Orthonormal DCT-II: ``C[k, j] = α_k cos(π (2j + 1) k / (2n))``."""
    k, j = np.arange(n)[:, None], np.arange(n)[None, :]
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * j + 1) * k / (2 * n))
    c[0] /= np.sqrt(2.0)
    return c


def invertible_matrix(n, seed=3):
    """A random, well-conditioned, non-orthogonal ``n × n`` matrix."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, n)) + 3.0 * np.eye(n)


def transform_arg(name, n3):
    """The ``transform=`` argument for tensorfact and the matrix for the reference."""
    if name == "fft":
        return "fft", None
    if name == "dct":
        return "dct", dct_matrix(n3)
    m = invertible_matrix(n3)
    return jnp.asarray(m, jnp.float32), m


def bcirc(a):
    """Block-circulant matrix of ``a`` (n1, n2, n3): block (i, j) is the frontal slice
    ``a[:, :, (i − j) mod n3]`` (Kilmer & Martin 2011)."""
    n1, n2, n3 = a.shape
    out = np.zeros((n1 * n3, n2 * n3))
    for i in range(n3):
        for j in range(n3):
            out[i * n1:(i + 1) * n1, j * n2:(j + 1) * n2] = a[:, :, (i - j) % n3]
    return out


def unfold_slices(b):
    """Frontal slices stacked vertically: ``(n2 · n3) × n4``."""
    return np.concatenate([b[:, :, k] for k in range(b.shape[2])], axis=0)


def fold_slices(m, n1, n3):
    return np.stack([m[k * n1:(k + 1) * n1] for k in range(n3)], axis=2)


def ref_tprod(a, b, mat=None):
    """``A * B``: ``fold(bcirc(A) · unfold(B))`` (FFT), else ``M⁻¹ ((M A) △ (M B))``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if mat is None:
        return fold_slices(bcirc(a) @ unfold_slices(b), a.shape[0], a.shape[2])
    ah = np.einsum("kj,abj->abk", mat, a)
    bh = np.einsum("kj,abj->abk", mat, b)
    ch = np.einsum("ilk,ljk->ijk", ah, bh)
    return np.einsum("jk,abk->abj", np.linalg.inv(mat), ch)


def ref_ttranspose(a, mat=None):
    """FFT: transpose every slice and reverse slices 2 … n3; otherwise the slice-wise
    transpose (the transform of a real matrix commutes with it)."""
    a = np.asarray(a, np.float64)
    at = np.transpose(a, (1, 0, 2))
    if mat is None:
        at = at[:, :, (-np.arange(a.shape[2])) % a.shape[2]]
    return at


def ref_identity(n, n3, mat=None):
    """The tensor whose transformed slices are all ``I``: ``e_1`` tubes (FFT) or ``M⁻¹ 1``."""
    tube = np.zeros(n3)
    if mat is None:
        tube[0] = 1.0
    else:
        tube = np.linalg.solve(mat, np.ones(n3))
    return np.eye(n)[:, :, None] * tube


def ref_spectral(a, mat=None):
    """``‖bcirc(A)‖₂`` (FFT), else the largest singular value over the transformed slices."""
    a = np.asarray(a, np.float64)
    if mat is None:
        return np.linalg.norm(bcirc(a), 2)
    ah = np.einsum("kj,abj->abk", mat, a)
    return max(np.linalg.norm(ah[:, :, k], 2) for k in range(a.shape[2]))


def randn(rng, *shape):
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


# ---------------------------------------------------------------------------------------------
# the reference itself (so that a wrong reference cannot pass a wrong implementation)
# ---------------------------------------------------------------------------------------------

def test_reference_fft_is_circular_convolution_of_tubes(rng):
    a, b = rng.standard_normal((2, 3, 5)), rng.standard_normal((3, 2, 5))
    c = ref_tprod(a, b)
    i, j, t = 1, 0, 3
    expected = sum(a[i, l, (t - s) % 5] * b[l, j, s] for l in range(3) for s in range(5))
    assert c[i, j, t] == pytest.approx(expected)
    np.testing.assert_allclose(dct_matrix(6) @ dct_matrix(6).T, np.eye(6), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# product, transpose, identity, inverse, norm against the reference
# ---------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames="kind")
def all_ops(a, b, sq, matrix, kind):
    """Every operation on one set of inputs, in one compiled program (compiling is what costs
    time in these small tests). ``matrix`` is traced: no invertibility check is made on it."""
    tr = matrix if kind == "matrix" else kind
    c = tfa.tubal.product(a, b, transform=tr)
    at = tfa.tubal.transpose(a, transform=tr)
    return dict(
        c=c, at=at,
        ct=tfa.tubal.transpose(c, transform=tr),
        bt_at=tfa.tubal.product(tfa.tubal.transpose(b, transform=tr), at, transform=tr),
        att=tfa.tubal.transpose(at, transform=tr),
        eye=tfa.tubal.identity(sq.shape[0], a.shape[-1], transform=tr),
        inv=tfa.tubal.inverse(sq, transform=tr),
        fro=tfa.tubal.norm(a),
        spectral=tfa.tubal.norm(a, "spectral", transform=tr),
    )


@pytest.mark.parametrize("name, n3", (("fft", 1), ("fft", 4), ("fft", 5), ("dct", 1), ("dct", 4),
                                      ("matrix", 5)))
def test_ops_match_reference(rng, name, n3):
    transform, mat = transform_arg(name, n3)
    a, b, sq = randn(rng, 4, 3, n3), randn(rng, 3, 2, n3), randn(rng, 3, 3, n3)
    out = all_ops(a, b, sq, transform if name == "matrix" else None, name)
    # product
    assert out["c"].shape == (4, 2, n3) and out["c"].dtype == jnp.float32
    assert rel(ref_tprod(a, b, mat), out["c"]) < 1e-5
    # transpose, exactly; (A * B)ᵀ = Bᵀ * Aᵀ in tensorfact and in the reference; involution
    np.testing.assert_array_equal(np.asarray(out["at"]), ref_ttranspose(a, mat).astype(np.float32))
    assert rel(out["ct"], out["bt_at"]) < 1e-5
    assert rel(ref_tprod(ref_ttranspose(b, mat), ref_ttranspose(a, mat), mat), out["ct"]) < 1e-5
    np.testing.assert_array_equal(np.asarray(out["att"]), np.asarray(a))
    # identity: I * A = A * I = A in the reference product
    ref_eye = ref_identity(3, n3, mat)
    np.testing.assert_allclose(np.asarray(out["eye"]), ref_eye, atol=1e-6)
    np.testing.assert_allclose(ref_tprod(out["eye"], sq, mat), np.asarray(sq), atol=1e-5)
    np.testing.assert_allclose(ref_tprod(sq, out["eye"], mat), np.asarray(sq), atol=1e-5)
    # inverse: A * A⁻¹ = A⁻¹ * A = I in the reference product
    np.testing.assert_allclose(ref_tprod(sq, out["inv"], mat), ref_eye, atol=1e-4)
    np.testing.assert_allclose(ref_tprod(out["inv"], sq, mat), ref_eye, atol=1e-4)
    # norm
    assert float(out["fro"]) == pytest.approx(np.linalg.norm(np.asarray(a, np.float64)), rel=1e-6)
    assert float(out["spectral"]) == pytest.approx(ref_spectral(a, mat), rel=1e-5)


def test_eager_calls_and_matrix_check(rng):
    """The eager path (with the invertibility check of a concrete matrix) gives the same."""
    a, b = randn(rng, 4, 3, 5), randn(rng, 3, 2, 5)
    m = invertible_matrix(5)
    assert rel(ref_tprod(a, b, m), tfa.tubal.product(a, b, transform=m)) < 1e-5
    assert rel(ref_tprod(a, b), tfa.tubal.product(a, b)) < 1e-5
    t = tproduct.resolve_transform(m, 5)
    assert t.kind == "matrix" and tproduct.resolve_transform(t, 5).kind == "matrix"


def test_identity_fft_is_identity_in_first_slice():
    eye = np.asarray(tfa.tubal.identity(4, 6, dtype=jnp.float32))
    np.testing.assert_allclose(eye[:, :, 0], np.eye(4), atol=1e-7)
    np.testing.assert_allclose(eye[:, :, 1:], 0.0, atol=1e-7)


def test_spectral_norm_is_operator_norm(rng):
    """``‖A‖ = max ‖A * B‖_F / ‖B‖_F`` over B, attained at the leading right singular vector of
    ``bcirc(A)`` folded into a lateral slice (``n4 = 1``)."""
    a = randn(rng, 5, 4, 6)
    spectral = float(tfa.tubal.norm(a, "spectral"))
    bs = randn(rng, 4, 3, 6)  # three lateral slices at once
    for j in range(3):
        b = np.asarray(bs[:, j:j + 1], np.float64)
        assert np.linalg.norm(ref_tprod(a, b)) <= spectral * np.linalg.norm(b) * (1 + 1e-5)
    _, _, vt = np.linalg.svd(bcirc(np.asarray(a, np.float64)))
    b = fold_slices(vt[0][:, None], 4, 6)
    assert np.linalg.norm(ref_tprod(a, b)) == pytest.approx(spectral, rel=1e-5)


@functools.partial(jax.jit, static_argnames=("n3", "kind"))
def roundtrip(x, n3, kind):
    hat = tproduct.to_transform_domain(x, kind)
    w = tproduct.frequency_weights(n3, kind)
    sq = jnp.sum(w * jnp.sum(jnp.abs(hat) ** 2, axis=(-2, -1)))
    return hat, sq, tproduct.from_transform_domain(hat, n3, kind)


@pytest.mark.parametrize("kind", ("fft", "dct"))
def test_frequency_weights_give_parseval(rng, kind):
    for n3 in (1, 2, 5):
        x = randn(rng, 3, 2, n3)
        hat, sq, back = roundtrip(x, n3, kind)
        assert hat.shape == ((n3 // 2 + 1) if kind == "fft" else n3, 3, 2)
        mat = np.fft.fft(np.eye(n3))[: n3 // 2 + 1] if kind == "fft" else dct_matrix(n3)
        np.testing.assert_allclose(np.asarray(hat),
                                   np.einsum("kj,abj->kab", mat, np.asarray(x, np.float64)),
                                   atol=1e-5)
        assert float(sq) == pytest.approx(float(np.sum(np.asarray(x, np.float64) ** 2)),
                                          rel=1e-5)
        assert rel(x, back) < 1e-6


def test_facewise(rng):
    a, b = randn(rng, 4, 3, 5), randn(rng, 3, 2, 5)
    ah, bh = tproduct.to_transform_domain(a), tproduct.to_transform_domain(b)
    c = tproduct.from_transform_domain(tproduct.facewise(ah, bh), 5)
    assert rel(ref_tprod(a, b), c) < 1e-5


# ---------------------------------------------------------------------------------------------
# batches, float64, transformations
# ---------------------------------------------------------------------------------------------

def test_vmap_and_batch_errors(rng):
    """One tensor per call: jax.vmap maps over a batch and agrees with the reference; a batch
    passed directly (matching or not) is refused with an error naming the argument."""
    a, b, sq = randn(rng, 2, 4, 3, 5), randn(rng, 3, 2, 5), randn(rng, 2, 3, 3, 5)

    @jax.jit
    def mapped(a, b, sq):
        return jax.vmap(lambda a, sq: (tfa.tubal.product(a, b), tfa.tubal.transpose(a),
                                       tfa.tubal.inverse(sq), tfa.tubal.norm(a, "spectral"),
                                       tfa.tubal.norm(a)))(a, sq)

    c, at, inv, spectral, fro = mapped(a, b, sq)
    assert c.shape == (2, 4, 2, 5) and spectral.shape == (2,) and fro.shape == (2,)
    for i in range(2):
        assert rel(ref_tprod(a[i], b), c[i]) < 1e-5
        np.testing.assert_array_equal(np.asarray(at[i]), ref_ttranspose(a[i]).astype(np.float32))
        np.testing.assert_allclose(ref_tprod(sq[i], inv[i]), ref_identity(3, 5), atol=1e-4)
        assert float(spectral[i]) == pytest.approx(ref_spectral(a[i]), rel=1e-5)
        assert float(fro[i]) == pytest.approx(np.linalg.norm(np.asarray(a[i], np.float64)),
                                              rel=1e-6)
    # vmap over both operands, and over the second only
    both = jax.vmap(tfa.tubal.product)(a, jnp.stack([b, 2 * b]))
    assert rel(ref_tprod(a[1], 2 * b), both[1]) < 1e-5
    second = jax.vmap(tfa.tubal.product, in_axes=(None, 0))(a[0], jnp.stack([b, b]))
    assert rel(ref_tprod(a[0], b), second[1]) < 1e-5
    batch = r"a must be a third-order tensor \(n1, n2, n3\), got shape \(2, 4, 3, 5\); map " \
            r"over a batch with jax.vmap"
    with pytest.raises(ValueError, match=batch):
        tfa.tubal.product(a, b)
    # mismatched batch shapes: the first argument with a batch is named, with its shape
    with pytest.raises(ValueError, match=r"b must be a third-order tensor .* \(3, 3, 2, 5\)"):
        tfa.tubal.product(a[0], jnp.stack([b] * 3))
    for fn in (tfa.tubal.transpose, tfa.tubal.inverse, tfa.tubal.norm):
        with pytest.raises(ValueError, match=r"map over a batch with jax.vmap"):
            fn(sq)
    with pytest.raises(ValueError, match=r"x must be a third-order tensor"):
        tproduct.to_transform_domain(a)
    with pytest.raises(ValueError, match=r"a_hat \(k, n1, n2\) and b_hat \(k, n2, n4\) must "
                                         r"agree on k and n2"):
        tproduct.facewise(jnp.ones((3, 4, 2)), jnp.ones((2, 2, 5)))


def test_empty_modes(rng):
    """Empty n1/n2 give empty results of the right shape; tubes of length zero are refused."""
    a, b = jnp.ones((0, 3, 4)), randn(rng, 3, 2, 4)
    assert tfa.tubal.product(a, b).shape == (0, 2, 4)
    assert tfa.tubal.product(jnp.ones((2, 0, 4)), jnp.ones((0, 3, 4))).shape == (2, 3, 4)
    assert float(jnp.abs(tfa.tubal.product(jnp.ones((2, 0, 4)), jnp.ones((0, 3, 4)))).max()) == 0
    assert tfa.tubal.transpose(a).shape == (3, 0, 4)
    assert float(tfa.tubal.norm(a)) == 0 and float(tfa.tubal.norm(a, "spectral")) == 0
    assert tfa.tubal.inverse(jnp.ones((0, 0, 4))).shape == (0, 0, 4)
    with pytest.raises(ValueError, match=r"a has tubes of length zero \(shape \(2, 3, 0\)\)"):
        tfa.tubal.product(jnp.ones((2, 3, 0)), jnp.ones((3, 3, 0)))


def test_inverse_of_a_singular_tensor_is_an_error(rng):
    """A singular transformed slice (exactly, or to working precision) is reported eagerly,
    naming a; under jit the values are unknown and the result is returned as is."""
    # I − e₁e₁ᵀ ⊗ (constant tube 1/n3): every transformed slice is I but the zero frequency,
    # diag(0, 1, 1)
    e11 = np.zeros((3, 3, 1))
    e11[0, 0] = 1.0
    ones = jnp.asarray(ref_identity(3, 4) - e11 * np.full(4, 0.25), jnp.float32)
    with pytest.raises(ValueError, match=r"a is singular to working precision: transformed "
                                         r"frontal slice\(s\) \[0\] \(of 3\)"):
        tfa.tubal.inverse(ones)
    np.testing.assert_allclose(  # the other slices are fine: a + e₁e₁ᵀ ⊗ 1/n3 = I inverts
        np.asarray(tfa.tubal.inverse(ones + e11 * 0.25)), ref_identity(3, 4), atol=1e-6)
    # numerically singular (rank 2 from a product), where LU leaves a rounding-size pivot
    low = tfa.tubal.product(randn(rng, 3, 2, 4), randn(rng, 2, 3, 4))
    with pytest.raises(ValueError, match=r"a is singular"):
        tfa.tubal.inverse(low)
    with pytest.raises(ValueError, match=r"a contains 1 NaN or Inf"):
        tfa.tubal.inverse(jnp.eye(3)[:, :, None].repeat(4, 2).at[0, 0, 0].set(jnp.inf))
    # under jit nothing is raised (documented): the singular slice shows as non-finite values
    out = jax.jit(tfa.tubal.inverse)(ones)
    assert not np.all(np.isfinite(np.asarray(out))) or float(jnp.abs(out).max()) > 1e6
    # a well-conditioned tensor of tiny or huge scale is not singular
    for c in (1e-30, 1e30):
        sq = c * (randn(rng, 3, 3, 4) + 3 * jnp.asarray(ref_identity(3, 4), jnp.float32))
        inv = tfa.tubal.inverse(sq)
        np.testing.assert_allclose(ref_tprod(np.asarray(sq, np.float64) / c,
                                             np.asarray(inv, np.float64) * c),
                                   ref_identity(3, 4), atol=1e-4)


@settings(max_examples=6, deadline=None)
@given(exponent=st.sampled_from((-30, -20, 20, 30)), kind=st.sampled_from(("fft", "dct")))
def test_norms_do_not_overflow(exponent, kind):
    """‖c·A‖ = |c|·‖A‖ (Frobenius and spectral) for c = 10^±20, 10^±30 in float32, where the
    squares of the entries under- or overflow."""
    rng = np.random.default_rng(exponent + 100)
    a = randn(rng, 4, 3, 5)
    c = np.float32(10.0 ** exponent)
    for ord_ in ("fro", "spectral"):
        ref = float(tfa.tubal.norm(a, ord_, transform=kind))
        got = float(tfa.tubal.norm(a * c, ord_, transform=kind))
        assert got == pytest.approx(ref * float(c), rel=1e-5), (ord_, exponent)


def test_float64(rng):
    with x64():
        a = jnp.asarray(rng.standard_normal((4, 3, 6)))
        b = jnp.asarray(rng.standard_normal((3, 5, 6)))
        sq = jnp.asarray(rng.standard_normal((3, 3, 6)))
        for kind, mat in (("fft", None), ("dct", dct_matrix(6))):
            c, inv = jax.jit(lambda a, b, sq: (tfa.tubal.product(a, b, transform=kind),
                                               tfa.tubal.inverse(sq, transform=kind)))(a, b, sq)
            assert c.dtype == jnp.float64 and inv.dtype == jnp.float64
            assert rel(ref_tprod(a, b, mat), c) < 1e-13
            np.testing.assert_allclose(ref_tprod(sq, inv, mat), ref_identity(3, 6, mat),
                                       atol=1e-10)
        assert tfa.tubal.identity(2, 3, dtype=jnp.float64).dtype == jnp.float64


@pytest.mark.parametrize("kind", ("fft", "dct"))
def test_grad_product(rng, kind):
    with x64():
        a = jnp.asarray(rng.standard_normal((3, 2, 4)))
        b = jnp.asarray(rng.standard_normal((2, 3, 4)))
        prod = jax.jit(lambda a, b: tfa.tubal.product(a, b, transform=kind))
        check_grads(prod, (a, b), order=1, modes=("fwd", "rev"))
        # the adjoint of B ↦ A * B is C ↦ Aᵀ * C: ⟨A * B, C⟩ = ⟨B, Aᵀ * C⟩
        c = jnp.asarray(rng.standard_normal((3, 3, 4)))
        grad_b = jax.jit(jax.grad(lambda b: jnp.vdot(prod(a, b), c)))(b)
        mat = None if kind == "fft" else dct_matrix(4)
        assert rel(ref_tprod(ref_ttranspose(a, mat), c, mat), grad_b) < 1e-12


def test_grad_inverse_and_norm(rng):
    with x64():
        a = jnp.asarray(rng.standard_normal((3, 3, 5)) + 3 * ref_identity(3, 5))
        check_grads(jax.jit(tfa.tubal.inverse), (a,), order=1, modes=("rev",))
        check_grads(jax.jit(lambda x: tfa.tubal.norm(x, "spectral")), (a,), order=1, modes=("rev",))


@functools.partial(jax.jit, static_argnames="kind")
def prop_ops(a, b, kind):
    return (tfa.tubal.product(a, b, transform=kind), tfa.tubal.transpose(a, transform=kind),
            tfa.tubal.norm(a, "spectral", transform=kind))


@settings(max_examples=10, deadline=None)
@given(n1=st.integers(1, 4), n2=st.integers(1, 4), n4=st.integers(1, 3), n3=st.integers(1, 6),
       kind=st.sampled_from(("fft", "dct")), seed=st.integers(0, 2**16))
def test_property_product_and_transpose(n1, n2, n4, n3, kind, seed):
    rng = np.random.default_rng(seed)
    a, b = randn(rng, n1, n2, n3), randn(rng, n2, n4, n3)
    mat = None if kind == "fft" else dct_matrix(n3)
    c, at, spectral = prop_ops(a, b, kind)
    ref = ref_tprod(a, b, mat)
    scale = np.linalg.norm(np.asarray(a, np.float64)) * np.linalg.norm(np.asarray(b, np.float64))
    assert np.linalg.norm(ref - np.asarray(c, np.float64)) <= 1e-5 * scale
    np.testing.assert_array_equal(np.asarray(at), ref_ttranspose(a, mat).astype(np.float32))
    assert float(spectral) == pytest.approx(ref_spectral(a, mat), rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------

def test_errors(rng):
    a, b = randn(rng, 4, 3, 5), randn(rng, 3, 2, 5)
    with pytest.raises(ValueError, match=r"a must be a third-order tensor .* got shape \(4, 3\)"):
        tfa.tubal.product(a[:, :, 0], b)
    with pytest.raises(ValueError, match=r"b must be a third-order tensor"):
        tfa.tubal.product(a, b[0])
    with pytest.raises(ValueError, match=r"inner sizes must match .* \(4, 3, 5\) and \(2, 2, 5\)"):
        tfa.tubal.product(a, b[:2])
    with pytest.raises(ValueError, match=r"tubes of the same length .* \(4, 3, 5\) and \(3, 2, 4\)"):
        tfa.tubal.product(a, b[:, :, :4])
    with pytest.raises(ValueError, match=r"transform must be 'fft', 'dct' or .* got 'dft'"):
        tfa.tubal.product(a, b, transform="dft")
    with pytest.raises(ValueError, match=r"transform must be 'fft', 'dct' or .* got list"):
        tfa.tubal.transpose(a, transform=[1, 2])
    with pytest.raises(ValueError, match=r"transform matrix must have shape \(5, 5\) .* got \(4, 4\)"):
        tfa.tubal.product(a, b, transform=np.eye(4))
    with pytest.raises(ValueError, match=r"transform matrix must be invertible"):
        tfa.tubal.product(a, b, transform=np.ones((5, 5)))
    with pytest.raises(ValueError, match=r"a must have square frontal slices .* \(4, 3, 5\)"):
        tfa.tubal.inverse(a)
    with pytest.raises(ValueError, match=r"ord must be one of \['fro', 'spectral'\], got 'nuc'"):
        tfa.tubal.norm(a, "nuc")
    with pytest.raises(ValueError, match=r"n must be a positive integer, got 0"):
        tfa.tubal.identity(0, 3)
    with pytest.raises(ValueError, match=r"hat must hold n3 // 2 \+ 1 = 4 frequencies .* got 3"):
        tproduct.from_transform_domain(tproduct.to_transform_domain(a), 6)
    with pytest.raises(TypeError, match=r"a must be real, got dtype complex64"):
        tfa.tubal.product(a.astype(jnp.complex64), b)
