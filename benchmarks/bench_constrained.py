"""Time tensorfact's constrained CP (AO-ADMM) and coupled matrix–tensor factorization against
TensorLy's NumPy backend on the CPU, with the fit beside every time.

Protocol (the project's BENCHMARKS.md): one process, the same data, rank and number of outer
iterations on both sides with the tolerances disabled (``tol=0`` / ``tol_outer=0``), each side
from its own SVD start; tensorfact's call is jitted and waited for, its first (compiling) call
reported apart; the median of ``--repeats`` calls is quoted. Every row carries the relative
error ``‖x − x̂‖/‖x‖`` in float64 (for CMTF the joint ``sqrt((‖x − x̂‖² + ‖y − ŷ‖²) /
(‖x‖² + ‖y‖²))``), and the pair's ratio TensorLy median / tensorfact median (> 1: tensorfact
is faster). Works:

* ``covid-nonneg``: TensorLy's COVID-19 serology tensor (438 × 6 × 11,
  ``tensorly.datasets.load_covid19_serology``, loaded at run time), nonnegative CP as in
  TensorLy's own example: ``constrained_cp(constraints="nonneg")`` vs
  ``constrained_parafac(non_negative=True)``, 10 ADMM steps per factor on both sides.
* ``covid-simplex``: the same tensor, mode 1 (antigens) on the simplex, mode 2 nonnegative,
  mode 0 free: ``constraints=[None, "simplex", "nonneg"]`` vs
  ``constrained_parafac(simplex={1: 1.0}, non_negative={2: True})``.
* ``pines-nonneg``: the Indian Pines hyperspectral cube (145 × 145 × 200,
  ``load_indian_pines``), nonnegative CP; cropped to ``--crop`` (``--small``: 24 × 24 × 40).
* ``cmtf``: a planted coupled model (tensor ``--cmtf-shape``, matrix of ``--cmtf-cols``
  columns sharing mode 0) plus 10% Gaussian noise: ``cmtf`` vs TensorLy's
  ``coupled_matrix_tensor_3d_factorization`` (the same ALS). No coupled data set ships with
  TensorLy, hence planted data.

    python benchmarks/bench_constrained.py --small     # CPU smoke (seconds)
    python benchmarks/bench_constrained.py             # the full cubes
"""

from __future__ import annotations

import os
import platform
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from _harness import (add_output_flags, apply_preset, cpu_name, ints, markdown_table,
                      median_ms, parser, sync_jax, sync_nothing, write_json)

import tensorfact as tfa

PRESETS = {
    "small": dict(rank=3, n_iter=20, crop=(24, 24, 40), pines_rank=4, cmtf_shape=(20, 15, 10),
                  cmtf_cols=8, repeats=2),
    "cpu": dict(rank=5, n_iter=100, crop=(145, 145, 200), pines_rank=8, cmtf_shape=(100, 80, 60),
                cmtf_cols=50, repeats=3),
}


def _rel(x64, approx):
    return float(np.linalg.norm(x64 - np.asarray(approx, np.float64)) / np.linalg.norm(x64))


def _cp_dense(weights, factors):
    import tensorly as tl
    return tl.cp_to_tensor((np.asarray(weights, np.float64),
                            [np.asarray(a, np.float64) for a in factors]))


