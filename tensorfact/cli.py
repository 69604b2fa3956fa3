"""Command line: ``python -m tensorfact demo`` (or the ``tensorfact`` script).

The demo has two sides. The data side makes a noisy low-rank tensor, decomposes it with CP and
Tucker, and prints for each method the fit, the compression ratio and the time (compilation and
steady state apart). The model side (``tensorfact._model_demo``) trains a small Flax NNX MLP on
a synthetic task, adapts it to a shifted task with LoRA and DoRA (``tensorfact.nn``'s
``apply_adapters``), merges the adapters and compresses the merged model, printing the
trainable parameters, the losses before and after and the compression table.
"""

from __future__ import annotations

import argparse
import time

import jax

import tensorfact as tfa


def _timed(fn, repeats: int):
    """Returns (result, first-call seconds, median seconds of ``repeats`` further calls)."""
    start = time.perf_counter()
    result = jax.block_until_ready(fn())
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - start)
    runs.sort()
    return result, first, runs[len(runs) // 2]


def demo(shape=(60, 70, 80), rank=6, noise=0.05, seed=0, n_iter=50, repeats=3) -> list[dict]:
    """Decomposes a planted CP tensor plus Gaussian noise with several methods; returns rows."""
    key_data, key_noise = jax.random.split(jax.random.key(seed))
    clean = tfa.random_cp(key_data, shape, rank).to_dense()
    x = tfa.noisy(key_noise, clean, noise)
    ranks = (rank,) * len(shape)
    methods = {
        f"CP-ALS (rank {rank})": lambda: tfa.cp(x, rank, n_iter=n_iter),
        f"Tucker HOOI (ranks {ranks})": lambda: tfa.tucker(x, ranks, n_iter=n_iter),
        f"Tucker HOSVD (ranks {ranks})": lambda: tfa.tucker(x, ranks, method="hosvd"),
        f"Tucker ST-HOSVD (ranks {ranks})": lambda: tfa.tucker(x, ranks, method="st_hosvd"),
    }
    rows = []
    for name, fn in methods.items():
        approx, first, median = _timed(fn, repeats)
        dense = approx.to_dense()
        rows.append(dict(
            method=name, fit=float(tfa.fit(x, dense)),
            error_vs_clean=float(tfa.relative_error(clean, dense)),
            compression=approx.compression_ratio, params=approx.n_params,
            compile_s=first - median, run_ms=1e3 * median))
    return rows


def _print_demo(rows, shape, noise):
    print(f"tensorfact {tfa.__version__} on {jax.devices()[0].platform}: "
          f"planted CP tensor {shape} + {noise:.0%} noise "
          f"(best possible fit ≈ {1 - noise:.3f})\n")
    head = f"{'method':34} {'fit':>7} {'err vs clean':>12} {'compress':>9} {'params':>8} " \
           f"{'compile s':>9} {'run ms':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['method']:34} {r['fit']:7.4f} {r['error_vs_clean']:12.2e} "
              f"{r['compression']:8.1f}x {r['params']:8d} {r['compile_s']:9.2f} "
              f"{r['run_ms']:8.1f}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(_positive_int(s) for s in text.split(","))
    except argparse.ArgumentTypeError:
        shape = ()
    if len(shape) < 2:
        raise argparse.ArgumentTypeError(f"must be at least two positive sizes separated by "
                                         f"commas, e.g. 60,70,80; got {text!r}")
    return shape


def main(argv=None) -> int:
    """Entry point of the ``tensorfact`` command."""
    parser = argparse.ArgumentParser(prog="tensorfact", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="decompose a noisy low-rank tensor with CP and Tucker, "
                                    "then adapt, merge and compress a small NNX model")
    p.add_argument("--shape", type=_shape, default=(60, 70, 80),
                   help="tensor shape, comma-separated (default 60,70,80)")
    p.add_argument("--rank", type=_positive_int, default=6, help="planted and fitted rank")
    p.add_argument("--noise", type=float, default=0.05, help="noise level ‖e‖/‖x‖")
    p.add_argument("--n-iter", type=_positive_int, default=50,
                   help="iterations of the iterative fits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=_positive_int, default=3, help="timed runs after the first")
    p.add_argument("--no-model", action="store_true",
                   help="the data side only (skip the NNX model: adapters, merge, compress)")
    args = parser.parse_args(argv)
    if not 0 <= args.noise < 1:
        p.error(f"argument --noise: must be in [0, 1), got {args.noise!r}")
    rows = demo(args.shape, args.rank, args.noise, args.seed, args.n_iter, args.repeats)
    _print_demo(rows, args.shape, args.noise)
    if not args.no_model:
        from tensorfact._model_demo import model_demo, print_model_demo  # imports Flax

        print_model_demo(model_demo(seed=args.seed))
    return 0
