"""PEFT checkpoints for whole Flax NNX models: :func:`load_peft` and :func:`save_peft`.

A PEFT LoRA or DoRA checkpoint (``adapter_config.json`` and ``adapter_model.safetensors``, as
``PeftModel.save_pretrained`` writes them; the layouts are in
:mod:`tensorfact.nn._peft_format`) names each adapted module by its dotted PyTorch path
(``base_model.model.layers.0.self_attn.q_proj``). A *name map* takes a PEFT module name (the
path less ``base_model.model.``) to the ``/``-joined path of the matching layer of the NNX model
(``layers/0/self_attn/q_proj``): by default the dots become slashes, which is right when the NNX
model uses PyTorch's attribute names; a dict gives names one by one (PEFT name → NNX path) and a
callable any mapping. A PyTorch ``nn.Linear`` maps onto an ``nnx.Linear``, or onto an
``nnx.LinearGeneral`` / ``nnx.Einsum`` whose kernel, seen as a matrix, is the same ``(in, out)``
matrix (heads flattened row-major, as ``q_proj``'s ``(heads · head_dim)`` outputs are);
``nn.Conv*`` onto ``nnx.Conv``, ``nn.Embedding`` onto ``nnx.Embed``.

:func:`save_peft` writes tensorfact's LoRA and DoRA adapters in that format. PiSSA and OLoRA
adapters, whose frozen kernel is a residual, are written as PEFT writes them when it converts
them to plain LoRA (``path_initial_model_for_weight_conversion``): the update relative to the
original weight, ``s (A B − A₀ B₀) = s [A, A₀] [B; −B₀]``, a LoRA of rank ``2r`` on the unchanged
base model. ``load_peft(save_peft(model))`` gives back the same arrays and outputs.
"""

from __future__ import annotations

import collections
import re

import jax.numpy as jnp
import numpy as np
from flax import nnx

from tensorfact.nn._adapters import DoRA, LoRA
from tensorfact.nn._calibration import node_at
from tensorfact.nn._model_adapters import AdaptedLayer, AdapterRule, apply_adapters
from tensorfact.nn._peft_format import (MODEL_PREFIX, lora_from_peft, lora_to_peft, peft_scale,
                                        read_peft_checkpoint, write_peft_checkpoint)

__all__ = ["load_peft", "save_peft"]

_SUFFIXES = (".lora_A.weight", ".lora_embedding_A")


def _to_nnx(name_map, peft_name: str) -> str:
    if name_map is None:
        return peft_name.replace(".", "/")
    if callable(name_map):
        return name_map(peft_name)
    if peft_name not in name_map:
        raise ValueError(f"name_map has no entry for the PEFT module {peft_name!r}.")
    return name_map[peft_name]


def _to_peft(name_map, path: str) -> str:
    if name_map is None:
        return path.replace("/", ".")
    if callable(name_map):
        return name_map(path)
    if path not in name_map:
        raise ValueError(f"name_map has no entry for the adapted layer {path!r}.")
    return name_map[path]


def _layer_kind(layer, path: str) -> str:
    if isinstance(layer, nnx.Embed):
        return "embed"
    if isinstance(layer, nnx.Conv):
        return "conv"
    if isinstance(layer, (nnx.Linear, nnx.LinearGeneral, nnx.Einsum)):
        return "linear"
    raise TypeError(f"{path}: a PEFT LoRA layer maps onto an nnx.Linear, nnx.LinearGeneral, "
                    f"nnx.Einsum, nnx.Conv or nnx.Embed, got {type(layer).__name__}.")


def _parse(path: str):
    return tuple(int(k) if k.isdigit() else k for k in path.split("/"))


def load_peft(model: nnx.Module, directory, *, name_map=None, name: str = "default",
              rngs: nnx.Rngs | None = None):
    """A PEFT LoRA or DoRA checkpoint applied to a Flax NNX model.

    Args:
      model: the base model, with the layers the checkpoint adapts (their base weights are the
        user's to port; only the adapter is read here). It is left as it is.
      directory: the checkpoint directory (``adapter_config.json``,
        ``adapter_model.safetensors``).
      name_map: PEFT module name → NNX layer path: None (dots become slashes), a dict, or a
        callable (see the module docstring).
      name: the adapter's name in the model.
      rngs: ``nnx.Rngs`` for the adapters' initialisation, which the checkpoint then overwrites
        (default ``nnx.Rngs(0)``).

    Returns:
      ``(adapted_model, report)`` as :func:`~tensorfact.nn.apply_adapters` returns them: one
      :class:`~tensorfact.nn.LoRA` (or :class:`~tensorfact.nn.DoRA`) per adapted module, with
      PEFT's rank and scale (``lora_alpha / r``, ``/ √r`` with ``use_rslora``, and
      ``rank_pattern`` / ``alpha_pattern``).

    Raises:
      ValueError: a module the name map sends to no layer of the model (naming both), or the
        errors of :func:`~tensorfact.nn._peft_format.read_peft_checkpoint`.
    """
    config, tensors = read_peft_checkpoint(directory)
    prefixes = sorted({k[:-len(s)] for k in tensors for s in _SUFFIXES if k.endswith(s)})
    if not prefixes:
        raise ValueError(f"{directory}: the checkpoint holds no LoRA factors.")
    rules, loads = [], []
    for prefix in prefixes:
        peft_name = prefix[len(MODEL_PREFIX):] if prefix.startswith(MODEL_PREFIX) else prefix
        path = _to_nnx(name_map, peft_name)
        try:
            layer = node_at(model, _parse(path))
        except (AttributeError, IndexError, KeyError, TypeError):
            raise ValueError(f"the PEFT module {peft_name!r} maps to {path!r}, which is not a "
                             "layer of the model (pass name_map=...).") from None
        if isinstance(layer, AdaptedLayer):
            layer = layer.base
        kind = _layer_kind(layer, path)
        arrays = lora_from_peft(tensors, prefix, layer=kind)
        rank = int(arrays["lora_a"].shape[1])
        scale = peft_scale(config, prefix)
        dora = "magnitude" in arrays
        if dora and kind == "embed":
            raise ValueError(f"{path}: DoRA on an embedding is not supported by tensorfact.")
        # alpha = s·r gives tensorfact's scale alpha / r = s (use_rslora folded into alpha)
        rules.append(AdapterRule(re.escape(path), "dora" if dora else "lora", rank=rank,
                                 alpha=scale * rank))
        loads.append((path, arrays))
    adapted, report = apply_adapters(model, rules, name=name,
                                     rngs=nnx.Rngs(0) if rngs is None else rngs)
    for path, arrays in loads:
        adapter = node_at(adapted, _parse(path)).adapters[name]
        adapter.lora_a[...] = jnp.asarray(arrays["lora_a"], adapter.lora_a[...].dtype)
        adapter.lora_b[...] = jnp.asarray(arrays["lora_b"], adapter.lora_b[...].dtype)
        if "magnitude" in arrays:
            adapter.magnitude[...] = jnp.asarray(arrays["magnitude"],
                                                 adapter.magnitude[...].dtype)
    return adapted, report


