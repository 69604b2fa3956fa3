"""Adapters for whole models: PEFT's workflow for Flax NNX.

:func:`apply_adapters` walks a model's graph and wraps every layer that an :class:`AdapterRule`
matches in an :class:`AdaptedLayer`: the original layer plus named adapters, one of them active.
The rest manages them as PEFT does: :func:`set_active` (PEFT's ``set_adapter``),
:func:`disable_adapters` / :func:`enable_adapters` (the base output, exactly),
:func:`merge_adapters` (``merge_and_unload``: a plain model with no adapter module left),
:func:`adapter_state` / :func:`load_adapter` (the adapter's weights alone, as an ``nnx.State``)
and :func:`save_adapter` (safetensors with a JSON config, or Orbax), so that a saved adapter
reloads into a freshly built base model. :func:`adapter_filter` selects an adapter's trainable
parameters for ``nnx.Optimizer(model, tx, wrt=...)``.

**Paths and rules.** A layer's path is its graph path joined by ``/`` (``"blocks/0/attn/query"``,
as :func:`~tensorfact.nn.compress` names layers); a rule's ``pattern`` is a regular expression
that must match the whole path (``re.fullmatch``, as qwix's ``module_path`` and PEFT's
``target_modules`` string). The first rule that matches a layer wraps it, so specific rules go
first and a general one last (PEFT's ``rank_pattern`` / ``alpha_pattern``). A rule that wraps no
layer is an error naming it.

**Shared layers** (one module at several paths, such as tied embeddings) are wrapped once, and
the one :class:`AdaptedLayer` replaces the layer at every path, so they stay shared.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import re
from typing import Any, Callable, NamedTuple, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from tensorfact.nn._adapters import DoRA, LoHa, LoKr, LoRA
from tensorfact.nn._base import Adapter, AdapterBuffer, set_dropout
from tensorfact.nn._research_adapters import NOLA, KronAdapter, LoRAXS, VeRA
from tensorfact.nn._tensor_adapters import TTAdapter, TuckerAdapter

__all__ = ["AdapterRule", "AdaptedLayer", "AdapterReport", "AdaptedLayerReport",
           "apply_adapters", "set_active", "disable_adapters", "enable_adapters", "disabled",
           "merge_adapters", "adapter_state", "load_adapter", "save_adapter", "adapter_filter",
           "ADAPTER_KINDS"]

_DENSE = (nnx.Linear, nnx.LinearGeneral, nnx.Einsum)
_LAYERS = _DENSE + (nnx.Conv, nnx.Embed)
_LAYER_NAMES = {cls.__name__: cls for cls in _LAYERS}

#: The adapter kinds a rule names, with the layer types each takes. Other adapters join by
#: passing their class (or any callable with the same signature) as ``kind``.
ADAPTER_KINDS: dict[str, tuple[type, tuple[type, ...]]] = {
    "lora": (LoRA, _LAYERS),
    "dora": (DoRA, _DENSE + (nnx.Conv,)),
    "lokr": (LoKr, _DENSE + (nnx.Conv,)),
    "loha": (LoHa, _DENSE + (nnx.Conv,)),
    "tt": (TTAdapter, _DENSE),
    "tucker": (TuckerAdapter, (nnx.Conv,)),
    "lora_xs": (LoRAXS, _DENSE + (nnx.Conv,)),
    "kron": (KronAdapter, _DENSE + (nnx.Conv,)),
    "vera": (VeRA, _DENSE + (nnx.Conv,)),
    "nola": (NOLA, _DENSE + (nnx.Conv,)),
}


class AdapterRule:
    """Which layers get which adapter: a path pattern, optional layer types, and the adapter
    with its settings.

    Args:
      pattern: a regular expression matched against the whole ``/``-joined path of a layer
        (``re.fullmatch``): ``".*"`` every layer, ``".*attn/(query|value)"`` the query and value
        projections, ``"blocks/[0-3]/.*"`` the first four blocks.
      kind: a name of :data:`ADAPTER_KINDS` (``"lora"``, ``"dora"``, ``"lokr"``, ``"loha"``,
        ``"tt"``, ``"tucker"``, ``"lora_xs"``, ``"kron"``, ``"vera"``, ``"nola"``), or an adapter
        class (any callable ``kind(base, rank, **settings)`` returning an adapter).
      rank: the adapter's rank (PEFT's ``r``; default 8 as in PEFT).
      alpha: the scale ``alpha / rank`` (PEFT's ``lora_alpha``); ``None`` gives scale 1 (PEFT's
        default ``lora_alpha = r``). Only for kinds that take ``alpha``.
      dropout: dropout on the input of the adapter's change (PEFT's ``lora_dropout``), active
        under ``model.train()``; needs the ``rngs`` of :func:`apply_adapters`.
      layers: layer types the rule takes (classes, or their names such as ``"Linear"``); by
        default every type the kind supports (``nnx.Linear``, ``nnx.LinearGeneral``,
        ``nnx.Einsum``, ``nnx.Conv``, ``nnx.Embed`` for LoRA).
      **settings: passed to the adapter (``init="pissa"``, ``use_rslora=True``, ...).

    Example:
      >>> from tensorfact.nn import AdapterRule
      >>> AdapterRule(".*attn/.*", "lora", rank=4, init="pissa")
      AdapterRule('.*attn/.*', 'lora', rank=4, init='pissa')
    """

    def __init__(self, pattern: str = ".*", kind: str | Callable = "lora", *, rank=8,
                 alpha=None, dropout: float = 0.0, layers: Sequence[type | str] | None = None,
                 **settings):
        if not isinstance(pattern, str):
            raise TypeError(f"pattern must be a regular expression str, got "
                            f"{type(pattern).__name__} {pattern!r}.")
        try:
            self._regex = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"pattern {pattern!r} is not a regular expression: {err}.") from None
        if isinstance(kind, str):
            if kind not in ADAPTER_KINDS:
                raise ValueError(f"kind must be one of {sorted(ADAPTER_KINDS)} or an adapter "
                                 f"class, got {kind!r}.")
            cls, supported = ADAPTER_KINDS[kind]
        elif callable(kind):
            cls, supported = kind, _LAYERS
        else:
            raise TypeError(f"kind must be a str or an adapter class, got {kind!r}.")
        if layers is None:
            layer_types = supported
        else:
            if isinstance(layers, (str, type)):
                layers = (layers,)
            layer_types = []
            for t in layers:
                t = _LAYER_NAMES.get(t, t) if isinstance(t, str) else t
                if not (isinstance(t, type) and issubclass(t, _LAYERS)):
                    raise ValueError(f"layers must name nnx.Linear, nnx.LinearGeneral, "
                                     f"nnx.Einsum, nnx.Conv or nnx.Embed, got {t!r}.")
                layer_types.append(t)
            layer_types = tuple(layer_types)
        if isinstance(cls, type):  # settings checked against the constructor now, not per layer
            params = inspect.signature(cls.__init__).parameters
            if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                unknown = [k for k in list(settings) + (["alpha"] if alpha is not None else [])
                           if k not in params]
                if unknown:
                    raise ValueError(f"{cls.__name__} takes no argument {unknown[0]!r} (rule "
                                     f"{pattern!r}).")
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not (
                0 <= dropout < 1):
            raise ValueError(f"dropout must be a rate in [0, 1), got {dropout!r}.")
        self.pattern, self.kind, self.rank, self.alpha = pattern, kind, rank, alpha
        self.dropout, self.layers, self.settings = float(dropout), layer_types, dict(settings)
        self._cls = cls

    def matches(self, path: str, layer) -> bool:
        """Whether the rule takes ``layer`` at ``path``."""
        return isinstance(layer, self.layers) and self._regex.fullmatch(path) is not None

    def build(self, layer, rngs):
        """The adapter of ``layer`` this rule makes."""
        kwargs = dict(self.settings)
        if self.alpha is not None:
            kwargs["alpha"] = self.alpha
        if _takes(self._cls, "rngs"):
            kwargs["rngs"] = rngs
        adapter = self._cls(layer, self.rank, **kwargs)
        if self.dropout:
            set_dropout(adapter, self.dropout, rngs)
        return adapter

    def build_all(self, layers, rngs) -> list:
        """The adapters of ``layers`` this rule makes, in order: through the adapter class's
        ``from_layers`` where it has one (:meth:`LoRA.from_layers`, which splits same-shaped
        kernels in one program), else one :meth:`build` per layer."""
        from_layers = getattr(self._cls, "from_layers", None)
        if from_layers is None or len(layers) < 2:
            return [self.build(layer, rngs) for layer in layers]
        kwargs = dict(self.settings)
        if self.alpha is not None:
            kwargs["alpha"] = self.alpha
        adapters = from_layers(layers, self.rank, rngs=rngs, **kwargs)
        if self.dropout:
            for adapter in adapters:
                set_dropout(adapter, self.dropout, rngs)
        return adapters

    def to_config(self) -> dict:
        """The rule as JSON-ready data (what :func:`save_adapter` writes)."""
        if not isinstance(self.kind, str):
            raise ValueError(f"rule {self!r}: a rule whose kind is a class, not a name of "
                             "ADAPTER_KINDS, cannot be written to a config.")
        return {"pattern": self.pattern, "kind": self.kind, "rank": _jsonable(self.rank),
                "alpha": self.alpha, "dropout": self.dropout,
                "layers": [t.__name__ for t in self.layers],
                "settings": {k: _jsonable(v) for k, v in self.settings.items()}}

    @classmethod
    def from_config(cls, config: dict) -> "AdapterRule":
        """The rule :meth:`to_config` wrote."""
        settings = {k: tuple(v) if isinstance(v, list) else v
                    for k, v in config.get("settings", {}).items()}
        rank = config["rank"]
        return cls(config["pattern"], config["kind"],
                   rank=tuple(rank) if isinstance(rank, list) else rank,
                   alpha=config.get("alpha"), dropout=config.get("dropout", 0.0),
                   layers=config.get("layers"), **settings)

    def __repr__(self):
        kind = self.kind if isinstance(self.kind, str) else getattr(self.kind, "__name__",
                                                                    self.kind)
        extra = "".join(f", {k}={v!r}" for k, v in (("alpha", self.alpha),) if v is not None)
        if self.dropout:
            extra += f", dropout={self.dropout!r}"
        extra += "".join(f", {k}={v!r}" for k, v in self.settings.items())
        return f"AdapterRule({self.pattern!r}, {kind!r}, rank={self.rank!r}{extra})"


def _takes(cls, name: str) -> bool:
    try:
        params = inspect.signature(cls.__init__ if isinstance(cls, type) else cls).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    try:
        json.dumps(value)
    except TypeError:
        raise ValueError(f"setting {value!r} cannot be written to a JSON config.") from None
    return value


class AdaptedLayer(nnx.Module):
    """A layer with named adapters (PEFT's ``LoraLayer``): calls the active adapter, or the
    original layer when adapters are disabled or none is active here.

    Attributes:
      base: the original layer, left as it was (every adapter holds it, or for PiSSA-style
        initialisations a copy holding the residual kernel).
      adapters: an ``nnx.Dict`` of adapters by name.
      active: the active adapter's name (a layer without it runs ``base``).
      enabled: ``False`` runs ``base`` whatever is active.

    Other attributes (``kernel``, ``in_features``, ...) are read from ``base``, so code that
    reads a layer's attributes keeps working once it is wrapped.
    """

    def __init__(self, base):
        self.base = base
        self.adapters = nnx.Dict()
        self.active = None
        self.enabled = True

    def __getattr__(self, name):
        # only reached for attributes the wrapper lacks: forward them to the wrapped layer
        base = vars(self).get("base")
        if base is None or name.startswith("_"):
            raise AttributeError(name)
        return getattr(base, name)

    @property
    def adapter(self):
        """The adapter that runs, or None."""
        if self.enabled and self.active is not None and self.active in self.adapters:
            return self.adapters[self.active]
        return None

    def __call__(self, x, *args, **kwargs):
        adapter = self.adapter
        if adapter is None:
            return self.base(x, *args, **kwargs)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if args or set(kwargs) - {"out_sharding"}:
            raise TypeError(f"an adapted {type(self.base).__name__} takes its input and "
                            f"out_sharding only, got extra arguments {args} {sorted(kwargs)}.")
        return adapter(x, **kwargs)

    def attend(self, query):
        """An ``nnx.Embed``'s ``attend`` (a tied output layer), with the active adapter."""
        adapter = self.adapter
        return self.base.attend(query) if adapter is None else adapter.attend(query)

    def merge(self):
        """The plain layer computing what this one computes now."""
        adapter = self.adapter
        return nnx.clone(self.base) if adapter is None else adapter.merge()


class AdaptedLayerReport(NamedTuple):
    """One wrapped layer: its ``path`` (``/``-joined; ``shared_with`` the other paths of a
    shared layer), ``layer_type`` (``"Linear"``, ...), the adapter's class name ``adapter``, its
    ``rank``, the ``rule`` (index into the rules) that took it, its ``trainable`` parameters and
    the wrapped layer's own ``layer_params``."""

    path: str
    layer_type: str
    adapter: str
    rank: Any
    rule: int
    trainable: int
    layer_params: int
    shared_with: tuple = ()


class AdapterReport(NamedTuple):
    """What :func:`apply_adapters` did: the adapter ``name``, one :class:`AdaptedLayerReport`
    per wrapped layer, the ``trainable`` parameters they add and the base model's
    ``model_params`` (its ``nnx.Param``s, earlier adapters' left out); ``share`` is
    ``trainable / model_params``. ``str()`` is a table."""

    name: str
    layers: tuple
    trainable: int
    model_params: int

    @property
    def share(self) -> float:
        return self.trainable / self.model_params if self.model_params else math.nan

    def __str__(self):
        rows = [f"adapter {self.name!r}: {len(self.layers)} layers, {self.trainable:,} trainable "
                f"parameters = {100 * self.share:.3g}% of {self.model_params:,}"]
        width = max([len(r.path) for r in self.layers] + [4])
        rows.append(f"{'path':<{width}}  {'layer':<13} {'adapter':<12} {'rank':>8} "
                    f"{'trainable':>10}")
        for r in self.layers:
            rows.append(f"{r.path:<{width}}  {r.layer_type:<13} {r.adapter:<12} "
                        f"{str(r.rank):>8} {r.trainable:>10,}")
        return "\n".join(rows)


# -- the graph walk ----------------------------------------------------------------------------
def _children(node):
    """``(key, child)`` of a module or container (a module's attributes in the order NNX keeps
    them, sorted by name once the model went through ``nnx.clone``; list items by index)."""
    if isinstance(node, nnx.Module):
        listed = isinstance(node, nnx.List)
        items = [((int(k) if listed else k), v) for k, v in vars(node).items()
                 if not (k.startswith("_pytree__") or k == "_length")]
        yield from (sorted(items, key=lambda kv: kv[0]) if listed else items)
    elif isinstance(node, (list, tuple)):
        yield from enumerate(node)
    elif isinstance(node, dict):
        yield from list(node.items())


def _set_child(parent, key, child):
    if isinstance(parent, (nnx.List, nnx.Dict, list, dict)):
        parent[key] = child
    elif isinstance(parent, nnx.Module):
        setattr(parent, key, child)
    else:
        raise TypeError(f"cannot replace the layer at key {key!r} of a "
                        f"{type(parent).__name__}: hold layers in an nnx.Module, nnx.List, "
                        "nnx.Dict, list or dict.")


def _walk(model, stop):
    """Every ``(parent, key, path, node)`` edge to a node that ``stop`` accepts (not looking
    inside it), depth first; a shared node appears once per edge."""
    seen = set()

    def visit(node, path):
        for key, child in _children(node):
            if not isinstance(child, (nnx.Module, list, tuple, dict)):
                continue
            child_path = path + (key,)
            if stop(child):
                yield node, key, child_path, child
                continue
            if id(child) in seen:
                continue
            seen.add(id(child))
            yield from visit(child, child_path)

    yield from visit(model, ())


def _path_name(path) -> str:
    return "/".join(map(str, path))


def _n_params(module) -> int:
    """The module's parameters, adapters' own (``nnx.LoRAParam``) left out."""
    state = nnx.state(module, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam)))
    return sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(state))


