"""The tubal (t-product) family: third-order tensors as matrices of tubes.

Under the t-product of Kilmer & Martin (2011) a tensor of shape ``(n1, n2, n3)`` acts like an
``n1 × n2`` matrix whose entries are tubes of length ``n3``: after a transform along the tubes
(the FFT by default; the DCT or any invertible matrix) the t-product is a product of frontal
slices, and the matrix toolbox carries over slice by slice.

Every function takes one tensor ``(n1, n2, n3)``; ``jax.vmap`` maps it over a batch.

* algebra: :func:`product`, :func:`transpose`, :func:`identity`, :func:`inverse`, :func:`norm`,
  and the transform itself (:func:`to_transform_domain`, :func:`from_transform_domain`,
  :func:`frequency_weights`, :func:`facewise`, :class:`Transform`);
* the t-SVD: :func:`svd` (a :class:`~tensorfact.TSVDTensor`, truncated when ``rank`` is given),
  :func:`rank` (the tubal rank), :func:`tnn` (the tensor nuclear norm) and its :func:`prox`;
* fits: :func:`rpca` (tensor robust PCA), :func:`complete` (low-tubal-rank completion),
  :func:`factorize_gd` (gradient descent on ``X = L * Rᵀ`` from measurements or entries, a
  :class:`~tensorfact.TubalFactors`), with :func:`gaussian_measurements`, :func:`measure`,
  :func:`loss`, :func:`effective_rank` and :func:`singular_tube_norms`.

One module per job: ``_tproduct.py`` (the algebra, below the types, at the package root),
``_svd.py`` (t-SVD, ranks, tube norms), ``_nuclear.py`` (TNN and its prox), ``_rpca.py``,
``_complete.py``, ``_factorize.py`` (gradient descent, on the engine shared with matrix sensing)
and ``_common.py`` (checks and slice-wise linear algebra they share).

Example:
  >>> import jax, tensorfact as tfa
  >>> x = jax.random.normal(jax.random.key(0), (6, 5, 4))
  >>> y = tfa.tubal.product(x, tfa.tubal.transpose(x))     # (6, 6, 4)
  >>> t = tfa.tubal.svd(x, rank=2)                         # TSVDTensor
  >>> y.shape, t.shape
  ((6, 6, 4), (6, 5, 4))
"""

from tensorfact._tproduct import (Transform, facewise, from_transform_domain, frequency_weights,
                                  identity, inverse, norm, product, to_transform_domain,
                                  transpose)
from tensorfact.decomposition._gradient_fit import GDInfo
from tensorfact.tensors import TSVDTensor, TubalFactors
from tensorfact.tubal._complete import complete
from tensorfact.tubal._factorize import factorize_gd, gaussian_measurements, loss, measure
from tensorfact.tubal._nuclear import prox, tnn
from tensorfact.tubal._rpca import rpca
from tensorfact.tubal._svd import effective_rank, rank, singular_tube_norms, svd

__all__ = [
    "Transform", "to_transform_domain", "from_transform_domain", "frequency_weights", "facewise",
    "product", "transpose", "identity", "inverse", "norm",
    "TSVDTensor", "svd", "rank", "tnn", "prox", "rpca", "complete",
    "TubalFactors", "GDInfo", "factorize_gd", "gaussian_measurements", "measure", "loss",
    "effective_rank", "singular_tube_norms",
]
