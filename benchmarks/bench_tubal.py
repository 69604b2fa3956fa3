"""Time tensorfact's t-SVD and t-product against slice-wise NumPy and PyTorch implementations.

Protocol (the project's BENCHMARKS.md): one process, one float32 data set (standard normal) for
every contender, timed alike with ``_harness.median_ms``: the first call (compilation for JAX,
warm-up otherwise) reported apart, then the median of ``--repeats`` calls, each synchronised
(``jax.block_until_ready``, ``torch.cuda.synchronize``). Every row carries its relative error,
computed in float64 on the host, so a faster but wrong answer cannot pass; "ratio" is the
contender's median over tensorfact's (> 1: tensorfact is faster).

Works, for an ``n1 × n2 × n3`` tensor (default 256³; ``--small``: 48 × 40 × 16):

* **t-SVD**, from the dense tensor to the real factors ``U, s, V`` (tubal rank ``min(n1, n2)``)
  in the original domain, as :func:`tensorfact.tubal.svd` returns them:

  - tensorfact: ``tfa.tubal.svd(x)`` (real FFT, ``n3 // 2 + 1`` slice SVDs; the real zero/Nyquist
    slices in real arithmetic);
  - NumPy, half spectrum: ``np.fft.rfft``, the same real/complex split, one batched
    ``np.linalg.svd`` per group, ``np.fft.irfft`` of the factors;
  - NumPy, full spectrum: ``np.fft.fft``, SVDs of all ``n3`` slices (what an implementation
    that ignores the conjugate symmetry does), ``np.fft.ifft`` of the factors (error measured
    from its Fourier-domain factors, whose twin slices need not be conjugate);
  - PyTorch (when it imports; CUDA when available): ``torch.fft.rfft``, the same split with
    batched ``torch.linalg.svd``, ``torch.fft.irfft``.

  Error: ``‖X − U * S * Vᵀ‖_F / ‖X‖_F``, rebuilt in float64.

* **t-product** ``A * B`` of two ``n1 × n2 × n3`` / ``n2 × n1 × n3`` tensors: tensorfact's
  ``tfa.tubal.product`` (rfft, batched matmul at full float32 precision, irfft) against the same
  pipeline in NumPy (half and full spectrum) and PyTorch (TF32 off). Error against a float64
  NumPy product.

    python benchmarks/bench_tubal.py --small                   # CPU smoke
    taskset -c 0,1 python benchmarks/bench_tubal.py            # 256³ on 2 cores
    python benchmarks/bench_tubal.py --json out/tubal.json     # also write the rows
"""

from __future__ import annotations

import os
import platform

import jax
import jax.numpy as jnp
import numpy as np

from _harness import (add_output_flags, choices, cpu_name, median_ms, parser, rel_error, sync_jax,
                      sync_nothing, sync_torch, to_host, torch_device, write_json)

import tensorfact as tfa

try:  # the PyTorch contender is optional
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

WORKS = ("tsvd", "tprod")


# ----------------------------------------------------------------------------------------------
# slice-wise reference implementations (what a user would write in a page)


def _split_svd(hat, svd, real, cat, cast, n3):
    """SVDs of the ``k`` stored frequencies ``hat (k, n1, n2)``: the zero (and, for even ``n3``,
    the Nyquist) slice in real arithmetic, the others batched in complex arithmetic;
    ``cast(a, like)`` converts the real factors to ``like``'s dtype."""
    k = hat.shape[0]
    last_real = n3 % 2 == 0 and n3 > 1
    stop = k - 1 if last_real else k
    parts = [svd(real(hat[:1]))]
    if stop > 1:
        parts.append(svd(hat[1:stop]))
    if last_real:
        parts.append(svd(real(hat[k - 1:])))
    return [cat([p[i] if i == 1 else cast(p[i], hat) for p in parts]) for i in range(3)]


def numpy_tsvd_half(x):
    n3 = x.shape[2]
    hat = np.moveaxis(np.fft.rfft(x, axis=2), 2, 0)
    u, s, vh = _split_svd(hat, lambda a: np.linalg.svd(a, full_matrices=False), np.real,
                          np.concatenate, lambda a, like: a.astype(like.dtype), n3)
    v = np.conj(np.swapaxes(vh, 1, 2))
    return (np.fft.irfft(np.moveaxis(u, 0, 2), n=n3, axis=2),
            np.fft.irfft(s.T, n=n3, axis=1),
            np.fft.irfft(np.moveaxis(v, 0, 2), n=n3, axis=2))


