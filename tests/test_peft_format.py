"""PEFT's LoRA checkpoint format (tensorfact.nn._peft_format), against a checkpoint PEFT wrote.

``tests/data/peft_lora_checkpoint/`` is what ``save_pretrained`` wrote (PEFT 0.21.2) for a
``Conv2d(3, 8, 3, padding=1) → ReLU → mean over space → Linear(8, 16) → ReLU → Linear(16, 6)``
model with LoRA ``r=4``, ``lora_alpha=8`` on the three layers; its base weights, an input and
PEFT's output on it are in ``tests/data/peft_reference.npz`` under ``checkpoint/`` (see
``tests/data/make_peft_reference.py``). No torch here.
"""

import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tensorfact.nn import DoRA, LoRA
from tensorfact.nn._peft_format import (CONFIG_NAME, WEIGHTS_NAME, lora_from_peft, lora_to_peft,
                                        peft_scale, read_peft_checkpoint, write_peft_checkpoint)

DATA = pathlib.Path(__file__).parent / "data"
CHECKPOINT = DATA / "peft_lora_checkpoint"
REF = np.load(DATA / "peft_reference.npz")
LAYERS = {"conv": "conv", "fc1": "linear", "fc2": "linear"}


def prefix(name):
    return f"base_model.model.{name}"


def ref(key):
    return REF[f"checkpoint/{key}"]


# -- reading PEFT's checkpoint and running it ---------------------------------------------------
def test_read_gives_peft_config_and_saved_names():
    config, tensors = read_peft_checkpoint(CHECKPOINT)
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert sorted(tensors) == sorted(f"{prefix(n)}.lora_{ab}.weight" for n in LAYERS
                                     for ab in "AB")
    assert tensors[f"{prefix('conv')}.lora_A.weight"].shape == (4, 3, 3, 3)
    assert tensors[f"{prefix('conv')}.lora_B.weight"].shape == (8, 4, 1, 1)
    assert all(t.dtype == np.float32 for t in tensors.values())


def build_model(config, tensors):
    """tensorfact LoRA layers around nnx layers with the checkpoint's base weights."""
    w = ref("conv.weight")                                        # (c_out, c_in, kh, kw)
    conv = nnx.Conv(3, 8, (3, 3), padding=((1, 1), (1, 1)), precision="highest",
                    rngs=nnx.Rngs(0))
    conv.kernel[...] = jnp.asarray(w.transpose(2, 3, 1, 0))
    conv.bias[...] = jnp.asarray(ref("conv.bias"))
    layers = {"conv": conv}
    for name in ("fc1", "fc2"):
        w = ref(f"{name}.weight")                                 # (out, in)
        fc = nnx.Linear(w.shape[1], w.shape[0], precision="highest", rngs=nnx.Rngs(0))
        fc.kernel[...] = jnp.asarray(w.T)
        fc.bias[...] = jnp.asarray(ref(f"{name}.bias"))
        layers[name] = fc
    adapters = {}
    for name, layer in LAYERS.items():
        arrays = lora_from_peft(tensors, prefix(name), layer=layer)
        lora = LoRA(layers[name], arrays["lora_a"].shape[1], alpha=config["lora_alpha"],
                    use_rslora=config["use_rslora"], rngs=nnx.Rngs(1))
        assert lora.scale == peft_scale(config, prefix(name)) == 2.0
        lora.lora_a[...] = jnp.asarray(arrays["lora_a"])
        lora.lora_b[...] = jnp.asarray(arrays["lora_b"])
        adapters[name] = lora
    return adapters


def forward(adapters, x_nchw):
    h = jax.nn.relu(adapters["conv"](jnp.asarray(x_nchw.transpose(0, 2, 3, 1))))
    h = jax.nn.relu(adapters["fc1"](h.mean(axis=(1, 2))))
    return adapters["fc2"](h)


