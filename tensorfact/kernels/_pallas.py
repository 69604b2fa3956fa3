"""What every Pallas kernel of the package shares: where it runs, how it is launched, and how a
dispatcher explains a fallback.

A kernel comes in up to two *targets*: ``"gpu"``, written for Triton (masked loads and stores,
register tiles), and ``"tpu"``, written for Mosaic (``BlockSpec`` tiles in VMEM, the (8, 128)
float32 / (16, 128) bfloat16 tiling, a float32 accumulator in VMEM scratch). A launch is a
:class:`Launch` ``(target, interpret)``: which kernel, and whether it is compiled for its
hardware or run in interpret mode. :func:`resolve_launch` fills in what is not given:

* ``target=None`` is the default backend's (``"tpu"`` on a TPU, ``"gpu"`` on a GPU or a CPU);
* ``interpret=None`` compiles when the backend is the target's hardware and interprets
  otherwise. On a CPU the ``"gpu"`` kernel runs in Pallas's generic interpret mode and the
  ``"tpu"`` kernel in the TPU interpret mode (``pltpu.InterpretParams``: the kernel's own code
  with TPU semantics: memory spaces, grid order, DMAs), so the tests exercise both kernels'
  own code without the hardware.

On a GPU the kernels are lowered through Triton. JAX 0.10 lowers a ``pallas_call`` without
compiler parameters through Mosaic GPU instead, which rejects the kernels written here, so
:func:`call` always passes :class:`~jax.experimental.pallas.triton.CompilerParams` on the GPU
path, and :class:`~jax.experimental.pallas.tpu.CompilerParams` (the grid's dimension semantics)
on the TPU path. The tests also export each kernel with ``jax.export`` for ``platforms=("cuda",)``
and ``("tpu",)`` from a CPU machine: that runs the real Pallas → Triton and Pallas → Mosaic
lowerings, which catch unsupported operations and block shapes without the hardware.

``impl="auto"`` takes a kernel only on hardware where a benchmark has shown it to pay: its name
must be in :data:`MEASURED_ON_GPU` on a GPU (``spd_inverse`` is; the MTTKRP and TT-chain
kernels are not yet) or :data:`MEASURED_ON_TPU` on a TPU (empty: nothing has been measured on
a TPU, so ``auto`` runs XLA there until someone runs ``benchmarks/bench_kernels.py --tpu``).
Until then ``auto`` keeps the XLA path for that kernel (a kernel that lowers may still spill or
run slowly on hardware); ``impl="pallas"`` opts in, on either backend.

Dispatch logging: set the environment variable ``TENSORFACT_DEBUG_DISPATCH=1`` (read at each
call) and every ``impl="auto"`` dispatcher logs, on the ``tensorfact.kernels`` logger at
WARNING level, why it chose the XLA path.
"""

from __future__ import annotations

import logging
import os
from typing import NamedTuple, get_args

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton

from tensorfact._checks import Impl, check_choice

__all__ = ["IMPLS", "TARGETS", "MEASURED_ON_GPU", "MEASURED_ON_TPU", "Launch", "unmeasured_reason",
           "on_gpu", "backend_target", "resolve_launch", "call", "check_impl", "resolve_impl",
           "auto_reason", "debug_enabled", "explain_fallback", "logger"]

IMPLS = get_args(Impl)
TARGETS = ("gpu", "tpu")
DEBUG_ENV = "TENSORFACT_DEBUG_DISPATCH"

logger = logging.getLogger("tensorfact.kernels")

#: The kernels ``impl="auto"`` takes on a GPU: those whose GPU timings
#: (``benchmarks/bench_kernels.py``, recorded in ``benchmarks/RESULTS.md``) beat the XLA path.
#: ``spd_inverse``: one launch instead of a Cholesky and two triangular solves took a CP-ALS
#: sweep at 256³, R = 32 from 245 to 214 µs on an H100 (in 0.1, when CP-ALS called it).
MEASURED_ON_GPU: frozenset = frozenset({"spd_inverse"})
#: The same for a TPU: empty, since no kernel has been timed on one
#: (``benchmarks/bench_kernels.py --tpu`` does it); ``impl="auto"`` runs XLA on a TPU.
MEASURED_ON_TPU: frozenset = frozenset()


class Launch(NamedTuple):
    """How a kernel is launched: ``target`` (``"gpu"``: the Triton kernel, ``"tpu"``: the Mosaic
    kernel) and ``interpret`` (run in that target's interpret mode instead of compiling)."""
    target: str
    interpret: bool


