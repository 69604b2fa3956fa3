"""Time tensorfact's generalized CP (``tfa.gcp``) against pyttb's ``gcp_opt`` and ``cp_apr``.

Protocol (the project's BENCHMARKS.md): one process, the same data, rank, starting point and
iteration count on every side, the first (compiling) call reported apart, the median of
``--repeats`` calls; every row carries the loss and the factor match score computed in float64
on the host from the returned model, so a faster but worse answer cannot pass as a win.

Two cases:

* **Planted Poisson counts**: factors with Gamma(0.5, 1) entries (sparse-ish, well separated),
  the rate tensor scaled to mean 5, counts drawn from it (float32). Every side starts from the
  same uniform random CP tensor and runs ``--n-iter`` iterations:

  - ``tfa.gcp(loss="poisson")``: projected L-BFGS with Armijo backtracking (``tol=0``);
  - ``pyttb.gcp_opt(Objectives.POISSON, LBFGSB(maxiter=n_iter))``: SciPy's L-BFGS-B with lower
    bound 0 (the Tensor Toolbox's default GCP solver), float64 NumPy;
  - ``pyttb.cp_apr(algorithm="mu", maxiters=n_iter)``: Chi & Kolda's multiplicative updates
    (each outer iteration makes up to 10 inner updates per mode; ``stoptol=0``);
  - the same with ``3 × n_iter`` iterations (our projected L-BFGS needs about three times
    SciPy's L-BFGS-B iterations on this problem; see NOTES);
  - ``tfa.cp_apr``: the same multiplicative updates as pyttb's (``tol=0``: every outer
    iteration makes all ``inner_iter = 10`` inner updates, as pyttb's with ``stoptol=0``);
  - ``tfa.gcp(loss="poisson", n_samples=s)``: stochastic GCP, Adam on ``s`` sampled entries per
    step, ``10 × n_iter`` steps (a different amount of work: compare the loss column).

  The loss is the mean Poisson loss ``mean(m − x log(m + 1e-10))`` over all entries; FMS is the
  factor match score against the planted factors (best permutation; 1 is perfect).

* **Real data with missing entries**: TensorLy's IL-2 mutein tensor (``load_IL2data``: 13
  muteins × 4 time points × 12 concentrations × 8 cell types, 3.8% missing), loaded at run time,
  fitted with the Gaussian loss on the observed entries at rank ``--il2-rank``. It is the data
  set TensorLy's own masked-CP example uses, small, with real gaps: the mask path of every side
  is exercised. Sides: ``tfa.gcp(mask=…)`` (L-BFGS), ``tfa.cp(mask=…)`` (weighted ALS, the same
  least-squares objective by another method) and ``pyttb.gcp_opt(Objectives.GAUSSIAN, mask=…)``
  (L-BFGS-B), from the same random start; the column is the relative error on the observed
  entries.

    python benchmarks/bench_gcp.py --small     # CPU smoke: 10 × 12 × 14, rank 3, 30 iterations
    python benchmarks/bench_gcp.py             # 30 × 40 × 50, rank 5, 100 iterations
"""

from __future__ import annotations

import itertools
import os
import platform
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from _harness import (add_output_flags, cpu_name, markdown_table, median_ms, parser, sync_jax,
                      sync_nothing, write_json)

import tensorfact as tfa

EPS = 1e-10


def planted_counts(shape, rank, mean, seed):
    rng = np.random.default_rng(seed)
    factors = [rng.gamma(0.5, 1.0, (n, rank)) for n in shape]
    rates = np.einsum(_spec(len(shape)), *factors)
    rates *= mean / rates.mean()
    return factors, rng.poisson(rates).astype(np.float32)


def _spec(ndim):
    letters = "ijklmnop"[:ndim]
    return ",".join(f"{c}r" for c in letters) + "->" + letters


def dense(weights, factors):
    factors = [np.asarray(a, np.float64) for a in factors]
    factors[0] = factors[0] * np.asarray(weights, np.float64)
    return np.einsum(_spec(len(factors)), *factors)


def poisson_loss(x, m):
    return float(np.mean(m - x * np.log(m + EPS)))


def fms(true, fitted):
    rank = true[0].shape[1]
    cos = np.ones((rank, rank))
    for a, b in zip(true, fitted):
        a = np.asarray(a, np.float64)
        b = np.asarray(b, np.float64)
        na, nb = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)
        cos = cos * np.abs((a / np.where(na > 0, na, 1)).T @ (b / np.where(nb > 0, nb, 1)))
    if rank <= 7:
        return float(max(np.mean(cos[np.arange(rank), list(p)])
                         for p in itertools.permutations(range(rank))))
    from scipy.optimize import linear_sum_assignment
    r, c = linear_sum_assignment(-cos)
    return float(np.mean(cos[r, c]))


