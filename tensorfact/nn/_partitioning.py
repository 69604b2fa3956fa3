"""Sharding annotations of the factorized layers' parameters (Flax's ``out_sharding``
Variable metadata): the ``partitioning=`` argument of :class:`~tensorfact.nn.FactorizedDense`
and :class:`~tensorfact.nn.TTEmbed`, checked against the layer's parameter shapes and the
current mesh before any array is drawn. Shared by the layers (public names in a private
module)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
from flax import nnx

__all__ = ["partition_specs", "param"]


def _spec_axes(entry, where):
    """The mesh axes named by one entry of a spec: None, a name or a tuple of names."""
    if entry is None:
        return ()
    if isinstance(entry, str):
        return (entry,)
    if isinstance(entry, tuple) and entry and all(isinstance(a, str) for a in entry):
        return entry
    raise ValueError(f"{where}: each entry must be None, a mesh axis name or a tuple of names, "
                     f"got {entry!r}.")


def _check_spec(spec, shape, where):
    """``spec`` as a PartitionSpec for an array of ``shape``; checked against the current mesh
    (``jax.set_mesh``) when there is one, else when Flax places the array."""
    if isinstance(spec, str) or not isinstance(spec, (tuple, jax.sharding.PartitionSpec)):
        raise ValueError(f"{where} must be a PartitionSpec or a tuple with one entry per axis "
                         f"(None, a mesh axis name or a tuple of names), got {spec!r}.")
    entries = tuple(spec)
    if len(entries) > len(shape):
        raise ValueError(f"{where} = {spec!r} has {len(entries)} entries for a parameter of "
                         f"shape {tuple(shape)}.")
    axes = [_spec_axes(e, where) for e in entries]
    flat = [a for names in axes for a in names]
    if len(set(flat)) != len(flat):
        raise ValueError(f"{where} = {spec!r} uses a mesh axis more than once.")
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
        for axis, names in enumerate(axes):
            for name in names:
                if name not in mesh.axis_names:
                    raise ValueError(f"{where} names mesh axis {name!r}, but the current mesh "
                                     f"has axes {tuple(mesh.axis_names)!r}.")
            parts = math.prod(mesh.shape[name] for name in names)
            if shape[axis] % parts:
                raise ValueError(f"{where} = {spec!r} splits axis {axis} of size {shape[axis]} "
                                 f"(parameter shape {tuple(shape)}) over {parts} devices "
                                 f"{names!r}; it must divide evenly.")
    return jax.sharding.PartitionSpec(*entries)


def partition_specs(partitioning, groups):
    """``{name: [PartitionSpec or None, one per array]}`` from a layer's ``partitioning``
    argument; ``groups`` lists ``(name, shapes)`` of the layer's parameters."""
    out = {name: [None] * len(shapes) for name, shapes in groups}
    if partitioning is None:
        return out
    if not isinstance(partitioning, Mapping):
        raise TypeError(f"partitioning must be a mapping of parameter name to PartitionSpec, "
                        f"got {type(partitioning).__name__}.")
    shapes_of = dict(groups)
    for name, value in partitioning.items():
        if name not in shapes_of:
            raise ValueError(f"partitioning names parameter {name!r}; this layer has "
                             f"{tuple(shapes_of)!r}.")
        shapes = shapes_of[name]
        if value is None:
            continue
        if isinstance(value, list):  # one spec per array of a list-valued parameter
            if len(value) != len(shapes):
                raise ValueError(f"partitioning[{name!r}] is a list of {len(value)} specs; "
                                 f"{name!r} holds {len(shapes)} arrays.")
            out[name] = [None if v is None else
                         _check_spec(v, shp, f"partitioning[{name!r}][{k}]")
                         for k, (v, shp) in enumerate(zip(value, shapes))]
        else:
            out[name] = [_check_spec(value, shp, f"partitioning[{name!r}]") for shp in shapes]
    return out


def param(value, spec):
    """An ``nnx.Param``, with ``out_sharding`` metadata when ``spec`` is set: Flax places it on
    the current mesh at once (its default eager sharding) and ``nnx.get_partition_spec`` reads
    the spec back."""
    return nnx.Param(value) if spec is None else nnx.Param(value, out_sharding=spec)
