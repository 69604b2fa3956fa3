"""Reference data from Hugging Face PEFT for ``tests/test_peft_parity.py`` and
``tests/test_peft_format.py``.

PyTorch and PEFT are not dependencies of tensorfact, not even of its tests: the tests read only
what this script wrote. To regenerate, from the repository root, in an environment of its own::

    python -m venv /path/to/venv
    /path/to/venv/bin/pip install torch peft safetensors numpy
    /path/to/venv/bin/python tests/data/make_peft_reference.py

It writes

* ``tests/data/peft_reference.npz``: for each case (LoRA, rsLoRA, DoRA on an ``nn.Linear(24,
  20)``; LoRA and DoRA on an ``nn.Conv2d(6, 8, 3, padding=1)``; LoRA on an ``nn.Embedding(30,
  12)``; LoKr, LoHa on the Linear, LoHa on the Conv2d; OLoRA and exact PiSSA on the Linear), under
  ``"{case}/..."``: the base layer's original weights (``base.weight``, ``base.bias``, torch
  layout), the adapter's tensors under the names ``get_peft_model_state_dict`` gives them (what
  ``save_pretrained`` writes: ``adapter/base_model.model.layer.lora_A.weight``, ...), PEFT's
  ``scaling``, an input ``x`` and PEFT's output ``y`` on it, and ``merged.weight``, the weight
  ``merge_and_unload`` leaves. Factors that PEFT initialises to zero (LoRA's ``lora_B``, LoKr's
  ``lokr_w1``, LoHa's ``hada_w2_b``, the embedding's ``lora_embedding_A``) are overwritten with
  random values first, and DoRA's magnitude is perturbed, so that every update is nonzero. For
  OLoRA and PiSSA, ``init/...`` holds the adapter tensors PEFT initialised and
  ``residual.weight`` the base weight it left; then ``lora_B`` is perturbed as above. For DoRA,
  ``init/...`` holds the magnitude PEFT initialised.
  ``patterns/...`` holds PEFT's per-layer scaling for configs with ``rank_pattern`` and
  ``alpha_pattern`` (with the config JSON, whose ``target_modules`` PEFT keeps as a set: their
  order changes from run to run), and ``checkpoint/...`` the base weights, input and output of
  the model saved in the checkpoint below.
* ``tests/data/peft_lora_checkpoint/``: ``adapter_config.json`` and
  ``adapter_model.safetensors`` as ``save_pretrained`` writes them, for a model with a
  ``Conv2d(3, 8, 3, padding=1)``, ``Linear(8, 16)`` and ``Linear(16, 6)``, LoRA ``r=4``,
  ``lora_alpha=8`` on all three, random nonzero ``lora_B``.

Seeds are fixed and everything is float32. Torch layouts: a Linear weight is ``(out, in)``, a
Conv2d weight ``(c_out, c_in, kh, kw)`` and its input ``(N, C, H, W)``, an Embedding weight
``(num_embeddings, features)``.
"""

from __future__ import annotations

import pathlib
import shutil
import tempfile

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
NPZ = HERE / "peft_reference.npz"
CHECKPOINT = HERE / "peft_lora_checkpoint"
PREFIX = "base_model.model.layer"


