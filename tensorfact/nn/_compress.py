"""Post-training compression of a Flax NNX model: swap its dense and convolution layers for
factorized ones.

:func:`compress` walks the module graph of a model (``nnx.iter_graph``), and replaces every
``nnx.Linear`` that ``select`` accepts by :meth:`FactorizedDense.from_layer` of it (truncated SVD
for ``"lowrank"``, CP-ALS, HOOI or TT-SVD for the tensor kinds) and every ``nnx.Conv`` by
:meth:`FactorizedConv.from_layer` of it (Tucker-2 over the channel modes by partial HOOI, or
CP-ALS), so the compressed model starts from the trained weights and can be fine-tuned (Denil
et al., "Predicting Parameters in Deep Learning", NeurIPS 2013; Novikov et al., "Tensorizing
Neural Networks", NeurIPS 2015; Kim et al., "Compression of Deep Convolutional Neural Networks
for Fast and Low Power Mobile Applications", ICLR 2016; Lebedev et al., "Speeding-up
Convolutional Neural Networks Using Fine-tuned CP-Decomposition", ICLR 2015). The
Eckart–Young theorem makes the lowrank replacement of a dense layer the best of its rank in
Frobenius norm; Tucker-2 over ``(in, out)`` is the convolution's analogue of a low-rank matrix
(a 1×1 projection of the input channels, a small spatial convolution, a 1×1 expansion).
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tensorfact import algebra
from tensorfact._checks import check_choice, check_key
from tensorfact.nn._common import ConvKind, Kind
from tensorfact.nn._conv import FactorizedConv
from tensorfact.nn._dense import FactorizedDense
from tensorfact.ranks import rank_for_energy

__all__ = ["compress", "CompressionReport", "LayerReport"]


class LayerReport(NamedTuple):
    """One replaced layer: its graph ``path`` (a tuple of attribute names and list indices),
    the ``kind`` and resolved ``rank`` of the new layer (for a convolution ``"tucker"`` with
    ``(r_in, r_out)`` or ``"cp"`` with ``R``), the trainable parameters (kernel and bias)
    before and after, ``‖W − W'‖_F / ‖W‖_F`` of the kernels, and ``layer_type``, the replaced
    layer's class (``"Linear"`` or ``"Conv"``)."""

    path: tuple
    kind: str
    rank: object
    params_before: int
    params_after: int
    rel_weight_error: float
    layer_type: str = "Linear"


