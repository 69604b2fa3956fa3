"""Times tensorfact's CP-ALS, Tucker (HOOI) and MTTKRP against the anchors, side by side.

Protocol (shared/BENCHMARKS.md):

* One process, one data tensor (float32; standard normal, or a planted low-rank CP tensor plus
  Gaussian noise with ``--data lowrank``), the same rank(s), iteration count and initialisation on
  every side: ``init="svd"`` (``--init random`` to compare with random starts) and ``tol=0``, so
  each method runs exactly ``--n-iter`` sweeps.

    - tensorfact: ``tfa.cp(x, R, init="svd", n_iter=it, tol=0)`` and
      ``tfa.tucker(x, ranks, init="svd", n_iter=it, tol=0)``, at full float32 precision (their
      default ``precision="highest"``), called as a user would call them.
    - TensorLy, NumPy backend (unless ``--no-numpy``):
      ``parafac(x, R, init="svd", n_iter_max=it, tol=0)`` and
      ``tucker(x, ranks, init="svd", n_iter_max=it, tol=0)``.
    - TensorLy, PyTorch backend, when ``torch`` imports: float32 tensors on CUDA when available
      (TF32 switched off, so both sides compute in full float32), else on the CPU.
    - TensorLy, JAX backend, unjitted as a user would call it (``--tensorly-jax``; slow).
    - A plain jitted JAX loop written here (SVD initialisation, einsum MTTKRP and a linear solve
      for CP; HOOI with a full SVD per step for Tucker), unless ``--no-plain-jax``.

* Timing: the first call (compilation for JAX, warm-up otherwise) is timed on its own and reported
  as "compile s"; then the median of ``--repeats`` (at least 5 for quoted figures) calls, each
  waited for with ``jax.block_until_ready`` or ``torch.cuda.synchronize()``. The contenders of a
  work take turns, one call each per round, so that other load on the machine falls on all alike.
  The header prints the load average: on a shared CPU, OpenBLAS's default of one spinning thread
  per core makes NumPy/LAPACK-bound anchors (and the plain JAX loops' LAPACK calls) tens of times
  slower as soon as another process holds a core; ``OPENBLAS_NUM_THREADS=1`` (printed as
  ``blas_threads``) keeps them stable there, at the cost of one core.
* Quality: every entry carries its fit, ``1 - ‖x - x̂‖ / ‖x‖``, with ``x̂`` rebuilt densely in
  float64 on the host with NumPy, so a faster but worse answer cannot pass as a win.
* Ratio: anchor median / tensorfact median for the same work (> 1 means tensorfact is faster).
* MTTKRP: ``tfa.mttkrp`` (jitted) for every mode, time per call (median over ``--repeats`` samples
  of ``--inner`` back-to-back calls) and the effective bandwidth of reading the tensor once
  (``x.nbytes / time``), next to a plain ``jnp.einsum`` MTTKRP; its error against a float64 NumPy
  MTTKRP is in the notes. With PyTorch on CUDA, a device-to-device copy gives the practical memory
  bandwidth (counted as read + write) for the roofline.

Presets: ``--small`` (CPU smoke: 40³, rank 5, 10 iterations), the default CPU line of
BENCHMARKS.md (100³, rank 10, 50 iterations), ``--gpu`` (256³, rank 32, 20 iterations);
``--shape``, ``--rank`` and ``--n-iter`` override any preset.

    python benchmarks/bench_decompositions.py --small
    python benchmarks/bench_decompositions.py --gpu --tensorly-jax --json out/gpu.json
"""

from __future__ import annotations

import functools
import string

import numpy as np

import jax
import jax.numpy as jnp

from _harness import (TFA, Contenders, Side, add_anchor_flags, add_output_flags, apply_preset,
                      check_positive, choices, cp_to_dense, fit_assessor, ints, mttkrp_host,
                      parser, planted_cp, rel_error, run_entries, sync_jax, sync_torch,
                      tucker_to_dense)

import tensorly as tl
from tensorly.decomposition import parafac as tl_parafac
from tensorly.decomposition import tucker as tl_tucker

import tensorfact as tfa

try:  # the PyTorch anchor is optional
    import torch
except ImportError:  # pragma: no cover - depends on the environment
    torch = None

