"""GaLore: any Optax transformation run on gradients projected into a low-rank subspace.

Zhao, Zhang, Chen, Wang, Anandkumar & Tian, "GaLore: Memory-efficient LLM training by gradient
low-rank projection", ICML 2024. For a selected parameter viewed as an ``a × b`` matrix with
gradient ``G`` (a convolution kernel or another N-D leaf as ``∏ shape[:-1] × shape[-1]``, the
last axis being the output features as in Flax), a projector ``P`` with ``r`` orthonormal
columns is taken from the SVD of ``G`` at step 0 and every ``update_proj_gap`` steps after:

    a ≥ b:  P = V_r (b × r),  R = G P (a × r),   update = α · N Pᵀ
    a < b:  P = U_r (a × r),  R = Pᵀ G (r × b),  update = α · P N

where ``N`` is what the inner transformation makes of ``R`` and ``α`` the ``scale``. The inner
transformation's state has the projected shape: for Adam, ``2·a·r`` numbers (``a ≥ b``) instead
of ``2·a·b``, plus the projector. Between refreshes its moments keep living in the old basis,
as in the paper. Parameters that are not selected reach the inner transformation unchanged.

The parameters handed to the inner transformation (for weight decay, say) are projected the same
way, so ``galore(optax.adamw(...))`` decays the part of each selected matrix that lies in the
current subspace; for decay of the whole matrix chain ``optax.add_decayed_weights`` outside.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from tensorfact._checks import (check_choice, check_key, check_positive_int,
                                check_positive_number)
from tensorfact.decomposition import svd

__all__ = ["GaLoreState", "galore"]

Projection = Literal["svd", "randomized"]


class GaLoreState(NamedTuple):
    """State of :func:`galore`: the step count, the projectors (a tree shaped like the
    parameters: ``(b, r)`` or ``(a, r)`` float32 arrays for the selected leaves, empty arrays
    for the others) and the inner transformation's state over the projected tree."""

    count: jax.Array
    projectors: Any
    inner_state: optax.OptState


def _matrix_shape(shape) -> tuple[int, int]:
    return (math.prod(shape[:-1]), shape[-1]) if len(shape) >= 2 else (0, 0)


def _projected_shape(shape, rank) -> tuple[int, int]:
    a, b = _matrix_shape(shape)
    return (a, rank) if a >= b else (rank, b)


def _projector_shape(shape, rank) -> tuple[int, int]:
    a, b = _matrix_shape(shape)
    return (b, rank) if a >= b else (a, rank)


