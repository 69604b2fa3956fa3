"""The tubal (t-product) family: third-order tensors as matrices of tubes.

Under the t-product of Kilmer & Martin (2011) a tensor of shape ``(n1, n2, n3)`` acts like an
``n1 × n2`` matrix whose entries are tubes of length ``n3``: after a transform along the tubes
(the FFT by default; the DCT or any invertible matrix) the t-product is a product of frontal
slices, and the matrix toolbox carries over slice by slice.

* algebra: :func:`product`, :func:`transpose`, :func:`identity`, :func:`inverse`, :func:`norm`,
  and the transform itself (:func:`to_transform_domain`, :func:`from_transform_domain`,
  :func:`frequency_weights`, :func:`facewise`, :class:`Transform`);
* the t-SVD: :func:`svd` (a :class:`~tensorfact.TSVDTensor`, truncated when ``rank`` is given),
  :func:`rank` (the tubal rank), :func:`tnn` (the tensor nuclear norm) and its :func:`prox`;
* fits: :func:`rpca` (tensor robust PCA), :func:`complete` (low-tubal-rank completion),
  :func:`factorize_gd` (gradient descent on ``X = L * Rᵀ`` from measurements or entries),
  with :func:`gaussian_measurements`, :func:`measure`, :func:`loss`, :func:`effective_rank`
  and :func:`singular_tube_norms`.

Example:
  >>> import jax, tensorfact as tfa
  >>> x = jax.random.normal(jax.random.key(0), (6, 5, 4))
  >>> y = tfa.tubal.product(x, tfa.tubal.transpose(x))     # (6, 6, 4)
  >>> t = tfa.tubal.svd(x, rank=2)                         # TSVDTensor
  >>> y.shape, t.shape
  ((6, 6, 4), (6, 5, 4))
"""

from tensorfact._tproduct import Transform, facewise, frequency_weights, from_transform_domain
from tensorfact._tproduct import tidentity as identity
from tensorfact._tproduct import tinv as inverse
from tensorfact._tproduct import tnorm as norm
from tensorfact._tproduct import to_transform_domain
from tensorfact._tproduct import tprod as product
from tensorfact._tproduct import ttranspose as transpose
from tensorfact.tensors import TSVDTensor
from tensorfact.tubal._decompositions import prox_tnn as prox
from tensorfact.tubal._decompositions import tnn
from tensorfact.tubal._decompositions import trpca as rpca
from tensorfact.tubal._decompositions import tsvd as svd
from tensorfact.tubal._decompositions import tubal_complete as complete
from tensorfact.tubal._decompositions import tubal_rank as rank
from tensorfact.tubal._factorize import TubalFactors, TubalHistory, singular_tube_norms
from tensorfact.tubal._factorize import effective_tubal_rank as effective_rank
from tensorfact.tubal._factorize import tubal_factorize_gd as factorize_gd
from tensorfact.tubal._factorize import tubal_gaussian_measurements as gaussian_measurements
from tensorfact.tubal._factorize import tubal_loss as loss
from tensorfact.tubal._factorize import tubal_measure as measure

__all__ = [
    "Transform", "to_transform_domain", "from_transform_domain", "frequency_weights", "facewise",
    "product", "transpose", "identity", "inverse", "norm",
    "TSVDTensor", "svd", "rank", "tnn", "prox", "rpca", "complete",
    "TubalFactors", "TubalHistory", "factorize_gd", "gaussian_measurements", "measure", "loss",
    "effective_rank", "singular_tube_norms",
]
