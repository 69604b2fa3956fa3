"""Helpers shared by the test modules."""

import jax
import numpy as np


def x64():
    """A context in which JAX creates float64 arrays (without touching the global config)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # older JAX
    return enable_x64()


def rel(x, y):
    """‖x − y‖ / ‖x‖ in float64 NumPy: an error measure independent of the library."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return float(np.linalg.norm(x - y) / np.linalg.norm(x))


def tt_cores(rng, ms, ns, ranks, dtype=None):
    """Random TT-matrix cores ``(r_{k-1}, m_k, n_k, r_k)`` (outer ranks 1), scaled so the chain's
    values stay of order one; float32 unless ``dtype`` says otherwise."""
    rs = (1,) + tuple(ranks) + (1,)
    return [jax.numpy.asarray(rng.standard_normal((rs[k], m, n, rs[k + 1])) / np.sqrt(rs[k] * m),
                              dtype or np.float32) for k, (m, n) in enumerate(zip(ms, ns))]


def tt_dense(cores):
    """The dense ``M × N`` matrix of TT-matrix cores, in float64 NumPy (from the definition)."""
    w = np.ones((1, 1, 1))
    for g in cores:
        w = np.einsum("ija,amnb->imjnb", w, np.asarray(g, np.float64))
        w = w.reshape(w.shape[0] * w.shape[1], w.shape[2] * w.shape[3], w.shape[4])
    return w[..., 0]


def error_of(fn):
    """``[type name, message]`` of the exception ``fn()`` raises, or None: for the subprocess
    check scripts, which report errors as JSON for the test to assert on."""
    try:
        fn()
    except Exception as err:  # noqa: BLE001 - the test asserts on type and message
        return [type(err).__name__, str(err)]
    return None


def run_on_host_devices(script, marker, n_devices=8, timeout=300, unset=()):
    """Runs ``tests/<script>`` in a subprocess with ``n_devices`` forced CPU devices (and XLA's
    default optimisation, not the suite's: the scripts' tolerances were set with it), without
    the environment variables ``unset``, and returns the JSON object it prints after
    ``marker``."""
    import json
    import os
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}",
               JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    for name in unset:
        env.pop(name, None)
    run = subprocess.run([sys.executable, str(root / "tests" / script)], cwd=root, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0 and marker in run.stdout, run.stderr[-3000:]
    return json.loads(run.stdout.split(marker, 1)[1])