def main():
    # imported here, not at the top: pytest collects this file for doctests in an environment
    # without torch
    import peft
    import torch
    from peft import LoHaConfig, LoKrConfig, LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict
    from torch import nn

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out: dict[str, np.ndarray] = {
        "meta/peft_version": np.array(peft.__version__),
        "meta/torch_version": np.array(torch.__version__),
    }

    def numpy(t):
        a = t.detach().cpu().numpy()
        return a.astype(np.int32) if a.dtype.kind in "iu" else a.astype(np.float32)

    class Wrap(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return self.layer(x)

    def linear():
        return nn.Linear(24, 20, bias=True)

    def conv():
        return nn.Conv2d(6, 8, 3, padding=1, bias=True)

    def embedding():
        return nn.Embedding(30, 12)

    def randn(gen, shape, std=1.0):
        return std * torch.randn(shape, generator=gen, dtype=torch.float32)

    def perturb_lora(layer, gen):
        b = layer.lora_B["default"].weight
        b.copy_(randn(gen, b.shape, 0.3))
        if "default" in layer.lora_magnitude_vector:
            m = layer.lora_magnitude_vector["default"].weight
            m.mul_(1 + randn(gen, m.shape, 0.1))

    def perturb_principal(layer, gen):
        b = layer.lora_B["default"].weight
        b.add_(randn(gen, b.shape, 0.1))

    def perturb_embedding(layer, gen):
        a = layer.lora_embedding_A["default"]
        a.copy_(randn(gen, a.shape, 0.3))

    def perturb_lokr(layer, gen):
        w1 = layer.lokr_w1["default"]
        w1.copy_(randn(gen, w1.shape, 0.3))

    def perturb_loha(layer, gen):
        b2 = layer.hada_w2_b["default"]
        b2.copy_(randn(gen, b2.shape, 0.3))

    def case(name, seed, make_layer, config, x_shape, perturb, *, ids=False):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed + 1000)
        model = Wrap(make_layer()).float()
        original = {k: v.detach().clone() for k, v in model.layer.state_dict().items()}
        peft_model = get_peft_model(model, config)
        peft_model.eval()
        layer = peft_model.base_model.model.layer
        # the state dict's tensors share storage with the parameters: clone before perturbing
        init = {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
        residual = layer.get_base_layer().weight.detach().clone()
        with torch.no_grad():
            perturb(layer, gen)
        tensors = {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}
        if ids:
            x = torch.randint(0, 30, x_shape, generator=gen)
        else:
            x = randn(gen, x_shape)
        with torch.no_grad():
            y = peft_model(x)
        scaling = layer.scaling["default"]
        merged = peft_model.merge_and_unload().layer.weight
        out[f"{name}/base.weight"] = numpy(original["weight"])
        if "bias" in original:
            out[f"{name}/base.bias"] = numpy(original["bias"])
        for key, value in tensors.items():
            out[f"{name}/adapter/{key}"] = numpy(value)
        if isinstance(config, LoraConfig) and config.init_lora_weights in ("pissa", "olora"):
            for key, value in init.items():
                out[f"{name}/init/{key}"] = numpy(value)
            out[f"{name}/residual.weight"] = numpy(residual)
        if isinstance(config, LoraConfig) and config.use_dora:
            key = f"{PREFIX}.lora_magnitude_vector"
            out[f"{name}/init/{key}"] = numpy(init[key])
        out[f"{name}/scaling"] = np.array(scaling, np.float32)
        out[f"{name}/x"] = numpy(x)
        out[f"{name}/y"] = numpy(y)
        out[f"{name}/merged.weight"] = numpy(merged)

    target = ["layer"]
    lin_x, conv_x, emb_ids = (5, 24), (2, 6, 7, 7), (3, 4)
    case("lora", 1, linear, LoraConfig(r=4, lora_alpha=8, target_modules=target), lin_x,
         perturb_lora)
    case("rslora", 2, linear,
         LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=target), lin_x,
         perturb_lora)
    case("dora", 3, linear, LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=target),
         lin_x, perturb_lora)
    case("lora_conv", 4, conv, LoraConfig(r=4, lora_alpha=8, target_modules=target), conv_x,
         perturb_lora)
    case("dora_conv", 5, conv,
         LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=target), conv_x,
         perturb_lora)
    case("lora_embed", 6, embedding, LoraConfig(r=4, lora_alpha=8, target_modules=target),
         emb_ids, perturb_embedding, ids=True)
    # LoKr: ΔW = s · w1 ⊗ (w2_a w2_b) (torch layout), w1 dense (out_l, in_m) since
    # decompose_both=False, w2 low rank (out_k, in_n) since r = 2 < max(out_k, in_n) / 2 = 3;
    # factorization(24) = (4, 6), factorization(20) = (4, 5)
    case("lokr", 7, linear,
         LoKrConfig(r=2, alpha=4, decompose_both=False, decompose_factor=-1,
                    target_modules=target), lin_x, perturb_lokr)
    case("loha", 8, linear, LoHaConfig(r=4, alpha=8, target_modules=target), lin_x,
         perturb_loha)
    case("loha_conv", 9, conv,
         LoHaConfig(r=4, alpha=8, use_effective_conv2d=False, target_modules=target), conv_x,
         perturb_loha)
    case("olora", 10, linear,
         LoraConfig(r=4, lora_alpha=8, init_lora_weights="olora", target_modules=target), lin_x,
         perturb_principal)
    case("pissa", 11, linear,
         LoraConfig(r=4, lora_alpha=8, init_lora_weights="pissa", target_modules=target), lin_x,
         perturb_principal)

    # -- rank_pattern / alpha_pattern: PEFT's scaling per layer ---------------------------------
    class Patterned(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(8, 8)
            self.fc2 = nn.Linear(8, 8)
            self.block = nn.Module()
            self.block.fc1 = nn.Linear(8, 8)
            self.block.proj = nn.Linear(8, 8)

    patterned = {
        "plain": dict(r=4, lora_alpha=8, rank_pattern={"block.fc1": 2, "proj": 6},
                      alpha_pattern={"fc1": 12, "fc2": 3}),
        "rslora": dict(r=4, lora_alpha=8, use_rslora=True, rank_pattern={"fc2": 2},
                       alpha_pattern={"block\\..*": 5}),
    }
    for name, kwargs in patterned.items():
        torch.manual_seed(0)
        pm = get_peft_model(Patterned(), LoraConfig(
            target_modules=["fc1", "fc2", "proj"], **kwargs))
        with tempfile.TemporaryDirectory() as tmp:
            pm.save_pretrained(tmp)
            out[f"patterns/{name}/config"] = np.array(
                (pathlib.Path(tmp) / "adapter_config.json").read_text())
        for module_name in ("fc1", "fc2", "block.fc1", "block.proj"):
            module = pm.base_model.model.get_submodule(module_name)
            out[f"patterns/{name}/scaling/{module_name}"] = np.array(
                module.scaling["default"], np.float64)
            out[f"patterns/{name}/r/{module_name}"] = np.array(module.r["default"])

    # -- a small checkpoint, as save_pretrained writes it ----------------------------------------
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc1 = nn.Linear(8, 16)
            self.fc2 = nn.Linear(16, 6)

        def forward(self, x):
            h = torch.relu(self.conv(x)).mean(dim=(2, 3))
            return self.fc2(torch.relu(self.fc1(h)))

    torch.manual_seed(20)
    gen = torch.Generator().manual_seed(21)
    net = Net().float()
    for key, value in net.state_dict().items():
        out[f"checkpoint/{key}"] = numpy(value)
    pm = get_peft_model(net, LoraConfig(r=4, lora_alpha=8, target_modules=["conv", "fc1",
                                                                              "fc2"]))
    pm.eval()
    with torch.no_grad():
        for module_name in ("conv", "fc1", "fc2"):
            b = pm.base_model.model.get_submodule(module_name).lora_B["default"].weight
            b.copy_(randn(gen, b.shape, 0.3))
    x = randn(gen, (2, 3, 6, 6))
    with torch.no_grad():
        out["checkpoint/x"] = numpy(x)
        out["checkpoint/y"] = numpy(pm(x))
    if CHECKPOINT.exists():
        shutil.rmtree(CHECKPOINT)
    pm.save_pretrained(str(CHECKPOINT))
    (CHECKPOINT / "README.md").unlink(missing_ok=True)

    np.savez_compressed(NPZ, **out)
    print(f"wrote {NPZ.name} ({NPZ.stat().st_size} bytes, {len(out)} arrays) and "
          f"{CHECKPOINT.name}/ {sorted(p.name for p in CHECKPOINT.iterdir())} "
          f"with peft {peft.__version__}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
