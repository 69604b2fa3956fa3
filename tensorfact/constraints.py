"""Constraints and penalties for :func:`tensorfact.constrained_cp` (AO-ADMM): small immutable
objects with a ``prox(a, rho)`` method, the proximal operator of step ``1/rho``.

``Nonneg()``, ``L1(strength)``, ``Simplex()``, ``Box(lower, upper)``, ``Smooth(strength)``,
``Unimodal()``; ``constrained_cp`` also accepts the strings ``"nonneg"``, ``"simplex"`` and
``"unimodal"`` and ``None``
(unconstrained). A custom constraint subclasses :class:`Constraint`.
"""

from tensorfact.decomposition._constraints import (L1, Box, Constraint, Nonneg, Simplex, Smooth,
                                                   Unimodal)

__all__ = ["Constraint", "Nonneg", "L1", "Simplex", "Box", "Smooth", "Unimodal"]