def galore(inner: optax.GradientTransformation, *, rank: int, update_proj_gap: int = 200,
           scale: float = 0.25, proj: Projection = "svd", key=None,
           select=None) -> optax.GradientTransformationExtraArgs:
    """Wraps ``inner`` so that it runs on low-rank projections of the selected gradients
    (GaLore; the update rule is in the module docstring).

    The projector refresh is part of the compiled step: a ``lax.cond`` on the step count runs
    the SVD (:func:`tensorfact.svd`, exact or randomized) every ``update_proj_gap`` steps, with
    no round trip to the host.

    Args:
      inner: the Optax transformation to run in the subspace (``optax.adamw(1e-3)``, say).
      rank: ``r``, the subspace dimension (a positive int).
      update_proj_gap: ``T``: the projector is recomputed at steps ``0, T, 2T, …`` (200, the
        paper's default).
      scale: ``α > 0``, the factor on the back-projected update (0.25, the paper's default).
      proj: ``"svd"`` (exact, the paper's) or ``"randomized"`` (Halko et al.; needs ``key``,
        folded with the step count at each refresh).
      key: a ``jax.random`` key, for ``proj="randomized"`` only.
      select: which leaves to project: a callable ``leaf -> bool``, or a tree of bools shaped
        like the parameters. Default: every leaf of at least two dimensions whose matrix view
        has both sides of at least ``rank``.

    Returns:
      An Optax transformation (it works in ``optax.chain``, ``optax.multi_transform`` and
      ``nnx.Optimizer``) whose state is a :class:`GaLoreState`.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> from tensorfact.optim import galore
      >>> params = {"w": jnp.zeros((64, 32)), "b": jnp.zeros((32,))}
      >>> tx = galore(optax.adam(1e-2), rank=4)
      >>> state = tx.init(params)
      >>> state.inner_state[0].mu["w"].shape  # Adam's moments live in the 64 × 4 projection
      (64, 4)
      >>> grads = {"w": jax.random.normal(jax.random.key(0), (64, 32)), "b": jnp.ones(32)}
      >>> updates, state = tx.update(grads, state, params)
      >>> updates["w"].shape, int(jnp.linalg.matrix_rank(updates["w"]))
      ((64, 32), 4)
    """
    if not isinstance(inner, optax.GradientTransformation):
        raise TypeError(f"inner must be an optax.GradientTransformation, got "
                        f"{type(inner).__name__}.")
    rank = check_positive_int(rank, "rank")
    update_proj_gap = check_positive_int(update_proj_gap, "update_proj_gap")
    scale = check_positive_number(scale, "scale")
    check_choice(proj, Projection, "proj")
    if proj == "randomized":
        key = check_key(key, 'for proj="randomized"')
    elif key is not None:
        raise ValueError('key is only used with proj="randomized" (the exact SVD draws '
                         'nothing); leave it out.')
    inner = optax.with_extra_args_support(inner)

    def flags_of(tree):
        if select is None:
            def default(leaf):
                a, b = _matrix_shape(jnp.shape(leaf))
                return jnp.ndim(leaf) >= 2 and min(a, b) >= rank
            return jax.tree_util.tree_map(default, tree)
        if callable(select):
            return jax.tree_util.tree_map(lambda leaf: bool(select(leaf)), tree)
        return select

    def checked_flags(tree):
        flags = flags_of(tree)
        treedef = jax.tree_util.tree_structure(tree)
        try:
            flat = treedef.flatten_up_to(flags)
        except (ValueError, TypeError) as err:
            raise ValueError(f"select must be a callable or a tree of bools shaped like the "
                             f"parameters: {err}") from None
        for leaf, flag in zip(treedef.flatten_up_to(tree), flat):
            a, b = _matrix_shape(jnp.shape(leaf))
            if flag and min(a, b) < rank:
                raise ValueError(f"galore: a selected leaf of shape {tuple(jnp.shape(leaf))} "
                                 f"(a {a} × {b} matrix) is smaller than rank={rank}.")
        return treedef, [bool(f) for f in flat]

    def project(leaf, p, flag):
        """``R`` of a selected leaf (its matrix view projected by ``p``), else the leaf."""
        if not flag:
            return leaf
        a, b = _matrix_shape(leaf.shape)
        g = leaf.reshape(a, b).astype(jnp.float32)
        hi = lax.Precision.HIGHEST
        return jnp.matmul(g, p, precision=hi) if a >= b else jnp.matmul(p.T, g, precision=hi)

    def init_fn(params):
        treedef, flags = checked_flags(params)
        leaves = treedef.flatten_up_to(params)
        projectors = [jnp.zeros(_projector_shape(p.shape, rank), jnp.float32) if f
                      else jnp.zeros((0,), jnp.float32) for p, f in zip(leaves, flags)]
        projected = [jnp.zeros(_projected_shape(p.shape, rank), jnp.float32) if f else p
                     for p, f in zip(leaves, flags)]
        return GaLoreState(jnp.zeros((), jnp.int32), treedef.unflatten(projectors),
                           inner.init(treedef.unflatten(projected)))

    def fresh_projector(g, count):
        a, b = _matrix_shape(g.shape)
        m = g.reshape(a, b).astype(jnp.float32)
        m = lax.stop_gradient(m)
        if proj == "randomized":
            lr = svd(m, rank, method="randomized", key=jax.random.fold_in(key, count))
        else:
            lr = svd(m, rank)
        return lr.vt.T if a >= b else lr.u

    def update_fn(updates, state, params=None, **extra_args):
        treedef, flags = checked_flags(updates)
        grads = treedef.flatten_up_to(updates)
        old = treedef.flatten_up_to(state.projectors)
        refresh = state.count % update_proj_gap == 0
        projectors = [lax.cond(refresh, fresh_projector, lambda g, c, p=p: p, g, state.count)
                      if f else p for g, p, f in zip(grads, old, flags)]
        projected = treedef.unflatten([project(g, p, f)
                                       for g, p, f in zip(grads, projectors, flags)])
        projected_params = None
        if params is not None:
            projected_params = treedef.unflatten(
                [project(w, p, f) for w, p, f in
                 zip(treedef.flatten_up_to(params), projectors, flags)])
        inner_updates, inner_state = inner.update(projected, state.inner_state,
                                                  projected_params, **extra_args)
        out = []
        for g, n, p, f in zip(grads, treedef.flatten_up_to(inner_updates), projectors, flags):
            if not f:
                out.append(n)
                continue
            a, b = _matrix_shape(g.shape)
            hi = lax.Precision.HIGHEST
            full = jnp.matmul(n, p.T, precision=hi) if a >= b else jnp.matmul(p, n,
                                                                               precision=hi)
            out.append((scale * full).reshape(g.shape).astype(g.dtype))
        return (treedef.unflatten(out),
                GaLoreState(state.count + 1, treedef.unflatten(projectors), inner_state))

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
