"""Compression that knows the data
===============================

Compression that knows the data: a trained MLP on scikit-learn's digits compressed at several
kept-parameter fractions by plain SVD, by the data-aware methods (SVD-LLM whitening, ASVD,
FWSVD; one global budget, ``params=``), by CUR (actual columns and rows, at the ranks the SVD
budget chose), by TT-matrices (MPO, the fraction per layer) and by ACIP (one scoring run, every
fraction cut from it); test accuracy against the fraction kept, before and after a short
fine-tune of the compressed model.

    python examples/compress_with_data.py [--quick] [--out compress_with_data.png]

The calibration set is 256 training images (never the test images). Plain SVD minimises the
change of the weights; whitened and asvd the change of each layer's output on the calibration
inputs, fwsvd a Fisher-weighted change of the weights, acip the loss on the calibration batches
(through masks over the singular values). The printout says, fraction by fraction, which method
kept the most accuracy here.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits

import tensorfact.nn as tnn

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

METHODS = ("svd", "whitened", "asvd", "fwsvd", "cur", "tt", "acip")


class MLP(nnx.Module):
    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(64, hidden, rngs=rngs),
                                nnx.Linear(hidden, hidden, rngs=rngs),
                                nnx.Linear(hidden, 10, rngs=rngs)])

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


def loss_fn(model, batch):
    x, y = batch
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


def accuracy(model, x, y):
    return float(jnp.mean(jnp.argmax(model(x), -1) == y))


def run(fractions=(0.1, 0.2, 0.3, 0.5), hidden: int = 256, steps: int = 2000,
        finetune: int = 200, acip_steps: int = 300, seed: int = 0):
    """Trains the MLP, then compresses it at each fraction by each method and fine-tunes the
    result for ``finetune`` steps; returns the dense accuracy and
    ``{method: [(kept fraction, accuracy, accuracy after fine-tuning) per fraction]}``."""
    data = load_digits()
    x = jnp.asarray(data.data / 16.0, jnp.float32)
    y = jnp.asarray(data.target, jnp.int32)
    order = np.random.default_rng(seed).permutation(len(y))
    train, test = order[:1400], order[1400:]
    model = MLP(hidden, rngs=nnx.Rngs(seed))
    @nnx.jit
    def step(model, optimizer, xb, yb):
        loss, grads = nnx.value_and_grad(loss_fn)(model, (xb, yb))
        optimizer.update(model, grads)
        return loss

    def train_for(model, n, lr, seed):
        optimizer = nnx.Optimizer(model, optax.adam(lr), wrt=nnx.Param)
        rng = np.random.default_rng(seed)
        for _ in range(n):
            idx = train[rng.integers(0, len(train), 128)]
            step(model, optimizer, x[idx], y[idx])
        return model

    train_for(model, steps, 1e-3, seed + 1)
    dense = accuracy(model, x[test], y[test])
    calibration = [(x[train[i:i + 64]], y[train[i:i + 64]]) for i in range(0, 256, 64)]
    scores = tnn.acip(model, calibration, loss_fn, n_iter=acip_steps, progress=False)
    results = {m: [] for m in METHODS}
    for fraction in fractions:
        for method in METHODS:
            if method == "cur":  # no global budget for CUR: the ranks the SVD budget chose
                chosen = {r.path: r.rank for r in tnn.compress(model, params=fraction)[1]}
                small, report = tnn.compress(model, rank=lambda path, _: chosen[path],
                                             method="cur")
            elif method == "tt":  # MPO layers: the fraction per layer
                small, report = tnn.compress(model, kind="tt", rank=fraction)
            elif method == "acip":
                small, report = tnn.compress(model, params=fraction, method="acip",
                                             scores=scores)
            else:
                small, report = tnn.compress(model, params=fraction, method=method,
                                             calibration=calibration, loss_fn=loss_fn,
                                             progress=False)
            before = accuracy(small, x[test], y[test])
            after = accuracy(train_for(small, finetune, 3e-4, seed + 2), x[test], y[test])
            results[method].append((report.ratio, before, after))
    return dense, results


def main(argv=None):
    p = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    p.add_argument("--quick", "--small", action="store_true",
                   help="a smaller model trained briefly, one fraction")
    p.add_argument("--out", default="compress_with_data.png")
    args = p.parse_args(argv)
    fractions = (0.5,) if args.quick else (0.1, 0.2, 0.3, 0.5)
    dense, results = run(fractions, hidden=32 if args.quick else 256,
                         steps=300 if args.quick else 2000, finetune=10 if args.quick else 200,
                         acip_steps=30 if args.quick else 300)
    print(f"dense test accuracy {dense:.3f}; each cell: before / after fine-tuning")
    print("kept   " + "  ".join(f"{m:>13}" for m in METHODS) + "   best (before)")
    for i, fraction in enumerate(fractions):
        cells = [results[m][i] for m in METHODS]
        print(f"{fraction:>5.0%}  " + "  ".join(f"{b:>6.3f}/{a:<6.3f}" for _, b, a in cells)
              + f"   {METHODS[int(np.argmax([b for _, b, _ in cells]))]}")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for column, (ax, title) in enumerate(zip(axes, ("compressed", "after a short fine-tune"))):
        for m in METHODS:
            ratios = [r for r, _, _ in results[m]]
            ax.plot(ratios, [row[1 + column] for row in results[m]], marker="o", label=m)
        ax.axhline(dense, color="gray", ls="--", label="dense")
        ax.set(xlabel="parameters kept (fraction of the dense layers')", title=title)
    axes[0].set_ylabel("test accuracy")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    plt.close(fig)
    print(f"saved {args.out}")
    return dense, results


if __name__ == "__main__":
    main()
