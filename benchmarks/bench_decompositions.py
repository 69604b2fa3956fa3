"""Times tensorfact's CP-ALS, Tucker (HOOI) and MTTKRP against the anchors, side by side.

Protocol (shared/BENCHMARKS.md):

* One process, one data tensor (float32; standard normal, or a planted low-rank CP tensor plus
  Gaussian noise with ``--data lowrank``), the same rank(s), iteration count and initialisation on
  every side: ``init="svd"`` (``--init random`` to compare with random starts) and ``tol=0``, so
  each method runs exactly ``--n-iter`` sweeps.

    - tensorfact: ``tfa.cp(x, R, init="svd", n_iter=it, tol=0)`` and
      ``tfa.tucker(x, ranks, init="svd", n_iter=it, tol=0)``, at full float32 precision (the
      default ``precision=None`` means ``HIGHEST``), called as a user would call them.
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

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import statistics
import string
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import numpy as np

import jax
import jax.numpy as jnp

import tensorly as tl
from tensorly.decomposition import parafac as tl_parafac
from tensorly.decomposition import tucker as tl_tucker
from tensorly.cp_tensor import CPTensor as _TLCPTensor
from tensorly.tucker_tensor import TuckerTensor as _TLTuckerTensor

try:
    import tensorfact as tfa
except ImportError:  # run from a checkout without installing: use the repository's package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
_TENSORLY_TYPES = (_TLCPTensor, _TLTuckerTensor)
TFA = "tensorfact"


# ----------------------------------------------------------------------------------------------
# results


@dataclass
class Entry:
    """One timed row of the table."""

    work: str
    backend: str
    median_ms: float
    compile_s: float
    fit: Optional[float] = None
    ratio: Optional[float] = None  # anchor median / tensorfact median for the same work
    times_ms: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    notes: str = ""


# ----------------------------------------------------------------------------------------------
# timing


def _sync_nothing(_result):
    return None


def _sync_jax(result):
    if isinstance(result, _TENSORLY_TYPES):  # not pytrees: wait on their arrays
        result = tuple(result)
    jax.block_until_ready(jax.tree_util.tree_leaves(result))


def _sync_torch(_result):
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class Side:
    """One contender for one work: ``fn()`` computes the answer, ``sync(result)`` waits for it.

    ``tensorly_backend`` names the TensorLy backend to call ``fn`` under; ``inner`` calls are
    made back to back per timing sample (for sub-millisecond work); ``assess(result, seconds)``
    returns the entry fields that judge the answer (``fit``, ``extra``, ``notes``).
    """

    work: str
    backend: str
    fn: Callable[[], Any]
    sync: Callable[[Any], None]
    tensorly_backend: Optional[str] = None
    inner: int = 1
    assess: Optional[Callable[[Any, float], dict]] = None
    notes: str = ""

    def sample(self, calls: int):
        """Seconds per call over ``calls`` back-to-back calls, and the last result."""
        with contextlib.ExitStack() as context:
            if self.tensorly_backend:
                context.enter_context(tl.backend_context(self.tensorly_backend))
            if self.tensorly_backend == "jax":  # as TensorLy's JAX backend sets it for its users
                context.enter_context(jax.enable_x64(True))
            start = time.perf_counter()
            for _ in range(calls):
                result = self.fn()
            self.sync(result)
            return (time.perf_counter() - start) / calls, result


def time_sides(sides, repeats: int, log=lambda message: None):
    """Times every side: the first (compiling or warm-up) call on its own, then ``repeats``
    rounds in which each side runs once, in turn, so that load from elsewhere on the machine
    falls on all of them alike. Returns one :class:`Entry` per side, with the median."""
    firsts, results = [], []
    for side in sides:
        log(f"  {side.work:<10} {side.backend} ...")
        seconds, result = side.sample(1)
        firsts.append(seconds)
        results.append(result)
    samples = [[] for _ in sides]
    for _ in range(repeats):
        for k, side in enumerate(sides):
            seconds, results[k] = side.sample(side.inner)
            samples[k].append(seconds)
    entries = []
    for side, first, times, result in zip(sides, firsts, samples, results):
        median = statistics.median(times)
        entry = Entry(side.work, side.backend, 1e3 * median, first,
                      times_ms=[1e3 * t for t in times], notes=side.notes)
        for name, value in (side.assess(result, median) if side.assess else {}).items():
            setattr(entry, name, value)
        entries.append(entry)
    return entries


# ----------------------------------------------------------------------------------------------
# data and quality, on the host in float64


def make_data(shape, rank, kind: str, noise: float, seed: int) -> np.ndarray:
    """A float32 tensor: standard normal, or a planted rank-``rank`` CP tensor with entries of
    order one plus Gaussian noise of relative norm ``noise``."""
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.standard_normal(shape, dtype=np.float32)
    factors = [rng.standard_normal((n, rank)) for n in shape]
    clean = cp_to_dense(np.ones(rank) / math.sqrt(rank), factors)
    e = rng.standard_normal(shape)
    x = clean + noise * np.linalg.norm(clean) / np.linalg.norm(e) * e
    return x.astype(np.float32)


def to_host(a) -> np.ndarray:
    """A JAX, PyTorch or NumPy array as a float64 NumPy array."""
    if torch is not None and isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def khatri_rao_host(mats) -> np.ndarray:
    """Column-wise Kronecker product, last matrix's rows fastest (C-order unfoldings)."""
    out = mats[0]
    for a in mats[1:]:
        out = (out[:, None, :] * a[None, :, :]).reshape(-1, out.shape[1])
    return out


