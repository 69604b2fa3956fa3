"""Kernels: the Pallas code (interpret mode on CPU) against its XLA reference and NumPy."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from tensorfact.kernels import SPD_INVERSE_MAX_SIZE, spd_inverse


def _spd(rng, n, batch=(), cond=1e2):
    q, _ = np.linalg.qr(rng.standard_normal(batch + (n, n)))
    eig = np.geomspace(1.0, 1.0 / cond, n)
    return (q * eig[..., None, :]) @ np.swapaxes(q, -1, -2)


# interpret mode unrolls every pivot (64 of them take ~25 s) and the kernel's code is the same at
# every size, so the Pallas path stops at 31 and 32, which cover the padding to a power of two
_SIZES = [1, 3, 16, 31, 32]


@pytest.mark.parametrize("impl, n", [(i, n) for i in ("pallas", "xla", "auto") for n in _SIZES]
                         + [("xla", 64), ("auto", 64)])
def test_spd_inverse_matches_numpy(impl, n):
    v = _spd(np.random.default_rng(n), n)
    inverse = jax.jit(functools.partial(spd_inverse, impl=impl))
    inv = np.asarray(inverse(jnp.asarray(v, jnp.float32)), np.float64)
    expected = np.linalg.inv(v)
    assert np.linalg.norm(inv - expected) / np.linalg.norm(expected) < 1e-4
    assert np.allclose(inv, inv.T)


_PALLAS = jax.jit(functools.partial(spd_inverse, impl="pallas"))
_XLA = jax.jit(functools.partial(spd_inverse, impl="xla"))


@settings(max_examples=8, deadline=None)
@given(n=st.sampled_from([2, 5, 13]), seed=st.integers(0, 2**16), log_cond=st.floats(0, 3))
def test_pallas_kernel_agrees_with_xla_reference(n, seed, log_cond):
    v = jnp.asarray(_spd(np.random.default_rng(seed), n, cond=10**log_cond), jnp.float32)
    pallas = _PALLAS(v)
    xla = _XLA(v)
    scale = float(jnp.max(jnp.abs(xla)))
    assert float(jnp.max(jnp.abs(pallas - xla))) <= 1e-4 * scale


@pytest.mark.parametrize("impl", ["pallas", "xla"])
def test_batched_and_vmapped(impl):
    v = jnp.asarray(_spd(np.random.default_rng(0), 8, batch=(3,)), jnp.float32)
    expected = np.linalg.inv(np.asarray(v, np.float64))
    for inv in (spd_inverse(v, impl=impl), jax.vmap(lambda m: spd_inverse(m, impl=impl))(v)):
        assert inv.shape == (3, 8, 8)
        np.testing.assert_allclose(np.asarray(inv), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", ["pallas", "xla"])
def test_gradient(impl):
    with jax.enable_x64(True):
        v = jnp.asarray(_spd(np.random.default_rng(1), 4, cond=10.0))
        # jitted so the interpret-mode kernel is traced once per derivative, not per evaluation
        check_grads(jax.jit(lambda m: spd_inverse((m + m.T) / 2, impl=impl)), (v,), order=1,
                    modes=["fwd", "rev"], atol=1e-6, rtol=1e-6)


def test_jit():
    v = jnp.asarray(_spd(np.random.default_rng(2), 5), jnp.float32)
    np.testing.assert_allclose(jax.jit(spd_inverse)(v), spd_inverse(v, impl="xla"), rtol=1e-5,
                               atol=1e-5)


def test_lists_and_empty_batches():
    v = [[4.0, 1.0], [1.0, 3.0]]
    np.testing.assert_allclose(spd_inverse(v), np.linalg.inv(np.asarray(v)), rtol=1e-5)
    for impl in ("pallas", "xla", "auto"):
        assert spd_inverse(jnp.zeros((0, 3, 3)), impl=impl).shape == (0, 3, 3)


def test_bad_input():
    with pytest.raises(ValueError, match=r"v must be a \(batch of\) square matrices, got shape"):
        spd_inverse(jnp.ones((3, 4)))
    with pytest.raises(ValueError, match=rf"at most {SPD_INVERSE_MAX_SIZE}"):
        spd_inverse(jnp.eye(SPD_INVERSE_MAX_SIZE + 1))
    with pytest.raises(ValueError, match=r"impl must be one of"):
        spd_inverse(jnp.eye(2), impl="cuda")
    with pytest.raises(TypeError, match=r"v must be a numeric array, got dtype <U1"):
        spd_inverse(np.array([["a"]]))


@pytest.mark.parametrize("n", [5, 32])
def test_triton_lowering(n):
    """The kernel lowers through Triton for CUDA (exported from the CPU; not run)."""
    check = jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
    exported = jax.export.export(
        jax.jit(functools.partial(spd_inverse, impl="pallas", target="gpu", interpret=False)),
        platforms=("cuda",), disabled_checks=[check])(jax.ShapeDtypeStruct((n, n), jnp.float32))
    assert "triton" in exported.mlir_module()


def test_auto_says_why_it_uses_xla(caplog, monkeypatch):
    monkeypatch.setenv("TENSORFACT_DEBUG_DISPATCH", "1")
    with caplog.at_level("WARNING", logger="tensorfact.kernels"):
        spd_inverse(jnp.eye(3))
    assert "spd_inverse: impl='auto' uses the XLA path: the default backend is" in caplog.text


# -- the TPU (Mosaic) launch of the same kernel: TPU interpret mode and the Mosaic lowering --

@pytest.mark.parametrize("n", [3, 16, 31])
def test_tpu_kernel_matches_numpy(n):
    v = _spd(np.random.default_rng(n + 100), n, batch=(2,), cond=1e3)
    inv = jax.jit(functools.partial(spd_inverse, impl="pallas", target="tpu"))(
        jnp.asarray(v, jnp.float32))
    expected = np.linalg.inv(v)
    assert inv.shape == (2, n, n)
    assert np.linalg.norm(np.asarray(inv, np.float64) - expected) < 1e-4 * np.linalg.norm(
        expected)


def test_tpu_kernel_gradient_is_the_closed_form():
    v = jnp.asarray(_spd(np.random.default_rng(5), 5, cond=10.0), jnp.float32)
    dv = jnp.asarray(_spd(np.random.default_rng(6), 5), jnp.float32)
    _, tangent = jax.jvp(functools.partial(spd_inverse, impl="pallas", target="tpu"), (v,), (dv,))
    inv = np.linalg.inv(np.asarray(v, np.float64))
    np.testing.assert_allclose(tangent, -inv @ np.asarray(dv, np.float64) @ inv, rtol=1e-4,
                               atol=1e-4)


def test_tpu_rejects_float64():
    with jax.enable_x64(True):
        with pytest.raises(ValueError, match=r"v has dtype float64: float64 is not a TPU dtype"):
            spd_inverse(jnp.eye(3), impl="pallas", target="tpu")
        np.testing.assert_allclose(spd_inverse(jnp.eye(3) * 2, impl="xla"), np.eye(3) / 2)


@pytest.mark.parametrize("shape", [(5, 5), (3, 32, 32), (64, 64)])
def test_tpu_lowering(shape):
    """The kernel lowers through Mosaic for a TPU (exported from the CPU; not run)."""
    exported = jax.export.export(
        jax.jit(functools.partial(spd_inverse, impl="pallas", target="tpu", interpret=False)),
        platforms=("tpu",))(jax.ShapeDtypeStruct(shape, jnp.float32))
    assert "tpu_custom_call" in exported.mlir_module()
    assert exported.out_avals[0].shape == shape
