"""What every benchmark script shares: running from a checkout, the command line (presets with
one ``--small`` flag, comma-list arguments, ``--json``), the timing rule, contenders that take
turns, float64 references on the host, the environment and the tables.

The protocol (the project's BENCHMARKS.md): one process, the same data and work on every side,
the first (compiling or warm-up) call timed apart, then the median of ``--repeats`` calls, each
waited for; every row carries a fit or an error computed in float64 on the host, so that a
faster but worse answer cannot pass as a win. ``--small`` is the CPU smoke preset of every
script, which the test suite runs.

Nothing here imports TensorLy or PyTorch: the scripts that compare against them import them,
and the helpers below find them in ``sys.modules``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

try:
    import tensorfact  # noqa: F401
except ImportError:  # run from a checkout without installing: use the repository's package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import numpy as np

import tensorfact as tfa

TFA = "tensorfact"


# ----------------------------------------------------------------------------------------------
# command line


def parser(description: str, *, small: str, gpu: Optional[str] = None,
           default: str = "cpu") -> argparse.ArgumentParser:
    """An argument parser with the presets every script shares: ``--small`` (the CPU smoke
    preset, described by ``small``) and, where the script has one, ``--gpu``; they set
    ``args.preset`` (``default`` without either)."""
    p = argparse.ArgumentParser(description=description)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--small", dest="preset", action="store_const", const="small",
                       help=f"CPU smoke preset: {small}")
    if gpu is not None:
        group.add_argument("--gpu", dest="preset", action="store_const", const="gpu",
                           help=f"GPU preset: {gpu}")
    p.set_defaults(preset=default)
    return p


def add_output_flags(p: argparse.ArgumentParser) -> None:
    """``--json PATH`` (every number, also to a file) and ``--quiet`` (no progress lines)."""
    p.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def add_anchor_flags(p: argparse.ArgumentParser) -> None:
    """``--no-numpy`` and ``--no-torch``: skip TensorLy's NumPy or PyTorch anchor."""
    p.add_argument("--no-numpy", action="store_true",
                   help="skip the TensorLy NumPy anchor (seconds per call at the GPU sizes)")
    p.add_argument("--no-torch", action="store_true",
                   help="skip the TensorLy PyTorch anchor even when torch is importable")


def apply_preset(args, presets: dict) -> None:
    """Fills every argument left at ``None`` from ``presets[args.preset]``."""
    for name, value in presets[args.preset].items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


def check_positive(p: argparse.ArgumentParser, args, names) -> None:
    """``p.error`` unless every argument in ``names`` (that is set) is a positive integer."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer")


def ints(name: str, min_len: int = 1) -> Callable[[str], tuple]:
    """An argparse type: comma- (or ``x``-) separated positive ints, at least ``min_len``."""
    def parse(text):
        try:
            values = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be comma-separated integers, got "
                                             f"{text!r}") from None
        if len(values) < min_len or min(values) < 1:
            raise argparse.ArgumentTypeError(f"{name} needs at least {min_len} positive sizes, "
                                             f"got {text!r}")
        return values
    return parse


def choices(name: str, allowed) -> Callable[[str], tuple]:
    """An argparse type: a comma list of items among ``allowed``."""
    def parse(text):
        items = tuple(w.strip() for w in text.split(",") if w.strip())
        if not items or any(w not in allowed for w in items):
            raise argparse.ArgumentTypeError(f"{name} takes a comma list of "
                                             f"{', '.join(allowed)}; got {text!r}")
        return items
    return parse


def write_json(path: Optional[str], obj) -> None:
    """Writes ``obj`` to ``path`` (creating its folder) when a path is given."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(obj, f, indent=1, default=str)


def command_line(script: str, argv) -> str:
    """The command that ran: ``sys.argv``, or ``script`` and ``argv`` when called as a
    function."""
    return " ".join(sys.argv if argv is None else [script, *argv])


# ----------------------------------------------------------------------------------------------
# timing


def median_ms(fn, sync, repeats):
    """Runs ``fn`` once (the compiling call), then ``repeats`` times; returns the first output,
    the median of the timed calls in ms, and the first call in s. ``sync(out)`` must block until
    ``out`` is computed (:func:`sync_jax`, :func:`sync_torch`, :func:`sync_nothing`)."""
    start = time.perf_counter()
    out = fn()
    sync(out)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - start)
    return out, 1e3 * statistics.median(times), first


def sync_nothing(_result):
    """For host (NumPy) results: nothing runs asynchronously."""
    return None


def sync_jax(result):
    """Waits for every array of ``result`` (a pytree, or a TensorLy CP/Tucker tensor)."""
    if type(result).__module__.startswith("tensorly"):
        result = tuple(result)  # TensorLy's tensors are not pytrees: wait on their arrays
    jax.block_until_ready(jax.tree_util.tree_leaves(result))


