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

import argparse
import functools
import json
import math
import os
import sys
from dataclasses import asdict

import numpy as np

import jax
import jax.numpy as jnp

import _harness  # noqa: F401  (puts a checkout's tensorfact on the path)
from tensorly.decomposition import tensor_train as tl_tensor_train

from bench_decompositions import (TFA, OtherLoad, Side, environment, fit_of, format_table,
                                  set_ratios, time_sides, to_host, torch, _sync_jax,
                                  _sync_nothing, _sync_torch)

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


def tt_to_dense_host(cores) -> np.ndarray:
    """Contracts TT cores ``(r, n, r')`` (any backend) into a dense float64 array."""
    cores = [to_host(g) for g in cores]
    out = np.ones((1, 1))
    for g in cores:
        out = (out @ g.reshape(g.shape[0], -1)).reshape(-1, g.shape[-1])
    return out.reshape(tuple(g.shape[1] for g in cores))


def make_data(shape, ranks, kind, noise, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.standard_normal(shape, dtype=np.float32)
    clean = tt_to_dense_host(random_tt_cores(rng, shape, ranks))
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


class Bench:
    """Holds the data and builds the contenders of each requested work."""

    def __init__(self, args):
        self.args = args
        self.ranks = tt_ranks(args.shape, args.rank)
        self.x_np = make_data(args.shape, self.ranks, args.data, args.noise, args.seed)
        self.x64 = self.x_np.astype(np.float64)
        self.x_jax = jax.block_until_ready(jnp.asarray(self.x_np))
        self.torch_device = None
        if torch is not None and not args.no_torch:
            self.torch_device = "cuda" if torch.cuda.is_available() else "cpu"
            torch.backends.cuda.matmul.allow_tf32 = False  # full float32, like tensorfact
            torch.backends.cudnn.allow_tf32 = False
            self.x_torch = torch.tensor(self.x_np, dtype=torch.float32, device=self.torch_device)

    def _log(self, message):
        if not self.args.quiet:
            print(message, file=sys.stderr, flush=True)

    def ttsvd_sides(self):
        work, ranks = "tt-svd", self.ranks

        def assess(result, _seconds):
            return dict(fit=fit_of(self.x64, tt_to_dense_host(_cores_of(result))))

        sides = [Side(work, TFA, functools.partial(tfa.tt, self.x_jax, ranks), _sync_jax,
                      assess=assess, notes=f"ranks {ranks}")]
        anchors = [] if self.args.no_numpy else [("tensorly-numpy", "numpy", self.x_np,
                                                  _sync_nothing)]
        if self.torch_device is not None:
            anchors.append((f"tensorly-pytorch ({self.torch_device})", "pytorch", self.x_torch,
                            _sync_torch))
        for label, backend, x, sync in anchors:
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
                err = float(np.linalg.norm(to_host(result) - reference)
                            / np.linalg.norm(reference))
                return dict(extra=dict(flops=flops, gflops_per_s=flops / seconds / 1e9,
                                       rel_err_vs_f64=err),
                            notes=f"{flops / 1e9:.3g} GFLOP, {flops / seconds / 1e9:.1f} "
                                  f"GFLOP/s, err {err:.1e}")
            return inner

        tt_fn = jax.jit(lambda x, tm: x @ tm)
        dense_fn = jax.jit(lambda x, w: jnp.matmul(x, w, precision=_HIGHEST))
        return [[
            Side(work, TFA, functools.partial(tt_fn, x, tm), _sync_jax, inner=a.inner,
                 assess=assess(tt_flops)),
            Side(work, "dense jnp.matmul (jitted)", functools.partial(dense_fn, x, w), _sync_jax,
                 inner=a.inner, assess=assess(dense_flops)),
        ]]

    def run(self):
        entries = []
        for work in self.args.which:
            self._log(f"{work}:")
            for sides in getattr(self, f"{work}_sides")():
                entries += time_sides(sides, self.args.repeats, self._log)
        set_ratios(entries)
        return entries


# ----------------------------------------------------------------------------------------------
# command line


def _ints(text, name, min_len=1):
    try:
        values = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name} must be comma-separated integers, got {text!r}")
    if len(values) < min_len or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{name} needs at least {min_len} positive sizes, got "
                                         f"{text!r}")
    return values


def _which(text):
    works = tuple(w.strip() for w in text.split(",") if w.strip())
    if not works or any(w not in WORKS for w in works):
        raise argparse.ArgumentTypeError(f"--which takes a comma list of {', '.join(WORKS)}; "
                                         f"got {text!r}")
    return works


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Time tensorfact's TT-SVD against TensorLy's tensor_train (NumPy, PyTorch) "
                    "and the TT-matrix product x @ W against the dense product, with the fit "
                    "or error of every answer. Default preset: 100^3, rank 10; 4096x4096 TT "
                    "matrix of rank 8, batch 256.")
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--small", dest="preset", action="store_const", const="small",
                        help="CPU smoke preset: 24^3, rank 6; 64x64 TT-matrix")
    preset.add_argument("--gpu", dest="preset", action="store_const", const="gpu",
                        help="GPU preset: 256^3, rank 32; batch 4096 for the product")
    p.set_defaults(preset="cpu")
    p.add_argument("--shape", type=lambda t: _ints(t, "shape", 2), help="tensor shape")
    p.add_argument("--rank", type=int, help="TT rank R of the TT-SVD (ranks [1, R, ..., 1])")
    p.add_argument("--row-shape", type=lambda t: _ints(t, "row shape"),
                   help="TT-matrix row factorisation, e.g. 8,8,8,8")
    p.add_argument("--col-shape", type=lambda t: _ints(t, "col shape"),
                   help="TT-matrix column factorisation (same length)")
    p.add_argument("--tt-rank", type=int, help="TT-matrix rank of the product benchmark")
    p.add_argument("--batch", type=int, help="rows of x in x @ W")
    p.add_argument("--which", type=_which, default=WORKS,
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
    p.add_argument("--no-numpy", action="store_true", help="skip the TensorLy NumPy anchor")
    p.add_argument("--no-torch", action="store_true",
                   help="skip the TensorLy PyTorch anchor even when torch is importable")
    p.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    for name, value in PRESETS[args.preset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("rank", "tt_rank", "batch", "repeats", "inner"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer")
    if len(args.row_shape) != len(args.col_shape):
        p.error("--row-shape and --col-shape must have the same length")
    return args


def main(argv=None) -> dict:
    """Runs the benchmark, prints the environment and the table; returns everything as a dict."""
    args = parse_args(argv)
    env = environment()
    config = dict(preset=args.preset, shape=list(args.shape), rank=args.rank,
                  row_shape=list(args.row_shape), col_shape=list(args.col_shape),
                  tt_rank=args.tt_rank, batch=args.batch, which=list(args.which),
                  repeats=args.repeats, inner=args.inner, data=args.data, noise=args.noise,
                  seed=args.seed, dtype="float32")
    print("# " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print("# " + ", ".join(f"{k} {v}" for k, v in config.items()))
    other_load = OtherLoad().start()
    entries = Bench(args).run()
    env["other_processes_cores"] = other_load.stop()
    env["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    print(format_table(entries))
    print(f"# other processes kept {env['other_processes_cores']} cores busy on average during "
          f"the run (of {os.cpu_count()}); load average {env['load_average_1min']} at the start, "
          f"{env['load_average_1min_end']} at the end. anchor/tfa > 1: tensorfact is faster")
    command = " ".join(sys.argv if argv is None else ["bench_tt.py", *argv])
    out = dict(environment=env, config=config, command=command,
               results=[asdict(e) for e in entries])
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
