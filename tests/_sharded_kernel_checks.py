"""Sharded CP-ALS with the MTTKRP kernel per device, run in a subprocess by
test_sharded_kernels.py with ``XLA_FLAGS=--xla_force_host_platform_device_count=8
JAX_PLATFORMS=cpu`` (the forced device count must not leak into the rest of the suite).

Measures, on a 2-D and a 1-D mesh and a tensor whose blocks are no multiple of any tile size:
``tfa.cp(x_sharded, impl="pallas")`` (the "gpu" kernel in Pallas's generic interpret mode,
and the "tpu" kernel in TPU interpret mode) against ``impl="xla"`` on the same layout and the
single-device fit; ``impl="auto"``'s choice on a CPU and its debug log; bad ``impl`` errors;
and whether the sharded programs with the compiled kernels lower for a GPU and a TPU. Prints
one JSON object after a marker line; nothing is judged here.
"""

from __future__ import annotations

import functools
import json
import logging
import os

import jax
import numpy as np

import tensorfact as tfa
from tensorfact import sharding
from tensorfact.decomposition import _sharded
from tensorfact.kernels import _pallas, _varying

from _helpers import error_of

MARKER = "SHARDED-KERNEL-CHECKS-JSON"
RANK, N_ITER = 3, 3

# (name, tensor shape, mesh shape, mesh axis names, spec); blocks (3, 6, 10) and (5, 6, 2, 3):
# no side a multiple of a tile. The 4-way tensor split on a middle mode makes the kernel group
# the local rows of the modes on both sides into Khatri-Rao products
LAYOUTS = [
    ("2x4_modes01", (6, 24, 10), (2, 4), ("a", "b"), ("a", "b")),
    ("8_mode2_4way", (5, 6, 16, 3), (8,), ("data",), (None, None, "data")),
]

_RESOLVE_LAUNCH = _pallas.resolve_launch


def default_target(target):
    """Makes ``target`` the kernels' default launch (interpret mode, as off its hardware):
    what ``impl="pallas"`` picks on a machine of that kind. ``tfa.cp`` has no target argument,
    so the check swaps the one function both the kernel and the sharded program consult, and
    drops JAX's caches so that the programs are traced again."""
    def resolve_launch(t=None, interpret=None):
        return _RESOLVE_LAUNCH(target if t is None else t, interpret)

    _pallas.resolve_launch = resolve_launch
    jax.clear_caches()


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def compare(got, ref):
    """Largest relative difference over weights, factors, reconstruction and error history."""
    (t, info), (t_ref, info_ref) = got, ref
    diffs = [rel(t.weights, t_ref.weights)] + [rel(a, b) for a, b in zip(t.factors,
                                                                          t_ref.factors)]
    diffs.append(rel(t.to_dense(), t_ref.to_dense()))
    return {"max_rel": max(diffs),
            "errors": [float(e) for e in info.errors],
            "errors_ref": [float(e) for e in info_ref.errors],
            "replicated": all(leaf.sharding.is_fully_replicated
                              for leaf in jax.tree_util.tree_leaves(t))}


def fit(x, impl, **kw):
    return tfa.cp(x, RANK, n_iter=N_ITER, tol=0, impl=impl, return_info=True, **kw)


def data(shape):
    x = tfa.random_cp(jax.random.key(0), shape, rank=RANK).to_dense()
    return x + 0.05 * jax.random.normal(jax.random.key(1), shape)


def lowering(xs, target):
    """Whether the sharded CP program with the compiled kernel lowers for ``target``'s
    platform under shard_map's varying-axes check, and which custom call it holds."""
    platform, call = {"gpu": ("cuda", "__gpu$xla.gpu.triton"),
                      "tpu": ("tpu", "tpu_custom_call")}[target]
    _pallas.resolve_launch = lambda t=None, interpret=None: _pallas.Launch(target, False)
    jax.clear_caches()
    fn, args, static = _sharded.cp_program(
        xs, None, None, 0.0, 0.0, rank=RANK, n_iter=2, fixed=True, init="svd", nonneg=False,
        normalize=True, precision="highest", return_info=False, impl="pallas")
    checks = [jax.export.DisabledSafetyCheck.custom_call(call)] if target == "gpu" else []
    try:
        text = jax.export.export(jax.jit(functools.partial(fn, **static)),
                                 platforms=(platform,), disabled_checks=checks)(*args)
        text = text.mlir_module()
    except Exception as err:  # noqa: BLE001 - reported, the test asserts
        return {"error": f"{type(err).__name__}: {str(err)[:500]}"}
    return {"custom_calls": text.count(call),
            "check_vma": _varying.checks_varying(_pallas.resolve_launch())}


