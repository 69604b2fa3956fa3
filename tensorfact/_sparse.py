"""Sparse tensors in coordinate form: the loader :func:`sparse_tensor`, the checks of a
``jax.experimental.sparse.BCOO`` argument, and the MTTKRP over the stored entries alone.

A sparse N-way tensor is a ``BCOO`` with ``N`` sparse dimensions (no batch or dense
dimensions): ``indices`` of shape ``(nnz, N)`` and ``data`` of shape ``(nnz,)``. Every entry not
stored is a zero. Nothing here forms the dense array; memory is ``O(nnz · R)``.

This module sits below :mod:`tensorfact.algebra` (whose :func:`~tensorfact.algebra.mttkrp`
dispatches here for a ``BCOO``) and beside :mod:`tensorfact._arrays`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse

from tensorfact._arrays import check_shape
from tensorfact._checks import as_float_array, is_traced

__all__ = ["sparse_tensor", "is_sparse", "check_sparse", "inside", "valid_data",
           "sparse_mttkrp", "gather_rows"]


def sparse_tensor(indices, values, shape) -> sparse.BCOO:
    """A sparse tensor of ``shape`` from coordinates: ``x[indices[k]] = values[k]``, every other
    entry zero.

    Repeated coordinates are **summed** (the convention of ``scipy.sparse.coo_array``, of
    pyttb's ``sptensor`` and of ``BCOO.todense``), so a list of observations can be loaded as
    it is. The result holds each coordinate once, in lexicographic order
    (``indices_sorted=True, unique_indices=True``), which the sparse CP fit then needs not
    re-establish; stored zeros are kept. ``x.indices`` and ``x.data`` are its coordinates and
    values: going back to COO needs no helper.

    ``indices`` must be concrete (NumPy or an eager JAX array: sorting and merging them decides
    the number of stored entries, a static shape). ``values`` may be traced (inside ``jit``,
    ``grad`` or ``vmap``); their finiteness is checked when they are concrete.

    Args:
      indices: integer array of shape ``(nnz, N)``, each row within ``shape``.
      values: real array of shape ``(nnz,)``, finite (float32 or float64 kept; integers and
        booleans become float32).
      shape: ``N`` positive ints.

    Returns:
      A ``jax.experimental.sparse.BCOO`` of ``shape`` with ``N`` sparse dimensions.

    Raises:
      ValueError: for a shape that is not a sequence of positive ints, indices that are not
        ``(nnz, len(shape))`` or fall outside ``shape``, values of the wrong length, or NaN/Inf
        in concrete values.
      TypeError: for non-integer or traced indices, or complex or non-numeric values.

    Example:
      >>> import tensorfact as tfa
      >>> x = tfa.sparse_tensor([[0, 1, 2], [1, 0, 0], [0, 1, 2]], [1.0, 2.0, 3.0], (2, 3, 4))
      >>> x.indices.tolist(), x.data.tolist()        # sorted, the repeat summed
      ([[0, 1, 2], [1, 0, 0]], [4.0, 2.0])
    """
    shape = check_shape(shape, "shape")
    if not shape or min(shape) < 1:
        raise ValueError(f"shape must be a non-empty sequence of positive ints, got {shape!r}.")
    if is_traced(indices):
        raise TypeError("indices must be concrete (a NumPy or eager JAX array), not traced: the "
                        "number of distinct coordinates fixes the stored size. Build the BCOO "
                        "outside jit, or trace only the values.")
    idx = np.asarray(indices)
    if idx.size == 0 and idx.ndim <= 2:  # an empty tensor: [] or shape (0, N)
        idx = idx.reshape(0, len(shape)).astype(np.int64)
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"indices must be an integer array, got dtype {idx.dtype}.")
    if idx.ndim != 2 or idx.shape[1] != len(shape):
        raise ValueError(f"indices must have shape (nnz, {len(shape)}) for a tensor of shape "
                         f"{shape}, got {idx.shape}.")
    bad = np.any((idx < 0) | (idx >= np.asarray(shape)), axis=1)
    if bad.any():
        first = int(np.argmax(bad))
        raise ValueError(f"indices hold {int(bad.sum())} coordinate(s) outside shape {shape}, "
                         f"e.g. row {first}: {idx[first].tolist()}.")
    values = as_float_array(values, "values")
    if values.shape != (idx.shape[0],):
        raise ValueError(f"values must have shape ({idx.shape[0]},), one per row of indices, "
                         f"got {tuple(values.shape)}.")
    if not is_traced(values):
        n_bad = int(np.sum(~np.isfinite(np.asarray(values))))
        if n_bad:
            raise ValueError(f"values contains {n_bad} NaN or Inf value(s); a sparse tensor "
                             "must be finite.")
    order = np.lexsort(idx.T[::-1])  # lexicographic: mode 0 first
    ordered = idx[order]
    new = np.ones(len(ordered), bool)
    new[1:] = np.any(ordered[1:] != ordered[:-1], axis=1)
    segment = np.cumsum(new) - 1
    n_unique = int(new.sum())
    index_dtype = np.int32 if max(shape) <= np.iinfo(np.int32).max else np.int64
    data = jax.ops.segment_sum(values[jnp.asarray(order)], jnp.asarray(segment),
                               num_segments=n_unique, indices_are_sorted=True)
    return sparse.BCOO((data, jnp.asarray(ordered[new], index_dtype)), shape=shape,
                       indices_sorted=True, unique_indices=True)


def is_sparse(x) -> bool:
    """True for a JAX sparse array (``BCOO``, ``BCSR``, ...): the argument takes the sparse
    path, where :func:`check_sparse` accepts a ``BCOO`` only."""
    return isinstance(x, sparse.JAXSparse)


def check_sparse(x, name: str = "x", *, min_ndim: int = 0, nonempty: bool = False,
                 keep_low_floats: bool = False) -> sparse.BCOO:
    """``x`` as a ``BCOO`` of real floating values with sparse dimensions only, or an error
    naming ``name``.

    The values are cast as :func:`tensorfact._checks.as_float_array` casts an array (integers
    and booleans to float32; bfloat16 and float16 too unless ``keep_low_floats``). A ``BCSR``
    or another sparse format is a ``TypeError`` (convert it with ``.to_bcoo()``); batch or
    dense dimensions are a ``ValueError`` (map over a batch with ``jax.vmap``).
    """
    if not isinstance(x, sparse.BCOO):
        raise TypeError(f"{name} must be a jax.experimental.sparse.BCOO (or a dense array), got "
                        f"{type(x).__name__}; convert it with {name}.to_bcoo().")
    if x.n_batch or x.n_dense:
        raise ValueError(f"{name} must be a BCOO with sparse dimensions only (n_batch=0, "
                         f"n_dense=0), got n_batch={x.n_batch}, n_dense={x.n_dense} for shape "
                         f"{tuple(x.shape)}: map over a batch with jax.vmap.")
    if not jnp.issubdtype(x.indices.dtype, jnp.integer):
        raise TypeError(f"{name}.indices must be integers, got dtype {x.indices.dtype}.")
    data = as_float_array(x.data, f"{name}.data", keep_low_floats=keep_low_floats)
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape "
                         f"{tuple(x.shape)}.")
    if nonempty and 0 in x.shape:
        raise ValueError(f"{name} has a mode of size zero (shape {tuple(x.shape)}): there is "
                         "nothing to decompose.")
    if data is x.data:
        return x
    return sparse.BCOO((data, x.indices), shape=x.shape, indices_sorted=x.indices_sorted,
                       unique_indices=x.unique_indices)


def inside(x: sparse.BCOO) -> jax.Array:
    """Which stored entries of ``x`` have coordinates within ``x.shape`` (a boolean ``(nse,)``):
    the others are a ``BCOO``'s padding, as ``sum_duplicates`` leaves it, which ``todense``
    ignores."""
    return jnp.all((x.indices >= 0) & (x.indices < jnp.asarray(x.shape, x.indices.dtype)),
                   axis=1)


def valid_data(x: sparse.BCOO) -> jax.Array:
    """``x.data`` with zeros at the padding entries (see :func:`inside`)."""
    return jnp.where(inside(x), x.data, jnp.zeros((), x.data.dtype))


def gather_rows(a, index) -> jax.Array:
    """``a[index]`` (rows), with out-of-range indices clamped (their values are zeroed by
    :func:`valid_data`, so whatever row they read contributes nothing)."""
    return jnp.take(a, index, axis=0, mode="clip")


def sparse_mttkrp(x: sparse.BCOO, factors, mode: int) -> jax.Array:
    """MTTKRP of a sparse ``x`` over its stored entries alone:

        M[i, :] = Σ_{k : i_mode(k) = i} v_k · ⊛_{m ≠ mode} A_m[i_m(k), :],

    the rows of the factors gathered at each entry's coordinates, multiplied elementwise, then
    summed into the rows of ``M`` by ``jax.ops.segment_sum`` (repeated coordinates add up, as
    in ``BCOO.todense``). Time and memory ``O(nnz · R · N)`` and ``O(nnz · R)``; the dense
    tensor is never formed. The products are elementwise, so there is no ``precision`` to
    choose. ``x`` and ``factors`` are assumed checked (see :func:`tensorfact.algebra.mttkrp`).
    """
    rank = factors[1 if mode == 0 else 0].shape[1]
    dtype = jnp.result_type(x.dtype, *[a.dtype for m, a in enumerate(factors) if m != mode])
    prod = jnp.broadcast_to(valid_data(x).astype(dtype)[:, None], (x.nse, rank))
    for m, a in enumerate(factors):
        if m != mode:
            prod = prod * gather_rows(a.astype(dtype), x.indices[:, m])
    return jax.ops.segment_sum(prod, x.indices[:, mode], num_segments=x.shape[mode],
                               indices_are_sorted=bool(mode == 0 and x.indices_sorted))

