"""Decompositions: pure functions returning factorized types, one private module per family
(``_cp.py``, ``_tucker.py``, ``_tt.py``, …) re-exported here. The tubal family lives in
:mod:`tensorfact.tubal`."""

from tensorfact.decomposition._completion import complete, rpca
from tensorfact.decomposition._cmtf import CMTFInfo, cmtf
from tensorfact.decomposition._constrained_cp import constrained_cp
from tensorfact.decomposition._cp import cp
from tensorfact.decomposition._cp_apr import cp_apr
from tensorfact.decomposition._cur import cur
from tensorfact.decomposition._loop import CPInfo, FitInfo
from tensorfact.decomposition._nmf import nmf
from tensorfact.decomposition._gcp import GCPInfo, gcp
from tensorfact.decomposition._parafac2 import parafac2
from tensorfact.decomposition._gradient_fit import GDInfo
from tensorfact.decomposition._sensing import factorize_gd, gaussian_measurements, measure
from tensorfact.decomposition._svd import svd
from tensorfact.decomposition._tensor_ring import tensor_ring
from tensorfact.decomposition._tt import tt, tt_matrix, tt_round
from tensorfact.decomposition._tt_cross import tt_cross, TTCrossInfo
from tensorfact.decomposition._tucker import tucker

__all__ = ["FitInfo", "CPInfo", "GDInfo", "GCPInfo", "TTCrossInfo", "CMTFInfo", "cmtf",
           "complete", "constrained_cp", "cp", "cp_apr", "gcp", "cur", "factorize_gd",
           "gaussian_measurements", "measure", "nmf", "rpca", "svd", "tucker", "tt", "tt_matrix",
           "tt_round", "tensor_ring", "tt_cross", "parafac2"]
