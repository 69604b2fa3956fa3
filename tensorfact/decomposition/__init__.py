"""Decompositions: one module per family, each a pure function returning a factorized type."""

from tensorfact.decomposition._loop import FitInfo
from tensorfact.decomposition.completion import complete, rpca
from tensorfact.decomposition.cp import cp
from tensorfact.decomposition.cur import cur
from tensorfact.decomposition.nmf import nmf
from tensorfact.decomposition.svd import svd
from tensorfact.decomposition.tucker import tucker

__all__ = ["FitInfo", "complete", "cp", "cur", "nmf", "rpca", "svd", "tucker"]
