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

Weight error is not what a user loses, though: with calibration data, ``method="whitened"``
(SVD-LLM), ``"asvd"`` and ``"fwsvd"`` choose each dense layer's rank-r kernel to minimise the
error of its output or a Fisher-weighted error (:mod:`tensorfact.nn._data_aware`), and
``params=`` spreads one parameter budget over the layers (``_budget_ranks``).
"""

from __future__ import annotations

import fnmatch
import math
import numbers
from typing import Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tensorfact import algebra
from tensorfact._checks import check_choice, check_key, check_positive_number
from tensorfact.nn import _data_aware
from tensorfact.nn._acip import ACIPScores
from tensorfact.nn._calibration import collect_fisher, collect_inputs, replace_at
from tensorfact.decomposition import tt_matrix
from tensorfact.nn._common import ConvKind, Kind, resolve_rank, tensorize
from tensorfact.nn._conv import FactorizedConv
from tensorfact.nn._cur import CURDense, cur_rank_for_params
from tensorfact.nn._dense import FactorizedDense
from tensorfact.ranks import rank_for_energy

__all__ = ["compress", "CompressionReport", "LayerReport", "Method"]

#: ``"svd"`` fits the weights alone; the others use calibration data (see :func:`compress`).
Method = Literal["svd", "whitened", "asvd", "fwsvd", "cur", "acip"]


class LayerReport(NamedTuple):
    """One replaced layer: its graph ``path`` (a tuple of attribute names and list indices),
    the ``kind`` and resolved ``rank`` of the new layer (for a convolution ``"tucker"`` with
    ``(r_in, r_out)`` or ``"cp"`` with ``R``), the trainable parameters (kernel and bias)
    before and after, ``‖W − W'‖_F / ‖W‖_F`` of the kernels, ``layer_type``, the replaced
    layer's class (``"Linear"`` or ``"Conv"``), the ``method`` of the fit and, when calibration
    data were given, ``rel_output_error = ‖X(W − W')‖_F / ‖XW‖_F`` on the calibration inputs
    ``X`` (NaN otherwise), and for dense layers the forward FLOPs per input row before and
    after (``2·in·out`` and the cheaper of the new layer's two contractions; None for convs,
    whose FLOPs depend on the input's spatial size: see :meth:`FactorizedConv.flops`)."""

    path: tuple
    kind: str
    rank: object
    params_before: int
    params_after: int
    rel_weight_error: float
    layer_type: str = "Linear"
    method: str = "svd"
    rel_output_error: float = math.nan
    flops_before: int | None = None
    flops_after: int | None = None


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
    def flops_ratio(self) -> float:
        """Forward FLOPs per row of the replaced dense layers after over before (NaN when no
        dense layer was replaced)."""
        dense = [r for r in self.layers if r.flops_before]
        if not dense:
            return math.nan
        return sum(r.flops_after for r in dense) / sum(r.flops_before for r in dense)

    @property
    def ratio(self) -> float:
        """``params_after / params_before`` (1.0 when nothing was replaced)."""
        return self.params_after / self.params_before if self.params_before else 1.0

    def __repr__(self):
        skipped = f", skipped={list(self.skipped)!r}" if self.skipped else ""
        return f"CompressionReport({list(self.layers)!r}{skipped})"

    def __str__(self):
        outputs = any(not math.isnan(r.rel_output_error) for r in self.layers)
        rows = [("layer", "type", "kind", "rank", "params before", "params after",
                 "rel. error") + (("output error",) if outputs else ())]
        for r in self.layers:
            rows.append((_path_name(r.path), r.layer_type, r.kind, str(r.rank),
                         str(r.params_before), str(r.params_after), f"{r.rel_weight_error:.3e}")
                        + ((f"{r.rel_output_error:.3e}",) if outputs else ()))
        rows.append(("total", "", "", "", str(self.params_before), str(self.params_after),
                     f"ratio {self.ratio:.3f}") + (("",) if outputs else ()))
        if not math.isnan(self.flops_ratio):
            dense = [r for r in self.layers if r.flops_before]
            rows.append(("FLOPs per row", "", "", "", str(sum(r.flops_before for r in dense)),
                         str(sum(r.flops_after for r in dense)),
                         f"ratio {self.flops_ratio:.3f}") + (("",) if outputs else ()))
        widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) if c < 4 else cell.rjust(w)
                           for c, (cell, w) in enumerate(zip(row, widths))) for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(2 + len(self.layers), "-" * len(lines[0]))  # above the totals
        lines += [f"skipped {_path_name(path)}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


def _path_name(path) -> str:
    return "/".join(map(str, path)) or "<root>"


def _layer_rank(spec, kind, layer):
    """The rank to pass to ``FactorizedDense.from_layer`` for one layer (see :func:`compress`)."""
    kernel = layer.kernel[...]
    n_in, n_out = kernel.shape
    if isinstance(spec, tuple) and len(spec) == 2 and spec[0] == "error":
        if kind != "tt":
            raise ValueError(f'rank ("error", eps) chooses TT-matrix (MPO) ranks by TT-SVD with a '
                             f'relative error bound and needs kind "tt", got kind {kind!r}.')
        eps = spec[1]
        if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real) or \
                not 0 < eps < 1:
            raise ValueError(f'rank ("error", eps) needs eps in (0, 1), got {eps!r}.')
        # TT-SVD with the bound ‖W − W′‖_F ≤ eps ‖W‖_F picks the ranks; the layer is then fitted
        # at exactly those ranks (the same TT-SVD)
        in_shape, out_shape = tensorize("tt", n_in, n_out, None, None)
        return tt_matrix(jnp.asarray(kernel), in_shape, out_shape, eps=float(eps)).rank
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


