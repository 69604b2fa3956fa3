"""The output type of a ``pallas_call`` inside ``jax.shard_map``: which mesh axes it varies over.

Inside ``jax.shard_map(..., check_vma=True)`` (the default) every value carries the set of
manual mesh axes it varies over, and ``pallas_call`` demands that set on its ``out_shape``: a
plain ``jax.ShapeDtypeStruct`` raises there. A kernel's output depends on all its inputs, so it
varies over the union of their axes. :func:`varying_out_shape` builds that ``out_shape`` and
casts every input to the union (``lax.pcast(..., to="varying")``: a type change, no data
moves), since Pallas's generic interpret mode replays the kernel body as ordinary primitives,
which reject operands of unequal varying axes. Outside ``shard_map`` the union is empty and
the annotation is ignored, so kernels may call it unconditionally.

The field was renamed between JAX versions: ``manual_axis_type`` (a
``jax.sharding.ManualAxisType``, read as ``jax.typeof(a).mat``) in JAX 0.10 and later,
``vma`` (a frozenset, read as ``jax.typeof(a).vma``) before. Both are handled; a JAX with
neither has no such check.
"""

from __future__ import annotations

import inspect

import jax
from jax import lax

__all__ = ["varying_axes", "varying_out_shape", "checks_varying"]

_SDS_PARAMS = inspect.signature(jax.ShapeDtypeStruct.__init__).parameters


def varying_axes(a) -> frozenset:
    """The manual mesh axes ``a`` varies over (empty outside ``shard_map``).

    Example:
      >>> import jax.numpy as jnp
      >>> varying_axes(jnp.ones(3))
      frozenset()
    """
    aval = jax.typeof(a)
    mat = getattr(aval, "mat", None)
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", frozenset()))


def _vary(a, axes):
    missing = tuple(sorted(axes - varying_axes(a)))
    if not missing:
        return a
    if hasattr(lax, "pcast"):
        return lax.pcast(a, missing, to="varying")
    return lax.pvary(a, missing)  # JAX before pcast


def varying_out_shape(shape, dtype, *arrays):
    """``(out_shape, arrays)``: a ``jax.ShapeDtypeStruct`` of ``shape`` and ``dtype`` that
    varies over the union of the mesh axes of ``arrays``, and ``arrays`` cast to vary over that
    union (each unchanged where it already does, and everywhere outside ``shard_map``).

    Example:
      >>> import jax.numpy as jnp
      >>> out, (x,) = varying_out_shape((2, 3), jnp.float32, jnp.ones(4))
      >>> out.shape, x.shape
      ((2, 3), (4,))
    """
    axes = frozenset().union(*(varying_axes(a) for a in arrays))
    arrays = tuple(_vary(a, axes) for a in arrays)
    if "manual_axis_type" in _SDS_PARAMS:
        kind = {"manual_axis_type": jax.sharding.ManualAxisType(varying=axes)}
    elif "vma" in _SDS_PARAMS:
        kind = {"vma": axes}
    else:  # a JAX without varying-axes types: nothing to annotate
        kind = {}
    return jax.ShapeDtypeStruct(tuple(shape), dtype, **kind), arrays


def checks_varying(launch) -> bool:
    """Whether a kernel launched as ``launch`` (a ``_pallas.Launch``) may run inside
    ``jax.shard_map(..., check_vma=True)``: compiled kernels (Triton, Mosaic) and the TPU
    interpret mode take the typed ``out_shape`` of :func:`varying_out_shape`; Pallas's generic
    interpret mode (``target="gpu"`` off a GPU) does not, since it replays the kernel as a
    ``scan`` whose carry drops the inputs' varying axes ("Scan carry input and output got
    mismatched varying manual axes", JAX 0.10), so a ``shard_map`` around it needs
    ``check_vma=False``.

    Example:
      >>> from tensorfact.kernels import _pallas
      >>> checks_varying(_pallas.Launch("tpu", True)), checks_varying(_pallas.Launch("gpu", True))
      (True, False)
    """
    return not (launch.target == "gpu" and launch.interpret)