def _pyttb_start(ttb, factors):
    """The start every side gets: uniform factors after pyttb's ``normalize("all")`` (which
    ``gcp_opt`` applies to any start it is given: equal column norms in every mode, weights 1)."""
    k = ttb.ktensor([np.asfortranarray(a) for a in factors]).normalize("all")
    weights = np.asarray(k.weights, np.float64)
    assert np.allclose(weights, 1.0)
    return [np.asarray(a, np.float64) for a in k.factor_matrices]


def main(argv=None):
    p = parser(__doc__.splitlines()[0], small="10 × 12 × 14, rank 3, 30 iterations")
    p.add_argument("--shape", default=None)
    p.add_argument("--rank", type=int, default=None)
    p.add_argument("--n-iter", type=int, default=None)
    p.add_argument("--n-samples", type=int, default=None)
    p.add_argument("--il2-rank", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    add_output_flags(p)
    args = p.parse_args(argv)
    if args.preset == "small":
        shape, rank, n_iter, n_samples = (10, 12, 14), 3, 30, 200
    else:
        shape, rank, n_iter, n_samples = (30, 40, 50), 5, 100, 2000
    if args.shape:
        shape = tuple(int(s) for s in args.shape.split(","))
    rank = args.rank or rank
    n_iter = args.n_iter or n_iter
    n_samples = args.n_samples or n_samples

    import pyttb as ttb
    import tensorly
    from pyttb.gcp.handles import Objectives
    from pyttb.gcp.optimizers import LBFGSB

    ncpu = os.cpu_count() or 1
    load = os.getloadavg()
    print(f"# tensorfact {tfa.__version__}, jax {jax.__version__} "
          f"({jax.devices()[0].platform}), pyttb {ttb.__version__}, tensorly "
          f"{tensorly.__version__}, numpy {np.__version__}, Python {platform.python_version()}")
    print(f"# machine: {cpu_name()}, {ncpu} logical cores")
    if load[0] > 0.5:
        print(f"# note: load average {load[0]:.2f} before the run: timings may be noisy")

    rows = []

    # -- case 1: planted Poisson ----------------------------------------------------------
    true, counts = planted_counts(shape, rank, 5.0, 0)
    x64 = counts.astype(np.float64)
    rng = np.random.default_rng(1)
    init = _pyttb_start(ttb, [rng.uniform(size=(n, rank)) for n in shape])
    print(f"# case 1: planted Poisson counts {'×'.join(map(str, shape))}, rank {rank}, mean "
          f"rate 5, {n_iter} iterations from the same uniform start; median of {args.repeats}")

    def add(case, name, out, t_ms, t_first, model, factors, extra=None):
        row = {"case": case, "name": name, "median_ms": t_ms, "first_s": t_first}
        if case == "poisson":
            row["loss"] = poisson_loss(x64, model)
            row["fms"] = fms(true, factors)
        row.update(extra or {})
        rows.append(row)

    xj = jnp.asarray(counts)
    start = tfa.CPTensor(jnp.ones((rank,), jnp.float32),
                         tuple(jnp.asarray(a, jnp.float32) for a in init))  # the same start
    gcp_fn = jax.jit(lambda x, s: tfa.gcp(x, rank, loss="poisson", init=s, n_iter=n_iter, tol=0))
    out, t_ms, t_first = median_ms(lambda: gcp_fn(xj, start), sync_jax, args.repeats)
    add("poisson", "tfa.gcp(loss='poisson') projected L-BFGS", out, t_ms, t_first,
        dense(out.weights, out.factors), out.factors)

    long_fn = jax.jit(lambda x, s: tfa.gcp(x, rank, loss="poisson", init=s, n_iter=3 * n_iter,
                                           tol=0))
    out, t_ms, t_first = median_ms(lambda: long_fn(xj, start), sync_jax, args.repeats)
    add("poisson", f"tfa.gcp(loss='poisson') projected L-BFGS, {3 * n_iter} iterations", out,
        t_ms, t_first, dense(out.weights, out.factors), out.factors)

    key = jax.random.key(0)
    sgd_fn = jax.jit(lambda x, s: tfa.gcp(x, rank, loss="poisson", init=s, key=key,
                                          n_samples=n_samples, n_iter=10 * n_iter, tol=0))
    out, t_ms, t_first = median_ms(lambda: sgd_fn(xj, start), sync_jax, args.repeats)
    add("poisson", f"tfa.gcp(loss='poisson', n_samples={n_samples}) Adam, {10 * n_iter} steps",
        out, t_ms, t_first, dense(out.weights, out.factors), out.factors)

    xt = ttb.tensor(x64)

    def pyttb_gcp():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m, _, _ = ttb.gcp_opt(xt, rank, Objectives.POISSON, LBFGSB(maxiter=n_iter),
                                  init=ttb.ktensor([np.asfortranarray(a) for a in init]),
                                  printitn=0)
        return m

    out, t_ms, t_first = median_ms(pyttb_gcp, sync_nothing, args.repeats)
    add("poisson", "pyttb.gcp_opt(POISSON, LBFGSB) (SciPy L-BFGS-B)", out, t_ms, t_first,
        dense(out.weights, out.factor_matrices), out.factor_matrices)

    def pyttb_apr():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m, _, _ = ttb.cp_apr(xt, rank,
                                 init=ttb.ktensor([np.asfortranarray(a) for a in init]),
                                 maxiters=n_iter, stoptol=0.0, printitn=0)
        return m

    out, t_ms, t_first = median_ms(pyttb_apr, sync_nothing, args.repeats)
    add("poisson", "pyttb.cp_apr(algorithm='mu')", out, t_ms, t_first,
        dense(out.weights, out.factor_matrices), out.factor_matrices)

    apr_fn = jax.jit(lambda x, s: tfa.cp_apr(x, rank, init=s, n_iter=n_iter, tol=0.0))
    out, t_ms, t_first = median_ms(lambda: apr_fn(xj, start), sync_jax, args.repeats)
    add("poisson", "tfa.cp_apr (multiplicative updates)", out, t_ms, t_first,
        dense(out.weights, out.factors), out.factors)

    truth = np.einsum(_spec(len(shape)), *true)
    truth *= 5.0 / truth.mean()
    print(f"# planted rates' own loss on the counts: {poisson_loss(x64, truth):.6f}")
    print(markdown_table(
        ("method", "median ms", "first call s", "mean Poisson loss", "FMS"),
        [(r["name"], f"{r['median_ms']:.1f}", f"{r['first_s']:.2f}", f"{r['loss']:.6f}",
          f"{r['fms']:.4f}") for r in rows if r["case"] == "poisson"]))

    # -- case 2: IL-2 with missing entries, Gaussian ---------------------------------------
    from tensorly.datasets import load_IL2data
    il2 = np.asarray(load_IL2data().tensor, np.float64)
    mask = ~np.isnan(il2)
    filled = np.where(mask, il2, 0.0)
    r2 = args.il2_rank
    rng = np.random.default_rng(2)
    init2 = _pyttb_start(ttb, [rng.uniform(size=(n, r2)) for n in il2.shape])
    print(f"\n# case 2: TensorLy IL-2 {il2.shape}, {100 * (1 - mask.mean()):.1f}% missing, "
          f"Gaussian loss on the observed entries, rank {r2}, {n_iter} iterations, same start")

    def observed_error(model):
        return float(np.linalg.norm((filled - model)[mask]) / np.linalg.norm(filled[mask]))

    xj2, mj2 = jnp.asarray(filled, jnp.float32), jnp.asarray(mask)
    start2 = tfa.CPTensor(jnp.ones((r2,), jnp.float32),
                          tuple(jnp.asarray(a, jnp.float32) for a in init2))
    il2_rows = []
    fn = jax.jit(lambda x, m, s: tfa.gcp(x, r2, mask=m, init=s, n_iter=n_iter, tol=0))
    out, t_ms, t_first = median_ms(lambda: fn(xj2, mj2, start2), sync_jax, args.repeats)
    il2_rows.append(("tfa.gcp(mask=…) L-BFGS", t_ms, t_first,
                     observed_error(dense(out.weights, out.factors))))
    fn = jax.jit(lambda x, m, s: tfa.cp(x, r2, mask=m, init=s, n_iter=n_iter, tol=0))
    out, t_ms, t_first = median_ms(lambda: fn(xj2, mj2, start2), sync_jax, args.repeats)
    il2_rows.append(("tfa.cp(mask=…) weighted ALS", t_ms, t_first,
                     observed_error(dense(out.weights, out.factors))))

    def pyttb_il2():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m, _, _ = ttb.gcp_opt(ttb.tensor(filled), r2, Objectives.GAUSSIAN,
                                  LBFGSB(maxiter=n_iter), mask=mask.astype(float),
                                  init=ttb.ktensor([np.asfortranarray(a) for a in init2]),
                                  printitn=0)
        return m

    out, t_ms, t_first = median_ms(pyttb_il2, sync_nothing, args.repeats)
    il2_rows.append(("pyttb.gcp_opt(GAUSSIAN, LBFGSB, mask=…)", t_ms, t_first,
                     observed_error(dense(out.weights, out.factor_matrices))))
    for name, t_ms, t_first, err in il2_rows:
        rows.append({"case": "il2", "name": name, "median_ms": t_ms, "first_s": t_first,
                     "rel_error_observed": err})
    print(markdown_table(
        ("method", "median ms", "first call s", "rel. error (observed)"),
        [(n, f"{t:.1f}", f"{f:.2f}", f"{e:.4f}") for n, t, f, e in il2_rows]))
    write_json(args.json, {"shape": shape, "rank": rank, "n_iter": n_iter,
                           "n_samples": n_samples, "il2_rank": r2, "results": rows})
    return rows


if __name__ == "__main__":
    main()