def numpy_tsvd_full(x):
    """All n3 slices; returns the Fourier-domain factors and their inverse transforms."""
    hat = np.moveaxis(np.fft.fft(x, axis=2), 2, 0)
    u, s, vh = np.linalg.svd(hat, full_matrices=False)
    spatial = (np.fft.ifft(np.moveaxis(u, 0, 2), axis=2), np.fft.ifft(s.T, axis=1),
               np.fft.ifft(np.moveaxis(vh, 0, 2), axis=2))
    return (u, s, vh), spatial


def numpy_tprod_half(a, b):
    n3 = a.shape[2]
    ah = np.moveaxis(np.fft.rfft(a, axis=2), 2, 0)
    bh = np.moveaxis(np.fft.rfft(b, axis=2), 2, 0)
    return np.fft.irfft(np.moveaxis(ah @ bh, 0, 2), n=n3, axis=2)


def numpy_tprod_full(a, b):
    ah = np.moveaxis(np.fft.fft(a, axis=2), 2, 0)
    bh = np.moveaxis(np.fft.fft(b, axis=2), 2, 0)
    return np.real(np.fft.ifft(np.moveaxis(ah @ bh, 0, 2), axis=2))


def torch_tsvd(x):
    n3 = x.shape[2]
    hat = torch.fft.rfft(x, dim=2).permute(2, 0, 1)
    u, s, vh = _split_svd(hat, lambda a: torch.linalg.svd(a, full_matrices=False),
                          lambda a: a.real, torch.cat, lambda a, like: a.to(like.dtype), n3)
    v = vh.mH
    return (torch.fft.irfft(u.permute(1, 2, 0), n=n3, dim=2),
            torch.fft.irfft(s.T, n=n3, dim=1),
            torch.fft.irfft(v.permute(1, 2, 0), n=n3, dim=2))


def torch_tprod(a, b):
    n3 = a.shape[2]
    ah = torch.fft.rfft(a, dim=2).permute(2, 0, 1)
    bh = torch.fft.rfft(b, dim=2).permute(2, 0, 1)
    return torch.fft.irfft((ah @ bh).permute(1, 2, 0), n=n3, dim=2)


# ----------------------------------------------------------------------------------------------
# quality, in float64 on the host


def tsvd_error(x64, u, s, v) -> float:
    """``‖X − U * S * Vᵀ‖ / ‖X‖`` from real spatial-domain factors, rebuilt with the rfft."""
    n3 = x64.shape[2]
    uh = np.moveaxis(np.fft.rfft(to_host(u).astype(np.float64), axis=2), 2, 0)
    sh = np.fft.rfft(to_host(s).astype(np.float64), axis=1).T
    vh = np.moveaxis(np.fft.rfft(to_host(v).astype(np.float64), axis=2), 2, 0)
    xh = (uh * sh[:, None, :]) @ np.conj(np.swapaxes(vh, 1, 2))
    approx = np.fft.irfft(np.moveaxis(xh, 0, 2), n=n3, axis=2)
    return float(np.linalg.norm(x64 - approx) / np.linalg.norm(x64))


def tsvd_error_fourier(x64, u, s, vh) -> float:
    """The same from Fourier-domain factors of all ``n3`` slices."""
    xh = (u.astype(np.complex128) * s[:, None, :]) @ vh.astype(np.complex128)
    approx = np.real(np.fft.ifft(np.moveaxis(xh, 0, 2), axis=2))
    return float(np.linalg.norm(x64 - approx) / np.linalg.norm(x64))


# ----------------------------------------------------------------------------------------------


