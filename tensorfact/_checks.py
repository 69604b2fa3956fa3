"""Argument checks shared by every public function.

All checks run at trace time on static information (shapes, dtypes, Python values), so they
raise the same clear error eagerly and under ``jax.jit``. The one data-dependent check (NaN or
Inf in the input) is counted inside the compiled fit and reported after an eager call.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Literal, Union, get_args, get_origin

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(x) -> bool:
    """True when ``x`` is an abstract value inside a JAX transformation (jit, vmap, grad, ...)."""
    return isinstance(x, jax.core.Tracer)


def as_float_array(x, name: str, *, min_ndim: int = 0, nonempty: bool = False,
                   keep_low_floats: bool = False) -> jax.Array:
    """Converts ``x`` (an array, a NumPy array, a nested list) to a real floating JAX array:
    integers and booleans become float32, and so do bfloat16 and float16 unless
    ``keep_low_floats`` (the algebra and the kernels, which also serve the layers, keep them;
    the decompositions compute in float32 or float64). Complex and non-numeric values are a
    ``TypeError`` naming ``name``.

    ``nonempty=True`` (what every decomposition asks) refuses a zero-size mode with an error
    naming ``name`` and its shape.
    """
    if not hasattr(x, "shape"):
        try:
            x = np.asarray(x)
        except (TypeError, ValueError) as err:  # ragged lists, objects
            raise TypeError(f"{name} must be an array (or nested sequence of numbers), got "
                            f"{type(x).__name__}: {err}") from None
    if isinstance(x, np.ndarray) and not (np.issubdtype(x.dtype, np.number)
                                          or x.dtype == np.bool_):
        raise TypeError(f"{name} must be a numeric array, got dtype {x.dtype}.")
    dtype = jnp.result_type(x)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(f"{name} must be real, got dtype {dtype}.")
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
            or dtype == jnp.bool_):
        raise TypeError(f"{name} must be a numeric array, got dtype {dtype}.")
    if dtype not in (jnp.float32, jnp.float64) and not (
            keep_low_floats and jnp.issubdtype(dtype, jnp.floating)):
        dtype = jnp.float32
    x = jnp.asarray(x, dtype=dtype)
    if x.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimensions, got shape {tuple(x.shape)}."
        )
    if nonempty and x.size == 0:
        raise ValueError(f"{name} has a mode of size zero (shape {tuple(x.shape)}): there is "
                         "nothing to decompose.")
    return x


def as_matrix(m, name: str = "m", *, nonempty: bool = True) -> jax.Array:
    """``m`` as a real floating 2-D array, or a ``ValueError`` naming its shape (or a zero-size
    dimension, unless ``nonempty=False``)."""
    m = as_float_array(m, name)
    if m.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(m.shape)} (use jax.vmap "
                         "for a batch of matrices).")
    if nonempty and m.size == 0:
        raise ValueError(f"{name} has a dimension of size zero (shape {tuple(m.shape)}): there "
                         "is nothing to factorize.")
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


def finite_part(x, where=None):
    """``(x with its NaN/Inf entries set to 0, their count)``, counting only where ``where`` is
    True; traceable.

    Fits run on the finite part: LAPACK's SVD does not return on data holding Inf (it loops),
    so a fit must never hand it one. An eager call then raises (:func:`report_nonfinite`); under
    a transformation :func:`poison` turns the result into NaN, so bad input never yields a
    plausible-looking answer.
    """
    bad = ~jnp.isfinite(x)
    count = jnp.sum(bad if where is None else bad & where, dtype=jnp.int32)
    return jnp.where(bad, jnp.zeros((), x.dtype), x), count


def poison(result, count):
    """``result`` with every floating-point leaf NaN where ``count > 0`` (integer leaves, such
    as CUR's indices, are kept); traceable."""
    def leaf(a):
        if not jnp.issubdtype(jnp.result_type(a), jnp.inexact):
            return a
        return jnp.where(count > 0, jnp.asarray(jnp.nan, jnp.result_type(a)), a)

    return jax.tree_util.tree_map(leaf, result)


def report_nonfinite(count, name: str, *, maskable: bool = False) -> None:
    """Raises ``ValueError`` for a concrete non-zero :func:`count_nonfinite` result;
    ``maskable`` adds the hint to mark missing entries with ``mask`` (for fits that take one).

    Under a transformation the count is abstract and nothing is checked; see the README's
    note on ``jax.experimental.checkify``.
    """
    if is_traced(count):
        return
    bad = int(count)
    if bad:
        hint = " (mark missing entries with `mask` instead)" if maskable else ""
        raise ValueError(f"{name} contains {bad} NaN or Inf value(s); decompositions need finite "
                         f"input{hint}.")


def check_positive_int(value, name: str) -> int:
    """Returns ``value`` as an int, or raises if it is not a positive integer."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def check_nonneg_int(value, name: str) -> int:
    """``value`` as an int if it is a Python or NumPy integer >= 0 (not a bool); otherwise a
    ``ValueError`` naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
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
    """Returns ``mask`` as a boolean array of ``shape`` (1/True = observed), or None.

    Eagerly (a concrete mask) it must hold only 0/1 (or booleans) and observe at least one
    entry; a mask of weights (0.5, 2, −1, NaN) is refused rather than silently read as
    "observed". Under a transformation the values are unknown and are cast with ``!= 0``.
    """
    if mask is None:
        return None
    if not hasattr(mask, "shape"):
        mask = np.asarray(mask)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have the shape of the data {tuple(shape)}, "
                         f"got {tuple(mask.shape)}.")
    if is_traced(mask):
        return jnp.asarray(mask).astype(bool)
    values = np.asarray(mask)
    if values.dtype != np.bool_:
        if not (np.issubdtype(values.dtype, np.number)):
            raise TypeError(f"{name} must be a boolean or 0/1 array, got dtype {values.dtype}.")
        bad = ~((values == 0) | (values == 1))
        if bad.any():
            raise ValueError(f"{name} must hold only 0/1 (or True/False: 1 = observed), got "
                             f"{int(bad.sum())} other value(s), e.g. {values[bad].flat[0]!r}; "
                             "weighted fitting is not supported.")
    if values.size and not values.any():
        raise ValueError(f"{name} observes no entry (it is all False/0): there is nothing to "
                         "fit.")
    return jnp.asarray(values).astype(bool)


