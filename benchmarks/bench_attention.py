"""KV-cache memory and decode-step time of the factorized attentions against multi-head
attention, and the multilinear mixture of experts against a dense MLP of the same size.

Two works, one process, the same inputs on every side:

* **decode**: ``tfa.nn.MultiHeadAttention`` (``--heads`` heads of ``--head-dim``),
  ``TensorProductAttention`` (the same heads; queries of rank ``--q-rank``, keys and values
  of rank ``--kv-rank``), ``MultiMatrixFactorizationAttention`` and its key-reuse form (twice
  the query heads, a query projection of rank ``features / 2``, one shared key/value head),
  each at ``--features``. For every cache length ``L`` of ``--lengths``: the cache's bytes for
  ``--batch`` sequences (``cache_bytes_per_token · L · batch``, checked against the arrays
  ``init_cache`` returns) and the time of one compiled ``decode_step`` with the cache filled
  to ``L − 1`` (the step attends over every cached token). ``err``: the largest difference
  between a token-by-token cached decode of 32 tokens and the full causal forward (the cache
  must give what the forward gives), relative to the forward's largest output.
* **mixture of experts**: a feed-forward block ``features → 4·features → features`` of two
  ``nnx.Linear`` against the same block with each projection a ``tfa.nn.MultilinearMoE``
  (``--experts`` experts, CP and tensor ring, the rank chosen so that the block holds about
  the dense block's parameters), on ``--tokens`` tokens: forward, and forward + backward (the
  gradient of a squared loss with respect to every parameter). ``err``: the forward against a
  float64 NumPy evaluation of the same parameters on 64 tokens (the dense MLP's product; each
  mixture from its factors or cores, never forming the expert tensor, which at the default
  size would hold 67 million numbers per layer).

Timing: ``_harness.median_ms`` (the compiling call apart, the median of ``--repeats``).

    python benchmarks/bench_attention.py --small      # smoke, seconds
    python benchmarks/bench_attention.py              # 512 features, L up to 4096
"""

from __future__ import annotations

import os
import platform

import numpy as np

import jax
import jax.numpy as jnp

from _harness import (OtherLoad, add_output_flags, apply_preset, check_positive, command_line,
                      cpu_name, ints, median_ms, parser, sync_jax, write_json)

PRESETS = {
    "small": dict(features=32, heads=2, head_dim=16, q_rank=2, kv_rank=1, lengths=(16, 32),
                  batch=2, experts=4, tokens=32, repeats=2),
    "cpu": dict(features=512, heads=8, head_dim=64, q_rank=6, kv_rank=2,
                lengths=(256, 1024, 4096), batch=8, experts=64, tokens=1024, repeats=10),
}


def attentions(a, tnn, nnx):
    """``{name: layer}``, built from one seed."""
    f, h, d = a.features, a.heads, a.head_dim
    return {
        "MHA": tnn.MultiHeadAttention(h, f, head_dim=d, rngs=nnx.Rngs(0)),
        "TPA": tnn.TensorProductAttention(h, f, q_rank=a.q_rank, kv_rank=a.kv_rank,
                                          head_dim=d, rngs=nnx.Rngs(0)),
        "MFA": tnn.MultiMatrixFactorizationAttention(2 * h, f, q_rank=f // 2, head_dim=d,
                                                     rngs=nnx.Rngs(0)),
        "MFA-KR": tnn.MultiMatrixFactorizationAttention(2 * h, f, q_rank=f // 2, head_dim=d,
                                                        key_reuse=True, rngs=nnx.Rngs(0)),
    }


def n_params(module, nnx):
    return sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(module, nnx.Param)))


def decode_error(layer, nnx, features, seed=0):
    """Largest |cached decode − causal forward| over 32 tokens, over the forward's largest
    |output|."""
    x = jax.random.normal(jax.random.key(seed), (2, 32, features))
    full = np.asarray(layer(x), np.float64)
    graph, state = nnx.split(layer)

    @jax.jit
    def step(state, x_t, cache):
        return nnx.merge(graph, state).decode_step(x_t, cache)

    cache = layer.init_cache(2, 32)
    worst = 0.0
    for t in range(32):
        y, cache = step(state, x[:, t], cache)
        worst = max(worst, float(np.max(np.abs(np.asarray(y, np.float64) - full[:, t]))))
    return worst / float(np.max(np.abs(full)))