def main(argv=None):
    p = parser(__doc__.splitlines()[0], small="48 × 40 × 16")
    p.add_argument("--shape", default="256,256,256", help="n1,n2,n3 (default 256,256,256)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--which", type=choices("--which", WORKS), default=WORKS,
                   help="comma-separated: tsvd, tprod")
    p.add_argument("--no-numpy-full", dest="numpy_full", action="store_false",
                   help="skip the full-spectrum NumPy rows")
    p.add_argument("--no-torch", dest="use_torch", action="store_false")
    add_output_flags(p)
    args = p.parse_args(argv)
    shape = ((48, 40, 16) if args.preset == "small"
             else tuple(int(d) for d in args.shape.split(",")))
    if len(shape) != 3:
        p.error(f"--shape needs three sizes, got {args.shape!r}")
    which = args.which
    dev = torch_device(args.use_torch and torch is not None) or "cpu"
    use_torch = args.use_torch and torch is not None

    def log(message):
        if not args.quiet:
            print(f"  ... {message}", flush=True)

    n1, n2, n3 = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    a = rng.standard_normal(shape, dtype=np.float32)
    b = rng.standard_normal((n2, n1, n3), dtype=np.float32)
    x64 = x.astype(np.float64)
    xj, aj, bj = (jax.block_until_ready(jnp.asarray(t)) for t in (x, a, b))

    rows = []

    def add(work, backend, fn, sync, error_of, notes=""):
        log(f"{work}: {backend}")
        out, ms, first = median_ms(fn, sync, args.repeats)
        rows.append({"work": work, "backend": backend, "median_ms": ms, "first_s": first,
                     "rel_error": error_of(out), "notes": notes})

    if "tsvd" in which:
        add("tsvd", "tensorfact", lambda: tfa.tubal.svd(xj), sync_jax,
            lambda t: tsvd_error(x64, t.u, t.s, t.v), "jax real FFT, n3//2+1 slice SVDs")
        add("tsvd", "numpy rfft + batched svd", lambda: numpy_tsvd_half(x), sync_nothing,
            lambda f: tsvd_error(x64, *f), "n3//2+1 slice SVDs")
        if args.numpy_full:
            add("tsvd", "numpy fft + batched svd (all n3)", lambda: numpy_tsvd_full(x),
                sync_nothing, lambda f: tsvd_error_fourier(x64, *f[0]),
                "n3 slice SVDs, no symmetry")
        if use_torch:
            xt = torch.tensor(x, device=dev)
            add("tsvd", f"torch rfft + batched svd ({dev})", lambda: torch_tsvd(xt), sync_torch,
                lambda f: tsvd_error(x64, *f), "n3//2+1 slice SVDs")
    if "tprod" in which:
        ref = numpy_tprod_half(a.astype(np.float64), b.astype(np.float64))
        add("tprod", "tensorfact", lambda: tfa.tubal.product(aj, bj), sync_jax,
            lambda c: rel_error(ref, c), "jax rfft + matmul (HIGHEST) + irfft")
        add("tprod", "numpy rfft + matmul", lambda: numpy_tprod_half(a, b), sync_nothing,
            lambda c: rel_error(ref, c))
        if args.numpy_full:
            add("tprod", "numpy fft + matmul (all n3)", lambda: numpy_tprod_full(a, b),
                sync_nothing, lambda c: rel_error(ref, c))
        if use_torch:
            at, bt = torch.tensor(a, device=dev), torch.tensor(b, device=dev)
            add("tprod", f"torch rfft + matmul ({dev})", lambda: torch_tprod(at, bt), sync_torch,
                lambda c: rel_error(ref, c))

    base = {r["work"]: r["median_ms"] for r in rows if r["backend"] == "tensorfact"}
    for r in rows:
        r["ratio"] = r["median_ms"] / base[r["work"]]

    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    env = {
        "tensorfact": getattr(tfa, "__version__", "?"), "jax": jax.__version__,
        "device": str(jax.devices()[0].device_kind), "numpy": np.__version__,
        "torch": getattr(torch, "__version__", None), "torch_device": dev if use_torch else None,
        "python": platform.python_version(), "cpu": cpu_name(), "cores": ncpu,
        "load_average": os.getloadavg(), "shape": shape, "repeats": args.repeats,
        "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "unset"),
    }
    print(f"# tensorfact {env['tensorfact']}, jax {env['jax']} on {env['device']}, numpy "
          f"{env['numpy']}, torch {env['torch'] or 'not installed'}; {env['cpu']}, "
          f"{ncpu} usable cores; load average {env['load_average'][0]:.2f}")
    print(f"# {n1}×{n2}×{n3} float32 standard normal; t-SVD of full tubal rank "
          f"{min(n1, n2)}; t-product with a {n2}×{n1}×{n3} tensor; median of {args.repeats}")
    print("| work | backend | median ms | first call s | rel. error | time / tensorfact |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['work']} | {r['backend']} | {r['median_ms']:.2f} | {r['first_s']:.2f} | "
              f"{r['rel_error']:.2e} | {r['ratio']:.2f} |")
    write_json(args.json, {"environment": env, "results": rows})
    return rows


if __name__ == "__main__":
    main()
