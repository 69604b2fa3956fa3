"""Stochastic Poisson GCP of a large sparse count tensor: tensorfact vs pyttb's gcp_opt.

Both stochastic sides fit the same planted sparse count tensor (Poisson draws of a CP rate
tensor whose components live on small blocks, so the rates are zero elsewhere) from the same
nonnegative start, by Adam on stratified samples (``p`` nonzeros and ``q`` zeros per step,
Kolda & Hong 2020) for the same number of steps: ``tfa.gcp(bcoo, loss="poisson",
n_samples=(p, q))`` (one compiled ``lax.scan``) and ``pyttb.gcp_opt`` with ``Adam`` and a
``GCPSampler`` (``STRATIFIED``, the same counts; epochs of 100 steps, its default decay on a
failed epoch). For reference, ``tfa.gcp`` full-gradient projected L-BFGS on the same BCOO (exact
closed-form sum over the zeros) runs for ``--full-iters`` iterations. Each side runs in a fresh
subprocess, so its peak resident memory (``ru_maxrss``) is its own. The exact Poisson loss
``Σ_all m − Σ_nz x log(m + ε)`` (per nonzero) and the factor match score against the planted
factors are computed in float64 on the host from the nonzeros and column sums, never densely.
The default preset is 10⁴ × 10⁴ × 10³ (10¹¹ entries) with about 10⁶ nonzeros at rank 10.
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

PRESETS = {"cpu": dict(shape=(10000, 10000, 1000), per_mode=(100, 100, 10), rank=10, mean=3.0,
                       steps=2000, p=5000, q=5000, lr=1e-2, full_iters=50, repeats=1),
           "small": dict(shape=(300, 200, 100), per_mode=(20, 15, 5), rank=4, mean=3.0,
                         steps=200, p=500, q=500, lr=1e-2, full_iters=20, repeats=1)}
EPS = 1e-10


def planted(shape, per_mode, rank, mean, seed=0):
    """(indices (nnz, 3), counts float32, factors): Poisson counts of a CP rate tensor whose
    r-th component lives on ``per_mode[n]`` random rows of each mode (mean rate ``mean`` on the
    blocks, zero elsewhere); only the positive counts are stored."""
    rng = np.random.default_rng(seed)
    factors, rows = [], []
    for size, k in zip(shape, per_mode):
        a = np.zeros((size, rank))
        picks = [rng.choice(size, k, replace=False) for _ in range(rank)]
        for r in range(rank):
            a[picks[r], r] = rng.uniform(0.5, 1.5, k)
        factors.append(a)
        rows.append(picks)
    factors[0] *= mean
    idx = np.concatenate([np.stack(np.meshgrid(*[rows[n][r] for n in range(len(shape))],
                                               indexing="ij"), -1).reshape(-1, len(shape))
                          for r in range(rank)])
    idx = np.unique(idx, axis=0)
    rates = np.zeros(len(idx))
    for r in range(rank):
        rates += np.prod([factors[n][idx[:, n], r] for n in range(len(shape))], axis=0)
    counts = rng.poisson(rates)
    keep = counts > 0
    return idx[keep], counts[keep].astype(np.float32), factors


def start(shape, rank, total, seed=1):
    """Uniform nonnegative factors scaled so the model's total mass ``Σ m`` equals ``Σ x``."""
    rng = np.random.default_rng(seed)
    fs = [rng.uniform(size=(s, rank)) for s in shape]
    mass = np.sum(np.prod([f.sum(axis=0) for f in fs], axis=0))
    c = (total / mass) ** (1 / len(shape))
    return [(f * c).astype(np.float32) for f in fs]


def poisson_loss(idx, vals, weights, factors):
    """``(Σ_all m − Σ_nz x log(m + ε)) / nnz`` in float64, from the nonzeros and column sums."""
    w = np.asarray(weights, np.float64)
    fs = [np.asarray(a, np.float64) for a in factors]
    total = np.sum(w * np.prod([f.sum(axis=0) for f in fs], axis=0))
    m = (w * np.prod([f[idx[:, n]] for n, f in enumerate(fs)], axis=0)).sum(axis=1)
    v = vals.astype(np.float64)
    return (total - np.sum(v * np.log(m + EPS))) / len(v)


def fms(true, weights, factors):
    """Factor match score (mean over matched components of ``∏_n |cos|``; Hungarian match)."""
    from scipy.optimize import linear_sum_assignment
    rank = true[0].shape[1]
    cos = np.ones((rank, rank))
    for a, b in zip(true, factors):
        b = np.asarray(b, np.float64)
        cos *= np.abs((a / np.linalg.norm(a, axis=0)).T
                      @ (b / np.maximum(np.linalg.norm(b, axis=0), 1e-300)))
    r, c = linear_sum_assignment(-cos)
    return float(cos[r, c].mean())


