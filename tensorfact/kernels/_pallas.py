"""What every Pallas kernel of the package shares: where it runs, how it is launched, and how a
dispatcher explains a fallback.

On a GPU the kernels are lowered through Triton. JAX 0.10 lowers a ``pallas_call`` without
compiler parameters through Mosaic GPU instead, which rejects the kernels written here, so
:func:`call` always passes :class:`~jax.experimental.pallas.triton.CompilerParams` on the GPU
path. Elsewhere (CPU) the same kernel runs in interpret mode, so tests exercise its own code.

The target is a *static* argument (``"gpu"`` or ``"interpret"``), resolved from the default
backend unless forced: the tests export the kernels for CUDA from a CPU machine
(``jax.export`` with ``platforms=("cuda",)``), which runs the Pallas → Triton lowering and
catches unsupported operations and block shapes without a GPU.

``impl="auto"`` takes a kernel on a GPU only once a GPU benchmark has shown it to pay: its name
must be in :data:`MEASURED_ON_GPU` (``spd_inverse`` is; the MTTKRP and TT-chain kernels are not
yet). Until then ``auto`` keeps the XLA path for that kernel (a kernel that lowers may still
spill or run slowly on hardware); ``impl="pallas"`` opts in.

Dispatch logging: set the environment variable ``TENSORFACT_DEBUG_DISPATCH=1`` (read at each
call) and every ``impl="auto"`` dispatcher logs, on the ``tensorfact.kernels`` logger at
WARNING level, why it chose the XLA path.
"""

from __future__ import annotations

import logging
import os
from typing import get_args

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from tensorfact._checks import Impl, check_choice

__all__ = ["IMPLS", "TARGETS", "MEASURED_ON_GPU", "unmeasured_reason", "on_gpu",
           "resolve_target", "call", "check_impl", "resolve_impl", "auto_reason", "debug_enabled",
           "explain_fallback", "logger"]

IMPLS = get_args(Impl)
TARGETS = ("gpu", "interpret")
DEBUG_ENV = "TENSORFACT_DEBUG_DISPATCH"

logger = logging.getLogger("tensorfact.kernels")

# kernels whose GPU timings (benchmarks/bench_kernels.py, recorded in benchmarks/RESULTS.md) beat
# the XLA path; "auto" takes only these. spd_inverse: one launch instead of a Cholesky and two
# triangular solves took a CP-ALS sweep at 256³, R = 32 from 245 to 214 µs on an H100.
MEASURED_ON_GPU: frozenset = frozenset({"spd_inverse"})


def unmeasured_reason(name: str):
    """Why ``auto`` should not yet take the kernel ``name`` on a GPU (None once measured)."""
    if name in MEASURED_ON_GPU:
        return None
    return (f"the {name} kernel has not yet been measured to beat XLA on a GPU "
            f"(benchmarks/bench_kernels.py); pass impl='pallas' to use it")


def on_gpu() -> bool:
    """Whether JAX's default backend is a GPU (CUDA or ROCm), where the Triton path runs."""
    return jax.default_backend() == "gpu"


def resolve_target(target) -> str:
    """``None`` → ``"gpu"`` on a GPU backend, else ``"interpret"``; a given target is checked."""
    if target is None:
        return "gpu" if on_gpu() else "interpret"
    return check_choice(target, TARGETS, "_target")


def call(kernel, *, target: str, num_warps: int = 4, num_stages: int = 2, **kwargs):
    """``pl.pallas_call`` with the launch settings of ``target``: Triton compiler parameters
    on ``"gpu"``, ``interpret=True`` on ``"interpret"``."""
    if target == "gpu":
        params = pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
        return pl.pallas_call(kernel, compiler_params=params, **kwargs)
    return pl.pallas_call(kernel, interpret=True, **kwargs)


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
    GPU, not yet measured there, or ``shape_reason()`` (the kernel's own dtype/shape rules)."""
    if not on_gpu():
        return f"the default backend is {jax.default_backend()!r}, not a GPU"
    return unmeasured_reason(name) or shape_reason()


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

