"""Factorized tensor types (registered pytrees with ``to_dense``, ``norm``, ``n_params``)."""

from tensorfact.tensors.base import FactorizedTensor
from tensorfact.tensors.cp import CPTensor
from tensorfact.tensors.cur import CURMatrix
from tensorfact.tensors.lowrank import LowRankMatrix
from tensorfact.tensors.tr import TRTensor
from tensorfact.tensors.tsvd import TSVDTensor
from tensorfact.tensors.tt import TTMatrix, TTTensor
from tensorfact.tensors.tucker import TuckerTensor

__all__ = ["FactorizedTensor", "CPTensor", "CURMatrix", "LowRankMatrix", "TRTensor", "TSVDTensor",
           "TTMatrix", "TTTensor", "TuckerTensor"]