def worker(side, cfg):
    """One side in this (fresh) process: prints a JSON row."""
    idx, vals, true = planted(cfg["shape"], cfg["per_mode"], cfg["rank"], cfg["mean"])
    shape, rank = tuple(cfg["shape"]), cfg["rank"]
    init = start(shape, rank, float(vals.sum()))
    times = []
    if side.startswith("tensorfact"):
        import jax

        import tensorfact as tfa
        x = tfa.sparse_tensor(idx, vals, shape)
        init_t = tfa.CPTensor(jax.numpy.ones(rank), [jax.numpy.asarray(a) for a in init])
        if side == "tensorfact":
            fn = jax.jit(lambda x, s: tfa.gcp(
                x, rank, loss="poisson", init=s, key=jax.random.key(0), n_samples=(cfg["p"],
                                                                                   cfg["q"]),
                n_iter=cfg["steps"], tol=0, learning_rate=cfg["lr"], return_info=True))
        else:
            fn = jax.jit(lambda x, s: tfa.gcp(x, rank, loss="poisson", init=s,
                                              n_iter=cfg["full_iters"], tol=0,
                                              return_info=True))
        for _ in range(cfg["repeats"] + 1):
            t0 = time.perf_counter()
            out, info = jax.block_until_ready(fn(x, init_t))
            times.append(time.perf_counter() - t0)
        weights, factors = out.weights, out.factors
        n_done = int(info.n_iter)
        estimate = float(info.losses[n_done - 1]) * float(np.prod(shape)) / len(vals)
        if side != "tensorfact":
            estimate = float("nan")  # the full fit's loss is exact: the next column
        version = tfa.__version__
    else:
        import pyttb as ttb
        from pyttb.gcp.fg_setup import Objectives
        from pyttb.gcp.optimizers import Adam
        from pyttb.gcp.samplers import GCPSampler, Samplers, StratifiedCount
        x = ttb.sptensor(idx.astype(np.int64), vals.astype(np.float64)[:, None], shape)
        # the same Adam step in the data's units: tensorfact's step is on x / 2^k, whose
        # factors are 2^(k/N) times smaller
        k = np.ceil(np.log2(vals.max())) if vals.max() > 0 else 0
        rate = cfg["lr"] * 2.0 ** (k / len(shape))
        epoch = min(100, cfg["steps"])
        for _ in range(cfg["repeats"] + 1):
            kt = ttb.ktensor([a.astype(np.float64) for a in init], np.ones(rank))
            sampler = GCPSampler(
                x, function_sampler=Samplers.STRATIFIED,
                function_samples=StratifiedCount(4 * cfg["q"], 4 * cfg["p"]),
                gradient_sampler=Samplers.STRATIFIED,
                gradient_samples=StratifiedCount(cfg["q"], cfg["p"]))
            opt = Adam(rate=rate, epoch_iters=epoch, max_iters=cfg["steps"] // epoch,
                       max_fails=cfg["steps"], printitn=0)  # all epochs: the same steps
            t0 = time.perf_counter()
            out, _, details = ttb.gcp_opt(x, rank, Objectives.POISSON, opt, init=kt,
                                          sampler=sampler, printitn=0)
            times.append(time.perf_counter() - t0)
        weights, factors = out.weights, out.factor_matrices
        n_done = (int(details["n_epoch"]) + 1) * epoch
        estimate = float("nan")  # pyttb's trace stops one epoch short of its result
        version = ttb.__version__
    row = dict(side=side, version=version, nnz=int(len(vals)), first_s=times[0],
               median_s=float(np.median(times[1:])) if len(times) > 1 else times[0],
               steps=n_done, estimate=estimate,
               loss=float(poisson_loss(idx, vals, weights, factors)),
               fms=fms(true, weights, factors),
               peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(row))


def argparse_hidden():
    import argparse
    return argparse.SUPPRESS


def main(argv=None):
    p = parser(__doc__.splitlines()[0], small="300×200×100, ~7·10³ nonzeros, rank 4, 200 steps",
               default="cpu")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--full-iters", type=int, default=None)
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--worker", help=argparse_hidden())
    p.add_argument("--config", help=argparse_hidden())
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, json.loads(args.config))
        return None
    cfg = dict(PRESETS[args.preset])
    for name in ("repeats", "steps", "full_iters"):
        if getattr(args, name) is not None:
            cfg[name] = getattr(args, name)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS", "1"),
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    rows = []
    for side in ("tensorfact", "pyttb", "tensorfact-full"):
        run = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", side,
                              "--config", json.dumps(cfg)], capture_output=True, text=True,
                             env=env, cwd=os.path.dirname(os.path.abspath(__file__)))
        if run.returncode:
            raise RuntimeError(f"{side} worker failed:\n{run.stderr[-3000:]}")
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
    idx, vals, true = planted(cfg["shape"], cfg["per_mode"], cfg["rank"], cfg["mean"])
    truth = poisson_loss(idx, vals, np.ones(cfg["rank"]), true)
    names = {"tensorfact": f"tfa.gcp(poisson, n_samples=({cfg['p']}, {cfg['q']})) Adam",
             "pyttb": f"pyttb.gcp_opt(POISSON, Adam, STRATIFIED {cfg['p']}+{cfg['q']})",
             "tensorfact-full": "tfa.gcp(poisson) full-gradient L-BFGS"}
    print(f"# data: {'×'.join(map(str, cfg['shape']))} planted sparse Poisson counts, rank "
          f"{cfg['rank']}, {rows[0]['nnz']} nonzeros (dense float32 would be "
          f"{4 * np.prod(cfg['shape']) / 1e9:.3g} GB); same start; {cfg['steps']} Adam steps "
          f"(lr {cfg['lr']} on x/2^k), L-BFGS {cfg['full_iters']} iterations; median of "
          f"{cfg['repeats']} after a first call; each side in its own process; "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print(f"# planted rates' exact loss per nonzero: {truth:.6f}")
    print(markdown_table(
        ("method", "version", "steps", "median s", "first call s", "estimated loss/nnz",
         "exact loss/nnz (float64)", "FMS", "peak RSS MiB"),
        # estimated: tensorfact's own estimate on its fixed sample (4 × (p, q) entries)
        [(names[r["side"]], r["version"], r["steps"], f"{r['median_s']:.2f}",
          f"{r['first_s']:.2f}",
          "—" if np.isnan(r["estimate"]) else f"{r['estimate']:.5f}", f"{r['loss']:.6f}",
          f"{r['fms']:.4f}",
          f"{r['peak_rss_mib']:.0f}") for r in rows]))
    write_json(args.json, dict(config=cfg, truth=truth, results=rows))
    return rows


if __name__ == "__main__":
    main()