def test_checkpoint_runs_as_in_peft():
    config, tensors = read_peft_checkpoint(CHECKPOINT)
    y = np.asarray(forward(build_model(config, tensors), ref("x")))
    expected = ref("y")
    err = np.max(np.abs(y - expected)) / np.max(np.abs(expected))
    assert err <= 1e-5, err  # measured 7.5e-8


# -- the layouts ---------------------------------------------------------------------------------
def test_round_trip_is_the_identity_bit_for_bit():
    _, tensors = read_peft_checkpoint(CHECKPOINT)
    for name, layer in LAYERS.items():
        p = prefix(name)
        kernel_size = tensors[f"{p}.lora_A.weight"].shape[2:] if layer == "conv" else None
        back = lora_to_peft(lora_from_peft(tensors, p, layer=layer), p, layer=layer,
                            kernel_size=kernel_size)
        assert sorted(back) == sorted(k for k in tensors if k.startswith(p + "."))
        for k, v in back.items():
            assert v.dtype == tensors[k].dtype and v.shape == tensors[k].shape
            np.testing.assert_array_equal(v, tensors[k])


@pytest.mark.parametrize("case, layer", [("dora", "linear"), ("dora_conv", "conv"),
                                         ("lora_embed", "embed"), ("lora", "linear")])
def test_round_trip_with_magnitude_and_embedding(case, layer):
    """The parity data's PEFT tensors: DoRA's magnitude ((out,) and Conv2d's (1, c_out, 1, 1))
    and the embedding's lora_embedding_A / _B come back bit for bit."""
    start = f"{case}/adapter/"
    tensors = {k[len(start):]: REF[k] for k in REF.files if k.startswith(start)}
    p = "base_model.model.layer"
    arrays = lora_from_peft(tensors, p, layer=layer)
    assert ("magnitude" in arrays) == case.startswith("dora")
    kernel_size = (3, 3) if layer == "conv" else None
    back = lora_to_peft(arrays, p, layer=layer, kernel_size=kernel_size)
    assert sorted(back) == sorted(tensors)
    for k, v in back.items():
        assert v.dtype == tensors[k].dtype
        np.testing.assert_array_equal(v, tensors[k])


