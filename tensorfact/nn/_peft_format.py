"""Hugging Face PEFT's LoRA checkpoint format, read and written without PyTorch or PEFT.

A PEFT checkpoint is a directory with two files, as ``PeftModel.save_pretrained`` writes them:

* ``adapter_config.json``: the ``LoraConfig`` as a JSON object (``"peft_type": "LORA"``,
  ``"r"``, ``"lora_alpha"``, ``"use_rslora"``, ``"use_dora"``, ``"rank_pattern"``,
  ``"alpha_pattern"``, ``"target_modules"``, ...);
* ``adapter_model.safetensors``: the adapter's tensors, in PyTorch's layouts, under the names
  of ``peft.get_peft_model_state_dict``: the module's path in the ``PeftModel`` (for a model
  wrapped by ``get_peft_model``, ``"base_model.model."`` and the path in the base model, e.g.
  ``"base_model.model.fc1"``) followed by

  ==========================  ==========================================  =====================
  key suffix                  layer                                       torch shape
  ==========================  ==========================================  =====================
  ``.lora_A.weight``          ``nn.Linear(in, out)``                      ``(r, in)``
  ``.lora_B.weight``          ``nn.Linear(in, out)``                      ``(out, r)``
  ``.lora_A.weight``          ``nn.Conv2d(c_in, c_out, (kh, kw))``        ``(r, c_in, kh, kw)``
  ``.lora_B.weight``          ``nn.Conv2d`` (a 1×1 convolution)           ``(c_out, r, 1, 1)``
  ``.lora_embedding_A``       ``nn.Embedding(num, features)``             ``(r, num)``
  ``.lora_embedding_B``       ``nn.Embedding(num, features)``             ``(features, r)``
  ``.lora_magnitude_vector``  DoRA, Linear / Embedding                    ``(out,)``
  ``.lora_magnitude_vector``  DoRA, Conv2d                                ``(1, c_out, 1, 1)``
  ==========================  ==========================================  =====================

  The adapter's name (``"default"``) that a live model's ``state_dict()`` carries
  (``fc1.lora_A.default.weight``, ``fc1.lora_magnitude_vector.default.weight``) is not in the
  saved names, and neither is ``.weight`` after the magnitude or the embedding factors. Conv1d
  and Conv3d have one or three spatial axes in the same places.

PEFT's layer computes ``y = base(x) + s · B(A(x))``, i.e. ``ΔW = s · B A`` in torch's
``(out, in)`` layout, with ``s = lora_alpha / r`` (``lora_alpha / √r`` with ``use_rslora``). In
tensorfact's layout (:class:`tensorfact.nn.LoRA`: ``ΔW = s · A B`` on the ``(rows, out)`` kernel
matrix) that is

* Linear: ``A = lora_A.weightᵀ`` of shape ``(in, r)``, ``B = lora_B.weightᵀ`` of ``(r, out)``;
* Conv (``nnx.Conv`` kernel ``(kh, kw, c_in, c_out)``, seen as the matrix
  ``(kh·kw·c_in, c_out)``, rows row-major over ``(kh, kw, c_in)``): ``A`` is ``lora_A.weight``
  transposed to ``(kh, kw, c_in, r)`` and reshaped to ``(kh·kw·c_in, r)``; ``B`` is
  ``lora_B.weight[:, :, 0, 0]ᵀ``, ``(r, c_out)``;
* Embedding (``nnx.Embed`` table ``(num, features)``, the same as torch's):
  ``A = lora_embedding_Aᵀ`` of shape ``(num, r)``, ``B = lora_embedding_Bᵀ`` of
  ``(r, features)``, and ``y = table[ids] + s · A[ids] B``;
* DoRA's magnitude: a vector of shape ``(out,)`` (one per output feature or channel).

PEFT's ``fan_in_fan_out`` (GPT-2's ``Conv1D``, whose base weight is stored ``(in, out)``) changes
only the base layer's layout, not the LoRA factors'.

A private module: the model-wide loading and saving build on these functions.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

__all__ = ["read_peft_checkpoint", "write_peft_checkpoint", "lora_from_peft", "lora_to_peft",
           "peft_scale", "CONFIG_NAME", "WEIGHTS_NAME", "MODEL_PREFIX"]

#: The files of a PEFT checkpoint.
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
#: What ``get_peft_model`` puts before a module's path in the base model.
MODEL_PREFIX = "base_model.model."
#: ``LoraConfig``'s defaults, which PEFT uses for a key the JSON leaves out.
_DEFAULTS = {"r": 8, "lora_alpha": 8, "use_rslora": False}
_LAYERS = ("linear", "conv", "embed")
_ARRAY_NAMES = ("lora_a", "lora_b", "magnitude")


# -- the files ---------------------------------------------------------------------------------
def read_peft_checkpoint(directory) -> tuple[dict, dict[str, np.ndarray]]:
    """The config and tensors of a PEFT LoRA checkpoint directory.

    Args:
      directory: a directory holding ``adapter_config.json`` and ``adapter_model.safetensors``,
        as ``PeftModel.save_pretrained`` writes them.

    Returns:
      ``(config, tensors)``: the JSON object of ``adapter_config.json`` as a dict, and the
      tensors of ``adapter_model.safetensors`` as NumPy arrays in PyTorch's layouts, under
      PEFT's saved names (see the module docstring).

    Raises:
      FileNotFoundError: the directory or one of the two files is missing (a checkpoint saved
        with ``safe_serialization=False``, ``adapter_model.bin``, is a pickle and is not read).
      ValueError: a file that cannot be parsed, a config that is not a JSON object, or a
        ``peft_type`` other than ``"LORA"``.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory!r} is not a directory: a PEFT checkpoint is a "
                                f"directory holding {CONFIG_NAME} and {WEIGHTS_NAME}.")
    config_path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{config_path!r} not found: a PEFT checkpoint holds "
                                f"{CONFIG_NAME} and {WEIGHTS_NAME}.")
    with open(config_path, encoding="utf-8") as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{config_path!r} is not valid JSON: {e}.") from None
    _check_config(config, config_path)
    weights_path = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(weights_path):
        extra = ""
        if os.path.isfile(os.path.join(directory, "adapter_model.bin")):
            extra = (" (adapter_model.bin is there: a pickled PyTorch checkpoint, which is not "
                     "read; save it again with safe_serialization=True)")
        raise FileNotFoundError(f"{weights_path!r} not found{extra}: a PEFT checkpoint holds "
                                f"{CONFIG_NAME} and {WEIGHTS_NAME}.")
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{weights_path!r} is not a readable safetensors file: {e}.") from None
    return config, tensors


