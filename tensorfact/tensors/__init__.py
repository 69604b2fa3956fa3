"""Factorized tensor types (registered pytrees with ``to_dense``, ``norm``, ``n_params``), one
private module per format re-exported here; ``_base.py`` holds what a new format builds on."""

from tensorfact.tensors._base import FactorizedTensor
from tensorfact.tensors._cp import CPTensor
from tensorfact.tensors._cur import CURMatrix
from tensorfact.tensors._lowrank import LowRankMatrix
from tensorfact.tensors._parafac2 import Parafac2Tensor
from tensorfact.tensors._tr import TRTensor
from tensorfact.tensors._tsvd import TSVDTensor
from tensorfact.tensors._tt import TTMatrix, TTTensor
from tensorfact.tensors._tubal import TubalFactors
from tensorfact.tensors._tucker import TuckerTensor

__all__ = ["FactorizedTensor", "CPTensor", "CURMatrix", "LowRankMatrix", "TRTensor", "TSVDTensor",
           "TTMatrix", "TTTensor", "TubalFactors", "TuckerTensor", "Parafac2Tensor"]