def decode_rows(a, log):
    from flax import nnx

    import tensorfact.nn as tnn

    rows = []
    for name, layer in attentions(a, tnn, nnx).items():
        err = decode_error(layer, nnx, a.features)
        graph, state = nnx.split(layer)

        @jax.jit
        def step(state, x_t, cache):
            return nnx.merge(graph, state).decode_step(x_t, cache)

        x_t = jax.random.normal(jax.random.key(1), (a.batch, a.features))
        for length in a.lengths:
            cache = layer.init_cache(a.batch, length)
            held = sum(int(e.nbytes) for e in cache.entries)
            per_token = int(layer.cache_bytes_per_token)
            assert held == per_token * length * a.batch, (name, held, per_token)
            cache = cache._replace(index=jnp.asarray(length - 1, cache.index.dtype))
            _, ms, first = median_ms(lambda: step(state, x_t, cache), sync_jax, a.repeats)
            row = dict(work="decode", contender=name, length=length, params=n_params(layer, nnx),
                       cache_bytes_per_token=per_token, cache_mib=held / 2**20, ms=ms,
                       compile_s=first, err=err)
            rows.append(row)
            log(row)
    return rows


def moe_rows(a, log):
    from flax import nnx

    import tensorfact.nn as tnn

    f, hidden = a.features, 4 * a.features

    class Dense(nnx.Module):
        def __init__(self):
            self.up = nnx.Linear(f, hidden, rngs=nnx.Rngs(0))
            self.down = nnx.Linear(hidden, f, rngs=nnx.Rngs(1))

        def __call__(self, x):
            return self.down(jax.nn.gelu(self.up(x)))

    class MoE(nnx.Module):
        def __init__(self, kind, rank):
            self.up = tnn.MultilinearMoE(f, hidden, num_experts=a.experts, rank=rank, kind=kind,
                                         rngs=nnx.Rngs(0))
            self.down = tnn.MultilinearMoE(hidden, f, num_experts=a.experts, rank=rank,
                                           kind=kind, rngs=nnx.Rngs(1))

        def __call__(self, x):
            return self.down(jax.nn.gelu(self.up(x)))

    dense = Dense()
    target = n_params(dense, nnx)

    def matched(kind):
        """The rank whose block's count is nearest the dense block's (the count grows with the
        rank: a bisection over abstract builds)."""
        def count(r):
            return n_params(nnx.eval_shape(lambda: MoE(kind, r)), nnx)
        lo, hi = 1, 2
        while count(hi) < target:
            lo, hi = hi, 2 * hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
        return min((lo, hi), key=lambda r: abs(count(r) - target))

    x = jax.random.normal(jax.random.key(2), (a.tokens, f))
    x64 = np.asarray(x[:64], np.float64)
    gelu = jax.nn.gelu

    def reference(model):
        """The first 64 outputs in float64 on the host, from the parameters: the dense
        product, or each μMoE layer's mixture evaluated from its factors (CP:
        ``((g A) ⊙ (x U)) Cᵀ``; TR: ``tr(M_g M_x G_o[:, o, :])``) in float64."""
        def f64(v):
            return np.asarray(v[...], np.float64)

        def layer(lay, h):
            if isinstance(lay, nnx.Linear):
                return h @ f64(lay.kernel) + f64(lay.bias)
            g = np.asarray(lay.gates(jnp.asarray(h, jnp.float32)), np.float64)
            if lay.kind == "cp":
                a, u, c = (f64(lay.factors[k]) for k in range(3))
                return ((g @ a) * (h @ u)) @ c.T + f64(lay.bias)
            gn, gi, go = (f64(lay.cores[k]) for k in range(3))
            m = np.einsum("bn,rns->brs", g, gn) @ np.einsum("bi,ris->brs", h, gi)
            return np.einsum("brs,sor->bo", m, go) + f64(lay.bias)
        h = np.asarray(gelu(jnp.asarray(layer(model.up, x64))), np.float64)
        return layer(model.down, h)

    contenders = {"dense MLP (2 nnx.Linear)": dense}
    for kind in ("cp", "tr"):
        contenders[f"μMoE {kind.upper()}"] = MoE(kind, matched(kind))
    rows = []
    for name, model in contenders.items():
        graph, state = nnx.split(model)
        forward = jax.jit(lambda state, x: nnx.merge(graph, state)(x))
        grad = jax.jit(jax.grad(lambda state, x: jnp.mean(nnx.merge(graph, state)(x) ** 2)))
        out = np.asarray(forward(state, x)[:64], np.float64)
        ref = reference(model)
        err = float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))
        for pass_, fn in (("fwd", forward), ("fwd+bwd", grad)):
            _, ms, first = median_ms(lambda: fn(state, x), sync_jax, a.repeats)
            row = dict(work="moe", contender=name, pass_=pass_, tokens=a.tokens,
                       params=n_params(model, nnx),
                       rank=getattr(getattr(model, "up", None), "rank", None), ms=ms,
                       compile_s=first, err=err)
            rows.append(row)
            log(row)
    return rows