def write_peft_checkpoint(directory, config: dict, tensors: dict[str, np.ndarray]) -> None:
    """Writes a PEFT LoRA checkpoint that ``PeftModel.from_pretrained`` reads.

    Args:
      directory: where to write ``adapter_config.json`` and ``adapter_model.safetensors``
        (created if missing; the two files are replaced if present).
      config: the ``LoraConfig`` fields as a JSON-serializable dict. ``peft_type`` is set to
        ``"LORA"`` if missing and must be ``"LORA"`` if given; written with sorted keys and an
        indent of 2, as PEFT writes it.
      tensors: arrays in PyTorch's layouts under PEFT's saved names (see the module docstring;
        :func:`lora_to_peft` makes them), written with the metadata ``{"format": "pt"}`` as PEFT
        writes it.

    Raises:
      ValueError: a ``peft_type`` other than ``"LORA"``, or a config that is not JSON.
      TypeError: a config that is not a dict, or a tensor name that is not a string.
    """
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}.")
    config = dict(config)
    config.setdefault("peft_type", "LORA")
    _check_config(config, "config")
    try:
        text = json.dumps(config, indent=2, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"config cannot be written as JSON: {e}.") from None
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be strings, got {name!r}.")
        arrays[name] = np.ascontiguousarray(np.asarray(value))
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as f:
        f.write(text)
    save_file(arrays, os.path.join(directory, WEIGHTS_NAME), metadata={"format": "pt"})


def _check_config(config, where: str) -> None:
    if not isinstance(config, dict):
        raise ValueError(f"{where}: a PEFT config must be a JSON object, got "
                         f"{type(config).__name__}.")
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise ValueError(f"{where}: peft_type is {peft_type!r}; only LoRA checkpoints "
                         "(peft_type 'LORA', DoRA and rsLoRA included) are supported.")