def on_gpu() -> bool:
    """Whether JAX's default backend is a GPU (CUDA or ROCm), where the Triton path runs."""
    return jax.default_backend() == "gpu"


def backend_target():
    """The kernel target of the default backend: ``"gpu"``, ``"tpu"``, or None (a CPU)."""
    if on_gpu():
        return "gpu"
    return "tpu" if jax.default_backend() == "tpu" else None


def resolve_launch(target=None, interpret=None) -> Launch:
    """The :class:`Launch` for ``target`` (``"gpu"``, ``"tpu"`` or None: the backend's, ``"gpu"``
    on a CPU) and ``interpret`` (None: compile on the target's own hardware, interpret elsewhere).

    Example:
      >>> from tensorfact.kernels import _pallas
      >>> _pallas.resolve_launch("tpu")   # on a CPU: the TPU kernel in TPU interpret mode
      Launch(target='tpu', interpret=True)
    """
    here = backend_target()
    target = check_choice((here or "gpu") if target is None else target, TARGETS, "target")
    if interpret is None:
        interpret = target != here
    elif not isinstance(interpret, bool):
        raise TypeError(f"interpret must be True, False or None, got {interpret!r}.")
    return Launch(target, interpret)


def unmeasured_reason(name: str, target: str = "gpu"):
    """Why ``auto`` should not yet take the kernel ``name`` on ``target`` (None once measured)."""
    if name in (MEASURED_ON_TPU if target == "tpu" else MEASURED_ON_GPU):
        return None
    return (f"the {name} kernel has not yet been measured to beat XLA on a {target.upper()} "
            f"(benchmarks/bench_kernels.py{' --tpu' if target == 'tpu' else ''}); pass "
            f"impl='pallas' to use it")


def call(kernel, *, launch: Launch, num_warps: int = 4, num_stages: int = 2,
         dimension_semantics=None, vmem_limit_bytes=None, **kwargs):
    """``pl.pallas_call`` with the launch settings of ``launch``: Triton compiler parameters
    (``num_warps``, ``num_stages``) for a compiled ``"gpu"`` kernel, Mosaic ones (the grid's
    ``dimension_semantics``, ``"parallel"`` or ``"arbitrary"`` per axis, and the scoped-VMEM
    limit ``vmem_limit_bytes``, None: Mosaic's default) for a compiled ``"tpu"`` kernel, the
    generic or the TPU interpret mode otherwise."""
    if launch.target == "tpu":
        if launch.interpret:
            return pl.pallas_call(kernel, interpret=pltpu.InterpretParams(), **kwargs)
        params = pltpu.CompilerParams(dimension_semantics=dimension_semantics,
                                      vmem_limit_bytes=vmem_limit_bytes)
        return pl.pallas_call(kernel, compiler_params=params, **kwargs)
    if launch.interpret:
        return pl.pallas_call(kernel, interpret=True, **kwargs)
    params = pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
    return pl.pallas_call(kernel, compiler_params=params, **kwargs)


def check_impl(impl) -> str:
    """Raises ``ValueError`` naming ``impl`` unless it is ``"auto"``, ``"pallas"`` or ``"xla"``."""
    return check_choice(impl, IMPLS, "impl")


def debug_enabled() -> bool:
    """Whether ``TENSORFACT_DEBUG_DISPATCH`` asks for dispatch logging."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def explain_fallback(name: str, reason: str) -> None:
    """Logs why the ``impl="auto"`` dispatcher of ``name`` took the XLA path (debug flag only)."""
    if debug_enabled():
        logger.warning("%s: impl='auto' uses the XLA path: %s", name, reason)


def auto_reason(name: str, shape_reason):
    """Why ``impl="auto"`` should not take the kernel ``name`` (None when it should): not on a
    GPU or a TPU, not yet measured there, or ``shape_reason(target)`` (the kernel's own
    dtype/shape rules for the backend's target)."""
    target = backend_target()
    if target is None:
        return f"the default backend is {jax.default_backend()!r}, neither a GPU nor a TPU"
    return unmeasured_reason(name, target) or shape_reason(target)


def resolve_impl(name: str, impl, shape_reason, *, label=None) -> str:
    """``"pallas"`` or ``"xla"``: ``impl`` checked and ``"auto"`` resolved by
    :func:`auto_reason`, logging why it chose XLA under ``TENSORFACT_DEBUG_DISPATCH=1`` (as
    ``label``, default ``name``). Every kernel's dispatcher decides through it."""
    impl = check_impl(impl)
    if impl != "auto":
        return impl
    reason = auto_reason(name, shape_reason)
    if reason is None:
        return "pallas"
    explain_fallback(label or name, reason)
    return "xla"