def _data_aware_fit(layer, spec, method, stats, fisher, damping):
    """``(copy, r)``: a copy of ``layer`` whose kernel is the data-aware rank-``r`` fit (its
    truncated SVD at ``r``, which ``FactorizedDense.from_layer`` takes, loses nothing)."""
    kernel = jnp.asarray(layer.kernel[...])
    n_in, n_out = kernel.shape
    energy = isinstance(spec, tuple) and len(spec) == 2 and spec[0] == "energy"
    r = min(n_in, n_out) if energy else resolve_rank("lowrank", _layer_rank(spec, "lowrank",
                                                                              layer),
                                                     (n_in,), (n_out,))

    new_kernel, sigma = _truncation(kernel, method, stats, fisher, damping, r)
    if energy:
        r = rank_for_energy(sigma, spec[1])
        new_kernel, _ = _truncation(kernel, method, stats, fisher, damping, r)
    copy = nnx.clone(layer)
    copy.kernel[...] = new_kernel.astype(copy.kernel[...].dtype)
    return copy, r


def _override(overrides, path):
    """The rank of the first ``overrides`` pattern matching ``path``'s name, or None."""
    name = _path_name(path)
    for pattern, spec in overrides.items():
        if fnmatch.fnmatchcase(name, pattern):
            return spec
    return None


def _acip_keep(targets, scores, rank, params):
    """``{path: indices of the singular values kept}``: per layer the ``rank`` best-scored, or
    across layers the best-scored that fit the ``params`` fraction (each costs ``in + out``
    parameters; every layer keeps its best one; equal scores are ordered by energy share per
    parameter, as the SVD budget orders)."""
    keep = {}
    if params is None:
        for path, layer in targets:
            n_in, n_out = layer.kernel.shape
            spec = rank(path, layer) if callable(rank) else rank
            k = resolve_rank("lowrank", _layer_rank(spec, "lowrank", layer), (n_in,), (n_out,))
            keep[path] = np.argsort(-np.asarray(scores[path]), kind="stable")[:k]
        return keep
    total = biases = 0
    candidates = []
    for path, layer in targets:
        n_in, n_out = layer.kernel.shape
        bias = 0 if layer.bias is None else int(layer.bias[...].size)
        total, biases = total + n_in * n_out + bias, biases + bias
        order = np.argsort(-np.asarray(scores[path]), kind="stable")
        keep[path] = [int(order[0])]
        # ties (values no mask pruned) are broken as the SVD budget ranks: energy share per
        # parameter
        s2 = np.asarray(jnp.linalg.svd(jnp.asarray(layer.kernel[...], jnp.float32),
                                       compute_uv=False), np.float64) ** 2
        share = s2 / s2.sum() if s2.sum() > 0 else s2
        candidates += [(float(scores[path][i]), share[i] / (n_in + n_out), path, n_in + n_out,
                        int(i)) for i in order[1:]]
    budget = params * total - biases - sum(sum(layer.kernel.shape) for _, layer in targets)
    for _, _, path, cost, index in sorted(candidates, key=lambda c: (-c[0], -c[1])):
        if cost <= budget:
            keep[path].append(index)
            budget -= cost
    return {path: np.sort(np.asarray(ix)) for path, ix in keep.items()}


