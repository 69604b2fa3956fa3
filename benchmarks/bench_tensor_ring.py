"""Times tensorfact's tensor ring decomposition (TR-SVD, TR-ALS) against TensorLy's, side by side.

Protocol (shared/BENCHMARKS.md): one process, one float32 tensor (a planted tensor ring of the
benchmarked ranks plus Gaussian noise of relative norm ``--noise``), the same ranks on every side.

* TR-SVD: ``tfa.tensor_ring(x, ranks)`` against ``tensorly.decomposition.tensor_ring(x, ranks +
  [ranks[0]])`` (TensorLy counts the closing bond twice). Both fix the signs of the singular
  vectors the same way, so the fits should agree to rounding.
* TR-ALS: exactly ``--n-iter`` sweeps on both sides (``tol=0``):
  ``tfa.tensor_ring(x, ranks, method="als", init=..., n_iter=it, tol=0)``, once from the TR-SVD
  start (the default) and once from a random start, against
  ``tensorly.decomposition.tensor_ring_als(x, ranks + [ranks[0]], n_iter_max=it, tol=0)``, which
  starts from random cores (``ls_solve="lstsq"``, its default, and ``"normal_eq"``, which solves
  the normal equations as tensorfact does). Random starts differ between the sides, and TR-ALS
  has local minima, so compare fits with that in mind.
* TensorLy runs on its NumPy backend and, when ``torch`` imports, on its PyTorch backend (CUDA
  when available, TF32 off). tensorfact runs at full float32 precision (its default
  ``precision="highest"``).
* Timing: the first call (compilation for tensorfact) is reported apart; then the median of
  ``--repeats`` calls, each waited for (``jax.block_until_ready``, ``torch.cuda.synchronize``).
* Quality: every row carries its fit ``1 − ‖x − x̂‖/‖x‖`` with ``x̂`` rebuilt from the cores in
  float64 NumPy on the host. Ratio: TensorLy median / tensorfact median of the same work.

    python benchmarks/bench_tensor_ring.py --small                # CPU smoke: 12^4, ranks 3
    python benchmarks/bench_tensor_ring.py                        # 24^4, ranks 4, 20 sweeps
    python benchmarks/bench_tensor_ring.py --json out/tr.json
"""

from __future__ import annotations

import contextlib
import os
import platform
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from _harness import (apply_preset, check_positive, command_line, cpu_name, fit_of, median_ms,
                      parser, sync_jax, sync_nothing, sync_torch, tensorly_backend, to_host,
                      torch_device, write_json)

import tensorfact as tfa

try:  # the PyTorch backend of TensorLy is optional
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

PRESETS = {"small": dict(size=12, ndim=4, rank=3, n_iter=10),
           "cpu": dict(size=24, ndim=4, rank=4, n_iter=20)}


def planted_ring(shape, ranks, noise, seed):
    """A float32 tensor ring with standard normal cores plus noise of relative norm ``noise``."""
    rng = np.random.default_rng(seed)
    d = len(shape)
    cores = [rng.standard_normal((ranks[k], shape[k], ranks[(k + 1) % d])) for k in range(d)]
    clean = ring_to_dense(cores)
    e = rng.standard_normal(shape)
    return (clean + noise * np.linalg.norm(clean) / np.linalg.norm(e) * e).astype(np.float32)


def ring_to_dense(cores) -> np.ndarray:
    """``Tr(G_0[:, i_0, :] ··· G_{d-1}[:, i_{d-1}, :])`` in float64 NumPy."""
    cores = [to_host(g) for g in cores]
    out = cores[0]
    for g in cores[1:]:
        out = np.einsum("amb,bic->amic", out, g).reshape(out.shape[0], -1, g.shape[2])
    return np.trace(out, axis1=0, axis2=2).reshape([g.shape[1] for g in cores])


def parse_args(argv=None):
    p = parser(__doc__.splitlines()[0], small="12^4, ranks 3, 10 sweeps")
    p.add_argument("--size", type=int, help="mode size (overrides the preset)")
    p.add_argument("--ndim", type=int, help="number of modes (overrides the preset)")
    p.add_argument("--rank", type=int, help="every bond size (overrides the preset)")
    p.add_argument("--n-iter", type=int, help="ALS sweeps, run exactly (tol=0 on every side)")
    p.add_argument("--noise", type=float, default=0.1, help="relative noise (default 0.1)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls after the first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-torch", action="store_true", help="skip TensorLy's PyTorch backend")
    p.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    args = p.parse_args(argv)
    apply_preset(args, PRESETS)
    check_positive(p, args, ("size", "ndim", "rank", "n_iter", "repeats"))
    if args.rank * args.rank > args.size:
        p.error(f"TR-SVD needs rank^2 <= size (the first unfolding's rank bound), got "
                f"--rank {args.rank} and --size {args.size}")
    return args


