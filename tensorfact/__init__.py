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
from tensorfact.algebra import (fold, khatri_rao, kronecker, mode_dot, mttkrp, multi_mode_dot,
                                partial_mttkrp, unfold)
from tensorfact.decomposition import (FitInfo, SensingHistory, complete, cp, cur, factorize_gd,
                                      gaussian_measurements, measure, nmf, rpca, svd, tucker)
from tensorfact.metrics import fit, relative_error
from tensorfact.random import noisy, random_cp, random_tucker
from tensorfact.ranks import effective_rank, rank_for_energy, rank_for_params, stable_rank
from tensorfact.tproduct import tidentity, tinv, tnorm, tprod, ttranspose
from tensorfact.tensors import CPTensor, CURMatrix, FactorizedTensor, LowRankMatrix, TuckerTensor

__version__ = "0.1.0"

__all__ = [
    "CPTensor", "CURMatrix", "FactorizedTensor", "FitInfo", "LowRankMatrix", "SensingHistory",
    "TuckerTensor", "factorize_gd", "gaussian_measurements", "measure",
    "algebra", "complete", "cp", "cur", "decomposition", "effective_rank", "fit", "fold",
    "kernels", "khatri_rao", "kronecker", "metrics", "mode_dot", "mttkrp", "multi_mode_dot",
    "nmf", "noisy", "partial_mttkrp",
    "random", "random_cp", "random_tucker", "rank_for_energy", "rank_for_params", "ranks",
    "relative_error", "rpca", "stable_rank", "svd", "tensors", "tucker", "unfold",
    "tproduct", "tprod", "ttranspose", "tidentity", "tinv", "tnorm",
]