def _kept_singular_values(layer, indices):
    """``U[:, S] diag(σ[S]) V[S]ᵀ`` of the layer's kernel for the kept indices ``S``."""
    kernel = jnp.asarray(layer.kernel[...], jnp.float32)
    u, s, vt = jnp.linalg.svd(kernel, full_matrices=False)
    idx = jnp.asarray(indices)
    return jnp.matmul(u[:, idx] * s[idx], vt[idx], precision=jax.lax.Precision.HIGHEST)


def _cur_rank(spec, layer):
    """``k`` for a CURDense from a per-layer rank: an int (capped at ``min(in, out)``),
    ``"full"``, or a parameter fraction (``k(in + out) + k² ≤ f·in·out``)."""
    n_in, n_out = layer.kernel.shape
    if isinstance(spec, str) and spec == "full":
        return min(n_in, n_out)
    if isinstance(spec, (bool, np.bool_)) or not isinstance(spec, numbers.Real):
        raise ValueError(f'rank must be an int, a float in (0, 1] or "full" for method "cur", '
                         f"got {spec!r}.")
    if isinstance(spec, numbers.Integral):
        if spec < 1:
            raise ValueError(f"rank must be a positive integer, got {spec!r}.")
        return min(int(spec), n_in, n_out)
    if not 0 < spec <= 1:
        raise ValueError(f"rank as a parameter fraction must be in (0, 1], got {spec!r}.")
    return cur_rank_for_params(n_in, n_out, float(spec))


def _truncation(kernel, method, stats, fisher, damping, rank):
    """``(W′, σ)`` of a data-aware ``method`` at ``rank`` (see :mod:`._data_aware`)."""
    if method == "whitened":
        return _data_aware.whitened(kernel, stats.gram, rank, damping=damping)
    if method == "asvd":
        return _data_aware.activation_scaled(kernel, stats.abs_sum / stats.count, rank)
    return _data_aware.fisher_weighted(kernel, fisher, rank)


def _spectrum(layer, method, stats, fisher, damping):
    """The singular values the ``method`` truncates for ``layer`` (descending)."""
    kernel = jnp.asarray(layer.kernel[...], jnp.float32)
    if method == "svd":
        return jnp.linalg.svd(kernel, compute_uv=False)
    return _truncation(kernel, method, stats, fisher, damping, min(kernel.shape))[1]


def _budget_ranks(targets, fraction, spectrum):
    """``{path: rank}`` keeping about ``fraction`` of the layers' parameters: singular values
    are taken in order of ``(σ²/Σσ² of their layer) / (in + out)`` while they fit the budget
    (each layer's values as a prefix: they decrease, and a layer whose next value does not fit
    takes no more); a last step is taken if it overshoots by less than it leaves unspent, so the
    result is within half a rank step ``in + out`` of the budget in the usual case. Every layer
    keeps rank at least 1."""
    total = biases = 0
    candidates = []
    ranks = {}
    for path, layer in targets:
        n_in, n_out = layer.kernel.shape
        bias = 0 if layer.bias is None else int(layer.bias[...].size)
        total += n_in * n_out + bias
        biases += bias
        s2 = np.asarray(spectrum(path, layer), np.float64) ** 2
        share = s2 / s2.sum() if s2.sum() > 0 else np.zeros_like(s2)
        cost = n_in + n_out
        ranks[path] = 1
        candidates += [(share[i] / cost, path, cost, i) for i in range(1, len(s2))]
    budget = fraction * total - biases - sum(
        layer.kernel.shape[0] + layer.kernel.shape[1] for _, layer in targets)
    candidates.sort(key=lambda c: -c[0])
    closed = set()  # layers whose next value did not fit: their picks must stay a prefix
    for _, path, cost, _ in candidates:
        if path in closed:
            continue
        if cost > budget:
            closed.add(path)
            continue
        ranks[path] += 1
        budget -= cost
    # one more step where it overshoots the budget by less than it would stay under
    for _, path, cost, index in candidates:  # index i is the layer's (i+1)-th value
        if path in closed and index == ranks[path] and cost - budget < budget:
            ranks[path] += 1
            break
    return ranks


