"""Device meshes and sharded tensors: build a mesh, place a tensor on it, read its layout.

Decompositions of a tensor that outgrows one device run on JAX's own distributed engine: a
:class:`jax.sharding.Mesh` of devices with named axes, a :class:`jax.sharding.NamedSharding`
that splits modes of the tensor over those axes, and ``jax.shard_map`` with collectives
(``psum``, ``all_gather``, ``all_to_all``) inside. :func:`tensorfact.cp`,
:func:`tensorfact.tucker` and :func:`tensorfact.tt` called on an array laid out this way keep it
distributed (see their docstrings and the README's "Scaling" section)::

    import jax, tensorfact as tfa
    mesh = tfa.sharding.make_mesh((jax.device_count(),), ("data",))
    x = tfa.sharding.shard_tensor(x, mesh, ("data", None, None))   # mode 0 split over "data"
    approx = tfa.cp(x, 5)                                         # factors replicated

On many hosts, call ``jax.distributed.initialize()`` first; ``jax.devices()`` then lists the
devices of every host and the same code runs on each of them.

This module only reads shapes and layouts, so every layer above the algebra may import it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from tensorfact._checks import check_positive_int, is_traced

__all__ = ["make_mesh", "shard_tensor", "sharded_modes", "is_mode_sharded", "Mesh",
           "NamedSharding", "PartitionSpec"]


def make_mesh(shape=None, axis_names=("data",), *, devices=None) -> Mesh:
    """A device mesh: a checked wrapper over :func:`jax.make_mesh`.

    Args:
      shape: the number of devices along each mesh axis, e.g. ``(2, 4)``; ``None`` puts every
        device (of ``devices``) on a single axis. The product may be smaller than the number
        of devices: the first ``prod(shape)`` are used.
      axis_names: one distinct name per mesh axis (default a single ``"data"`` axis).
      devices: the devices to use (default ``jax.devices()``: on many hosts, after
        ``jax.distributed.initialize()``, the devices of every host).

    Returns:
      A :class:`jax.sharding.Mesh` whose axes are of type ``Auto`` (tensorfact places the
      collectives itself, inside ``shard_map``).

    Example:
      >>> import tensorfact as tfa
      >>> mesh = tfa.sharding.make_mesh((1,), ("data",))
      >>> dict(mesh.shape)
      {'data': 1}

    Raises:
      ValueError: for axis names that are not distinct strings, a shape that is not a sequence
        of positive ints with one entry per name, or more devices asked for than there are.
    """
    if isinstance(axis_names, str) or not isinstance(axis_names, Sequence) or not axis_names:
        raise ValueError(f"axis_names must be a non-empty sequence of strings, got "
                         f"{axis_names!r}.")
    axis_names = tuple(axis_names)
    if not all(isinstance(a, str) for a in axis_names) or len(set(axis_names)) != len(axis_names):
        raise ValueError(f"axis_names must be distinct strings, got {axis_names!r}.")
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must not be empty.")
    if shape is None:
        if len(axis_names) != 1:
            raise ValueError(f"shape=None puts every device on one axis; give a shape for the "
                             f"{len(axis_names)} axes {axis_names!r}.")
        shape = (len(devices),)
    if isinstance(shape, numbers.Integral) or not isinstance(shape, (Sequence, np.ndarray)):
        raise ValueError(f"shape must be a sequence of positive ints, got {shape!r}.")
    shape = tuple(check_positive_int(s, f"shape[{i}]") for i, s in enumerate(shape))
    if len(shape) != len(axis_names):
        raise ValueError(f"shape {shape} must have one entry per axis name {axis_names!r}.")
    if math.prod(shape) > len(devices):
        raise ValueError(f"a mesh of shape {shape} needs {math.prod(shape)} devices; only "
                         f"{len(devices)} are available.")
    auto = (jax.sharding.AxisType.Auto,) * len(shape)
    return jax.make_mesh(shape, axis_names, auto, devices=devices[:math.prod(shape)])


def _normalize_spec(spec, ndim: int, mesh: Mesh) -> PartitionSpec:
    """``spec`` as a PartitionSpec of at most ``ndim`` entries naming axes of ``mesh``."""
    if isinstance(spec, str) or not isinstance(spec, (PartitionSpec, Sequence)):
        raise ValueError(f"spec must be a PartitionSpec or a tuple with one entry per mode "
                         f"(None, an axis name or a tuple of axis names), got {spec!r}.")
    entries = tuple(spec)
    if len(entries) > ndim:
        raise ValueError(f"spec {spec!r} has {len(entries)} entries for a tensor with {ndim} "
                         "modes.")
    seen = set()
    for mode, entry in enumerate(entries):
        names = _entry_axes(entry)
        for name in names:
            if name not in mesh.axis_names:
                raise ValueError(f"spec names mesh axis {name!r} for mode {mode}, but the mesh "
                                 f"has axes {tuple(mesh.axis_names)!r}.")
            if name in seen:
                raise ValueError(f"spec uses mesh axis {name!r} for more than one mode: "
                                 f"{spec!r}.")
            seen.add(name)
    return PartitionSpec(*entries)


def _entry_axes(entry) -> tuple[str, ...]:
    """The mesh axes named by one PartitionSpec entry (None, a name, or a tuple of names)."""
    if entry is None:
        return ()
    if isinstance(entry, str):
        return (entry,)
    if isinstance(entry, (tuple, list)) and all(isinstance(a, str) for a in entry):
        return tuple(entry)
    raise ValueError(f"each spec entry must be None, a mesh axis name or a tuple of names, got "
                     f"{entry!r}.")


def shard_tensor(x, mesh: Mesh, spec) -> jax.Array:
    """Places ``x`` on ``mesh``, splitting the modes named in ``spec``.

    Args:
      x: an array (NumPy or JAX; on many hosts, every host passes the same full array, or
        build the global array with :func:`jax.make_array_from_callback` instead).
      mesh: a :class:`jax.sharding.Mesh`, e.g. from :func:`make_mesh`.
      spec: a :class:`jax.sharding.PartitionSpec` or a tuple with one entry per mode (missing
        trailing entries mean "not split"): ``None`` (replicated along that mode), a mesh axis
        name, or a tuple of names (the mode split over their product).

    Returns:
      ``x`` as a :class:`jax.Array` with ``NamedSharding(mesh, spec)``: each device holds one
      block of ``1/prod(axis sizes)`` of the tensor.

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> mesh = tfa.sharding.make_mesh((1,), ("data",))
      >>> x = tfa.sharding.shard_tensor(jnp.ones((4, 3)), mesh, ("data", None))
      >>> tuple(x.sharding.spec)
      ('data', None)

    Raises:
      ValueError: for a spec that names unknown or repeated mesh axes or has more entries than
        ``x`` has modes, and when a mode's size is not divisible by the number of devices it
        is split over (naming the mode, its size and the axis).
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh (see tensorfact.sharding.make_mesh), "
                        f"got {type(mesh).__name__}.")
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    spec = _normalize_spec(spec, len(x.shape), mesh)
    for mode, entry in enumerate(spec):
        axes = _entry_axes(entry)
        parts = math.prod(mesh.shape[a] for a in axes)
        if axes and x.shape[mode] % parts:
            raise ValueError(f"mode {mode} of size {x.shape[mode]} cannot be split evenly over "
                             f"mesh axis {entry!r} of size {parts} (shape {tuple(x.shape)}).")
    return jax.device_put(x, NamedSharding(mesh, spec))