def main(argv=None):
    p = parser(__doc__.splitlines()[0], small="COVID full, Indian Pines cropped to 24×24×40, "
               "20 outer iterations, CMTF 20×15×10 + 20×8")
    p.add_argument("--rank", type=int, default=None, help="CP rank for the COVID works")
    p.add_argument("--pines-rank", type=int, default=None)
    p.add_argument("--n-iter", type=int, default=None, help="outer iterations on both sides")
    p.add_argument("--crop", type=ints("--crop", 3), default=None,
                   help="Indian Pines crop, e.g. 145,145,200 (the whole cube)")
    p.add_argument("--cmtf-shape", type=ints("--cmtf-shape", 3), default=None)
    p.add_argument("--cmtf-cols", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--works", default="covid-nonneg,covid-simplex,pines-nonneg,cmtf")
    add_output_flags(p)
    args = p.parse_args(argv)
    apply_preset(args, PRESETS)
    works = [w.strip() for w in args.works.split(",") if w.strip()]

    import tensorly as tl
    from tensorly.datasets import load_covid19_serology, load_indian_pines
    from tensorly.decomposition import (constrained_parafac,
                                        coupled_matrix_tensor_3d_factorization)
    tl.set_backend("numpy")

    ncpu = os.cpu_count() or 1
    load = os.getloadavg()
    print(f"# tensorfact {tfa.__version__}, jax {jax.__version__} "
          f"({jax.devices()[0].platform}), tensorly {tl.__version__} (numpy backend), numpy "
          f"{np.__version__}, Python {platform.python_version()}")
    print(f"# machine: {cpu_name()}, {ncpu} logical cores; load average {load[0]:.2f}")
    print(f"# {args.n_iter} outer iterations, tol=0 on both sides, own SVD starts; median of "
          f"{args.repeats}; float32 (tensorfact) vs float64 (TensorLy NumPy)")

    rows = []

    def record(work, data_desc, ours, theirs, err):
        (o_out, o_ms, o_first), (t_out, t_ms, t_first) = ours, theirs
        o_err, t_err = err(o_out, "tfa"), err(t_out, "tl")
        ratio = t_ms / o_ms
        rows.append({"work": work, "data": data_desc, "backend": "tensorfact", "median_ms": o_ms,
                     "first_s": o_first, "rel_error": o_err, "ratio": ratio})
        rows.append({"work": work, "data": data_desc, "backend": "tensorly-numpy",
                     "median_ms": t_ms, "first_s": t_first, "rel_error": t_err, "ratio": ratio})

    def constrained_pair(work, x, rank, ours_cons, theirs_kw, desc):
        x64 = np.asarray(x, np.float64)
        xj = jax.block_until_ready(jnp.asarray(x64, jnp.float32))
        fn = jax.jit(lambda a: tfa.constrained_cp(a, rank, constraints=ours_cons,
                                                  n_iter=args.n_iter, tol=0))
        ours = median_ms(lambda: fn(xj), sync_jax, args.repeats)
        theirs = median_ms(lambda: constrained_parafac(x64, rank, n_iter_max=args.n_iter,
                                                       tol_outer=0, init="svd", **theirs_kw),
                           sync_nothing, args.repeats)

        def err(out, side):
            return _rel(x64, _cp_dense(out.weights, out.factors) if side == "tfa"
                        else tl.cp_to_tensor(out))
        record(work, desc, ours, theirs, err)

    if any(w.startswith("covid") for w in works):
        covid = np.asarray(load_covid19_serology().tensor, np.float64)
        desc = f"COVID-19 serology {covid.shape}, rank {args.rank}"
        if "covid-nonneg" in works:
            constrained_pair("covid-nonneg", covid, args.rank, "nonneg",
                             dict(non_negative=True), desc)
        if "covid-simplex" in works:
            constrained_pair("covid-simplex", covid, args.rank, [None, "simplex", "nonneg"],
                             dict(simplex={1: 1.0}, non_negative={2: True}), desc)
    if "pines-nonneg" in works:
        cube = np.asarray(load_indian_pines().tensor, np.float64)
        i, j, k = (min(c, s) for c, s in zip(args.crop, cube.shape))
        cube = cube[:i, :j, :k]
        constrained_pair("pines-nonneg", cube, args.pines_rank, "nonneg",
                         dict(non_negative=True),
                         f"Indian Pines {cube.shape}, rank {args.pines_rank}")
    if "cmtf" in works:
        rng = np.random.default_rng(0)
        shape, cols, rank = tuple(args.cmtf_shape), args.cmtf_cols, args.rank
        fs = [rng.normal(size=(s, rank)) for s in shape]
        x = np.einsum("ir,jr,kr->ijk", *fs)
        y = fs[0] @ rng.normal(size=(cols, rank)).T
        x += 0.1 * np.linalg.norm(x) / np.sqrt(x.size) * rng.normal(size=x.shape)
        y += 0.1 * np.linalg.norm(y) / np.sqrt(y.size) * rng.normal(size=y.shape)
        xj, yj = (jax.block_until_ready(jnp.asarray(a, jnp.float32)) for a in (x, y))
        fn = jax.jit(lambda a, b: tfa.cmtf(a, b, rank, n_iter=args.n_iter, tol=0))
        ours = median_ms(lambda: fn(xj, yj), sync_jax, args.repeats)

        def fit_tensorly():
            with warnings.catch_warnings():  # "reached maximum iteration": expected at tol=0
                warnings.simplefilter("ignore")
                tx, ty, _ = coupled_matrix_tensor_3d_factorization(x, y, rank,
                                                                   n_iter_max=args.n_iter, tol=0)
            return tx, ty

        theirs = median_ms(fit_tensorly, sync_nothing, args.repeats)
        total = np.sum(x ** 2) + np.sum(y ** 2)

        def err(out, side):
            if side == "tfa":
                dx, dy = (_cp_dense(t.weights, t.factors) for t in out)
            else:
                dx, dy = (tl.cp_to_tensor(t) for t in out)
            return float(np.sqrt((np.sum((x - dx) ** 2) + np.sum((y - dy) ** 2)) / total))
        record("cmtf", f"planted {shape} + {y.shape}, rank {rank}, 10% noise", ours, theirs,
               err)

    print(markdown_table(
        ("work", "data", "backend", "median ms", "first call s", "rel. error",
         "tensorly / tfa time"),
        [(r["work"], r["data"], r["backend"], f"{r['median_ms']:.1f}", f"{r['first_s']:.2f}",
          f"{r['rel_error']:.4e}", f"{r['ratio']:.2f}") for r in rows]))
    write_json(args.json, {"config": {k: (list(v) if isinstance(v, tuple) else v)
                                      for k, v in vars(args).items()}, "results": rows})
    return rows


if __name__ == "__main__":
    main()
