"""Settings shared by the test suite (tests/) and the doctests of the package (tensorfact/):
the environment of the worker processes and a bound on the programs each one keeps."""

import os

# The suite runs one pytest-xdist worker per core (`-n auto`); a BLAS thread pool per worker on
# top would oversubscribe the cores, and OpenBLAS's spinning threads then slow LAPACK calls (in
# NumPy references and in XLA:CPU's decompositions) by orders of magnitude. Set before NumPy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# The suite's time is mostly XLA compiling thousands of small programs, not running them: LLVM's
# optimisation passes are skipped (about 40% off the suite's wall time on 2 cores; results agree
# to the tests' tolerances). Benchmarks and users keep XLA's defaults. Appended, so flags set by
# the caller (a device count, say) survive.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402  (after the environment is set)
import pytest  # noqa: E402


# Every compiled XLA:CPU program keeps its code in memory maps of its own. A worker that compiles
# a few thousand programs passes Linux's default limit of 65,530 maps per process
# (vm.max_map_count), and the next compilation's mmap fails inside LLVM: a segmentation fault that
# takes the worker down, in whichever test happened to be compiling. Dropping JAX's caches frees
# the programs and their maps (measured: 12,664 maps → 996 after test_tt.py).
_MAPS = "/proc/self/maps"
_MAX_MAPS = 52_000  # of 65,530: a single test adds at most a few thousand


def _n_maps() -> int:
    with open(_MAPS, "rb") as f:
        return f.read().count(b"\n")


@pytest.fixture(autouse=True)
def _bounded_compiled_programs():
    yield
    if os.path.exists(_MAPS) and _n_maps() > _MAX_MAPS:
        jax.clear_caches()
