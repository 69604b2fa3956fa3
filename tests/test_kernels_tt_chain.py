"""The fused TT-chain kernel (``x @ W`` for a TT-matrix ``W``; interpret mode on CPU) against
the dense product in NumPy float64 and the XLA chain; its gradients, dispatcher, the public
``tt_matmul(..., impl=)`` and its Triton lowering (exported for CUDA from the CPU)."""

import importlib
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorfact as tfa
from tensorfact.kernels import _pallas, tt_chain_matmul, tt_chain_pallas, tt_chain_xla

from _helpers import rel
from _helpers import tt_cores as _cores
from _helpers import tt_dense as _dense




@settings(max_examples=8, deadline=None)
@given(dims=st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)), min_size=1, max_size=3),
       rank=st.integers(1, 4), batch=st.integers(1, 20), bf16=st.booleans(),
       seed=st.integers(0, 2**16))
def test_kernel_matches_dense_product(dims, rank, batch, bf16, seed):
    rng = np.random.default_rng(seed)
    ms, ns = zip(*dims)
    dtype = jnp.bfloat16 if bf16 else jnp.float32
    cores = _cores(rng, ms, ns, [rank] * (len(dims) - 1), dtype)
    x = jnp.asarray(rng.standard_normal((batch, math.prod(ms))), dtype)
    out = tt_chain_matmul(x, cores, impl="pallas")
    assert out.shape == (batch, math.prod(ns)) and out.dtype == dtype
    expected = np.asarray(x, np.float64) @ _dense(cores)
    scale = np.abs(expected).max() + 1e-30
    err = np.abs(np.asarray(out, np.float64) - expected).max() / scale
    assert err < (5e-2 if bf16 else 2e-6)  # bf16 rounds every intermediate to 8 bits


def test_large_ragged_batch_spans_several_programs():
    rng = np.random.default_rng(1)
    cores = _cores(rng, (3, 4), (5, 2), (3,))
    x = jnp.asarray(rng.standard_normal((37, 12)), jnp.float32)
    for block_rows in (16, 32):
        out = tt_chain_pallas(x, cores, block_rows=block_rows)
        assert rel(np.asarray(x, np.float64) @ _dense(cores), out) < 2e-6


def test_gradients_agree_with_xla_chain():
    rng = np.random.default_rng(2)
    cores = _cores(rng, (2, 3), (3, 4), (3,))
    x = jnp.asarray(rng.standard_normal((5, 6)), jnp.float32)
    cot = jnp.asarray(rng.standard_normal((5, 12)), jnp.float32)

    def loss(impl):
        return jax.jit(jax.grad(lambda x, cs: jnp.vdot(cot, tt_chain_matmul(x, cs, impl=impl)),
                                argnums=(0, 1)))

    (gx_k, gc_k), (gx_x, gc_x) = loss("pallas")(x, cores), loss("xla")(x, cores)
    assert rel(gx_x, gx_k) < 1e-6
    for a, b in zip(gc_x, gc_k):
        assert rel(a, b) < 1e-6
    # and the gradient in x is the true one: Wᵀ applied to the cotangent
    assert rel(np.asarray(cot, np.float64) @ _dense(cores).T, gx_k) < 1e-5


def test_public_tt_matmul_and_vmap():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((12, 20))
    tm = tfa.tt_matrix(jnp.asarray(w, jnp.float32), (3, 4), (4, 5), 100)  # exact at full rank
    x = jnp.asarray(rng.standard_normal((2, 3, 12)), jnp.float32)  # leading batch axes
    out = tfa.tt_matmul(x, tm, impl="pallas")
    assert out.shape == (2, 3, 20)
    assert rel(np.asarray(x, np.float64) @ w, out) < 1e-5
    np.testing.assert_allclose(out, tfa.tt_matmul(x, tm, impl="xla"), rtol=1e-5, atol=1e-5)
    # "auto" on a CPU is today's XLA chain, bit for bit
    np.testing.assert_array_equal(tfa.tt_matmul(x, tm), tfa.tt_matmul(x, tm, impl="xla"))
    vmapped = jax.vmap(lambda xi: tfa.tt_matmul(xi, tm, impl="pallas"))(x)
    np.testing.assert_allclose(vmapped, out, rtol=1e-6, atol=1e-6)


