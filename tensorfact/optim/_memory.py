"""How many bytes an optimizer state holds."""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["state_bytes"]


def _leaf_bytes(leaf) -> int:
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):  # arrays and ShapeDtypeStructs
        return int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    if isinstance(leaf, (bool, int, float, complex, np.generic)):
        return np.asarray(leaf).nbytes
    raise TypeError(f"opt_state holds a leaf of type {type(leaf).__name__} whose size is not "
                    "known; state_bytes counts arrays and Python scalars.")


def state_bytes(opt_state, *, per_leaf: bool = False):
    """The bytes held by the arrays of an optimizer state (any pytree: an Optax state, an
    ``nnx.Optimizer``'s ``opt_state``, the result of ``jax.eval_shape(tx.init, params)``).

    Sizes come from shapes and dtypes (``size × itemsize``), so a state that was never
    allocated (a ``ShapeDtypeStruct``) is measured as well, and a sharded array counts once,
    whatever its layout.

    Args:
      opt_state: the state.
      per_leaf: return ``{path: bytes}`` for every leaf (paths as ``jax.tree_util.keystr``
        writes them) instead of the total.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from tensorfact.optim import state_bytes
      >>> params = {"w": jnp.zeros((100, 10))}
      >>> state_bytes(optax.adam(1e-3).init(params))  # two moments of 1000 float32 + a count
      8004
    """
    leaves = jax.tree_util.tree_flatten_with_path(opt_state)[0]
    sizes = {jax.tree_util.keystr(path): _leaf_bytes(leaf) for path, leaf in leaves}
    return sizes if per_leaf else sum(sizes.values())
