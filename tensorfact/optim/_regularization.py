"""Regularisation and rank monitoring for training: proximal steps, penalties, tensor dropout
and the stable-rank monitor (see :mod:`tensorfact.optim`)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from tensorfact._checks import (Precision, check_key, check_nonneg_number, check_positive_int,
                                check_positive_number, is_traced)
from tensorfact._numerics import resolve_precision
from tensorfact.ranks import stable_rank
from tensorfact.tensors._cp import CPTensor
from tensorfact.tensors._tt import TTMatrix, TTTensor
from tensorfact.tensors._tucker import TuckerTensor

__all__ = ["ProximalState", "proximal_nuclear", "proximal_l1", "nuclear_norm", "l1_penalty",
           "tensor_dropout", "layer_stable_ranks", "StableRankState", "stable_rank_monitor",
           "FactorizationSuggestion", "suggest_factorization"]


class ProximalState(NamedTuple):
    """State of the proximal transforms: the step count (indexes a learning-rate schedule)."""

    count: jax.Array


def _check_learning_rate(learning_rate):
    """A finite ``η > 0`` or an Optax schedule (a callable of the step count)."""
    if callable(learning_rate):
        return learning_rate
    return check_positive_number(learning_rate, "learning_rate")


def _default_mask(ndim_ok):
    return lambda params: jax.tree_util.tree_map(lambda p: ndim_ok(jnp.ndim(p)), params)


def _proximal(prox, lam, learning_rate, mask, name):
    """A transform mapping ``u`` to ``prox_{η λ}(p + u) − p`` on the leaves selected by mask."""
    lam = check_nonneg_number(lam, "lam")
    learning_rate = _check_learning_rate(learning_rate)

    def init_fn(params):
        del params
        return ProximalState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(f"{name} needs the parameters: call "
                             "update(updates, state, params) (optax.apply_updates of a "
                             "proximal step depends on where the step starts).")
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate

        def one(u, p):
            # in float32 at least: LAPACK has no bfloat16/float16 SVD, and a threshold of
            # ηλ rounded to 8 bits would move every singular value by up to 0.4%
            p = jnp.asarray(p)
            work = jnp.promote_types(p.dtype, jnp.float32)
            start = p.astype(work)
            moved = start + u.astype(work)
            return (prox(moved, jnp.asarray(lr * lam, work)) - start).astype(u.dtype)

        new = jax.tree_util.tree_map(one, updates, params)
        return new, ProximalState(count=optax.safe_increment(state.count))

    return optax.masked(optax.GradientTransformation(init_fn, update_fn), mask)


def proximal_nuclear(lam, learning_rate, *, mask=None, precision: Precision = "highest"
                     ) -> optax.GradientTransformationExtraArgs:
    """Proximal step of ``λ Σ_W ‖W‖_*`` (nuclear norms of the selected matrices), as an Optax
    transform chained after the gradient step.

    With the incoming update ``u`` (e.g. ``−η ∇f(W)`` from ``optax.sgd(η)``) the transform
    returns ``u' = SVT_{ηλ}(W + u) − W``, so ``optax.apply_updates`` lands on the
    proximal-gradient iterate (Parikh & Boyd, "Proximal Algorithms", Found. Trends Optim.
    2014, §4.2)

        W⁺ = SVT_{ηλ}(W − η ∇f(W)),   SVT_τ(X) = U max(Σ − τ, 0) Vᵀ   for X = U Σ Vᵀ,

    the singular value thresholding operator, proximal map of ``τ‖·‖_*`` (Cai, Candès & Shen,
    "A singular value thresholding algorithm for matrix completion", SIAM J. Optim. 2010).
    Chain it **last** (after momentum, Adam, clipping, ...): it must see the final step.

    Args:
      lam: the penalty weight ``λ ≥ 0`` (finite).
      learning_rate: the step size ``η > 0`` (finite) of the preceding optimizer, or an Optax
        schedule (the transform counts steps itself, in sync with ``optax.sgd``'s schedule).
      mask: which leaves to threshold, as in ``optax.masked`` (a pytree of bools or a callable
        of the params). Default: every 2-D leaf; other leaves pass through unchanged. Selected
        leaves must be 2-D.
      precision: matmul precision of the reconstruction (``"highest"`` by default: full
        float32; ``None``: JAX's default).

    ``update`` needs ``params`` and raises ``ValueError`` without them. The SVD runs in float32
    for bfloat16 and float16 leaves (and the step is cast back). State: :class:`ProximalState`
    (wrapped by ``optax.masked``).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(optax.sgd(0.1), proximal_nuclear(1.0, 0.1))
      >>> w = jnp.diag(jnp.array([3.0, 0.05]))
      >>> state = tx.init(w)
      >>> u, state = tx.update(jnp.zeros_like(w), state, w)
      >>> [round(float(v), 4) for v in jnp.diag(optax.apply_updates(w, u))]  # SVT, τ = 0.1
      [2.9, 0.0]
    """
    hp = resolve_precision(precision)

    def svt(x, tau):
        if x.ndim != 2:
            raise ValueError(f"proximal_nuclear thresholds 2-D leaves; a leaf selected by mask "
                             f"has shape {tuple(x.shape)}.")
        u, s, vt = jnp.linalg.svd(x, full_matrices=False)
        return jnp.matmul(u * jnp.maximum(s - tau, 0), vt, precision=hp)

    mask = _default_mask(lambda n: n == 2) if mask is None else mask
    return _proximal(svt, lam, learning_rate, mask, "proximal_nuclear")


def proximal_l1(lam, learning_rate, *, mask=None) -> optax.GradientTransformationExtraArgs:
    """Proximal step of ``λ ‖θ‖₁`` (lasso; on CP weight vectors, the tensor lasso that prunes
    rank-1 components), chained after the gradient step.

    Returns ``u' = S_{ηλ}(θ + u) − θ`` so that the new parameters are the ISTA iterate
    (Parikh & Boyd, "Proximal Algorithms", Found. Trends Optim. 2014, §6.5.2)::

        θ⁺ = S_{ηλ}(θ − η ∇f(θ)),   S_τ(x) = sign(x) max(|x| − τ, 0)   (entrywise).

    Args:
      lam: the penalty weight ``λ ≥ 0`` (finite).
      learning_rate: the step size ``η > 0`` (finite) of the preceding optimizer, or an Optax
        schedule.
      mask: which leaves to threshold, as in ``optax.masked`` (default: all). For the tensor
        lasso select the CP weight vectors, e.g.
        ``mask=lambda p: jax.tree.map(lambda x: x.ndim == 1, p)``.

    ``update`` needs ``params`` and raises ``ValueError`` without them.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(optax.sgd(1.0), proximal_l1(0.5, 1.0))
      >>> w = jnp.array([2.0, -0.3, 0.0])
      >>> u, _ = tx.update(jnp.zeros(3), tx.init(w), w)
      >>> optax.apply_updates(w, u).tolist()
      [1.5, 0.0, 0.0]
    """
    def shrink(x, tau):
        return jnp.sign(x) * jnp.maximum(jnp.abs(x) - tau, 0)

    mask = _default_mask(lambda n: True) if mask is None else mask
    return _proximal(shrink, lam, learning_rate, mask, "proximal_l1")


def nuclear_norm(tree) -> jax.Array:
    """``Σ_W ‖W‖_* = Σ_W Σ_i σ_i(W)`` over the 2-D leaves of ``tree`` (other leaves ignored): a
    loss term whose (sub)gradient ``U Vᵀ`` pushes the matrices towards low rank.

    Example:
      >>> import jax.numpy as jnp
      >>> float(nuclear_norm({"w": jnp.diag(jnp.array([3.0, -1.0])), "b": jnp.ones(4)}))
      4.0
    """
    total = jnp.zeros([], jnp.float32)
    for leaf in jax.tree_util.tree_leaves(tree):
        if jnp.ndim(leaf) == 2:
            leaf = jnp.asarray(leaf)  # no LAPACK SVD in bfloat16/float16: float32 at least
            leaf = leaf.astype(jnp.promote_types(leaf.dtype, jnp.float32))
            total = total + jnp.sum(jnp.linalg.svd(leaf, compute_uv=False))
    return total


def l1_penalty(tree) -> jax.Array:
    """``Σ |θ|`` over all entries of all leaves of ``tree``: a lasso loss term.

    Example:
      >>> import jax.numpy as jnp
      >>> float(l1_penalty({"a": jnp.array([1.0, -2.0]), "b": jnp.array([[-0.5]])}))
      3.5
    """
    total = jnp.zeros([], jnp.float32)
    for leaf in jax.tree_util.tree_leaves(tree):
        total = total + jnp.sum(jnp.abs(leaf))
    return total


def _check_rate(rate):
    if is_traced(rate):
        return rate
    check_nonneg_number(rate, "rate")
    if not float(rate) < 1:
        raise ValueError(f"rate must be a number in [0, 1), got {rate!r}.")
    return float(rate)


def _keep(key, n, rate, dtype):
    """Bernoulli(1 − rate) mask of length ``n`` scaled by ``1 / (1 − rate)``."""
    keep = jax.random.bernoulli(key, 1 - rate, (n,))
    return keep.astype(dtype) / jnp.asarray(1 - rate, dtype)


def tensor_dropout(factorized, rate, *, key):
    """Tensor dropout (Kolbeinsson, Kossaifi, Panagakis, Bulat, Anandkumar, Tzoulaki &
    Matthews, "Tensor dropout for robust learning", IEEE J. Sel. Topics Signal Process. 2021):
    drops rank components of a factorized tensor with probability ``rate`` and rescales the
    kept ones by ``1 / (1 − rate)``, so the result equals ``factorized`` in expectation.

    * :class:`~tensorfact.CPTensor`: each rank-1 term ``w_r a_0r ∘ ⋯`` is kept with
      probability ``1 − rate``: ``w ← w ⊙ d / (1 − rate)``, ``d_r ~ Bernoulli(1 − rate)``.
    * :class:`~tensorfact.TuckerTensor`: for every factorized mode ``m`` the core slices
      ``G[..., i_m, ...]`` are dropped independently: ``G ← G ×_m diag(d_m / (1 − rate))``.
    * :class:`~tensorfact.TTTensor` / :class:`~tensorfact.TTMatrix`: every internal bond index
      ``α_k`` (``k = 1..d−1``) is dropped independently: core ``k``'s last axis is scaled by
      ``d_k / (1 − rate)``.

    The masks of different modes/bonds are independent, so ``E[result] = factorized`` entry by
    entry (the dense tensor is multilinear in them). Pure: same key, same mask; returns the same
    type and shapes (dropped components become zeros, ranks stay static).

    Args:
      factorized: a ``CPTensor``, ``TuckerTensor``, ``TTTensor`` or ``TTMatrix``.
      rate: the drop probability in ``[0, 1)``; ``0`` returns ``factorized`` unchanged.
      key: a ``jax.random`` key (required, keyword-only; map over keys with ``jax.vmap``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> cp = CPTensor(jnp.ones(4), [jnp.ones((3, 4)), jnp.ones((5, 4))])
      >>> out = tensor_dropout(cp, 0.5, key=jax.random.key(0))
      >>> type(out).__name__, sorted(set(out.weights.tolist())) <= [0.0, 2.0]
      ('CPTensor', True)
    """
    check_key(key, "for tensor_dropout")
    rate = _check_rate(rate)
    if not isinstance(factorized, (CPTensor, TuckerTensor, TTTensor, TTMatrix)):
        raise TypeError(f"tensor_dropout takes a CPTensor, TuckerTensor, TTTensor or TTMatrix, "
                        f"got {type(factorized).__name__}.")
    if not is_traced(rate) and rate == 0:
        return factorized
    if isinstance(factorized, CPTensor):
        w = factorized.weights
        return CPTensor(w * _keep(key, w.shape[0], rate, w.dtype), factorized.factors)
    if isinstance(factorized, TuckerTensor):
        core = factorized.core
        keys = jax.random.split(key, len(factorized.modes))
        for k, m in zip(keys, factorized.modes):
            d = _keep(k, core.shape[m], rate, core.dtype)
            core = core * d.reshape((-1,) + (1,) * (core.ndim - m - 1))
        return TuckerTensor(core, factorized.factors, factorized.modes)
    cores = list(factorized.cores)
    keys = jax.random.split(key, max(len(cores) - 1, 1))
    for k in range(len(cores) - 1):  # bond k+1 sits between cores k and k+1
        cores[k] = cores[k] * _keep(keys[k], cores[k].shape[-1], rate, cores[k].dtype)
    return type(factorized)(cores)


def layer_stable_ranks(params, select=None):
    """Stable ranks ``‖W‖_F² / ‖W‖_2²`` of the matrices in a parameter tree (the quantity
    Cuttlefish — Wang, Agarwal, U-chupala, Tanaka, Xing & Papailiopoulos, "Cuttlefish: Low-rank
    model training without all the tuning", MLSys 2023 — tracks to decide when the ranks of dense
    layers have settled and at what rank to factorize them). To track them during training,
    see :func:`stable_rank_monitor`.

    Args:
      params: a pytree of arrays.
      select: which leaves to measure: a pytree of bools of the same structure, or a callable
        ``leaf -> bool`` (default: every 2-D leaf). Selected leaves must be 2-D.

    Returns:
      A pytree of ``params``' structure holding a scalar stable rank for each selected leaf and
      ``None`` for the others. Compiles under ``jax.jit``.

    Example:
      >>> import jax.numpy as jnp
      >>> out = layer_stable_ranks({"w": jnp.diag(jnp.array([2.0, 1.0])), "b": jnp.ones(3)})
      >>> out["b"] is None, float(out["w"])
      (True, 1.25)
    """
    if select is None:
        select = lambda leaf: jnp.ndim(leaf) == 2  # noqa: E731
    if callable(select):
        flags = jax.tree_util.tree_map(lambda p: bool(select(p)), params)
    else:
        flags = select

    def one(flag, p):
        if not flag:
            return None
        if jnp.ndim(p) != 2:
            raise ValueError(f"layer_stable_ranks measures 2-D leaves; a selected leaf has shape "
                             f"{tuple(jnp.shape(p))}.")
        return stable_rank(p)

    return jax.tree_util.tree_map(one, flags, params)


# -- stable-rank monitor (Cuttlefish) ---------------------------------------------------------


class StableRankState(NamedTuple):
    """State of :func:`stable_rank_monitor`. The per-layer fields are pytrees of the params'
    structure with a scalar for each monitored leaf and ``None`` for the others.

    Attributes:
      count: the number of ``update`` calls so far (int32).
      n_measurements: how many times the stable ranks were measured (int32).
      stable_ranks: the latest measurement ``srank(W) = ‖W‖_F² / ‖W‖_2²`` (float32; 0 before
        the first).
      initial_stable_ranks: the first measurement, Cuttlefish's ``srank(W_0)`` (float32).
      relative_change: ``|srank_t − srank_{t−1}| / srank_{t−1}`` between the last two
        measurements (float32; ``inf`` before the second).
      full_ranks: ``min(m, n)`` of each monitored ``(m, n)`` matrix (int32).
    """

    count: jax.Array
    n_measurements: jax.Array
    stable_ranks: Any
    initial_stable_ranks: Any
    relative_change: Any
    full_ranks: Any


def _as_layer_matrix(p):
    """A ``≥ 2``-D parameter as the matrix ``(prod(all axes but the last), last)``: Flax's dense
    ``(in, out)`` kernel itself, a conv kernel ``(spatial..., c_in, c_out)`` unfolded along its
    output channels (Cuttlefish's reshape of a conv layer)."""
    p = jnp.asarray(p)
    return p.reshape(-1, p.shape[-1])


def _monitor_flags(select, params):
    if select is None:
        return jax.tree_util.tree_map(lambda p: jnp.ndim(p) >= 2, params)
    if callable(select):
        return jax.tree_util.tree_map(lambda p: bool(select(p)), params)
    return select


def _per_layer(fn, flags, params):
    """``fn(matrix)`` for each selected leaf, ``None`` for the others."""
    def one(flag, p):
        if not flag:
            return None
        if jnp.ndim(p) < 2:
            raise ValueError(f"stable_rank_monitor measures leaves with at least 2 axes; a leaf "
                             f"selected by select has shape {tuple(jnp.shape(p))}.")
        return fn(_as_layer_matrix(p))

    return jax.tree_util.tree_map(one, flags, params)


def _stable_rank32(m):
    m = m.astype(jnp.promote_types(m.dtype, jnp.float32))
    return stable_rank(m).astype(jnp.float32)


def stable_rank_monitor(*, select=None, every: int = 1) -> optax.GradientTransformation:
    """An Optax transform that watches the stable ranks of the weight matrices during training,
    as Cuttlefish does (Wang, Agarwal, U-chupala, Tanaka, Xing & Papailiopoulos, "Cuttlefish:
    Low-rank model training without all the tuning", MLSys 2023), and passes the updates through
    unchanged (the same objects, bit for bit).

    At update calls ``t = 0, every, 2·every, ...`` it measures, for each selected parameter
    ``W`` (seen as the matrix ``(prod(all axes but the last), last)``: dense kernels as they are,
    conv kernels unfolded along their output channels),

    ::

        srank_t(W) = ‖W‖_F² / ‖W‖_2²,     δ_t(W) = |srank_t − srank_{t−1}| / srank_{t−1},

    from the parameters passed to ``update`` (those the step starts from, so measurement 0 is
    the initial weights). Between measurements the state is left as it is (``lax.cond``: the
    singular values are only computed at measurement steps; under ``vmap`` both branches run).
    :func:`suggest_factorization` turns the state into Cuttlefish's decision.

    ``‖W‖_2`` comes with the whole spectrum from an SVD of singular values only
    (:func:`tensorfact.ranks.stable_rank`), not the power method: measurements are rare (once
    per epoch in the paper, set ``every`` to the steps per epoch), and the power method
    converges at the rate ``σ_2 / σ_1``, which is close to one for trained layers with a flat top
    of the spectrum; an underestimated ``‖W‖_2`` would overestimate the stable rank.

    Args:
      select: which leaves to monitor: a callable ``leaf -> bool`` or a pytree of bools of the
        params' structure (default: every leaf with at least 2 axes). Selected leaves need at
        least 2 axes.
      every: measure every ``every`` update calls (a positive int, static).

    Returns:
      An ``optax.GradientTransformation`` whose state is a :class:`StableRankState`. ``update``
      needs ``params`` (``ValueError`` otherwise). Read the state with
      ``optax.tree_utils.tree_get(opt_state, "stable_ranks")`` (also ``"relative_change"``,
      ...) or :func:`suggest_factorization`, which finds it inside a chain.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> tx = optax.chain(optax.sgd(0.1), stable_rank_monitor(every=10))
      >>> params = {"w": jnp.diag(jnp.array([2.0, 1.0])), "b": jnp.ones(2)}
      >>> state = tx.init(params)
      >>> grads = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}
      >>> updates, state = tx.update(grads, state, params)
      >>> float(optax.tree_utils.tree_get(state, "stable_ranks")["w"])   # (4 + 1) / 4
      1.25
      >>> optax.tree_utils.tree_get(state, "stable_ranks")["b"] is None
      True
    """
    every = check_positive_int(every, "every")

    def init_fn(params):
        flags = _monitor_flags(select, params)
        zeros = _per_layer(lambda m: jnp.zeros([], jnp.float32), flags, params)
        return StableRankState(
            count=jnp.zeros([], jnp.int32), n_measurements=jnp.zeros([], jnp.int32),
            stable_ranks=zeros, initial_stable_ranks=zeros,
            relative_change=_per_layer(lambda m: jnp.full([], jnp.inf, jnp.float32), flags,
                                       params),
            full_ranks=_per_layer(lambda m: jnp.asarray(min(m.shape), jnp.int32), flags, params))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("stable_rank_monitor needs the parameters: call "
                             "update(updates, state, params).")
        flags = _monitor_flags(select, params)

        def measure(state):
            new = _per_layer(_stable_rank32, flags, params)
            first = state.n_measurements == 0
            tiny = jnp.finfo(jnp.float32).tiny
            change = jax.tree_util.tree_map(
                lambda n, o: jnp.where(first, jnp.inf, jnp.abs(n - o) / jnp.maximum(o, tiny)),
                new, state.stable_ranks)
            initial = jax.tree_util.tree_map(lambda n, i: jnp.where(first, n, i), new,
                                             state.initial_stable_ranks)
            return state._replace(n_measurements=state.n_measurements + 1, stable_ranks=new,
                                  initial_stable_ranks=initial, relative_change=change)

        state = jax.lax.cond(state.count % every == 0, measure, lambda s: s, state)
        return updates, state._replace(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


class FactorizationSuggestion(NamedTuple):
    """What :func:`suggest_factorization` returns.

    Attributes:
      ready: a bool scalar, True once every monitored layer is ``stable`` (switch now).
      stable: per layer, True where the stable rank has settled.
      ranks: per layer, the rank to factorize at (int32, in ``[1, min(m, n)]``).
    """

    ready: jax.Array
    stable: Any
    ranks: Any


def _find_monitor_state(opt_state) -> StableRankState:
    if isinstance(opt_state, StableRankState):
        return opt_state
    found = [s for s in jax.tree_util.tree_leaves(
        opt_state, is_leaf=lambda s: isinstance(s, StableRankState))
        if isinstance(s, StableRankState)]
    if len(found) != 1:
        raise ValueError(f"suggest_factorization needs an optimizer state holding exactly one "
                         f"StableRankState (from stable_rank_monitor), found {len(found)}.")
    return found[0]


def suggest_factorization(opt_state, *, threshold=0.01, scaled: bool = True
                          ) -> FactorizationSuggestion:
    """Cuttlefish's switch rule (Wang et al., "Cuttlefish: Low-rank model training without all
    the tuning", MLSys 2023, §3) on the state of :func:`stable_rank_monitor`: when to switch
    from full-rank to factorized training, and at what rank.

    * A layer is **stable** once its stable rank has settled: at least two measurements and a
      relative change ``δ = |srank_t − srank_{t−1}| / srank_{t−1} ≤ threshold`` at the last
      one. Training should switch (``ready``) when every monitored layer is stable. (The paper
      thresholds the per-epoch derivative of each layer's smoothed stable-rank curve; the
      relative change is that derivative made independent of the layer's width. Measure once per
      epoch with ``every`` and use a moving average of ``ready`` if the curves are noisy.)
    * The rank of each layer ``W`` (an ``m × n`` matrix) is its **scaled stable rank**
      (``scaled=True``, the paper's default)

          r = min(⌈srank_t(W) · min(m, n) / srank_0(W)⌉, min(m, n)),

      the stable rank rescaled so that the initial weights count as full rank (a random
      Gaussian matrix has a stable rank well below ``min(m, n)``), or the plain
      ``min(⌈srank_t(W)⌉, min(m, n))`` with ``scaled=False``; at least 1.

    Args:
      opt_state: a :class:`StableRankState` or an optimizer state (e.g. of ``optax.chain``)
        holding exactly one.
      threshold: the largest relative change of a stable layer (a finite number ``≥ 0``).
      scaled: use the scaled stable rank (default) or the plain one.

    Returns:
      A :class:`FactorizationSuggestion` ``(ready, stable, ranks)``; ``stable`` and ``ranks`` have
      the params' structure (``None`` for unmonitored leaves). Compiles under ``jax.jit``.

    Example:
      >>> import jax.numpy as jnp
      >>> state = StableRankState(
      ...     count=jnp.array(20), n_measurements=jnp.array(3),
      ...     stable_ranks={"w": jnp.array(6.2)}, initial_stable_ranks={"w": jnp.array(16.0)},
      ...     relative_change={"w": jnp.array(0.004)}, full_ranks={"w": jnp.array(64)})
      >>> out = suggest_factorization(state)
      >>> bool(out.ready), int(out.ranks["w"])       # ⌈6.2 · 64 / 16⌉ = 25
      (True, 25)
      >>> int(suggest_factorization(state, scaled=False).ranks["w"])
      7
    """
    threshold = check_nonneg_number(threshold, "threshold")
    state = _find_monitor_state(opt_state)
    measured = state.n_measurements >= 2
    stable = jax.tree_util.tree_map(lambda c: measured & (c <= threshold),
                                    state.relative_change)

    def rank(s, s0, full):
        estimate = s * full / jnp.maximum(s0, jnp.finfo(jnp.float32).tiny) if scaled else s
        return jnp.clip(jnp.ceil(estimate), 1, full).astype(jnp.int32)

    ranks = jax.tree_util.tree_map(rank, state.stable_ranks, state.initial_stable_ranks,
                                   state.full_ranks)
    flags = jax.tree_util.tree_leaves(stable)
    ready = measured & jnp.all(jnp.stack(flags)) if flags else jnp.zeros([], bool)
    return FactorizationSuggestion(ready=ready, stable=stable, ranks=ranks)
