"""Optax transforms and regularisers for low-rank and sparse training.

* :func:`proximal_nuclear` and :func:`proximal_l1`: Optax ``GradientTransformation`` s that turn
  a gradient step into a proximal-gradient step (Parikh & Boyd, "Proximal Algorithms",
  Foundations and Trends in Optimization 1(3), 2014, §4.2) for the nuclear norm (singular value
  thresholding; Cai, Candès & Shen, "A singular value thresholding algorithm for matrix
  completion", SIAM J. Optim. 20(4), 2010) and the ℓ1 norm (soft thresholding; e.g. the tensor
  lasso on CP weights). Chain them *last*, after the optimizer that produces the step::

      tx = optax.chain(optax.sgd(lr), tfa.optim.proximal_nuclear(lam, lr))

* :func:`nuclear_norm` and :func:`l1_penalty`: the same penalties as loss terms (subgradient
  training instead of proximal steps).
* :func:`tensor_dropout`: randomised rank dropout of CP, Tucker and TT tensors (Kolbeinsson et
  al., "Tensor dropout for robust learning", IEEE J. Sel. Topics Signal Process. 15(3), 2021).
* :func:`layer_stable_ranks`: stable ranks of every 2-D leaf of a parameter tree, the signal
  Cuttlefish (Wang et al., "Cuttlefish: Low-rank model training without all the tuning", MLSys
  2023) watches to decide when and at what rank to factorize dense layers.
* :func:`stable_rank_monitor`: an Optax transform that passes updates through and keeps those
  stable ranks (and their relative change) in its state during training;
  :func:`suggest_factorization` reads Cuttlefish's decision from that state: whether every
  layer's stable rank has settled, and the rank to factorize each layer at.
* :func:`galore`: GaLore (Zhao et al., ICML 2024) around any Optax transformation: gradients
  projected into a low-rank subspace, refreshed every ``update_proj_gap`` steps by an SVD.
* :func:`smmf`: SMMF (Park & Lee, AAAI 2025): Adam-like steps whose two moments are stored as
  rank-one factors of the square-matricized parameter (and one sign bit per entry).
* :func:`state_bytes`: the bytes an optimizer state holds, in total or per leaf.
"""

from tensorfact.optim._galore import GaLoreState, galore
from tensorfact.optim._memory import state_bytes
from tensorfact.optim._regularization import (FactorizationSuggestion, ProximalState,
                                              StableRankState, l1_penalty, layer_stable_ranks,
                                              nuclear_norm, proximal_l1, proximal_nuclear,
                                              stable_rank_monitor, suggest_factorization,
                                              tensor_dropout)
from tensorfact.optim._smmf import SMMFState, scale_by_smmf, smmf

__all__ = ["ProximalState", "proximal_nuclear", "proximal_l1", "nuclear_norm", "l1_penalty",
           "tensor_dropout", "layer_stable_ranks", "StableRankState", "stable_rank_monitor",
           "FactorizationSuggestion", "suggest_factorization", "GaLoreState", "galore",
           "SMMFState", "scale_by_smmf", "smmf", "state_bytes"]
