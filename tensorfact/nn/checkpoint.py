"""Saving and restoring Flax NNX models (factorized layers, adapters, ...) with Orbax.

Following Flax NNX's checkpointing guide, a model is split into its static graph definition and
its state (``nnx.split``); only the state, a pytree of arrays, goes to disk through
``orbax.checkpoint.StandardCheckpointer``. Restoring needs a model of the same structure to take
the graph definition and the shapes from: pass a model (an abstract one from ``nnx.eval_shape``
costs no memory) or a function that builds one, which is then run under ``nnx.eval_shape``.

Orbax is an optional dependency: ``pip install tensorfact[checkpoint]``.
"""

from __future__ import annotations

import os

import jax
from flax import nnx

__all__ = ["save", "restore"]


def _orbax():
    try:
        import orbax.checkpoint as ocp
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("tensorfact.nn.checkpoint needs orbax-checkpoint: install it with "
                          "`pip install tensorfact[checkpoint]` (or `pip install "
                          "orbax-checkpoint`).") from err
    return ocp


def _path(path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}.")
    return os.path.abspath(os.fspath(path))  # Orbax wants absolute paths


def save(path, model: nnx.Module, *, overwrite: bool = False) -> None:
    """Writes ``model``'s state (every ``nnx.Variable``: parameters, adapter parameters,
    statistics) to the directory ``path`` with Orbax, and waits until it is on disk.

    Args:
      path: the checkpoint directory (made absolute; it must not exist unless
        ``overwrite=True``).
      model: an ``nnx.Module``.
      overwrite: replace an existing checkpoint at ``path``.

    Example:
      >>> import tempfile, os, jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import FactorizedDense, checkpoint
      >>> make = lambda: FactorizedDense(8, 6, rank=2, rngs=nnx.Rngs(0))
      >>> layer = make()
      >>> path = os.path.join(tempfile.mkdtemp(), "ckpt")
      >>> checkpoint.save(path, layer)
      >>> restored = checkpoint.restore(path, make)
      >>> bool((restored(jnp.ones((1, 8))) == layer(jnp.ones((1, 8)))).all())
      True
    """
    ocp = _orbax()
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be an nnx.Module, got {type(model).__name__}.")
    path = _path(path)
    _, state = nnx.split(model)
    checkpointer = ocp.StandardCheckpointer()
    try:
        checkpointer.save(path, state, force=bool(overwrite))
        checkpointer.wait_until_finished()
    finally:
        checkpointer.close()


def restore(path, abstract_model_or_factory):
    """The model saved at ``path`` by :func:`save`.

    Args:
      path: the checkpoint directory.
      abstract_model_or_factory: an ``nnx.Module`` of the saved model's structure (its values
        are not used: ``nnx.eval_shape(lambda: Model(...))`` gives one without allocating), or
        a function of no arguments that builds one (run under ``nnx.eval_shape``).

    Returns:
      A new model with the structure of the template and the saved values.

    Raises:
      ValueError: naming the parameter path and both shapes when the checkpoint does not fit
        the template (a parameter of another shape, missing or extra parameters), before
        anything is read.

    Example:
      >>> import tempfile, os
      >>> from flax import nnx
      >>> from tensorfact.nn import TTEmbed, checkpoint
      >>> path = os.path.join(tempfile.mkdtemp(), "emb")
      >>> checkpoint.save(path, TTEmbed(64, 8, rank=2, rngs=nnx.Rngs(0)))
      >>> abstract = nnx.eval_shape(lambda: TTEmbed(64, 8, rank=2, rngs=nnx.Rngs(0)))
      >>> checkpoint.restore(path, abstract).rank
      (1, 2, 2, 1)
    """
    ocp = _orbax()
    path = _path(path)
    template = abstract_model_or_factory
    if not isinstance(template, nnx.Module):
        if not callable(template):
            raise TypeError("abstract_model_or_factory must be an nnx.Module or a function "
                            f"that returns one, got {type(template).__name__}.")
        template = nnx.eval_shape(template)
        if not isinstance(template, nnx.Module):
            raise TypeError(f"abstract_model_or_factory() must return an nnx.Module, got "
                            f"{type(template).__name__}.")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint at path = {path!r}.")
    graphdef, abstract_state = nnx.split(template)
    checkpointer = ocp.StandardCheckpointer()
    try:
        _check_layout(checkpointer, path, abstract_state)
        state = checkpointer.restore(path, abstract_state)
    finally:
        checkpointer.close()
    return nnx.merge(graphdef, state)


def _name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _check_layout(checkpointer, path, abstract_state):
    """Compares the arrays saved at ``path`` (from Orbax's metadata) with those the template
    expects, so that a mismatch names the parameter instead of surfacing as a TensorStore
    error; skipped when the metadata cannot be read."""
    try:
        meta = checkpointer.metadata(path)
        tree = getattr(getattr(meta, "item_metadata", meta), "tree")
    except Exception:  # noqa: BLE001 - an older layout: Orbax's own checks still apply
        return
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda v: hasattr(v, "shape"))[0]
    saved = {}
    for keys, leaf in leaves:
        names = tuple(_name(k) for k in keys)
        saved[names[:-1] if names and names[-1] == "value" else names] = tuple(leaf.shape)
    expected = {tuple(str(k) for k in keys): tuple(var.get_value().shape)
                for keys, var in nnx.to_flat_state(abstract_state)}
    problems = []
    for names, shape in expected.items():
        where = "/".join(names)
        if names not in saved:
            problems.append(f"parameter {where!r} of the model (shape {shape}) is not in the "
                            "checkpoint")
        elif saved[names] != shape:
            problems.append(f"parameter {where!r} has shape {saved[names]} in the checkpoint "
                            f"but {shape} in the model")
    problems += [f"the checkpoint holds {'/'.join(names)!r} (shape {shape}), which the model "
                 "does not have" for names, shape in saved.items() if names not in expected]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"the checkpoint at path = {path!r} does not fit the model: "
                         + "; ".join(problems[:5]) + more + ".")
