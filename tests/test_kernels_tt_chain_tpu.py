"""The TPU (Mosaic) TT-chain kernel: in TPU interpret mode on the CPU against the dense product
in NumPy float64 and the XLA chain; its gradients; its Pallas → Mosaic lowering (exported for
the TPU from the CPU); its VMEM rule and the dispatcher's use of it; and the kernel per device
inside ``jax.shard_map`` (8 forced host devices, a subprocess)."""

import importlib
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorfact.kernels import _pallas, tt_chain_matmul, tt_chain_pallas, tt_chain_xla

from _helpers import run_on_host_devices
from _helpers import tt_cores as _cores
from _helpers import tt_dense as _dense

TOL = {jnp.float32: 2e-6, jnp.bfloat16: 4e-2}  # bf16: intermediates rounded to 8 bits per core




def _err(expected, out):
    expected = np.asarray(expected, np.float64)
    return np.abs(np.asarray(out, np.float64) - expected).max() / np.abs(expected).max()


def _check(ms, ns, ranks, batch, dtype, seed, **kw):
    rng = np.random.default_rng(seed)
    cores = _cores(rng, ms, ns, ranks, dtype)
    x = jnp.asarray(rng.standard_normal((batch, math.prod(ms))), dtype)
    out = tt_chain_pallas(x, cores, target="tpu", **kw)
    assert out.shape == (batch, math.prod(ns)) and out.dtype == dtype
    # the references see the same rounded inputs
    assert _err(np.asarray(x, np.float64) @ _dense(cores), out) < TOL[dtype]
    assert _err(tt_chain_xla(x, cores), out) < TOL[dtype]


@settings(max_examples=4, deadline=None)
@given(dims=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=2, max_size=4),
       rank=st.integers(1, 9), batch=st.integers(1, 20), bf16=st.booleans(),
       seed=st.integers(0, 2**16))
def test_tpu_kernel_matches_numpy_and_xla(dims, rank, batch, bf16, seed):
    ms, ns = zip(*dims)
    _check(ms, ns, [rank] * (len(dims) - 1), batch, jnp.bfloat16 if bf16 else jnp.float32, seed)


@pytest.mark.parametrize("ms,ns,ranks,dtype", [
    ((4, 2), (2, 4), (8,), jnp.float32),   # d = 2, even: kron(I_2, A_d) first step, no padding
    ((3, 5), (2, 7), (3,), jnp.bfloat16),  # d = 2, odd: m_d padded to 8, output tiles padded
    ((4, 4, 4), (2, 2, 2), (3, 5), jnp.float32),  # d = 3, T_1 = 4: output tiles padded to 8
    ((3, 4, 5, 2), (5, 3, 2, 3), (2, 3, 4), jnp.float32),   # d = 4, odd and even sides
    ((2, 4, 2, 4), (4, 2, 4, 2), (4, 9, 2), jnp.bfloat16),  # d = 4, even sides
    ((6,), (5,), (), jnp.bfloat16),        # d = 1: one plain dot
])
def test_tpu_kernel_odd_and_even_shapes(ms, ns, ranks, dtype):
    _check(ms, ns, ranks, 7, dtype, seed=sum(ms) + sum(ns))


def test_tpu_kernel_several_batch_blocks():
    # 300 rows in blocks of 128: three programs, the last one padded
    _check((2, 8), (4, 4), (4,), 300, jnp.float32, seed=1, block_rows=128)


def test_tpu_float16_runs_through_float32():
    rng = np.random.default_rng(8)
    cores = _cores(rng, (2, 3), (3, 2), (2,), jnp.float16)
    x = jnp.asarray(rng.standard_normal((5, 6)), jnp.float16)
    out = tt_chain_pallas(x, cores, target="tpu")
    assert out.dtype == jnp.float16
    assert _err(np.asarray(x, np.float64) @ _dense(cores), out) < 2e-3  # the output's rounding


def test_tpu_gradients_agree_with_xla_chain():
    rng = np.random.default_rng(2)
    cores = _cores(rng, (2, 3, 2), (3, 4, 2), (3, 2))
    x = jnp.asarray(rng.standard_normal((5, 12)), jnp.float32)
    cot = jnp.asarray(rng.standard_normal((5, 24)), jnp.float32)

    def grads(fn):
        return jax.jit(jax.grad(lambda x, cs: jnp.vdot(cot, fn(x, cs)), argnums=(0, 1)))(x, cores)

    (gx_k, gc_k) = grads(lambda x, cs: tt_chain_pallas(x, cs, target="tpu"))
    (gx_x, gc_x) = grads(lambda x, cs: tt_chain_xla(x, cs))
    assert _err(gx_x, gx_k) < 1e-6
    for a, b in zip(gc_x, gc_k):
        assert _err(a, b) < 1e-6
    # and the gradient in x is the true one: Wᵀ applied to the cotangent
    assert _err(np.asarray(cot, np.float64) @ _dense(cores).T, gx_k) < 1e-5