def sync_torch(_result):
    """Waits for the CUDA stream (nothing on the CPU)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


def torch_device(enabled: bool = True, *, tf32: bool = False) -> Optional[str]:
    """``"cuda"`` or ``"cpu"`` where PyTorch imports (and ``enabled``), else None. TF32 stays
    off unless ``tf32``, so that torch computes in full float32 as tensorfact does."""
    if not enabled:
        return None
    try:
        import torch
    except ImportError:
        return None
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Entry:
    """One timed row of a table of contenders (:func:`time_sides`)."""

    work: str
    backend: str
    median_ms: float
    compile_s: float
    fit: Optional[float] = None
    ratio: Optional[float] = None  # anchor median / tensorfact median for the same work
    times_ms: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    notes: str = ""


@dataclass
class Side:
    """One contender for one work: ``fn()`` computes the answer, ``sync(result)`` waits for it.

    ``tensorly_backend`` names the TensorLy backend to call ``fn`` under
    (:func:`tensorly_backend`); ``inner`` calls are made back to back per timing sample (for
    sub-millisecond work); ``assess(result, seconds)`` returns the entry fields that judge the
    answer (``fit``, ``extra``, ``notes``).
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
        with (tensorly_backend(self.tensorly_backend) if self.tensorly_backend
              else contextlib.nullcontext()):
            start = time.perf_counter()
            for _ in range(calls):
                result = self.fn()
            self.sync(result)
            return (time.perf_counter() - start) / calls, result


@contextlib.contextmanager
def tensorly_backend(name: str):
    """TensorLy's backend ``name`` for the duration (with x64 on for its JAX backend, as that
    backend sets it for its users)."""
    import tensorly as tl

    with tl.backend_context(name), (jax.enable_x64(True) if name == "jax"
                                     else contextlib.nullcontext()):
        yield


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


class Contenders:
    """The works of a script whose tables are contenders taking turns (:class:`Side`), on one
    float32 data set held on every backend (``x_np``, ``x64``, ``x_jax`` and, where PyTorch
    imports and ``args.no_torch`` is not set, ``x_torch``).

    A subclass defines ``<work>_sides()`` for each work named in ``args.which``, returning
    groups of sides (tensorfact first in each); :meth:`run` times every group and sets the
    ratios.
    """

    def __init__(self, args, x_np: np.ndarray):
        self.args = args
        self.x_np = x_np
        self.x64 = x_np.astype(np.float64)
        self.x_jax = jax.block_until_ready(jax.numpy.asarray(x_np))
        self.torch_device = torch_device(not args.no_torch)
        if self.torch_device is not None:
            import torch

            self.x_torch = torch.tensor(x_np, dtype=torch.float32, device=self.torch_device)

    def log(self, message):
        """A progress line on stderr, unless ``args.quiet``."""
        if not self.args.quiet:
            print(message, file=sys.stderr, flush=True)

    def tensorly_sides(self):
        """(label, TensorLy backend, tensor, sync) for every TensorLy anchor: NumPy (unless
        ``args.no_numpy``), PyTorch (where it imports) and JAX (with ``args.tensorly_jax``)."""
        sides = [] if self.args.no_numpy else [("tensorly-numpy", "numpy", self.x_np,
                                                 sync_nothing)]
        if self.torch_device is not None:
            sides.append((f"tensorly-pytorch ({self.torch_device})", "pytorch", self.x_torch,
                          sync_torch))
        if getattr(self.args, "tensorly_jax", False):
            sides.append(("tensorly-jax (unjitted)", "jax", self.x_jax, sync_jax))
        return sides

    def run(self) -> list:
        """Times the groups of every work in ``args.which``; returns the :class:`Entry` rows."""
        entries = []
        for work in self.args.which:
            self.log(f"{work}:")
            for sides in getattr(self, f"{work}_sides")():
                entries += time_sides(sides, self.args.repeats, self.log)
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
# float64 references on the host


def to_host(a) -> np.ndarray:
    """A JAX, PyTorch or NumPy array as a float64 NumPy array."""
    if hasattr(a, "detach"):  # a torch tensor
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def fit_of(x64: np.ndarray, approx) -> float:
    """``1 − ‖x − x̂‖ / ‖x‖`` in float64."""
    return float(1.0 - np.linalg.norm(x64 - to_host(approx)) / np.linalg.norm(x64))


def rel_error(reference: np.ndarray, approx) -> float:
    """``‖x̂ − x‖ / ‖x‖`` in float64."""
    return float(np.linalg.norm(to_host(approx) - reference) / np.linalg.norm(reference))


def khatri_rao_host(mats) -> np.ndarray:
    """Column-wise Kronecker product, last matrix's rows fastest (C-order unfoldings)."""
    out = mats[0]
    for a in mats[1:]:
        out = (out[:, None, :] * a[None, :, :]).reshape(-1, out.shape[1])
    return out


def cp_to_dense(weights, factors) -> np.ndarray:
    """``[[w; A_0, ..., A_{N−1}]]`` (any backend) as a dense float64 array."""
    weights, factors = to_host(weights), [to_host(a) for a in factors]
    shape = tuple(a.shape[0] for a in factors)
    return ((factors[0] * weights) @ khatri_rao_host(factors[1:]).T).reshape(shape)


