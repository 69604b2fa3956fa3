"""Times the Pallas kernels against their XLA paths and the memory roofline (issue 7).

* MTTKRP, every mode of an ``n³`` float32 tensor at rank ``R``: the Pallas kernel
  (``tensorfact.kernels.mttkrp_pallas``), the library's XLA path (``tfa.mttkrp(impl="xla")``,
  ``partial_mttkrp``), a plain ``jnp.einsum`` MTTKRP, and a plain copy of the tensor (``-x``:
  one read and one write, the practical bandwidth). Each row gives the median time and the
  effective bandwidth of reading the tensor once, ``x.nbytes / time`` (for the copy, read
  bandwidth alone; the copy also writes as much); the error column is the relative error
  against a float64 NumPy MTTKRP (first mode only, on the host).
* CP-ALS end to end (``tol=0``, ``--n-iter`` sweeps, SVD init): ``tfa.cp(impl="pallas")`` vs
  ``tfa.cp(impl="xla")`` vs TensorLy's ``parafac`` on the PyTorch backend (CUDA when available,
  TF32 off), when ``torch`` and ``tensorly`` import. Fits ``1 − ‖x − x̂‖/‖x‖`` side by side.
* TT layer: ``y = x W`` with ``W`` a TT-matrix (``--tt-shape``, ``--tt-rank``), forward and
  forward + backward (gradients in ``x`` and the cores), for the fused kernel, the XLA chain and
  the dense layer ``x @ W.to_dense()`` (gradient in ``x`` and ``W``).

Timing: ``_harness.median_ms``: the first call (compile) apart, then the median of
``--repeats`` calls, each waited for. On a CPU the kernels run in interpret mode (slow, a check
that the script works, not a measurement): use ``--small``. Full float32 precision throughout.

    python benchmarks/bench_kernels.py --small                 # CPU smoke, tiny sizes
    python benchmarks/bench_kernels.py --json out/kernels_gpu.json   # on the GPU machine
    python benchmarks/bench_kernels.py --which mttkrp --sizes 512 --tune   # block-size sweep
    python benchmarks/bench_kernels.py --tpu --json out/kernels_tpu.json   # on a TPU
    python benchmarks/bench_kernels.py --tpu --small           # CPU smoke, TPU interpret mode

``--tpu`` runs the rows of ``TPU_BENCHES`` instead: MTTKRP at 256³ and 512³, ranks 16/32/64,
float32 and bfloat16, the TPU kernel (``mttkrp_pallas(target="tpu")``) vs the XLA einsum vs a
device copy of the tensor, with the bandwidth of reading the tensor once; and the TT layer
``y = x W`` (a 1024 × 1024 ``W`` as cores ``(4, 8, 8, 4) × (4, 8, 8, 4)``, TT ranks 8 and 16,
batch 4096, float32 and bfloat16), forward and forward + backward, the TPU kernel
(``tt_chain_pallas(target="tpu")``, whose backward is the XLA chain's) vs the XLA chain, with
the forward's relative difference to the XLA chain.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import platform

import numpy as np

import jax
import jax.numpy as jnp

from _harness import (check_positive, choices, fit_of, ints, median_ms, mttkrp_host, parser,
                      sync_jax, sync_torch, torch_device, write_json)

import tensorfact as tfa
from tensorfact.kernels import mttkrp_pallas, tt_chain_matmul, tt_chain_pallas, tt_chain_xla

try:  # optional anchor
    import tensorly
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    tensorly = torch = None

PRESETS = {
    "small": dict(sizes=(12,), rank=4, n_iter=3, cp_size=10, tt_shape=((2, 4), (4, 2)),
                  tt_rank=2, batch=16, repeats=2),
    "gpu": dict(sizes=(256, 512), rank=32, n_iter=20, cp_size=256,
                tt_shape=((4, 8, 8, 4), (4, 8, 8, 4)), tt_rank=8, batch=4096, repeats=20),
}
WORKS = ("mttkrp", "cp", "tt")
TPU_PRESETS = {"small": dict(sizes=(12,), ranks=(4,), repeats=1, tt_shape=((2, 4), (4, 2)),
                             tt_ranks=(3,), batch=16),
               "tpu": dict(sizes=(256, 512), ranks=(16, 32, 64), repeats=20,
                           tt_shape=((4, 8, 8, 4), (4, 8, 8, 4)), tt_ranks=(8, 16),
                           batch=4096)}


def _row(table, **entry):
    table.append(entry)
    cells = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in entry.items())
    print(cells, flush=True)


def bench_mttkrp(sizes, rank, repeats, table, tune=False):
    for n in sizes:
        keys = jax.random.split(jax.random.key(n), 4)
        x = jax.random.normal(keys[0], (n, n, n), jnp.float32)
        factors = [jax.random.normal(k, (n, rank), jnp.float32) for k in keys[1:]]
        gb = x.nbytes / 1e9
        copy = jax.jit(jnp.negative)
        _, t_copy, _ = median_ms(lambda: copy(x), sync_jax, repeats)
        _row(table, bench="mttkrp", n=n, rank=rank, mode="-", impl="copy", ms=t_copy,
             read_tbs=gb / t_copy)
        x64 = np.asarray(x, np.float64)
        for mode in range(3):
            sides = {
                "pallas": jax.jit(functools.partial(mttkrp_pallas, mode=mode)),
                "xla-library": jax.jit(functools.partial(tfa.mttkrp, mode=mode, impl="xla")),
                "xla-einsum": jax.jit(functools.partial(_einsum_mttkrp, mode=mode)),
            }
            reference = mttkrp_host(x64, factors, mode) if mode == 0 else None
            for name, fn in sides.items():
                out, t, first = median_ms(lambda fn=fn: fn(x, factors), sync_jax, repeats)
                err = float("nan") if reference is None else float(
                    np.linalg.norm(np.asarray(out, np.float64) - reference)
                    / np.linalg.norm(reference))
                _row(table, bench="mttkrp", n=n, rank=rank, mode=mode, impl=name, ms=t,
                     read_tbs=gb / t, compile_s=first, rel_err=err)
            if tune:  # the kernel's tilings, to pick defaults on a new GPU
                for bo, bs, split in itertools.product((16, 32, 64, 128), (32, 64, 128),
                                                       (None, 16, 64)):
                    fn = jax.jit(functools.partial(mttkrp_pallas, mode=mode, block_out=bo,
                                                   block_dot=bs, n_split=split))
                    try:
                        _, t, _ = median_ms(lambda fn=fn: fn(x, factors), sync_jax, repeats)
                    except Exception as err:  # noqa: BLE001  (a tiling Triton rejects)
                        print(f"tune mode={mode} bo={bo} bs={bs} split={split}: {err!r}"[:200])
                        continue
                    _row(table, bench="mttkrp-tune", n=n, rank=rank, mode=mode,
                         impl=f"pallas bo={bo} bs={bs} split={split}", ms=t, read_tbs=gb / t)


def bench_mttkrp_tpu(sizes, ranks, repeats, table):
    """``--tpu``: the TPU MTTKRP kernel vs the XLA einsum vs a copy, float32 and bfloat16."""
    for n, dtype in itertools.product(sizes, (jnp.float32, jnp.bfloat16)):
        keys = jax.random.split(jax.random.key(n), 4)
        x = jax.random.normal(keys[0], (n, n, n), dtype)
        gb, name = x.nbytes / 1e9, jnp.dtype(dtype).name
        _, t_copy, _ = median_ms(lambda: jax.jit(jnp.negative)(x), sync_jax, repeats)
        _row(table, bench="mttkrp-tpu", n=n, dtype=name, rank="-", mode="-", impl="copy",
             ms=t_copy, read_tbs=gb / t_copy)
        for rank, mode in itertools.product(ranks, range(3)):
            factors = [jax.random.normal(k, (n, rank), dtype) for k in keys[1:]]
            sides = {"pallas-tpu": jax.jit(functools.partial(mttkrp_pallas, mode=mode,
                                                             target="tpu")),
                     "xla-einsum": jax.jit(functools.partial(_einsum_mttkrp, mode=mode))}
            ref = None
            for impl, fn in sides.items():
                out, t, first = median_ms(lambda fn=fn: fn(x, factors), sync_jax, repeats)
                ref = out if ref is None else ref
                err = float(jnp.linalg.norm((out - ref).astype(jnp.float32))
                            / jnp.linalg.norm(ref.astype(jnp.float32)))
                _row(table, bench="mttkrp-tpu", n=n, dtype=name, rank=rank, mode=mode,
                     impl=impl, ms=t, read_tbs=gb / t, compile_s=first, rel_to_pallas=err)


def bench_tt_tpu(row_shape, col_shape, tt_ranks, batch, repeats, table):
    """``--tpu``: the TT layer forward and forward + backward, the TPU kernel vs the XLA chain,
    float32 and bfloat16."""
    for tt_rank, dtype in itertools.product(tt_ranks, (jnp.float32, jnp.bfloat16)):
        rs = [1] + [tt_rank] * (len(row_shape) - 1) + [1]
        keys = jax.random.split(jax.random.key(tt_rank), len(row_shape) + 1)
        cores = [(jax.random.normal(k, (rs[i], m, n, rs[i + 1])) / math.sqrt(rs[i] * m))
                 .astype(dtype) for i, (k, m, n) in enumerate(zip(keys, row_shape, col_shape))]
        x = jax.random.normal(keys[-1], (batch, math.prod(row_shape)), dtype)
        chains = {"xla-chain": tt_chain_xla,
                  "pallas-tpu": functools.partial(tt_chain_pallas, target="tpu")}
        refs = {}
        for what, (impl, chain) in itertools.product(("forward", "fwd+bwd"), chains.items()):
            if what == "forward":
                fn = jax.jit(chain)
            else:
                fn = jax.jit(jax.grad(lambda x, cs, chain=chain: jnp.sum(
                    chain(x, cs).astype(jnp.float32) ** 2), argnums=(0, 1)))
            out, t, first = median_ms(lambda fn=fn: fn(x, cores), sync_jax, repeats)
            # relative difference to the XLA chain's output (forward) or gradients (fwd+bwd,
            # the largest over x and the cores); the XLA chain is timed first
            leaves = [a.astype(jnp.float32) for a in jax.tree.leaves(out)]
            ref = refs.setdefault(what, leaves)
            err = max(float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
                      for a, b in zip(leaves, ref))
            _row(table, bench="tt-tpu", shape=f"{row_shape}x{col_shape}", rank=tt_rank,
                 batch=batch, dtype=jnp.dtype(dtype).name, pass_=what, impl=impl, ms=t,
                 compile_s=first, rel_to_xla=err)


# the --tpu rows: each entry is called as fn(preset, table)
TPU_BENCHES = [lambda cfg, table: bench_mttkrp_tpu(cfg["sizes"], cfg["ranks"], cfg["repeats"],
                                                   table),
               lambda cfg, table: bench_tt_tpu(*cfg["tt_shape"], cfg["tt_ranks"], cfg["batch"],
                                               cfg["repeats"], table)]


def _einsum_mttkrp(x, factors, mode):
    spec = {0: "ijk,jr,kr->ir", 1: "ijk,ir,kr->jr", 2: "ijk,ir,jr->kr"}[mode]
    others = [f for k, f in enumerate(factors) if k != mode]
    return jnp.einsum(spec, x, *others, precision=jax.lax.Precision.HIGHEST)


def bench_cp(n, rank, n_iter, repeats, table):
    x = tfa.random_cp(jax.random.key(1), (n, n, n), rank=rank).to_dense()
    x = x + 0.1 * jnp.linalg.norm(x) / math.sqrt(x.size) * jax.random.normal(jax.random.key(2),
                                                                              x.shape)
    x64 = np.asarray(x, np.float64)
    for impl in ("pallas", "xla"):
        fit = jax.jit(functools.partial(tfa.cp, rank=rank, n_iter=n_iter, tol=0, impl=impl))
        out, t, first = median_ms(lambda fit=fit: fit(x), sync_jax, repeats)
        _row(table, bench="cp_als", n=n, rank=rank, n_iter=n_iter, impl=f"tensorfact-{impl}",
             ms=t, compile_s=first, fit=fit_of(x64, out.to_dense()))
    if torch is None or tensorly is None:
        print("cp_als: torch/tensorly not importable, TensorLy-PyTorch skipped", flush=True)
        return
    from tensorly.decomposition import parafac
    tensorly.set_backend("pytorch")
    try:
        device = torch_device()
        xt = torch.tensor(np.asarray(x), device=device)
        out, t, first = median_ms(
            lambda: parafac(xt, rank, n_iter_max=n_iter, init="svd", tol=0), sync_torch, repeats)
        dense = tensorly.cp_to_tensor(out)
        _row(table, bench="cp_als", n=n, rank=rank, n_iter=n_iter,
             impl=f"tensorly-pytorch-{device}", ms=t, compile_s=first, fit=fit_of(x64, dense))
    finally:
        tensorly.set_backend("numpy")


def bench_tt(row_shape, col_shape, tt_rank, batch, repeats, table):
    rs = [1] + [tt_rank] * (len(row_shape) - 1) + [1]
    keys = jax.random.split(jax.random.key(3), len(row_shape) + 1)
    cores = [jax.random.normal(k, (rs[i], m, n, rs[i + 1]), jnp.float32)
             / math.sqrt(rs[i] * m) for i, (k, m, n) in enumerate(zip(keys, row_shape, col_shape))]
    x = jax.random.normal(keys[-1], (batch, math.prod(row_shape)), jnp.float32)
    dense_w = tfa.TTMatrix(cores).to_dense()
    hi = jax.lax.Precision.HIGHEST

    def tt_fwd(impl):
        return jax.jit(lambda x, cs: tt_chain_matmul(x, cs, impl=impl))

    def tt_bwd(impl):
        return jax.jit(jax.grad(lambda x, cs: jnp.sum(tt_chain_matmul(x, cs, impl=impl) ** 2),
                                argnums=(0, 1)))

    sides = {
        ("forward", "pallas"): (tt_fwd("pallas"), cores),
        ("forward", "xla"): (tt_fwd("xla"), cores),
        ("forward", "dense"): (jax.jit(lambda x, w: jnp.matmul(x, w, precision=hi)), dense_w),
        ("fwd+bwd", "pallas"): (tt_bwd("pallas"), cores),
        ("fwd+bwd", "xla"): (tt_bwd("xla"), cores),
        ("fwd+bwd", "dense"): (jax.jit(jax.grad(
            lambda x, w: jnp.sum(jnp.matmul(x, w, precision=hi) ** 2), argnums=(0, 1))), dense_w),
    }
    reference = None
    for (what, impl), (fn, weights) in sides.items():
        out, t, first = median_ms(lambda fn=fn, w=weights: fn(x, w), sync_jax, repeats)
        err = float("nan")
        if what == "forward":
            reference = out if reference is None else reference
            err = float(jnp.linalg.norm(out - reference) / jnp.linalg.norm(reference))
        _row(table, bench="tt_layer", shape=f"{row_shape}x{col_shape}", rank=tt_rank,
             batch=batch, pass_=what, impl=impl, ms=t, compile_s=first, rel_to_pallas=err)


def main(argv=None):
    p = parser(__doc__.split("\n\n")[0], small="tiny sizes, the kernels in interpret mode",
               default="gpu")
    p.add_argument("--which", type=choices("--which", WORKS), default=WORKS,
                   help=f"comma list among {','.join(WORKS)} (default: all)")
    p.add_argument("--sizes", type=ints("--sizes"), help="MTTKRP tensor sides n (n^3)")
    p.add_argument("--rank", type=int)
    p.add_argument("--n-iter", type=int)
    p.add_argument("--repeats", type=int)
    p.add_argument("--tune", action="store_true",
                   help="also time the MTTKRP kernel over a grid of block sizes")
    p.add_argument("--tpu", action="store_true", help="the TPU rows (TPU_BENCHES) instead; "
                   "with --small, tiny sizes in TPU interpret mode")
    p.add_argument("--json", help="write the rows and the environment here")
    args = p.parse_args(argv)
    if args.tpu:
        return _main_tpu(args)
    check_positive(p, args, ("rank", "n_iter", "repeats"))
    cfg = dict(PRESETS[args.preset])
    for key in ("sizes", "rank", "n_iter", "repeats"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    dev = jax.devices()[0]
    env = dict(jax=jax.__version__, device=f"{dev.platform}: {getattr(dev, 'device_kind', dev)}",
               python=platform.python_version(), torch=getattr(torch, "__version__", None),
               tensorly=getattr(tensorly, "__version__", None), preset=cfg)
    print(json.dumps(env, default=str), flush=True)
    if dev.platform != "gpu":
        print("note: not on a GPU; the kernels run in interpret mode (timings are not "
              "meaningful)", flush=True)
    table = []
    which = set(args.which)
    if "mttkrp" in which:
        bench_mttkrp(cfg["sizes"], cfg["rank"], cfg["repeats"], table, tune=args.tune)
    if "cp" in which:
        bench_cp(cfg["cp_size"], cfg["rank"], cfg["n_iter"], cfg["repeats"], table)
    if "tt" in which:
        bench_tt(*cfg["tt_shape"], cfg["tt_rank"], cfg["batch"], cfg["repeats"], table)
    write_json(args.json, dict(environment=env, rows=table))
    return table


def _main_tpu(args):
    cfg = dict(TPU_PRESETS["small" if args.preset == "small" else "tpu"])
    cfg.update({k: getattr(args, k) for k in ("sizes", "repeats") if getattr(args, k)})
    if args.rank:
        cfg["ranks"] = (args.rank,)
    dev = jax.devices()[0]
    env = dict(jax=jax.__version__, device=f"{dev.platform}: {getattr(dev, 'device_kind', dev)}",
               python=platform.python_version(), preset=cfg)
    print(json.dumps(env, default=str), flush=True)
    if dev.platform != "tpu":
        print("note: not on a TPU; the TPU kernels run in interpret mode (timings are not "
              "meaningful)", flush=True)
    table = []
    for bench in TPU_BENCHES:
        bench(cfg, table)
    write_json(args.json, dict(environment=env, rows=table))
    return table


if __name__ == "__main__":
    main()
