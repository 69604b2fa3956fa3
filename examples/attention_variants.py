"""Factorized attention and experts in a small language model
==========================================================

Factorized attention and experts in one small language model: multi-head attention against
Tensor Product Attention, Multi-matrix Factorization Attention (and its key-reuse form) and a
multilinear mixture-of-experts feed-forward, trained from scratch on the same text.

The model is ``char_lm.py``'s character-level decoder-only transformer (learned position
embeddings, pre-LayerNorm blocks, a GELU MLP), trained on the code of the running interpreter's
standard library (the modules ``a*.py``-``m*.py``; nothing is downloaded). Only the attention
(or the feed-forward part) changes between the rows, each sized to about the parameters of the
baseline's:

* ``MHA``: :class:`tensorfact.nn.MultiHeadAttention`, 4 heads of 16 (the baseline; its KV cache
  holds ``2 h d_h`` numbers per token and layer).
* ``TPA``: :class:`tensorfact.nn.TensorProductAttention` (Zhang et al. 2025), queries of rank 6,
  keys and values of rank 2 built per token from head and dimension factors; the cache holds the
  factors, ``2 R_kv (h + d_h)`` numbers per token.
* ``MFA`` / ``MFA-KR``: :class:`tensorfact.nn.MultiMatrixFactorizationAttention` (Hu et al.
  2024), 8 query heads through a low-rank query projection and one shared key/value head (the
  key-reuse form derives the values from the keys).
* ``μMoE``: the baseline's attention with each MLP projection replaced by a
  :class:`tensorfact.nn.MultilinearMoE` (Oldfield et al. 2024): many experts held as one CP
  tensor, softly routed, never formed.

The table gives the parameters of the whole model, the validation loss (nats per character)
after the same number of AdamW steps on the same batches, the KV-cache bytes per token (all
layers, float32), the training step time, decode tokens per second (greedy, batch 8, compiled
``decode_step`` of every block with its cache; CPU figures are for shape only) and the largest
difference between the logits of the cached decode and of the full causal forward (the cache
must give what the forward gives). The loss curves go to ``--out``/attention_variants.png.

Usage::

    python examples/attention_variants.py [--small] [--steps 600] [--out out]

``--small`` is a tiny model and a handful of steps for the test suite (seconds; the numbers
mean nothing).

Results
-------
``python examples/attention_variants.py --no-progress`` (CPython 3.11.7, jax 0.10.2, flax
0.12.8; a shared 2-core CPU VM with a benchmark running beside it, so every time is slower than
on an idle machine: 2 min 53 s of wall time for the whole script) printed::

    model      params val loss KV B/token step ms decode tok/s decode diff
    ----------------------------------------------------------------------
    MHA       116,193    1.738      1,024    24.5        7,751     8.3e-06
    TPA       117,217    1.766        640    47.5        5,809     6.7e-06
    MFA       116,257    1.740        256    44.7        7,107     6.2e-06
    MFA-KR    114,721    1.792        128    68.0        7,044     4.7e-06
    μMoE      116,193    1.854      1,024    31.1        5,657     9.0e-06

What this one small run (600 steps, one seed) shows, and no more:

* Every cached decode computes what the full causal forward does (to ~1e-5 in logits).
* MFA matches multi-head attention's validation loss (1.740 against 1.738) with a quarter of
  its KV cache; TPA is 0.03 nats behind with 0.625 of it, MFA-KR 0.05 behind with an eighth.
  At this size the differences of 0.03-0.05 are within what a second seed or learning rate
  might change; the cache ratios are exact.
* The μMoE feed-forward (64 CP experts per projection at the dense MLP's parameter count) is
  0.12 nats behind the dense MLP after 600 steps: its experts are rank-limited mixtures, and
  this run does not give it the longer training the paper uses.
* On a CPU the factorized attentions are slower per training step (two more small matmuls per
  projection, and TPA rebuilds keys and values from the factors), and decoding a 64-token
  model is dominated by dispatch: the cache savings are memory, which matters at long contexts
  (``benchmarks/bench_attention.py``), not speed at this size.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

# sphinx-gallery runs the examples from examples/ without __file__
sys.path.insert(0, os.path.dirname(os.path.abspath(globals().get("__file__", "_"))))
import char_lm  # noqa: E402  (the shared model code beside this file)

import tensorfact.nn as tnn  # noqa: E402

SETTINGS = {
    "default": dict(d_model=64, heads=4, layers=2, seq_len=64, batch=32, steps=600, lr=3e-3,
                    eval_every=100, eval_batches=8, decode_batch=8, timing_rounds=20,
                    max_chars=None),
    "small": dict(d_model=16, heads=2, layers=1, seq_len=16, batch=4, steps=6, lr=1e-2,
                  eval_every=3, eval_batches=1, decode_batch=2, timing_rounds=2,
                  max_chars=200_000),
}


class Causal(nnx.Module):
    """Calls a tensorfact attention (causal by itself) where ``char_lm.Block`` passes
    ``nnx.MultiHeadAttention``'s causal mask."""

    def __init__(self, attention):
        self.inner = attention

    def __call__(self, x, mask=None):
        return self.inner(x)


