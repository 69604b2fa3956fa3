"""Argument checks for the arrays of the tensor algebra and the kernels: tensors, factor
matrices, modes and shapes.

They sit below :mod:`tensorfact.kernels` and :mod:`tensorfact.algebra` (which both use them) and
beside :mod:`tensorfact._checks`, whose primitives they build on. Like those, they read only
static information (shapes, dtypes, Python values), so they raise the same errors eagerly and
under ``jax.jit``, and every error names the argument and its value.

Unlike the decompositions, which compute in float32 or float64, the algebra and the kernels
also serve the layers, so :func:`as_tensor` keeps bfloat16 and float16 arrays as they are.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from tensorfact._checks import as_float_array

__all__ = ["as_tensor", "check_mode", "check_index", "check_shape", "check_sequence",
           "check_factors"]


def as_tensor(x, name: str = "x", *, min_ndim: int = 0) -> jax.Array:
    """``x`` (a JAX or NumPy array, a nested list) as a real floating JAX array.

    Floating arrays keep their dtype (bfloat16 and float16 included); integers and booleans
    become float32, as in :func:`tensorfact._checks.as_float_array`; complex and non-numeric
    values are a ``TypeError`` naming ``name``.
    """
    return as_float_array(x, name, min_ndim=min_ndim, keep_low_floats=True)


def _as_int(value):
    """``value`` as a Python int, or None unless it is an integer (bools and floats are not)."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        return operator.index(value)
    except TypeError:  # floats, strings, arrays of several entries, tracers
        return None


def check_mode(mode, ndim: int, name: str = "mode", *, shape=None) -> int:
    """``mode`` as an index in ``[0, ndim)``; negative modes count from the end. A float, a
    bool, a sequence or an index out of range is a ``ValueError`` naming ``name`` (and
    ``shape``, the tensor's, when given)."""
    index = _as_int(mode)
    if index is None or not -ndim <= index < ndim:
        of = f" of shape {tuple(shape)}" if shape is not None else ""
        raise ValueError(f"{name} must be an int in [-{ndim}, {ndim}) (a mode{of}), got "
                         f"{mode!r}.")
    return index % ndim


def check_index(index, length: int, name: str):
    """``None``, or ``index`` as a position in a sequence of ``length`` entries (negative
    positions count from the end)."""
    if index is None:
        return None
    position = _as_int(index)
    if position is None or not -length <= position < length:
        raise ValueError(f"{name} must be None or an int in [-{length}, {length}) (a position "
                         f"in the {length} matrices), got {index!r}.")
    return position % length


def check_shape(shape, name: str = "shape") -> tuple[int, ...]:
    """``shape`` as a tuple of non-negative ints (floats such as ``2.0`` are refused)."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (Sequence, np.ndarray)):
        raise ValueError(f"{name} must be a sequence of non-negative ints, got {shape!r}.")
    sizes = tuple(_as_int(s) for s in shape)
    if any(s is None or s < 0 for s in sizes):
        raise ValueError(f"{name} must be a sequence of non-negative ints, got {tuple(shape)!r}.")
    return sizes


def check_sequence(items, name: str) -> list:
    """``items`` as a list: a list or tuple of arrays (a single array is refused, since
    iterating over its rows would silently mean something else)."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise TypeError(f"{name} must be a list or tuple of arrays, got "
                        f"{type(items).__name__}.")
    return list(items)


def check_factors(factors, shape, modes=None, *, skip=None, name: str = "factors",
                  tensor: str = "x") -> list:
    """Factor matrices ``(I_m, R)``, one per entry of ``modes`` (default: every mode of
    ``shape``), sharing the rank ``R``; returned as JAX arrays (lists and NumPy arrays
    accepted).

    ``shape[m]`` is the size of mode ``m`` of the tensor called ``tensor`` (``shape`` may be a
    mapping from mode labels to sizes). The entry at position ``skip`` is not read and is
    returned as given: the caller ignores it.
    """
    factors = check_sequence(factors, name)
    modes = tuple(range(len(shape))) if modes is None else tuple(modes)
    if len(factors) != len(modes):
        which = "mode" if len(modes) == len(shape) else f"mode of {modes}"
        raise ValueError(f"{name} must hold one matrix per {which} ({len(modes)}), got "
                         f"{len(factors)}.")
    for k, m in enumerate(modes):
        if k == skip:
            continue
        a = as_tensor(factors[k], f"{name}[{k}]")
        if a.ndim != 2:
            raise ValueError(f"{name}[{k}] must be 2-D (a matrix of shape ({shape[m]}, rank)), "
                             f"got shape {tuple(a.shape)}.")
        if a.shape[0] != shape[m]:
            sizes = "" if isinstance(shape, Mapping) else f" ({tensor} has shape {tuple(shape)})"
            raise ValueError(f"{name}[{k}] has {a.shape[0]} rows, but mode {m} of {tensor} has "
                             f"size {shape[m]}{sizes}.")
        factors[k] = a
    checked = [a for k, a in enumerate(factors) if k != skip]
    if len({a.shape[1] for a in checked}) > 1:
        raise ValueError(f"{name} must have a common number of columns (the rank), got shapes "
                         f"{[tuple(a.shape) for a in checked]}.")
    return factors

