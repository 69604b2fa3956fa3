"""ACIP: one training run that orders every singular value of a model by importance, from which
any compression ratio can be cut afterwards without refitting.

Genzel et al., "Choose your model size: Any compression by a single gradient descent" (2025).
Each selected ``nnx.Linear`` kernel is parametrised by its SVD with a mask over its singular
values, ``W(m) = U diag(σ ⊙ m) Vᵀ``, ``m ∈ [0, 1]^r`` starting at 1. Only the masks are trained:
``U``, ``σ``, ``V``, the biases and every other parameter of the model stay frozen. The objective
is the user's loss on the calibration batches plus an ℓ1 penalty on the masks,

    L(m) = loss(model(m), batch) + λ · mean(m),

minimised by Adam with the masks projected back onto ``[0, 1]`` after each step, so the penalty
drives the masks of the singular values the loss does not need to zero one after another. The
score of a singular value is the step at which its mask first reached zero; the values whose
mask never did rank above all pruned ones, among themselves by the energy share per parameter
of their masked value, ``(σ_i m_i)² / Σ_j (σ_j m_j)² / (in + out)`` (the order of the plain SVD
budget, with the masks' verdict folded in), scaled into ``n_iter + (0, 1]``. A higher score
means "pruned later", i.e. more important. ``compress(model, method="acip",
scores=..., params=p)`` then keeps, for any ``p``, the best-scored singular values across all
layers that fit the budget. This is the paper's pruning-order idea without its LoRA
compensation adapters (which a user can add afterwards with :class:`~tensorfact.nn.LoRA` and a
short fine-tune).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from tensorfact._checks import check_nonneg_number, check_positive_int, check_positive_number
from tensorfact.nn._calibration import node_at, replace_at

__all__ = ["ACIPScores", "ACIPMask", "acip"]


class ACIPScores(NamedTuple):
    """The result of :func:`acip`: per layer path, the ``scores`` of its singular values (in
    the order of ``jnp.linalg.svd``: descending σ) and the final ``masks``; ``losses``, the
    training objective at each step."""

    scores: dict
    masks: dict
    losses: np.ndarray


class _Frozen(nnx.Variable):
    """A fixed array of the masked layer (the SVD factors): no optimizer sees it."""


class ACIPMask(nnx.Param):
    """The trainable masks over singular values."""


class _MaskedLinear(nnx.Module):
    def __init__(self, layer: nnx.Linear):
        kernel = jnp.asarray(layer.kernel[...], jnp.float32)
        u, s, vt = jnp.linalg.svd(kernel, full_matrices=False)
        self.u, self.s, self.vt = _Frozen(u), _Frozen(s), _Frozen(vt)
        self.bias = None if layer.bias is None else _Frozen(jnp.asarray(layer.bias[...]))
        self.mask = ACIPMask(jnp.ones_like(s))
        self.precision = layer.precision

    def __call__(self, x):
        hi = self.precision
        y = jnp.matmul(jnp.matmul(x, self.u[...], precision=hi) * (self.s[...] * self.mask[...]),
                       self.vt[...], precision=hi)
        return y if self.bias is None else y + self.bias[...]


def acip(model: nnx.Module, calibration, loss_fn: Callable, *, select=None,
         penalty: float = 1.0, n_iter: int = 300, learning_rate: float = 1e-2,
         progress: bool = True) -> ACIPScores:
    """Scores every singular value of the selected dense layers by ACIP (see the module
    docstring for the objective, what is trained and what stays frozen).

    Args:
      model: an ``nnx.Module``; it is not modified (a copy is trained).
      calibration: an iterable of batches, each given to ``loss_fn(model, batch)``; they are
        cycled through for ``n_iter`` steps.
      loss_fn: ``(model, batch) -> scalar loss``.
      select: ``(path, layer) -> bool`` over the ``nnx.Linear`` layers (None: all of them).
      penalty: ``λ ≥ 0``, the weight of the ℓ1 penalty on the masks (their mean).
      n_iter: the number of Adam steps.
      learning_rate: Adam's step size.
      progress: show a progress bar (tqdm).

    Returns:
      :class:`ACIPScores`, to pass to ``compress(..., method="acip", scores=...)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import acip, compress
      >>> model = nnx.Sequential(nnx.Linear(16, 32, rngs=nnx.Rngs(0)), jax.nn.relu,
      ...                        nnx.Linear(32, 4, rngs=nnx.Rngs(1)))
      >>> x = jax.random.normal(jax.random.key(2), (64, 16))
      >>> batches = [(x, model(x))]
      >>> loss = lambda m, b: jnp.mean((m(b[0]) - b[1]) ** 2)
      >>> scores = acip(model, batches, loss, n_iter=50, progress=False)
      >>> [s.shape for s in scores.scores.values()]
      [(16,), (4,)]
      >>> small, report = compress(model, method="acip", scores=scores, params=0.5)
      >>> round(report.ratio, 1)
      0.5
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be an nnx.Module, got {type(model).__name__}.")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a callable (model, batch) -> scalar loss, got "
                        f"{type(loss_fn).__name__}.")
    penalty = check_nonneg_number(penalty, "penalty")
    n_iter = check_positive_int(n_iter, "n_iter")
    learning_rate = check_positive_number(learning_rate, "learning_rate")
    if not hasattr(calibration, "__iter__"):
        raise TypeError(f"calibration must be an iterable of batches, got "
                        f"{type(calibration).__name__}.")
    batches = list(calibration)
    if not batches:
        raise ValueError("calibration holds no batch.")
    masked = nnx.clone(model)
    paths = []
    for path, node in nnx.iter_graph(masked):
        path = tuple(path)
        if isinstance(node, nnx.Linear) and (select is None or select(path, node)):
            paths.append(path)
    if not paths:
        raise ValueError("acip found no nnx.Linear layer to score (select accepted none, or the "
                         "model has none).")
    for path in paths:
        masked = replace_at(masked, path, _MaskedLinear(node_at(masked, path)))
    optimizer = nnx.Optimizer(masked, optax.adam(learning_rate), wrt=ACIPMask)
    n_masks = sum(int(node_at(masked, p).mask[...].size) for p in paths)

    def objective(m, batch):
        l1 = sum(jnp.sum(node_at(m, p).mask[...]) for p in paths) / n_masks
        return loss_fn(m, batch) + penalty * l1

    @nnx.jit
    def step(m, opt, batch, zero_at, t):
        value, grads = nnx.value_and_grad(objective, argnums=nnx.DiffState(0, ACIPMask))(
            m, batch)
        opt.update(m, grads)
        new_zero = []
        for p, z in zip(paths, zero_at):
            layer = node_at(m, p)
            layer.mask[...] = jnp.clip(layer.mask[...], 0.0, 1.0)
            new_zero.append(jnp.where((layer.mask[...] <= 0) & (z < 0), t, z))
        return value, new_zero

    zero_at = [-jnp.ones_like(node_at(masked, p).mask[...]) for p in paths]
    steps = range(n_iter)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="acip", leave=False)
    losses = []
    for t in steps:
        value, zero_at = step(masked, optimizer, batches[t % len(batches)], zero_at,
                              jnp.asarray(t, jnp.float32))
        losses.append(value)  # read once at the end: no host round trip per step
    # survivors: ordered by the energy share per parameter of their masked singular values,
    # σ_i² m_i² / Σ_j σ_j² m_j² / (in + out), scaled into (0, 1] over all layers
    value = {}
    for p in paths:
        layer = node_at(masked, p)
        e = (layer.s[...] * layer.mask[...]) ** 2
        value[p] = e / jnp.maximum(jnp.sum(e), jnp.finfo(e.dtype).tiny) / sum(layer.u.shape[0:1]
                                                                            + layer.vt.shape[1:])
    top = max(float(jnp.max(v)) for v in value.values()) or 1.0
    scores, masks = {}, {}
    for p, z in zip(paths, zero_at):
        masks[p] = node_at(masked, p).mask[...]
        scores[p] = jnp.where(z >= 0, z, n_iter + value[p] / top)
    return ACIPScores(scores, masks, np.asarray(jnp.stack(losses)))
