"""Sharded CP-ALS with ``impl="pallas"``: the MTTKRP kernel per device inside ``shard_map``.

The multi-device checks run once, in a subprocess with 8 forced host devices
(``tests/_sharded_kernel_checks.py``); the kernels run in interpret mode there. In-process:
the varying-axes typing of kernel outputs (``tensorfact/kernels/_varying.py``)."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from tensorfact.kernels import _pallas, _varying, mttkrp_pallas, mttkrp_xla

from _helpers import run_on_host_devices

FITS = ["2x4_modes01/pallas_gpu", "2x4_modes01/pallas_tpu", "8_mode2_4way/pallas_gpu"]


@pytest.fixture(scope="module")
def checks():
    return run_on_host_devices("_sharded_kernel_checks.py", "SHARDED-KERNEL-CHECKS-JSON",
                               timeout=600, unset=("TENSORFACT_DEBUG_DISPATCH",))


def test_eight_devices_and_blocks_off_the_tiles(checks):
    assert checks["devices"] == 8
    assert checks["blocks"] == {"2x4_modes01": [3, 6, 10], "8_mode2_4way": [5, 6, 2, 3]}


@pytest.mark.parametrize("case", FITS)
def test_sharded_cp_with_the_kernel_equals_the_xla_tree(checks, case):
    fit = checks["fits"][case]
    # weights, factors and reconstruction after 3 sweeps: float32 rounding apart
    assert fit["max_rel"] < 1e-5, fit
    np.testing.assert_allclose(fit["errors"], fit["errors_ref"], rtol=1e-4, atol=1e-6)
    assert fit["errors"][-1] < 0.5 * fit["errors"][0]  # the sweeps do fit the data
    assert fit["replicated"]


def test_auto_on_a_cpu_is_the_xla_program_and_says_why(checks):
    assert checks["auto"]["identical_to_xla"]
    assert checks["auto"]["log"] == ["mttkrp: impl='auto' uses the XLA path: the default "
                                     "backend is 'cpu', neither a GPU nor a TPU"]


def test_auto_is_judged_on_one_devices_block(checks):
    # on a GPU with the kernel measured: 64·64·16 is above MIN_ELEMENTS but its eighth is not
    assert checks["auto_on_gpu"] == {"(64, 64, 16)": "xla", "(128, 64, 64)": "pallas"}


def test_bad_impl_raises(checks):
    errors = checks["errors"]
    assert errors["bad_impl"] == ["ValueError", "impl must be one of ['auto', 'pallas', 'xla'], "
                                                "got 'triton'."]
    assert errors["bad_impl_type"][0] == "ValueError" and "impl" in errors["bad_impl_type"][1]
    assert errors["program_unresolved"][0] == "ValueError"
    assert "got 'auto'" in errors["program_unresolved"][1]


@pytest.mark.parametrize("target", ["gpu", "tpu"])
def test_compiled_kernels_lower_in_the_sharded_program(checks, target):
    # Triton / Mosaic lowering of the whole sharded CP program, varying-axes check on:
    # one kernel per mode in the sweep's loop body
    assert checks["lowering"][target] == {"custom_calls": 3, "check_vma": True}


# -- in-process: the varying-axes typing -----------------------------------------------------

def test_outside_shard_map_nothing_varies():
    x = jnp.ones((4, 3))
    out, (y,) = _varying.varying_out_shape((2, 5), jnp.float32, x)
    assert out.shape == (2, 5) and out.dtype == jnp.float32 and y is x
    assert _varying.varying_axes(x) == frozenset()


def test_only_the_generic_interpreter_needs_the_check_off():
    assert [_varying.checks_varying(_pallas.Launch(t, i))
            for t in ("gpu", "tpu") for i in (False, True)] == [True, False, True, True]


def test_tpu_kernel_in_a_one_device_shard_map_keeps_the_check():
    # the union of the inputs' axes types the output; on a 1-device mesh shard_map still
    # checks it (a plain ShapeDtypeStruct raised here before)
    mesh = jax.make_mesh((1,), ("d",))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((4, 5, 3)), jnp.float32)
    fs = [jnp.asarray(rng.standard_normal((n, 2)), jnp.float32) for n in x.shape]
    spec = jax.sharding.NamedSharding(mesh, P("d"))
    fn = jax.shard_map(lambda x, b, c: mttkrp_pallas(x, [None, b, c], 0, target="tpu"),
                       mesh=mesh, in_specs=(P("d"), P(), P()), out_specs=P("d"))
    got = jax.jit(fn)(jax.device_put(x, spec), fs[1], fs[2])
    np.testing.assert_allclose(got, mttkrp_xla(x, fs, 0), rtol=1e-5, atol=1e-5)