def main(argv=None):
    """Runs the benchmark, prints the table; returns the rows (dicts)."""
    import tensorly as tl
    from tensorly.decomposition import tensor_ring as tl_tensor_ring
    from tensorly.decomposition import tensor_ring_als as tl_tensor_ring_als

    args = parse_args(argv)
    shape, ranks = (args.size,) * args.ndim, (args.rank,) * args.ndim
    x_np = planted_ring(shape, ranks, args.noise, args.seed)
    x64 = x_np.astype(np.float64)
    x_jax = jax.block_until_ready(jnp.asarray(x_np))
    key = jax.random.key(args.seed)
    it = args.n_iter
    tl_ranks = list(ranks) + [ranks[0]]

    backends = [("numpy", x_np, sync_nothing)]
    device = torch_device(torch is not None and not args.no_torch)
    if device is not None:
        backends.append((f"pytorch ({device})",
                         torch.tensor(x_np, dtype=torch.float32, device=device), sync_torch))

    def tl_call(backend, fn, *a, **kw):
        name = backend.split(" ")[0]

        def call():
            with tensorly_backend(name), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return fn(*a, **kw)
        return call

    works = {
        "tr-svd": [("tensorfact", "", lambda: tfa.tensor_ring(x_jax, ranks), sync_jax)]
        + [(f"tensorly-{b}", "", tl_call(b, tl_tensor_ring, x, tl_ranks), sync)
           for b, x, sync in backends],
        "tr-als": [
            ("tensorfact", "init=svd",
             lambda: tfa.tensor_ring(x_jax, ranks, method="als", n_iter=it, tol=0), sync_jax),
            ("tensorfact", "init=random",
             lambda: tfa.tensor_ring(x_jax, ranks, method="als", init="random", key=key,
                                     n_iter=it, tol=0), sync_jax),
        ] + [(f"tensorly-{b}", f"ls_solve={ls}, random init",
              tl_call(b, tl_tensor_ring_als, x, tl_ranks, n_iter_max=it, tol=0, ls_solve=ls,
                      random_state=args.seed), sync)
             for b, x, sync in backends for ls in ("lstsq", "normal_eq")],
    }

    load = os.getloadavg()[0]
    print(f"# tensorfact {tfa.__version__}, jax {jax.__version__} ({jax.devices()[0].platform}),"
          f" tensorly {tl.__version__}, numpy {np.__version__}, torch "
          f"{torch.__version__ if torch is not None else 'not installed'}, Python "
          f"{platform.python_version()}")
    print(f"# machine: {cpu_name()}, {os.cpu_count()} logical cores, load average {load:.2f};"
          f" OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    print(f"# data: planted float32 tensor ring, shape {shape}, ranks {ranks}, noise "
          f"{args.noise:g}; ALS: {it} sweeps, tol=0 on every side; median of {args.repeats}")
    rows = []
    for work, sides in works.items():
        base = None
        for backend, notes, fn, sync in sides:
            out, ms, first = median_ms(fn, sync, args.repeats)
            if backend == "tensorfact" and base is None:
                base = ms
            rows.append(dict(work=work, backend=backend, notes=notes, median_ms=ms,
                             first_s=first, fit=fit_of(x64, ring_to_dense(list(out))),
                             ratio=ms / base))
    print("| work | backend | notes | median ms | first call s | fit | time / tensorfact's |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['work']} | {r['backend']} | {r['notes']} | {r['median_ms']:.2f} | "
              f"{r['first_s']:.2f} | {r['fit']:.6f} | {r['ratio']:.2f} |")
    print("# time / tensorfact's: each row's median over the first tensorfact row of its work "
          "(> 1: tensorfact is faster)")
    if args.json:
        config = dict(shape=list(shape), ranks=list(ranks), n_iter=it, noise=args.noise,
                      repeats=args.repeats, seed=args.seed, preset=args.preset)
        env = dict(jax=jax.__version__, tensorly=tl.__version__, numpy=np.__version__,
                   torch=None if torch is None else torch.__version__, cpu=cpu_name(),
                   cpus=os.cpu_count(), load_average_1min=load,
                   device=str(jax.devices()[0].platform))
        write_json(args.json, dict(environment=env, config=config,
                                   command=command_line("bench_tensor_ring.py", argv),
                                   results=rows))
    return rows


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
