"""Memory per device and step time of sharded training against the device count.

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

On a CPU the "devices" share the same cores, so the step times show the shape of the
partitioned program (its collectives and per-device work), not a speed-up. On an accelerator
machine the script uses the real devices (``--devices`` up to ``jax.device_count()``).

    python benchmarks/bench_sharding.py                 # 1, 2, 4, 8 CPU devices
    python benchmarks/bench_sharding.py --small         # smoke run: 1 and 2 devices, 3 steps
    python benchmarks/bench_sharding.py --gpu --devices 1 --json out/sharding_gpu.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys

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
    sys.path.insert(0, HERE)
    from _harness import median_ms  # also puts a checkout's tensorfact on the path

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


def run(counts, batch, steps, gpu):
    rows, info = [], None
    for n in counts:
        env = dict(os.environ)
        if not gpu:
            env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
                       JAX_PLATFORMS="cpu")
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", str(n),
                               "--batch", str(batch), "--steps", str(steps)],
                              env=env, capture_output=True, text=True)
        if proc.returncode or MARKER not in proc.stdout:
            raise SystemExit(f"{n} devices failed:\n{proc.stderr[-4000:]}")
        out = json.loads(proc.stdout.split(MARKER, 1)[1])
        rows += out["rows"]
        info = out["info"]
    return rows, info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default=None, help="device counts, e.g. 1,2,4,8")
    parser.add_argument("--batch", type=int, default=256, help="global batch (default 256)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    parser.add_argument("--small", action="store_true", help="smoke run: 1, 2 devices, 3 steps")
    parser.add_argument("--gpu", action="store_true",
                        help="use the machine's accelerators instead of CPU devices")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return worker(args.worker, args.batch, args.steps)
    counts = [int(c) for c in args.devices.split(",")] if args.devices else (
        [1, 2] if args.small else [1, 2, 4, 8])
    steps = 3 if args.small else args.steps
    rows, info = run(counts, args.batch, steps, args.gpu)
    print(f"{info['platform']} ({info['device_kind']}), jax {info['jax']}; "
          f"{info['n_params']:,} parameters (float32), global batch {args.batch}, Adam")
    print(f"{'devices':>7} {'layout':>6} {'mesh':>7} {'params/dev':>11} {'Adam/dev':>10} "
          f"{'params all':>11} {'step ms':>8} {'first s':>8}")
    for r in rows:
        mesh = "x".join(map(str, r["mesh"]))
        print(f"{r['devices']:7d} {r['layout']:>6} {mesh:>7} {r['param_bytes_max']:11,d} "
              f"{r['opt_bytes_max']:10,d} {r['param_bytes_total']:11,d} {r['step_ms']:8.2f} "
              f"{r['first_s']:8.2f}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "info": info}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