PRESETS = {
    "small": dict(shape=(40, 40, 40), rank=5, n_iter=10),
    "cpu": dict(shape=(100, 100, 100), rank=10, n_iter=50),
    "gpu": dict(shape=(256, 256, 256), rank=32, n_iter=20),
}
WORKS = ("cp", "tucker", "mttkrp")


# ----------------------------------------------------------------------------------------------
# data


def make_data(shape, rank, kind: str, noise: float, seed: int) -> np.ndarray:
    """A float32 tensor: standard normal, or a planted rank-``rank`` CP tensor with entries of
    order one plus Gaussian noise of relative norm ``noise``."""
    if kind == "normal":
        return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    return planted_cp(shape, rank, noise, seed)


# ----------------------------------------------------------------------------------------------
# plain jitted JAX reference loops (what a user could write in a page)


_HIGHEST = jax.lax.Precision.HIGHEST


def _leading_left(matrix, r):
    u, _, _ = jnp.linalg.svd(matrix, full_matrices=False)
    return u[:, :r]


def _unfold(x, mode):
    return jnp.moveaxis(x, mode, 0).reshape(x.shape[mode], -1)


@functools.partial(jax.jit, static_argnames=("rank", "n_iter", "init"))
def plain_cp_als(x, key, *, rank, n_iter, init="svd"):
    """CP-ALS: SVD initialisation (random columns past a mode's size) or standard normal
    factors, then einsum MTTKRPs and linear solves."""
    letters = string.ascii_lowercase[:x.ndim]
    factors = []
    for mode, key_n in zip(range(x.ndim), jax.random.split(key, x.ndim)):
        if init == "random":
            factors.append(jax.random.normal(key_n, (x.shape[mode], rank), x.dtype))
            continue
        u = _leading_left(_unfold(x, mode), min(rank, x.shape[mode]))
        if rank > x.shape[mode]:
            extra = jax.random.normal(key_n, (x.shape[mode], rank - x.shape[mode]), x.dtype)
            u = jnp.concatenate([u, extra], axis=1)
        factors.append(u)

    def sweep(_, factors):
        factors = list(factors)
        for n in range(x.ndim):
            others = [k for k in range(x.ndim) if k != n]
            spec = f"{letters}," + ",".join(f"{letters[k]}z" for k in others) + f"->{letters[n]}z"
            m = jnp.einsum(spec, x, *[factors[k] for k in others], precision=_HIGHEST)
            gram = functools.reduce(jnp.multiply, [
                jnp.matmul(factors[k].T, factors[k], precision=_HIGHEST) for k in others])
            factors[n] = jnp.linalg.solve(gram, m.T).T
        return tuple(factors)

    factors = jax.lax.fori_loop(0, n_iter, sweep, tuple(factors))
    return jnp.ones((rank,), x.dtype), factors


@functools.partial(jax.jit, static_argnames=("ranks", "n_iter", "init"))
def plain_hooi(x, key, *, ranks, n_iter, init="svd"):
    """HOOI: HOSVD (or random orthonormal) initialisation, then a full SVD of each projected
    unfolding per step."""
    def project(t, factors, skip):
        for k, u in enumerate(factors):
            if k != skip:
                t = jnp.moveaxis(jnp.tensordot(t, u, axes=(k, 0), precision=_HIGHEST), -1, k)
        return t

    if init == "random":
        factors = tuple(jnp.linalg.qr(jax.random.normal(k, (x.shape[n], r), x.dtype))[0]
                        for n, (k, r) in enumerate(zip(jax.random.split(key, x.ndim), ranks)))
    else:
        factors = tuple(_leading_left(_unfold(x, n), r) for n, r in enumerate(ranks))

    def sweep(_, factors):
        factors = list(factors)
        for n, r in enumerate(ranks):
            factors[n] = _leading_left(_unfold(project(x, factors, n), n), r)
        return tuple(factors)

    factors = jax.lax.fori_loop(0, n_iter, sweep, factors)
    return project(x, factors, None), factors


# ----------------------------------------------------------------------------------------------
# the benchmark


