"""The TPU (Mosaic) MTTKRP kernel: in TPU interpret mode on the CPU against NumPy float64 and
the XLA reference; its gradient; its Pallas → Mosaic lowering (exported for the TPU from the
CPU); and the kernel per device inside ``jax.shard_map`` (8 forced host devices, a
subprocess)."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorfact.kernels import mttkrp_pallas, mttkrp_xla

from _helpers import run_on_host_devices



def _numpy_mttkrp(x, factors, mode):
    x = np.asarray(x, np.float64)
    kr = np.ones((1, factors[0].shape[1]))
    for k in (k for k in range(x.ndim) if k != mode):
        kr = (kr[:, None, :] * np.asarray(factors[k], np.float64)[None]).reshape(-1, kr.shape[1])
    return np.moveaxis(x, mode, 0).reshape(x.shape[mode], -1) @ kr


def _data(seed, shape, rank, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(shape), dtype)
    return x, [jnp.asarray(rng.standard_normal((n, rank)), dtype) for n in shape]


def _err(expected, out):
    expected = np.asarray(expected, np.float64)
    return np.abs(np.asarray(out, np.float64) - expected).max() / np.abs(expected).max()


@settings(max_examples=6, deadline=None)
@given(shape=st.lists(st.integers(5, 40), min_size=3, max_size=3), rank=st.integers(1, 9),
       mode=st.integers(0, 2), bf16=st.booleans(), seed=st.integers(0, 2**16))
def test_tpu_kernel_matches_numpy_and_xla_3way(shape, rank, mode, bf16, seed):
    dtype = jnp.bfloat16 if bf16 else jnp.float32
    x, fs = _data(seed, tuple(shape), rank, dtype)
    out = mttkrp_pallas(x, fs, mode, target="tpu")
    assert out.shape == (shape[mode], rank) and out.dtype == dtype
    # the reference sees the same rounded inputs; bf16: the output is rounded to 8 bits
    assert _err(_numpy_mttkrp(x, fs, mode), out) < (2e-2 if bf16 else 2e-6)
    assert _err(mttkrp_xla(x, fs, mode), out) < (2e-2 if bf16 else 2e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(6, 5, 7, 9), (4, 8, 2, 6)])  # odd and even sides
def test_tpu_kernel_4way_every_mode(shape, dtype):
    x, fs = _data(sum(shape), shape, 3, dtype)
    tol = 2e-2 if dtype == jnp.bfloat16 else 2e-6
    for mode in range(4):
        out = mttkrp_pallas(x, fs, mode, target="tpu")
        assert _err(_numpy_mttkrp(x, fs, mode), out) < tol, mode


def test_tpu_kernel_small_blocks_accumulate_over_the_grid():
    x, fs = _data(7, (19, 40, 300), 5)  # several q and s blocks: the accumulator is carried
    for mode in range(3):
        out = mttkrp_pallas(x, fs, mode, target="tpu", block_out=16, block_dot=128)
        assert _err(_numpy_mttkrp(x, fs, mode), out) < 2e-6, mode


def test_tpu_gradient_equals_xla():
    x, fs = _data(3, (5, 6, 7), 2)
    for mode in (0, 2):
        def loss(impl_fn):
            return lambda x, fs: jnp.sum(jnp.sin(impl_fn(x, fs)))
        g_k = jax.grad(loss(lambda x, fs: mttkrp_pallas(x, fs, mode, target="tpu")),
                       argnums=(0, 1))(x, fs)
        g_x = jax.grad(loss(lambda x, fs: mttkrp_xla(x, fs, mode)), argnums=(0, 1))(x, fs)
        for a, b in zip(jax.tree_util.tree_leaves(g_k), jax.tree_util.tree_leaves(g_x)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_tpu_rejects_float64():
    from _helpers import x64
    with x64():
        x, fs = _data(0, (3, 4, 5), 2, jnp.float64)
        with pytest.raises(ValueError, match="x has dtype float64.*not a TPU dtype"):
            mttkrp_pallas(x, fs, 0, target="tpu")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape,rank", [((37, 50, 29), 7), ((64, 64, 64), 32),
                                        ((6, 5, 7, 9), 4)])
def test_tpu_kernel_lowers_to_mosaic(shape, rank, dtype):
    specs = (jax.ShapeDtypeStruct(shape, dtype),
             [jax.ShapeDtypeStruct((n, rank), dtype) for n in shape])
    for mode in range(len(shape)):
        fn = jax.jit(lambda x, fs: mttkrp_pallas(x, fs, mode, target="tpu", interpret=False))
        exported = jax.export.export(fn, platforms=("tpu",))(*specs)
        assert "tpu_custom_call" in exported.mlir_module(), (shape, mode)


def test_kernel_inside_shard_map_equals_unsharded_xla():
    out = run_on_host_devices("_mttkrp_shard_checks.py", "MTTKRP-SHARD-JSON")
    assert out["devices"] == 8
    for key in ("tpu_mode0", "tpu_mode1", "gpu_mode0", "gpu_mode1"):
        assert out[key] < 1e-5, (key, out)
    # the TPU kernel's typed output runs under shard_map's varying-axes check; the generic
    # interpreter of the "gpu" kernel cannot (kernels/_varying.py)
    assert out["tpu_check_vma"] is True and out["gpu_check_vma"] is False
