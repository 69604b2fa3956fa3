"""Argument checks shared by every public function.

All checks run at trace time on static information (shapes, dtypes, Python values), so they
raise the same clear error eagerly and under ``jax.jit``. The one data-dependent check (NaN or
Inf in the input) is counted inside the compiled fit and reported after an eager call.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(x) -> bool:
    """True when ``x`` is an abstract value inside a JAX transformation (jit, vmap, grad, ...)."""
    return isinstance(x, jax.core.Tracer)


def as_float_array(x, name: str, *, min_ndim: int = 0) -> jax.Array:
    """Converts ``x`` to a real floating JAX array (integers and low floats become float32)."""
    if not hasattr(x, "shape"):
        x = np.asarray(x)
    dtype = jnp.result_type(x)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(f"{name} must be real, got dtype {dtype}.")
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
            or dtype == jnp.bool_):
        raise TypeError(f"{name} must be a numeric array, got dtype {dtype}.")
    if dtype not in (jnp.float32, jnp.float64):
        dtype = jnp.float32 if dtype != jnp.float64 else dtype
    x = jnp.asarray(x, dtype=dtype)
    if x.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimensions, got shape {tuple(x.shape)}."
        )
    return x


def as_matrix(m, name: str = "m") -> jax.Array:
    """``m`` as a real floating 2-D array, or a ``ValueError`` naming its shape."""
    m = as_float_array(m, name)
    if m.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(m.shape)} (use jax.vmap "
                         "for a batch of matrices).")
    return m


def count_nonfinite(x, where=None) -> jax.Array:
    """Number of NaN/Inf entries of ``x`` (among those where ``where`` is True); traceable.

    Fits compute this inside their compiled program, where XLA fuses it with the first pass
    over the data, and report it with :func:`report_nonfinite` after the call.
    """
    bad = ~jnp.isfinite(x)
    if where is not None:
        bad = bad & where
    return jnp.sum(bad, dtype=jnp.int32)


def report_nonfinite(count, name: str) -> None:
    """Raises ``ValueError`` for a concrete non-zero :func:`count_nonfinite` result.

    Under a transformation the count is abstract and nothing is checked; see the README's
    note on ``jax.experimental.checkify``.
    """
    if is_traced(count):
        return
    bad = int(count)
    if bad:
        raise ValueError(f"{name} contains {bad} NaN or Inf value(s); decompositions need finite "
                         "input (mark missing entries with `mask` instead).")


def check_positive_int(value, name: str) -> int:
    """Returns ``value`` as an int, or raises if it is not a positive integer."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def check_modes(modes, ndim: int, name: str = "modes") -> tuple[int, ...]:
    """Normalises a sequence of (possibly negative) mode indices, rejecting repeats."""
    if isinstance(modes, numbers.Integral):
        modes = (modes,)
    out = []
    for m in modes:
        if isinstance(m, bool) or not isinstance(m, numbers.Integral) or not -ndim <= m < ndim:
            raise ValueError(f"{name} must hold mode indices in [-{ndim}, {ndim}), got {modes!r}.")
        out.append(int(m) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{name} must not repeat a mode, got {modes!r}.")
    if not out:
        raise ValueError(f"{name} must name at least one mode, got {modes!r}.")
    return tuple(out)


def check_ranks(ranks, shape: Sequence[int], name: str = "ranks", modes=None) -> tuple[int, ...]:
    """Validates one rank per decomposed mode (an int means the same rank for every one).

    ``modes`` lists the decomposed modes of ``shape`` (default: all), so that messages name
    the real mode and the full shape.
    """
    modes = tuple(range(len(shape))) if modes is None else tuple(modes)
    if isinstance(ranks, numbers.Integral) and not isinstance(ranks, bool):
        ranks = (ranks,) * len(modes)
    if not isinstance(ranks, Sequence) and not isinstance(ranks, np.ndarray):
        raise ValueError(f"{name} must be an int or a sequence of ints, got {ranks!r}.")
    ranks = tuple(ranks)
    if len(ranks) != len(modes):
        raise ValueError(
            f"{name} must have one entry per decomposed mode ({len(modes)}: modes {modes} of "
            f"shape {tuple(shape)}), got {len(ranks)}: {ranks!r}."
        )
    out = []
    for i, (r, m) in enumerate(zip(ranks, modes)):
        r = check_positive_int(r, f"{name}[{i}]")
        if r > shape[m]:
            raise ValueError(
                f"{name}[{i}] = {r} is larger than mode {m} of size {shape[m]} "
                f"(shape {tuple(shape)})."
            )
        out.append(r)
    return tuple(out)


def check_mask(mask, shape, name: str = "mask"):
    """Returns ``mask`` as a boolean array of ``shape`` (1/True = observed), or None."""
    if mask is None:
        return None
    if not hasattr(mask, "shape"):
        mask = np.asarray(mask)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have the shape of the data {tuple(shape)}, "
                         f"got {tuple(mask.shape)}.")
    return jnp.asarray(mask).astype(bool)


def check_choice(value, choices, name: str):
    """Raises unless ``value`` is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}.")
    return value


def check_nonneg_number(value, name: str):
    """Checks a Python scalar hyper-parameter is >= 0 (traced values pass through)."""
    if is_traced(value):
        return value
    if not np.isscalar(value) and np.ndim(value) != 0:
        raise ValueError(f"{name} must be a scalar, got {value!r}.")
    if not float(value) >= 0:  # also catches NaN
        raise ValueError(f"{name} must be >= 0, got {value!r}.")
    return value


def check_optimizer_args(optimizer, learning_rate):
    """Gradient-descent fits take an Optax ``optimizer`` or a ``learning_rate``, never both."""
    if optimizer is not None and learning_rate is not None:
        raise ValueError("pass either optimizer or learning_rate, not both (got "
                         f"learning_rate={learning_rate!r}).")
    if learning_rate is not None:
        check_nonneg_number(learning_rate, "learning_rate")


def require_key(key, why: str):
    """Raises when a random key is needed but missing."""
    if key is None:
        raise ValueError(f"key is required {why}: pass key=jax.random.key(seed).")
    return key
