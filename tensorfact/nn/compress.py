"""Post-training compression of a Flax NNX model: swap its dense layers for factorized ones.

:func:`compress` walks the module graph of a model (``nnx.iter_graph``), and replaces every
``nnx.Linear`` that ``select`` accepts by :meth:`FactorizedDense.from_dense` of it (truncated SVD
for ``"lowrank"``, CP-ALS, HOOI or TT-SVD for the tensor kinds), so the compressed model starts
from the trained weights and can be fine-tuned (Denil et al., "Predicting Parameters in Deep
Learning", NeurIPS 2013; Novikov et al., "Tensorizing Neural Networks", NeurIPS 2015). The
Eckart–Young theorem makes the lowrank replacement the best of its rank in Frobenius norm.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tensorfact._checks import check_choice
from tensorfact.nn.dense import _KINDS, FactorizedDense
from tensorfact.ranks import rank_for_energy

__all__ = ["compress", "CompressionReport", "LayerReport"]


class LayerReport(NamedTuple):
    """One replaced layer: its graph ``path`` (a tuple of attribute names and list indices),
    the ``kind`` and resolved ``rank`` of the new layer, the trainable parameters (kernel and
    bias) before and after, and ``‖W − W'‖_F / ‖W‖_F`` of the kernels."""

    path: tuple
    kind: str
    rank: object
    params_before: int
    params_after: int
    rel_weight_error: float


class CompressionReport:
    """The layers :func:`compress` replaced (a sequence of :class:`LayerReport`) and totals
    over them; ``str(report)`` is a table."""

    def __init__(self, layers):
        self.layers = tuple(layers)

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    @property
    def params_before(self) -> int:
        """Parameters of the replaced layers before compression."""
        return sum(r.params_before for r in self.layers)

    @property
    def params_after(self) -> int:
        """Parameters of their replacements."""
        return sum(r.params_after for r in self.layers)

    @property
    def ratio(self) -> float:
        """``params_after / params_before`` (1.0 when nothing was replaced)."""
        return self.params_after / self.params_before if self.params_before else 1.0

    def __repr__(self):
        return f"CompressionReport({list(self.layers)!r})"

    def __str__(self):
        rows = [("layer", "kind", "rank", "params before", "params after", "rel. error")]
        for r in self.layers:
            rows.append(("/".join(map(str, r.path)) or "<root>", r.kind, str(r.rank),
                         str(r.params_before), str(r.params_after), f"{r.rel_weight_error:.3e}"))
        rows.append(("total", "", "", str(self.params_before), str(self.params_after),
                     f"ratio {self.ratio:.3f}"))
        widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) if c < 3 else cell.rjust(w)
                           for c, (cell, w) in enumerate(zip(row, widths))) for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        return "\n".join(lines)


def _layer_rank(spec, kind, layer):
    """The rank to pass to ``FactorizedDense.from_dense`` for one layer (see :func:`compress`)."""
    kernel = layer.kernel[...]
    n_in, n_out = kernel.shape
    if isinstance(spec, tuple) and len(spec) == 2 and spec[0] == "energy":
        if kind != "lowrank":
            raise ValueError(f'rank ("energy", fraction) chooses a matrix rank from the singular '
                             f'values and needs kind "lowrank", got kind {kind!r}.')
        s = jnp.linalg.svd(jnp.asarray(kernel), compute_uv=False)
        return rank_for_energy(s, spec[1])
    if isinstance(spec, (bool, np.bool_)):
        raise ValueError(f'rank must be an int, a float in (0, 1], "full", ("energy", fraction) '
                         f"or a callable, got {spec!r}.")
    if isinstance(spec, numbers.Integral) and kind == "lowrank":
        return min(int(spec), n_in, n_out) if spec >= 1 else spec  # from_dense rejects < 1
    if isinstance(spec, (numbers.Real, str)):
        return spec
    raise ValueError(f'rank must be an int, a float in (0, 1], "full", ("energy", fraction) or '
                     f"a callable (path, layer) -> one of those, got {spec!r}.")


def _set_child(model, path, new):
    parent = model
    for key in path[:-1]:
        parent = parent[key] if isinstance(key, int) else getattr(parent, key)
    if isinstance(path[-1], int):
        parent[path[-1]] = new
    else:
        setattr(parent, path[-1], new)