def test_tpu_rejects_float64_bad_blocks_and_oversized_chains():
    from _helpers import x64
    rng = np.random.default_rng(0)
    with x64():
        cores = _cores(rng, (2, 3), (3, 2), (2,), jnp.float64)
        x = jnp.ones((4, 6), jnp.float64)
        with pytest.raises(ValueError, match="float64 is not a TPU dtype"):
            tt_chain_pallas(x, cores, target="tpu")
        with pytest.raises(ValueError, match="float64 is not a TPU dtype"):  # f64 cores alone
            tt_chain_pallas(x.astype(jnp.float32), cores, target="tpu")
    cores = _cores(rng, (2, 3), (3, 2), (2,))
    with pytest.raises(ValueError, match="multiple of 128 for target='tpu', got 64"):
        tt_chain_pallas(jnp.ones((4, 6)), cores, target="tpu", block_rows=64)
    big = [jax.ShapeDtypeStruct(s, jnp.float32)
           for s in [(1, 4, 4, 32), (32, 8, 8, 32), (32, 8, 8, 32), (32, 4, 4, 1)]]
    with pytest.raises(ValueError, match=r"needs about 35\.0 MiB of VMEM.*32768 values per row"):
        jax.eval_shape(lambda x, cs: tt_chain_pallas(x, cs, target="tpu"),
                       jax.ShapeDtypeStruct((8, 1024), jnp.float32), big)
    # rank 16 fits at 128 rows (about 19 MiB) but not at 256
    mid = [jax.ShapeDtypeStruct(s, jnp.float32)
           for s in [(1, 4, 4, 16), (16, 8, 8, 16), (16, 8, 8, 16), (16, 4, 4, 1)]]
    x = jax.ShapeDtypeStruct((300, 1024), jnp.float32)
    assert jax.eval_shape(lambda x, cs: tt_chain_pallas(x, cs, target="tpu", block_rows=128),
                          x, mid).shape == (300, 1024)
    with pytest.raises(ValueError, match=r"block_rows=256 needs about 38\.0 MiB"):
        jax.eval_shape(lambda x, cs: tt_chain_pallas(x, cs, target="tpu", block_rows=256),
                       x, mid)


def test_auto_on_a_tpu_asks_the_vmem_rule(caplog, monkeypatch):
    rng = np.random.default_rng(4)
    cores = _cores(rng, (2, 3), (3, 2), (2,))
    x = jnp.asarray(rng.standard_normal((4, 6)), jnp.float32)
    tt = importlib.import_module("tensorfact.kernels._tt_chain")
    monkeypatch.setattr(_pallas, "backend_target", lambda: "tpu")
    assert "not yet been measured to beat XLA on a TPU" in tt._auto_reason(x, cores)
    monkeypatch.setattr(_pallas, "MEASURED_ON_TPU", frozenset({"tt_chain"}))
    assert tt._auto_reason(x, cores) is None
    big = [jax.ShapeDtypeStruct(s, jnp.float32)
           for s in [(1, 4, 4, 32), (32, 8, 8, 32), (32, 8, 8, 32), (32, 4, 4, 1)]]
    monkeypatch.setenv(_pallas.DEBUG_ENV, "1")
    with caplog.at_level(logging.WARNING, logger="tensorfact.kernels"):
        assert tt.resolve_tt_chain_impl(jax.ShapeDtypeStruct((8, 1024), jnp.float32), big,
                                        "auto") == "xla"
    assert "MiB of VMEM" in caplog.text
    # the GPU rule is another: the same large chain is rejected there for its register tile
    assert "would not stay on chip" in tt._shape_reason(
        jax.ShapeDtypeStruct((8, 1024), jnp.float32), big, "gpu")


