"""Multi-device checks of the sharded decompositions, run in a subprocess by test_sharding.py.

Run as ``python tests/_sharding_checks.py GROUP`` (``fits`` or ``options``: two halves that
the tests run side by side) with
``XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu``: the forced device
count must not leak into the rest of the suite. Prints one JSON object (after a marker line)
that the tests assert on; every number here is measured, nothing is judged.
"""

from __future__ import annotations

import json
import math
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

import tensorfact as tfa
from tensorfact import sharding
from tensorfact.decomposition import _sharded

from _helpers import error_of

MARKER = "SHARDING-CHECKS-JSON"
SHAPE = (16, 12, 8)

# (name, mesh shape, mesh axis names, spec): 2, 4 and 8 devices, 1-D and 2-D meshes
LAYOUTS = [
    ("2dev_mode0", (2,), ("data",), ("data",)),
    ("4dev_mode1", (4,), ("data",), (None, "data")),
    ("2x4_modes01", (2, 4), ("a", "b"), ("a", "b")),
    ("2x4_mode0_both", (2, 4), ("a", "b"), (("a", "b"),)),
]

# the public calls checked on every layout (the sharded programs behind them: programs())
FITS = {
    "cp": (lambda x: tfa.cp(x, 3, n_iter=15)),
    "tucker": (lambda x: tfa.tucker(x, (3, 3, 3), n_iter=8)),
    "tt": (lambda x: tfa.tt(x, [1, 3, 3, 1])),
}


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def replicated_on(result, mesh) -> bool:
    """Every leaf is a full copy on every device of ``mesh``."""
    ok = True
    for leaf in jax.tree_util.tree_leaves(result):
        s = leaf.sharding
        ok &= (isinstance(s, jax.sharding.NamedSharding) and s.mesh == mesh
               and s.is_fully_replicated
               and all(sh.data.shape == leaf.shape for sh in leaf.addressable_shards)
               and len(leaf.addressable_shards) == mesh.size)
    return bool(ok)


_COLLECTIVE = re.compile(r"=\s*(?P<type>[^=]*?)\s(?:all-gather|all-to-all|all-reduce|"
                         r"collective-permute|reduce-scatter|collective-broadcast)(?:-start)?\(")
_ARRAY = re.compile(r"(?:f32|f64|s32|pred)\[([\d,]*)\]")


def hlo_sizes(text):
    """Largest array in the compiled per-device module, and largest collective result (tuple
    results, as XLA-CPU writes its all-to-alls and combined all-reduces, included)."""
    def size(dims):
        return math.prod(int(d) for d in dims.split(",")) if dims else 1

    biggest = max(size(d) for d in _ARRAY.findall(text))
    collective = max([0] + [size(d) for m in _COLLECTIVE.finditer(text)
                            for d in _ARRAY.findall(m.group("type"))])
    return biggest, collective


def programs(xs):
    """The sharded programs behind the public calls in FITS, for HLO inspection."""
    return {
        "cp": _sharded.cp_program(xs, None, None, 0.0, 1e-8, rank=3, n_iter=15, fixed=False,
                                  init="svd", nonneg=False, normalize=True, precision=None,
                                  return_info=False),
        "tucker": _sharded.tucker_program(xs, None, None, 1e-8, ranks=(3, 3, 3), method="hooi",
                                          n_iter=8, fixed=False, init="svd", subspace_iter=1,
                                          precision=None, return_info=False),
        "tt": _sharded.tt_program(xs, caps=(3, 3), precision=None),
    }


def data():
    x = tfa.random_cp(jax.random.key(0), SHAPE, rank=3).to_dense()
    return x + 0.01 * jax.random.normal(jax.random.key(1), SHAPE)


def check_fits(out):
    """The three families on every layout of LAYOUTS; HLO of the 8-device ones."""
    x = data()
    single = {name: fit(x) for name, fit in FITS.items()}

    for name, mesh_shape, axis_names, spec in LAYOUTS:
        mesh = sharding.make_mesh(mesh_shape, axis_names)
        xs = sharding.shard_tensor(x, mesh, spec)
        block = xs.addressable_shards[0].data.shape
        entry = {"devices": mesh.size, "modes": {str(k): v for k, v in
                                                 sharding.sharded_modes(xs).items()},
                 "block": list(block)}
        if mesh.size == 8:  # compile once, inspect, and run that
            for fam, (fn, args, static) in programs(xs).items():
                compiled = fn.lower(*args, **static).compile()
                biggest, collective = hlo_sizes(compiled.as_text())
                out["hlo"][f"{name}/{fam}"] = {"biggest": biggest, "collective": collective,
                                               "block": math.prod(block), "full": x.size}
                result, _ = compiled(*args)
                result = result if fam != "tt" else tfa.TTTensor(result)
                entry[fam] = {"rel": rel(single[fam].to_dense(), result.to_dense()),
                              "replicated": replicated_on(result, mesh)}
        else:
            for fam, fit in FITS.items():
                result = fit(xs)
                entry[fam] = {"rel": rel(single[fam].to_dense(), result.to_dense()),
                              "replicated": replicated_on(result, mesh),
                              "type": type(result).__name__}
        out["fits"][name] = entry
        if name == "2x4_modes01":  # control: a program that does gather x must be caught
            gather = jax.jit(jax.shard_map(
                lambda b: jax.lax.all_gather(jax.lax.all_gather(b, "b", axis=1, tiled=True),
                                             "a", axis=0, tiled=True, to="invarying"),
                mesh=mesh, in_specs=xs.sharding.spec, out_specs=jax.sharding.PartitionSpec(),
                check_vma=False))
            biggest, collective = hlo_sizes(gather.lower(xs).compile().as_text())
            out["hlo"]["control_full_gather"] = {"biggest": biggest, "collective": collective,
                                                 "full": x.size}


