"""Decompositions: one module per family, each a pure function returning a factorized type."""

from tensorfact.decomposition._loop import FitInfo
from tensorfact.decomposition.completion import complete, rpca
from tensorfact.decomposition.cp import cp
from tensorfact.decomposition.cur import cur
from tensorfact.decomposition.nmf import nmf
from tensorfact.decomposition.sensing import (SensingHistory, factorize_gd,
                                              gaussian_measurements, measure)
from tensorfact.decomposition.svd import svd
from tensorfact.decomposition.tucker import tucker

__all__ = ["FitInfo", "SensingHistory", "complete", "cp", "cur", "factorize_gd",
           "gaussian_measurements", "measure", "nmf", "rpca", "svd", "tucker"]
