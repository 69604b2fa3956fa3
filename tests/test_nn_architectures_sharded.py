"""The factorized architectures (attention, the multilinear MoE, TRL/TCL, FactorizedEmbed) on
a mesh of eight CPU devices, as ``FactorizedDense`` runs in ``test_train_sharded.py``: each is
built with ``partitioning=`` under a ``("data", "model")`` mesh of 2 × 4, its parameters are
placed as annotated, and its forward on a batch sharded over ``"data"`` (and the attentions'
cached decode step) equals the same layer's unsharded forward in this one-device process.

The eight devices exist only in a subprocess (``XLA_FLAGS`` must be set before JAX starts), which
prints its results as JSON.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

import tensorfact.nn as tnn

ROOT = pathlib.Path(__file__).resolve().parents[1]
M = "model"

#: name → (builder taking partitioning=, input maker, partitioning): one weight axis of every
#: layer is split over the 4 "model" devices.
CASES = {
    "MultiHeadAttention": ("tnn.MultiHeadAttention(4, 32, rngs=nnx.Rngs(0), **kw)", "seq",
                           {"w_q": (None, M), "w_k": (None, M), "w_v": (None, M),
                            "w_o": (M, None)}),
    "TensorProductAttention": ("tnn.TensorProductAttention(4, 32, q_rank=2, kv_rank=2, "
                               "rngs=nnx.Rngs(0), **kw)", "seq",
                               {"w_bq": (None, M), "w_bk": (None, M), "w_bv": (None, M),
                                "w_o": (None, M)}),
    "MultiMatrixFactorizationAttention": ("tnn.MultiMatrixFactorizationAttention(8, 32, "
                                          "q_rank=16, head_dim=8, rngs=nnx.Rngs(0), **kw)",
                                          "seq", {"w_qb": (None, M), "w_o": (M, None)}),
    "MultilinearMoE": ("tnn.MultilinearMoE(32, 16, num_experts=8, rank=4, rngs=nnx.Rngs(0), "
                       "**kw)", "flat", {"factors": [(M, None), (None, None), (M, None)],
                                         "gate": [(None, M)]}),
    "TRL": ("tnn.TRL((4, 8), 16, kind='tucker', rank=(2, 4, 16), rngs=nnx.Rngs(0), **kw)",
            "tensor", {"core": (None, M, None), "factors": [(None, None), (None, M),
                                                            (M, None)]}),
    "TCL": ("tnn.TCL((4, 8), (4, 4), rngs=nnx.Rngs(0), **kw)", "tensor",
            {"factors": [(M, None), (M, None)]}),
    "FactorizedEmbed": ("tnn.FactorizedEmbed(64, 32, kind='cp', rank=8, rngs=nnx.Rngs(0), "
                        "**kw)", "ids", {"factors": [(None, M)] * 4}),
}

INPUTS = textwrap.dedent("""
    def _inputs(kind):
        key = jax.random.key(1)
        if kind == "seq":
            return jax.random.normal(key, (4, 6, 32))
        if kind == "flat":
            return jax.random.normal(key, (8, 32))
        if kind == "tensor":
            return jax.random.normal(key, (8, 4, 8))
        return jax.random.randint(key, (4, 6), 0, 64)
""")
_namespace = {"jax": jax}
exec(INPUTS, _namespace)  # noqa: S102  (the same inputs in this process and in the worker)
_inputs = _namespace["_inputs"]

WORKER = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P
    import tensorfact.nn as tnn
    from tensorfact.sharding import make_mesh

    cases = json.loads(sys.argv[1])
    mesh = make_mesh((2, 4), ("data", "model"))
    out = {"n_devices": jax.device_count()}

    for name, (build, kind, partitioning) in cases.items():
        partitioning = {k: ([tuple(s) for s in v] if isinstance(v[0], list) else tuple(v))
                        for k, v in partitioning.items()}
        with jax.set_mesh(mesh):
            layer = eval(build, dict(tnn=tnn, nnx=nnx), dict(kw=dict(partitioning=partitioning)))
        specs = {"/".join(map(str, path)): str(v.sharding.spec) for path, v in
                 nnx.to_flat_state(nnx.state(layer, nnx.Param))}
        x = _inputs(kind)
        x = jax.device_put(x, NamedSharding(mesh, P("data")))
        with jax.set_mesh(mesh):
            y = nnx.jit(lambda m, x: m(x))(layer, x)
        entry = {"specs": specs, "y": np.asarray(y).tolist(),
                 "y_sharded": not y.sharding.is_fully_replicated}
        if hasattr(layer, "decode_step"):
            with jax.set_mesh(mesh):
                cache = layer.init_cache(4, 6)
                step = nnx.jit(lambda m, x_t, c: m.decode_step(x_t, c))
                ys = []
                for t in range(6):
                    y_t, cache = step(layer, x[:, t], cache)
                    ys.append(np.asarray(y_t))
            entry["decode"] = np.stack(ys, 1).tolist()
        out[name] = entry
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def sharded():
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "")
                                       + " --xla_force_host_platform_device_count=8").strip())
    cases = {name: [build, kind, {k: v for k, v in spec.items()}]
             for name, (build, kind, spec) in CASES.items()}
    source = WORKER.replace("out = {", INPUTS + "\nout = {", 1)
    run = subprocess.run([sys.executable, "-c", source, json.dumps(cases)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_the_worker_has_eight_devices(sharded):
    assert sharded["n_devices"] == 8


@pytest.mark.parametrize("name", list(CASES))
def test_sharded_layer_is_placed_as_annotated_and_computes_the_unsharded_output(sharded, name):
    build, kind, partitioning = CASES[name]
    got = sharded[name]
    # every annotated axis is split over "model"
    for group, spec in partitioning.items():
        specs = spec if isinstance(spec, list) else [spec]
        placed = {k: v for k, v in got["specs"].items() if k.split("/")[0] == group}
        assert len(placed) == len(specs), (group, placed)
        for (path, text), want in zip(sorted(placed.items()), specs):
            assert text == str(jax.sharding.PartitionSpec(*want)), (path, text, want)
    layer = eval(build, dict(tnn=tnn, nnx=nnx), dict(kw={}))  # noqa: S307  (our own strings)
    x = _inputs(kind)
    want = np.asarray(layer(x))
    np.testing.assert_allclose(np.asarray(got["y"]), want, rtol=2e-5,
                               atol=2e-5 * np.abs(want).max())
    assert got["y_sharded"]                    # the batch stays split over "data"
    if "decode" in got:                        # the cached decode on the mesh: the forward
        np.testing.assert_allclose(np.asarray(got["decode"]), want, rtol=2e-5,
                                   atol=2e-5 * np.abs(want).max())
