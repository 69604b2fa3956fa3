"""tensorfact: compiled tensor and matrix factorizations in JAX.

Every decomposition is a pure function that compiles with ``jax.jit``, maps over batches with
``jax.vmap`` and (with a fixed iteration count) differentiates with ``jax.grad``::

    import jax, tensorfact as tfa
    x = tfa.random_cp(jax.random.key(0), (30, 40, 50), rank=5).to_dense()
    cp = tfa.cp(x, 5)                    # CPTensor
    tk = tfa.tucker(x, (5, 5, 5))        # TuckerTensor
    print(tfa.relative_error(x, cp.to_dense()), tk.n_params, tk.norm())
"""

from tensorfact import (algebra, decomposition, kernels, metrics, random, ranks, tensors,
                        tproduct)
from tensorfact import optim, sharding
from tensorfact.algebra import (fold, khatri_rao, kronecker, mode_dot, mttkrp, multi_mode_dot,
                                partial_mttkrp, unfold)
from tensorfact.decomposition import (FitInfo, SensingHistory, complete, cp, cur, factorize_gd,
                                      gaussian_measurements, measure, nmf, prox_tnn, rpca, svd,
                                      tnn, trpca, tsvd, tubal_complete, tubal_rank, tucker)
from tensorfact.decomposition.tt import tt, tt_matrix, tt_round
from tensorfact.decomposition.tensor_ring import tensor_ring
from tensorfact.decomposition.tt_cross import tt_cross, tt_cross_n_evals
from tensorfact.decomposition.tubal_factorization import (TubalFactors, TubalHistory,
                                                           effective_tubal_rank,
                                                           singular_tube_norms,
                                                           tubal_factorize_gd,
                                                           tubal_gaussian_measurements,
                                                           tubal_loss, tubal_measure)
from tensorfact.tensors.tr import TRTensor
from tensorfact.metrics import fit, relative_error
from tensorfact.random import noisy, random_cp, random_tucker
from tensorfact.ranks import effective_rank, rank_for_energy, rank_for_params, stable_rank
from tensorfact.tensors.tt import (TTMatrix, TTTensor, tt_add, tt_gather, tt_hadamard, tt_inner,
                                   tt_matmul, tt_orthogonalize, tt_scale)
from tensorfact.tproduct import tidentity, tinv, tnorm, tprod, ttranspose
from tensorfact.tensors import (CPTensor, CURMatrix, FactorizedTensor, LowRankMatrix, TSVDTensor,
                                TuckerTensor)

__version__ = "0.1.0"


def __getattr__(name):
    # tensorfact.nn (Flax NNX layers and adapters) loads Flax: import it on first use only
    if name == "nn":
        import importlib
        return importlib.import_module("tensorfact.nn")
    raise AttributeError(f"module 'tensorfact' has no attribute {name!r}")

__all__ = [
    "CPTensor", "CURMatrix", "FactorizedTensor", "FitInfo", "LowRankMatrix", "SensingHistory",
    "TuckerTensor", "factorize_gd", "gaussian_measurements", "measure",
    "algebra", "complete", "cp", "cur", "decomposition", "effective_rank", "fit", "fold",
    "kernels", "khatri_rao", "kronecker", "metrics", "mode_dot", "mttkrp", "multi_mode_dot",
    "nmf", "noisy", "partial_mttkrp",
    "random", "random_cp", "random_tucker", "rank_for_energy", "rank_for_params", "ranks",
    "relative_error", "rpca", "stable_rank", "svd", "tensors", "tucker", "unfold",
    "tproduct", "tprod", "ttranspose", "tidentity", "tinv", "tnorm",
    "TSVDTensor", "tsvd", "tubal_rank", "tnn", "prox_tnn", "trpca", "tubal_complete",
    "TTTensor", "TTMatrix", "tt", "tt_matrix", "tt_round", "tt_add", "tt_scale", "tt_hadamard",
    "tt_inner", "tt_orthogonalize", "tt_gather", "tt_matmul",
    "TRTensor", "tensor_ring", "tt_cross", "tt_cross_n_evals",
    "TubalFactors", "TubalHistory", "effective_tubal_rank", "singular_tube_norms",
    "tubal_factorize_gd", "tubal_gaussian_measurements", "tubal_loss", "tubal_measure",
    "nn", "optim", "sharding",
]
