"""Many small CP fits at once: one ``jax.vmap`` call against a Python loop over TensorLy.

BENCHMARKS.md's target: 1,024 CP fits of 32³ tensors, rank 8, in one ``vmap`` call, at least
100× faster than a loop over TensorLy-PyTorch. Same data on both sides (standard normal plus a
planted rank-8 part, float32), ``init="svd"``, ``--n-iter`` sweeps and ``tol=0`` on both sides, so
the work is fixed; each row carries the mean fit ``1 − ‖x − x̂‖/‖x‖`` over the batch.

The loop runs over the first ``--loop-count`` tensors only (a loop's time is linear in its
length) and is scaled to the whole batch; the table says so.

    python benchmarks/bench_batched_cp.py --small         # CPU smoke
    python benchmarks/bench_batched_cp.py                 # 1,024 × 32³, rank 8 (GPU)
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from _harness import (markdown_table, median_ms, parser, sync_jax, sync_torch, torch_device,
                      write_json)

import tensorfact as tfa


def _data(batch, size, rank, seed=0):
    key_cp, key_noise = jax.random.split(jax.random.key(seed))
    keys = jax.random.split(key_cp, batch)
    planted = jax.vmap(lambda k: tfa.random_cp(k, (size,) * 3, rank).to_dense())(keys)
    planted = planted / jnp.linalg.norm(planted.reshape(batch, -1), axis=1)[:, None, None, None]
    noise = jax.random.normal(key_noise, planted.shape, jnp.float32) / size ** 1.5
    return planted + 0.1 * noise


def _fits(x, dense):
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    dense = np.asarray(dense, np.float64).reshape(len(dense), -1)
    return 1 - np.linalg.norm(x - dense, axis=1) / np.linalg.norm(x, axis=1)


def main(argv=None):
    p = parser(__doc__.splitlines()[0], small="16 × 12³, rank 3")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--n-iter", type=int, default=20)
    p.add_argument("--loop-count", type=int, default=32,
                   help="tensors the TensorLy loop runs on (scaled to the batch)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="write the rows to this file")
    args = p.parse_args(argv)
    if args.preset == "small":
        args.batch, args.size, args.rank, args.n_iter, args.loop_count = 16, 12, 3, 5, 4
    x = jax.block_until_ready(_data(args.batch, args.size, args.rank))
    rank, n_iter = args.rank, args.n_iter
    rows = []

    fit_all = jax.jit(jax.vmap(lambda t: tfa.cp(t, rank, n_iter=n_iter, tol=0).to_dense()))
    dense, ms, first = median_ms(lambda: fit_all(x), sync_jax, args.repeats)
    rows.append({"backend": "tensorfact (one vmap call)", "fits": args.batch, "median_ms": ms,
                 "first_s": first, "fit": float(_fits(x, dense).mean())})

    import tensorly as tl
    from tensorly.decomposition import parafac

    loop_x = np.asarray(x[:args.loop_count])
    backends = [("numpy", None)]
    if torch_device() is not None:
        import torch

        backends.append(("pytorch", torch_device()))
    for backend, device in backends:
        tl.set_backend(backend)
        tensors = ([torch.tensor(t, device=device) for t in loop_x] if backend == "pytorch"
                   else list(loop_x))

        def loop():
            return [tl.cp_to_tensor(parafac(t, rank, init="svd", n_iter_max=n_iter, tol=0))
                    for t in tensors]

        out, ms, first = median_ms(loop, sync_torch, args.repeats)
        out = np.stack([np.asarray(o.cpu() if backend == "pytorch" else o) for o in out])
        scaled = ms * args.batch / args.loop_count
        rows.append({"backend": f"tensorly-{backend}" + (f" ({device})" if device else "")
                     + f" loop, {args.loop_count} fits scaled ×{args.batch / args.loop_count:g}",
                     "fits": args.batch, "median_ms": scaled, "first_s": first,
                     "fit": float(_fits(loop_x, out).mean())})
    tl.set_backend("numpy")

    base = rows[0]["median_ms"]
    print(f"# jax {jax.__version__} on {jax.devices()[0].device_kind}; {args.batch} CP fits of "
          f"{args.size}³, rank {rank}, {n_iter} iterations, init='svd', tol=0; "
          f"load average {os.getloadavg()[0]:.1f}")
    for r in rows:
        r["ratio"] = r["median_ms"] / base
    print(markdown_table(
        ("backend", "median ms (whole batch)", "first call s", "mean fit", "ratio"),
        [(r["backend"], f"{r['median_ms']:.1f}", f"{r['first_s']:.2f}", f"{r['fit']:.5f}",
          f"{r['ratio']:.1f}") for r in rows]))
    write_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
