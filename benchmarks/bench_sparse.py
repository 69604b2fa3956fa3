"""Sparse CP-ALS: tensorfact.cp on a BCOO against pyttb's cp_als on an sptensor.

Both sides fit the same planted sparse tensor (a CP tensor whose factor columns are sparse, plus
noise on its nonzeros) from the same random start, for the same number of sweeps (no early
stop). Each side runs in a fresh subprocess, so its peak resident memory (``ru_maxrss``) is its
own: the default preset is the issue's 10⁴ × 10⁴ × 10³ tensor with about 10⁶ nonzeros at rank
10, whose dense form would take 400 GB. The fit ``1 − ‖x − x̂‖/‖x‖`` is computed in float64 on
the host from the nonzeros and the Gram matrices (never densely).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

from _harness import markdown_table, parser, write_json

PRESETS = {"cpu": dict(shape=(10000, 10000, 1000), per_mode=(100, 100, 10), rank=10,
                       n_iter=10, repeats=2),
           "small": dict(shape=(300, 200, 100), per_mode=(20, 15, 5), rank=4, n_iter=5,
                         repeats=1)}


def planted(shape, per_mode, rank, seed=0, noise=0.05):
    """(indices int64 (nnz, 3), values float32, factors): a CP tensor whose r-th component
    lives on ``per_mode[n]`` random rows of each mode, noise of relative size ``noise``."""
    rng = np.random.default_rng(seed)
    factors, rows = [], []
    for size, k in zip(shape, per_mode):
        a = np.zeros((size, rank))
        picks = [rng.choice(size, k, replace=False) for _ in range(rank)]
        for r in range(rank):
            a[picks[r], r] = rng.uniform(0.5, 1.5, k)
        factors.append(a)
        rows.append(picks)
    idx = np.concatenate([np.stack(np.meshgrid(*[rows[n][r] for n in range(len(shape))],
                                               indexing="ij"), -1).reshape(-1, len(shape))
                          for r in range(rank)])
    idx = np.unique(idx, axis=0)
    vals = np.zeros(len(idx))
    for r in range(rank):
        vals += np.prod([factors[n][idx[:, n], r] for n in range(len(shape))], axis=0)
    vals += noise * vals.std() * rng.standard_normal(len(idx))
    return idx, vals.astype(np.float32), factors


def start(shape, rank, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((s, rank)).astype(np.float32) for s in shape]


def fit64(idx, vals, weights, factors):
    """``1 − ‖x − x̂‖/‖x‖`` in float64 from the nonzeros and the Gram matrices."""
    w = np.asarray(weights, np.float64)
    fs = [np.asarray(a, np.float64) for a in factors]
    at = w * np.prod([f[idx[:, n]] for n, f in enumerate(fs)], axis=0)
    fitted = at.sum(axis=1)
    gram = np.prod([f.T @ f for f in fs], axis=0)
    approx_sq = w @ gram @ w
    v = vals.astype(np.float64)
    err_sq = np.sum((v - fitted) ** 2) + max(approx_sq - np.sum(fitted ** 2), 0.0)
    return 1 - np.sqrt(err_sq) / np.linalg.norm(v)


def worker(side, cfg):
    """One side in this (fresh) process: prints a JSON row."""
    idx, vals, _ = planted(cfg["shape"], cfg["per_mode"], cfg["rank"])
    init = start(cfg["shape"], cfg["rank"])
    rank, n_iter = cfg["rank"], cfg["n_iter"]
    times = []
    if side == "tensorfact":
        import jax

        import tensorfact as tfa
        x = tfa.sparse_tensor(idx, vals, cfg["shape"])
        init_t = tfa.CPTensor(jax.numpy.ones(rank), [jax.numpy.asarray(a) for a in init])
        fn = jax.jit(lambda x, s: tfa.cp(x, rank, init=s, n_iter=n_iter, tol=0))
        for k in range(cfg["repeats"] + 1):
            t0 = time.perf_counter()
            out = jax.block_until_ready(fn(x, init_t))
            times.append(time.perf_counter() - t0)
        weights, factors = out.weights, out.factors
        version = tfa.__version__
    else:
        import pyttb as ttb
        x = ttb.sptensor(idx.astype(np.int64), vals.astype(np.float64)[:, None],
                         tuple(cfg["shape"]))
        for k in range(cfg["repeats"] + 1):
            kt = ttb.ktensor([a.astype(np.float64) for a in init], np.ones(rank))
            t0 = time.perf_counter()
            out, _, _ = ttb.cp_als(x, rank, stoptol=0.0, maxiters=n_iter, init=kt, printitn=0)
            times.append(time.perf_counter() - t0)
        weights, factors = out.weights, out.factor_matrices
        version = ttb.__version__
    row = dict(side=side, version=version, nnz=int(len(vals)), first_s=times[0],
               median_s=float(np.median(times[1:])) if len(times) > 1 else times[0],
               fit=float(fit64(idx, vals, weights, factors)),
               peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(row))


def main(argv=None):
    p = parser(__doc__.splitlines()[0], small="300×200×100, ~6·10³ nonzeros, rank 4, 5 sweeps",
               default="cpu")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--n-iter", type=int, default=None)
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--worker", choices=("tensorfact", "pyttb"), help=argparse_hidden())
    p.add_argument("--config", help=argparse_hidden())
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, json.loads(args.config))
        return None
    cfg = dict(PRESETS[args.preset])
    if args.repeats is not None:
        cfg["repeats"] = args.repeats
    if args.n_iter is not None:
        cfg["n_iter"] = args.n_iter
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"),
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    rows = []
    for side in ("tensorfact", "pyttb"):
        run = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", side,
                              "--config", json.dumps(cfg)], capture_output=True, text=True,
                             env=env, cwd=os.path.dirname(os.path.abspath(__file__)))
        if run.returncode:
            raise RuntimeError(f"{side} worker failed:\n{run.stderr[-3000:]}")
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
    dense_gb = 4 * np.prod(cfg["shape"]) / 1e9
    print(f"# data: {'×'.join(map(str, cfg['shape']))} planted sparse CP rank {cfg['rank']} + "
          f"5% noise, {rows[0]['nnz']} nonzeros (dense float32 would be {dense_gb:.3g} GB); "
          f"same random start, {cfg['n_iter']} sweeps, no early stop; median of "
          f"{cfg['repeats']} after a first (compiling) call; each side in its own process; "
          f"OPENBLAS_NUM_THREADS={env['OPENBLAS_NUM_THREADS']}, {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f}")
    print(markdown_table(
        ("side", "version", "median s", "first call s", "fit (float64)", "peak RSS MiB"),
        [(r["side"], r["version"], f"{r['median_s']:.3f}", f"{r['first_s']:.2f}",
          f"{r['fit']:.6f}", f"{r['peak_rss_mib']:.0f}") for r in rows]))
    write_json(args.json, dict(config=cfg, results=rows))
    return rows


def argparse_hidden():
    import argparse
    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