def format_tables(rows):
    lines = ["| attention | params | L | cache B/token | cache MiB (batch) | decode step ms | "
             "first s | decode err |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in (r for r in rows if r["work"] == "decode"):
        lines.append(f"| {r['contender']} | {r['params']:,} | {r['length']} | "
                     f"{r['cache_bytes_per_token']:,} | {r['cache_mib']:.2f} | {r['ms']:.3f} | "
                     f"{r['compile_s']:.2f} | {r['err']:.1e} |")
    lines += ["", "| feed-forward | rank | params | pass | ms | first s | err |",
              "|---|---:|---:|---|---:|---:|---:|"]
    for r in (r for r in rows if r["work"] == "moe"):
        rank = "" if r["rank"] is None else r["rank"]
        lines.append(f"| {r['contender']} | {rank} | {r['params']:,} | {r['pass_']} | "
                     f"{r['ms']:.2f} | {r['compile_s']:.2f} | {r['err']:.1e} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = parser("KV-cache bytes and decode-step time of MHA, TPA, MFA and MFA-KR against the "
               "cache length, and the multilinear MoE against a dense MLP of the same size.",
               small="32 features, lengths 16 and 32: seconds")
    p.add_argument("--features", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--head-dim", type=int)
    p.add_argument("--q-rank", type=int, help="TPA's query rank")
    p.add_argument("--kv-rank", type=int, help="TPA's key/value rank")
    p.add_argument("--lengths", type=ints("--lengths"), help="cache lengths, comma list")
    p.add_argument("--batch", type=int, help="sequences decoded at once")
    p.add_argument("--experts", type=int, help="experts of each μMoE layer")
    p.add_argument("--tokens", type=int, help="tokens through the feed-forward blocks")
    p.add_argument("--repeats", type=int)
    add_output_flags(p)
    args = p.parse_args(argv)
    apply_preset(args, PRESETS)
    check_positive(p, args, ("features", "heads", "head_dim", "q_rank", "kv_rank", "batch",
                             "experts", "tokens", "repeats"))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    import flax

    env = dict(python=platform.python_version(), jax=jax.__version__, flax=flax.__version__,
               device=str(jax.devices()[0].device_kind), cpu=cpu_name(), cores=os.cpu_count())
    config = {k: v for k, v in vars(args).items() if k not in ("json", "quiet")}
    print("# " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print("# " + ", ".join(f"{k} {v}" for k, v in config.items()))

    def log(row):
        if not args.quiet:
            print("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in row.items()), flush=True)

    other = OtherLoad().start()
    rows = decode_rows(args, log) + moe_rows(args, log)
    env["other_cores"] = other.stop()
    print(format_tables(rows))
    print(f"# other processes kept {env['other_cores']} cores busy on average (of "
          f"{os.cpu_count()})")
    out = dict(environment=env, config=config,
               command=command_line("bench_attention.py", argv), results=rows)
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
