"""Memory per device and step time of sharded training and sharded fits against the device count.

Trains the classifier of ``examples/train_sharded.py`` (TT embedding, TT dense, low-rank dense;
Adam) at a larger size (vocabulary 4096, ``embed = hidden = 512 = 8·8·8``, 64 classes, TT rank
16, head rank 32, so every split is even up to 8 model devices) on meshes ``(data, model)`` of
1, 2, 4 and 8 devices, in three layouts per count:

* ``data``: ``(n, 1)``, the parameters replicated, the batch split;
* ``2-D``: ``(n/2, 2)``, the factors split over 2 model devices (the example's default);
* ``model``: ``(1, n)``, the factors split over every device, the batch replicated.

For each it reports the bytes of the parameters and of the Adam state held by the most loaded
device (summed over ``jax.Array.addressable_shards``; the biases stay replicated), and the
median time of a training step at a fixed global batch (the first call, which compiles, apart).
Each device count runs in its own process, because the number of CPU devices is fixed when JAX
starts (``XLA_FLAGS=--xla_force_host_platform_device_count=N``).

With ``--decompositions`` it measures the sharded fits instead: a CP-planted ``S³`` float32
tensor (default ``S = 128``, rank 8 plus 1% noise) split on mode 0 over a 1-D mesh of ``n``
devices (and, for ``n ≥ 4``, over a 2-D ``(n/2, 2)`` mesh splitting modes 0 and 1) is fitted by
CP-ALS (rank 8, 10 sweeps, ``tol=0``), HOOI (ranks 8³, 10 iterations, ``tol=0``) and TT-SVD
(ranks ``[1, 8, 8, 1]``) through the public :func:`tensorfact.cp`, :func:`tensorfact.tucker`
and :func:`tensorfact.tt`. Per fit it reports the bytes of the input block per device, XLA's
temporary bytes per device from ``memory_analysis()`` of the compiled program (the shard_map
program that ``tensorfact.decomposition._sharded`` builds, captured while the public call runs;
with one device, the ordinary single-device program), the median wall time of 3 runs, and the
relative difference of the reconstruction from the single-device fit of the same tensor.

On a CPU the "devices" share the same cores, so the step times show the shape of the
partitioned program (its collectives and per-device work), not a speed-up. On an accelerator
machine the script uses the real devices (``--devices`` up to ``jax.device_count()``).

    python benchmarks/bench_sharding.py                 # 1, 2, 4, 8 CPU devices
    python benchmarks/bench_sharding.py --small         # smoke run: 1 and 2 devices, 3 steps
    python benchmarks/bench_sharding.py --gpu --devices 1 --json out/sharding_gpu.json
    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_sharding.py --decompositions
    python benchmarks/bench_sharding.py --decompositions --small   # 32³, 1 and 2 devices
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys

from _harness import (cp_to_dense, median_ms, parser, planted_cp, tt_to_dense, tucker_to_dense,
                      write_json)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MARKER = "BENCH-SHARDING-JSON"


def _example():
    spec = importlib.util.spec_from_file_location("train_sharded",
                                                  os.path.join(ROOT, "examples",
                                                               "train_sharded.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _layouts(n):
    out = [("data", (n, 1))]
    if n >= 4:
        out.append(("2-D", (n // 2, 2)))
    if n >= 2:
        out.append(("model", (1, n)))
    return out


def worker(n, batch, steps):
    """One device count: every layout, as JSON on stdout."""
    import jax
    from flax import nnx

    ex = _example()
    if jax.device_count() < n:
        raise SystemExit(f"asked for {n} devices; JAX sees {jax.device_count()}")
    cfg = ex.Config(vocab=4096, embed=512, hidden=512, classes=64, tt_rank=16, head_rank=32)
    ids, labels = ex.make_data(0, batch, cfg)
    rows = []
    for name, shape in _layouts(n):
        mesh = ex.make_mesh(shape, ("data", "model"), devices=jax.devices()[:n])
        model, optimizer = ex.build(mesh, cfg)
        params = ex.bytes_per_device(nnx.state(model, nnx.Param))
        opt_state = ex.bytes_per_device(nnx.state(optimizer))   # Adam moments, step
        with jax.set_mesh(mesh):
            batch_arrays = ex.shard_batch(mesh, ids, labels)
            _, ms, first = median_ms(lambda: ex.train_step(model, optimizer, *batch_arrays),
                                     jax.block_until_ready, steps)
        rows.append({"devices": n, "layout": name, "mesh": list(shape),
                     "param_bytes_max": max(params.values()),
                     "param_bytes_total": sum(params.values()),
                     "opt_bytes_max": max(opt_state.values()),
                     "step_ms": ms, "first_s": first})
    info = {"platform": jax.devices()[0].platform, "device_kind": jax.devices()[0].device_kind,
            "jax": jax.__version__, "n_params": sum(int(v.get_value().size) for _, v in
                                                    nnx.to_flat_state(nnx.state(model,
                                                                                nnx.Param)))}
    print(MARKER + json.dumps({"rows": rows, "info": info}))


# ---------------------------------------------------------------------------------------------
# --decompositions: sharded CP-ALS, HOOI and TT-SVD


def _decomp_layouts(n):
    """(name, mesh shape, axis names, spec of the 3-way tensor) for ``n`` devices."""
    out = [("1-D", (n,), ("i",), ("i", None, None))]
    if n >= 4:
        out.append(("2-D", (n // 2, 2), ("i", "j"), ("i", "j", None)))
    return out


def _dense64(name, fit):
    """The reconstruction of a fit in NumPy float64 (independent of tensorfact's to_dense)."""
    if name == "cp":
        return cp_to_dense(fit.weights, fit.factors)
    if name == "tucker":
        return tucker_to_dense(fit.core, fit.factors)
    return tt_to_dense(fit.cores)


def decomp_worker(n, size, rank, n_iter, repeats):
    """One device count: CP-ALS, HOOI and TT-SVD on every layout, as JSON on stdout."""
    import jax
    import numpy as np

    from jax.sharding import NamedSharding

    import tensorfact as tfa
    from tensorfact._checks import is_traced
    from tensorfact.decomposition import _sharded

    if jax.device_count() < n:
        raise SystemExit(f"asked for {n} devices; JAX sees {jax.device_count()}")

    # the sharded fits build their program with _sharded.*_program: keep the last one built,
    # so that the very program the public call ran can be lowered again for its memory analysis
    captured = {}

    def capture(name, build):
        def wrapped(*args, **kwargs):
            captured[name] = build(*args, **kwargs)
            return captured[name]
        return wrapped

    for name in ("cp", "tucker", "tt"):
        setattr(_sharded, f"{name}_program", capture(name, getattr(_sharded, f"{name}_program")))

    fits = {
        "cp": lambda x: tfa.cp(x, rank, n_iter=n_iter, tol=0.0),
        "tucker": lambda x: tfa.tucker(x, (rank,) * 3, n_iter=n_iter, tol=0.0),
        "tt": lambda x: tfa.tt(x, [1, rank, rank, 1]),
    }
    x_np = planted_cp((size,) * 3, rank, 0.01, 0)
    x64 = x_np.astype(np.float64)
    # the single-device fits of the same tensor, in this process
    x_one = jax.device_put(x_np, jax.devices()[0])
    ref = {name: _dense64(name, fit(x_one)) for name, fit in fits.items()}

    def forced(x):  # the library's test, widened to a mesh of one device
        return isinstance(getattr(x, "sharding", None), NamedSharding) and not is_traced(x)

    variants = [(False, *v) for v in _decomp_layouts(n)]
    if n == 1:  # also the shard_map program on a 1-device mesh: memory like for like
        variants.append((True, *_decomp_layouts(1)[0]))
    rows = []
    for force, layout, shape, names, spec in variants:
        mesh = tfa.sharding.make_mesh(shape, names, devices=jax.devices()[:n])
        x = tfa.sharding.shard_tensor(x_np, mesh, spec)
        block = max(s.data.nbytes for s in x.addressable_shards)
        library_test = tfa.sharding.is_mode_sharded
        if force:
            tfa.sharding.is_mode_sharded = forced
        try:
            for name, fit in fits.items():
                captured.pop(name, None)
                out, ms, first = median_ms(lambda: fit(x), jax.block_until_ready, repeats)
                if name in captured:  # the sharded program, lowered with the same arguments
                    fn, args, static = captured[name]
                    compiled = fn.lower(*args, **static).compile()
                    program = "shard_map"
                else:  # one device: the ordinary program, under jit (x is then a tracer)
                    compiled = jax.jit(fit).lower(x).compile()
                    program = "single"
                rows.append(_decomp_row(n, layout, shape, spec, name, program, block,
                                        compiled.memory_analysis(), ms, first,
                                        _dense64(name, out), ref[name], x64))
        finally:
            tfa.sharding.is_mode_sharded = library_test
    info = {"platform": jax.devices()[0].platform, "device_kind": jax.devices()[0].device_kind,
            "jax": jax.__version__, "shape": [size] * 3, "rank": rank, "n_iter": n_iter,
            "repeats": repeats}
    print(MARKER + json.dumps({"rows": rows, "info": info}))


def _decomp_row(n, layout, shape, spec, name, program, block, mem, ms, first, dense, ref, x64):
    import numpy as np

    return {"devices": n, "layout": layout, "mesh": list(shape), "spec": list(spec),
            "method": name, "program": program, "block_bytes": int(block),
            "temp_bytes": int(mem.temp_size_in_bytes),
            "arg_bytes": int(mem.argument_size_in_bytes),
            "out_bytes": int(mem.output_size_in_bytes),
            "median_ms": ms, "first_s": first,
            "rel_diff_vs_1dev": float(np.linalg.norm(dense - ref) / np.linalg.norm(ref)),
            "rel_error": float(np.linalg.norm(dense - x64) / np.linalg.norm(x64))}


def print_decompositions(rows, info):
    print(f"{info['platform']} ({info['device_kind']}), jax {info['jax']}; "
          f"{'x'.join(map(str, info['shape']))} float32, CP-planted rank {info['rank']} + 1% "
          f"noise; CP-ALS rank {info['rank']} and HOOI ranks {info['rank']}^3 with "
          f"{info['n_iter']} iterations (tol=0), TT-SVD ranks [1, {info['rank']}, "
          f"{info['rank']}, 1]; median of {info['repeats']} runs")
    print(f"{'devices':>7} {'mesh':>5} {'split':>6} {'program':>9} {'method':>6} {'block/dev':>11} "
          f"{'XLA temp/dev':>13} {'median ms':>10} {'first s':>8} {'vs 1-dev':>9} {'rel err':>8}")
    for r in rows:
        mesh = "x".join(map(str, r["mesh"]))
        split = ",".join(str(m) for m, e in enumerate(r["spec"]) if e is not None)
        print(f"{r['devices']:7d} {mesh:>5} {split:>6} {r['program']:>9} {r['method']:>6} "
              f"{r['block_bytes']:11,d} "
              f"{r['temp_bytes']:13,d} {r['median_ms']:10.1f} {r['first_s']:8.2f} "
              f"{r['rel_diff_vs_1dev']:9.1e} {r['rel_error']:8.1e}")


def run(counts, worker_args, gpu):
    rows, info = [], None
    for n in counts:
        env = dict(os.environ)
        if not gpu:
            env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
                       JAX_PLATFORMS="cpu")
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", str(n)]
                              + worker_args, env=env, capture_output=True, text=True)
        if proc.returncode or MARKER not in proc.stdout:
            raise SystemExit(f"{n} devices failed:\n{proc.stderr[-4000:]}")
        out = json.loads(proc.stdout.split(MARKER, 1)[1])
        rows += out["rows"]
        info = out["info"]
    return rows, info


