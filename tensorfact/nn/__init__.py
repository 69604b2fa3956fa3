"""Flax NNX layers built on the decompositions: factorized dense layers and LoRA-family adapters.

* :class:`FactorizedDense`: ``nnx.Linear`` with a low-rank, CP, Tucker or TT kernel, trained
  from scratch or initialised from a trained layer by :meth:`FactorizedDense.from_dense`.
* :class:`LoRA` (Gaussian, PiSSA, OLoRA initialisations), :class:`DoRA`, :class:`LoKr`,
  :class:`LoHa`: adapters around a frozen ``nnx.Linear`` whose trainable parameters are
  ``nnx.LoRAParam``, so ``nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)`` trains only them; each
  starts at the base layer's output and ``merge()`` folds it into a plain ``nnx.Linear``.
* :class:`TTEmbed`: an embedding table held as a TT-matrix, looked up without forming it.
* :func:`compress`: replaces a model's ``nnx.Linear`` layers by factorized ones fitted to them,
  with a :class:`CompressionReport` of parameters and errors.
"""

from tensorfact.nn.adapters import DoRA, LoHa, LoKr, LoRA, LoRAParam
from tensorfact.nn.compress import CompressionReport, LayerReport, compress
from tensorfact.nn.dense import FactorizedDense, balanced_factors
from tensorfact.nn.embed import TTEmbed

__all__ = ["FactorizedDense", "balanced_factors", "LoRA", "DoRA", "LoKr", "LoHa", "LoRAParam",
           "TTEmbed", "compress", "CompressionReport", "LayerReport"]