def test_dispatcher_falls_back_and_says_why(caplog, monkeypatch):
    rng = np.random.default_rng(4)
    cores = _cores(rng, (2, 3), (3, 2), (2,))
    x = jnp.asarray(rng.standard_normal((4, 6)), jnp.float32)
    monkeypatch.setenv(_pallas.DEBUG_ENV, "1")
    with caplog.at_level(logging.WARNING, logger="tensorfact.kernels"):
        out = tt_chain_matmul(x, cores)
    assert "neither a GPU nor a TPU" in caplog.text
    np.testing.assert_array_equal(out, tt_chain_xla(x, cores))
    # on a GPU: too large to keep on chip → XLA, and says so; small → the kernel
    monkeypatch.setattr(_pallas, "on_gpu", lambda: True)
    tt = importlib.import_module("tensorfact.kernels._tt_chain")
    assert "not yet been measured" in tt._auto_reason(x, cores)
    monkeypatch.setattr(_pallas, "MEASURED_ON_GPU", frozenset({"tt_chain"}))
    big = _cores(rng, (16, 16, 16), (16, 16, 16), (8, 8))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tensorfact.kernels"):
        tt = importlib.import_module("tensorfact.kernels._tt_chain")
        assert tt._auto_reason(jax.ShapeDtypeStruct((8, 4096), jnp.float32), big) is not None
        assert tt._auto_reason(x, cores) is None
        assert "would not stay on chip" in tt._auto_reason(
            jax.ShapeDtypeStruct((8, 4096), jnp.float32), big)


def test_bad_arguments():
    rng = np.random.default_rng(5)
    cores = _cores(rng, (2, 3), (3, 2), (2,))
    tm = tfa.TTMatrix(cores)
    x = jnp.ones((4, 6))
    for call in (lambda: tt_chain_matmul(x, cores, impl="triton"),
                 lambda: tfa.tt_matmul(x, tm, impl="triton")):
        with pytest.raises(ValueError, match=r"impl must be one of .*got 'triton'"):
            call()
    with pytest.raises(ValueError, match=r"impl='pallas' applies to the dense product x @ W"):
        tfa.tt_matmul(tm, jnp.ones((6,)), impl="pallas")
    tfa.tt_matmul(tm, jnp.ones((6,)), impl="auto")  # no kernel for W @ v: auto ignores it
    with pytest.raises(ValueError, match=r"x must have shape \(B, 6\)"):
        tt_chain_matmul(jnp.ones((4, 5)), cores)
    with pytest.raises(ValueError, match=r"chained ranks"):
        tt_chain_matmul(x, cores[::-1])
    with pytest.raises(ValueError, match=r"block_rows must be a power of two >= 16, got 8"):
        tt_chain_pallas(x, cores, block_rows=8)


def _export_for_cuda(fn, *args):
    """Runs the Pallas → Triton lowering for CUDA without a GPU (the custom call is not run)."""
    check = jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
    return jax.export.export(jax.jit(fn), platforms=("cuda",), disabled_checks=[check])(*args)


@pytest.mark.parametrize("ms,ns,ranks,batch,dtype", [
    ((4, 2), (2, 5), (3,), 6, jnp.float32),
    ((3, 5, 2), (2, 3, 4), (2, 3), 20, jnp.bfloat16),
    ((8,), (6,), (), 3, jnp.float32),
    ((4, 8, 8, 4), (4, 8, 8, 4), (8, 8, 8), 512, jnp.float32),  # a 1024 × 1024 TT layer
])
def test_triton_lowering(ms, ns, ranks, batch, dtype):
    rs = (1,) + ranks + (1,)
    spec = jax.ShapeDtypeStruct
    cores = [spec((rs[k], m, n, rs[k + 1]), dtype) for k, (m, n) in enumerate(zip(ms, ns))]
    fwd = _export_for_cuda(lambda x, cs: tt_chain_pallas(x, cs, target="gpu", interpret=False),
                           spec((batch, math.prod(ms)), dtype), cores)
    assert "triton" in fwd.mlir_module()
