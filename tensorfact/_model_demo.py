"""The model side of ``python -m tensorfact demo``: a small Flax NNX MLP trained on a synthetic
task, adapted to a shifted task with LoRA and DoRA through :func:`tensorfact.nn.apply_adapters`,
merged back into a plain model and compressed with :func:`tensorfact.nn.compress`.

The task is made here, from one seed: inputs ``x ~ N(0, I)`` in 16 dimensions, labelled (8
classes) by a random teacher network ``argmax(tanh(x W₁) W₂)``. The shifted task moves the
teacher's first layer by a rank-2 change, ``W₁ + U V``: the same inputs, other labels. Training
draws fresh inputs every step inside one compiled ``nnx.scan``; losses and accuracies are on a
fixed test set of 2 048 inputs.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from tensorfact import nn as tnn

D_IN, HIDDEN, CLASSES, SHIFT_RANK = 16, 64, 8, 2


class DemoMLP(nnx.Module):
    """``16 → 64 → 64 → 8``, ReLU; layers at the paths ``layers/0``, ``layers/1``,
    ``layers/2``."""

    def __init__(self, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(D_IN, HIDDEN, rngs=rngs),
                                nnx.Linear(HIDDEN, HIDDEN, rngs=rngs),
                                nnx.Linear(HIDDEN, CLASSES, rngs=rngs)])

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


def _loss(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def _labels(w1, w2, x):
    return jnp.argmax(jnp.tanh(x @ w1) @ w2, axis=-1)


@nnx.jit(static_argnames=("wrt", "steps", "batch"))
def _train(model, optimizer, key, w1, w2, *, wrt, steps, batch):
    """``steps`` optimizer steps on the variables ``wrt`` selects, each on ``batch`` fresh
    inputs labelled by the teacher ``(w1, w2)``; returns the losses."""
    def step(carry, key):
        model, optimizer = carry
        x = jax.random.normal(key, (batch, D_IN))
        grad_fn = nnx.value_and_grad(_loss, argnums=nnx.DiffState(0, wrt))
        loss, grads = grad_fn(model, x, _labels(w1, w2, x))
        optimizer.update(model, grads)
        return (model, optimizer), loss

    scan = nnx.scan(step, in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    _, losses = scan((model, optimizer), jax.random.split(key, steps))
    return losses


@nnx.jit
def _scores(model, x, y):
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.mean(jnp.argmax(logits, axis=-1) == y)


def model_demo(seed: int = 0, steps: int = 500, finetune_steps: int = 300, batch: int = 128,
               rank: int = 4, compress_rank: float = 0.5) -> dict:
    """Pre-trains :class:`DemoMLP` (Adam 3e-3, ``steps``), adapts it to the shifted task
    (LoRA on ``layers/0`` and ``layers/1``, DoRA on ``layers/2``, rank ``rank``, Adam 1e-2,
    ``finetune_steps``, only the adapters trained), merges the adapters and compresses the
    merged model's two hidden layers to low-rank layers holding at most ``compress_rank`` of
    their kernels' parameters each (``compress(rank=compress_rank)``).

    Returns a dict: ``params`` (the model's), ``(loss, accuracy)`` pairs ``pretrained`` (base
    task), ``before`` and ``after`` (shifted task, before and after adapting), ``compressed``
    (the compressed merged model on the shifted task), ``report`` (the
    :class:`~tensorfact.nn.AdapterReport`), ``merge_diff`` (the largest difference between
    the merged and the adapted model's logits), ``compression`` (the
    :class:`~tensorfact.nn.CompressionReport`) and ``seconds``."""
    start = time.perf_counter()
    k = jax.random.split(jax.random.key(seed), 6)
    w1 = jax.random.normal(k[0], (D_IN, HIDDEN)) / np.sqrt(D_IN)
    w2 = jax.random.normal(k[1], (HIDDEN, CLASSES)) / np.sqrt(HIDDEN)
    shift = jax.random.normal(k[2], (D_IN, SHIFT_RANK)) @ jax.random.normal(
        k[3], (SHIFT_RANK, HIDDEN))
    w1_shifted = w1 + shift / np.sqrt(D_IN * SHIFT_RANK)
    x_test = jax.random.normal(k[4], (2048, D_IN))
    y_base, y_shifted = _labels(w1, w2, x_test), _labels(w1_shifted, w2, x_test)

    def scores(model, y):
        return tuple(float(v) for v in _scores(model, x_test, y))

    model = DemoMLP(nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
    _train(model, optimizer, k[5], w1, w2, wrt=nnx.Param, steps=steps, batch=batch)
    out = dict(params=sum(int(np.prod(v.shape))
                          for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))),
               compress_rank=compress_rank)
    out["pretrained"], out["before"] = scores(model, y_base), scores(model, y_shifted)

    rules = [tnn.AdapterRule("layers/(0|1)", "lora", rank=rank),
             tnn.AdapterRule("layers/2", "dora", rank=rank)]
    adapted, out["report"] = tnn.apply_adapters(model, rules, rngs=nnx.Rngs(seed + 1))
    optimizer = nnx.Optimizer(adapted, optax.adam(1e-2), wrt=tnn.adapter_filter())
    _train(adapted, optimizer, jax.random.fold_in(k[5], 1), w1_shifted, w2,
           wrt=tnn.adapter_filter(), steps=finetune_steps, batch=batch)
    out["after"] = scores(adapted, y_shifted)

    merged = tnn.merge_adapters(adapted)
    out["merge_diff"] = float(jnp.max(jnp.abs(merged(x_test) - adapted(x_test))))
    # the hidden layers: no factorization of the 64 × 8 head is much smaller than it
    small, out["compression"] = tnn.compress(merged, rank=compress_rank,
                                             select=lambda path, _: path != ("layers", 2))
    out["compressed"] = scores(small, y_shifted)
    out["seconds"] = time.perf_counter() - start
    return out


def print_model_demo(r: dict) -> None:
    """Prints what :func:`model_demo` returned."""
    def la(pair):
        return f"loss {pair[0]:.3f} (accuracy {pair[1]:.1%})"

    report = r["report"]
    print(f"\nmodel side: an NNX MLP {D_IN} → {HIDDEN} → {HIDDEN} → {CLASSES} "
          f"({r['params']:,} parameters) trained on a synthetic task (a random teacher's "
          f"labels): {la(r['pretrained'])}")
    print(f"shifted task (the teacher's first layer moved by a rank-{SHIFT_RANK} change): "
          f"{la(r['before'])} before adapting\n")
    print("apply_adapters: " + str(report))
    print(f"\nfine-tuned {report.trainable:,} trainable parameters "
          f"({100 * report.share:.1f}% of the model) on the shifted task: "
          f"{la(r['before'])} → {la(r['after'])}")
    print(f"merge_adapters: a plain model again; max |merged − adapted| logits = "
          f"{r['merge_diff']:.1e}\n")
    print(f"compress(merged, rank={r['compress_rank']:g}): the hidden layers, each at most "
          f"{r['compress_rank']:.0%} of its kernel's parameters")
    print(r["compression"])
    print(f"compressed model on the shifted task: {la(r['compressed'])}")
    print(f"(model side: {r['seconds']:.1f} s, compilation included)")