def auto_choice(xs, xla):
    """``impl="auto"`` on a CPU: the XLA program (its result bit for bit), the reason logged
    under TENSORFACT_DEBUG_DISPATCH=1."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("tensorfact.kernels").addHandler(handler)
    os.environ["TENSORFACT_DEBUG_DISPATCH"] = "1"
    try:
        auto = fit(xs, "auto")
    finally:
        del os.environ["TENSORFACT_DEBUG_DISPATCH"]
        logging.getLogger("tensorfact.kernels").removeHandler(handler)
    same = all(bool((np.asarray(a) == np.asarray(b)).all())
               for a, b in zip(jax.tree_util.tree_leaves(auto), jax.tree_util.tree_leaves(xla)))
    return {"identical_to_xla": same, "log": [r.getMessage() for r in records]}


def auto_on_a_gpu():
    """``impl="auto"`` as a GPU would resolve it once the kernel is measured there: judged on
    one device's block (8 devices on one axis: an eighth of x), not on the whole tensor."""
    mesh = sharding.make_mesh((8,), ("data",))
    on_gpu, measured = _pallas.on_gpu, _pallas.MEASURED_ON_GPU
    _pallas.on_gpu, _pallas.MEASURED_ON_GPU = (lambda: True), frozenset({"mttkrp"})
    try:
        out = {}
        for shape in ((64, 64, 16), (128, 64, 64)):  # both ≥ MIN_ELEMENTS; blocks 8192, 65536
            xs = sharding.shard_tensor(jax.numpy.zeros(shape), mesh, ("data",))
            out[str(shape)] = _sharded.resolve_cp_impl(xs, 8, "auto")
    finally:
        _pallas.on_gpu, _pallas.MEASURED_ON_GPU = on_gpu, measured
    return out


def main():
    out = {"devices": jax.device_count(), "fits": {}, "blocks": {}, "lowering": {}}
    for name, shape, mesh_shape, axis_names, spec in LAYOUTS:
        x = data(shape)
        xs = sharding.shard_tensor(x, sharding.make_mesh(mesh_shape, axis_names), spec)
        out["blocks"][name] = list(xs.addressable_shards[0].data.shape)
        ref = fit(xs, "xla")  # the sharded dimension tree (test_sharding: = one device's fit)
        if name == LAYOUTS[0][0]:
            out["auto"] = auto_choice(xs, ref)
            first = xs
        # the default launch off a GPU/TPU ("gpu" kernel, generic interpret mode); the TPU
        # kernel's interpreter is slow on 8 devices: on the 2-D mesh only
        for target in ("gpu", "tpu") if name == LAYOUTS[0][0] else ("gpu",):
            default_target(target)
            out["fits"][f"{name}/pallas_{target}"] = compare(fit(xs, "pallas"), ref)
        default_target("gpu")

    out["auto_on_gpu"] = auto_on_a_gpu()
    xs = first  # the 2-D mesh
    out["errors"] = {
        "bad_impl": error_of(lambda: tfa.cp(xs, RANK, impl="triton")),
        "bad_impl_type": error_of(lambda: tfa.cp(xs, RANK, impl=None)),
        "program_unresolved": error_of(lambda: _sharded.cp_program(
            xs, None, None, 0.0, 0.0, rank=RANK, n_iter=1, fixed=True, init="svd",
            nonneg=False, normalize=True, precision=None, return_info=False, impl="auto")),
    }
    for target in ("gpu", "tpu"):
        out["lowering"][target] = lowering(xs, target)
    _pallas.resolve_launch = _RESOLVE_LAUNCH
    print(MARKER + json.dumps(out))


if __name__ == "__main__":
    main()