def main(argv=None):
    p = parser(__doc__.splitlines()[0],
               small="1 and 2 devices, 3 steps (--decompositions: 32^3)")
    p.add_argument("--devices", default=None, help="device counts, e.g. 1,2,4,8")
    p.add_argument("--batch", type=int, default=256, help="global batch (default 256)")
    p.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    p.add_argument("--gpu", action="store_true",
                   help="use the machine's accelerators instead of CPU devices")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--decompositions", action="store_true",
                   help="benchmark sharded CP-ALS, HOOI and TT-SVD instead of training")
    p.add_argument("--size", type=int, default=None,
                   help="--decompositions: tensor side S of S^3 (default 128; 32 --small)")
    p.add_argument("--rank", type=int, default=8, help="--decompositions: rank (default 8)")
    p.add_argument("--n-iter", type=int, default=10,
                   help="--decompositions: CP/HOOI iterations (default 10)")
    p.add_argument("--repeats", type=int, default=3,
                   help="--decompositions: timed runs per fit (default 3)")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    small = args.preset == "small"
    size = args.size or (32 if small else 128)
    if args.worker is not None:
        if args.decompositions:
            return decomp_worker(args.worker, size, args.rank, args.n_iter, args.repeats)
        return worker(args.worker, args.batch, args.steps)
    counts = [int(c) for c in args.devices.split(",")] if args.devices else (
        [1, 2] if small else [1, 2, 4, 8])
    if args.decompositions:
        rows, info = run(counts, ["--decompositions", "--size", str(size), "--rank",
                                  str(args.rank), "--n-iter", str(args.n_iter), "--repeats",
                                  str(args.repeats)], args.gpu)
        print_decompositions(rows, info)
        write_json(args.json, {"mode": "decompositions", "rows": rows, "info": info})
        return rows
    steps = 3 if small else args.steps
    rows, info = run(counts, ["--batch", str(args.batch), "--steps", str(steps)], args.gpu)
    print(f"{info['platform']} ({info['device_kind']}), jax {info['jax']}; "
          f"{info['n_params']:,} parameters (float32), global batch {args.batch}, Adam")
    print(f"{'devices':>7} {'layout':>6} {'mesh':>7} {'params/dev':>11} {'Adam/dev':>10} "
          f"{'params all':>11} {'step ms':>8} {'first s':>8}")
    for r in rows:
        mesh = "x".join(map(str, r["mesh"]))
        print(f"{r['devices']:7d} {r['layout']:>6} {mesh:>7} {r['param_bytes_max']:11,d} "
              f"{r['opt_bytes_max']:10,d} {r['param_bytes_total']:11,d} {r['step_ms']:8.2f} "
              f"{r['first_s']:8.2f}")
    write_json(args.json, {"mode": "training", "rows": rows, "info": info})
    return rows


if __name__ == "__main__":
    main()