class MoEMLP(nnx.Module):
    """The feed-forward block with both projections multilinear mixtures of experts."""

    def __init__(self, d, hidden, *, num_experts, rank, rngs):
        self.up = tnn.MultilinearMoE(d, hidden, num_experts=num_experts, rank=rank, rngs=rngs)
        self.down = tnn.MultilinearMoE(hidden, d, num_experts=num_experts, rank=rank,
                                       rngs=rngs)

    def __call__(self, x):
        return self.down(jax.nn.gelu(self.up(x)))


def variants(config: char_lm.Config, num_experts: int):
    """``{name: (attention factory, mlp factory or None)}``, sized to about the baseline's
    parameters (the μMoE rank chosen so that its two layers hold about the dense MLP's)."""
    d, h = config.d_model, config.heads
    head_dim = d // h

    def mha(c, rngs):
        return Causal(tnn.MultiHeadAttention(h, d, rngs=rngs))

    def tpa(c, rngs):
        return Causal(tnn.TensorProductAttention(h, d, q_rank=6, kv_rank=2, head_dim=head_dim,
                                                 rngs=rngs))

    def mfa(key_reuse):
        def make(c, rngs):
            return Causal(tnn.MultiMatrixFactorizationAttention(
                2 * h, d, q_rank=d // 2, head_dim=head_dim, key_reuse=key_reuse, rngs=rngs))
        return make

    hidden = config.mlp_ratio * d
    dense = 2 * d * hidden + hidden + d
    # the count is affine in the rank: two abstract builds give it
    p1, p2 = (_moe_params(d, hidden, num_experts, r) for r in (1, 2))
    rank = max(1, round((dense - p1) / (p2 - p1)) + 1)

    def moe(c, rngs):
        return MoEMLP(d, hidden, num_experts=num_experts, rank=rank, rngs=rngs)

    return {"MHA": (mha, None), "TPA": (tpa, None), "MFA": (mfa(False), None),
            "MFA-KR": (mfa(True), None), "μMoE": (mha, moe)}


def _moe_params(d, hidden, num_experts, rank):
    """The parameters of :class:`MoEMLP` (built abstractly: nothing is drawn)."""
    mlp = nnx.eval_shape(lambda: MoEMLP(d, hidden, num_experts=num_experts, rank=rank,
                                        rngs=nnx.Rngs(0)))
    return char_lm.n_params(mlp)


def build(config, attention, mlp, seed):
    kwargs = dict(attention=attention)
    if mlp is not None:
        kwargs["mlp"] = mlp
    return char_lm.CharTransformer(config, rngs=nnx.Rngs(seed), **kwargs)


# -- decoding with the caches ------------------------------------------------------------------
def init_caches(model, batch):
    return [block.attn.inner.init_cache(batch, model.config.seq_len) for block in model.blocks]


@nnx.jit
def decode_step(model, ids_t, position, caches):
    """Logits ``(batch, vocab)`` of the next character after ``ids_t`` ``(batch,)`` at
    ``position``, and the updated caches: the model's forward for one token."""
    x = model.embed(ids_t) + model.pos(position)
    new = []
    for block, cache in zip(model.blocks, caches):
        a, cache = block.attn.inner.decode_step(block.ln1(x), cache)
        x = x + a
        x = x + block.mlp(block.ln2(x))
        new.append(cache)
    x = model.ln_f(x)
    return (model.embed.attend(x) if model.head is None else model.head(x)), new


def decode_check(model, ids):
    """The largest difference between the logits of a token-by-token cached decode of ``ids``
    ``(batch, t)`` and of the full causal forward."""
    caches = init_caches(model, ids.shape[0])
    full = char_lm.logits(model, ids)
    diff = 0.0
    for t in range(ids.shape[1]):
        step, caches = decode_step(model, ids[:, t], jnp.asarray(t), caches)
        diff = max(diff, float(jnp.max(jnp.abs(step - full[:, t]))))
    return diff


def decode_rate(model, batch, rounds):
    """Greedy decode tokens per second (batch × steps / time) over ``seq_len`` steps, after
    one compiling pass; the median of ``rounds`` passes."""
    times = []
    for k in range(rounds + 1):
        caches = init_caches(model, batch)
        ids = jnp.zeros((batch,), jnp.int32)
        start = time.perf_counter()
        for t in range(model.config.seq_len):
            logits, caches = decode_step(model, ids, jnp.asarray(t), caches)
            ids = jnp.argmax(logits, -1).astype(jnp.int32)
        ids.block_until_ready()
        if k:
            times.append(time.perf_counter() - start)
    return batch * model.config.seq_len / float(np.median(times))


def cache_bytes(model) -> int:
    """KV-cache bytes per token of the whole model (every layer)."""
    return sum(int(block.attn.inner.cache_bytes_per_token) for block in model.blocks)


# -- training ----------------------------------------------------------------------------------
def _bar(total, desc, progress):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False, disable=not progress)


def train(name, model, train_ids, val_batches, s, *, seed, progress):
    """AdamW (warm-up, cosine decay) on the same batches for every model; returns the row."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, s["lr"], max(1, s["steps"] // 10),
                                                  s["steps"], s["lr"] / 10)
    optimizer = char_lm.make_optimizer(model, schedule, weight_decay=0.1)
    rng = np.random.default_rng(seed)
    curve, times = [], []
    with _bar(s["steps"], name, progress) as bar:
        for step in range(1, s["steps"] + 1):
            x = jnp.asarray(char_lm.sample_batch(train_ids, rng, s["batch"],
                                                 model.config.seq_len))
            start = time.perf_counter()
            loss = float(char_lm.train_step(model, optimizer, x))
            times.append(time.perf_counter() - start)
            if step % s["eval_every"] == 0 or step == s["steps"]:
                curve.append((step, char_lm.evaluate(model, val_batches)))
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}")
    return dict(name=name, params=char_lm.n_params(model), val=curve[-1][1],
                curve=np.asarray(curve), step_ms=1e3 * float(np.median(times[1:] or times)))


def run(settings, *, names=None, seed=0, progress=True):
    s = settings
    config = char_lm.Config(d_model=s["d_model"], heads=s["heads"], layers=s["layers"],
                            seq_len=s["seq_len"])
    train_ids, val_ids = char_lm.split(char_lm.encode(char_lm.base_text(s["max_chars"])))
    val_batches = char_lm.eval_batches(val_ids, s["eval_batches"], s["batch"], config.seq_len)
    table = variants(config, num_experts=64 if s["d_model"] >= 64 else 8)
    rows = []
    for name in names or table:
        attention, mlp = table[name]
        model = build(config, attention, mlp, seed)
        row = train(name, model, train_ids, val_batches, s, seed=seed, progress=progress)
        probe = jnp.asarray(val_batches[0][: s["decode_batch"], :-1])
        row.update(cache_bytes=cache_bytes(model), decode_diff=decode_check(model, probe),
                   tokens_per_s=decode_rate(model, s["decode_batch"], s["timing_rounds"]))
        rows.append(row)
    return rows


def print_table(rows):
    head = (f"{'model':<8} {'params':>8} {'val loss':>8} {'KV B/token':>10} {'step ms':>7} "
            f"{'decode tok/s':>12} {'decode diff':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['name']:<8} {r['params']:>8,} {r['val']:>8.3f} {r['cache_bytes']:>10,} "
              f"{r['step_ms']:>7.1f} {r['tokens_per_s']:>12,.0f} {r['decode_diff']:>11.1e}")


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.plot(r["curve"][:, 0], r["curve"][:, 1], "o-",
                label=f"{r['name']} ({r['params']:,} params, {r['cache_bytes']} B/token)")
    ax.set(xlabel="training step", ylabel="validation loss (nats / char)",
           title="character LM on the standard library's code")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--small", action="store_true",
                        help="a tiny model and a few steps (seconds; for the test suite)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (600)")
    parser.add_argument("--models", nargs="+", default=None,
                        choices=["MHA", "TPA", "MFA", "MFA-KR", "μMoE"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("--out", default="out", help="directory for attention_variants.png")
    args = parser.parse_args(argv)
    settings = dict(SETTINGS["small" if args.small else "default"])
    if args.steps is not None:
        if args.steps < 1:
            parser.error(f"--steps must be a positive integer, got {args.steps}.")
        settings["steps"] = args.steps
    rows = run(settings, names=args.models, seed=args.seed, progress=not args.no_progress)
    print_table(rows)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "attention_variants.png")
    plot(rows, path)
    print(f"loss curves: {path}")
    bad = [r["name"] for r in rows if not r["decode_diff"] < 1e-3]
    if bad:
        raise SystemExit(f"the cached decode differs from the full forward for {bad}")
    return rows


if __name__ == "__main__":
    main()
