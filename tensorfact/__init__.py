"""tensorfact: compiled tensor and matrix factorizations in JAX.

Every decomposition is a pure function that compiles with ``jax.jit``, maps over batches with
``jax.vmap`` and (with a fixed iteration count) differentiates with ``jax.grad``::

    import jax, tensorfact as tfa
    x = tfa.random_cp(jax.random.key(0), (30, 40, 50), rank=5).to_dense()
    cp = tfa.cp(x, 5)                    # CPTensor
    tk = tfa.tucker(x, (5, 5, 5))        # TuckerTensor
    print(tfa.relative_error(x, cp.to_dense()), tk.n_params, tk.norm())
"""

from tensorfact import (algebra, constraints, decomposition, diagnostics, interop, kernels,
                        metrics, optim, random, ranks, sharding, tensors, tubal)
from tensorfact.algebra import (fold, khatri_rao, kronecker, mode_dot, mttkrp, multi_mode_dot,
                                partial_mttkrp, unfold)
from tensorfact.interop import from_tensorly, to_tensorly
from tensorfact.decomposition import (CMTFInfo, CPInfo, FitInfo, GCPInfo, GDInfo, TTCrossInfo,
                                      cmtf, complete, constrained_cp, cp, cp_apr, cur,
                                      factorize_gd, gaussian_measurements, gcp, measure, nmf,
                                      parafac2, rpca, svd, tensor_ring, tt, tt_cross, tt_matrix,
                                      tt_round, tucker)
from tensorfact.metrics import fit, relative_error
from tensorfact.random import noisy, random_cp, random_tucker
from tensorfact._sparse import sparse_tensor
from tensorfact.ranks import effective_rank, rank_for_energy, rank_for_params, stable_rank
from tensorfact.tensors import (CPTensor, CURMatrix, FactorizedTensor, LowRankMatrix, TRTensor,
                                TSVDTensor, TTMatrix, TTTensor, TuckerTensor, Parafac2Tensor)
from tensorfact.tensors._tt import (tt_add, tt_gather, tt_hadamard, tt_inner, tt_matmul,
                                    tt_orthogonalize, tt_scale)
from tensorfact.tubal import TubalFactors

__version__ = "0.2.0"


def __getattr__(name):
    # tensorfact.nn (Flax NNX layers and adapters) loads Flax: import it on first use only
    if name == "nn":
        import importlib
        return importlib.import_module("tensorfact.nn")
    raise AttributeError(f"module 'tensorfact' has no attribute {name!r}")

__all__ = [
    # types
    "FactorizedTensor", "CPTensor", "TuckerTensor", "TTTensor", "TTMatrix", "TRTensor",
    "LowRankMatrix", "CURMatrix", "TSVDTensor", "TubalFactors", "Parafac2Tensor",
    # info types (one family: n_iter, errors, rel_error, converged, then their own fields)
    "FitInfo", "CPInfo", "GDInfo", "TTCrossInfo", "CMTFInfo", "GCPInfo",
    # decompositions
    "cp", "constrained_cp", "cmtf", "tucker", "tt", "tt_matrix", "tt_round", "tensor_ring",
    "tt_cross",
    "svd", "nmf", "cur", "complete", "rpca", "factorize_gd", "gaussian_measurements", "measure",
    "gcp", "cp_apr", "parafac2",
    # tensor-train arithmetic
    "tt_add", "tt_scale", "tt_hadamard", "tt_inner", "tt_orthogonalize", "tt_gather", "tt_matmul",
    # algebra, metrics, ranks, planted data
    "unfold", "fold", "mode_dot", "multi_mode_dot", "khatri_rao", "kronecker", "mttkrp",
    "partial_mttkrp", "sparse_tensor", "relative_error", "fit", "stable_rank", "effective_rank",
    "rank_for_energy", "rank_for_params", "random_cp", "random_tucker", "noisy",
    # interop
    "to_tensorly", "from_tensorly",
    # namespaces
    "algebra", "constraints", "decomposition", "diagnostics", "interop", "kernels", "metrics", "nn",
    "optim", "random", "ranks", "sharding", "tensors", "tubal",
]