def test_layouts_are_tensorfacts():
    """lora_from_peft's arrays in tensorfact's adapters give PEFT's outputs (DoRA on a Conv2d,
    whose magnitude PEFT stores as (1, c_out, 1, 1)), and the embedding's A, B are (num, r)
    and (r, features)."""
    start = "dora_conv/"
    c = {k[len(start):]: REF[k] for k in REF.files if k.startswith(start)}
    tensors = {k[len("adapter/"):]: v for k, v in c.items() if k.startswith("adapter/")}
    arrays = lora_from_peft(tensors, "base_model.model.layer", layer="conv")
    assert arrays["lora_a"].shape == (3 * 3 * 6, 4) and arrays["magnitude"].shape == (8,)
    base = nnx.Conv(6, 8, (3, 3), padding=((1, 1), (1, 1)), precision="highest",
                    rngs=nnx.Rngs(0))
    base.kernel[...] = jnp.asarray(c["base.weight"].transpose(2, 3, 1, 0))
    base.bias[...] = jnp.asarray(c["base.bias"])
    dora = DoRA(base, 4, alpha=8, rngs=nnx.Rngs(1))
    for name in ("lora_a", "lora_b", "magnitude"):
        getattr(dora, name)[...] = jnp.asarray(arrays[name])
    y = np.asarray(dora(jnp.asarray(c["x"].transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)
    assert np.max(np.abs(y - c["y"])) / np.max(np.abs(c["y"])) <= 1e-5

    start = "lora_embed/adapter/"
    tensors = {k[len(start):]: REF[k] for k in REF.files if k.startswith(start)}
    arrays = lora_from_peft(tensors, "base_model.model.layer", layer="embed")
    assert arrays["lora_a"].shape == (30, 4) and arrays["lora_b"].shape == (4, 12)
    ids = REF["lora_embed/x"]
    y = REF["lora_embed/base.weight"][ids] + 2.0 * arrays["lora_a"][ids] @ arrays["lora_b"]
    np.testing.assert_allclose(y, REF["lora_embed/y"], rtol=1e-5, atol=1e-6)


def test_from_jax_arrays():
    a = jax.random.normal(jax.random.key(0), (10, 3))
    b = jax.random.normal(jax.random.key(1), (3, 7))
    t = lora_to_peft({"lora_a": a, "lora_b": b}, "m")
    assert t["m.lora_A.weight"].shape == (3, 10) and t["m.lora_B.weight"].shape == (7, 3)
    np.testing.assert_array_equal(lora_from_peft(t, "m")["lora_a"], np.asarray(a))


# -- writing -------------------------------------------------------------------------------------
def test_write_then_read_is_identical_and_byte_for_byte_peft(tmp_path):
    config, tensors = read_peft_checkpoint(CHECKPOINT)
    write_peft_checkpoint(tmp_path / "out", config, tensors)
    config2, tensors2 = read_peft_checkpoint(tmp_path / "out")
    assert config2 == config
    assert sorted(tensors2) == sorted(tensors)
    for k in tensors:
        assert tensors2[k].dtype == tensors[k].dtype
        np.testing.assert_array_equal(tensors2[k], tensors[k])
    # the same bytes as PEFT's save_pretrained (sorted keys, indent 2, {"format": "pt"})
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        assert (tmp_path / "out" / name).read_bytes() == (CHECKPOINT / name).read_bytes()


def test_write_sets_peft_type(tmp_path):
    t = lora_to_peft({"lora_a": np.ones((5, 2), np.float32),
                      "lora_b": np.ones((2, 3), np.float32)}, "base_model.model.fc")
    write_peft_checkpoint(tmp_path, {"r": 2, "lora_alpha": 4, "target_modules": ["fc"]}, t)
    config, tensors = read_peft_checkpoint(tmp_path)
    assert config["peft_type"] == "LORA" and peft_scale(config, "base_model.model.fc") == 2.0
    assert sorted(tensors) == sorted(t)


# -- the scale -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["plain", "rslora"])
def test_peft_scale_matches_peft_with_patterns(name):
    """rank_pattern / alpha_pattern resolved as PEFT resolved them (scalings recorded from
    PEFT's layers), with and without use_rslora."""
    config = json.loads(str(REF[f"patterns/{name}/config"]))
    assert config["rank_pattern"] or config["alpha_pattern"]
    for module in ("fc1", "fc2", "block.fc1", "block.proj"):
        expected = float(REF[f"patterns/{name}/scaling/{module}"])
        assert peft_scale(config, f"base_model.model.{module}") == pytest.approx(expected,
                                                                                   rel=1e-12)
        assert peft_scale(config, module) == pytest.approx(expected, rel=1e-12)


def test_peft_scale_defaults_and_errors():
    assert peft_scale({"peft_type": "LORA"}, "x") == 1.0              # LoraConfig: r = alpha = 8
    assert peft_scale({"r": 16, "lora_alpha": 32, "use_rslora": True}, "x") == 8.0
    with pytest.raises(ValueError, match="r for 'fc' must be a positive integer"):
        peft_scale({"r": 0}, "fc")
    with pytest.raises(ValueError, match="lora_alpha for 'fc' must be a finite number"):
        peft_scale({"lora_alpha": "8"}, "fc")


# -- errors --------------------------------------------------------------------------------------
def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        read_peft_checkpoint(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="adapter_config.json' not found"):
        read_peft_checkpoint(tmp_path)
    shutil.copy(CHECKPOINT / CONFIG_NAME, tmp_path / CONFIG_NAME)
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors' not found"):
        read_peft_checkpoint(tmp_path)
    (tmp_path / "adapter_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="adapter_model.bin is there"):
        read_peft_checkpoint(tmp_path)


def test_unreadable_files(tmp_path):
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="adapter_config.json' is not valid JSON"):
        read_peft_checkpoint(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("[1, 2]")
    with pytest.raises(ValueError, match="must be a JSON object, got list"):
        read_peft_checkpoint(tmp_path)
    shutil.copy(CHECKPOINT / CONFIG_NAME, tmp_path / CONFIG_NAME)
    (tmp_path / WEIGHTS_NAME).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="adapter_model.safetensors' is not a readable "
                                         "safetensors file"):
        read_peft_checkpoint(tmp_path)


def test_non_lora_peft_type_is_rejected(tmp_path):
    shutil.copytree(CHECKPOINT, tmp_path / "ck")
    config = json.loads((tmp_path / "ck" / CONFIG_NAME).read_text())
    config["peft_type"] = "LOKR"
    (tmp_path / "ck" / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"adapter_config.json'?: peft_type is 'LOKR'; only LoRA"):
        read_peft_checkpoint(tmp_path / "ck")
    with pytest.raises(ValueError, match="config: peft_type is 'LOKR'; only LoRA"):
        write_peft_checkpoint(tmp_path / "w", config, {})
    with pytest.raises(TypeError, match="config must be a dict, got list"):
        write_peft_checkpoint(tmp_path / "w", [], {})


def test_conversion_errors():
    a, b = np.ones((4, 6), np.float32), np.ones((5, 4), np.float32)
    t = {"m.lora_A.weight": a, "m.lora_B.weight": b}
    with pytest.raises(ValueError, match=r"no tensor 'n.lora_A.weight', and none under 'n'"):
        lora_from_peft(t, "n")
    live = {"m.lora_A.default.weight": a, "m.lora_B.default.weight": b}
    with pytest.raises(ValueError, match="adapter name '.default.': a live model's state_dict"):
        lora_from_peft(live, "m")
    with pytest.raises(ValueError, match="lora_bias=True"):
        lora_from_peft({**t, "m.lora_B.bias": np.ones(5, np.float32)}, "m")
    with pytest.raises(ValueError, match="layer must be one of"):
        lora_from_peft(t, "m", layer="dense")
    with pytest.raises(ValueError, match="has rank 4 but .* has rank 3"):
        lora_from_peft({**t, "m.lora_B.weight": np.ones((5, 3), np.float32)}, "m")
    conv = {"m.lora_A.weight": np.ones((4, 2, 3, 3)), "m.lora_B.weight": np.ones((5, 4, 1, 1))}
    with pytest.raises(ValueError, match="use layer='conv'"):
        lora_from_peft(conv, "m")
    with pytest.raises(ValueError, match="not a convolution's LoRA"):
        lora_from_peft(t, "m", layer="conv")
    with pytest.raises(ValueError, match="does not fit 5 output features"):
        lora_from_peft({**t, "m.lora_magnitude_vector": np.ones(4)}, "m")
    arrays = lora_from_peft(conv, "m", layer="conv")
    with pytest.raises(ValueError, match="kernel_size is required for layer='conv'"):
        lora_to_peft(arrays, "m", layer="conv")
    with pytest.raises(ValueError, match="18 rows, which is not prod"):
        lora_to_peft(arrays, "m", layer="conv", kernel_size=(4, 4))
    with pytest.raises(ValueError, match="kernel_size is for layer='conv' only"):
        lora_to_peft(lora_from_peft(t, "m"), "m", kernel_size=(3, 3))
    with pytest.raises(ValueError, match=r"unknown names \['bias'\]"):
        lora_to_peft({**lora_from_peft(t, "m"), "bias": np.ones(5)}, "m")
    with pytest.raises(ValueError, match="magnitude has shape"):
        lora_to_peft({**lora_from_peft(t, "m"), "magnitude": np.ones(4)}, "m")