def cp_to_dense(weights, factors) -> np.ndarray:
    weights, factors = to_host(weights), [to_host(a) for a in factors]
    shape = tuple(a.shape[0] for a in factors)
    return ((factors[0] * weights) @ khatri_rao_host(factors[1:]).T).reshape(shape)


def tucker_to_dense(core, factors) -> np.ndarray:
    out = to_host(core)
    for mode, u in enumerate(factors):
        out = np.moveaxis(np.tensordot(to_host(u), out, axes=(1, mode)), 0, mode)
    return out


def fit_of(x64: np.ndarray, approx: np.ndarray) -> float:
    """``1 - ‖x - x̂‖ / ‖x‖`` in float64."""
    return float(1.0 - np.linalg.norm(x64 - approx) / np.linalg.norm(x64))


def mttkrp_host(x64: np.ndarray, factors, mode: int) -> np.ndarray:
    others = [to_host(a) for k, a in enumerate(factors) if k != mode]
    unfolded = np.moveaxis(x64, mode, 0).reshape(x64.shape[mode], -1)
    return unfolded @ khatri_rao_host(others)


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


class Bench:
    """Holds the data on every backend and builds the contenders of each requested work."""

    def __init__(self, args):
        self.args = args
        self.x_np = make_data(args.shape, args.rank, args.data, args.noise, args.seed)
        self.x64 = self.x_np.astype(np.float64)
        self.x_jax = jax.block_until_ready(jnp.asarray(self.x_np))
        self.key = jax.random.key(args.seed)
        self.torch_device = None
        if torch is not None and not args.no_torch:
            self.torch_device = "cuda" if torch.cuda.is_available() else "cpu"
            torch.backends.cuda.matmul.allow_tf32 = False  # full float32, like tensorfact
            torch.backends.cudnn.allow_tf32 = False
            self.x_torch = torch.tensor(self.x_np, dtype=torch.float32, device=self.torch_device)
        if args.tensorly_jax:
            # Importing TensorLy's JAX backend switches on jax_enable_x64 for the whole process,
            # which would change (and recompile) every other JAX contender: import it now and
            # switch the flag back; its own calls run with x64 on, as its users' do.
            x64 = jax.config.jax_enable_x64
            with tl.backend_context("jax"):
                pass
            jax.config.update("jax_enable_x64", x64)

    def _log(self, message):
        if not self.args.quiet:
            print(message, file=sys.stderr, flush=True)

    def _fit(self, dense):
        """An ``assess`` hook: the fit of the answer, rebuilt densely by ``dense``."""
        return lambda result, _seconds: dict(fit=fit_of(self.x64, dense(result)))

    def _tensorly_sides(self):
        """(label, TensorLy backend, tensor, sync) for every TensorLy anchor."""
        sides = [] if self.args.no_numpy else [("tensorly-numpy", "numpy", self.x_np,
                                                 _sync_nothing)]
        if self.torch_device is not None:
            sides.append((f"tensorly-pytorch ({self.torch_device})", "pytorch", self.x_torch,
                          _sync_torch))
        if self.args.tensorly_jax:
            sides.append(("tensorly-jax (unjitted)", "jax", self.x_jax, _sync_jax))
        return sides

    # -- works: each returns its sides, tensorfact first -----------------------------------------

    def cp_sides(self):
        a, work = self.args, "cp-als"
        cp_fit = self._fit(lambda r: cp_to_dense(*r))
        sides = [Side(work, TFA, functools.partial(
            tfa.cp, self.x_jax, a.rank, key=self.key, init=a.init, n_iter=a.n_iter, tol=0),
            _sync_jax, assess=cp_fit)]
        for label, name, x, sync in self._tensorly_sides():
            sides.append(Side(work, label, functools.partial(
                tl_parafac, x, a.rank, init=a.init, n_iter_max=a.n_iter, tol=0,
                random_state=a.seed), sync, tensorly_backend=name, assess=cp_fit))
        if not a.no_plain_jax:
            sides.append(Side(work, "plain jitted JAX", functools.partial(
                plain_cp_als, self.x_jax, self.key, rank=a.rank, n_iter=a.n_iter, init=a.init),
                _sync_jax, assess=cp_fit, notes="einsum MTTKRP + solve"))
        return [sides]

    def tucker_sides(self):
        a, work = self.args, "tucker"
        ranks = tuple(min(a.rank, n) for n in a.shape)
        tucker_fit = self._fit(lambda r: tucker_to_dense(*r))
        options = {} if a.subspace_iter is None else dict(subspace_iter=a.subspace_iter)
        sides = [Side(work, TFA, functools.partial(
            tfa.tucker, self.x_jax, ranks, key=self.key, init=a.init, n_iter=a.n_iter, tol=0,
            **options), _sync_jax, assess=tucker_fit,
            notes=f"subspace_iter={a.subspace_iter}" if options else "")]
        for label, name, x, sync in self._tensorly_sides():
            sides.append(Side(work, label, functools.partial(
                tl_tucker, x, list(ranks), init=a.init, n_iter_max=a.n_iter, tol=0,
                random_state=a.seed), sync, tensorly_backend=name, assess=tucker_fit))
        if not a.no_plain_jax:
            sides.append(Side(work, "plain jitted JAX", functools.partial(
                plain_hooi, self.x_jax, self.key, ranks=ranks, n_iter=a.n_iter, init=a.init),
                _sync_jax, assess=tucker_fit, notes="full SVD per step"))
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
                     _sync_jax, inner=a.inner, assess=assess)
                for label, fn in ((TFA, tfa_fn), ("jnp.einsum (jitted)", einsum_fn))])
        return groups

    def _mttkrp_quality(self, result, seconds, *, factors, mode):
        reference = mttkrp_host(self.x64, factors, mode)
        err = float(np.linalg.norm(to_host(result) - reference) / np.linalg.norm(reference))
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

        return [[Side("copy", "torch (cuda)", lambda: dst.copy_(src), _sync_torch,
                      inner=self.args.inner, assess=assess)]]

    def run(self):
        entries = []
        for work in self.args.which:
            self._log(f"{work}:")
            groups = getattr(self, f"{work}_sides")()
            if work == "mttkrp":
                groups += self.copy_sides()
            for sides in groups:
                entries += time_sides(sides, self.args.repeats, self._log)
        set_ratios(entries)
        return entries


