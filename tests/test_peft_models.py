"""PEFT checkpoints for whole NNX models (``tensorfact.nn.load_peft`` / ``save_peft``).

``tests/data/peft_lora_checkpoint/`` is what PEFT 0.21.2 wrote for a small torch model (a
Conv2d and two Linears, LoRA r = 4, alpha = 8), and ``tests/data/peft_reference.npz`` holds its
base weights, an input and PEFT's output (``tests/data/make_peft_reference.py`` makes both). An
NNX model with the same attribute names loads it through the default name map and must compute
PEFT's output; tensorfact's own LoRA, DoRA and PiSSA adapters must survive save → load.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tensorfact import nn as tnn

DATA = pathlib.Path(__file__).parent / "data"
REF = np.load(DATA / "peft_reference.npz")


class Net(nnx.Module):
    """The torch model of the checkpoint, in NNX (NHWC), with its base weights."""

    def __init__(self):
        rngs = nnx.Rngs(0)
        def ref(k):
            return jnp.asarray(REF[f"checkpoint/{k}"])
        self.conv = nnx.Conv(3, 8, (3, 3), padding=((1, 1), (1, 1)), precision="highest",
                             rngs=rngs)
        self.conv.kernel[...] = ref("conv.weight").transpose(2, 3, 1, 0)
        self.conv.bias[...] = ref("conv.bias")
        for name in ("fc1", "fc2"):
            w = ref(f"{name}.weight")
            fc = nnx.Linear(w.shape[1], w.shape[0], precision="highest", rngs=rngs)
            fc.kernel[...] = w.T
            fc.bias[...] = ref(f"{name}.bias")
            setattr(self, name, fc)

    def __call__(self, x_nchw):
        h = jax.nn.relu(self.conv(x_nchw.transpose(0, 2, 3, 1)))
        return self.fc2(jax.nn.relu(self.fc1(h.mean(axis=(1, 2)))))


def test_load_peft_computes_pefts_output():
    model, report = tnn.load_peft(Net(), DATA / "peft_lora_checkpoint")
    assert sorted(r.path for r in report.layers) == ["conv", "fc1", "fc2"]
    assert all(a.scale == 2.0 for a in (model.conv.adapter, model.fc1.adapter))
    y = np.asarray(model(jnp.asarray(REF["checkpoint/x"])))
    expected = REF["checkpoint/y"]
    assert np.max(np.abs(y - expected)) / np.max(np.abs(expected)) <= 1e-5


class Attn(nnx.Module):
    def __init__(self, rngs):
        self.q_proj = nnx.LinearGeneral(8, (2, 4), rngs=rngs)
        self.o_proj = nnx.LinearGeneral((2, 4), 8, axis=(-2, -1), rngs=rngs)
        self.embed = nnx.Embed(10, 8, rngs=rngs)

    def __call__(self, ids):
        return self.o_proj(jax.nn.tanh(self.q_proj(self.embed(ids))))


def perturb(model):
    for k, (_, var) in enumerate(nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))):
        var[...] = var[...] + 0.1 * jax.random.normal(jax.random.key(k), var.shape)


@pytest.mark.parametrize("kind,init", [("lora", "gaussian"), ("dora", None),
                                       ("lora", "pissa")])
def test_round_trip_tensorfact_peft_tensorfact(tmp_path, kind, init):
    base = Attn(nnx.Rngs(0))
    settings = {} if init is None else {"init": init}
    rules = [tnn.AdapterRule("q_proj", kind, rank=2, alpha=4.0, **settings),
             tnn.AdapterRule("o_proj", kind, rank=3, **settings)]
    if kind == "lora":
        rules.append(tnn.AdapterRule("embed", kind, rank=2, **settings))
    adapted, _ = tnn.apply_adapters(base, rules, rngs=nnx.Rngs(1))
    perturb(adapted)
    tnn.save_peft(tmp_path, adapted)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["use_dora"] == (kind == "dora")
    factor = 2 if init == "pissa" else 1   # PiSSA is written as a rank-2r LoRA on the base
    assert config["r"] in (2 * factor, 3 * factor)
    loaded, _ = tnn.load_peft(Attn(nnx.Rngs(0)), tmp_path, rngs=nnx.Rngs(5))
    ids = jnp.array([[1, 2, 3], [9, 0, 4]])
    np.testing.assert_allclose(loaded(ids), adapted(ids), rtol=1e-5, atol=1e-6)
    if init != "pissa":  # the same factors, bit for bit
        for path in ("q_proj", "o_proj"):
            a, b = getattr(adapted, path).adapter, getattr(loaded, path).adapter
            np.testing.assert_array_equal(a.lora_a[...], b.lora_a[...])
            np.testing.assert_array_equal(a.lora_b[...], b.lora_b[...])
            assert a.scale == b.scale
    # and written again, the same tensors
    tnn.save_peft(tmp_path / "again", loaded)
    from safetensors.numpy import load_file
    first = load_file(tmp_path / "adapter_model.safetensors")
    second = load_file(tmp_path / "again" / "adapter_model.safetensors")
    assert sorted(first) == sorted(second)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


def test_name_map_and_errors(tmp_path):
    base = Attn(nnx.Rngs(0))
    adapted, _ = tnn.apply_adapters(base, tnn.AdapterRule("q_proj", rank=2), rngs=nnx.Rngs(1))
    tnn.save_peft(tmp_path / "a", adapted, name_map={"q_proj": "model.layers.0.q"})
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["model.layers.0.q"]
    with pytest.raises(ValueError, match="'model.layers.0.q' maps to 'model/layers/0/q', which "
                                         "is not a layer"):
        tnn.load_peft(Attn(nnx.Rngs(0)), tmp_path / "a")
    loaded, _ = tnn.load_peft(Attn(nnx.Rngs(0)), tmp_path / "a",
                              name_map=lambda name: "q_proj")
    assert isinstance(loaded.q_proj, tnn.AdaptedLayer)
    lokr, _ = tnn.apply_adapters(base, tnn.AdapterRule("q_proj", "lokr", rank=1),
                                 rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="q_proj: a LoKr adapter has no PEFT LoRA form"):
        tnn.save_peft(tmp_path / "b", lokr)
    mixed, _ = tnn.apply_adapters(base, [tnn.AdapterRule("q_proj", "dora", rank=2),
                                         tnn.AdapterRule("o_proj", rank=2)], rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="mixes LoRA and DoRA"):
        tnn.save_peft(tmp_path / "c", mixed)
    with pytest.raises(ValueError, match="no adapted layer"):
        tnn.save_peft(tmp_path / "d", base)