@pytest.mark.parametrize("ms,ns,ranks,batch,dtype", [
    ((4, 8, 8, 4), (4, 8, 8, 4), (8, 8, 8), 4096, jnp.float32),    # the benchmark's layer
    ((4, 8, 8, 4), (4, 8, 8, 4), (16, 16, 16), 1000, jnp.bfloat16),  # raised VMEM limit
    ((3, 5), (2, 7), (3,), 9, jnp.float32),                        # every padding path
    ((5, 4, 3), (2, 3, 3), (5, 7), 33, jnp.bfloat16),
    ((6,), (5,), (), 7, jnp.float32),
])
def test_tpu_kernel_lowers_to_mosaic(ms, ns, ranks, batch, dtype, monkeypatch):
    rs = (1,) + ranks + (1,)
    cores = [jax.ShapeDtypeStruct((rs[k], m, n, rs[k + 1]), dtype)
             for k, (m, n) in enumerate(zip(ms, ns))]
    x = jax.ShapeDtypeStruct((batch, math.prod(ms)), dtype)
    fn = jax.jit(lambda x, cs: tt_chain_pallas(x, cs, target="tpu", interpret=False))
    text = jax.export.export(fn, platforms=("tpu",))(x, cores).mlir_module()
    assert "tpu_custom_call" in text
    # and through the public dispatcher with impl="pallas" (the backward's XLA chain too)
    grad = jax.jit(jax.grad(lambda x, cs: jnp.sum(
        tt_chain_matmul(x, cs, impl="pallas") ** 2).astype(jnp.float32), argnums=(0, 1)))
    if dtype == jnp.float32 and len(ms) > 1:
        # as on a TPU backend: the default launch is the compiled TPU kernel
        monkeypatch.setattr(_pallas, "backend_target", lambda: "tpu")
        text = jax.export.export(grad, platforms=("tpu",))(x, cores).mlir_module()
        assert "tpu_custom_call" in text


def _kernel_ops(jaxpr, inside=False):
    """(primitive name, operand shapes) of every op inside the ``pallas_call`` kernels."""
    from jax.extend import core as jcore
    for eqn in jaxpr.eqns:
        if inside:
            yield eqn.primitive.name, [v.aval.shape for v in eqn.invars]
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                sub = sub.jaxpr if isinstance(sub, jcore.ClosedJaxpr) else sub
                if isinstance(sub, jcore.Jaxpr):
                    yield from _kernel_ops(sub, inside or eqn.primitive.name == "pallas_call")


@pytest.mark.parametrize("dtype,sub", [(jnp.float32, 8), (jnp.bfloat16, 16)])
def test_tpu_kernel_uses_only_aligned_2d_dots_and_transposes(dtype, sub):
    """What Mosaic's layout passes (not run by ``jax.export``) need: no reshapes in the kernel,
    2-D transposes of 128-aligned slabs, 2-D dots whose operands' rows are multiples of the
    sublane tile (16 for packed bfloat16), the batch on the 128 lanes."""
    for ms, ns, ranks in [((4, 8, 4), (4, 8, 4), (8, 8)), ((3, 5), (2, 7), (3,)),
                          ((5, 4, 3), (2, 3, 3), (5, 7))]:
        rs = (1,) + ranks + (1,)
        cores = [jax.ShapeDtypeStruct((rs[k], m, n, rs[k + 1]), dtype)
                 for k, (m, n) in enumerate(zip(ms, ns))]
        x = jax.ShapeDtypeStruct((300, math.prod(ms)), dtype)
        jaxpr = jax.make_jaxpr(lambda x, cs: tt_chain_pallas(x, cs, target="tpu",
                                                             interpret=False))(x, cores)
        ops = list(_kernel_ops(jaxpr.jaxpr))
        names = {name for name, _ in ops}
        assert "reshape" not in names and "dot_general" in names, names
        dots = [shapes for name, shapes in ops if name == "dot_general"]
        assert len(dots) == len(ms), dots  # one matmul per core (in a loop over tiles)
        for lhs, rhs in dots:
            assert len(lhs) == len(rhs) == 2 and lhs[1] == rhs[0], (lhs, rhs)
            assert lhs[0] % sub == 0 and rhs[0] % sub == 0 and rhs[1] % 128 == 0, (lhs, rhs)
        for name, (shape, *_) in ops:
            if name == "transpose":
                assert len(shape) == 2 and shape[0] % 128 == 0 and shape[1] % 128 == 0, shape


def test_kernel_inside_shard_map_equals_unsharded_xla():
    out = run_on_host_devices("_tt_chain_shard_checks.py", "TT-CHAIN-SHARD-JSON")
    assert out["devices"] == 8
    for key in ("tpu_forward", "tpu_grad_x", "tpu_grad_cores", "tpu_spd_inverse"):
        assert out[key] < 1e-5, (key, out)