def check_options(out):
    """Other options on a 1-D mesh of 8 devices (mode 0 split 8 ways), a 4-way TT on a 2-D
    mesh, and the errors."""
    x = data()
    mesh = sharding.make_mesh((8,), ("data",))
    xs = sharding.shard_tensor(x, mesh, ("data",))
    pos, pos_s = jnp.abs(x), sharding.shard_tensor(jnp.abs(x), mesh, ("data",))
    rkey = jax.random.key(2)
    extra = {
        "cp_random_scan": (lambda v: tfa.cp(v, 3, init="random", key=rkey, n_iter=10, tol=0,
                                                  normalize=False),
                           x, xs),
        "cp_nonneg": (lambda v: tfa.cp(v, 3, nonneg=True, l2=1e-3, n_iter=10), pos, pos_s),
        "tucker_random": (lambda v: tfa.tucker(v, (3, 3, 3), init="random", key=rkey,
                                               n_iter=6), x, xs),
        "hosvd": (lambda v: tfa.tucker(v, (3, 4, 2), method="hosvd"), x, xs),
    }
    for name, (fit, plain, sharded) in extra.items():
        a, b = fit(plain), fit(sharded)
        out["extra"][name] = {"rel": rel(a.to_dense(), b.to_dense()),
                              "replicated": replicated_on(b, mesh)}
    # fit info: same iterations and errors
    (a, ia), (b, ib) = (tfa.cp(v, 3, n_iter=30, tol=1e-6, return_info=True) for v in (x, xs))
    out["extra"]["cp_info"] = {"n_iter": [int(ia.n_iter), int(ib.n_iter)],
                               "rel_error": [float(ia.rel_error), float(ib.rel_error)],
                               "converged": [bool(ia.converged), bool(ib.converged)],
                               "type": type(ib).__name__,
                               "min_congruence": [float(ia.min_congruence),
                                                  float(ib.min_congruence)]}
    # scale: the sharded fits run on x / 2^k (a pmax of the blocks' maxima) as on one device
    scaled_fits = {"cp": lambda v: tfa.cp(v, 3, n_iter=15, tol=0, return_info=True),
                   "tucker": lambda v: tfa.tucker(v, (3, 3, 3), n_iter=8, tol=0,
                                                  return_info=True)}
    for fam, fit in scaled_fits.items():
        a, ia = fit(x)
        for c in (1e-30, 1e30):
            b, ib = fit(sharding.shard_tensor(x * c, mesh, ("data",)))
            dense = np.asarray(b.to_dense(), np.float64)
            out["extra"][f"{fam}_scale_{c:g}"] = {
                "rel": rel(np.asarray(a.to_dense(), np.float64) * c, dense),
                "finite": bool(np.all(np.isfinite(dense))),
                "rel_error": [float(ia.rel_error), float(ib.rel_error)]}
    t = tfa.tt(x, [1, 3, 3, 1])  # TT-SVD has no info: compare the tensors
    for c in (1e-30, 1e30):
        dense = np.asarray(tfa.tt(sharding.shard_tensor(x * c, mesh, ("data",)),
                                  [1, 3, 3, 1]).to_dense(), np.float64)
        out["extra"][f"tt_scale_{c:g}"] = {"rel": rel(np.asarray(t.to_dense(), np.float64) * c,
                                                      dense),
                                           "finite": bool(np.all(np.isfinite(dense)))}
    # a 4-way TT whose row mode is split at step 1 (the all_to_all Gram), on a 2-D mesh
    mesh2 = sharding.make_mesh((2, 4), ("a", "b"))
    y = jax.random.normal(jax.random.key(3), (4, 8, 8, 4))
    ys = sharding.shard_tensor(y, mesh2, (None, "a", "b", None))
    a, b = tfa.tt(y, [1, 3, 6, 4, 1]), tfa.tt(ys, [1, 3, 6, 4, 1])
    out["extra"]["tt_4way"] = {"rel": rel(a.to_dense(), b.to_dense()),
                               "replicated": replicated_on(b, mesh2),
                               "ranks": [list(a.rank), list(b.rank)]}

    out["errors"] = {
        "indivisible": error_of(lambda: sharding.shard_tensor(x, mesh, (None, "data"))),
        "indivisible_2d": error_of(lambda: sharding.shard_tensor(x, mesh2, (None, ("a", "b")))),
        "repeated_axis": error_of(lambda: sharding.shard_tensor(x, mesh2, ("a", "a"))),
        "unknown_axis": error_of(lambda: sharding.shard_tensor(x, mesh2, ("c",))),
        "too_many_devices": error_of(lambda: sharding.make_mesh((16,))),
        "cp_mask": error_of(lambda: tfa.cp(xs, 3, mask=jnp.ones(SHAPE, bool))),
        "tucker_nonneg": error_of(lambda: tfa.tucker(xs, 3, nonneg=True)),
        "tucker_partial": error_of(lambda: tfa.tucker(xs, (3, 3), modes=(0, 1))),
        "tt_eps": error_of(lambda: tfa.tt(xs, eps=0.1)),
        "cp_bad_rank": error_of(lambda: tfa.cp(xs, 0)),
    }


def main(group):
    out = {"n_devices": jax.device_count(), "fits": {}, "hlo": {}, "extra": {}, "errors": {}}
    {"fits": check_fits, "options": check_options}[group](out)
    print(MARKER)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
