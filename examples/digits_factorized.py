"""Factorized layers against dense ones on scikit-learn's digits
=============================================================

Factorized layers against dense ones on scikit-learn's digits: accuracy, parameters, time.

Trains the same small networks on the 8 × 8 handwritten digits that ship with scikit-learn
(1 797 images, 10 classes; 75 % train, 25 % test, stratified), once with dense layers and once
with each factorized layer of :mod:`tensorfact.nn`, with the same optimiser (Adam), steps,
mini-batches and seed:

* an MLP ``64 → 256 → 256 → 10`` whose two hidden layers are ``nnx.Linear`` (``dense``) or
  :class:`~tensorfact.nn.FactorizedDense` of kind ``lowrank`` (``W = U Vᵀ``; Denil et al.,
  "Predicting Parameters in Deep Learning", NeurIPS 2013), ``cp``, ``tucker`` or ``tt``
  (the kernel tensorized as ``(8, 8) × (16, 16)`` for CP/Tucker, ``(4, 4, 4) × (8, 8, 4)`` for
  the TT-matrix; Novikov et al., "Tensorizing Neural Networks", NeurIPS 2015);
* a CNN ``conv 3×3 (1 → 16) → conv 3×3 stride 2 (16 → 32) → linear (512 → 10)`` whose second
  convolution is ``nnx.Conv`` (``cnn-dense``) or :class:`~tensorfact.nn.FactorizedConv` with a
  Tucker-2 kernel (Kim et al., "Compression of Deep Convolutional Neural Networks for Fast and
  Low Power Mobile Applications", ICLR 2016) or a CP kernel (Lebedev et al., "Speeding-up
  Convolutional Neural Networks Using Fine-tuned CP-Decomposition", ICLR 2015).

The output layer (and the CNN's one-channel first convolution) stays dense in every model.
``--rank`` is a float in ``(0, 1]`` (each factorized layer gets the largest rank whose factors
hold at most that fraction of the dense kernel's parameters, so every kind gets the same
budget) or an int (the kind's rank). The script prints a table (test accuracy, trainable
parameters, the time of the first step, which compiles, and of the remaining steps) and saves a
bar plot of the three.

The default run (``--rank 0.1``, 1 500 steps of 64 images, Adam 3e-3; ``taskset -c 0``, one
core of a shared 2-core VM: about 40 s of CPU time) printed::

    model       rank            test acc.   params  compile s  train s
    dense       -                   0.973    85002       2.33     2.28
    lowrank     5                   0.938    10826       3.09     0.26
    cp          34                  0.973    11242       3.33     2.26
    tucker      (6, 6, 6, 6)        0.956     9274       4.38     1.73
    tt          (1, 6, 6, 1)        0.980    10426       3.08     1.55
    cnn-dense   -                   0.978     9930       2.64     3.16
    cnn-tucker  (4, 4)              0.984     5658       3.53     2.32
    cnn-cp      8                   0.978     5754       3.91     9.50

(the rank column is the first factorized layer's). With 8-13 % of the parameters the CP and TT
MLPs match the dense one and the Tucker-2 CNN beats its dense twin by a test image or two
(450 test images: ±0.01 is noise); the plain low-rank MLP at rank 5 loses 3.5 points. The times
were taken on a loaded machine and at these tiny sizes measure dispatch more than FLOPs: read
them as "about as fast", not as speed-ups (``benchmarks/`` has those). The CP convolution's
depthwise steps are the slow ones on the CPU.

Usage::

    python examples/digits_factorized.py [--quick] [--rank 0.1] [--steps 1500] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from tensorfact.nn import FactorizedConv, FactorizedDense

MLP_MODELS = ("dense", "lowrank", "cp", "tucker", "tt")
CNN_MODELS = ("cnn-dense", "cnn-tucker", "cnn-cp")
MODELS = MLP_MODELS + CNN_MODELS
HIDDEN = 256
N_CLASSES = 10


def load_data(seed: int = 0, test_size: float = 0.25):
    """Digits as ``(x_train, x_test, y_train, y_test)``: images ``(n, 8, 8, 1)`` in ``[0, 1]``
    (float32) and int32 labels, split with stratification."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int32)
    return train_test_split(x, y, test_size=test_size, stratify=y, random_state=seed)


def _rank(value: str):
    """``--rank``: an int (the kind's rank) or a float in (0, 1] (a parameter fraction)."""
    number = float(value)
    return int(number) if number.is_integer() and number >= 1 and "." not in value else number


