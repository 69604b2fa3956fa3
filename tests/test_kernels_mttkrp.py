"""The MTTKRP kernel (interpret mode on CPU) against NumPy float64 and the XLA reference; its
dispatcher; CP-ALS through it; and its Triton lowering (exported for CUDA from the CPU)."""

import functools
import importlib
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import tensorfact as tfa
from tensorfact.kernels import _pallas, mttkrp, mttkrp_pallas, mttkrp_xla, resolve_mttkrp_impl

from _helpers import rel, x64

# the package exports the function under the submodule's name
mttkrp_module = importlib.import_module("tensorfact.kernels._mttkrp")


def _numpy_mttkrp(x, factors, mode):
    """``unfold(x, n) · khatri_rao(A_k, k≠n)`` in float64, written from the definition."""
    x = np.asarray(x, np.float64)
    others = [k for k in range(x.ndim) if k != mode]
    kr = np.ones((1, factors[0].shape[1]))
    for k in others:
        kr = (kr[:, None, :] * np.asarray(factors[k], np.float64)[None]).reshape(-1, kr.shape[1])
    return np.moveaxis(x, mode, 0).reshape(x.shape[mode], -1) @ kr


def _data(seed, shape, rank, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    factors = [rng.standard_normal((n, rank)) for n in shape]
    return (jnp.asarray(x, dtype), [jnp.asarray(a, dtype) for a in factors],
            x, factors)


@settings(max_examples=12, deadline=None)
@given(shape=st.lists(st.integers(1, 12), min_size=3, max_size=3), rank=st.integers(1, 5),
       mode=st.integers(0, 2), bf16=st.booleans(), seed=st.integers(0, 2**16))
def test_kernel_matches_numpy_3way(shape, rank, mode, bf16, seed):
    dtype = jnp.bfloat16 if bf16 else jnp.float32
    x, factors, _, _ = _data(seed, tuple(shape), rank, dtype)
    # the reference sees the same (rounded) inputs, so only the kernel's arithmetic differs
    expected = _numpy_mttkrp(np.asarray(x, np.float64),
                             [np.asarray(a, np.float64) for a in factors], mode)
    out = mttkrp(x, factors, mode, impl="pallas")
    assert out.shape == (shape[mode], rank) and out.dtype == dtype
    scale = np.abs(expected).max() + 1e-30
    err = np.abs(np.asarray(out, np.float64) - expected).max() / scale
    assert err < (2e-2 if bf16 else 2e-6)  # bf16: the output itself is rounded to 8 bits


@pytest.mark.parametrize("shape", [(4, 5, 3, 6), (2, 3, 2, 2)])
@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_kernel_4way_every_mode(shape, mode):
    x, factors, x_np, f_np = _data(sum(shape) + mode, shape, 3)
    out = mttkrp(x, factors, mode, impl="pallas")
    assert rel(_numpy_mttkrp(x_np, f_np, mode), out) < 2e-6
    assert rel(mttkrp_xla(x, factors, mode), out) < 2e-6


@pytest.mark.parametrize("mode", [0, 1])
def test_kernel_2way_is_a_matrix_product(mode):
    x, factors, x_np, f_np = _data(3, (7, 10), 4)
    expected = x_np @ f_np[1] if mode == 0 else x_np.T @ f_np[0]
    assert rel(expected, mttkrp(x, factors, mode, impl="pallas")) < 2e-6


def test_bfloat16_tensor_with_float32_factors_accumulates_in_float32():
    x, factors, _, _ = _data(5, (9, 12, 10), 4)
    xb = x.astype(jnp.bfloat16)
    out = mttkrp(xb, factors, 1, impl="pallas")
    assert out.dtype == jnp.float32
    # only the factor tile's rounding to bf16 remains: ~2^-9 relative, far below bf16 output
    expected = _numpy_mttkrp(np.asarray(xb, np.float64), [np.asarray(a) for a in factors], 1)
    assert rel(expected, out) < 1e-2


@pytest.mark.parametrize("block", [dict(block_out=16, block_dot=16, n_split=3),
                                   dict(n_split=1), dict(block_out=32, n_split=12)])
def test_tilings_agree(block):
    x, factors, x_np, f_np = _data(11, (11, 12, 37), 5)  # 37: several ragged dot chunks
    for mode in (0, 2):
        out = mttkrp_pallas(x, factors, mode, **block)
        assert rel(_numpy_mttkrp(x_np, f_np, mode), out) < 2e-6


def test_jit_vmap_and_public_entry_point():
    x, factors, _, _ = _data(1, (3, 5, 6, 4), 2)  # a batch of three 5 × 6 × 4 tensors
    fn = jax.jit(lambda x, a, b, c: tfa.mttkrp(x, [a, b, c], 2, impl="pallas"))
    batched = jax.vmap(fn, in_axes=(0, None, None, None))(x, *factors[1:])
    for i in range(3):
        expected = tfa.mttkrp(x[i], factors[1:], 2, impl="xla")
        np.testing.assert_allclose(batched[i], expected, rtol=1e-5, atol=1e-5)


def test_gradients_of_the_kernel():
    with x64():
        x, factors, _, _ = _data(2, (3, 4, 5), 2, jnp.float64)
        for mode, modes in ((2, ["fwd", "rev"]), (0, ["rev"])):  # the two kinds of slab
            check_grads(lambda x, *fs: mttkrp(x, list(fs), mode, impl="pallas"), (x, *factors),
                        order=1, modes=modes, atol=1e-7, rtol=1e-7)


def test_dispatcher_falls_back_on_cpu_and_says_why(caplog, monkeypatch):
    x, factors, _, _ = _data(4, (4, 5, 6), 3)
    monkeypatch.delenv(_pallas.DEBUG_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="tensorfact.kernels"):
        quiet = mttkrp(x, factors, 0)
        public = tfa.mttkrp(x, factors, 0)
    assert not caplog.records
    monkeypatch.setenv(_pallas.DEBUG_ENV, "1")
    with caplog.at_level(logging.WARNING, logger="tensorfact.kernels"):
        loud = mttkrp(x, factors, 0)
    assert any("neither a GPU nor a TPU" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(quiet, mttkrp_xla(x, factors, 0))  # auto = XLA, bit for bit
    np.testing.assert_array_equal(public, tfa.mttkrp(x, factors, 0, impl="xla"))
    np.testing.assert_allclose(loud, quiet, rtol=1e-6, atol=1e-6)


def test_auto_rules_on_a_gpu(monkeypatch, caplog):
    monkeypatch.setattr(_pallas, "on_gpu", lambda: True)
    monkeypatch.setenv(_pallas.DEBUG_ENV, "1")
    big = jax.ShapeDtypeStruct((64, 64, 64), jnp.float32)
    with caplog.at_level(logging.WARNING, logger="tensorfact.kernels"):  # not yet measured
        assert resolve_mttkrp_impl(big, 32, "auto") == "xla"
    assert "not yet been measured" in caplog.text
    monkeypatch.setattr(_pallas, "MEASURED_ON_GPU", frozenset({"mttkrp"}))
    assert resolve_mttkrp_impl(big, 32, "auto") == "pallas"
    assert resolve_mttkrp_impl(big, 32, "xla") == "xla"
    cases = [(jax.ShapeDtypeStruct((64, 64, 64), jnp.float64), 32, "dtype float64"),
             (jax.ShapeDtypeStruct((8, 8, 8), jnp.float32), 32, "< 32768 entries"),
             (big, mttkrp_module.MAX_RANK + 1, f"rank {mttkrp_module.MAX_RANK + 1}")]
    for x, rank, why in cases:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="tensorfact.kernels"):
            assert resolve_mttkrp_impl(x, rank, "auto") == "xla"
        assert why in caplog.text


def test_bad_arguments():
    x, factors, _, _ = _data(0, (3, 4, 5), 2)
    for fn in (mttkrp, tfa.mttkrp):
        with pytest.raises(ValueError, match=r"impl must be one of .*got 'cuda'"):
            fn(x, factors, 0, impl="cuda")
    with pytest.raises(ValueError, match=r"factors\[1\] has 3 rows, but mode 1 of x has size 4"):
        mttkrp(x, [factors[0], factors[0], factors[2]], 0, impl="pallas")
    with pytest.raises(ValueError, match=r"one matrix per mode \(3\), got 2"):
        mttkrp(x, factors[:2], 0)
    with pytest.raises(ValueError, match=r"mode must be an int in \[-3, 3\)"):
        mttkrp(x, factors, 3, impl="pallas")
    with pytest.raises(ValueError, match=r"block_dot must be a power of two >= 16, got 24"):
        mttkrp_pallas(x, factors, 0, block_dot=24)
    with pytest.raises(ValueError, match=r"block_out must be a power of two >= 16, got 32.0"):
        mttkrp_pallas(x, factors, 0, block_out=32.0)
    with pytest.raises(ValueError, match=r"precision must be None, one of"):
        mttkrp(x, factors, 0, impl="xla", precision="fast")
    with pytest.raises(ValueError, match=r"n_split must be a positive integer, got 0"):
        mttkrp_pallas(x, factors, 0, n_split=0)
    with pytest.raises(ValueError, match=r"impl must be one of .*got 'gpu'"):
        tfa.cp(x, 2, impl="gpu")


def test_the_factor_of_the_mode_is_not_read():
    x, factors, x_np, f_np = _data(6, (4, 5, 6), 3)
    for impl in ("pallas", "xla"):
        for mode in range(3):
            garbage = list(factors)
            garbage[mode] = None
            out = mttkrp(x, garbage, mode, impl=impl)
            assert rel(_numpy_mttkrp(x_np, f_np, mode), out) < 2e-6
            assert rel(_numpy_mttkrp(x_np, f_np, mode), tfa.mttkrp(x, garbage, mode,
                                                                   impl=impl)) < 2e-6


def test_lists_and_integer_tensors_are_taken_as_float32():
    x = np.arange(60).reshape(3, 4, 5)
    factors = [np.ones((n, 2), np.float32).tolist() for n in x.shape]
    for impl in ("pallas", "xla"):
        out = mttkrp(x.tolist(), factors, 2, impl=impl)
        assert out.dtype == jnp.float32
        np.testing.assert_array_equal(out, np.repeat(x.sum((0, 1))[:, None], 2, 1))


def test_cp_with_the_kernel_agrees_with_xla():
    x = tfa.random_cp(jax.random.key(3), (6, 7, 8), rank=3).to_dense()
    x = x + 0.01 * jax.random.normal(jax.random.key(4), x.shape)
    fit = functools.partial(tfa.cp, x, 3, n_iter=6, tol=0, return_info=True)
    (kernel, info_k), (xla, info_x) = fit(impl="pallas"), fit(impl="xla")
    assert rel(xla.to_dense(), kernel.to_dense()) < 1e-4
    np.testing.assert_allclose(info_k.errors, info_x.errors, rtol=1e-3, atol=1e-5)
    # "auto" on a CPU is the XLA path, bit for bit
    auto, _ = fit(impl="auto")
    np.testing.assert_array_equal(auto.to_dense(), xla.to_dense())


def _export_for_cuda(fn, *args):
    """Runs the Pallas → Triton lowering for CUDA without a GPU (the custom call is not run)."""
    check = jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
    return jax.export.export(jax.jit(fn), platforms=("cuda",), disabled_checks=[check])(*args)


@pytest.mark.parametrize("precision", ["highest", None, jax.lax.Precision.HIGHEST])
def test_dispatcher_lowers_for_cuda_with_every_precision(monkeypatch, precision):
    """``mttkrp(..., impl="pallas", precision=...)`` through the public dispatchers, with the
    backend taken for a GPU (so the kernel's target is Triton), exported for CUDA."""
    monkeypatch.setattr(_pallas, "on_gpu", lambda: True)
    spec = jax.ShapeDtypeStruct
    shape = (6, 7, 9)
    factors = [spec((n, 8), jnp.float32) for n in shape]
    for fn in (mttkrp, tfa.mttkrp):
        exported = _export_for_cuda(
            lambda x, fs: fn(x, fs, 1, impl="pallas", precision=precision),
            spec(shape, jnp.float32), factors)
        assert "triton" in exported.mlir_module()


@pytest.mark.parametrize("shape,dtype", [((5, 7, 9), jnp.float32), ((12, 3, 10), jnp.bfloat16),
                                         ((4, 5, 3, 6), jnp.float32),
                                         ((256, 256, 256), jnp.float32)])
def test_triton_lowering(shape, dtype):
    spec = jax.ShapeDtypeStruct
    for mode in range(len(shape)):
        exported = _export_for_cuda(
            lambda x, fs: mttkrp_pallas(x, fs, mode, target="gpu", interpret=False), spec(shape, dtype),
            [spec((n, 32), jnp.float32) for n in shape])
        assert "triton" in exported.mlir_module()