# -- the scale ---------------------------------------------------------------------------------
def peft_scale(config: dict, prefix: str) -> float:
    """PEFT's scaling ``s`` of the LoRA update of the module ``prefix``: ``lora_alpha / r``, or
    ``lora_alpha / √r`` with ``use_rslora``.

    ``r`` and ``lora_alpha`` come from ``rank_pattern`` / ``alpha_pattern`` where one of their
    keys matches the module, as PEFT matches them: the first key ``k`` (in the dict's order)
    for which ``re.match(rf"(.*\\.)?({k})$", name)`` holds, ``name`` being the module's path in
    the base model (``prefix`` less a leading ``"base_model.model."``); otherwise the config's
    ``r`` and ``lora_alpha``. Keys the config leaves out take ``LoraConfig``'s defaults
    (``r = 8``, ``lora_alpha = 8``, ``use_rslora = False``), as PEFT does.

    Args:
      config: a LoRA config dict (:func:`read_peft_checkpoint`'s first result).
      prefix: the module's name in the saved tensors, e.g. ``"base_model.model.fc1"``.

    Example:
      >>> from tensorfact.nn._peft_format import peft_scale
      >>> config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "rank_pattern": {"fc2": 2}}
      >>> peft_scale(config, "base_model.model.fc1"), peft_scale(config, "base_model.model.fc2")
      (2.0, 4.0)
    """
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}.")
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a string, got {type(prefix).__name__}.")
    name = prefix[len(MODEL_PREFIX):] if prefix.startswith(MODEL_PREFIX) else prefix
    r = config.get("r", _DEFAULTS["r"])
    alpha = config.get("lora_alpha", _DEFAULTS["lora_alpha"])
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    r = rank_pattern.get(_pattern_key(rank_pattern, name), r)
    alpha = alpha_pattern.get(_pattern_key(alpha_pattern, name), alpha)
    if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r <= 0:
        raise ValueError(f"config: r for {name!r} must be a positive integer, got {r!r}.")
    if (isinstance(alpha, bool) or not isinstance(alpha, numbers.Real)
            or not math.isfinite(alpha)):
        raise ValueError(f"config: lora_alpha for {name!r} must be a finite number, got "
                         f"{alpha!r}.")
    use_rslora = config.get("use_rslora", _DEFAULTS["use_rslora"])
    return float(alpha) / (math.sqrt(r) if use_rslora else int(r))


