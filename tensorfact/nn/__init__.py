"""Flax NNX layers built on the decompositions: factorized dense layers and LoRA-family adapters.

* :class:`FactorizedDense`: ``nnx.Linear`` with a low-rank, CP, Tucker or TT kernel, trained
  from scratch or initialised from a trained layer by :meth:`FactorizedDense.from_layer`.
* :class:`LoRA` (Gaussian, PiSSA, OLoRA initialisations), :class:`DoRA`, :class:`LoKr`,
  :class:`LoHa`: adapters around a frozen ``nnx.Linear`` or ``nnx.Conv`` whose trainable
  parameters are ``nnx.LoRAParam``, so ``nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)`` trains
  only them; each starts at the base layer's output and ``merge()`` folds it into a plain
  ``nnx.Linear`` / ``nnx.Conv``. :func:`principal_split` computes the PiSSA / OLoRA start of
  a stack or list of same-shaped layers as one program, for ``LoRA(..., split=...)``
  (:meth:`LoRA.from_layers` does both).
* :class:`TTAdapter` (LoRETTA: a TT-matrix update of an ``nnx.Linear``) and
  :class:`TuckerAdapter` (FLoRA: a Tucker update over all modes of an ``nnx.Conv`` kernel).
* :mod:`~tensorfact.nn.checkpoint`: ``save`` / ``restore`` of any of these models with Orbax.
* :class:`TTEmbed`: an embedding table held as a TT-matrix, looked up without forming it.
* :class:`CURDense`: a dense layer held as actual columns and rows of its kernel (CUR).
* :func:`acip`: ACIP scores of every singular value of a model, from one training run; any
  compression ratio is then cut from them by ``compress(method="acip", ...)``.
* :func:`compress`: replaces a model's ``nnx.Linear`` and ``nnx.Conv`` layers by factorized
  ones fitted to them, with a :class:`CompressionReport` of parameters and errors.
* :class:`FactorizedConv`: ``nnx.Conv`` with a Tucker-2 or CP kernel, run as a chain of small
  convolutions, trained from scratch or fitted to a trained layer by
  :meth:`FactorizedConv.from_layer`.
* :class:`TensorProductAttention`, :class:`MultiMatrixFactorizationAttention` and the
  baseline :class:`MultiHeadAttention`: causal attention with one decode interface
  (``init_cache``, ``decode_step``, ``cache_bytes_per_token``), caching factors (TPA) or one
  shared key/value head (MFA) instead of every head's keys and values.
* :class:`MultilinearMoE`: a soft mixture of many linear experts held as one CP or
  tensor-ring tensor, never formed.
* :class:`TRL`, :class:`TCL` and :class:`FactorizedEmbed`: tensor regression and contraction
  layers, and an embedding table in CP, Tucker or TT form looked up without forming it.

Every layer speaks one vocabulary (``docs/glossary.md``): ``dense_weight()`` is the array the
plain layer would hold (for an adapter, base plus update), ``to_layer()`` a plain ``nnx.Linear``
/ ``nnx.Conv`` / ``nnx.Embed`` computing the same function, ``Layer.from_layer(plain, ...)`` a
factorized layer fitted to a plain one; adapters add ``delta_weight()`` (the update alone) and
``merge()`` (the base with the update folded in). ``contraction="auto" | "factorized" |
"dense"`` says whether a factorized layer contracts its input with the factors or with the
rebuilt weight, ``impl`` only which kernel runs a contraction, and ``precision=None`` is JAX's
default, as in Flax.
"""

from tensorfact.nn._acip import ACIPMask, ACIPScores, acip
from tensorfact.nn._adapters import DoRA, LoHa, LoKr, LoRA, principal_split
from tensorfact.nn._base import AdapterBuffer, LoRAParam
from tensorfact.nn._compress import CompressionReport, LayerReport, compress
from tensorfact.nn._conv import FactorizedConv
from tensorfact.nn._cur import CURDense
from tensorfact.nn._common import balanced_factors
from tensorfact.nn._dense import FactorizedDense
from tensorfact.nn._embed import TTEmbed
from tensorfact.nn._model_adapters import (ADAPTER_KINDS, AdaptedLayer, AdaptedLayerReport,
                                            AdapterReport, AdapterRule, adapter_filter,
                                            adapter_state, apply_adapters, disable_adapters,
                                            disabled, enable_adapters, load_adapter,
                                            merge_adapters, save_adapter, set_active)
from tensorfact.nn._peft import load_peft, save_peft
from tensorfact.nn._research_adapters import NOLA, KronAdapter, LoRAXS, VeRA
from tensorfact.nn._tensor_adapters import TTAdapter, TuckerAdapter
from tensorfact.nn._tensor_layers import TCL, TRL, FactorizedEmbed
from tensorfact.nn._attention import (AttentionCache, MultiHeadAttention,
                                       MultiMatrixFactorizationAttention, TensorProductAttention)
from tensorfact.nn._moe import MultilinearMoE
from tensorfact.nn import checkpoint  # the submodule: checkpoint.save / checkpoint.restore

__all__ = ["FactorizedDense", "FactorizedConv", "balanced_factors", "LoRA", "DoRA", "LoKr",
           "LoHa", "LoRAParam", "TTEmbed", "TTAdapter", "TuckerAdapter", "checkpoint",
           "compress", "CompressionReport", "LayerReport", "CURDense", "acip", "ACIPScores",
           "ACIPMask", "LoRAXS", "KronAdapter", "VeRA", "NOLA", "AdapterBuffer",
           "AdapterRule", "AdaptedLayer", "AdapterReport", "AdaptedLayerReport",
           "apply_adapters", "set_active", "disable_adapters", "enable_adapters", "disabled",
           "merge_adapters", "adapter_state", "load_adapter", "save_adapter", "adapter_filter",
           "ADAPTER_KINDS", "load_peft", "save_peft", "principal_split"]
__all__ += ["TCL", "TRL", "FactorizedEmbed", "MultilinearMoE", "TensorProductAttention",
            "MultiMatrixFactorizationAttention", "MultiHeadAttention", "AttentionCache"]