def set_ratios(entries):
    """Anchor median / tensorfact median per work; MTTKRP bandwidth as a fraction of the copy's."""
    base = {e.work: e.median_ms for e in entries if e.backend == TFA}
    for e in entries:
        if e.work in base and base[e.work] > 0:
            e.ratio = e.median_ms / base[e.work]
    copy = [e for e in entries if e.work == "copy"]
    if copy:
        for e in entries:
            if e.work.startswith("mttkrp"):
                e.extra["of_copy_bw"] = e.extra["read_GBps"] / copy[0].extra["read_write_GBps"]
                e.notes += f", {100 * e.extra['of_copy_bw']:.0f}% of copy"


# ----------------------------------------------------------------------------------------------
# reporting


_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def environment() -> dict:
    dev = jax.devices()[0]
    info = dict(
        python=platform.python_version(), machine=platform.machine(), cpus=os.cpu_count(),
        jax=jax.__version__, jaxlib=getattr(jax.lib, "__version__", None) or _version("jaxlib"),
        jax_device=f"{dev.platform}: {getattr(dev, 'device_kind', str(dev))}",
        jax_devices=len(jax.devices()), tensorly=tl.__version__, numpy=np.__version__,
        tensorfact=tfa.__version__, torch=None, torch_device=None,
        load_average_1min=round(os.getloadavg()[0], 2),  # other work on the machine skews times
        blas_threads=" ".join(f"{v}={os.environ[v]}" for v in _THREAD_VARS if v in os.environ)
        or "library default",
    )
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_device"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                                else "cpu")
    return info


class OtherLoad:
    """Average number of cores that other processes kept busy between ``start()`` and
    ``stop()``: busy time of the whole machine (Linux ``/proc/stat``) minus this process's own
    CPU time, per second of wall time. ``None`` where ``/proc/stat`` is missing."""

    def _busy_s(self):
        try:
            with open("/proc/stat") as f:
                ticks = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    def _own_s(self):
        t = os.times()
        return t.user + t.system

    def start(self):
        self._t0 = (time.perf_counter(), self._busy_s(), self._own_s())
        return self

    def stop(self):
        wall0, busy0, own0 = self._t0
        busy1 = self._busy_s()
        if busy0 is None or busy1 is None:
            return None
        others = (busy1 - busy0) - (self._own_s() - own0)
        return round(max(others, 0.0) / max(time.perf_counter() - wall0, 1e-9), 2)