def compress(model: nnx.Module, *, kind: Kind = "lowrank", rank=None, params=None,
             select=None,
             method: Method = "svd", calibration=None, loss_fn: Callable | None = None,
             scores=None, overrides=None,
             damping: float = _data_aware.DEFAULT_DAMPING, progress: bool = True,
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
      rank: per layer (give ``rank`` or ``params``), one of

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
        * ``("error", eps)`` with ``eps`` in ``(0, 1)`` (``kind="tt"``): the TT-matrix (MPO, as
          in CompactifAI) whose TT-SVD keeps ``‖W − W′‖_F ≤ eps ‖W‖_F``, ranks chosen per bond;
        * a pair ``(r_in, r_out)``: a conv's Tucker-2 ranks (conv layers only);
        * a callable ``(path, layer) -> one of the above`` for a different rank per layer.
      params: a global budget instead of ``rank``: the fraction in ``(0, 1]`` of the selected
        layers' parameters (kernels and biases) that their replacements keep, within about 1%.
        Every layer's rank is chosen at once, greedily by the share of its layer's error each
        singular value removes per parameter it costs (the singular values of the matrix the
        ``method`` truncates: the kernel for ``"svd"``, the whitened kernel for
        ``"whitened"``, ...), so the budget goes where it lowers the summed relative error
        most. ``nnx.Linear`` layers and ``kind="lowrank"`` only.
      select: a callable ``(path, layer) -> bool`` choosing the layers to replace (``path``
        is a tuple such as ``("layers", 0)``, ``layer`` an ``nnx.Linear`` or ``nnx.Conv``);
        None replaces every ``nnx.Linear`` and ``nnx.Conv``.
      method: how a dense layer's low-rank kernel is chosen (``kind="lowrank"``, ``nnx.Linear``
        layers only for the data-aware methods):

        * ``"svd"`` (default): the truncated SVD of the kernel, minimising ``‖W − W′‖_F``;
        * ``"whitened"`` (SVD-LLM, Wang et al., ICLR 2025): minimises the error of the layer's
          output on the calibration inputs, ``‖X(W − W′)‖_F``, exactly (truncation in the
          space whitened by the Cholesky factor of ``XᵀX + λI``);
        * ``"asvd"`` (ASVD, Yuan et al. 2023): the kernel's input rows scaled by
          ``mean |x|^0.5`` before truncation, a diagonal stand-in for whitening;
        * ``"fwsvd"`` (FWSVD, Hsu et al., ICLR 2022): the output units weighted by their
          Fisher information, ``Σ (∂loss/∂W)²`` over the calibration batches (needs
          ``loss_fn``);
        * ``"cur"``: :class:`~tensorfact.nn.CURDense` layers, ``k`` actual columns and rows of
          each kernel (DEIM; leverage-score sampling when ``key`` is given), with ``rank`` an
          int ``k``, ``"full"`` or a parameter fraction (``k(in + out) + k²``);
        * ``"acip"``: the singular values with the best ``scores`` of :func:`~tensorfact.nn.acip`
          (not necessarily the largest): per layer the best ``rank``, or across layers what fits
          ``params``. Any ratio is cut from the same scores, without training again.

        The objectives and closed forms are in :mod:`tensorfact.nn._data_aware`. With
        ``rank=("energy", f)`` the energy is that of the transformed matrix's singular values.
      calibration: an iterable of batches, each run as ``model(batch)``, or as
        ``loss_fn(model, batch)`` when ``loss_fn`` is given (so a batch may hold targets);
        needed by the data-aware methods. With any method it
        also fills each report row's output error. Statistics are accumulated in float32 in
        one compiled step per batch, one ``in × in`` Gram matrix per layer, never the
        activations; a generator is read into a list (it is iterated twice for ``fwsvd``).
      loss_fn: ``(model, batch) -> scalar loss``: needed by ``method="fwsvd"``; with any method,
        how a calibration batch is run.
      scores: the :class:`~tensorfact.nn.ACIPScores` of :func:`~tensorfact.nn.acip` for
        ``method="acip"``.
      overrides: ``{pattern: rank}``: layers whose path name (``"layers/0"``, ``"head"``)
        matches a shell-style ``pattern`` (:mod:`fnmatch`; the first that matches) get that
        rank instead of ``rank``; with ``params`` they are fixed and the budget is spread over
        the others (what they keep is charged to it).
      damping: ``λ / (tr(XᵀX)/in)`` for ``"whitened"``: keeps the Cholesky factorization
        defined when the calibration inputs do not span every input direction.
      progress: show a progress bar (tqdm) over the calibration batches.
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
    check_choice(method, Method, "method")
    data_aware = method in ("whitened", "asvd", "fwsvd")
    if method == "acip":
        if not isinstance(scores, ACIPScores):
            raise TypeError(f'method "acip" needs scores=acip(model, calibration, loss_fn), got '
                            f"{type(scores).__name__}.")
        if kind != "lowrank":
            raise ValueError(f'method "acip" keeps singular values: it needs kind "lowrank", got '
                             f"kind {kind!r}.")
    elif scores is not None:
        raise ValueError(f'scores are for method "acip", got method {method!r}.')
    if method == "cur" and kind != "lowrank":
        raise ValueError(f'method "cur" makes CURDense layers (a format of its own): leave kind '
                         f'at "lowrank", got kind {kind!r}.')
    if method == "cur" and params is not None:
        raise ValueError('params (a global budget) chooses SVD ranks; with method "cur" give a '
                         'per-layer rank.')
    if data_aware and kind != "lowrank":
        raise ValueError(f'method {method!r} fits low-rank kernels: it needs kind "lowrank", got '
                         f"kind {kind!r}.")
    if data_aware and calibration is None:
        raise ValueError(f"method {method!r} needs calibration data: pass calibration=<an "
                         f"iterable of input batches>.")
    if method == "fwsvd" and loss_fn is None:
        raise ValueError('method "fwsvd" weights by the Fisher information of a loss: pass '
                         "loss_fn=(model, batch) -> scalar.")
    if calibration is not None and not hasattr(calibration, "__iter__"):
        raise TypeError(f"calibration must be an iterable of input batches, got "
                        f"{type(calibration).__name__}.")
    if calibration is not None:
        calibration = list(calibration)
    check_positive_number(damping, "damping")
    if key is not None:
        key = check_key(key, "by compress (one key per layer is folded from it)")
    if conv_kind is not None:
        conv_kind = check_choice(conv_kind, ConvKind, "conv_kind")
    elif kind != "tt":
        conv_kind = "tucker" if kind == "lowrank" else kind
    if select is not None and not callable(select):
        raise TypeError(f"select must be a callable (path, layer) -> bool or None, got "
                        f"{type(select).__name__}.")
    if overrides is not None and not isinstance(overrides, dict):
        raise TypeError(f"overrides must be a dict {{pattern: rank}}, got "
                        f"{type(overrides).__name__}.")
    overrides = dict(overrides or {})
    if (rank is None) == (params is None):
        raise ValueError("pass exactly one of rank (per layer) and params (a global budget), got "
                         f"rank={rank!r} and params={params!r}.")
    if params is not None:
        if isinstance(params, (bool, np.bool_)) or not isinstance(params, numbers.Real) or \
                not 0 < params <= 1:
            raise ValueError(f"params must be a fraction in (0, 1], got {params!r}.")
        if kind != "lowrank":
            raise ValueError(f'params (a global budget) chooses matrix ranks: it needs kind '
                             f'"lowrank", got kind {kind!r}.')
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
            if data_aware or method in ("cur", "acip"):
                raise ValueError(f"method {method!r} compresses nnx.Linear layers, but conv layer "
                                 f"{_path_name(path)} is selected: leave the convs out with "
                                 f"select, or use method \"svd\".")
        targets.append((path, node))
    dense_paths = [path for path, node in targets if isinstance(node, nnx.Linear)]
    stats, fisher = {}, {}
    if calibration is not None:
        if not dense_paths:
            raise ValueError("compress found no nnx.Linear layer to fit to the calibration data "
                             "(select accepted none, or the model has none).")
        stats = collect_inputs(model, dense_paths, calibration, call=loss_fn,
                               progress=progress)
        if method == "fwsvd":
            fisher = collect_fisher(model, dense_paths, calibration, loss_fn, progress=progress)
    kept = {}
    if method == "acip":
        missing = [path for path, _ in targets if path not in scores.scores]
        if missing:
            raise ValueError(f"scores hold no ACIP scores for layer {_path_name(missing[0])}: "
                             "run acip with the same select as compress.")
        kept = _acip_keep(targets, scores.scores, rank, params)
    elif params is not None:
        if any(isinstance(node, nnx.Conv) for _, node in targets):
            conv = next(path for path, node in targets if isinstance(node, nnx.Conv))
            raise ValueError(f"params (a global budget) applies to nnx.Linear layers, but conv "
                             f"layer {_path_name(conv)} is selected: leave the convs out with "
                             f"select.")
        if not targets:
            raise ValueError("params: compress found no nnx.Linear layer to budget.")
        fixed = {}
        for path, layer in targets:
            spec = _override(overrides, path)
            if spec is not None:
                n_in, n_out = layer.kernel.shape
                fixed[path] = resolve_rank("lowrank", _layer_rank(spec, "lowrank", layer),
                                           (n_in,), (n_out,))
        free = [(path, layer) for path, layer in targets if path not in fixed]
        budget = dict(fixed)
        if free:
            def size(layer):
                return layer.kernel[...].size + (0 if layer.bias is None else layer.bias[...].size)
            fixed_params = sum(fixed[path] * sum(layer.kernel.shape)
                       + (0 if layer.bias is None else layer.bias[...].size)
                       for path, layer in targets if path in fixed)
            total = sum(size(layer) for _, layer in targets)
            free_fraction = (float(params) * total - fixed_params) / sum(
                size(layer) for _, layer in free)
            if free_fraction <= 0:
                raise ValueError(f"overrides keep {fixed_params} parameters, more than "
                                 f"params={params} "
                                 "of the selected layers allows.")
            budget.update(_budget_ranks(free, min(free_fraction, 1.0),
                                        lambda path, layer: _spectrum(
                                            layer, method, stats.get(path), fisher.get(path),
                                            damping)))
        rank = lambda path, layer: budget[path]  # noqa: E731
        overrides = {}
    reports = []
    for i, (path, layer) in enumerate(targets):
        spec = _override(overrides, path)
        if spec is None:
            spec = rank(path, layer) if callable(rank) else rank
        layer_key = None if key is None else jax.random.fold_in(key, i)
        try:
            if isinstance(layer, nnx.Conv):
                new = FactorizedConv.from_layer(layer, kind=conv_kind,
                                                rank=_conv_rank(spec, conv_kind, layer),
                                                key=layer_key, **conv_fit_kwargs)
                layer_kind, layer_type = conv_kind, "Conv"
            elif method == "acip":
                copy = nnx.clone(layer)
                copy.kernel[...] = _kept_singular_values(layer, kept[path]).astype(
                    copy.kernel[...].dtype)
                new = FactorizedDense.from_layer(copy, kind="lowrank", rank=len(kept[path]),
                                                 **fit_kwargs)
                layer_kind, layer_type = kind, "Linear"
            elif method == "cur":
                new = CURDense.from_layer(layer, rank=_cur_rank(spec, layer),
                                          **({"key": layer_key, "method": "leverage"}
                                             if layer_key is not None else {}))
                layer_kind, layer_type = "cur", "Linear"
            elif data_aware:
                fitted, r = _data_aware_fit(layer, spec, method, stats[path], fisher.get(path),
                                            damping)
                new = FactorizedDense.from_layer(fitted, kind="lowrank", rank=r, key=layer_key,
                                                 **fit_kwargs)
                layer_kind, layer_type = kind, "Linear"
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
        out_error = math.nan
        if path in stats:
            out_error = _data_aware.output_error(w, w_new, stats[path].gram)
        flops_before = flops_after = None
        if layer_type == "Linear":
            costs = new.flops(1)
            flops_before = costs["plain"]
            flops_after = min(costs["factorized"], costs.get("dense", costs["factorized"]))
        reports.append(LayerReport(path, layer_kind, new.rank, before, new.n_params, error,
                                   layer_type, method if layer_type == "Linear" else "svd",
                                   out_error, flops_before, flops_after))
        model = replace_at(model, path, new)
    return model, CompressionReport(reports, skipped)
