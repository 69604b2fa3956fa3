"""Factorized optimizer state: AdamW, GaLore and SMMF
==================================================

Factorized optimizer state: the same Flax NNX MLP trained on scikit-learn's digits with AdamW,
GaLore(AdamW) and SMMF, each through ``nnx.Optimizer``; prints the bytes each optimizer keeps
and saves the loss curves.

    python examples/optimizer_memory.py [--quick] [--steps 1500] [--out optimizer_memory.png]

AdamW keeps two numbers per parameter. GaLore (Zhao et al., ICML 2024) runs AdamW on a rank-r
projection of each weight matrix's gradient, so its moments have r columns instead of the
matrix's; SMMF (AAAI 2025) keeps both moments of every parameter as rank-one factors of its
square-matricized shape plus one sign bit per entry.
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
from tqdm import tqdm

from tensorfact.optim import galore, smmf, state_bytes

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


class MLP(nnx.Module):
    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(64, hidden, rngs=rngs),
                                nnx.Linear(hidden, hidden, rngs=rngs),
                                nnx.Linear(hidden, 10, rngs=rngs)])

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


def run(steps: int = 1500, hidden: int = 256, batch: int = 128, seed: int = 0):
    """Trains one MLP per optimizer on the same batches; returns ``{name: (losses, bytes)}``."""
    data = load_digits()
    x = jnp.asarray(data.data / 16.0, jnp.float32)
    y = jnp.asarray(data.target, jnp.int32)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), (steps, batch))
    rank = hidden // 8
    optimizers = {"AdamW": optax.adamw(1e-3),
                  f"GaLore(AdamW), rank {rank}": galore(optax.adamw(1e-2), rank=rank),
                  "SMMF": smmf(1e-3)}
    results = {}
    for name, tx in optimizers.items():
        model = MLP(hidden, rngs=nnx.Rngs(seed))
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

        @nnx.jit
        def step(model, optimizer, xb, yb):
            def loss_fn(m):
                return optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()
            loss, grads = nnx.value_and_grad(loss_fn)(model)
            optimizer.update(model, grads)
            return loss

        losses = [float(step(model, optimizer, x[i], y[i]))
                  for i in tqdm(idx, desc=name, leave=False)]
        results[name] = (np.asarray(losses), state_bytes(optimizer.opt_state))
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    p.add_argument("--quick", "--small", action="store_true", help="a fast smoke run (200 steps)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--out", default="optimizer_memory.png")
    args = p.parse_args(argv)
    steps = args.steps or (200 if args.quick else 1500)
    results = run(steps, hidden=64 if args.quick else 256)
    adam = results["AdamW"][1]
    print(f"{'optimizer':<26} {'state bytes':>12} {'of AdamW':>9} {'final loss':>11}")
    for name, (losses, nbytes) in results.items():
        print(f"{name:<26} {nbytes:>12,} {nbytes / adam:>9.3f} {losses[-50:].mean():>11.4f}")
    fig, ax = plt.subplots(figsize=(6, 4))
    window = 20
    for name, (losses, nbytes) in results.items():
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(smooth, label=f"{name} ({nbytes / adam:.0%} of AdamW's state)")
    ax.set(xlabel="step", ylabel=f"training loss ({window}-step mean)", yscale="log",
           title="MLP on digits: optimizer state vs loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    plt.close(fig)
    print(f"saved {args.out}")
    return results


if __name__ == "__main__":
    main()