def compress(model: nnx.Module, *, kind: str = "lowrank", rank, select=None, key=None,
             **fit_kwargs):
    """Replaces the ``nnx.Linear`` layers of ``model`` by factorized layers fitted to them.

    Each selected ``nnx.Linear`` at graph path ``p`` becomes
    ``FactorizedDense.from_dense(layer, kind=kind, rank=...)`` with the same bias, dtype and
    precision; see :class:`~tensorfact.nn.FactorizedDense` for the formats and fits. The input
    ``model`` is left untouched: the work is done on ``nnx.clone(model)``, which is returned.

    Args:
      model: any ``nnx.Module`` (the root itself may be an ``nnx.Linear``).
      kind: ``"lowrank"`` (default), ``"cp"``, ``"tucker"`` or ``"tt"``.
      rank: per layer, one of

        * an int: the format's rank (for lowrank capped at each layer's ``min(in, out)``, so
          one int serves layers of different sizes; Tucker and TT ranks are capped mode by
          mode by ``FactorizedDense``);
        * a float in ``(0, 1]``: the fraction of the layer's ``in·out`` kernel parameters the
          factors may hold (the largest rank within it, at least 1);
        * ``"full"``: lossless;
        * ``("energy", f)`` with ``f`` in ``(0, 1]`` (lowrank only): the smallest rank whose
          leading singular values hold ``f`` of ``‖W‖_F²``
          (:func:`tensorfact.ranks.rank_for_energy`), so the relative error is at most
          ``sqrt(1 − f)``;
        * a callable ``(path, layer) -> one of the above`` for a different rank per layer.
      select: a callable ``(path, layer) -> bool`` choosing the layers to replace (``path``
        is a tuple such as ``("layers", 0)``); None replaces every ``nnx.Linear``.
      key: ``jax.random`` key for the fits that use randomness; layer ``i`` gets
        ``jax.random.fold_in(key, i)``.
      **fit_kwargs: passed to the decomposition (e.g. ``n_iter`` for ``cp``/``tucker``).

    Returns:
      ``(compressed_model, report)``: the clone with the layers replaced and a
      :class:`CompressionReport` with one :class:`LayerReport` per replaced layer, in graph
      order, plus totals.

    Only ``nnx.Linear`` is replaced: ``nnx.Conv`` (and ``nnx.LinearGeneral``, ``nnx.Einsum``)
    layers are left as they are, since there is no factorized convolution yet. A layer
    reached by several paths (shared) is replaced at the first path only; an ``nnx.Linear``
    wrapped by a LoRA-family adapter would be replaced under it, so exclude those with
    ``select``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact.nn import compress
      >>> model = nnx.Sequential(nnx.Linear(64, 32, rngs=nnx.Rngs(0)), nnx.relu,
      ...                        nnx.Linear(32, 10, rngs=nnx.Rngs(1)))
      >>> small, report = compress(model, rank=0.25)
      >>> [(r.path, r.rank, r.params_before, r.params_after) for r in report]
      [(('layers', 0), 5, 2080, 512), (('layers', 2), 1, 330, 52)]
      >>> small(jnp.ones((2, 64))).shape
      (2, 10)
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be an nnx.Module, got {type(model).__name__}.")
    kind = check_choice(kind, _KINDS, "kind")
    if select is not None and not callable(select):
        raise TypeError(f"select must be a callable (path, layer) -> bool or None, got "
                        f"{type(select).__name__}.")
    model = nnx.clone(model)
    targets = [(tuple(path), node) for path, node in nnx.iter_graph(model)
               if isinstance(node, nnx.Linear) and (select is None or select(tuple(path), node))]
    reports = []
    for i, (path, layer) in enumerate(targets):
        spec = rank(path, layer) if callable(rank) else rank
        layer_key = None if key is None else jax.random.fold_in(key, i)
        new = FactorizedDense.from_dense(layer, kind=kind, rank=_layer_rank(spec, kind, layer),
                                         key=layer_key, **fit_kwargs)
        w = np.asarray(layer.kernel[...], np.float64)
        w_new = np.asarray(new.weight.to_dense(), np.float64).reshape(w.shape)
        norm = np.linalg.norm(w)
        error = float(np.linalg.norm(w - w_new) / norm) if norm > 0 else float(
            np.linalg.norm(w_new))
        before = int(w.size) + (0 if layer.bias is None else int(layer.bias[...].size))
        reports.append(LayerReport(path, kind, new.rank, before, new.n_params, error))
        if path:
            _set_child(model, path, new)
        else:
            model = new
    return model, CompressionReport(reports)
