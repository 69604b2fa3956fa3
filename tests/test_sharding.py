"""Sharded decompositions and the tensorfact.sharding helpers.

The multi-device checks need ``XLA_FLAGS=--xla_force_host_platform_device_count=8``, which must
not leak into the rest of the suite: they run in two subprocesses side by side
(``tests/_sharding_checks.py``), started once per module, whose JSON the tests below assert on.
The single-device tests (argument checks, layouts on a one-device mesh) run in process.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorfact as tfa
from tensorfact import sharding

from _helpers import rel

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "_sharding_checks.py"
MARKER = "SHARDING-CHECKS-JSON"
GROUPS = ("fits", "options")
LAYOUTS = {  # name: (devices, {mode: mesh axes}, per-device block of the 16 × 12 × 8 tensor)
    "2dev_mode0": (2, {"0": ["data"]}, [8, 12, 8]),
    "4dev_mode1": (4, {"1": ["data"]}, [16, 3, 8]),
    "2x4_modes01": (8, {"0": ["a"], "1": ["b"]}, [8, 3, 8]),
    "2x4_mode0_both": (8, {"0": ["a", "b"]}, [2, 12, 8]),
}
FAMILIES = ("cp", "tucker", "tt")
TOL = 1e-4  # float32: relative difference of the reconstructions


@pytest.fixture(scope="module")
def checks():
    """Runs both halves of the multi-device checks at once and merges their JSON."""
    env = dict(os.environ, XLA_FLAGS=_eight_devices(),
               JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), group], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for group in GROUPS]
    merged = {}
    for group, proc in zip(GROUPS, procs):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0 and MARKER in out, f"{group} checks failed:\n{err[-4000:]}"
        for key, value in json.loads(out.split(MARKER, 1)[1]).items():
            merged[key] = {**merged.get(key, {}), **value} if isinstance(value, dict) else value
    return merged


# ---------------------------------------------------------------------------------------------
# multi-device (subprocess)


def test_subprocess_has_eight_devices(checks):
    assert checks["n_devices"] == 8


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_is_read_and_blocks_are_local(checks, layout):
    devices, modes, block = LAYOUTS[layout]
    entry = checks["fits"][layout]
    assert entry["devices"] == devices
    assert entry["modes"] == modes  # sharding.sharded_modes
    assert entry["block"] == block  # each device holds 1/devices of the tensor
    assert np.prod(block) * devices == 16 * 12 * 8


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_sharded_fit_equals_single_device(checks, layout, family):
    result = checks["fits"][layout][family]
    assert result["rel"] <= TOL
    assert result["replicated"]  # output on every device of the mesh, as documented
    if "type" in result:  # the public call returns the usual type
        assert result["type"] == {"cp": "CPTensor", "tucker": "TuckerTensor",
                                  "tt": "TTTensor"}[family]


@pytest.mark.parametrize("program", [f"{layout}/{family}" for layout in
                                     ("2x4_modes01", "2x4_mode0_both") for family in FAMILIES])
def test_compiled_program_never_holds_the_full_tensor(checks, program):
    hlo = checks["hlo"][program]
    full, block = hlo["full"], hlo["block"]
    assert block * 8 == full
    # no array of the per-device program (collective results included) is as large as the input
    assert hlo["biggest"] < full and hlo["collective"] < full
    if program.endswith("/tt"):
        # TT gathers the remainder once it is taller than wide: r_1 × 12 × 8 = 288 entries
        assert hlo["collective"] <= 3 * 12 * 8
    else:  # CP and Tucker move factor rows, projected tensors and I_n × I_n Gram matrices
        assert hlo["collective"] <= max(block, 16 * 16)


def test_hlo_check_catches_a_full_gather(checks):
    control = checks["hlo"]["control_full_gather"]  # shard_map(all_gather(x)): must be seen
    assert control["collective"] == control["full"] == 16 * 12 * 8


@pytest.mark.parametrize("option", ["cp_random_scan", "cp_nonneg", "tucker_random", "hosvd",
                                    "tt_4way"])
def test_sharded_options_equal_single_device(checks, option):
    result = checks["extra"][option]
    assert result["rel"] <= TOL
    assert result["replicated"]


def test_sharded_tt_keeps_the_ranks(checks):
    ranks = checks["extra"]["tt_4way"]["ranks"]
    assert ranks[0] == ranks[1] == [1, 3, 6, 4, 1]


def test_sharded_fit_info_matches(checks):
    info = checks["extra"]["cp_info"]
    assert info["n_iter"][0] == info["n_iter"][1] < 30  # the tolerance stopped both alike
    assert info["converged"] == [True, True]
    assert abs(info["rel_error"][0] - info["rel_error"][1]) <= 1e-6
    assert info["type"] == "CPInfo"
    assert abs(info["min_congruence"][0] - info["min_congruence"][1]) <= 1e-4


@pytest.mark.parametrize("case", ["cp_scale_1e-30", "cp_scale_1e+30", "tucker_scale_1e-30",
                                  "tucker_scale_1e+30"])
def test_sharded_fits_are_scale_equivariant(checks, case):
    """Sharded ``fit(c·x) ≈ c·fit(x)`` (single device) with the true error, for data of 1e±30
    in float32 (before: zeros or NaN and an error of 0)."""
    result = checks["extra"][case]
    assert result["finite"]
    assert result["rel"] <= TOL
    assert result["rel_error"][1] == pytest.approx(result["rel_error"][0], rel=1e-3)
    assert 0.0 < result["rel_error"][1] < 0.1


@pytest.mark.parametrize("case", ["tt_scale_1e-30", "tt_scale_1e+30"])
def test_sharded_tt_is_scale_equivariant(checks, case):
    """Sharded TT-SVD of ``c·x`` is ``c`` times the single-device TT-SVD of ``x`` (before: a
    relative error of 0.94 at 1e-30 and NaN at 1e30)."""
    result = checks["extra"][case]
    assert result["finite"]
    assert result["rel"] <= TOL


@pytest.mark.parametrize("case, kind, pattern", [
    ("indivisible", "ValueError", r"mode 1 of size 12 .* axis 'data' of size 8"),
    ("indivisible_2d", "ValueError", r"mode 1 of size 12 .* \('a', 'b'\) of size 8"),
    ("repeated_axis", "ValueError", r"mesh axis 'a' for more than one mode"),
    ("unknown_axis", "ValueError", r"mesh axis 'c' for mode 0"),
    ("too_many_devices", "ValueError", r"needs 16 devices; only 8"),
    ("cp_mask", "NotImplementedError", r"^mask is not supported .*tensorfact.cp"),
    ("tucker_nonneg", "NotImplementedError", r"^nonneg=True is not supported"),
    ("tucker_partial", "NotImplementedError", r"^modes is not supported"),
    ("tt_eps", "NotImplementedError", r"^eps is not supported .*tensorfact.tt"),
    ("cp_bad_rank", "ValueError", r"rank must be a positive integer, got 0"),
])
def test_sharded_errors(checks, case, kind, pattern):
    error = checks["errors"][case]
    assert error is not None, f"{case} raised nothing"
    assert error[0] == kind
    assert re.search(pattern, error[1]), error[1]


# ---------------------------------------------------------------------------------------------
# one device (in process)


def test_make_mesh_defaults_to_every_device_on_one_axis():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.size == jax.device_count()
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(axis_names="data"), "axis_names must be a non-empty sequence"),
    (dict(shape=(1, 1), axis_names=("a", "a")), "distinct strings"),
    (dict(shape=(1,), axis_names=("a", "b")), "one entry per axis name"),
    (dict(shape=(0,)), r"shape\[0\] must be a positive integer"),
    (dict(shape=4), "sequence of positive ints"),
    (dict(axis_names=("a", "b")), "give a shape for the 2 axes"),
    (dict(shape=(jax.device_count() + 1,)), "only .* available"),
])
def test_make_mesh_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        sharding.make_mesh(**kwargs)


def test_shard_tensor_errors():
    mesh = sharding.make_mesh((1,), ("data",))
    x = jnp.ones((4, 3))
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh"):
        sharding.shard_tensor(x, "data", ("data",))
    with pytest.raises(ValueError, match="3 entries for a tensor with 2 modes"):
        sharding.shard_tensor(x, mesh, ("data", None, None))
    with pytest.raises(ValueError, match="mesh axis 'model' for mode 1"):
        sharding.shard_tensor(x, mesh, (None, "model"))
    with pytest.raises(ValueError, match="each spec entry must be None"):
        sharding.shard_tensor(x, mesh, (3,))
    with pytest.raises(ValueError, match="spec must be a PartitionSpec"):
        sharding.shard_tensor(x, mesh, "data")


@settings(max_examples=12, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
       split=st.integers(0, 2), as_spec=st.booleans())
def test_shard_tensor_on_one_device_keeps_values(shape, split, as_spec):
    mesh = sharding.make_mesh((1,), ("data",))
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    spec = tuple("data" if m == split else None for m in range(len(shape)))
    placed = sharding.shard_tensor(x, mesh, jax.sharding.PartitionSpec(*spec) if as_spec
                                   else spec)
    np.testing.assert_array_equal(np.asarray(placed), x)
    assert tuple(placed.sharding.spec) == spec
    # a size-1 mesh axis splits nothing: the single-device fits run
    assert sharding.sharded_modes(placed) == {} and not sharding.is_mode_sharded(placed)


def test_sharded_modes_of_unsharded_inputs():
    x = jnp.ones((4, 3))
    assert sharding.sharded_modes(x) == {}
    assert sharding.sharded_modes(np.ones((4, 3))) == {}
    seen = []
    jax.jit(lambda v: seen.append(sharding.sharded_modes(v)) or v)(x)
    assert seen == [{}]  # a tracer has no layout


def test_fit_on_a_one_device_mesh_is_the_plain_fit():
    x = tfa.random_cp(jax.random.key(0), (6, 5, 4), rank=2).to_dense()
    placed = sharding.shard_tensor(x, sharding.make_mesh((1,), ("data",)), ("data",))
    assert rel(tfa.tt(x, 2).to_dense(), tfa.tt(placed, 2).to_dense()) < 1e-6


def test_readme_scaling_example_runs_on_one_device():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Scaling", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    x = namespace["x"]
    assert isinstance(namespace["cp"], tfa.CPTensor) and rel(x, namespace["cp"].to_dense()) < 1e-3
    assert isinstance(namespace["tk"], tfa.TuckerTensor) and rel(x, namespace["tk"].to_dense()) < 1e-3
    assert namespace["tt"].rank == (1, 4, 4, 1)


def _eight_devices() -> str:
    """The caller's XLA flags (conftest's compile settings) plus eight CPU devices."""
    return (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
