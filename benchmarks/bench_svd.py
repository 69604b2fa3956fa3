"""Time tensorfact's truncated SVD (exact and randomized) against PyTorch and NumPy.

Protocol (the project's BENCHMARKS.md): same matrix, same rank, one process; compile (first
call) apart; median of ``--repeats`` timed calls with ``jax.block_until_ready`` /
``torch.cuda.synchronize``; each row carries its relative error ‖M − M_r‖_F / ‖M‖_F and that
error over the optimal (exact truncated SVD) error, so a fast but worse answer cannot pass.

    python benchmarks/bench_svd.py --small          # CPU smoke
    python benchmarks/bench_svd.py                  # 4096 × 4096, rank 64 (GPU)
    python benchmarks/bench_svd.py --stages         # + the building blocks, JAX vs PyTorch
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from _harness import (markdown_table, median_ms, parser, sync_jax, sync_nothing, sync_torch,
                      torch_device)

import tensorfact as tfa


def _matrix(n, spectrum, seed):
    """A test matrix with a chosen spectrum: 'decay' (s_i = (1 + i)^-1/2, weight-like) or 'flat'
    (i.i.d. Gaussian)."""
    key = jax.random.key(seed)
    if spectrum == "flat":
        return jax.random.normal(key, (n, n), jnp.float32) / np.sqrt(n)
    ku, kv = jax.random.split(key)
    u, _ = jnp.linalg.qr(jax.random.normal(ku, (n, n), jnp.float32))
    v, _ = jnp.linalg.qr(jax.random.normal(kv, (n, n), jnp.float32))
    s = (1.0 + jnp.arange(n, dtype=jnp.float32)) ** -0.5
    return (u * s) @ v.T


def main(argv=None):
    p = parser(__doc__.splitlines()[0], small="256 × 256, rank 16")
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--spectrum", choices=["decay", "flat"], default="decay")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--stages", action="store_true",
                   help="also time the building blocks (matmul, QR, SVDs) in JAX and torch")
    p.add_argument("--no-numpy", dest="numpy", action="store_false",
                   help="skip the NumPy rows (slow at 4096²)")
    args = p.parse_args(argv)
    n, rank = (256, 16) if args.preset == "small" else (args.size, args.rank)
    m = jax.block_until_ready(_matrix(n, args.spectrum, 0))
    m64 = np.asarray(m, np.float64)
    s_all = np.linalg.svd(m64, compute_uv=False) if n <= 4096 else None
    optimal = np.sqrt(np.sum(s_all[rank:] ** 2)) / np.linalg.norm(s_all)
    rows = []

    def err(dense):
        return np.linalg.norm(m64 - np.asarray(dense, np.float64)) / np.linalg.norm(m64)

    key = jax.random.key(1)
    for name, fn in {
        "tensorfact exact": jax.jit(lambda m: tfa.svd(m, rank)),
        "tensorfact randomized q=2": jax.jit(lambda m: tfa.svd(m, rank, method="randomized",
                                                                key=key)),
        "tensorfact randomized q=4": jax.jit(lambda m: tfa.svd(m, rank, method="randomized",
                                                                key=key, n_power_iter=4)),
    }.items():
        out, ms, first = median_ms(lambda: fn(m), sync_jax, args.repeats)
        rows.append((name, ms, first, err(out.to_dense())))
    if args.numpy:
        m_np = np.asarray(m)
        rng = np.random.default_rng(1)

        def numpy_randomized(q=2, oversample=10):
            # the same range finder as tensorfact's, in NumPy (QR after every product)
            y, _ = np.linalg.qr(m_np @ rng.standard_normal((n, rank + oversample), np.float32))
            for _ in range(q):
                z, _ = np.linalg.qr(m_np.T @ y)
                y, _ = np.linalg.qr(m_np @ z)
            u, s, vt = np.linalg.svd(y.T @ m_np, full_matrices=False)
            return (y @ u[:, :rank]) * s[:rank] @ vt[:rank]

        def numpy_exact():
            u, s, vt = np.linalg.svd(m_np, full_matrices=False)
            return (u[:, :rank] * s[:rank]) @ vt[:rank]

        for name, fn in {"numpy randomized q=2 (cpu)": numpy_randomized,
                         "numpy.linalg.svd (cpu)": numpy_exact}.items():
            dense, ms, first = median_ms(fn, sync_nothing, args.repeats)
            rows.append((name, ms, first, err(dense)))
    dev = torch_device()
    if dev is not None:
        import torch

        mt = torch.tensor(np.asarray(m), device=dev)
        for name, fn in {
            f"torch.svd_lowrank q={rank}, niter=4": lambda: torch.svd_lowrank(mt, q=rank, niter=4),
            f"torch.svd_lowrank q={rank + 10}, niter=4": lambda: torch.svd_lowrank(
                mt, q=rank + 10, niter=4),
            "torch.linalg.svd": lambda: torch.linalg.svd(mt, full_matrices=False),
        }.items():
            (u, s, v), ms, first = median_ms(fn, sync_torch, args.repeats)
            vt = v.mT if "lowrank" in name else v
            dense = (u[:, :rank] * s[:rank]) @ vt[:rank]
            rows.append((name + f" ({dev})", ms, first, err(dense.cpu().numpy())))
    print(f"# jax {jax.__version__} on {jax.devices()[0].device_kind}; {n}×{n} float32, "
          f"{args.spectrum} spectrum, rank {rank}; optimal rel. error {optimal:.6f}")
    print(markdown_table(("method", "median ms", "first call s", "rel. error", "error / optimal"),
                         [(name, f"{ms:.2f}", f"{first:.2f}", f"{e:.6f}", f"{e / optimal:.4f}")
                          for name, ms, first, e in rows]))
    if args.stages:
        _time_stages(m, rank + 10, args.repeats)
    return rows


def _time_stages(m, width, repeats):
    """Times the pieces of a randomized SVD at sketch width ``width`` in JAX and in torch, to
    show where a gap between the two comes from."""
    n = m.shape[0]
    y = jnp.asarray(m[:, :width])
    r = jnp.linalg.qr(y)[1]
    prec = jax.lax.Precision.HIGHEST
    jax_ops = {
        f"matmul {n}×{n} · {n}×{width}": (jax.jit(lambda a, b: jnp.matmul(a, b, precision=prec)),
                                         (m, y)),
        f"qr {n}×{width}": (jax.jit(lambda a: jnp.linalg.qr(a)), (y,)),
        f"svd {width}×{n}": (jax.jit(lambda a: jnp.linalg.svd(a, full_matrices=False)), (y.T,)),
        f"svd {width}×{width}": (jax.jit(lambda a: jnp.linalg.svd(a)), (r,)),
    }
    dev = torch_device()
    if dev is not None:
        import torch

        mt, yt, rt = (torch.tensor(np.asarray(a), device=dev) for a in (m, y, r))
        torch_ops = [lambda: mt @ yt, lambda: torch.linalg.qr(yt),
                     lambda: torch.linalg.svd(yt.T, full_matrices=False),
                     lambda: torch.linalg.svd(rt)]
    else:
        torch_ops = [None] * len(jax_ops)
    rows = []
    for (name, (fn, args)), top in zip(jax_ops.items(), torch_ops):
        _, ms, _ = median_ms(lambda: fn(*args), sync_jax, repeats)
        tms = f"{median_ms(top, sync_torch, repeats)[1]:.3f}" if top is not None else "–"
        rows.append((name, f"{ms:.3f}", tms))
    print(markdown_table((f"stage ({width} columns)", "jax ms", "torch ms"), rows))


if __name__ == "__main__":
    main()