class Bench(Contenders):
    """The data on every backend and the contenders of each requested work."""

    def __init__(self, args):
        super().__init__(args, make_data(args.shape, args.rank, args.data, args.noise,
                                         args.seed))
        self.key = jax.random.key(args.seed)
        if args.tensorly_jax:
            # Importing TensorLy's JAX backend switches on jax_enable_x64 for the whole process,
            # which would change (and recompile) every other JAX contender: import it now and
            # switch the flag back; its own calls run with x64 on, as its users' do.
            x64 = jax.config.jax_enable_x64
            with tl.backend_context("jax"):
                pass
            jax.config.update("jax_enable_x64", x64)

    # -- works: each returns its groups of sides, tensorfact first ------------------------------

    def cp_sides(self):
        a, work = self.args, "cp-als"
        cp_fit = fit_assessor(self.x64, lambda r: cp_to_dense(*r))
        sides = [Side(work, TFA, functools.partial(
            tfa.cp, self.x_jax, a.rank, key=self.key, init=a.init, n_iter=a.n_iter, tol=0),
            sync_jax, assess=cp_fit)]
        for label, name, x, sync in self.tensorly_sides():
            sides.append(Side(work, label, functools.partial(
                tl_parafac, x, a.rank, init=a.init, n_iter_max=a.n_iter, tol=0,
                random_state=a.seed), sync, tensorly_backend=name, assess=cp_fit))
        if not a.no_plain_jax:
            sides.append(Side(work, "plain jitted JAX", functools.partial(
                plain_cp_als, self.x_jax, self.key, rank=a.rank, n_iter=a.n_iter, init=a.init),
                sync_jax, assess=cp_fit, notes="einsum MTTKRP + solve"))
        return [sides]

    def tucker_sides(self):
        a, work = self.args, "tucker"
        ranks = tuple(min(a.rank, n) for n in a.shape)
        tucker_fit = fit_assessor(self.x64, lambda r: tucker_to_dense(*r))
        options = {} if a.subspace_iter is None else dict(subspace_iter=a.subspace_iter)
        sides = [Side(work, TFA, functools.partial(
            tfa.tucker, self.x_jax, ranks, key=self.key, init=a.init, n_iter=a.n_iter, tol=0,
            **options), sync_jax, assess=tucker_fit,
            notes=f"subspace_iter={a.subspace_iter}" if options else "")]
        for label, name, x, sync in self.tensorly_sides():
            sides.append(Side(work, label, functools.partial(
                tl_tucker, x, list(ranks), init=a.init, n_iter_max=a.n_iter, tol=0,
                random_state=a.seed), sync, tensorly_backend=name, assess=tucker_fit))
        if not a.no_plain_jax:
            sides.append(Side(work, "plain jitted JAX", functools.partial(
                plain_hooi, self.x_jax, self.key, ranks=ranks, n_iter=a.n_iter, init=a.init),
                sync_jax, assess=tucker_fit, notes="full SVD per step"))
        return [sides]

    def mttkrp_sides(self):
        """Per mode: tfa.mttkrp and a plain einsum, jitted, with bandwidth and float64 error."""
        a, ndim = self.args, self.x_np.ndim
        keys = jax.random.split(jax.random.fold_in(self.key, 1), ndim)
        factors = [jax.random.normal(k, (n, a.rank), jnp.float32) for k, n in zip(keys, a.shape)]
        letters = string.ascii_lowercase[:ndim]
        groups = []
        for mode in range(ndim):
            others = [k for k in range(ndim) if k != mode]
            spec = (f"{letters}," + ",".join(f"{letters[k]}z" for k in others)
                    + f"->{letters[mode]}z")
            assess = functools.partial(self._mttkrp_quality, factors=factors, mode=mode)
            tfa_fn = jax.jit(functools.partial(tfa.mttkrp, mode=mode))
            einsum_fn = jax.jit(lambda x, fs, spec=spec, others=others: jnp.einsum(
                spec, x, *[fs[k] for k in others], precision=_HIGHEST))
            groups.append([
                Side(f"mttkrp[{mode}]", label, functools.partial(fn, self.x_jax, factors),
                     sync_jax, inner=a.inner, assess=assess)
                for label, fn in ((TFA, tfa_fn), ("jnp.einsum (jitted)", einsum_fn))])
        return groups + self.copy_sides()

    def _mttkrp_quality(self, result, seconds, *, factors, mode):
        reference = mttkrp_host(self.x64, factors, mode)
        err = rel_error(reference, result)
        bandwidth = self.x_np.nbytes / seconds / 1e9
        return dict(extra=dict(read_GBps=bandwidth, rel_err_vs_f64=err),
                    notes=f"{bandwidth:.1f} GB/s read, err {err:.1e}")

    def copy_sides(self):
        """Device-to-device copy with PyTorch on CUDA: the practical memory bandwidth."""
        if self.torch_device != "cuda":
            return []
        n = max(self.x_np.size, 64 * 2**20)  # at least 256 MiB, well past the L2 cache
        src = torch.randn(n, device="cuda", dtype=torch.float32)
        dst = torch.empty_like(src)
        nbytes = src.numel() * src.element_size()

        def assess(_result, seconds):
            bandwidth = 2 * nbytes / seconds / 1e9
            return dict(extra=dict(read_write_GBps=bandwidth, bytes=nbytes),
                        notes=f"{bandwidth:.1f} GB/s read+write ({nbytes / 2**20:.0f} MiB)")

        return [[Side("copy", "torch (cuda)", lambda: dst.copy_(src), sync_torch,
                      inner=self.args.inner, assess=assess)]]