def save_peft(directory, model: nnx.Module, *, name: str | None = None, name_map=None,
              base_model_name_or_path: str | None = None) -> None:
    """Writes adapter ``name`` (default: the active one) of ``model`` as a PEFT checkpoint that
    ``PeftModel.from_pretrained`` reads (and :func:`load_peft` reads back).

    Every adapter of that name must be a :class:`~tensorfact.nn.LoRA` (any initialisation) or a
    :class:`~tensorfact.nn.DoRA` (not both kinds: PEFT's ``use_dora`` is one flag); ranks and
    scales that differ between layers go to ``rank_pattern`` / ``alpha_pattern``.

    Args:
      directory: where to write ``adapter_config.json`` and ``adapter_model.safetensors``.
      model: a model adapted by :func:`~tensorfact.nn.apply_adapters`.
      name: the adapter to write.
      name_map: NNX layer path → PEFT module name: None (slashes become dots), a dict or a
        callable.
      base_model_name_or_path: recorded in the config (PEFT's field of that name).
    """
    layers = []
    for path, node in nnx.iter_graph(model):
        if isinstance(node, AdaptedLayer):
            layers.append(("/".join(map(str, path)), node))
    if not layers:
        raise ValueError("the model has no adapted layer (see apply_adapters).")
    if name is None:
        active = {c.active for _, c in layers} - {None}
        if len(active) != 1:
            raise ValueError(f"name is needed: the model's active adapters are "
                             f"{sorted(active)}.")
        name = active.pop()
    tensors, ranks, alphas, kinds = {}, {}, {}, set()
    for path, container in layers:
        if name not in container.adapters:
            continue
        adapter = container.adapters[name]
        if type(adapter) not in (LoRA, DoRA):
            raise ValueError(f"{path}: a {type(adapter).__name__} adapter has no PEFT LoRA "
                             "form; save_peft writes LoRA and DoRA adapters.")
        kinds.add(type(adapter))
        a = np.asarray(adapter.lora_a[...])
        b = np.asarray(adapter.lora_b[...])
        if isinstance(adapter, LoRA) and adapter.init != "gaussian":
            # relative to the original weight: s (A B − A0 B0) = s [A, A0] [B; −B0]
            a = np.concatenate([a, np.asarray(adapter.lora_a0[...])], axis=1)
            b = np.concatenate([b, -np.asarray(adapter.lora_b0[...])], axis=0)
        arrays = {"lora_a": a, "lora_b": b}
        if isinstance(adapter, DoRA):
            arrays["magnitude"] = np.asarray(adapter.magnitude[...])
        kind = _layer_kind(container.base, path)
        peft_name = _to_peft(name_map, path)
        kernel_size = adapter.kernel_shape[:-2] if kind == "conv" else None
        tensors.update(lora_to_peft(arrays, MODEL_PREFIX + peft_name, layer=kind,
                                    kernel_size=kernel_size))
        rank = int(a.shape[1])
        ranks[peft_name], alphas[peft_name] = rank, adapter.scale * rank
    if not tensors:
        raise ValueError(f"no layer holds an adapter named {name!r}.")
    if len(kinds) > 1:
        raise ValueError("the adapter mixes LoRA and DoRA layers; PEFT's use_dora is one flag "
                         "for the whole adapter.")
    r = collections.Counter(ranks.values()).most_common(1)[0][0]
    alpha = collections.Counter(alphas.values()).most_common(1)[0][0]
    config = {
        "peft_type": "LORA", "task_type": None, "r": r, "lora_alpha": alpha,
        "use_rslora": False, "use_dora": DoRA in kinds, "lora_dropout": 0.0, "bias": "none",
        "fan_in_fan_out": False, "init_lora_weights": True,
        "target_modules": sorted(ranks),
        "rank_pattern": {k: v for k, v in ranks.items() if v != r},
        "alpha_pattern": {k: v for k, v in alphas.items() if v != alpha},
        "base_model_name_or_path": base_model_name_or_path, "inference_mode": True,
    }
    # patterns keyed by full names would also match longer names that end in them in PEFT's
    # "(.*\.)?(k)$" rule; anchor them to the model's root
    config["rank_pattern"] = {f"^{re.escape(k)}": v for k, v in config["rank_pattern"].items()}
    config["alpha_pattern"] = {f"^{re.escape(k)}": v for k, v in config["alpha_pattern"].items()}
    write_peft_checkpoint(directory, config, tensors)
