"""constrained_cp (AO-ADMM) and tensorfact.constraints: each prox against a NumPy float64
reference, TensorLy 0.10's ``constrained_parafac`` on the same data (our fit no worse), the
constraints holding exactly on the result, the scaling rule, and errors for bad constraints."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorly as tl
from tensorly.decomposition import constrained_parafac
from tensorly.decomposition._constrained_cp import initialize_constrained_parafac

import tensorfact as tfa
from tensorfact.constraints import L1, Box, Nonneg, Simplex, Smooth, Unimodal

RNG = np.random.default_rng(0)


def _planted_nonneg(shape=(12, 13, 14), rank=3, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    fs = [rng.random((s, rank)) for s in shape]
    x = np.einsum("ir,jr,kr->ijk", *fs)
    return x + noise * rng.random(shape)


def _rel(x, approx):
    return np.linalg.norm(x - approx) / np.linalg.norm(x)


# ---- the proximal operators against float64 NumPy ---------------------------------------

def _np_simplex(v, total=1.0):
    """Duchi et al. (2008), Fig. 1, column by column, in float64."""
    out = np.empty_like(v)
    for j in range(v.shape[1]):
        u = np.sort(v[:, j])[::-1]
        css = np.cumsum(u)
        k = np.arange(1, len(u) + 1)
        rho = np.nonzero(u - (css - total) / k > 0)[0][-1]
        theta = (css[rho] - total) / (rho + 1)
        out[:, j] = np.maximum(v[:, j] - theta, 0)
    return out


def test_simplex_prox_is_the_euclidean_projection():
    v = RNG.normal(size=(9, 5)) * 2
    p = np.asarray(Simplex().prox(jnp.asarray(v, jnp.float32), 1.0), np.float64)
    np.testing.assert_allclose(p, _np_simplex(v), atol=1e-6)
    np.testing.assert_allclose(p.sum(axis=0), 1, atol=1e-6)
    assert (p >= 0).all()
    # projection optimality: <v − p, z − p> ≤ 0 for every z in the simplex (random vertices
    # and interior points), an independent check of the sort algorithm
    z = RNG.dirichlet(np.ones(9), size=200).T
    for j in range(5):
        assert np.max((v[:, j] - p[:, j]) @ (z - p[:, j:j + 1])) < 1e-5


def test_nonneg_l1_box_prox_match_numpy():
    v = RNG.normal(size=(7, 3))
    vj = jnp.asarray(v, jnp.float32)
    np.testing.assert_array_equal(np.asarray(Nonneg().prox(vj, 2.0)), np.maximum(v, 0)
                                  .astype(np.float32))
    np.testing.assert_allclose(np.asarray(L1(0.6).prox(vj, 2.0)),
                               np.sign(v) * np.maximum(np.abs(v) - 0.3, 0), atol=1e-6)
    np.testing.assert_allclose(np.asarray(Box(-0.5, 0.25).prox(vj, 2.0)),
                               np.clip(v, -0.5, 0.25), atol=1e-7)


def test_smooth_prox_solves_the_penalised_least_squares():
    n, strength, rho = 11, 3.0, 1.5
    v = RNG.normal(size=(n, 4))
    d = np.zeros((n - 2, n))
    for i in range(n - 2):
        d[i, i:i + 3] = (1, -2, 1)
    expected = np.linalg.solve(np.eye(n) + (strength / rho) * d.T @ d, v)
    got = np.asarray(Smooth(strength).prox(jnp.asarray(v, jnp.float32), rho), np.float64)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # too short for a second difference: the identity
    np.testing.assert_allclose(np.asarray(Smooth(1.0).prox(jnp.ones((2, 3)), 1.0)), 1.0)


def _np_isotonic(y):
    """Pool-adjacent-violators in float64 (increasing fit)."""
    blocks = []
    for v in y:
        blocks.append([v, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    return np.concatenate([[t / c] * int(c) for t, c in blocks])


def _np_unimodal(y):
    """Exhaustive search over the peak: increasing fit before, decreasing after (float64)."""
    best = None
    for m in range(len(y)):
        tail = -_np_isotonic(-y[m + 1:]) if m + 1 < len(y) else np.zeros(0)
        fit = np.concatenate([_np_isotonic(y[:m + 1]), tail])
        err = np.sum((fit - y) ** 2)
        if best is None or err < best[0]:
            best = (err, fit)
    return best[1]


def test_unimodal_prox_is_the_least_squares_projection():
    v = RNG.normal(size=(15, 6))
    v[:, 0] = np.sin(np.linspace(0, 3, 15)) + 0.1 * RNG.normal(size=15)
    got = np.asarray(Unimodal().prox(jnp.asarray(v, jnp.float32), 1.0), np.float64)
    expected = np.stack([_np_unimodal(v[:, j]) for j in range(6)], axis=1)
    np.testing.assert_allclose(got, expected, atol=1e-5)


# ---- the fit against TensorLy and the constraints on its result ----------------------------

X = _planted_nonneg()
XJ = jnp.asarray(X, jnp.float32)


@pytest.mark.parametrize("ours, theirs", [
    ("nonneg", dict(non_negative=True)),
    ([None, "simplex", Nonneg()], dict(non_negative={2: True}, simplex={1: 1.0})),
], ids=["nonneg", "simplex"])
def test_matches_tensorly_from_its_start_and_constraints_hold(ours, theirs):
    """From TensorLy's own start the two AO-ADMM runs are the same algorithm (ρ = trace(G)/R,
    10 inner steps, warm duals): the fits agree; from our default start (the SVD start matched
    to the data's norm) the fit is no worse than TensorLy's at the same iteration count."""
    _, start = initialize_constrained_parafac(X, 3, init="svd", **theirs)
    start = tfa.CPTensor(jnp.ones(3), [jnp.asarray(a, jnp.float32) for a in start])
    ref = constrained_parafac(X, 3, n_iter_max=100, tol_outer=0, init="svd", **theirs)
    ref_err = _rel(X, tl.cp_to_tensor(ref))
    same, info = tfa.constrained_cp(XJ, 3, constraints=ours, init=start, n_iter=100, tol=0,
                                    return_info=True)
    same_err = _rel(X, np.asarray(same.to_dense(), np.float64))
    assert same_err <= ref_err * (1 + 2e-3), (same_err, ref_err)
    np.testing.assert_allclose(float(info.rel_error), same_err, rtol=1e-3)
    fit = tfa.constrained_cp(XJ, 3, constraints=ours, n_iter=100, tol=0)
    ours_err = _rel(X, np.asarray(fit.to_dense(), np.float64))
    assert ours_err <= ref_err * 1.01 + 1e-4, (ours_err, ref_err)
    np.testing.assert_array_equal(np.asarray(fit.weights), 1.0)
    if ours == "nonneg":
        assert all(bool((a >= 0).all()) for a in fit.factors)  # exact, not approximately
    else:
        s = np.asarray(fit.factors[1], np.float64)
        assert (s >= 0).all()
        np.testing.assert_allclose(s.sum(axis=0), 1.0, atol=1e-5)
        assert bool((fit.factors[2] >= 0).all())


def test_unimodal_fit_holds_and_is_no_worse_than_tensorly():
    t = np.linspace(-2, 2, 14)
    rng = np.random.default_rng(0)
    fs = [rng.random((12, 3)), rng.random((13, 3)),
          np.exp(-(t[:, None] - np.array([-1.0, 0.0, 1.0])) ** 2)]
    x = np.einsum("ir,jr,kr->ijk", *fs) + 0.05 * rng.random((12, 13, 14))
    ref = constrained_parafac(x, 3, n_iter_max=60, tol_outer=0, init="svd",
                              unimodality={2: True}, non_negative={1: True})
    fit = tfa.constrained_cp(jnp.asarray(x, jnp.float32), 3,
                             constraints=[None, "nonneg", "unimodal"], n_iter=60, tol=0)
    assert _rel(x, np.asarray(fit.to_dense(), np.float64)) <= _rel(x, tl.cp_to_tensor(ref))
    for col in np.asarray(fit.factors[2], np.float64).T:  # rises to one peak, then falls
        d = np.sign(np.diff(col)[np.abs(np.diff(col)) > 1e-6])
        assert np.sum(np.diff(d) != 0) <= 1 and (len(d) == 0 or d[0] > 0 or (d < 0).all())


def test_box_holds_exactly_and_l1_lowers_its_own_objective():
    fit = tfa.constrained_cp(XJ, 3, constraints=[None, Box(0.0, 0.8), Box(0.0, 0.8)],
                             n_iter=60, tol=0)
    for a in fit.factors[1:]:
        assert float(a.min()) >= 0.0 and a.max() <= np.float32(0.8)
    assert _rel(X, np.asarray(fit.to_dense(), np.float64)) < 0.05  # nonneg CP: 0.0256

    # the L1 fit beats the unpenalised CP fit on the penalised objective it minimises, even
    # with the CP fit's components rescaled to their least L1 norm (N (Π_n ‖a_nr‖₁)^(1/N))
    lam = 2.0

    def objective(t, balance=False):
        dense = np.asarray(t.to_dense(), np.float64)
        factors = [np.asarray(a, np.float64) for a in t.factors]
        factors[0] = factors[0] * np.asarray(t.weights, np.float64)
        l1 = np.stack([np.abs(a).sum(axis=0) for a in factors])  # N × R
        penalty = (3 * np.prod(l1, axis=0) ** (1 / 3)).sum() if balance else l1.sum()
        return 0.5 * np.sum((X - dense) ** 2) + lam * penalty

    sparse = tfa.constrained_cp(XJ, 3, constraints=L1(lam), n_iter=60, tol=0)
    plain = tfa.cp(XJ, 3, n_iter=60, tol=0)
    assert objective(sparse) < objective(plain, balance=True)
    assert sum(int((np.asarray(a) == 0).sum()) for a in sparse.factors) > 0  # exact zeros


def test_scaling_rule_for_penalties_and_bounds():
    """Penalties and bounds are stated on x as given: scaling x by c is matched by L1 strengths
    ×c on the carrier (mode 0 here) and ×c² elsewhere, and carrier Box bounds ×c."""
    x = XJ[:6, :7, :8]
    lam = 0.05
    base = tfa.constrained_cp(x, 2, constraints=[L1(lam), L1(lam), Box(0.0, 0.4)], n_iter=20,
                              tol=0)
    for c in (1e-12, 1e12):
        scaled = tfa.constrained_cp(x * c, 2, constraints=[L1(lam * c), L1(lam * c * c),
                                                           Box(0.0, 0.4)], n_iter=20, tol=0)
        ref = np.asarray(base.to_dense(), np.float64) * c
        np.testing.assert_allclose(np.asarray(scaled.to_dense(), np.float64), ref,
                                   rtol=2e-3, atol=2e-3 * np.abs(ref).max())
    # a carrier Box (mode 0: no unconstrained or cone mode) scales with the data
    box = tfa.constrained_cp(x, 2, constraints=Box(0.0, 2.0), n_iter=20, tol=0)
    big = tfa.constrained_cp(x * 1e20, 2, constraints=[Box(0.0, 2e20), Box(0.0, 2.0),
                                                       Box(0.0, 2.0)], n_iter=20, tol=0)
    assert big.factors[0].max() <= np.float32(2e20)
    np.testing.assert_allclose(np.asarray(big.to_dense(), np.float64) / 1e20,
                               np.asarray(box.to_dense(), np.float64), rtol=2e-3, atol=1e-4)


def test_given_init_and_info():
    start = tfa.constrained_cp(XJ, 3, constraints="nonneg", n_iter=5, tol=0)
    fit, info = tfa.constrained_cp(XJ, 3, constraints="nonneg", init=start, n_iter=40,
                                   return_info=True)
    assert isinstance(info, tfa.CPInfo)
    errs = np.asarray(info.errors)[: int(info.n_iter)]
    assert errs[-1] <= errs[0] + 1e-6
    assert float(info.rel_error) < 0.1


@pytest.mark.parametrize("constraints, match", [
    ("positive", "unknown string 'positive'"),
    (["nonneg", "nonneg"], "one per mode"),
    (3, "Constraint"),
])
def test_bad_constraints(constraints, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tfa.constrained_cp(XJ, 2, constraints=constraints)


def test_bad_constraint_parameters():
    with pytest.raises(ValueError, match="L1 strength"):
        L1(-1.0)
    with pytest.raises(ValueError, match="Smooth strength"):
        Smooth(float("nan"))
    with pytest.raises(ValueError, match="lower <= upper"):
        Box(1.0, 0.0)
    with pytest.raises(ValueError, match="inner_iter"):
        tfa.constrained_cp(XJ, 2, constraints="nonneg", inner_iter=0)
    with pytest.raises(ValueError, match="key"):
        tfa.constrained_cp(XJ, 2, constraints="nonneg", init="random")


def test_constraints_namespace_is_a_module():
    import tensorfact.constraints as module
    assert tfa.constraints is module
    assert hash(L1(0.5)) == hash(L1(0.5)) and L1(0.5) == L1(0.5)  # static jit arguments
    assert jax.tree_util.tree_leaves(Nonneg()) == [Nonneg()]
