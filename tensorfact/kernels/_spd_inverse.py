"""Inverse of a small symmetric positive definite matrix, in one kernel launch.

ALS solves an ``R × R`` system (the Hadamard product of factor Gram matrices) per mode per
sweep; 0.1 solved it with this kernel. (Since 0.2 CP-ALS uses a pseudo-inverse instead, which
stays finite at over-estimated ranks: ``decomposition._common.solve_normal_equations``; the
kernel remains for callers with well-conditioned small systems.) On a GPU the library route
(Cholesky, then two triangular solves) costs three calls of ~50 µs latency each, and the same
elimination written in XLA ops becomes about 3 kernels per pivot; either way the small solves,
not the MTTKRPs, dominated a CP-ALS sweep at 256³, R=32 on an H100. Here the whole Gauss–Jordan
elimination of ``[V | I]`` runs in one Pallas program with the matrix held on chip.

No pivoting is needed: Gaussian elimination on a symmetric positive definite matrix is backward
stable (Wilkinson; it is Cholesky in disguise). Callers regularise ``V`` first.

The same kernel body lowers for both targets: Triton on a GPU, Mosaic on a TPU (one program, the
padded ``size × size`` matrix a whole-array block in VMEM: at most 64 × 128 lanes × 4 B × 3
live copies ≈ 100 KiB, well within any TPU core's VMEM). It is measured to pay on an H100
(``MEASURED_ON_GPU``); on a TPU it has never been timed, so ``impl="auto"`` keeps XLA's
elimination there until ``benchmarks/bench_kernels.py --tpu`` says otherwise.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from tensorfact._arrays import as_tensor
from tensorfact._checks import Impl
from tensorfact.kernels import _pallas
from tensorfact.kernels._varying import varying_out_shape

__all__ = ["spd_inverse", "resolve_spd_inverse_impl", "MAX_SIZE"]

#: The largest matrix size spd_inverse unrolls pivot by pivot; beyond it, use a Cholesky solve.
MAX_SIZE = 64


def spd_inverse(v: jax.Array, *, impl: Impl = "auto", target=None,
                interpret=None) -> jax.Array:
    """Inverse of symmetric positive definite matrices of size ``n ≤ 64`` (leading batch axes ok).

    Args:
      v: array of shape ``(..., n, n)``, float32 or float64, symmetric positive definite.
      impl: ``"pallas"`` (one kernel; interpret mode off its target's hardware), ``"xla"``
        (unrolled Gauss–Jordan in XLA ops: the reference), or ``"auto"`` (Pallas for float32 on
        a GPU, where it is measured; XLA on a TPU, where it is not yet, and on a CPU;
        ``TENSORFACT_DEBUG_DISPATCH=1`` logs why it chose XLA).
      target: ``"gpu"`` (the Triton kernel) or ``"tpu"`` (the Mosaic kernel); None: the
        backend's (``"gpu"`` on a CPU).
      interpret: run the kernel in its target's interpret mode; None: compile on the target's
        own hardware, interpret elsewhere.

    Raises:
      ValueError: ``v`` is not square, larger than 64 × 64, or float64 with ``target="tpu"``
        and ``impl="pallas"`` (a TPU has no float64).

    Differentiable: ``d(V⁻¹) = −V⁻¹ dV V⁻¹``.

    Example:
      >>> import jax.numpy as jnp
      >>> from tensorfact.kernels import spd_inverse
      >>> v = jnp.array([[4.0, 1.0], [1.0, 3.0]])
      >>> bool(jnp.allclose(spd_inverse(v, impl="pallas") @ v, jnp.eye(2), atol=1e-5))
      True
    """
    v = as_tensor(v, "v")
    if v.ndim < 2 or v.shape[-1] != v.shape[-2]:
        raise ValueError(f"v must be a (batch of) square matrices, got shape {tuple(v.shape)}.")
    if v.shape[-1] > MAX_SIZE:
        raise ValueError(f"v must be at most {MAX_SIZE} × {MAX_SIZE} for spd_inverse, got "
                         f"{v.shape[-1]} × {v.shape[-1]}; use a Cholesky solve instead.")

    impl = resolve_spd_inverse_impl(v, impl)
    launch = _pallas.resolve_launch(target, interpret)
    if impl == "pallas" and launch.target == "tpu" and v.dtype == jnp.float64:
        raise ValueError(f"v has dtype {v.dtype}: float64 is not a TPU dtype; target='tpu' "
                         f"takes float32 (or use impl='xla').")
    if v.size == 0:  # an empty batch, or 0 × 0 matrices: nothing to invert
        return v
    return _inverse(v, impl, launch)


def resolve_spd_inverse_impl(v, impl: Impl) -> str:
    """``"pallas"`` or ``"xla"``: ``impl`` checked and ``"auto"`` resolved for ``v`` (anything
    with a ``dtype``): the kernel for float32 on a backend where it is measured
    (``MEASURED_ON_GPU`` / ``MEASURED_ON_TPU``), XLA otherwise, logging why under
    ``TENSORFACT_DEBUG_DISPATCH=1``.

    Example:
      >>> import jax.numpy as jnp
      >>> from tensorfact.kernels import resolve_spd_inverse_impl
      >>> resolve_spd_inverse_impl(jnp.eye(4), "auto")  # on a CPU
      'xla'
    """
    def dtype_reason(target):
        return None if v.dtype == jnp.float32 else f"v has dtype {v.dtype}, not float32"

    return _pallas.resolve_impl("spd_inverse", impl, dtype_reason)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _inverse(v, impl, launch):
    if impl == "xla":
        return _gauss_jordan_xla(v)
    batch = v.shape[:-2]
    flat = v.reshape((-1,) + v.shape[-2:])
    inverse = functools.partial(_gauss_jordan_pallas, launch=launch)
    return jax.vmap(inverse)(flat).reshape(v.shape) if batch else inverse(v)


@_inverse.defjvp
def _inverse_jvp(impl, launch, primals, tangents):
    (v,), (dv,) = primals, tangents
    inv = _inverse(v, impl, launch)
    return inv, -inv @ dv @ inv


def _gauss_jordan_xla(v):
    """Reference: Gauss–Jordan on ``[V | I]`` with one XLA update per pivot."""
    n = v.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(n, dtype=v.dtype), v.shape)
    a = jnp.concatenate([v, eye], axis=-1)
    for k in range(n):
        row = a[..., k:k + 1, :] / a[..., k:k + 1, k:k + 1]
        a = (a - a[..., :, k:k + 1] * row).at[..., k:k + 1, :].set(row)
    inverse = a[..., n:]
    return (inverse + jnp.swapaxes(inverse, -1, -2)) / 2


def _gauss_jordan_pallas(v, launch):
    """One Pallas program: ``v`` (padded to a power of two with an identity block) on chip."""
    n = v.shape[-1]
    size = max(16, pl.next_power_of_2(n))
    padded = jnp.eye(size, dtype=v.dtype).at[:n, :n].set(v)
    # inside shard_map the output varies over the input's mesh axes (kernels/_varying.py)
    out_shape, args = varying_out_shape((size, size), v.dtype, padded)
    inverse = _pallas.call(
        _gauss_jordan_kernel, launch=launch, num_warps=4, num_stages=1, out_shape=out_shape,
    )(*args)[:n, :n]
    return (inverse + inverse.T) / 2


def _gauss_jordan_kernel(v_ref, out_ref):
    a = v_ref[...]
    size = a.shape[0]
    rows = lax.broadcasted_iota(jnp.int32, (size, size), 0)
    cols = lax.broadcasted_iota(jnp.int32, (size, size), 1)
    zero = jnp.zeros((), a.dtype)
    inv = jnp.where(rows == cols, jnp.ones((), a.dtype), zero)
    for k in range(size):  # registers cannot be indexed: extract rows/columns by masked sums
        a_row = jnp.sum(jnp.where(rows == k, a, zero), axis=0, keepdims=True)
        inv_row = jnp.sum(jnp.where(rows == k, inv, zero), axis=0, keepdims=True)
        pivot = jnp.sum(jnp.where((rows == k) & (cols == k), a, zero))
        a_row, inv_row = a_row / pivot, inv_row / pivot
        col = jnp.sum(jnp.where(cols == k, a, zero), axis=1, keepdims=True)
        a = jnp.where(rows == k, a_row, a - col * a_row)
        inv = jnp.where(rows == k, inv_row, inv - col * inv_row)
    out_ref[...] = inv
