"""The base of every factorized tensor type.

A factorized tensor is an immutable container of arrays (its *leaves*: factors, cores,
weights) plus optional static metadata, registered as a JAX pytree so that it passes in and
out of ``jit``, ``vmap`` and ``grad`` like a tuple of arrays. Constructors check shapes and
raise a clear ``ValueError``; JAX's own reconstruction (``tree_unflatten``) skips the checks,
because inside transformations the leaves may be batched or placeholders.

Subclasses declare ``_leaves`` (attribute names holding arrays or tuples of arrays) and
``_static`` (hashable metadata), and implement ``shape``, ``rank``, ``to_dense`` and ``norm``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np



class FactorizedTensor:
    """Abstract base: a tensor held as factors, with dense-free ``norm`` and ``n_params``."""

    _leaves: ClassVar[tuple[str, ...]] = ()
    _static: ClassVar[tuple[str, ...]] = ()

    # -- pytree protocol -------------------------------------------------------------------
    def tree_flatten(self):
        """Splits into (leaves, static metadata) for JAX."""
        return (tuple(getattr(self, f) for f in self._leaves),
                tuple(getattr(self, f) for f in self._static))

    @classmethod
    def tree_unflatten(cls, static, leaves):
        """Rebuilds without running the constructor's checks (leaves may be tracers)."""
        obj = object.__new__(cls)
        for name, value in zip(cls._leaves, leaves):
            object.__setattr__(obj, name, value)
        for name, value in zip(cls._static, static):
            object.__setattr__(obj, name, value)
        return obj

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable; build a new one instead.")

    def _set(self, **fields):
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    # -- common interface ------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the dense tensor this represents."""
        raise NotImplementedError

    @property
    def ndim(self) -> int:
        """Number of modes of the dense tensor."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of entries of the dense tensor."""
        return math.prod(self.shape)

    @property
    def dtype(self):
        """Common dtype of the leaves."""
        return jnp.result_type(*jax.tree_util.tree_leaves(self))

    @property
    def rank(self):
        """The format's rank (an int for CP, a tuple for Tucker, ...)."""
        raise NotImplementedError

    @property
    def n_params(self) -> int:
        """Number of stored scalars (the sum of the leaves' sizes)."""
        return sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(self))

    @property
    def compression_ratio(self) -> float:
        """Dense size over stored size: how many times smaller the factorized form is."""
        return self.size / self.n_params

    def to_dense(self, *, precision="highest") -> jax.Array:
        """Reconstructs the full tensor."""
        raise NotImplementedError

    def norm(self, *, precision="highest") -> jax.Array:
        """Frobenius norm, computed from the factors without forming the dense tensor."""
        raise NotImplementedError

    def __repr__(self):
        leaves = ", ".join(
            f"{name}={_describe(getattr(self, name))}" for name in self._leaves)
        static = "".join(f", {name}={getattr(self, name)!r}" for name in self._static)
        return f"{type(self).__name__}({leaves}{static})"


class CoreSequence:
    """Mixin for formats held as a chain of ``cores`` (TT, TT-matrix, tensor ring): iterates,
    indexes and measures like the tuple of cores."""

    def __iter__(self):
        return iter(self.cores)

    def __len__(self):
        return len(self.cores)

    def __getitem__(self, k):
        return self.cores[k]


def _describe(value):
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_describe(v) for v in value) + "]"
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    return f"{dtype}{list(shape)}" if shape is not None else repr(value)


def as_leaf(value, name: str) -> jax.Array:
    """Converts a constructor argument to a JAX array, naming it in the error if it is not."""
    try:
        return jnp.asarray(value)
    except TypeError as err:
        raise TypeError(f"{name} must be an array, got {type(value).__name__}.") from err


def as_leaf_sequence(values, name: str, ndim: int, layout: str,
                     owner: str = "") -> tuple[jax.Array, ...]:
    """``values``, a non-empty sequence of arrays (not itself an array), as a tuple of
    ``ndim``-D JAX arrays; errors name ``name[k]`` (followed by ``owner``, e.g. " of a
    TTTensor") and the expected ``layout``, e.g. ``"(r_k, n_k, r_k+1)"``."""
    if (isinstance(values, (jax.Array, np.ndarray)) or not isinstance(values, Sequence)
            or not values):
        raise ValueError(f"{name} must be a non-empty sequence of {ndim}-D arrays, got "
                         f"{type(values).__name__}.")
    leaves = tuple(as_leaf(v, f"{name}[{k}]") for k, v in enumerate(values))
    for k, v in enumerate(leaves):
        if v.ndim != ndim:
            raise ValueError(f"{name}[{k}]{owner} must be {ndim}-D {layout}, got shape "
                             f"{tuple(v.shape)}.")
    return leaves

