"""Shared pieces of the benchmark scripts: import from a checkout, and the timing rule."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time

try:
    import tensorfact  # noqa: F401
except ImportError:  # run from a checkout without installing: use the repository's package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def median_ms(fn, sync, repeats):
    """Runs ``fn`` once (the compiling call), then ``repeats`` times; returns the first output,
    the median of the timed calls in ms, and the first call in s. ``sync(out)`` must block until
    ``out`` is computed (``jax.block_until_ready``, ``torch.cuda.synchronize``)."""
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