def parse_args(argv=None):
    p = parser("Time tensorfact's CP-ALS, Tucker and MTTKRP against TensorLy (NumPy, PyTorch, "
               "JAX backends) and plain jitted JAX on the same data, with the fit of every "
               "answer. Default preset: the CPU line of BENCHMARKS.md (100^3, rank 10, 50 "
               "iterations).",
               small="40^3, rank 5, 10 iterations",
               gpu="256^3, rank 32 (Tucker ranks 32), 20 iterations")
    p.add_argument("--shape", type=ints("shape", 2),
                   help="tensor shape, e.g. 100,100,100 (overrides the preset's)")
    p.add_argument("--rank", type=int, help="CP rank, Tucker rank per mode (clipped to the mode "
                   "size) and MTTKRP rank (overrides the preset)")
    p.add_argument("--n-iter", type=int, help="iterations of CP-ALS and HOOI, run exactly "
                   "(tol=0 on every side; overrides the preset)")
    p.add_argument("--which", type=choices("--which", WORKS), default=WORKS,
                   help=f"comma list of works among {','.join(WORKS)} (default: all)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed calls after the first; the median is reported (default %(default)s; "
                        "at least 5 to quote)")
    p.add_argument("--inner", type=int, default=10,
                   help="back-to-back calls per timing sample of the MTTKRP and copy rows "
                        "(default %(default)s)")
    p.add_argument("--data", choices=("normal", "lowrank"), default="normal",
                   help="standard normal data (default), or a planted rank-R CP tensor plus noise")
    p.add_argument("--noise", type=float, default=0.1,
                   help="relative noise norm for --data lowrank (default %(default)s)")
    p.add_argument("--init", choices=("svd", "random"), default="svd",
                   help="initialisation on every side; 'random' draws different starting points "
                        "per side (BENCHMARKS.md's GPU anchors were measured with it; default svd)")
    p.add_argument("--subspace-iter", type=int,
                   help="tensorfact Tucker's orthogonal-iteration steps per factor update "
                        "(default: the library's)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the data and of random keys (default %(default)s)")
    p.add_argument("--tensorly-jax", action="store_true",
                   help="also time TensorLy's JAX backend (unjitted; slow)")
    add_anchor_flags(p)
    p.add_argument("--no-plain-jax", action="store_true",
                   help="skip the plain jitted JAX loops")
    add_output_flags(p)
    args = p.parse_args(argv)
    apply_preset(args, PRESETS)
    check_positive(p, args, ("rank", "n_iter", "repeats", "inner", "subspace_iter"))
    return args


def main(argv=None) -> dict:
    """Runs the benchmark, prints the environment and the table; returns everything as a dict."""
    args = parse_args(argv)
    config = dict(preset=args.preset, shape=list(args.shape), rank=args.rank,
                  n_iter=args.n_iter, which=list(args.which), repeats=args.repeats,
                  inner=args.inner, data=args.data, noise=args.noise, seed=args.seed,
                  dtype="float32", init=args.init, tol=0, subspace_iter=args.subspace_iter)
    return run_entries("bench_decompositions.py", argv, args, config, Bench(args).run)


if __name__ == "__main__":
    main()
