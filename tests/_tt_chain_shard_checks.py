"""Run by test_kernels_tt_chain_tpu.py in a subprocess with 8 forced host devices: the TT-chain
kernel (target "tpu", TPU interpret mode) per device inside ``jax.shard_map``, the
batch split over a 4-device mesh and the cores replicated, against the unsharded XLA chain,
forward (with ``check_vma=True``, the default: the kernel types its output's varying mesh
axes, kernels/_varying.py) and gradients (``check_vma=False``, the cores' gradients psum'd over
the mesh by hand); and the SPD-inverse kernel's TPU launch on a split batch of matrices.
Prints one JSON object of relative errors after a marker line."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from tensorfact.kernels import spd_inverse, tt_chain_pallas, tt_chain_xla

MARKER = "TT-CHAIN-SHARD-JSON"


def _rel(ref, got):
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def main():
    mesh = jax.make_mesh((4,), ("d",))
    rng = np.random.default_rng(0)
    ms, ns, rs = (3, 4), (2, 5), (1, 3, 1)
    cores = [jnp.asarray(rng.standard_normal((rs[k], m, n, rs[k + 1])), jnp.float32)
             for k, (m, n) in enumerate(zip(ms, ns))]
    x = jnp.asarray(rng.standard_normal((12, math.prod(ms))), jnp.float32)
    cot = jnp.asarray(rng.standard_normal((12, math.prod(ns))), jnp.float32)

    ref = tt_chain_xla(x, cores)
    ref_gx, ref_gc = jax.grad(lambda x, cs: jnp.vdot(cot, tt_chain_xla(x, cs)),
                              argnums=(0, 1))(x, cores)
    xs = jax.device_put(x, jax.sharding.NamedSharding(mesh, P("d")))
    out = {"devices": jax.device_count()}
    fwd = jax.jit(jax.shard_map(lambda xb, cs: tt_chain_pallas(xb, cs, target="tpu"),
                                mesh=mesh, in_specs=(P("d"), P()), out_specs=P("d")))
    out["tpu_forward"] = _rel(ref, fwd(xs, cores))  # with check_vma=True, the default

    def local_grads(xb, cb, cs):  # each device's batch rows; the cores' gradients summed
        gx, gc = jax.grad(lambda x, cs: jnp.vdot(cb, tt_chain_pallas(x, cs, target="tpu")),
                          argnums=(0, 1))(xb, cs)
        return gx, [jax.lax.psum(g, "d") for g in gc]

    grads = jax.jit(jax.shard_map(local_grads, mesh=mesh, in_specs=(P("d"), P("d"), P()),
                                  out_specs=(P("d"), P()), check_vma=False))
    gx, gc = grads(xs, jax.device_put(cot, xs.sharding), cores)
    out["tpu_grad_x"] = _rel(ref_gx, gx)
    out["tpu_grad_cores"] = max(_rel(a, b) for a, b in zip(ref_gc, gc))

    # the SPD-inverse kernel (TPU launch) on a batch of matrices split over the mesh, under
    # check_vma=True: one inverse per device's matrices, against NumPy's
    a = rng.standard_normal((8, 6, 6))
    spd = a @ np.swapaxes(a, 1, 2) + 6 * np.eye(6)
    inv = jax.jit(jax.shard_map(lambda v: spd_inverse(v, impl="pallas", target="tpu"),
                                mesh=mesh, in_specs=P("d"), out_specs=P("d")))(
        jax.device_put(jnp.asarray(spd, jnp.float32), jax.sharding.NamedSharding(mesh, P("d"))))
    out["tpu_spd_inverse"] = _rel(np.linalg.inv(spd), inv)
    print(MARKER + json.dumps(out))


if __name__ == "__main__":
    main()
