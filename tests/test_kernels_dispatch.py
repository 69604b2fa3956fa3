"""The ``impl="auto"`` dispatcher of every kernel on each backend (the backend's name faked:
``jax.default_backend`` patched), its launch choice, and its logged reasons."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tensorfact import kernels
from tensorfact.kernels import _pallas

_F32, _F64 = jnp.float32, jnp.float64


def _tt_cores(dtype):
    return [jax.ShapeDtypeStruct(s, dtype) for s in ((1, 4, 4, 3), (3, 6, 2, 1))]


# kernel name (as in MEASURED_ON_*), the logged label, resolve(impl, dtype), the dtype reason
_KERNELS = {
    "mttkrp": ("mttkrp", lambda impl, dtype: kernels.resolve_mttkrp_impl(
        jax.ShapeDtypeStruct((64, 64, 64), dtype), 32, impl), "dtype float64"),
    "tt_chain": ("tt_chain_matmul", lambda impl, dtype: kernels.resolve_tt_chain_impl(
        jax.ShapeDtypeStruct((16, 24), dtype), _tt_cores(_F32), impl), "dtype float64"),
    "spd_inverse": ("spd_inverse", lambda impl, dtype: kernels.resolve_spd_inverse_impl(
        jax.ShapeDtypeStruct((8, 8), dtype), impl), "dtype float64, not float32"),
}
_BACKENDS = ("cpu", "gpu", "tpu")


@pytest.fixture
def backend(request, monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: request.param)
    monkeypatch.setenv(_pallas.DEBUG_ENV, "1")
    return request.param


def _resolve(caplog, name, impl="auto", dtype=_F32):
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tensorfact.kernels"):
        choice = _KERNELS[name][1](impl, dtype)
    return choice, caplog.text


@pytest.mark.parametrize("name", sorted(_KERNELS))
@pytest.mark.parametrize("backend", _BACKENDS, indirect=True)
def test_auto_takes_a_kernel_only_where_measured(name, backend, caplog, monkeypatch):
    label, _, dtype_reason = _KERNELS[name]
    measured = {"gpu": _pallas.MEASURED_ON_GPU, "tpu": _pallas.MEASURED_ON_TPU}.get(backend, ())
    choice, log = _resolve(caplog, name)
    if backend == "cpu":
        assert choice == "xla"
        assert f"{label}: impl='auto' uses the XLA path: the default backend is 'cpu', " \
               f"neither a GPU nor a TPU" in log
        return
    if name in measured:  # today: spd_inverse on a GPU
        assert (choice, log) == ("pallas", "")
    else:
        assert choice == "xla"
        flag = " --tpu" if backend == "tpu" else ""
        assert (f"{label}: impl='auto' uses the XLA path: the {name} kernel has not yet been "
                f"measured to beat XLA on a {backend.upper()} (benchmarks/bench_kernels.py"
                f"{flag}); pass impl='pallas' to use it") in log
    # once measured on this backend (and only this one), auto takes it, unless its dtype rule
    # says no
    other = "MEASURED_ON_GPU" if backend == "tpu" else "MEASURED_ON_TPU"
    monkeypatch.setattr(_pallas, other, frozenset(_KERNELS))
    monkeypatch.setattr(_pallas, f"MEASURED_ON_{backend.upper()}", frozenset())
    assert _resolve(caplog, name)[0] == "xla"
    monkeypatch.setattr(_pallas, f"MEASURED_ON_{backend.upper()}", frozenset({name}))
    assert _resolve(caplog, name) == ("pallas", "")
    with jax.enable_x64():
        choice, log = _resolve(caplog, name, dtype=_F64)
    assert choice == "xla" and dtype_reason in log


@pytest.mark.parametrize("name", sorted(_KERNELS))
@pytest.mark.parametrize("backend", _BACKENDS, indirect=True)
def test_explicit_impl_is_obeyed_on_every_backend(name, backend, caplog):
    for impl in ("pallas", "xla"):
        assert _resolve(caplog, name, impl) == (impl, "")
    with pytest.raises(ValueError, match=r"impl must be one of .*got 'triton'"):
        _KERNELS[name][1]("triton", _F32)


def test_no_log_without_the_debug_flag(monkeypatch, caplog):
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    monkeypatch.delenv(_pallas.DEBUG_ENV, raising=False)
    for name in _KERNELS:
        assert _resolve(caplog, name) == ("xla", "")


@pytest.mark.parametrize("backend, target, interpret, expected", [
    ("cpu", None, None, ("gpu", True)),
    ("cpu", "tpu", None, ("tpu", True)),
    ("gpu", None, None, ("gpu", False)),
    ("gpu", "tpu", None, ("tpu", True)),
    ("tpu", None, None, ("tpu", False)),
    ("tpu", "gpu", None, ("gpu", True)),
    ("tpu", None, True, ("tpu", True)),
    ("cpu", "gpu", False, ("gpu", False)),
], indirect=["backend"])
def test_launch_follows_the_backend(backend, target, interpret, expected):
    assert tuple(_pallas.resolve_launch(target, interpret)) == expected


def test_bad_launch_arguments():
    with pytest.raises(ValueError, match=r"target must be one of .*got 'cuda'"):
        _pallas.resolve_launch("cuda")
    with pytest.raises(TypeError, match=r"interpret must be True, False or None, got 'yes'"):
        _pallas.resolve_launch("tpu", "yes")


def test_public_lists_are_the_dispatchers():
    """``tensorfact.kernels.MEASURED_ON_*`` are the sets the dispatcher reads, and only name
    kernels that exist."""
    assert kernels.MEASURED_ON_GPU is _pallas.MEASURED_ON_GPU
    assert kernels.MEASURED_ON_TPU is _pallas.MEASURED_ON_TPU
    assert set(kernels.MEASURED_ON_GPU) | set(kernels.MEASURED_ON_TPU) <= set(_KERNELS)
    np.testing.assert_equal(sorted(kernels.MEASURED_ON_TPU), [])  # nothing timed on a TPU yet
