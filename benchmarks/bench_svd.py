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

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from _harness import median_ms  # noqa: E402  (also puts a checkout's tensorfact on the path)

import tensorfact as tfa  # noqa: E402


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--spectrum", choices=["decay", "flat"], default="decay")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="CPU smoke: 256 × 256, rank 16")
    parser.add_argument("--stages", action="store_true",
                        help="also time the building blocks (matmul, QR, SVDs) in JAX and torch")
    parser.add_argument("--no-numpy", dest="numpy", action="store_false",
                        help="skip the NumPy rows (slow at 4096²)")
    args = parser.parse_args(argv)
    n, rank = (256, 16) if args.small else (args.size, args.rank)
    m = jax.block_until_ready(_matrix(n, args.spectrum, 0))
    m64 = np.asarray(m, np.float64)
    s_all = np.linalg.svd(m64, compute_uv=False) if n <= 4096 else None
    optimal = np.sqrt(np.sum(s_all[rank:] ** 2)) / np.linalg.norm(s_all)
    rows = []

    def err(dense):
        return np.linalg.norm(m64 - np.asarray(dense, np.float64)) / np.linalg.norm(m64)

    sync = jax.block_until_ready
    key = jax.random.key(1)
    for name, fn in {
        "tensorfact exact": jax.jit(lambda m: tfa.svd(m, rank)),
        "tensorfact randomized q=2": jax.jit(lambda m: tfa.svd(m, rank, method="randomized",
                                                                key=key)),
        "tensorfact randomized q=4": jax.jit(lambda m: tfa.svd(m, rank, method="randomized",
                                                                key=key, n_power_iter=4)),
    }.items():
        out, ms, first = median_ms(lambda: fn(m), sync, args.repeats)
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
            dense, ms, first = median_ms(fn, lambda _: None, args.repeats)
            rows.append((name, ms, first, err(dense)))
    try:
        import torch
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        torch.backends.cuda.matmul.allow_tf32 = False
        mt = torch.tensor(np.asarray(m), device=dev)

        def tsync(_):
            if dev == "cuda":
                torch.cuda.synchronize()

        for name, fn in {
            f"torch.svd_lowrank q={rank}, niter=4": lambda: torch.svd_lowrank(mt, q=rank, niter=4),
            f"torch.svd_lowrank q={rank + 10}, niter=4": lambda: torch.svd_lowrank(
                mt, q=rank + 10, niter=4),
            "torch.linalg.svd": lambda: torch.linalg.svd(mt, full_matrices=False),
        }.items():
            (u, s, v), ms, first = median_ms(fn, tsync, args.repeats)
            vt = v.mT if "lowrank" in name else v
            dense = (u[:, :rank] * s[:rank]) @ vt[:rank]
            rows.append((name + f" ({dev})", ms, first, err(dense.cpu().numpy())))
    except ImportError:
        pass
    print(f"# jax {jax.__version__} on {jax.devices()[0].device_kind}; {n}×{n} float32, "
          f"{args.spectrum} spectrum, rank {rank}; optimal rel. error {optimal:.6f}")
    print("| method | median ms | first call s | rel. error | error / optimal |")
    print("|---|---|---|---|---|")
    for name, ms, first, e in rows:
        print(f"| {name} | {ms:.2f} | {first:.2f} | {e:.6f} | {e / optimal:.4f} |")
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
    print(f"| stage ({width} columns) | jax ms | torch ms |")
    print("|---|---|---|")
    try:
        import torch
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        mt, yt, rt = (torch.tensor(np.asarray(a), device=dev) for a in (m, y, r))
        torch_ops = [lambda: mt @ yt, lambda: torch.linalg.qr(yt),
                     lambda: torch.linalg.svd(yt.T, full_matrices=False),
                     lambda: torch.linalg.svd(rt)]

        def tsync(_):
            if dev == "cuda":
                torch.cuda.synchronize()
    except ImportError:
        torch_ops = [None] * len(jax_ops)
    for (name, (fn, args)), top in zip(jax_ops.items(), torch_ops):
        _, ms, _ = median_ms(lambda: fn(*args), jax.block_until_ready, repeats)
        tms = f"{median_ms(top, tsync, repeats)[1]:.3f}" if top is not None else "–"
        print(f"| {name} | {ms:.3f} | {tms} |")


if __name__ == "__main__":
    main()