def tucker_to_dense(core, factors) -> np.ndarray:
    """``G ×_0 U_0 ×_1 U_1 ⋯`` (any backend) as a dense float64 array."""
    out = to_host(core)
    for mode, u in enumerate(factors):
        out = np.moveaxis(np.tensordot(to_host(u), out, axes=(1, mode)), 0, mode)
    return out


def tt_to_dense(cores) -> np.ndarray:
    """Contracts TT cores ``(r, n, r')`` (any backend) into a dense float64 array."""
    cores = [to_host(g) for g in cores]
    out = np.ones((1, 1))
    for g in cores:
        out = (out @ g.reshape(g.shape[0], -1)).reshape(-1, g.shape[-1])
    return out.reshape(tuple(g.shape[1] for g in cores))


def planted_cp(shape, rank: int, noise: float, seed: int) -> np.ndarray:
    """A float32 tensor: a rank-``rank`` CP tensor (standard normal factors, weights
    ``1/√rank``, so entries are of order one) plus Gaussian noise of relative norm ``noise``."""
    rng = np.random.default_rng(seed)
    factors = [rng.standard_normal((n, rank)) for n in shape]
    clean = cp_to_dense(np.ones(rank) / np.sqrt(rank), factors)
    e = rng.standard_normal(shape)
    return (clean + noise * np.linalg.norm(clean) / np.linalg.norm(e) * e).astype(np.float32)


def mttkrp_host(x64: np.ndarray, factors, mode: int) -> np.ndarray:
    """``unfold(x, n) · khatri_rao(A_k, k ≠ n)`` in float64."""
    others = [to_host(a) for k, a in enumerate(factors) if k != mode]
    unfolded = np.moveaxis(x64, mode, 0).reshape(x64.shape[mode], -1)
    return unfolded @ khatri_rao_host(others)


# ----------------------------------------------------------------------------------------------
# environment


_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def cpu_name():
    """The processor's model name (from /proc/cpuinfo on Linux), for the tables' headers."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version_of(package):
    """The installed version of ``package``, or None."""
    try:
        from importlib.metadata import version
        return version(package)
    except Exception:  # noqa: BLE001 - informational only
        return None


def environment() -> dict:
    """The machine, the versions and the load, for the header of a table and its JSON."""
    dev = jax.devices()[0]
    torch = sys.modules.get("torch")
    tensorly = sys.modules.get("tensorly")
    info = dict(
        python=platform.python_version(), machine=platform.machine(), cpus=os.cpu_count(),
        jax=jax.__version__, jaxlib=getattr(jax.lib, "__version__", None) or version_of("jaxlib"),
        jax_device=f"{dev.platform}: {getattr(dev, 'device_kind', str(dev))}",
        jax_devices=len(jax.devices()),
        tensorly=getattr(tensorly, "__version__", None), numpy=np.__version__,
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
    CPU time, per second of wall time. ``None`` where ``/proc/stat`` is missing. On a shared
    CPU, OpenBLAS's and torch's spinning threads slow down many times while another process
    holds a core, so the tables carry this figure."""

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


# ----------------------------------------------------------------------------------------------
# tables and the run of a table of contenders


def _fmt(value, spec, empty="-"):
    return empty if value is None else format(value, spec)


def format_table(entries) -> str:
    """The :class:`Entry` rows as an aligned Markdown table."""
    header = ("work", "backend", "median ms", "compile s", "fit", "anchor/tfa", "notes")
    rows = [(e.work, e.backend, _fmt(e.median_ms, ".3f"), _fmt(e.compile_s, ".2f"),
             _fmt(e.fit, ".6f"), _fmt(e.ratio, ".2f"), e.notes) for e in entries]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]

    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule] + [line(r) for r in rows])


def markdown_table(header, rows) -> str:
    """``header`` and ``rows`` (already formatted cells) as a Markdown table, ``|---|`` rule."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def run_entries(script: str, argv, args, config: dict, run: Callable[[], list]) -> dict:
    """Prints the environment and ``config``, runs ``run()`` (a list of :class:`Entry`) while
    measuring the load from other processes, prints the table and the footer, writes
    ``args.json``; returns everything as a dict."""
    env = environment()
    print("# " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print("# " + ", ".join(f"{k} {v}" for k, v in config.items()))
    other_load = OtherLoad().start()
    entries = run()
    env["other_processes_cores"] = other_load.stop()
    env["jax_enable_x64_after_run"] = bool(jax.config.jax_enable_x64)
    env["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    print(format_table(entries))
    print(f"# other processes kept {env['other_processes_cores']} cores busy on average during "
          f"the run (of {os.cpu_count()}); load average {env['load_average_1min']} at the start, "
          f"{env['load_average_1min_end']} at the end. anchor/tfa > 1: tensorfact is faster")
    out = dict(environment=env, config=config, command=command_line(script, argv),
               results=[asdict(e) for e in entries])
    write_json(args.json, out)
    return out


def fit_assessor(x64: np.ndarray, dense: Callable[[Any], np.ndarray]):
    """An ``assess`` hook of a :class:`Side`: the fit of the answer, rebuilt densely by
    ``dense``."""
    return lambda result, _seconds: dict(fit=fit_of(x64, dense(result)))