def _version(package):
    try:
        from importlib.metadata import version
        return version(package)
    except Exception:  # noqa: BLE001 - informational only
        return None


def _fmt(value, spec, empty="-"):
    return empty if value is None else format(value, spec)


def format_table(entries) -> str:
    header = ("work", "backend", "median ms", "compile s", "fit", "anchor/tfa", "notes")
    rows = [(e.work, e.backend, _fmt(e.median_ms, ".3f"), _fmt(e.compile_s, ".2f"),
             _fmt(e.fit, ".6f"), _fmt(e.ratio, ".2f"), e.notes) for e in entries]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule] + [line(r) for r in rows])


# ----------------------------------------------------------------------------------------------
# command line


def _shape(text):
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be comma-separated integers, got {text!r}")
    if len(shape) < 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"shape needs at least 2 positive sizes, got {text!r}")
    return shape


def _which(text):
    works = tuple(w.strip() for w in text.split(",") if w.strip())
    bad = [w for w in works if w not in WORKS]
    if bad or not works:
        raise argparse.ArgumentTypeError(f"--which takes a comma list of {', '.join(WORKS)}; "
                                         f"got {text!r}")
    return works


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Time tensorfact's CP-ALS, Tucker and MTTKRP against TensorLy (NumPy, "
                    "PyTorch, JAX backends) and plain jitted JAX on the same data, with the fit "
                    "of every answer. Default preset: the CPU line of BENCHMARKS.md (100^3, rank "
                    "10, 50 iterations).")
    preset = p.add_mutually_exclusive_group()
    preset.add_argument("--small", dest="preset", action="store_const", const="small",
                        help="CPU smoke preset: 40^3, rank 5, 10 iterations")
    preset.add_argument("--gpu", dest="preset", action="store_const", const="gpu",
                        help="GPU preset: 256^3, rank 32 (Tucker ranks 32), 20 iterations")
    p.set_defaults(preset="cpu")
    p.add_argument("--shape", type=_shape,
                   help="tensor shape, e.g. 100,100,100 (overrides the preset's)")
    p.add_argument("--rank", type=int, help="CP rank, Tucker rank per mode (clipped to the mode "
                   "size) and MTTKRP rank (overrides the preset)")
    p.add_argument("--n-iter", type=int, help="iterations of CP-ALS and HOOI, run exactly "
                   "(tol=0 on every side; overrides the preset)")
    p.add_argument("--which", type=_which, default=WORKS,
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
    p.add_argument("--no-numpy", action="store_true",
                   help="skip the TensorLy NumPy anchor (seconds per call at the GPU sizes)")
    p.add_argument("--no-torch", action="store_true",
                   help="skip the TensorLy PyTorch anchor even when torch is importable")
    p.add_argument("--no-plain-jax", action="store_true",
                   help="skip the plain jitted JAX loops")
    p.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    for name, value in PRESETS[args.preset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("rank", "n_iter", "repeats", "inner", "subspace_iter"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer")
    return args


def main(argv=None) -> dict:
    """Runs the benchmark, prints the environment and the table; returns everything as a dict."""
    args = parse_args(argv)
    env = environment()
    config = dict(preset=args.preset, shape=list(args.shape), rank=args.rank,
                  n_iter=args.n_iter, which=list(args.which), repeats=args.repeats,
                  inner=args.inner, data=args.data, noise=args.noise, seed=args.seed,
                  dtype="float32", init=args.init, tol=0, subspace_iter=args.subspace_iter)
    print("# " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print("# " + ", ".join(f"{k} {v}" for k, v in config.items()))
    other_load = OtherLoad().start()
    entries = Bench(args).run()
    env["other_processes_cores"] = other_load.stop()
    env["jax_enable_x64_after_run"] = bool(jax.config.jax_enable_x64)
    env["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    print(format_table(entries))
    print(f"# other processes kept {env['other_processes_cores']} cores busy on average during "
          f"the run (of {os.cpu_count()}); load average {env['load_average_1min']} at the start, "
          f"{env['load_average_1min_end']} at the end. anchor/tfa > 1: tensorfact is faster")
    command = " ".join(sys.argv if argv is None else ["bench_decompositions.py", *argv])
    out = dict(environment=env, config=config, command=command,
               results=[asdict(e) for e in entries])
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
