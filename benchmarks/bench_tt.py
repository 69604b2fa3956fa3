"""Times tensorfact's TT-SVD against TensorLy's ``tensor_train``, and the TT-matrix product
``x @ W`` against the dense product, side by side.

Protocol (shared/BENCHMARKS.md, as in bench_decompositions.py):

* TT-SVD: one float32 tensor (standard normal, or with ``--data lowrank`` a planted TT tensor
  of the same ranks plus Gaussian noise of relative norm ``--noise``), the same ranks
  ``[1, R, ..., R, 1]`` (clipped per bond to what the shape allows) on every side:

    - tensorfact: ``tfa.tt(x, ranks)`` called as a user would (it compiles one XLA program per
      shape and ranks; full float32 precision);
    - TensorLy, NumPy backend (unless ``--no-numpy``): ``tensor_train(x, ranks)``;
    - TensorLy, PyTorch backend when ``torch`` imports (unless ``--no-torch``): float32 on CUDA
      when available (TF32 off), else on the CPU.

  Each entry carries its fit ``1 − ‖x − x̂‖/‖x‖``, rebuilt in float64 on the host.
* TT-matrix product: a random TT-matrix ``W`` of shape ``(∏ m_k, ∏ n_k)`` with ranks
  ``--tt-rank``, a float32 batch ``x`` of ``--batch`` rows; ``x @ W`` by tensorfact (jitted
  core-by-core chain) against ``x @ W.to_dense()`` (jitted ``jnp.matmul``), both at
  ``Precision.HIGHEST``; notes give the FLOPs of each and the error against a float64 product.
* Timing: the first call (compilation, or warm-up) on its own ("compile s"), then the median of
  ``--repeats`` rounds in which the contenders take turns (``--inner`` back-to-back calls per
  sample for the product). Ratio: anchor median / tensorfact median (> 1: tensorfact faster).

Presets: ``--small`` (CPU smoke: 24³, rank 6; 64 × 64 TT-matrix), the default CPU line
(100³, rank 10; 4096 × 4096 TT-matrix of rank 8, batch 256) and ``--gpu`` (256³, rank 32, the
issue's target; the same product with batch 4096).

    python benchmarks/bench_tt.py --small
    taskset -c 0,1 python benchmarks/bench_tt.py --json out/tt_cpu.json
    python benchmarks/bench_tt.py --gpu --json out/tt_gpu.json
"""

from __future__ import annotations

import functools
import math

import numpy as np

import jax
import jax.numpy as jnp

from _harness import (TFA, Contenders, Side, add_anchor_flags, add_output_flags, apply_preset,
                      check_positive, choices, fit_assessor, ints, parser, rel_error, run_entries,
                      sync_jax, to_host, tt_to_dense)

from tensorly.decomposition import tensor_train as tl_tensor_train

import tensorfact as tfa

PRESETS = {
    "small": dict(shape=(24, 24, 24), rank=6, row_shape=(4, 4, 4), col_shape=(4, 4, 4),
                  tt_rank=4, batch=32),
    "cpu": dict(shape=(100, 100, 100), rank=10, row_shape=(8, 8, 8, 8),
                col_shape=(8, 8, 8, 8), tt_rank=8, batch=256),
    "gpu": dict(shape=(256, 256, 256), rank=32, row_shape=(8, 8, 8, 8),
                col_shape=(8, 8, 8, 8), tt_rank=8, batch=4096),
}
WORKS = ("ttsvd", "matmul")
_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------
# data and quality, on the host in float64


def tt_ranks(shape, rank):
    """``[1, R, ..., R, 1]`` clipped per bond by the sizes of the unfoldings."""
    ranks, left = [1], 1
    for k in range(len(shape) - 1):
        left = min(rank, left * shape[k], math.prod(shape[k + 1:]))
        ranks.append(left)
    return ranks + [1]


def random_tt_cores(rng, shape, ranks):
    """Standard normal cores scaled so that entries of the dense tensor are of order one."""
    return [rng.standard_normal((ranks[k], n, ranks[k + 1])) / math.sqrt(ranks[k])
            for k, n in enumerate(shape)]


