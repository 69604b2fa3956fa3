"""Time tensorfact's NMF (HALS and multiplicative updates) against scikit-learn's NMF on the CPU.

Protocol (the project's BENCHMARKS.md): the same planted nonnegative rank-r matrix (plus small
nonnegative noise, float32) for both, the same rank and the same number of iterations with the
tolerance disabled on both sides (``tol=0``), timed in one process. tensorfact's call is jitted
and synchronised with ``jax.block_until_ready``; its first (compiling) call is reported apart;
the median of ``--repeats`` timed calls is quoted. Each timed call includes the initialisation
(an SVD for NNDSVD on both sides). Pairs:

* ``nmf(method="hals", init="nndsvd")``  vs  ``sklearn NMF(solver="cd", init="nndsvd")``: both
  coordinate descent (one column at a time, exact nonnegative minimiser) on ½‖M − WH‖²_F.
  tensorfact makes several passes over the columns per factor update (accelerated HALS), sklearn
  one, so an "iteration" is not the same amount of column work: compare the error column too.
* ``nmf(method="mu", init="nndsvda")``  vs  ``sklearn NMF(solver="mu", init="nndsvda")``.

Every row carries the relative error ‖M − WH‖_F / ‖M‖_F (in float64 NumPy) and the pair's
ratio sklearn median / tensorfact median (> 1: tensorfact is faster).

    python benchmarks/bench_nmf.py --small          # CPU smoke: 200 × 150, rank 8
    python benchmarks/bench_nmf.py                  # 1000 × 800, rank 20, 200 iterations
"""

from __future__ import annotations

import os
import platform
import warnings

import jax
import numpy as np

from _harness import cpu_name, markdown_table, median_ms, parser, sync_jax, sync_nothing

import tensorfact as tfa


def _matrix(rows, cols, rank, noise, seed):
    """Planted nonnegative rank-``rank`` matrix W0 H0 plus nonnegative uniform noise of relative
    size ``noise`` (of the mean entry), float32."""
    rng = np.random.default_rng(seed)
    w0 = rng.uniform(size=(rows, rank))
    h0 = rng.uniform(size=(rank, cols))
    m = w0 @ h0
    m += noise * m.mean() * rng.uniform(size=m.shape)
    return m.astype(np.float32)


def main(argv=None):
    p = parser(__doc__.splitlines()[0], small="200 × 150, rank 8, 50 iterations")
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--cols", type=int, default=800)
    p.add_argument("--rank", type=int, default=20)
    p.add_argument("--n-iter", type=int, default=200)
    p.add_argument("--noise", type=float, default=0.01,
                   help="noise amplitude relative to the mean entry (default 0.01)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if args.preset == "small":
        rows, cols, rank, n_iter = 200, 150, 8, 50
    else:
        rows, cols, rank, n_iter = args.rows, args.cols, args.rank, args.n_iter

    import sklearn
    from sklearn.decomposition import NMF

    ncpu = os.cpu_count() or 1
    load = os.getloadavg()
    print(f"# tensorfact {getattr(tfa, '__version__', '?')}, jax {jax.__version__} "
          f"({jax.devices()[0].platform}), scikit-learn {sklearn.__version__}, "
          f"numpy {np.__version__}, Python {platform.python_version()}")
    print(f"# machine: {cpu_name()}, {ncpu} logical cores, {platform.system()} "
          f"{platform.release()}; OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    if load[0] > 0.5:
        print(f"# note: load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min) "
              f"on {ncpu} cores before the run: other processes are loading the CPU, timings "
              f"may be slow and noisy")
    print(f"# data: {rows}×{cols} float32, planted nonnegative rank {rank} + {args.noise:g}·mean "
          f"uniform noise; rank {rank}, {n_iter} iterations, tol=0 on both sides; median of "
          f"{args.repeats}")

    m = _matrix(rows, cols, rank, args.noise, 0)
    m64 = m.astype(np.float64)
    norm_m = np.linalg.norm(m64)

    def err(w, h):
        return float(np.linalg.norm(m64 - np.asarray(w, np.float64) @ np.asarray(h, np.float64))
                     / norm_m)

    mj = jax.block_until_ready(jax.numpy.asarray(m))
    pairs = [("hals", "nndsvd", "cd"), ("mu", "nndsvda", "mu")]
    rows_out = []
    for method, init, solver in pairs:
        fn = jax.jit(lambda x, method=method, init=init: tfa.nmf(
            x, rank, method=method, init=init, n_iter=n_iter, tol=0))
        out, t_ms, t_first = median_ms(lambda fn=fn: fn(mj), sync_jax, args.repeats)
        w, h = out.factors()
        t_err = err(w, h)

        def fit_sklearn(init=init, solver=solver):
            model = NMF(n_components=rank, init=init, solver=solver, max_iter=n_iter, tol=0,
                        random_state=0)
            with warnings.catch_warnings():  # max_iter reached: expected with tol=0
                warnings.simplefilter("ignore")
                w = model.fit_transform(m)
            return w, model.components_

        (sw, sh), s_ms, s_first = median_ms(fit_sklearn, sync_nothing, args.repeats)
        s_err = err(sw, sh)
        ratio = s_ms / t_ms
        rows_out.append({"name": f"tensorfact nmf(method={method!r}, init={init!r})",
                         "backend": "tensorfact", "method": method, "median_ms": t_ms,
                         "first_s": t_first, "rel_error": t_err, "ratio": ratio})
        rows_out.append({"name": f"sklearn NMF(solver={solver!r}, init={init!r})",
                         "backend": "sklearn", "method": method, "median_ms": s_ms,
                         "first_s": s_first, "rel_error": s_err, "ratio": ratio})

    print(markdown_table(
        ("method", "median ms", "first call s", "rel. error", "sklearn / tfa time"),
        [(r["name"], f"{r['median_ms']:.2f}", f"{r['first_s']:.2f}", f"{r['rel_error']:.3e}",
          f"{r['ratio']:.2f}") for r in rows_out]))
    load_after = os.getloadavg()[0]
    if load_after > 0.5 + ncpu:
        print(f"# note: load average {load_after:.2f} after the run (this run uses up to {ncpu} "
              f"cores itself)")
    return rows_out


if __name__ == "__main__":
    main()