def _pattern_key(patterns, name: str) -> str:
    """PEFT's ``get_pattern_key``: the first pattern matching the end of ``name`` at a dot
    boundary, else ``name`` itself."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", name):
            return key
    return name


# -- the layouts -------------------------------------------------------------------------------
def _keys(prefix: str, layer: str) -> tuple[str, str, str]:
    if layer == "embed":
        return (f"{prefix}.lora_embedding_A", f"{prefix}.lora_embedding_B",
                f"{prefix}.lora_magnitude_vector")
    return f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight", f"{prefix}.lora_magnitude_vector"


def _check_layer(layer) -> str:
    if layer not in _LAYERS:
        raise ValueError(f"layer must be one of {_LAYERS}, got {layer!r}.")
    return layer


def lora_from_peft(tensors: dict, prefix: str, *, layer: str = "linear") -> dict[str, np.ndarray]:
    """One layer's LoRA factors from PEFT's tensors, in tensorfact's layout.

    Args:
      tensors: PEFT's saved tensors (:func:`read_peft_checkpoint`'s second result), torch
        layouts.
      prefix: the module's name in them, e.g. ``"base_model.model.fc1"``: the keys read are
        ``f"{prefix}.lora_A.weight"``, ``f"{prefix}.lora_B.weight"`` (``layer="embed"``:
        ``f"{prefix}.lora_embedding_A"``, ``f"{prefix}.lora_embedding_B"``) and, if present,
        ``f"{prefix}.lora_magnitude_vector"`` (DoRA).
      layer: ``"linear"`` (``nn.Linear``), ``"conv"`` (``nn.Conv1d/2d/3d``) or ``"embed"``
        (``nn.Embedding``).

    Returns:
      ``{"lora_a": (rows, r), "lora_b": (r, out)}`` and, for DoRA, ``"magnitude": (out,)``:
      ``rows`` is ``in`` (linear), ``kh·kw·c_in`` row-major over ``(kh, kw, c_in)`` (conv, the
      rows of an ``nnx.Conv`` kernel as a matrix) or ``num_embeddings`` (embed); ``out`` is
      ``out_features``, ``c_out`` or ``features``. New arrays of the tensors' dtype; the layouts
      are in the module docstring. :func:`lora_to_peft` is the inverse, bit for bit.

    Raises:
      ValueError: a missing key (naming it), shapes that do not fit ``layer`` or each other, or
        a ``lora_B.bias`` (PEFT's ``lora_bias=True``, which tensorfact's LoRA does not have).

    Example:
      >>> import numpy as np
      >>> from tensorfact.nn._peft_format import lora_from_peft
      >>> t = {"m.lora_A.weight": np.ones((4, 6, 3, 3), np.float32),
      ...      "m.lora_B.weight": np.ones((8, 4, 1, 1), np.float32)}
      >>> {k: v.shape for k, v in lora_from_peft(t, "m", layer="conv").items()}
      {'lora_a': (54, 4), 'lora_b': (4, 8)}
    """
    layer = _check_layer(layer)
    key_a, key_b, key_m = _keys(prefix, layer)
    for key in (key_a, key_b):
        if key not in tensors:
            raise ValueError(_missing(tensors, prefix, key))
    if f"{prefix}.lora_B.bias" in tensors:
        raise ValueError(f"{prefix}.lora_B.bias is present (PEFT's lora_bias=True): tensorfact's "
                         "LoRA has no bias of its own.")
    a, b = np.asarray(tensors[key_a]), np.asarray(tensors[key_b])
    if layer == "conv":
        if a.ndim < 3 or b.ndim != a.ndim:
            raise ValueError(f"{key_a} of shape {a.shape} and {key_b} of shape {b.shape} are not "
                             "a convolution's LoRA (r, c_in, *kernel) and (c_out, r, 1, ...); "
                             "for a Linear use layer='linear'.")
        if any(d != 1 for d in b.shape[2:]):
            raise ValueError(f"{key_b} has shape {b.shape}: PEFT's conv lora_B is 1×1.")
        r = a.shape[0]
        n = a.ndim - 2
        lora_a = np.transpose(a, tuple(range(2, 2 + n)) + (1, 0)).reshape(-1, r)
        lora_b = b.reshape(b.shape[:2]).T
    else:
        if a.ndim != 2 or b.ndim != 2:
            hint = " (for a convolution use layer='conv')" if layer == "linear" else ""
            raise ValueError(f"{key_a} of shape {a.shape} and {key_b} of shape {b.shape} must "
                             f"be matrices{hint}.")
        r = a.shape[0]
        lora_a, lora_b = a.T, b.T
    if lora_b.shape[0] != r:
        raise ValueError(f"{key_a} of shape {a.shape} has rank {r} but {key_b} of shape "
                         f"{b.shape} has rank {lora_b.shape[0]}.")
    out = {"lora_a": np.ascontiguousarray(lora_a), "lora_b": np.ascontiguousarray(lora_b)}
    if key_m in tensors:
        m = np.asarray(tensors[key_m])
        n_out = lora_b.shape[1]
        if m.size != n_out or (layer == "conv" and m.shape != (1, n_out) + (1,) * (m.ndim - 2)) \
                or (layer != "conv" and m.shape != (n_out,)):
            raise ValueError(f"{key_m} has shape {m.shape}, which does not fit {n_out} output "
                             "features.")
        out["magnitude"] = np.ascontiguousarray(m.reshape(n_out))
    return out


def lora_to_peft(arrays: dict, prefix: str, *, layer: str = "linear",
                 kernel_size=None) -> dict[str, np.ndarray]:
    """PEFT's saved tensors of one layer from tensorfact's LoRA factors: the inverse of
    :func:`lora_from_peft`.

    Args:
      arrays: ``{"lora_a": (rows, r), "lora_b": (r, out)}`` and optionally
        ``"magnitude": (out,)`` (DoRA), NumPy or JAX arrays in tensorfact's layout.
      prefix: the module's name in PEFT's tensors, e.g. ``"base_model.model.fc1"``.
      layer: ``"linear"``, ``"conv"`` or ``"embed"``.
      kernel_size: for ``layer="conv"``, the spatial size of the kernel (``(kh, kw)`` for a
        Conv2d; an ``nnx.Conv`` kernel's ``shape[:-2]``), which ``rows = kh·kw·c_in`` does not
        tell; not taken for the other layers.

    Returns:
      ``{f"{prefix}.lora_A.weight": (r, in), f"{prefix}.lora_B.weight": (out, r)}`` (conv:
      ``(r, c_in, kh, kw)`` and ``(c_out, r, 1, 1)``; embed: ``f"{prefix}.lora_embedding_A"``
      ``(r, num)`` and ``f"{prefix}.lora_embedding_B"`` ``(features, r)``), with
      ``f"{prefix}.lora_magnitude_vector"`` (``(out,)``; conv: ``(1, c_out, 1, 1)``) when a
      magnitude is given. New contiguous arrays of the inputs' dtype.

    Example:
      >>> import numpy as np
      >>> from tensorfact.nn._peft_format import lora_from_peft, lora_to_peft
      >>> arrays = {"lora_a": np.ones((54, 4), np.float32), "lora_b": np.ones((4, 8), np.float32)}
      >>> t = lora_to_peft(arrays, "m", layer="conv", kernel_size=(3, 3))
      >>> {k: v.shape for k, v in t.items()}
      {'m.lora_A.weight': (4, 6, 3, 3), 'm.lora_B.weight': (8, 4, 1, 1)}
    """
    layer = _check_layer(layer)
    unknown = sorted(set(arrays) - set(_ARRAY_NAMES))
    if unknown:
        raise ValueError(f"arrays has unknown names {unknown}; expected {_ARRAY_NAMES}.")
    for name in ("lora_a", "lora_b"):
        if name not in arrays:
            raise ValueError(f"arrays has no {name!r}.")
    a, b = np.asarray(arrays["lora_a"]), np.asarray(arrays["lora_b"])
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"lora_a of shape {a.shape} and lora_b of shape {b.shape} must be "
                         "matrices (rows, r) and (r, out).")
    r, n_out = b.shape
    key_a, key_b, key_m = _keys(prefix, layer)
    if layer == "conv":
        if kernel_size is None:
            raise ValueError("kernel_size is required for layer='conv' (e.g. (3, 3) for a "
                             "Conv2d): the rows of lora_a do not tell it.")
        kernel_size = tuple(int(k) for k in np.atleast_1d(kernel_size))
        cells = math.prod(kernel_size)
        if min(kernel_size) <= 0 or a.shape[0] % cells:
            raise ValueError(f"lora_a has {a.shape[0]} rows, which is not "
                             f"prod(kernel_size) * c_in for kernel_size = {kernel_size}.")
        n = len(kernel_size)
        t_a = a.reshape(kernel_size + (a.shape[0] // cells, r))
        t_a = np.transpose(t_a, (n + 1, n) + tuple(range(n)))
        t_b = b.T.reshape((n_out, r) + (1,) * n)
    else:
        if kernel_size is not None:
            raise ValueError(f"kernel_size is for layer='conv' only, got {kernel_size!r} with "
                             f"layer={layer!r}.")
        t_a, t_b = a.T, b.T
    out = {key_a: np.ascontiguousarray(t_a), key_b: np.ascontiguousarray(t_b)}
    if "magnitude" in arrays:
        m = np.asarray(arrays["magnitude"])
        if m.shape != (n_out,):
            raise ValueError(f"magnitude has shape {m.shape}; expected ({n_out},).")
        shape = (1, n_out) + (1,) * len(kernel_size) if layer == "conv" else (n_out,)
        out[key_m] = np.ascontiguousarray(m.reshape(shape))
    return out


def _missing(tensors, prefix: str, key: str) -> str:
    near = sorted(k for k in tensors if k.startswith(prefix + "."))
    message = f"no tensor {key!r}"
    if any(".default." in k or k.endswith(".default") for k in near):
        message += (" (the tensors carry the adapter name '.default.': a live model's "
                    "state_dict(); PEFT's saved names, from get_peft_model_state_dict or "
                    "save_pretrained, drop it)")
    if near:
        return f"{message}; under {prefix!r} there are {near}."
    return f"{message}, and none under {prefix!r}."
