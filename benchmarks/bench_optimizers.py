"""Optimizer state, loss and step time: AdamW, Adafactor, GaLore(AdamW) at two ranks and SMMF.

The same MLP (scikit-learn's digits, 64 → hidden → hidden → 10, cross-entropy), the same batches
and the same number of steps for every optimizer, in one process. Each row reports the bytes of
the optimizer state (:func:`tensorfact.optim.state_bytes`), that over AdamW's, the training loss
averaged over the last 50 steps, the test accuracy, and the median time of a compiled step
(after a compiling first step). Learning rates are each method's customary default for this
size (AdamW 1e-3; Adafactor 1e-2; GaLore's inner AdamW 1e-2 with its scale 0.25, as in the paper;
SMMF 1e-3); they are not tuned per method.

    python benchmarks/bench_optimizers.py --small     # CPU smoke: hidden 64, 60 steps
    python benchmarks/bench_optimizers.py             # hidden 512, 1500 steps
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _harness import add_output_flags, environment, markdown_table, parser, write_json

from tensorfact.optim import galore, smmf, state_bytes


def digits(seed=0):
    from sklearn.datasets import load_digits
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    cut = int(0.8 * len(y))
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def init_mlp(key, sizes):
    params = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        key, sub = jax.random.split(key)
        params[f"w{i}"] = jax.random.normal(sub, (fan_in, fan_out)) / np.sqrt(fan_in)
        params[f"b{i}"] = jnp.zeros((fan_out,))
    return params


def forward(params, x):
    n = len(params) // 2
    for i in range(n):
        x = x @ params[f"w{i}"] + params[f"b{i}"]
        if i < n - 1:
            x = jax.nn.relu(x)
    return x


def loss_fn(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(forward(params, x), y).mean()


def optimizers(hidden):
    r1, r2 = max(hidden // 8, 1), max(hidden // 16, 1)
    return {
        "adamw": optax.adamw(1e-3),
        "adafactor": optax.adafactor(1e-2),
        f"galore(adamw) r={r1}": galore(optax.adamw(1e-2), rank=r1, update_proj_gap=200),
        f"galore(adamw) r={r2}": galore(optax.adamw(1e-2), rank=r2, update_proj_gap=200),
        "smmf": smmf(1e-3),
    }


def train(tx, params, batches, x_test, y_test):
    state = tx.init(params)

    @jax.jit
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses, times = [], []
    for x, y in batches:
        start = time.perf_counter()
        params, state, loss = step(params, state, x, y)
        loss.block_until_ready()
        times.append(time.perf_counter() - start)
        losses.append(float(loss))
    accuracy = float(jnp.mean(jnp.argmax(forward(params, x_test), -1) == y_test))
    return dict(state_bytes=state_bytes(state), losses=losses, accuracy=accuracy,
                step_ms=1e3 * float(np.median(times[1:])), first_step_s=times[0])


def main(argv=None):
    p = parser(__doc__.splitlines()[0], small="hidden 64, 60 steps")
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=128)
    add_output_flags(p)
    args = p.parse_args(argv)
    hidden = args.hidden or (64 if args.preset == "small" else 512)
    steps = args.steps or (60 if args.preset == "small" else 1500)
    (x_train, y_train), (x_test, y_test) = digits()
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(steps):
        idx = rng.integers(0, len(y_train), args.batch)
        batches.append((jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx])))
    params = init_mlp(jax.random.key(0), (64, hidden, hidden, 10))
    env = environment()
    print("# " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print(f"# MLP 64-{hidden}-{hidden}-10 on digits ({len(y_train)} train / {len(y_test)} test), "
          f"batch {args.batch}, {steps} steps, same batches for every optimizer")
    results, rows = {}, []
    for name, tx in optimizers(hidden).items():
        results[name] = train(tx, params, batches, jnp.asarray(x_test), jnp.asarray(y_test))
    adam = results["adamw"]["state_bytes"]
    tail = min(50, steps)
    for name, r in results.items():
        rows.append([name, f"{r['state_bytes']:,}", f"{r['state_bytes'] / adam:.3f}",
                     f"{np.mean(r['losses'][-tail:]):.4f}", f"{r['accuracy']:.3f}",
                     f"{r['step_ms']:.2f}"])
    print(markdown_table(["optimizer", "state bytes", "state / AdamW's",
                          f"train loss (last {tail})", "test accuracy", "step ms (median)"],
                         rows))
    write_json(args.json, dict(environment=env, hidden=hidden, steps=steps,
                               results={k: {**v, "losses": v["losses"]}
                                        for k, v in results.items()}))
    return results


if __name__ == "__main__":
    main()