#: The option types of the public signatures, one definition each (``get_args`` lists the
#: values; :func:`check_choice` takes these aliases directly).
Init = Literal["svd", "random"]
Impl = Literal["auto", "pallas", "xla"]
Precision = Union[None, Literal["default", "high", "highest"], jax.lax.Precision]


def check_choice(value, choices, name: str):
    """Raises unless ``value`` is one of ``choices`` (a sequence of strings or a ``Literal``
    type alias such as :data:`Init`)."""
    if get_origin(choices) is Literal:
        choices = get_args(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}.")
    return value


def _check_real_scalar(value, name: str):
    if isinstance(value, (bool, np.bool_, str, bytes)) or not (np.isscalar(value)
                                                               or np.ndim(value) == 0):
        raise ValueError(f"{name} must be a real scalar, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real scalar, got {value!r}.") from None
    return number


def check_nonneg_number(value, name: str, *, allow_inf: bool = False):
    """Checks a scalar hyper-parameter is finite and >= 0 (NaN and Inf refused unless
    ``allow_inf``); traced values pass through."""
    if is_traced(value):
        return value
    number = _check_real_scalar(value, name)
    if not number >= 0 or (number == np.inf and not allow_inf):  # also catches NaN
        raise ValueError(f"{name} must be >= 0, got {value!r} (a finite number).")
    return value


def check_positive_number(value, name: str):
    """Checks a scalar hyper-parameter is finite and > 0; traced values pass through."""
    if is_traced(value):
        return value
    number = _check_real_scalar(value, name)
    if not (0 < number < np.inf):
        raise ValueError(f"{name} must be > 0, got {value!r} (a finite number).")
    return value


def check_optimizer_args(optimizer, learning_rate):
    """Gradient-descent fits take an Optax ``optimizer`` or a ``learning_rate``, never both."""
    if optimizer is not None and learning_rate is not None:
        raise ValueError("pass either optimizer or learning_rate, not both (got "
                         f"learning_rate={learning_rate!r}).")
    if learning_rate is not None:
        check_positive_number(learning_rate, "learning_rate")


def is_zero(value) -> bool:
    """True for a concrete scalar equal to 0 (a Python, NumPy or concrete JAX number)."""
    if is_traced(value) or isinstance(value, (bool, np.bool_)) or np.ndim(value) != 0:
        return False
    try:
        return float(value) == 0
    except (TypeError, ValueError):
        return False


def check_key(key, why: str):
    """Returns ``key`` if it is one ``jax.random`` key (a typed key from ``jax.random.key`` or
    a raw ``uint32[2]`` key from ``jax.random.PRNGKey``); otherwise raises an error that names
    ``key`` and says why it is needed."""
    hint = "pass key=jax.random.key(seed)"
    if key is None:
        raise ValueError(f"key is required {why}: {hint}.")
    if not hasattr(key, "dtype") or not hasattr(key, "shape"):
        raise TypeError(f"key must be a jax.random key, got {type(key).__name__} {key!r} "
                        f"(needed {why}): {hint}.")
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key must be a single key, got a batch of keys of shape "
                             f"{tuple(key.shape)} (needed {why}); map over keys with jax.vmap.")
        return key
    if key.dtype == jnp.uint32 and tuple(key.shape) == (2,):
        return key
    raise TypeError(f"key must be a jax.random key, got an array of dtype {key.dtype} and shape "
                    f"{tuple(key.shape)} (needed {why}): {hint}.")
