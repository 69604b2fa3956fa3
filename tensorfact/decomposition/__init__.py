"""Decompositions: one module per family, each a pure function returning a factorized type."""

from tensorfact.decomposition._loop import FitInfo
from tensorfact.decomposition.completion import complete, rpca
from tensorfact.decomposition.cp import cp
from tensorfact.decomposition.cur import cur
from tensorfact.decomposition.nmf import nmf
from tensorfact.decomposition.sensing import (SensingHistory, factorize_gd,
                                              gaussian_measurements, measure)
from tensorfact.decomposition.svd import svd
from tensorfact.decomposition.tensor_ring import tensor_ring
from tensorfact.decomposition.tt_cross import tt_cross, tt_cross_n_evals
from tensorfact.decomposition.tubal import (prox_tnn, tnn, trpca, tsvd, tubal_complete,
                                             tubal_rank)
from tensorfact.decomposition.tubal_factorization import (TubalFactors, TubalHistory,
                                                           effective_tubal_rank,
                                                           singular_tube_norms,
                                                           tubal_factorize_gd,
                                                           tubal_gaussian_measurements,
                                                           tubal_loss, tubal_measure)
from tensorfact.decomposition.tt import tt, tt_matrix, tt_round
from tensorfact.decomposition.tucker import tucker

__all__ = ["FitInfo", "SensingHistory", "complete", "cp", "cur", "factorize_gd",
           "gaussian_measurements", "measure", "nmf", "prox_tnn", "rpca", "svd", "tnn", "trpca",
           "tsvd", "tubal_complete", "tubal_rank", "tucker", "tt", "tt_matrix", "tt_round",
           "tensor_ring", "tt_cross", "tt_cross_n_evals",
           "TubalFactors", "TubalHistory", "effective_tubal_rank", "singular_tube_norms",
           "tubal_factorize_gd", "tubal_gaussian_measurements", "tubal_loss", "tubal_measure"]