class MLP(nnx.Module):
    """``64 → hidden → hidden → 10`` with ReLUs; the hidden layers dense or factorized."""

    def __init__(self, kind: str, rank, *, hidden: int = HIDDEN, rngs: nnx.Rngs):
        def layer(n_in, n_out):
            if kind == "dense":
                return nnx.Linear(n_in, n_out, rngs=rngs)
            return FactorizedDense(n_in, n_out, kind=kind, rank=rank, rngs=rngs)

        self.fc1 = layer(64, hidden)
        self.fc2 = layer(hidden, hidden)
        self.head = nnx.Linear(hidden, N_CLASSES, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.head(nnx.relu(self.fc2(nnx.relu(self.fc1(x)))))


class CNN(nnx.Module):
    """``conv 3×3 (1 → 16) → conv 3×3 / 2 (16 → 32) → linear``; the second conv dense or
    factorized (a one-channel conv has nothing to factorize, so the first stays dense)."""

    def __init__(self, kind: str, rank, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
        if kind == "dense":
            self.conv2 = nnx.Conv(16, 32, (3, 3), strides=2, rngs=rngs)
        else:
            self.conv2 = FactorizedConv(16, 32, (3, 3), kind=kind, rank=rank, strides=2,
                                        rngs=rngs)
        self.head = nnx.Linear(4 * 4 * 32, N_CLASSES, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
        return self.head(x.reshape(x.shape[0], -1))


def build(name: str, rank, seed: int = 0) -> nnx.Module:
    """The model called ``name`` (one of :data:`MODELS`), initialised from ``seed``."""
    rngs = nnx.Rngs(seed)
    if name in MLP_MODELS:
        return MLP(name, rank, rngs=rngs)
    if name in CNN_MODELS:
        return CNN(name.split("-", 1)[1], rank, rngs=rngs)
    raise ValueError(f"model must be one of {MODELS}, got {name!r}.")


def n_params(model: nnx.Module) -> int:
    """Trainable scalars (every ``nnx.Param``; also of an abstract ``nnx.eval_shape`` model)."""
    return sum(int(v.size) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


def describe_rank(model: nnx.Module):
    """The resolved rank of the first factorized layer, or ``"-"`` for a dense model."""
    layer = model.fc1 if isinstance(model, MLP) else model.conv2
    return getattr(layer, "rank", "-")


def batch_indices(n: int, steps: int, batch_size: int, seed: int) -> np.ndarray:
    """``(steps, batch_size)`` indices: epochs of a shuffled ``range(n)`` (one draw, so every
    model sees the same mini-batches in the same order)."""
    rng = np.random.default_rng(seed)
    epochs = -(-steps * batch_size // n)
    order = np.concatenate([rng.permutation(n) for _ in range(epochs)])
    return order[:steps * batch_size].reshape(steps, batch_size)


class _NoBar:
    """Stands in for a tqdm bar when progress is off or tqdm is not installed."""

    def update(self, n):
        pass

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass


def _progress_bar(total: int, desc: str, progress: bool):
    if progress:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # the bars are a nicety: run without them
            return _NoBar()
        return tqdm(total=total, desc=desc, leave=False)
    return _NoBar()


def cross_entropy(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit(static_argnames=("wrt", "unroll"))
def train_chunk(model, optimizer, x_all, y_all, idx, wrt=nnx.Param, unroll=False):
    """``len(idx)`` optimizer steps on the variables ``wrt`` selects, the batch of step ``t``
    being ``x_all[idx[t]]``, as one ``lax.scan`` (one dispatch per chunk rather than per
    step); returns the losses.

    ``unroll=True`` unrolls the scan: XLA's CPU backend runs a convolution inside a loop
    far slower than at the top level of a program (about 70× for this CNN's, jax 0.10), so the
    CNNs take short unrolled chunks."""
    graphdef, state = nnx.split((model, optimizer))

    def step(state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        x, y = x_all[batch], y_all[batch]
        grad_fn = nnx.value_and_grad(cross_entropy, argnums=nnx.DiffState(0, wrt))
        loss, grads = grad_fn(model, x, y)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), loss

    state, losses = jax.lax.scan(step, state, idx, unroll=unroll)
    nnx.update((model, optimizer), state)
    return losses


@nnx.jit
def accuracy(model, x, y):
    return jnp.mean(jnp.argmax(model(x), axis=-1) == y)


def train(model, data, *, steps: int, batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
          wrt=nnx.Param, chunk: int = 50, unroll: bool = False, callback=None, desc: str = "",
          progress: bool = True):
    """Trains the ``wrt`` variables of ``model`` in place with Adam, ``chunk`` steps per
    compiled call (unrolled with ``unroll``, see :func:`train_chunk`), calling
    ``callback(steps_done, model)`` after each chunk; returns ``(losses, compile_s, train_s)``:
    the training loss per step, the time of the first chunk (compilation included) and of the
    rest (the callbacks included)."""
    x_train, _, y_train, _ = data
    x_all, y_all = jnp.asarray(x_train), jnp.asarray(y_train)
    idx = batch_indices(len(x_train), steps, batch_size, seed)
    chunks = [jnp.asarray(idx[i:i + chunk]) for i in range(0, steps, chunk)]
    optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=wrt)
    bar = _progress_bar(steps, desc, progress)
    start = time.perf_counter()
    losses = [train_chunk(model, optimizer, x_all, y_all, chunks[0], wrt, unroll)]
    losses[0].block_until_ready()
    compile_s = time.perf_counter() - start
    bar.update(len(chunks[0]))
    if callback is not None:
        callback(len(chunks[0]), model)
    start, done = time.perf_counter(), len(chunks[0])
    for c in chunks[1:]:
        losses.append(train_chunk(model, optimizer, x_all, y_all, c, wrt, unroll))
        done += len(c)
        bar.update(len(c))
        bar.set_postfix(loss=f"{float(losses[-1][-1]):.3f}")
        if callback is not None:
            callback(done, model)
    losses = np.concatenate([np.asarray(x) for x in losses])
    train_s = time.perf_counter() - start
    bar.close()
    return losses, compile_s, train_s


def run(models=MODELS, rank=0.1, steps=1500, batch_size=64, lr=3e-3, seed=0, progress=True):
    """Trains each model of ``models`` on the same data, steps and batches; returns a dict
    ``name -> {accuracy, params, rank, compile_s, train_s, losses}``."""
    data = load_data(seed)
    x_test, y_test = jnp.asarray(data[1]), jnp.asarray(data[3])
    results = {}
    for name in models:
        model = build(name, rank, seed)
        conv = name in CNN_MODELS
        losses, compile_s, train_s = train(model, data, steps=steps, batch_size=batch_size,
                                           lr=lr, seed=seed, chunk=5 if conv else 50,
                                           unroll=conv, desc=name, progress=progress)
        results[name] = dict(accuracy=float(accuracy(model, x_test, y_test)),
                             params=n_params(model), rank=describe_rank(model),
                             compile_s=compile_s, train_s=train_s, losses=losses)
    return results


def print_table(results):
    print(f"{'model':<11s} {'rank':<15s} {'test acc.':>9s} {'params':>8s} {'compile s':>10s} "
          f"{'train s':>8s}")
    for name, r in results.items():
        print(f"{name:<11s} {str(r['rank']):<15s} {r['accuracy']:9.3f} {r['params']:8d} "
              f"{r['compile_s']:10.2f} {r['train_s']:8.2f}")


def plot(results, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    colors = ["tab:gray" if n.endswith("dense") else "tab:blue" for n in names]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [("accuracy", "test accuracy"), ("params", "trainable parameters"),
              ("train_s", "training time (s, compilation apart)")]
    for ax, (field, label) in zip(axes, panels):
        values = [results[n][field] for n in names]
        ax.bar(names, values, color=colors)
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=45)
        ax.grid(True, axis="y", alpha=0.3)
        for i, v in enumerate(values):
            text = {"accuracy": f"{v:.3f}", "params": f"{v / 1e3:.1f}k"}.get(field, f"{v:.2g}")
            ax.annotate(text, (i, v),
                        ha="center", va="bottom", fontsize=8)
    accs = [results[n]["accuracy"] for n in names]
    axes[0].set_ylim(max(0.0, min(accs) - 0.05), 1.0)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--quick", "--small", action="store_true",
                        help="a fast smoke run (200 steps)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--rank", type=_rank, default=0.1,
                        help="a parameter fraction in (0, 1] or an int rank (default 0.1)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 1500)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("--out", default=".", help="directory for digits_factorized.png")
    args = parser.parse_args(argv)
    steps = args.steps or (200 if args.quick else 1500)
    results = run(args.models, args.rank, steps, args.batch_size, args.lr, args.seed,
                  progress=not args.no_progress)
    print(f"digits, {steps} steps of {args.batch_size}, Adam {args.lr:g}, rank {args.rank}")
    print_table(results)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "digits_factorized.png")
    plot(results, path, f"scikit-learn digits: dense vs factorized layers (rank {args.rank}, "
                        f"{steps} Adam steps)")
    print(f"figure written to {path}")
    return results


if __name__ == "__main__":
    main()
