"""The sharded-training example (examples/train_sharded.py) and the layers' ``partitioning=``.

The multi-device checks need ``XLA_FLAGS=--xla_force_host_platform_device_count=8``, which must
not leak into this pytest process: this file, run as a script (``python
tests/test_train_sharded.py``), is the worker. It runs once per module, in a subprocess started
by the ``eight_devices`` fixture, and prints its results as JSON; the tests below assert on them.
The reference is the same model built without a mesh or annotations, run unsharded.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
MARKER = "TRAIN-SHARDED-JSON"
MESHES = ((8, 1), (4, 2), (2, 4))   # (data, model)
BATCH = 16


def _load_example():
    """The example script as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("train_sharded", ROOT / "examples"
                                                  / "train_sharded.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up while it is executed
    spec.loader.exec_module(module)
    return module


def _flat(state):
    """``{"layer/param[/k]": float64 array}`` of an nnx.State of parameters (or gradients)."""
    from flax import nnx
    import numpy as np
    return {"/".join(map(str, path)): np.asarray(var.get_value(), np.float64)
            for path, var in nnx.to_flat_state(state)}


# ---------------------------------------------------------------------------------------------
# the worker (subprocess with 8 CPU devices)


def _worker(out_png):
    import jax
    from flax import nnx

    from tensorfact.nn import TTEmbed

    ex = _load_example()
    cfg = ex.Config()
    ids, labels = ex.make_data(7, BATCH, cfg)
    with nnx.use_eager_sharding(False):   # annotated, but built unsharded on one device
        reference = ex.Classifier(cfg, rngs=nnx.Rngs(0), partitioning=ex.PARTITIONING)
    loss, grads = ex.loss_and_grads(nnx.clone(reference), ids, labels)
    result = {"n_devices": jax.device_count(), "reference": {
        "loss": float(loss), "grads": {k: v.tolist() for k, v in _flat(grads).items()}}}
    for shape in MESHES:
        mesh = ex.make_model_mesh(shape[1])
        model = ex.place(nnx.clone(reference), mesh)
        entry = {"mesh": dict(mesh.shape), "param_specs": ex.layout(model),
                 "bytes_per_device": ex.bytes_per_device(nnx.state(model, nnx.Param))}
        with jax.set_mesh(mesh):
            batch = ex.shard_batch(mesh, ids, labels)
            loss, grads = ex.loss_and_grads(model, *batch)
        entry.update(loss=float(loss), batch_spec=list(batch[0].sharding.spec),
                     grads={k: v.tolist() for k, v in _flat(grads).items()})
        result["x".join(map(str, shape))] = entry
    result["shapes"] = {k: list(v.shape) for k, v in _flat(nnx.state(reference)).items()}
    with jax.set_mesh(ex.make_model_mesh(4)):   # "model" has 4 devices: 10 is not divisible
        try:
            TTEmbed(1000, 64, rank=4, rngs=nnx.Rngs(0),
                    partitioning={"cores": (None, "model")})
            result["uneven_error"] = None
        except ValueError as err:
            result["uneven_error"] = str(err)
    losses, placed = ex.main(["--quick", "--no-progress", "--out", out_png])
    result["main"] = {"losses": losses.tolist(), "layout": placed}
    print(MARKER + json.dumps(result))


# ---------------------------------------------------------------------------------------------
# pytest side

if __name__ != "__main__":
    import jax
    import jax.numpy as jnp
    import numpy as np
    import pytest
    from flax import nnx
    from jax.sharding import PartitionSpec as P

    from tensorfact.nn import FactorizedDense, TTEmbed
    from tensorfact.sharding import make_mesh

    EX = _load_example()

    def _documented(path):
        """The spec PARTITIONING documents for a parameter path (P(): replicated)."""
        layer, name = path.split("/")[:2]
        return tuple(EX.PARTITIONING.get(layer, {}).get(name, P()))

    def _padded(spec, ndim):
        return tuple(spec) + (None,) * (ndim - len(spec))

    def _check_loss_falls(losses, png):
        losses = np.asarray(losses)
        assert losses.shape == (40,) and np.isfinite(losses).all()
        assert losses[-5:].mean() < 0.85 * losses[0], losses   # 2.77 → about 2.0
        assert png.stat().st_size > 10_000

    def test_this_process_keeps_one_device():
        assert "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", "")
        assert jax.device_count() == 1 or jax.default_backend() != "cpu"

    def test_sharded_training_on_eight_devices_and_unchanged_on_one(tmp_path):
        """One test for the whole 8-device worker, so that pytest-xdist never starts it twice;
        this process runs the example on its one device meanwhile."""
        env = dict(os.environ, XLA_FLAGS=_eight_devices(),
                   JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
                       filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        png8 = tmp_path / "loss8.png"
        worker = subprocess.Popen([sys.executable, __file__, str(png8)], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            # one device, this process: main() runs unchanged on a (1, 1) mesh
            png1 = tmp_path / "loss1.png"
            losses, placed = EX.main(["--quick", "--no-progress", "--out", str(png1)])
            assert placed["mesh"] == {"data": 1, "model": 1}
            _check_loss_falls(losses, png1)
            out, err = worker.communicate(timeout=600)
        finally:
            if worker.poll() is None:
                worker.kill()
        assert worker.returncode == 0 and MARKER in out, err[-4000:]
        res = json.loads(out.split(MARKER, 1)[1])
        assert res["n_devices"] == 8
        ref, shapes = res["reference"], res["shapes"]
        for shape in MESHES:
            name = "x".join(map(str, shape))
            got = res[name]
            assert got["mesh"] == {"data": shape[0], "model": shape[1]}
            assert got["batch_spec"][0] == "data"
            # the sharded step gives the unsharded loss and gradients (float32: only the order
            # of the sums over devices differs)
            np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-5, err_msg=name)
            assert got["grads"].keys() == ref["grads"].keys()
            for path, g_ref in ref["grads"].items():
                g_ref, g = np.asarray(g_ref), np.asarray(got["grads"][path])
                np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-6 * np.abs(g_ref).max(),
                                           err_msg=f"{name} {path}")
            # the parameters carry the documented specs ...
            assert got["param_specs"].keys() == shapes.keys()
            for path, spec in got["param_specs"].items():
                assert tuple(spec) == _padded(_documented(path), len(shapes[path])), \
                    (name, path, spec)
            # ... and each device holds 1/n_model of every split parameter (float32)
            expected = sum(math.prod(s) * 4 // (shape[1] if _documented(p) else 1)
                           for p, s in shapes.items())
            assert sorted(got["bytes_per_device"].values()) == [expected] * 8, name
        assert "partitioning['cores'] = (None, 'model') splits axis 1 of size 10" in \
            res["uneven_error"]
        # the example's main() on 8 devices: default layout (2 model devices), loss falls
        main = res["main"]
        assert main["layout"]["mesh"] == {"data": 4, "model": 2}
        for path, spec in main["layout"]["params"].items():
            assert tuple(spec) == _padded(_documented(path), len(shapes[path])), (path, spec)
        _check_loss_falls(main["losses"], png8)

    # -- the layers' partitioning argument

    def test_partitioning_becomes_flax_metadata_and_values_are_unchanged():
        kwargs = {"rngs": nnx.Rngs(3)}
        with nnx.use_eager_sharding(False):   # annotations without a mesh
            dense = FactorizedDense(12, 8, kind="tt", rank=2, in_shape=(3, 4),
                                    out_shape=(2, 4), partitioning={
                                        "cores": [P(None, None, "model"), None],
                                        "bias": ("model",)}, **kwargs)
            emb = TTEmbed(12, 8, rank=2, in_shape=(3, 4), out_shape=(2, 4),
                          partitioning={"cores": (None, None, "model")}, rngs=nnx.Rngs(4))
        specs = nnx.get_partition_spec(nnx.state(dense))
        assert specs["cores"][0].get_value() == P(None, None, "model")
        assert specs["cores"][1].get_value() == P()
        assert specs["bias"].get_value() == P("model")
        assert [nnx.get_partition_spec(nnx.state(emb))["cores"][k].get_value()
                for k in range(2)] == [P(None, None, "model")] * 2
        plain = FactorizedDense(12, 8, kind="tt", rank=2, in_shape=(3, 4), out_shape=(2, 4),
                                rngs=nnx.Rngs(3))
        for a, b in zip(dense.cores, plain.cores):   # the draw does not depend on the specs
            assert jnp.array_equal(a[...], b[...])

    def test_partitioning_places_parameters_on_the_mesh():
        mesh = make_mesh((1, 1), ("data", "model"))
        kernel = jax.random.normal(jax.random.key(0), (16, 12))
        with jax.set_mesh(mesh):
            layer = FactorizedDense.from_layer(kernel, rank=4, partitioning={
                "u": (None, "model"), "vt": P("model", None)})
        assert layer.u.sharding.spec == P(None, "model")
        assert layer.vt.sharding.spec == P("model", None)
        np.testing.assert_allclose(layer.dense_weight(), FactorizedDense.from_layer(
            kernel, rank=4).dense_weight(), rtol=1e-6, atol=1e-6)

    @pytest.mark.parametrize("partitioning, match", [
        ({"w": (None,)}, r"names parameter 'w'; this layer has \('u', 'vt', 'bias'\)"),
        ({"u": (None, None, "model")}, r"has 3 entries for a parameter of shape \(8, 2\)"),
        ({"u": "model"}, r"must be a PartitionSpec or a tuple"),
        ({"u": ("model", "model")}, r"uses a mesh axis more than once"),
        ({"u": (3,)}, r"each entry must be None, a mesh axis name"),
        ({"u": [(None,), (None,)]}, r"list of 2 specs; 'u' holds 1 arrays"),
        ({"u": ("data", "pipe")}, r"names mesh axis 'pipe'.*\('data', 'model'\)"),
    ])
    def test_partitioning_errors(partitioning, match):
        with jax.set_mesh(make_mesh((1, 1), ("data", "model"))):
            with pytest.raises(ValueError, match=match):
                FactorizedDense(8, 6, rank=2, rngs=nnx.Rngs(0), partitioning=partitioning)

    def test_partitioning_must_be_a_mapping():
        with pytest.raises(TypeError, match="partitioning must be a mapping"):
            TTEmbed(8, 8, rank=2, rngs=nnx.Rngs(0), partitioning=[("cores", None)])


if __name__ == "__main__":
    _worker(sys.argv[1] if len(sys.argv) > 1 else "train_sharded_test.png")


def _eight_devices() -> str:
    """The caller's XLA flags (conftest's compile settings) plus eight CPU devices."""
    return (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
