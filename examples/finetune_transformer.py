"""Parameter-efficient fine-tuning of a small transformer
======================================================

Parameter-efficient fine-tuning of a small transformer: LoRA, PiSSA, DoRA, LoRA-XS, VeRA and
the Kronecker adapter against a full fine-tune, through ``tensorfact.nn.apply_adapters``.

A character-level decoder-only transformer (``char_lm.py``: ``nnx.MultiHeadAttention``, an MLP
of two ``nnx.Linear``; 116 705 parameters by default) is pre-trained on the code of the Python
standard library (the modules ``a*.py``-``m*.py`` of the running interpreter), then adapted to a
shifted text, the docstrings alone of the modules ``n*.py``-``z*.py``: prose, which the
pre-trained model predicts clearly worse than code (1.93 against 1.58 nats per character). Every
method adapts a copy of the same pre-trained model on the same batches for the same number of
steps:

* ``no fine-tune`` and ``full fine-tune`` (every ``nnx.Param``) for reference;
* one :class:`~tensorfact.nn.AdapterRule` per method on the attention projections and the MLP,
  ``blocks/{i}/(attn/(query|key|value|out)|mlp/(up|down))`` (the embeddings, LayerNorms and the
  head stay frozen), only :func:`~tensorfact.nn.adapter_filter`'s ``nnx.LoRAParam`` trained:
  ``lora`` (Gaussian ``A``, ``B = 0``), PiSSA (``lora`` with ``init="pissa"``: the principal
  singular part of each kernel trains, the residual stays; ``svd_method="exact"``, the kernels
  being small), ``dora`` (LoRA on the direction, a trained magnitude per output), ``lora_xs``
  (only an ``r × r`` matrix between the kernel's frozen singular vectors), ``vera`` (only two
  scaling vectors around frozen random matrices shared by every layer) and ``kron`` (a trained
  sum of ``r`` Kronecker products, started at the kernel's nearest such sum, SoKA).

**Ranks.** LoRA, PiSSA, DoRA and the Kronecker adapter take ``--rank`` (4), at which their
trainable counts are within 13 % of LoRA's (DoRA adds one magnitude per output; a rank-``r``
Kronecker sum holds ``r (i₁o₁ + i₂o₂)`` scalars, a little less than LoRA's ``r (in + out)`` for
these balanced splits). LoRA-XS (``r²`` per layer) and VeRA (``r + out`` per layer) are far
smaller by design at equal rank (at rank 4: 192 and 1 200 scalars here against LoRA's 9 216),
so their rank is the one whose count is the nearest to LoRA's (from the count that
:func:`~tensorfact.nn.apply_adapters` reports at rank 1 and those two laws): LoRA-XS rank 28
(``r ≤ 64``, the narrowest side of every adapted kernel) and VeRA rank 672, far wider than the
layers, as the paper's ranks are (its frozen ``A`` and ``B`` then cost memory and time, not
trainable scalars).

**Learning rates.** Each method got the best constant AdamW rate of a sweep over
``3e-4 … 1e-1`` (steps of about ×3; ``--sweep 3e-4 1e-3 3e-3 1e-2 3e-2 1e-1``, scored by the
shifted validation loss after the 300 steps, on the same 2-core CPU): see
:data:`LEARNING_RATES` and the sweep's table below. Fine-tuning uses no weight decay (PiSSA's and
the Kronecker adapter's trained factors *are* the principal part of the weights, which decay
would shrink) and clips the gradient norm at 1, as the pre-training does.

The table gives each method's trainable parameters (and their share of the model's), the
shifted text's validation loss (nats per character) before and after, the base text's
validation loss after (what the method forgot), the time of one training step (the median of
30 rounds after the fine-tunes, each running every method's step in turn on a copy of its
model, so that other work on a shared CPU slows them alike), and the
largest difference between the logits of the adapted model and of
:func:`~tensorfact.nn.merge_adapters`' plain model (the merge must compute what the adapters
do). The figure has the pre-training curve, the shifted validation loss during fine-tuning, and
the forgetting.

Usage::

    python examples/finetune_transformer.py [--small] [--rank 4] [--steps 300] [--out out]

``--small`` is a tiny model and a handful of steps for the test suite (seconds; the numbers
mean nothing). The figure goes to ``--out`` (default ``out/``, which git ignores).

Results
-------
``python examples/finetune_transformer.py`` (CPython 3.11.7, jax 0.10.2, flax 0.12.8; a shared
2-core CPU VM on which other jobs kept the load average at 3-4, so every time is slower than on
an idle machine: 4 min 47 s of wall time for the whole script) printed (in the table's
present layout, narrowed after the run from its JSON)::

    pre-trained model: 116,705 parameters; validation loss (nats/char):
    1.575 on the base text (code), 1.931 on the shifted text (docstrings)
    before / after: the shifted text's, around fine-tuning; base after: the base text's
    method         rank     lr trainable model% before  after base after step ms merge diff
    ---------------------------------------------------------------------------------------
    no fine-tune                       0   0.0%  1.931  1.931      1.575
    full fine-tune       0.001   116,705 100.0%  1.931  1.739      1.787    50.3
    LoRA              4  0.003     9,216   7.9%  1.931  1.814      1.703    56.9    1.7e-05
    PiSSA             4  0.001     9,216   7.9%  1.931  1.822      1.667    59.0    2.0e-05
    DoRA              4  0.003    10,368   8.9%  1.931  1.811      1.710    61.2    1.7e-05
    LoRA-XS          28  0.001     9,408   8.1%  1.931  1.818      1.682    57.5    1.5e-05
    VeRA            672   0.01     9,216   7.9%  1.931  1.815      1.704   221.4    1.6e-05
    Kron              4  0.001     8,192   7.0%  1.931  1.820      1.662    87.8    1.6e-05

and the learning-rate sweep (``--sweep``; the PiSSA row from ``--methods PiSSA --sweep ...``,
run again once PiSSA took the exact SVD) printed the shifted validation loss after 300 steps::

    method            0.0003    0.001    0.003     0.01     0.03      0.1     best
    full fine-tune     1.758    1.739    1.760    1.894    2.688    3.170    0.001
    LoRA               1.841    1.822    1.814    1.820    1.851    3.061    0.003
    PiSSA              1.833    1.822    1.828    1.855    1.964    3.083    0.001
    DoRA               1.839    1.819    1.811    1.821    1.860    2.700    0.003
    LoRA-XS            1.828    1.818    1.822    1.861    1.982    2.496    0.001
    VeRA               1.886    1.849    1.828    1.815    1.820    1.862     0.01
    Kron               1.835    1.820    1.821    1.838    1.924    2.900    0.001

What this one small run shows, and no more:

* Every adapter starts exactly where the pre-trained model is (the ``before`` column; PiSSA and
  the Kronecker adapter up to float32 rounding of their residual split), and every merged model
  computes what its adapted model does to about 2e-5 in logits.
* With 8 % of the parameters trained, the six adapters end within 0.011 nats of each other
  (1.811-1.822), which is about what one step of the learning-rate grid changes: this run does
  not rank them. The full fine-tune learns the shift clearly better (1.739) in the same 300
  steps.
* It also forgets most: its loss on the base text rises from 1.575 to 1.787, the adapters' to
  1.66-1.71, least for the two that train the kernels' principal part (the Kronecker adapter
  1.662, PiSSA 1.667).
* At this size an adapter does not make a training step faster on a CPU: the step is
  dominated by the frozen network's forward and backward, to which LoRA-style adapters add
  small matmuls (57-61 ms against 50 ms for the full fine-tune), the Kronecker adapter its
  reshapes and contractions (88 ms), and VeRA at rank 672 two ``64 × 672`` products per layer
  (221 ms). What the adapters save here is trainable state (the optimizer's moments) and
  forgetting.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

# the sibling module (sphinx-gallery runs the examples from examples/ without __file__)
sys.path.insert(0, os.path.dirname(os.path.abspath(globals().get("__file__", "_"))))
import char_lm  # noqa: E402

from tensorfact import nn as tnn  # noqa: E402

#: The layers every adapter rule targets: attention projections and the MLP of every block.
TARGETS = r"blocks/\d+/(attn/(query|key|value|out)|mlp/(up|down))"

#: ``name -> (kind, settings, rank rule)``; ``None`` for the two reference rows. The rank rule
#: is ``"rank"`` (take ``--rank``) or ``"match"`` (the rank whose count is nearest LoRA's).
METHODS = {
    "no fine-tune": None,
    "full fine-tune": None,
    "LoRA": ("lora", {}, "rank"),
    "PiSSA": ("lora", {"init": "pissa", "svd_method": "exact"}, "rank"),
    "DoRA": ("dora", {}, "rank"),
    "LoRA-XS": ("lora_xs", {}, "match"),
    "VeRA": ("vera", {}, "match"),
    "Kron": ("kron", {}, "rank"),
}

#: AdamW learning rates of the fine-tunes, each the best of the sweep in the docstring.
LEARNING_RATES = {
    "full fine-tune": 1e-3,
    "LoRA": 3e-3,
    "PiSSA": 1e-3,
    "DoRA": 3e-3,
    "LoRA-XS": 1e-3,
    "VeRA": 1e-2,
    "Kron": 1e-3,
}

DEFAULT = dict(config=char_lm.Config(d_model=64, heads=4, layers=2, seq_len=64), batch=32,
               pretrain_steps=1000, pretrain_lr=6e-3, steps=300, eval_every=25, eval_batches=8,
               rank=4, timing_rounds=30)
SMALL = dict(config=char_lm.Config(d_model=16, heads=2, layers=1, seq_len=16), batch=4,
             pretrain_steps=10, pretrain_lr=1e-2, steps=6, eval_every=3, eval_batches=1, rank=2,
             timing_rounds=2)


def load_data(val_fraction: float = 0.1):
    """``{"base": (train, val), "shifted": (train, val)}`` of character ids."""
    return {name: char_lm.split(char_lm.encode(text()), val_fraction)
            for name, text in (("base", char_lm.base_text), ("shifted", char_lm.shifted_text))}


def _bar(total, desc, progress):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False, disable=not progress)


def pretrain(config, train_ids, val_batches, *, steps, lr, batch, seed=0, eval_every=100,
             progress=True):
    """Trains a fresh :class:`char_lm.CharTransformer` on ``train_ids`` (AdamW, warm-up then
    cosine decay, weight decay 0.1); returns ``(model, losses, val_curve)``."""
    model = char_lm.CharTransformer(config, rngs=nnx.Rngs(seed))
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 10), steps, lr / 10)
    optimizer = char_lm.make_optimizer(model, schedule, weight_decay=0.1)
    rng = np.random.default_rng(seed)
    losses, curve = [], []
    with _bar(steps, "pre-train", progress) as bar:
        for step in range(1, steps + 1):
            x = jnp.asarray(char_lm.sample_batch(train_ids, rng, batch, config.seq_len))
            losses.append(float(char_lm.train_step(model, optimizer, x)))
            if step % eval_every == 0 or step == steps:
                curve.append((step, char_lm.evaluate(model, val_batches)))
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return model, np.asarray(losses), np.asarray(curve)


def rules_for(name: str, rank: int):
    kind, settings, _ = METHODS[name]
    return [tnn.AdapterRule(TARGETS, kind, rank=rank, **settings)]


def trainable_at(model, name: str, rank: int):
    """The trainable count and the number of adapted layers of method ``name`` at ``rank``."""
    report = tnn.apply_adapters(model, rules_for(name, rank), rngs=nnx.Rngs(0))[1]
    return report.trainable, len(report.layers)


#: The trainable count at rank ``r`` of the kinds whose rank is matched, from the count ``c1``
#: at rank 1 and the number ``n`` of adapted layers: LoRA-XS trains ``r²`` per layer, VeRA
#: ``r + out``.
COUNT_AT_RANK = {"lora_xs": lambda c1, n, r: c1 * r * r,
                 "vera": lambda c1, n, r: c1 + n * (r - 1)}


def choose_ranks(model, rank: int, names) -> dict:
    """``{method: rank}``: ``rank`` for the ``"rank"`` methods; for the ``"match"`` ones the
    rank whose trainable count is the nearest to LoRA's at ``rank`` (LoRA-XS up to the model
    width, the narrowest side of every adapted kernel; VeRA up to 64 times the width)."""
    target = trainable_at(model, "LoRA", rank)[0]
    width = model.config.d_model
    ranks = {}
    for name in names:
        if METHODS[name] is None:
            continue
        kind, _, rule = METHODS[name]
        if rule == "rank":
            ranks[name] = rank
            continue
        c1, n = trainable_at(model, name, 1)
        candidates = np.arange(1, (width if kind == "lora_xs" else 64 * width) + 1)
        counts = COUNT_AT_RANK[kind](c1, n, candidates)
        ranks[name] = int(candidates[np.argmin(np.abs(counts - target))])
    return ranks


def finetune(pretrained, name, *, data, val, lr, rank=None, steps, batch, eval_every,
             seed=0, progress=True):
    """Adapts a copy of ``pretrained`` to the shifted text by method ``name``; returns a row
    dict (see :func:`print_table`) with the ``curve`` of the shifted validation loss."""
    config = pretrained.config
    model_params = char_lm.n_params(pretrained)
    row = dict(name=name, rank=rank, lr=lr, report=None)
    if METHODS[name] is None:
        model, wrt = nnx.clone(pretrained), nnx.Param
        row["trainable"] = model_params if name == "full fine-tune" else 0
    else:
        model, report = tnn.apply_adapters(pretrained, rules_for(name, rank),
                                           rngs=nnx.Rngs(seed))
        wrt, row["trainable"], row["report"] = tnn.adapter_filter(), report.trainable, report
        assert report.model_params == model_params
    row["share"] = row["trainable"] / model_params
    row["before"] = char_lm.evaluate(model, val["shifted"])
    curve = [(0, row["before"])]
    if row["trainable"]:
        optimizer = char_lm.make_optimizer(model, lr, wrt=wrt)
        rng = np.random.default_rng(seed + 1)  # the same batches for every method
        with _bar(steps, name, progress) as bar:
            for step in range(1, steps + 1):
                x = jnp.asarray(char_lm.sample_batch(data, rng, batch, config.seq_len))
                loss = float(char_lm.train_step(model, optimizer, x, wrt))
                if step % eval_every == 0 or step == steps:
                    curve.append((step, char_lm.evaluate(model, val["shifted"])))
                bar.update()
                bar.set_postfix(loss=f"{loss:.3f}")
    row["curve"] = np.asarray(curve)
    row["after"] = curve[-1][1]
    row["base_after"] = char_lm.evaluate(model, val["base"])
    row["step_ms"] = float("nan")  # set by time_steps
    if row["trainable"]:
        row["timer"] = (nnx.clone((model, optimizer)), wrt, x)
    row["merge_diff"] = float("nan")
    if row["report"] is not None:
        merged = tnn.merge_adapters(model)
        x = jnp.asarray(val["shifted"][0][:, :-1])
        diff = char_lm.logits(merged, x) - char_lm.logits(model, x)
        row["merge_diff"] = float(jnp.max(jnp.abs(diff)))
        # no adapter module and no adapter parameter left
        row["merged_is_plain"] = (char_lm.n_params(merged, nnx.LoRAParam) == 0 and not any(
            isinstance(n, tnn.AdaptedLayer) for _, n in nnx.iter_graph(merged)))
    return row


def prepare(settings, *, seed=0, progress=True):
    """Loads the texts and pre-trains; returns ``(base, model, data, val)``: ``base`` a dict of
    the pre-trained model's ``params``, training ``losses``, validation ``curve``, time and
    validation losses on both texts, ``val`` the fixed validation batches of both texts."""
    config, batch = settings["config"], settings["batch"]
    data = load_data()
    val = {k: char_lm.eval_batches(v[1], settings["eval_batches"], batch, config.seq_len)
           for k, v in data.items()}
    start = time.perf_counter()
    model, losses, curve = pretrain(config, data["base"][0], val["base"],
                                    steps=settings["pretrain_steps"],
                                    lr=settings["pretrain_lr"], batch=batch, seed=seed,
                                    eval_every=settings["eval_every"] * 4, progress=progress)
    base = dict(config=config, params=char_lm.n_params(model), losses=losses, curve=curve,
                pretrain_s=time.perf_counter() - start,
                val_base=char_lm.evaluate(model, val["base"]),
                val_shifted=char_lm.evaluate(model, val["shifted"]))
    return base, model, data, val


def time_steps(rows, rounds: int) -> None:
    """Sets each row's ``step_ms``: the median wall time of one training step (the batch
    already on the device) over ``rounds`` rounds that run every method's step in turn, on a
    copy of its fine-tuned model and optimizer, after one round of warm-up (compilation). Taking
    the methods in turn slows them alike when other work shares the CPU."""
    timers = [(row, row.pop("timer")) for row in rows if "timer" in row]
    times = {id(row): [] for row, _ in timers}
    for k in range(rounds + 1):
        for row, ((model, optimizer), wrt, x) in timers:
            start = time.perf_counter()
            float(char_lm.train_step(model, optimizer, x, wrt))
            if k:
                times[id(row)].append(time.perf_counter() - start)
    for row, _ in timers:
        row["step_ms"] = 1e3 * float(np.median(times[id(row)]))


def finetune_all(settings, model, data, val, *, names, learning_rates=None, seed=0,
                 progress=True):
    """One row of :func:`finetune` per method of ``names``, with its step time
    (:func:`time_steps`)."""
    lrs = dict(LEARNING_RATES, **(learning_rates or {}))
    ranks = choose_ranks(model, settings["rank"], names)
    rows = [finetune(model, name, data=data["shifted"][0], val=val, lr=lrs.get(name),
                     rank=ranks.get(name), steps=settings["steps"], batch=settings["batch"],
                     eval_every=settings["eval_every"], seed=seed, progress=progress)
            for name in names]
    time_steps(rows, settings["timing_rounds"])
    return rows


def run(settings, *, names=tuple(METHODS), learning_rates=None, seed=0, progress=True):
    """Pre-trains, then fine-tunes by every method of ``names``; returns ``(base, rows)``."""
    base, model, data, val = prepare(settings, seed=seed, progress=progress)
    return base, finetune_all(settings, model, data, val, names=names,
                              learning_rates=learning_rates, seed=seed, progress=progress)


def print_table(base, rows):
    print(f"pre-trained model: {base['params']:,} parameters; validation loss (nats/char):\n"
          f"{base['val_base']:.3f} on the base text (code), {base['val_shifted']:.3f} on the "
          "shifted text (docstrings)\n"
          "before / after: the shifted text's, around fine-tuning; base after: the base text's")
    head = (f"{'method':<14} {'rank':>4} {'lr':>6} {'trainable':>9} {'model%':>6} "
            f"{'before':>6} {'after':>6} {'base after':>10} {'step ms':>7} {'merge diff':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        rank = "" if r["rank"] is None else str(r["rank"])
        lr = "" if r["lr"] is None or not r["trainable"] else f"{r['lr']:g}"
        step = "" if np.isnan(r["step_ms"]) else f"{r['step_ms']:.1f}"
        diff = "" if np.isnan(r["merge_diff"]) else f"{r['merge_diff']:.1e}"
        print(f"{r['name']:<14} {rank:>4} {lr:>6} {r['trainable']:>9,} "
              f"{100 * r['share']:>5.1f}% {r['before']:>6.3f} {r['after']:>6.3f} "
              f"{r['base_after']:>10.3f} {step:>7} {diff:>10}".rstrip())


def plot(base, rows, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    losses = base["losses"]
    window = max(1, min(25, len(losses) // 5))
    ax.plot(np.arange(window, len(losses) + 1),
            np.convolve(losses, np.ones(window) / window, mode="valid"),
            label=f"training batches ({window}-step mean)")
    ax.plot(base["curve"][:, 0], base["curve"][:, 1], "o-", label="validation (code)")
    ax.set(xlabel="pre-training step", ylabel="cross-entropy (nats / char)",
           title="pre-training on the base text")
    ax.legend()
    ax = axes[1]
    for r in rows:
        if r["name"] == "no fine-tune":
            ax.axhline(r["after"], color="k", ls=":", label="no fine-tune")
        else:
            ax.plot(r["curve"][:, 0], r["curve"][:, 1], marker=".",
                    label=f"{r['name']} ({r['trainable']:,} trained)")
    ax.set(xlabel="fine-tuning step", ylabel="shifted validation loss (nats / char)",
           title="adapting to the shifted text (docstrings)")
    ax.legend(fontsize=8)
    ax = axes[2]
    names = [r["name"] for r in rows]
    ax.barh(names, [r["base_after"] for r in rows], color="tab:gray")
    ax.axvline(base["val_base"], color="k", ls="--", lw=1, label="before fine-tuning")
    low = min(r["base_after"] for r in rows)
    ax.set_xlim(0.95 * low, None)
    ax.invert_yaxis()
    ax.set(xlabel="base validation loss after (nats / char)", title="forgetting")
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep(settings, lrs, names, *, seed=0, progress=True):
    """Pre-trains once, then fine-tunes every method at every learning rate; prints the
    shifted validation loss after each and the best rate; returns ``{lr: {method: loss}}``."""
    _, model, data, val = prepare(settings, seed=seed, progress=progress)
    results = {}
    for lr in lrs:
        rows = finetune_all(settings, model, data, val, names=names,
                            learning_rates={n: lr for n in names}, seed=seed,
                            progress=progress)
        results[lr] = {r["name"]: r["after"] for r in rows}
    print("shifted validation loss after fine-tuning, by learning rate")
    print(f"{'method':<15}" + "".join(f"{lr:>9g}" for lr in lrs) + "     best")
    for name in names:
        cells = [results[lr][name] for lr in lrs]
        print(f"{name:<15}" + "".join(f"{c:>9.3f}" for c in cells)
              + f"{lrs[int(np.argmin(cells))]:>9g}")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--small", action="store_true",
                        help="a tiny model and a handful of steps (the test suite's run)")
    parser.add_argument("--rank", type=int, default=None, help="LoRA's rank (default 4)")
    parser.add_argument("--steps", type=int, default=None, help="fine-tuning steps (300)")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="default 1000")
    parser.add_argument("--methods", nargs="+", default=None, choices=list(METHODS),
                        metavar="METHOD", help=f"a subset of: {', '.join(METHODS)}")
    parser.add_argument("--sweep", type=float, nargs="+", default=None, metavar="LR",
                        help="instead of one run: every method at each of these learning "
                             "rates, and the best")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("--out", default="out", help="directory for finetune_transformer.png")
    args = parser.parse_args(argv)
    settings = dict(SMALL if args.small else DEFAULT)
    for key in ("rank", "steps", "pretrain_steps"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    names = tuple(args.methods or METHODS)
    if args.sweep:
        return sweep(settings, args.sweep, [n for n in names if n != "no fine-tune"],
                     seed=args.seed, progress=not args.no_progress)
    base, rows = run(settings, names=names, seed=args.seed, progress=not args.no_progress)
    print_table(base, rows)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "finetune_transformer.png")
    c = settings["config"]
    plot(base, rows, path, f"char-level transformer (d={c.d_model}, {c.layers} layers, "
                           f"{base['params']:,} parameters): stdlib code (a-m) → docstrings (n-z), "
                           f"{settings['steps']} fine-tuning steps")
    print(f"figure written to {path}")
    with open(os.path.join(args.out, "finetune_transformer.json"), "w") as f:
        json.dump(dict(settings={k: (v._asdict() if k == "config" else v)
                                 for k, v in settings.items()},
                       base={k: v for k, v in base.items() if np.isscalar(v)},
                       rows=[{k: v for k, v in r.items() if np.isscalar(v) or v is None}
                             for r in rows]), f, indent=1)
    return base, rows


if __name__ == "__main__":
    main()