def make_data(shape, ranks, kind, noise, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.standard_normal(shape, dtype=np.float32)
    clean = tt_to_dense(random_tt_cores(rng, shape, ranks))
    e = rng.standard_normal(shape)
    return (clean + noise * np.linalg.norm(clean) / np.linalg.norm(e) * e).astype(np.float32)


def tt_matmul_flops(row_shape, col_shape, ranks, batch) -> int:
    """FLOPs of the core-by-core ``x @ W``: step ``k`` costs
    ``2 B r_{k-1} r_k (m_k ⋯ m_d)(n_1 ⋯ n_k)``."""
    d = len(row_shape)
    return sum(2 * batch * ranks[k] * ranks[k + 1] * math.prod(row_shape[k:])
               * math.prod(col_shape[:k + 1]) for k in range(d))


def _cores_of(result):
    """TT cores of a tensorfact or TensorLy result."""
    return result.cores if isinstance(result, tfa.TTTensor) else result.factors


# ----------------------------------------------------------------------------------------------
# the benchmark


class Bench(Contenders):
    """The data and the contenders of each requested work."""

    def __init__(self, args):
        self.ranks = tt_ranks(args.shape, args.rank)
        super().__init__(args, make_data(args.shape, self.ranks, args.data, args.noise,
                                         args.seed))

    def ttsvd_sides(self):
        work, ranks = "tt-svd", self.ranks

        assess = fit_assessor(self.x64, lambda result: tt_to_dense(_cores_of(result)))
        sides = [Side(work, TFA, functools.partial(tfa.tt, self.x_jax, ranks), sync_jax,
                      assess=assess, notes=f"ranks {ranks}")]
        for label, backend, x, sync in self.tensorly_sides():
            sides.append(Side(work, label, functools.partial(tl_tensor_train, x, list(ranks)),
                              sync, tensorly_backend=backend, assess=assess))
        return [sides]

    def matmul_sides(self):
        a = self.args
        work = f"x @ W ({math.prod(a.row_shape)}x{math.prod(a.col_shape)}, B={a.batch})"
        ranks = [1] + [a.tt_rank] * (len(a.row_shape) - 1) + [1]
        rng = np.random.default_rng(a.seed + 1)
        cores = [rng.standard_normal((ranks[k], m, n, ranks[k + 1])) / math.sqrt(ranks[k] * m)
                 for k, (m, n) in enumerate(zip(a.row_shape, a.col_shape))]
        tm = tfa.TTMatrix([jnp.asarray(g, jnp.float32) for g in cores])
        w = jax.block_until_ready(tm.to_dense())
        x = jax.block_until_ready(jnp.asarray(
            rng.standard_normal((a.batch, tm.shape[0]), dtype=np.float32)))
        reference = to_host(x) @ to_host(w)
        tt_flops = tt_matmul_flops(a.row_shape, a.col_shape, ranks, a.batch)
        dense_flops = 2 * a.batch * tm.shape[0] * tm.shape[1]

        def assess(flops):
            def inner(result, seconds):
                err = rel_error(reference, result)
                return dict(extra=dict(flops=flops, gflops_per_s=flops / seconds / 1e9,
                                       rel_err_vs_f64=err),
                            notes=f"{flops / 1e9:.3g} GFLOP, {flops / seconds / 1e9:.1f} "
                                  f"GFLOP/s, err {err:.1e}")
            return inner

        tt_fn = jax.jit(lambda x, tm: x @ tm)
        dense_fn = jax.jit(lambda x, w: jnp.matmul(x, w, precision=_HIGHEST))
        return [[
            Side(work, TFA, functools.partial(tt_fn, x, tm), sync_jax, inner=a.inner,
                 assess=assess(tt_flops)),
            Side(work, "dense jnp.matmul (jitted)", functools.partial(dense_fn, x, w), sync_jax,
                 inner=a.inner, assess=assess(dense_flops)),
        ]]


# ----------------------------------------------------------------------------------------------
# command line


def parse_args(argv=None):
    p = parser("Time tensorfact's TT-SVD against TensorLy's tensor_train (NumPy, PyTorch) and "
               "the TT-matrix product x @ W against the dense product, with the fit or error of "
               "every answer. Default preset: 100^3, rank 10; 4096x4096 TT matrix of rank 8, "
               "batch 256.",
               small="24^3, rank 6; 64x64 TT-matrix",
               gpu="256^3, rank 32; batch 4096 for the product")
    p.add_argument("--shape", type=ints("shape", 2), help="tensor shape")
    p.add_argument("--rank", type=int, help="TT rank R of the TT-SVD (ranks [1, R, ..., 1])")
    p.add_argument("--row-shape", type=ints("row shape"),
                   help="TT-matrix row factorisation, e.g. 8,8,8,8")
    p.add_argument("--col-shape", type=ints("col shape"),
                   help="TT-matrix column factorisation (same length)")
    p.add_argument("--tt-rank", type=int, help="TT-matrix rank of the product benchmark")
    p.add_argument("--batch", type=int, help="rows of x in x @ W")
    p.add_argument("--which", type=choices("--which", WORKS), default=WORKS,
                   help=f"comma list among {','.join(WORKS)} (default: all)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed rounds after the first call (default %(default)s)")
    p.add_argument("--inner", type=int, default=10,
                   help="back-to-back calls per sample of the product (default %(default)s)")
    p.add_argument("--data", choices=("normal", "lowrank"), default="normal",
                   help="standard normal data (default) or a planted TT tensor plus noise")
    p.add_argument("--noise", type=float, default=0.1,
                   help="relative noise norm for --data lowrank (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data (default %(default)s)")
    add_anchor_flags(p)
    add_output_flags(p)
    args = p.parse_args(argv)
    apply_preset(args, PRESETS)
    check_positive(p, args, ("rank", "tt_rank", "batch", "repeats", "inner"))
    if len(args.row_shape) != len(args.col_shape):
        p.error("--row-shape and --col-shape must have the same length")
    return args


def main(argv=None) -> dict:
    """Runs the benchmark, prints the environment and the table; returns everything as a dict."""
    args = parse_args(argv)
    config = dict(preset=args.preset, shape=list(args.shape), rank=args.rank,
                  row_shape=list(args.row_shape), col_shape=list(args.col_shape),
                  tt_rank=args.tt_rank, batch=args.batch, which=list(args.which),
                  repeats=args.repeats, inner=args.inner, data=args.data, noise=args.noise,
                  seed=args.seed, dtype="float32")
    return run_entries("bench_tt.py", argv, args, config, Bench(args).run)


if __name__ == "__main__":
    main()
