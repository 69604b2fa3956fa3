"""Run by test_kernels_mttkrp_tpu.py in a subprocess with 8 forced host devices: the MTTKRP
kernel (targets "tpu" and "gpu", interpret mode) per device inside ``jax.shard_map`` against
the unsharded XLA MTTKRP. The kernels type their output's varying mesh axes
(``tensorfact/kernels/_varying.py``), so the TPU kernel runs under shard_map's default
``check_vma=True``; the "gpu" kernel in Pallas's generic interpret mode needs
``check_vma=False`` (``_varying.checks_varying``). Prints one JSON object of relative errors
after a marker line."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from tensorfact.kernels import _pallas, _varying, mttkrp_pallas, mttkrp_xla

MARKER = "MTTKRP-SHARD-JSON"


def main():
    mesh = jax.make_mesh((4,), ("d",))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, 6, 5)), jnp.float32)
    fs = [jnp.asarray(rng.standard_normal((n, 3)), jnp.float32) for n in x.shape]
    refs = [np.asarray(mttkrp_xla(x, fs, mode), np.float64) for mode in (0, 1)]  # unsharded
    split, whole = (jax.sharding.NamedSharding(mesh, P("d")),
                    jax.sharding.NamedSharding(mesh, P()))
    x, fs = jax.device_put(x, split), [jax.device_put(fs[0], split)] + [
        jax.device_put(a, whole) for a in fs[1:]]
    out = {"devices": jax.device_count()}
    for target in ("tpu", "gpu"):
        check = _varying.checks_varying(_pallas.resolve_launch(target))
        out[f"{target}_check_vma"] = check
        # mode 0, x split over mode 0: each device owns its rows of the result
        f0 = jax.shard_map(lambda xb, b, c: mttkrp_pallas(xb, [None, b, c], 0, target=target),
                           mesh=mesh, in_specs=(P("d"), P(), P()), out_specs=P("d"),
                           check_vma=check)
        # mode 1, x split over mode 0: each device's partial sum, psum'd over the mesh
        f1 = jax.shard_map(
            lambda xb, a, c: jax.lax.psum(mttkrp_pallas(xb, [a, None, c], 1, target=target),
                                          "d"),
            mesh=mesh, in_specs=(P("d"), P("d"), P()), out_specs=P(), check_vma=check)
        for mode, got in ((0, jax.jit(f0)(x, fs[1], fs[2])), (1, jax.jit(f1)(x, fs[0], fs[2]))):
            ref = refs[mode]
            err = np.linalg.norm(np.asarray(got, np.float64) - ref) / np.linalg.norm(ref)
            out[f"{target}_mode{mode}"] = float(err)
    print(MARKER + json.dumps(out))


if __name__ == "__main__":
    main()