class CompressionReport:
    """The layers :func:`compress` replaced (a sequence of :class:`LayerReport`) and totals
    over them, plus ``skipped``: ``(path, reason)`` for each selected layer it could not
    replace; ``str(report)`` is a table."""

    def __init__(self, layers, skipped=()):
        self.layers = tuple(layers)
        #: ``(path, reason)`` of each selected layer that was left as it is (e.g. a grouped conv)
        self.skipped = tuple(skipped)

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
        skipped = f", skipped={list(self.skipped)!r}" if self.skipped else ""
        return f"CompressionReport({list(self.layers)!r}{skipped})"

    def __str__(self):
        rows = [("layer", "type", "kind", "rank", "params before", "params after",
                 "rel. error")]
        for r in self.layers:
            rows.append((_path_name(r.path), r.layer_type, r.kind, str(r.rank),
                         str(r.params_before), str(r.params_after), f"{r.rel_weight_error:.3e}"))
        rows.append(("total", "", "", "", str(self.params_before), str(self.params_after),
                     f"ratio {self.ratio:.3f}"))
        widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) if c < 4 else cell.rjust(w)
                           for c, (cell, w) in enumerate(zip(row, widths))) for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        lines += [f"skipped {_path_name(path)}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


def _path_name(path) -> str:
    return "/".join(map(str, path)) or "<root>"


def _layer_rank(spec, kind, layer):
    """The rank to pass to ``FactorizedDense.from_layer`` for one layer (see :func:`compress`)."""
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
        return min(int(spec), n_in, n_out) if spec >= 1 else spec  # from_layer rejects < 1
    if isinstance(spec, (numbers.Real, str)):
        return spec
    raise ValueError(f'rank must be an int, a float in (0, 1], "full", ("energy", fraction) or '
                     f"a callable (path, layer) -> one of those, got {spec!r}.")


_RANK_KINDS = 'an int, a float in (0, 1], "full", ("energy", fraction)'


def _conv_rank(spec, conv_kind, layer):
    """The rank to pass to ``FactorizedConv.from_layer`` for one conv layer (see
    :func:`compress`); ints, fractions and ``"full"`` are resolved there."""
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        if spec[0] != "energy":
            raise ValueError(f"rank must be {_RANK_KINDS}, a pair (r_in, r_out) or a callable, "
                             f"got {spec!r}.")
        if conv_kind != "tucker":
            raise ValueError(f'rank ("energy", fraction) chooses Tucker-2 ranks from the '
                             f'singular values of the channel unfoldings and needs the conv kind '
                             f'"tucker" (kind "lowrank" or "tucker"), got {conv_kind!r}.')
        fraction = spec[1]
        if isinstance(fraction, (bool, np.bool_)) or not isinstance(fraction, numbers.Real) or \
                not 0 < fraction <= 1:
            raise ValueError(f'rank ("energy", fraction) needs a fraction in (0, 1], got '
                             f"{fraction!r}.")
        # each channel mode keeps 1 − (1 − f)/2 of ‖W‖²: the truncated HOSVD's error² is at
        # most the sum of the two discarded energies, (1 − f)‖W‖², and HOOI started from it
        # only lowers it, so the relative error stays below sqrt(1 − f) as for a matrix
        kernel = jnp.asarray(layer.kernel[...])
        d = kernel.ndim - 2
        per_mode = 1.0 - (1.0 - float(fraction)) / 2.0
        return tuple(rank_for_energy(jnp.linalg.svd(algebra.unfold(kernel, m),
                                                    compute_uv=False), per_mode)
                     for m in (d, d + 1))
    if isinstance(spec, (bool, np.bool_)):
        raise ValueError(f"rank must be {_RANK_KINDS}, a pair (r_in, r_out) or a callable, got "
                         f"{spec!r}.")
    return spec


def _conv_skip_reason(conv) -> str | None:
    """Why ``FactorizedConv`` cannot stand in for ``conv`` (None when it can)."""
    if conv.feature_group_count != 1:
        return (f"grouped convolution (feature_group_count={conv.feature_group_count}); "
                "FactorizedConv has no groups")
    if conv.mask is not None:
        return "the kernel has a mask"
    d = len(conv.kernel[...].shape) - 2
    for name in ("input_dilation", "kernel_dilation"):
        value = getattr(conv, name)
        if value is not None and any(v != 1 for v in (
                (value,) * d if isinstance(value, int) else tuple(value))):
            return f"{name}={value!r}; FactorizedConv has no dilation"
    if isinstance(conv.padding, str) and conv.padding.upper() not in ("SAME", "VALID"):
        return f"padding={conv.padding!r}; FactorizedConv takes SAME, VALID or explicit pads"
    return None


def _set_child(model, path, new):
    parent = model
    for key in path[:-1]:
        parent = parent[key] if isinstance(key, int) else getattr(parent, key)
    if isinstance(path[-1], int):
        parent[path[-1]] = new
    else:
        setattr(parent, path[-1], new)


def compress(model: nnx.Module, *, kind: Kind = "lowrank", rank, select=None,
             conv_kind: ConvKind | None = None, key=None, conv_fit_kwargs=None, **fit_kwargs):
    """Replaces the ``nnx.Linear`` and ``nnx.Conv`` layers of ``model`` by factorized layers
    fitted to them.

    Each selected ``nnx.Linear`` at graph path ``p`` becomes
    ``FactorizedDense.from_layer(layer, kind=kind, rank=...)`` and each selected ``nnx.Conv``
    becomes ``FactorizedConv.from_layer(conv, kind=conv_kind, rank=...)``, with the same bias,
    strides, padding, dtype and precision; see :class:`~tensorfact.nn.FactorizedDense` and
    :class:`~tensorfact.nn.FactorizedConv` for the formats and fits. The input ``model`` is
    left untouched: the work is done on ``nnx.clone(model)``, which is returned.

    Args:
      model: any ``nnx.Module`` (the root itself may be an ``nnx.Linear`` or ``nnx.Conv``).
      kind: ``"lowrank"`` (default), ``"cp"``, ``"tucker"`` or ``"tt"``: the format of the
        dense layers, and by default of the convolutions (see ``conv_kind``).
      rank: per layer, one of

        * an int: the format's rank (for lowrank capped at each layer's ``min(in, out)``, so
          one int serves layers of different sizes; Tucker and TT ranks are capped mode by
          mode by ``FactorizedDense``; a conv's Tucker-2 ranks ``(r, r)`` are capped at the
          lossless ``(min(in, K·out), min(out, K·in))`` with ``K`` the kernel's spatial size;
          for a CP conv it is the CP rank);
        * a float in ``(0, 1]``: the fraction of the layer's ``in·out`` (conv: ``K·in·out``)
          kernel parameters the factors may hold (the largest rank within it, at least 1);
        * ``"full"``: lossless (conv: Tucker-2 at the lossless ranks, or an exact CP);
        * ``("energy", f)`` with ``f`` in ``(0, 1]`` (dense layers: lowrank only, convs:
          Tucker-2 only): for a dense layer the smallest rank whose leading singular values
          hold ``f`` of ``‖W‖_F²`` (:func:`tensorfact.ranks.rank_for_energy`); for a conv the
          smallest ``r_in`` and ``r_out`` whose leading singular values of the ``in`` and
          ``out`` unfoldings of the kernel each hold ``1 − (1 − f)/2`` of it. Either way the
          relative error is at most ``sqrt(1 − f)`` (for the conv: the truncated HOSVD's
          bound, which HOOI started from the HOSVD keeps);
        * a pair ``(r_in, r_out)``: a conv's Tucker-2 ranks (conv layers only);
        * a callable ``(path, layer) -> one of the above`` for a different rank per layer.
      select: a callable ``(path, layer) -> bool`` choosing the layers to replace (``path``
        is a tuple such as ``("layers", 0)``, ``layer`` an ``nnx.Linear`` or ``nnx.Conv``);
        None replaces every ``nnx.Linear`` and ``nnx.Conv``.
      conv_kind: ``"tucker"`` or ``"cp"``, the format of the convolutions; None (default)
        follows ``kind``: ``"tucker"`` and ``"cp"`` map to themselves and ``"lowrank"`` to
        ``"tucker"`` (Tucker-2 over the channel modes, the convolution's low-rank matrix).
        ``kind="tt"`` has no convolution format: with a selected conv it raises a
        ``ValueError`` naming the layer unless ``conv_kind`` is given or ``select`` leaves the
        convs out.
      key: ``jax.random`` key for the fits that use randomness; layer ``i`` (in graph order,
        dense and conv together) gets ``jax.random.fold_in(key, i)``.
      conv_fit_kwargs: keyword arguments of the convolutions' decompositions (e.g.
        ``n_iter``); None means ``fit_kwargs`` when the conv kind equals ``kind`` (the same
        decomposition), else none (with ``kind="lowrank"`` the dense fits are SVDs and the
        conv fits HOOI, whose arguments differ).
      **fit_kwargs: passed to the dense layers' decomposition (e.g. ``n_iter`` for
        ``cp``/``tucker``).

    Returns:
      ``(compressed_model, report)``: the clone with the layers replaced and a
      :class:`CompressionReport` with one :class:`LayerReport` per replaced layer, in graph
      order, plus totals.

    **Skipped convolutions.** A selected ``nnx.Conv`` that :class:`FactorizedConv` cannot
    represent (grouped or depthwise, ``feature_group_count != 1``; a kernel mask; input or
    kernel dilation; ``CIRCULAR``, ``REFLECT`` or ``CAUSAL`` padding) is left as it is, and
    ``report.skipped`` lists its path with the reason, so one call can compress a network
    that mixes ordinary and depthwise convolutions.

    Other layers (``nnx.LinearGeneral``, ``nnx.Einsum``, ``nnx.ConvTranspose``) are left as
    they are. A layer reached by several paths (shared) is replaced at the first path only;
    an ``nnx.Linear`` or ``nnx.Conv`` wrapped by a LoRA-family adapter would be replaced under
    it, so exclude those with ``select``. Errors about one layer's rank name its path.

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

      A small CNN: the convolution becomes a Tucker-2 chain, the dense head a low-rank
      product::

        >>> cnn = nnx.Sequential(nnx.Conv(8, 16, (3, 3), rngs=nnx.Rngs(0)), nnx.relu,
        ...                      lambda x: x.mean((1, 2)), nnx.Linear(16, 10, rngs=nnx.Rngs(1)))
        >>> small, report = compress(cnn, rank=0.5)
        >>> [(r.layer_type, r.kind, r.rank, r.params_before, r.params_after) for r in report]
        [('Conv', 'tucker', (6, 6), 1168, 484), ('Linear', 'lowrank', 3, 170, 88)]
        >>> small(jnp.ones((2, 12, 12, 8))).shape
        (2, 10)
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be an nnx.Module, got {type(model).__name__}.")
    kind = check_choice(kind, Kind, "kind")
    if key is not None:
        key = check_key(key, "by compress (one key per layer is folded from it)")
    if conv_kind is not None:
        conv_kind = check_choice(conv_kind, ConvKind, "conv_kind")
    elif kind != "tt":
        conv_kind = "tucker" if kind == "lowrank" else kind
    if select is not None and not callable(select):
        raise TypeError(f"select must be a callable (path, layer) -> bool or None, got "
                        f"{type(select).__name__}.")
    if conv_fit_kwargs is None:
        conv_fit_kwargs = fit_kwargs if conv_kind == kind else {}
    elif not isinstance(conv_fit_kwargs, dict):
        raise TypeError(f"conv_fit_kwargs must be a dict or None, got "
                        f"{type(conv_fit_kwargs).__name__}.")
    model = nnx.clone(model)
    targets, skipped = [], []
    for path, node in nnx.iter_graph(model):
        path = tuple(path)
        if not isinstance(node, (nnx.Linear, nnx.Conv)):
            continue
        if select is not None and not select(path, node):
            continue
        if isinstance(node, nnx.Conv):
            reason = _conv_skip_reason(node)
            if reason is not None:
                skipped.append((path, reason))
                continue
            if conv_kind is None:  # checked for every conv before any fit runs
                raise ValueError(f'kind "tt" has no convolution format, but conv layer '
                                 f"{_path_name(path)} is selected: pass conv_kind=\"tucker\" or "
                                 f'"cp", or leave the convs out with select.')
        targets.append((path, node))
    reports = []
    for i, (path, layer) in enumerate(targets):
        spec = rank(path, layer) if callable(rank) else rank
        layer_key = None if key is None else jax.random.fold_in(key, i)
        try:
            if isinstance(layer, nnx.Conv):
                new = FactorizedConv.from_layer(layer, kind=conv_kind,
                                                rank=_conv_rank(spec, conv_kind, layer),
                                                key=layer_key, **conv_fit_kwargs)
                layer_kind, layer_type = conv_kind, "Conv"
            else:
                new = FactorizedDense.from_layer(layer, kind=kind,
                                                 rank=_layer_rank(spec, kind, layer),
                                                 key=layer_key, **fit_kwargs)
                layer_kind, layer_type = kind, "Linear"
        except ValueError as e:
            raise ValueError(f"layer {_path_name(path)}: {e}") from e
        w = np.asarray(layer.kernel[...], np.float64)
        # rebuilt at "highest": the error of the fit itself
        w_new = np.asarray(new.dense_weight(), np.float64).reshape(w.shape)
        norm = np.linalg.norm(w)
        error = float(np.linalg.norm(w - w_new) / norm) if norm > 0 else float(
            np.linalg.norm(w_new))
        before = int(w.size) + (0 if layer.bias is None else int(layer.bias[...].size))
        reports.append(LayerReport(path, layer_kind, new.rank, before, new.n_params, error,
                                   layer_type))
        if path:
            _set_child(model, path, new)
        else:
            model = new
    return model, CompressionReport(reports, skipped)