def sharded_modes(x) -> dict[int, tuple[str, ...]]:
    """The modes of ``x`` that are split over mesh axes: ``{mode: (axis names)}``.

    Only a concrete :class:`jax.Array` with a :class:`NamedSharding` has a layout; anything
    else (NumPy arrays, single-device arrays, tracers inside ``jit``/``vmap``) gives ``{}``.
    Mesh axes of size 1 split nothing and are left out.

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> tfa.sharding.sharded_modes(jnp.ones((4, 3)))
      {}
    """
    if is_traced(x) or not isinstance(x, jax.Array):
        return {}
    sharding = getattr(x, "sharding", None)
    if not isinstance(sharding, NamedSharding):
        return {}
    out = {}
    for mode, entry in enumerate(tuple(sharding.spec)[:x.ndim]):
        axes = tuple(a for a in _entry_axes(entry) if sharding.mesh.shape[a] > 1)
        if axes:
            out[mode] = axes
    return out


def is_mode_sharded(x) -> bool:
    """True when ``x`` is a concrete array with at least one mode split over a mesh axis.

    Example:
      >>> import jax.numpy as jnp, tensorfact as tfa
      >>> mesh = tfa.sharding.make_mesh((1,), ("data",))
      >>> tfa.sharding.is_mode_sharded(tfa.sharding.shard_tensor(jnp.ones((4, 3)), mesh, ("data",)))
      False
    """
    return bool(sharded_modes(x))