def _stop(node):
    return isinstance(node, (AdaptedLayer, Adapter) + _LAYERS)


def _group(model, stop=_stop):
    """``{id(node): (node, [(parent, key, path), ...])}`` in first-seen order."""
    groups = {}
    for parent, key, path, node in _walk(model, stop):
        groups.setdefault(id(node), (node, []))[1].append((parent, key, path))
    return groups


def _check_name(name):
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"name must be an identifier str (an adapter's name), got {name!r}.")
    return name


# -- applying ----------------------------------------------------------------------------------
def apply_adapters(model: nnx.Module, rules, *, name: str = "default",
                   rngs: nnx.Rngs | None = None):
    """Wraps every layer of ``model`` that a rule matches in an :class:`AdaptedLayer` holding a
    new adapter called ``name``, made active.

    The work is done on ``nnx.clone(model)`` (the arrays are shared, not copied), which is
    returned; ``model`` is left as it was. Layers already wrapped (by an earlier call with
    another ``name``) get the new adapter beside the old ones. Layers inside an adapter are not
    visited.

    Args:
      model: any ``nnx.Module``; layers may sit in attributes, ``nnx.List``, ``nnx.Dict`` and
        plain lists or dicts held with ``nnx.data``.
      rules: an :class:`AdapterRule` or a sequence of them; the first that matches a layer
        wraps it.
      name: the adapter's name (an identifier; PEFT's ``adapter_name``).
      rngs: ``nnx.Rngs`` for random initialisations, randomized SVDs and dropout.

    Returns:
      ``(adapted_model, report)``, the report an :class:`AdapterReport`.

    Raises:
      ValueError: a rule that wraps no layer (naming it), an adapter ``name`` already on a
        layer, or a layer the adapter cannot take (naming its path).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from flax import nnx
      >>> from tensorfact import nn as tnn
      >>> class MLP(nnx.Module):
      ...     def __init__(self, rngs):
      ...         self.up = nnx.Linear(8, 32, rngs=rngs)
      ...         self.down = nnx.Linear(32, 8, rngs=rngs)
      ...     def __call__(self, x):
      ...         return self.down(nnx.relu(self.up(x)))
      >>> model = MLP(nnx.Rngs(0))
      >>> adapted, report = tnn.apply_adapters(model, [tnn.AdapterRule("up|down", rank=2)],
      ...                                      rngs=nnx.Rngs(1))
      >>> [r.path for r in report.layers], report.trainable
      (['down', 'up'], 160)
      >>> x = jnp.ones((3, 8))
      >>> bool((adapted(x) == model(x)).all())
      True
      >>> optimizer = nnx.Optimizer(adapted, optax.adam(1e-2), wrt=tnn.adapter_filter())
      >>> merged = tnn.merge_adapters(adapted)
      >>> type(merged.up).__name__
      'Linear'
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be an nnx.Module, got {type(model).__name__}.")
    rules = [rules] if isinstance(rules, AdapterRule) else list(rules)
    if not rules or not all(isinstance(r, AdapterRule) for r in rules):
        raise TypeError(f"rules must be an AdapterRule or a non-empty sequence of them, got "
                        f"{rules!r}.")
    name = _check_name(name)
    model = nnx.clone(model)
    model_params = _n_params(model)
    matched = [0] * len(rules)
    won = [0] * len(rules)
    taken = [[] for _ in rules]   # per rule: (node, edges, path, layer, walk order)
    for order, (node, edges) in enumerate(_group(model).values()):
        if isinstance(node, Adapter):
            continue  # an adapter built by hand: left alone
        layer = node.base if isinstance(node, AdaptedLayer) else node
        path = _path_name(edges[0][2])
        hits = [k for k, rule in enumerate(rules) if rule.matches(path, layer)]
        for k in hits:
            matched[k] += 1
        if not hits:
            continue
        won[hits[0]] += 1
        if isinstance(node, AdaptedLayer) and name in node.adapters:
            raise ValueError(f"{path}: an adapter named {name!r} is already there; pass "
                             "another name.")
        taken[hits[0]].append((node, edges, path, layer, order))
    for k, rule in enumerate(rules):
        if not matched[k]:
            raise ValueError(f"rule {k}, {rule!r}, matches no layer of the model (paths are "
                             "'/'-joined, e.g. 'blocks/0/attn/query', matched whole).")
        if not won[k]:
            raise ValueError(f"rule {k}, {rule!r}, takes no layer: every layer it matches is "
                             "taken by an earlier rule (put more specific rules first).")
    reports = []
    for k, rule in enumerate(rules):
        # all the layers of a rule at once: same-shaped PiSSA/OLoRA/LoRA-XS kernels are split
        # in one program; an error is then traced to its layer by building one by one
        layers = [t[3] for t in taken[k]]
        try:
            adapters = rule.build_all(layers, rngs)
        except Exception:
            for _, _, path, layer, _ in taken[k]:
                _build_one(rule, k, path, layer, rngs)
            raise
        for (node, edges, path, layer, order), adapter in zip(taken[k], adapters):
            container = node if isinstance(node, AdaptedLayer) else AdaptedLayer(layer)
            container.adapters[name] = adapter
            container.active = name
            if container is not node:
                for parent, key, _ in edges:
                    _set_child(parent, key, container)
            trainable = int(sum(np.prod(v.shape) for _, v in
                                nnx.to_flat_state(nnx.state(adapter, nnx.LoRAParam))))
            reports.append((order, AdaptedLayerReport(
                path, type(layer).__name__, type(adapter).__name__,
                getattr(adapter, "rank", None), k, trainable, _n_params(layer),
                tuple(_path_name(e[2]) for e in edges[1:]))))
    reports = [r for _, r in sorted(reports, key=lambda t: t[0])]
    report = AdapterReport(name, tuple(reports), sum(r.trainable for r in reports),
                           model_params)
    return model, report


def _build_one(rule: AdapterRule, k: int, path: str, layer, rngs):
    """``rule.build(layer, rngs)``, an error re-raised naming ``path`` and the rule."""
    try:
        return rule.build(layer, rngs)
    except (TypeError, ValueError) as err:
        where = f"{path} (rule {k}, {rule!r})"
        if type(err) in (TypeError, ValueError):
            raise type(err)(f"{where}: {err}") from None
        err.add_note(f"raised while adapting {where}")  # a custom error class: kept whole
        raise


def _containers(model):
    return [node for node, _ in _group(model).values() if isinstance(node, AdaptedLayer)]


def _names(model) -> set:
    return {n for c in _containers(model) for n in c.adapters}


# -- switching ---------------------------------------------------------------------------------
def set_active(model: nnx.Module, name: str) -> None:
    """Makes the adapter ``name`` the active one on every layer (in place; PEFT's
    ``set_adapter``); layers without it run their base layer."""
    names = _names(model)
    if name not in names:
        raise ValueError(f"no adapter named {name!r} in the model; it has {sorted(names)}.")
    for c in _containers(model):
        c.active = name


def disable_adapters(model: nnx.Module) -> None:
    """Every adapted layer runs its original layer (in place): the base model's output,
    exactly."""
    if not _containers(model):
        raise ValueError("the model has no adapted layer (see apply_adapters).")
    for c in _containers(model):
        c.enabled = False


def enable_adapters(model: nnx.Module) -> None:
    """Undoes :func:`disable_adapters`: the active adapters run again (in place)."""
    for c in _containers(model):
        c.enabled = True


@contextlib.contextmanager
def disabled(model: nnx.Module):
    """A context in which the model computes its base output (PEFT's ``disable_adapter()``)."""
    states = [(c, c.enabled) for c in _containers(model)]
    disable_adapters(model)
    try:
        yield model
    finally:
        for c, enabled in states:
            c.enabled = enabled


def adapter_filter(name: str | None = None):
    """An NNX filter of the trainable parameters (``nnx.LoRAParam``) of the adapter ``name``
    (default: every adapter's), for ``nnx.Optimizer(model, tx, wrt=adapter_filter(name))``
    and ``nnx.DiffState``."""
    if name is None:
        return nnx.LoRAParam
    name = _check_name(name)
    return nnx.All(nnx.LoRAParam, lambda path, _: _under(path, name))


def _under(path, name) -> bool:
    return any(a == "adapters" and b == name for a, b in zip(path, path[1:]))


# -- merging -----------------------------------------------------------------------------------
def merge_adapters(model: nnx.Module) -> nnx.Module:
    """A plain model (PEFT's ``merge_and_unload``): a clone of ``model`` in which each adapted
    layer (an :class:`AdaptedLayer`, or an adapter set by hand) is replaced by the plain layer
    it computes (the active adapter merged into the kernel, or the base when disabled); no
    adapter module is left. ``model`` is left as it is."""
    model = nnx.clone(model)
    for node, edges in _group(model).values():
        if isinstance(node, (AdaptedLayer, Adapter)):
            plain = node.merge()
            for parent, key, _ in edges:
                _set_child(parent, key, plain)
    return model


# -- saving and loading --------------------------------------------------------------------------
def _active_name(model, name):
    if name is not None:
        name = _check_name(name)
        if name not in _names(model):
            raise ValueError(f"no adapter named {name!r} in the model; it has "
                             f"{sorted(_names(model))}.")
        return name
    active = {c.active for c in _containers(model)} - {None}
    if len(active) != 1:
        raise ValueError(f"name is needed: the model's active adapters are {sorted(active)}.")
    return active.pop()


def _adapter_arrays(model, name) -> dict:
    """``{"layer/path/param": variable}`` of adapter ``name``'s parameters and buffers."""
    out = {}
    for node, edges in _group(model).values():
        if isinstance(node, AdaptedLayer) and name in node.adapters:
            prefix = _path_name(edges[0][2])
            state = nnx.state(node.adapters[name], nnx.Any(nnx.LoRAParam, AdapterBuffer))
            for path, var in nnx.to_flat_state(state):
                out[prefix + "/" + _path_name(path)] = var
    return out


def adapter_state(model: nnx.Module, name: str | None = None) -> nnx.State:
    """The weights of adapter ``name`` alone (default: the active one): its ``nnx.LoRAParam``s
    and ``AdapterBuffer``s as an ``nnx.State`` (save it with Orbax like any state, or with
    :func:`save_adapter`)."""
    name = _active_name(model, name)
    return nnx.state(model, nnx.All(nnx.Any(nnx.LoRAParam, AdapterBuffer),
                                    lambda path, _: _under(path, name)))


def _rebase(container: AdaptedLayer, name: str) -> None:
    """After loading, recompute a PiSSA-style adapter's residual kernel from the original
    layer and the loaded starting factors."""
    adapter = container.adapters[name]
    if hasattr(adapter, "rebase"):
        adapter.rebase(container.base)


def load_adapter(model: nnx.Module, source, *, name: str | None = None,
                 rngs: nnx.Rngs | None = None) -> nnx.Module:
    """Loads adapter weights into ``model``, and returns it.

    Args:
      model: a model holding the adapter (same rules), or, when ``source`` is a directory
        written by :func:`save_adapter`, a base model without it: its rules are then read from
        the directory's ``adapter_config.json`` and applied first (on a clone).
      source: an ``nnx.State`` of :func:`adapter_state`, or a directory of
        :func:`save_adapter`.
      name: the adapter to load into (default: the saved name, or the active one).
      rngs: for the initialisation when the rules are applied (it is then overwritten).

    Raises:
      ValueError: the saved arrays do not fit the model's adapter (a missing or unexpected
        array, or a shape that differs, named).
    """
    if isinstance(source, nnx.State):
        name = _active_name(model, name)
        expected = {_path_name(p): v for p, v in nnx.to_flat_state(adapter_state(model, name))}
        given = {_path_name(p): v for p, v in nnx.to_flat_state(source)}
        _check_fit(expected, {k: np.shape(v[...] if isinstance(v, nnx.Variable) else v)
                              for k, v in given.items()})
        nnx.update(model, source)
    else:
        directory = os.fspath(source)
        config, arrays = _read(directory)
        saved_name = config.get("name", "default")
        if name is None:
            name = saved_name if saved_name in _names(model) or not _names(model) else None
            name = _active_name(model, None) if name is None else name
        name = _check_name(name)
        if name not in _names(model):
            rules = [AdapterRule.from_config(r) for r in config["rules"]]
            model, _ = apply_adapters(model, rules, name=name,
                                      rngs=nnx.Rngs(0) if rngs is None else rngs)
        variables = _adapter_arrays(model, name)
        _check_fit({k: v for k, v in variables.items()},
                   {k: np.shape(v) for k, v in arrays.items()})
        for key, var in variables.items():
            var[...] = jnp.asarray(arrays[key], dtype=var[...].dtype)
    for c in _containers(model):
        if name in c.adapters:
            _rebase(c, name)
    return model


def _check_fit(expected: dict, given_shapes: dict) -> None:
    missing = sorted(set(expected) - set(given_shapes))
    extra = sorted(set(given_shapes) - set(expected))
    if missing or extra:
        raise ValueError(f"the saved adapter does not fit the model's: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}.")
    for key, var in expected.items():
        shape = tuple(np.shape(var[...] if isinstance(var, nnx.Variable) else var))
        if shape != tuple(given_shapes[key]):
            raise ValueError(f"{key}: the saved array has shape {tuple(given_shapes[key])}, the "
                             f"model's {shape}.")


_CONFIG, _WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def save_adapter(directory, model: nnx.Module, rules, *, name: str | None = None,
                 format: str = "safetensors", overwrite: bool = False) -> None:
    """Writes adapter ``name`` (default: the active one) of ``model`` to ``directory``:
    ``adapter_config.json`` (the name and the ``rules`` that made it) and the weights alone,
    ``adapter_model.safetensors`` (keys ``"layer/path/param"``) or, with ``format="orbax"``,
    an Orbax checkpoint ``state/`` of :func:`adapter_state`.

    A fresh base model takes it back with :func:`load_adapter`: ``load_adapter(base_model,
    directory)`` re-applies the rules and loads the weights.

    Example:
      >>> import os, tempfile, jax.numpy as jnp
      >>> from flax import nnx
      >>> from tensorfact import nn as tnn
      >>> make = lambda: nnx.Sequential(nnx.Linear(6, 6, rngs=nnx.Rngs(0)))
      >>> rules = [tnn.AdapterRule(".*", "lora", rank=2, init="pissa")]
      >>> adapted, _ = tnn.apply_adapters(make(), rules, rngs=nnx.Rngs(1))
      >>> path = os.path.join(tempfile.mkdtemp(), "adapter")
      >>> tnn.save_adapter(path, adapted, rules)
      >>> sorted(os.listdir(path))
      ['adapter_config.json', 'adapter_model.safetensors']
      >>> loaded = tnn.load_adapter(make(), path)
      >>> x = jnp.ones((2, 6))
      >>> bool(jnp.allclose(loaded(x), adapted(x), atol=1e-6))
      True
    """
    name = _active_name(model, name)
    rules = [rules] if isinstance(rules, AdapterRule) else list(rules)
    if format not in ("safetensors", "orbax"):
        raise ValueError(f"format must be 'safetensors' or 'orbax', got {format!r}.")
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(os.path.join(directory, _CONFIG)) and not overwrite:
        raise FileExistsError(f"{directory} already holds an adapter; pass overwrite=True.")
    os.makedirs(directory, exist_ok=True)
    config = {"format": format, "name": name, "rules": [r.to_config() for r in rules],
              "library": "tensorfact"}
    arrays = {k: np.asarray(v[...]) for k, v in _adapter_arrays(model, name).items()}
    if format == "safetensors":
        from safetensors.numpy import save_file
        save_file(arrays, os.path.join(directory, _WEIGHTS))
    else:
        import orbax.checkpoint as ocp
        checkpointer = ocp.StandardCheckpointer()
        try:
            checkpointer.save(os.path.join(directory, "state"), arrays, force=bool(overwrite))
            checkpointer.wait_until_finished()
        finally:
            checkpointer.close()
    with open(os.path.join(directory, _CONFIG), "w") as f:
        json.dump(config, f, indent=2)


def _read(directory):
    config_path = os.path.join(directory, _CONFIG)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{config_path} not found: not an adapter saved by "
                                "save_adapter.")
    with open(config_path) as f:
        config = json.load(f)
    if config.get("library") != "tensorfact":
        raise ValueError(f"{config_path} is not a tensorfact adapter config (a PEFT checkpoint "
                         "loads with load_peft).")
    if config.get("format") == "orbax":
        import orbax.checkpoint as ocp
        checkpointer = ocp.StandardCheckpointer()
        try:
            arrays = checkpointer.restore(os.path.join(directory, "state"))
        finally:
            checkpointer.close()
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
    else:
        from safetensors.numpy import load_file
        arrays = load_file(os.path.join(directory, _WEIGHTS))
    return config, arrays
