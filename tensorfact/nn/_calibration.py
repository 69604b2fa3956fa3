"""What data-aware compression needs from calibration data, collected layer by layer.

For every selected ``nnx.Linear`` of a model, :func:`collect_inputs` accumulates the Gram matrix
``XᵀX`` of its inputs (``X`` the inputs flattened to rows of ``in`` features), the sum of their
absolute values and their number, in float32 over all batches, without keeping any activation:
memory is one ``in × in`` matrix per layer. It works by running a copy of the model in which
each selected layer is wrapped by a recorder (the model itself is not touched), in one compiled
step per batch shape. :func:`collect_fisher` accumulates the squared gradients of a loss with
respect to the selected kernels (the diagonal empirical Fisher information).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

__all__ = ["InputStats", "collect_inputs", "collect_fisher", "path_name", "node_at",
           "replace_at"]


class InputStats(NamedTuple):
    """Statistics of one layer's inputs over the calibration data: ``gram = XᵀX``
    (``in × in``), ``abs_sum = Σ_rows |X|`` (``in``) and ``count``, the number of rows."""

    gram: jax.Array
    abs_sum: jax.Array
    count: jax.Array


class _Statistic(nnx.Variable):
    """Accumulated calibration statistics (not parameters: no optimizer sees them)."""


def path_name(path) -> str:
    return "/".join(map(str, path)) or "<root>"


def node_at(model, path):
    node = model
    for key in path:
        node = node[key] if isinstance(key, int) else getattr(node, key)
    return node


def _state_at(state, path):
    for key in path:
        state = state[key]
    return state


def replace_at(model, path, new):
    """``model`` with the node at graph ``path`` replaced by ``new`` (in place; for the root,
    ``new`` itself)."""
    if not path:
        return new
    parent = node_at(model, path[:-1])
    if isinstance(path[-1], int):
        parent[path[-1]] = new
    else:
        setattr(parent, path[-1], new)
    return model


class _Recorder(nnx.Module):
    """Wraps a layer: adds its inputs' statistics to its variables, then calls it."""

    def __init__(self, layer, name: str):
        self.layer = layer
        self.name = name
        d = layer.kernel.shape[0]
        self.gram = _Statistic(jnp.zeros((d, d), jnp.float32))
        self.abs_sum = _Statistic(jnp.zeros((d,), jnp.float32))
        self.count = _Statistic(jnp.zeros((), jnp.float32))

    def __call__(self, x):
        d = self.gram.shape[0]
        if x.shape[-1] != d:
            raise ValueError(f"layer {self.name} takes inputs with {d} features (last axis); the "
                             f"calibration batch gives it shape {tuple(x.shape)}.")
        rows = jnp.reshape(x, (-1, d)).astype(jnp.float32)
        self.gram[...] = self.gram[...] + jnp.matmul(rows.T, rows,
                                                     precision=lax.Precision.HIGHEST)
        self.abs_sum[...] = self.abs_sum[...] + jnp.sum(jnp.abs(rows), axis=0)
        self.count[...] = self.count[...] + rows.shape[0]
        return self.layer(x)


def _batches(calibration, desc: str, progress: bool):
    if not hasattr(calibration, "__iter__"):
        raise TypeError(f"calibration must be an iterable of input batches, got "
                        f"{type(calibration).__name__}.")
    if progress:
        from tqdm.auto import tqdm
        return tqdm(calibration, desc=desc, leave=False)
    return calibration


def collect_inputs(model: nnx.Module, paths, calibration, *, call: Callable | None = None,
                   progress: bool = True) -> dict[tuple, InputStats]:
    """:class:`InputStats` of the inputs of the layers at ``paths`` (``nnx.Linear`` layers of
    ``model``) over the batches of ``calibration``, each run as ``call(model, batch)``
    (default ``model(batch)``; a loss function of the model and a batch works too)."""
    call = (lambda m, batch: m(batch)) if call is None else call
    paths = [tuple(p) for p in paths]
    probe = nnx.clone(model)
    for path in paths:
        probe = replace_at(probe, path, _Recorder(node_at(probe, path), path_name(path)))

    @nnx.jit
    def run(probe, batch):
        call(probe, batch)

    n = 0
    for batch in _batches(calibration, "calibration", progress):
        run(probe, batch)
        n += 1
    if n == 0:
        raise ValueError("calibration holds no batch.")
    out = {}
    for path in paths:
        rec = node_at(probe, path)
        if not bool(jnp.all(jnp.isfinite(rec.gram[...]))):
            raise ValueError(f"the calibration inputs of layer {path_name(path)} hold NaN or Inf "
                             "(or overflow float32 in XᵀX).")
        out[path] = InputStats(rec.gram[...], rec.abs_sum[...], rec.count[...])
    return out


def collect_fisher(model: nnx.Module, paths, calibration, loss_fn: Callable, *,
                   progress: bool = True) -> dict[tuple, jax.Array]:
    """``Σ_batches (∂ loss_fn(model, batch) / ∂W)²`` for the kernel ``W`` of each layer at
    ``paths``: the diagonal empirical Fisher information (Hsu et al., ICLR 2022)."""
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a callable (model, batch) -> scalar loss, got "
                        f"{type(loss_fn).__name__}.")
    paths = [tuple(p) for p in paths]

    @nnx.jit
    def squared(model, batch):
        grads = nnx.grad(loss_fn)(model, batch)
        return [jnp.square(_state_at(grads, path)["kernel"][...].astype(jnp.float32))
                for path in paths]

    sums, n = None, 0
    for batch in _batches(calibration, "fisher", progress):
        sq = squared(model, batch)
        sums = sq if sums is None else [a + b for a, b in zip(sums, sq)]
        n += 1
    if n == 0:
        raise ValueError("calibration holds no batch.")
    return dict(zip(paths, sums))
