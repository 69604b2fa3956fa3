"""Contract tests over a registry of every public fit.

Each entry of ``FITS`` says how to call one fit on a small problem; every contract below runs
over all of them (as Optax's ``alias_test`` runs over every optimizer and Lineax's tests over
every solver), so a new decomposition joins every contract by adding one line. What a family
does beyond the contracts (recovery, invariants, comparisons with TensorLy) stays in its own
test file.

Contracts: the result alone by default and ``(result, info)`` with ``return_info=True`` (info
fields per docs/glossary.md, ``rel_error`` the true error); ``jit`` equals eager; ``vmap``
equals a loop; deterministic; ``grad`` finite (fixed-length fits); NaN/Inf in every array
argument reported eagerly, naming it; scale equivariance over 1e-30…1e30 in float32 with the
same reported error; a zero-size mode is an error naming the data; bad keys name ``key``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tensorfact as tfa

KEY = jax.random.key(7)


def _planted_cp(shape, rank, seed=0, nonneg=False):
    x = tfa.random_cp(jax.random.key(seed), shape, rank=rank).to_dense()
    return jnp.abs(x) if nonneg else x


def _lowrank(m, n, r, seed=0, nonneg=False):
    k1, k2 = jax.random.split(jax.random.key(seed))
    a, b = jax.random.normal(k1, (m, r)), jax.random.normal(k2, (r, n))
    return (jnp.abs(a) @ jnp.abs(b)) if nonneg else a @ b


def _half_mask(shape, seed=1):
    return jax.random.bernoulli(jax.random.key(seed), 0.7, shape)


def _tubal_lowrank(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    a = jax.random.normal(k1, (6, 2, 4))
    b = jax.random.normal(k2, (5, 2, 4))
    return tfa.tubal.product(a, tfa.tubal.transpose(b))


def _sensing(seed=0):
    x = _lowrank(5, 4, 1, seed)
    a = tfa.gaussian_measurements((5, 4), 60, key=jax.random.key(seed + 1))
    return tfa.measure(a, x), a


def _tubal_sensing(seed=0):
    x = _tubal_lowrank(seed)
    a = tfa.tubal.gaussian_measurements(x.shape, 150, key=jax.random.key(seed + 1))
    return tfa.tubal.measure(a, x), a


@dataclasses.dataclass(frozen=True)
class Fit:
    """One public fit: ``call(*data, **kw)`` on the arrays ``make()`` returns.

    ``names`` names the array arguments (the first is the one that scales and that a zero-size
    mode is reported on); ``dense`` turns the result into an array to compare; ``grad`` says
    whether ``jax.grad`` through the fit is promised; ``iterative`` whether it takes
    ``return_info``; ``key`` is ``"required"``, ``"option"`` (only with ``key_kw``) or None;
    ``scale`` whether it is scale-equivariant (gradient-descent fits start from an absolute
    ``init_scale`` and are not); ``sized`` whether the data have modes that can be empty
    (TT-cross samples a function, whose parameters are the data here).
    """
    name: str
    call: Callable
    make: Callable
    names: tuple = ("x",)
    dense: Callable = lambda r: r.to_dense()
    grad: bool = True
    iterative: bool = True
    key: str | None = None
    key_kw: dict = dataclasses.field(default_factory=dict)
    scale: bool = True
    rtol: float = 1e-4
    sized: bool = True
    contracts: frozenset | None = None  # None: every contract; else only those named here


#: The contracts a further line of a family runs (its family's first line runs every contract).
#: Constrained CP's constraints and GCP's losses/optimisers differ only inside one jitted
#: ``_fit`` program: the wrapper's checks (NaN/Inf reported eagerly, zero-size modes), ``jit``
#: against eager (the public function only checks and calls that program) and determinism are
#: the family's shared code and run on its first line. What a constraint or loss changes runs
#: on every line: the program's batching rules (``vmap``), its derivative (``grad``), scale
#: equivariance, NaN/Inf under jit (a prox or a loss could turn NaN into an answer, or hang),
#: and keys (only the lines with a ``key``). A GCP line with another optimiser (Adam, the
#: stochastic fit) builds its info in another loop, and so runs the info contract too.
VARIANT = frozenset({"vmap", "grad", "scale", "nonfinite_jit", "key"})
OPTIMISER_VARIANT = VARIANT | {"info"}


def _parafac2_slices(seed=0, nonneg=False):
    """A planted PARAFAC2 model as a 3-way array (5 slices of 6 × 7, rank 2)."""
    ka, kb, kc, kp = jax.random.split(jax.random.key(seed), 4)
    a = jax.random.uniform(ka, (5, 2)) + 0.5
    c = jax.random.uniform(kc, (7, 2)) if nonneg else jax.random.normal(kc, (7, 2))
    p = jnp.linalg.qr(jax.random.normal(kp, (5, 6, 2)))[0]
    return (jnp.einsum("kir,rs,ks,js->kij", p, jax.random.normal(kb, (2, 2)), a, c),)


def _x3():
    return (_planted_cp((5, 6, 7), 2),)


def _m():
    return (_lowrank(8, 7, 2),)


FITS = [
    Fit("cp", lambda x, **kw: tfa.cp(x, 2, n_iter=15, tol=0, **kw), _x3),
    Fit("cp_nonneg", lambda x, **kw: tfa.cp(x, 2, n_iter=15, tol=0, nonneg=True, **kw),
        lambda: (_planted_cp((5, 6, 7), 2, nonneg=True),)),
    Fit("cp_mask", lambda x, m, **kw: tfa.cp(x, 2, n_iter=15, tol=0, mask=m, **kw),
        lambda: (_planted_cp((5, 6, 7), 2), _half_mask((5, 6, 7))), names=("x", "mask")),
    Fit("cp_random", lambda x, **kw: tfa.cp(x, 2, n_iter=15, tol=0, init="random", **kw), _x3,
        key="option"),
    Fit("constrained_cp_nonneg",
        lambda x, **kw: tfa.constrained_cp(x, 2, constraints="nonneg", n_iter=10, tol=0,
                                           inner_iter=5, **kw),
        lambda: (_planted_cp((5, 6, 7), 2, nonneg=True),)),
    Fit("constrained_cp_simplex",
        lambda x, **kw: tfa.constrained_cp(x, 2, constraints=[None, "simplex", "nonneg"],
                                           n_iter=10, tol=0, inner_iter=5, **kw),
        lambda: (_planted_cp((5, 6, 7), 2, nonneg=True),), contracts=VARIANT),
    # penalties are not scale-free (the problem changes with the data's scale): the rescaled
    # strengths that make the fit equivariant are tested in tests/test_constrained_cp.py
    Fit("constrained_cp_l1",
        lambda x, **kw: tfa.constrained_cp(x, 2, constraints=tfa.constraints.L1(0.01),
                                           n_iter=10, tol=0, inner_iter=5, **kw), _x3,
        scale=False, contracts=VARIANT),
    Fit("constrained_cp_box_smooth",
        lambda x, **kw: tfa.constrained_cp(
            x, 2, constraints=[None, tfa.constraints.Box(-0.6, 0.6), tfa.constraints.Smooth(0.1)],
            n_iter=10, tol=0, inner_iter=5, **kw), _x3, scale=False, contracts=VARIANT),
    # Unimodal's pool-adjacent-violators merges run in a lax.while_loop: no reverse-mode grad
    Fit("constrained_cp_unimodal",
        lambda x, **kw: tfa.constrained_cp(x, 2, constraints=[None, "nonneg", "unimodal"],
                                           n_iter=10, tol=0, inner_iter=5, **kw),
        lambda: (_planted_cp((5, 6, 7), 2, nonneg=True),), grad=False, contracts=VARIANT),
    Fit("constrained_cp_random",
        lambda x, **kw: tfa.constrained_cp(x, 2, constraints="nonneg", init="random",
                                           n_iter=10, tol=0, inner_iter=5, **kw),
        lambda: (_planted_cp((5, 6, 7), 2, nonneg=True),), key="option", contracts=VARIANT),
    # a pair (x_cp, y_cp); scaling x alone changes the balance of the coupled problem (joint
    # scaling is tested in tests/test_cmtf.py)
    Fit("cmtf", lambda x, y, **kw: tfa.cmtf(x, y, 2, n_iter=15, tol=0, **kw),
        lambda: (_planted_cp((5, 6, 7), 2), _lowrank(5, 4, 2, seed=3)), names=("x", "y"),
        dense=lambda r: jnp.concatenate([r[0].to_dense().ravel(), r[1].to_dense().ravel()]),
        scale=False),
    # PARAFAC2 registered on its 3-way array form (a list of ragged slices is a Python list of
    # arrays of different shapes: it cannot be stacked for vmap)
    Fit("parafac2", lambda s, **kw: tfa.parafac2(s, 2, n_iter=15, tol=0, **kw), _parafac2_slices,
        names=("slices",)),
    Fit("parafac2_mask",
        lambda s, m, **kw: tfa.parafac2(s, 2, n_iter=15, tol=0, mask=m, **kw),
        lambda: (_parafac2_slices()[0], _half_mask((5, 6, 7))), names=("slices", "mask")),
    Fit("tucker", lambda x, **kw: tfa.tucker(x, (2, 3, 2), n_iter=10, tol=0, **kw), _x3),
    Fit("tucker_hosvd", lambda x, **kw: tfa.tucker(x, (2, 3, 2), method="hosvd", **kw), _x3),
    Fit("tucker_st_hosvd", lambda x, **kw: tfa.tucker(x, (2, 3, 2), method="st_hosvd", **kw),
        _x3),
    Fit("tucker_nonneg", lambda x, **kw: tfa.tucker(x, 2, n_iter=10, tol=0, nonneg=True, **kw),
        lambda: (_planted_cp((5, 6, 7), 2, nonneg=True),), grad=False),
    Fit("tucker_mask", lambda x, m, **kw: tfa.tucker(x, 2, n_iter=10, tol=0, mask=m, **kw),
        lambda: (_planted_cp((5, 6, 7), 2), _half_mask((5, 6, 7))), names=("x", "mask")),
    Fit("tt", lambda x, **kw: tfa.tt(x, [1, 2, 2, 1], **kw), _x3, iterative=False),
    Fit("tt_matrix", lambda w, **kw: tfa.tt_matrix(w, (2, 4), (3, 2), 3, **kw),
        lambda: (_lowrank(8, 6, 2),), names=("w",), iterative=False),
    Fit("tensor_ring", lambda x, **kw: tfa.tensor_ring(x, 2, **kw), _x3, iterative=False),
    Fit("tensor_ring_als",
        lambda x, **kw: tfa.tensor_ring(x, 2, method="als", n_iter=10, tol=0, **kw), _x3),
    Fit("tt_cross",
        lambda p, **kw: tfa.tt_cross(lambda i: p[0] / (1.0 + jnp.sum(i, axis=-1)), (6, 5, 4),
                                     2, n_iter=3, **{"key": KEY, **kw}),
        lambda: (jnp.asarray([1.5]),), names=("fn",), key="required", grad=False, sized=False),
    Fit("svd", lambda m, **kw: tfa.svd(m, 2, **kw), _m, names=("m",), iterative=False),
    Fit("svd_randomized", lambda m, **kw: tfa.svd(m, 2, method="randomized", **kw), _m,
        names=("m",), iterative=False, key="option"),
    Fit("nmf", lambda m, **kw: tfa.nmf(m, 2, n_iter=20, tol=0, **kw),
        lambda: (_lowrank(8, 7, 2, nonneg=True),), names=("m",)),
    Fit("nmf_mu", lambda m, **kw: tfa.nmf(m, 2, method="mu", n_iter=20, tol=0, **kw),
        lambda: (_lowrank(8, 7, 2, nonneg=True),), names=("m",)),
    Fit("cur", lambda m, **kw: tfa.cur(m, 2, **kw), _m, names=("m",), iterative=False,
        grad=False, dense=lambda r: r.to_dense()),
    Fit("cur_leverage", lambda m, **kw: tfa.cur(m, 2, method="leverage", **kw), _m,
        names=("m",), iterative=False, grad=False, key="option"),
    Fit("complete", lambda m, mask, **kw: tfa.complete(m, mask, 2, n_iter=15, tol=0, **kw),
        lambda: (_lowrank(8, 7, 2), _half_mask((8, 7))), names=("m", "mask")),
    Fit("complete_soft_impute",
        lambda m, mask, **kw: tfa.complete(m, mask, 2, method="soft_impute", n_iter=15, tol=0,
                                           **kw),
        lambda: (_lowrank(8, 7, 2), _half_mask((8, 7))), names=("m", "mask")),
    Fit("rpca", lambda m, **kw: tfa.rpca(m, n_iter=30, tol=0, **kw), _m, names=("m",),
        dense=lambda r: r[0] + r[1]),
    Fit("factorize_gd",
        lambda y, a, **kw: tfa.factorize_gd(y, a, 2, n_iter=30, **{"key": KEY, **kw}),
        _sensing, names=("y", "a"), key="required", scale=False),
    # gcp: the L-BFGS line search is a while_loop (no reverse-mode derivative); Adam is a scan.
    # Poisson's projected L-BFGS converges slowly and its float32 path after c·x (c not a power
    # of two) differs by rounding by ~2e-3 mid-way: exact for powers of two and checked to 1e-2
    # in tests/test_gcp.py instead. Adam's sign-like first steps (g/√v) turn those rounding
    # differences into ~5% differences after 20 steps: the Adam fits are equivariant to powers
    # of two exactly (tests/test_gcp.py), not to 1e-3 for any c.
    Fit("gcp", lambda x, **kw: tfa.gcp(x, 2, n_iter=60, tol=0, **kw), _x3, grad=False),
    Fit("gcp_poisson", lambda x, **kw: tfa.gcp(x, 2, loss="poisson", n_iter=20, tol=0, **kw),
        lambda: (_planted_cp((5, 6, 7), 2, nonneg=True),), grad=False, scale=False,
        contracts=VARIANT),
    Fit("gcp_adam_mask", lambda x, m, **kw: tfa.gcp(x, 2, optimizer="adam", mask=m, n_iter=20,
                                                    tol=0, **kw),
        lambda: (_planted_cp((5, 6, 7), 2), _half_mask((5, 6, 7))), names=("x", "mask"),
        scale=False, contracts=OPTIMISER_VARIANT),
    Fit("gcp_stochastic",
        lambda x, **kw: tfa.gcp(x, 2, loss="poisson", n_samples=40, n_iter=20, tol=0,
                                **{"key": KEY, **kw}),
        lambda: (_planted_cp((5, 6, 7), 2, nonneg=True),), key="required", scale=False,
        contracts=OPTIMISER_VARIANT),
    # cp_apr: multiplicative updates in while loops (KKT tests): no reverse-mode derivative
    Fit("cp_apr", lambda x, **kw: tfa.cp_apr(x, 2, n_iter=30, **kw),
        lambda: (_planted_cp((5, 6, 7), 2, nonneg=True),), grad=False),
    Fit("tubal_svd", lambda x, **kw: tfa.tubal.svd(x, rank=2, **kw),
        lambda: (_tubal_lowrank(),), iterative=False),
    Fit("tubal_rpca", lambda x, **kw: tfa.tubal.rpca(x, n_iter=30, tol=0, **kw),
        lambda: (_tubal_lowrank(),), dense=lambda r: r[0] + r[1]),
    Fit("tubal_complete",
        lambda x, m, **kw: tfa.tubal.complete(x, m, n_iter=30, tol=0, **kw),
        lambda: (_tubal_lowrank(), _half_mask((6, 5, 4))), names=("x", "mask")),
    Fit("tubal_complete_factor",
        lambda x, m, **kw: tfa.tubal.complete(x, m, rank=2, method="factor", n_iter=15, tol=0,
                                              **kw),
        lambda: (_tubal_lowrank(), _half_mask((6, 5, 4))), names=("x", "mask")),
    Fit("tubal_factorize_gd",
        lambda y, a, **kw: tfa.tubal.factorize_gd(y, a, 2, n_iter=30, **{"key": KEY, **kw}),
        _tubal_sensing, names=("y", "a"), key="required", scale=False),
]



def _runs(fit, contract):
    return fit.contracts is None or contract in fit.contracts


def _over(contract, predicate=lambda f: True):
    """Parametrizes a test over the fits the contract applies to (never a skip)."""
    chosen = [f for f in FITS if predicate(f) and _runs(f, contract)]
    return pytest.mark.parametrize("fit", chosen, ids=[f.name for f in chosen])


def _dense(fit, result):
    return np.asarray(fit.dense(result), dtype=np.float64)


def _key_kw(fit):
    return {"key": KEY} if fit.key == "option" else {}


def _run(fit, data, **kw):
    return fit.call(*data, **{**_key_kw(fit), **kw})


_JITTED = {}


def _jitted(fit):
    """``dense(fit(*data))`` under ``jax.jit``, one per fit: the contracts that compile the fit
    under jit (jit against eager, NaN and Inf under jit) share its compiled program, where a new
    lambda per test would trace and compile the whole fit again each time."""
    if fit.name not in _JITTED:
        _JITTED[fit.name] = jax.jit(lambda *d: fit.dense(_run(fit, d)))
    return _JITTED[fit.name]


#: Public names of tensorfact.decomposition and tensorfact.tubal that are not fits (types,
#: info types, measurement helpers, operations on a result, the algebra).
NOT_FITS = {"FitInfo", "measure", "gaussian_measurements", "tt_round", "loss", "product",
            "transpose", "identity", "inverse", "norm", "rank", "tnn", "prox", "effective_rank",
            "singular_tube_norms", "to_transform_domain", "from_transform_domain",
            "frequency_weights", "facewise", "Transform", "TSVDTensor", "TubalFactors"}


def _registered(name):
    return any(f.name == name or f.name.startswith(name + "_") for f in FITS)


def test_registry_covers_every_public_fit():
    """Every public decomposition joins the registry, and so every contract."""
    for name in tfa.decomposition.__all__:
        if name not in NOT_FITS and not name[0].isupper():
            assert _registered(name), f"tensorfact.{name} is not in the contract registry"
    for name in tfa.tubal.__all__:
        if name not in NOT_FITS and not name[0].isupper():
            assert _registered("tubal_" + name), f"tensorfact.tubal.{name} is not registered"


@_over("info")
def test_result_alone_by_default_and_info_on_request(fit):
    data = fit.make()
    result = _run(fit, data)
    assert not isinstance(result, tuple) or fit.name.endswith("rpca") or fit.name == "cmtf"
    if not fit.iterative:
        return
    result, info = _run(fit, data, return_info=True)
    assert info._fields[:4] == ("n_iter", "errors", "rel_error", "converged")
    assert np.isfinite(float(info.rel_error))


@_over("jit")
def test_jit_matches_eager(fit):
    data = fit.make()
    eager = _dense(fit, _run(fit, data))
    jitted = np.asarray(_jitted(fit)(*data), dtype=np.float64)
    np.testing.assert_allclose(jitted, eager, rtol=fit.rtol, atol=fit.rtol * np.abs(eager).max())


@_over("vmap")
def test_vmap_matches_a_loop(fit):
    a, b = fit.make(), tuple(2 * d if d.dtype != bool else d for d in fit.make())
    stacked = tuple(jnp.stack([p, q]) for p, q in zip(a, b))
    batched = jax.vmap(lambda *d: fit.dense(_run(fit, d)))(*stacked)
    for i, data in enumerate((a, b)):  # the loop runs the jitted fit (compiled once per fit)
        single = np.asarray(_jitted(fit)(*data), dtype=np.float64)
        np.testing.assert_allclose(np.asarray(batched[i]), single, rtol=1e-3,
                                   atol=1e-3 * np.abs(single).max())


@_over("deterministic")
def test_deterministic(fit):
    data = fit.make()
    np.testing.assert_array_equal(_dense(fit, _run(fit, data)), _dense(fit, _run(fit, data)))


@_over("grad", lambda f: f.grad)
def test_grad_is_finite(fit):
    data = fit.make()

    def loss(x):
        return jnp.sum(fit.dense(_run(fit, (x,) + tuple(data[1:]))) ** 2)

    # under jit: one program for the forward and reverse passes (eager jax.grad compiles the
    # linearized fit and its transpose separately, about twice the compile time)
    g = jax.jit(jax.grad(loss))(data[0])
    assert np.all(np.isfinite(np.asarray(g)))


@_over("nonfinite")
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_is_reported_naming_the_argument(fit, bad):
    data = fit.make()
    for i, name in enumerate(fit.names):
        if name == "mask":
            continue
        arrays = list(data)
        arrays[i] = arrays[i].at[(0,) * arrays[i].ndim].set(bad)
        if "mask" in fit.names:  # a NaN on an observed entry
            m = fit.names.index("mask")
            arrays[m] = arrays[m].at[(0,) * arrays[m].ndim].set(True)
        with pytest.raises(ValueError, match=name):
            _run(fit, tuple(arrays))


def _run_with_info(fit, data):
    """``(dense result, info or None)`` of one run (one run gives both where there is info)."""
    if fit.iterative:
        out, info = _run(fit, data, return_info=True)
        return _dense(fit, out), info
    return _dense(fit, _run(fit, data)), None


@pytest.mark.parametrize("exponent", [-30, 30])  # the ends of the range: squares under- and
def test_scale_equivariant_with_the_true_error(exponent):  # overflow in float32
    c = np.float32(10.0 ** exponent)
    for fit in FITS:
        if not (fit.scale and _runs(fit, "scale")):
            continue
        data = fit.make()
        scaled = (data[0] * c,) + tuple(data[1:])
        base, info = _run_with_info(fit, data)
        out, info_c = _run_with_info(fit, scaled)
        assert np.all(np.isfinite(out)), fit.name
        np.testing.assert_allclose(out / c, base, rtol=1e-3, atol=1e-3 * np.abs(base).max(),
                                   err_msg=fit.name)
        if fit.iterative:
            np.testing.assert_allclose(float(info_c.rel_error), float(info.rel_error),
                                       rtol=1e-2, atol=1e-5, err_msg=fit.name)


@_over("zero_size", lambda f: f.sized)
def test_zero_size_mode_is_an_error_naming_the_data(fit):
    empty = tuple(d[:0] for d in fit.make())
    with pytest.raises(ValueError, match="|".join(n for n in fit.names if n != "mask")):
        _run(fit, empty)


@pytest.mark.parametrize("bad_key", [3, jnp.ones((2,), jnp.float32), "seed",
                                     jax.random.split(jax.random.key(0), 2)],
                         ids=["int", "float-array", "str", "batch"])
@_over("key", lambda f: f.key is not None)
def test_bad_keys_name_key(fit, bad_key):
    with pytest.raises((TypeError, ValueError), match="key"):
        fit.call(*fit.make(), key=bad_key)


@_over("nonfinite_jit", lambda f: f.sized)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_under_jit_gives_nan_not_an_answer(fit, bad):
    """Under jit nothing can be raised: a NaN or Inf in the data must show in the result (and
    never hang LAPACK), so bad input never passes for a fit."""
    data = list(fit.make())
    data[0] = data[0].at[(0,) * data[0].ndim].set(bad)
    if "mask" in fit.names:
        m = fit.names.index("mask")
        data[m] = data[m].at[(0,) * data[m].ndim].set(True)
    out = np.asarray(_jitted(fit)(*data))
    assert np.isnan(out).all(), f"{fit.name}: {np.isfinite(out).mean():.0%} of the result finite"
