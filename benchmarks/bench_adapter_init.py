"""Times tensorfact's PiSSA initialisation against PEFT's ``pissa_niter_4``, with the energy each
captures (issue: "be faster than PEFT on the CPU too, at no worse captured energy").

Two works, each on weights with singular values ``(1 + i)^{-1/2}`` (the slow decay of trained
weights) and random orthogonal singular vectors, fixed seed:

* **one layer**: one ``--size`` square weight, rank ``--rank``. Contenders:
  ``tfa.nn.LoRA(base, r, init="pissa")`` as a user calls it (eager; its default sketch, ``r + 8``
  columns and 2 power iterations), the same with PEFT's settings (``oversample=0,
  n_power_iter=4``), and PEFT's ``get_peft_model`` with ``LoraConfig(r, lora_alpha=r,
  init_lora_weights="pissa_niter_4")`` on a one-``nn.Linear`` model (``torch.svd_lowrank(W,
  q=r, niter=4)``).
* **a stack**: ``--layers`` square ``--stack-size`` weights (the same spectrum, each with its
  own singular vectors), rank ``--rank``. tensorfact: ``tfa.nn.principal_split`` on the
  ``(L, n, n)`` stack (one compiled program; a model whose layers are scanned holds the stack
  and takes the stacked result: the row "stacked result"; ``stack_ms`` says what
  ``jnp.stack`` of the ``L`` kernels would add); ``apply_adapters`` with one PiSSA rule on a
  model holding the ``L`` layers in an ``nnx.List``, and ``LoRA.from_layers`` on the layers
  (both split the list of kernels: one program per run of at most 16 MiB, each 4096² layer
  alone); for reference the ``L`` layers initialised one by one with ``LoRA``. PEFT:
  ``get_peft_model`` on a model of ``L`` ``nn.Linear`` layers (its per-layer init).

For every contender and layer: ``quality`` = ``‖W − s A B‖_F`` (the frozen residual) over the
optimum ``(Σ_{i>r} σ_i²)^{1/2}`` (1 is the exact truncated SVD), and ``energy`` =
``‖s A B‖_F² / ‖W‖_F²`` against the optimum ``Σ_{i≤r} σ_i² / Σ σ_i²``, both in float64 on the
host from the returned arrays; the tables give the mean over layers (and the worst quality).
Both sides use the scale 1 (``alpha = r``).

Timing: ``_harness.median_ms``: the first call (compile) apart, the median of ``--one-repeats``
(one layer) or ``--repeats`` (the stack) calls. Each PEFT call gets a fresh model, all built
before the timing (PEFT replaces the layers in place). On a 2-core machine OpenBLAS's and
torch's threads spin while another process holds a core, so each table carries the cores that
other processes kept busy; set ``OPENBLAS_NUM_THREADS=1`` (JAX's LAPACK calls go through
OpenBLAS) and ``--torch-threads 1`` for figures that depend less on the neighbours.

    python benchmarks/bench_adapter_init.py --small       # smoke, seconds
    python benchmarks/bench_adapter_init.py               # 1024², and 8 × 4096², rank 16
"""

from __future__ import annotations

import importlib
import os
import platform
import sys

import numpy as np

import jax
import jax.numpy as jnp

from _harness import (OtherLoad, add_output_flags, apply_preset, check_positive, command_line,
                      cpu_name, median_ms, parser, sync_jax, write_json)

PRESETS = {
    "small": dict(size=128, stack_size=128, layers=2, rank=8, repeats=2, one_repeats=2),
    "cpu": dict(size=1024, stack_size=4096, layers=8, rank=16, repeats=3, one_repeats=30),
}


def _optional(name):
    try:
        return importlib.import_module(name)
    except Exception as e:  # ImportError, or a broken install of a dependency
        print(f"# skipping the {name} baseline: {type(e).__name__}: {e}", flush=True)
        return None


def weights(n, layers, seed):
    """``layers`` ``n × n`` float32 weights ``U_l diag(σ) V_lᵀ`` with ``σ_i = (1 + i)^{-1/2}``:
    one pair of random orthogonal matrices, whose columns each layer permutes (its own singular
    vectors at the cost of one product), and the spectrum ``σ``."""
    key_u, key_v, key_p = jax.random.split(jax.random.key(seed), 3)
    u = jnp.linalg.qr(jax.random.normal(key_u, (n, n)))[0]
    v = jnp.linalg.qr(jax.random.normal(key_v, (n, n)))[0]
    s = (1.0 + np.arange(n)) ** -0.5
    out = []
    for layer, key in enumerate(jax.random.split(key_p, layers)):
        pu, pv = (jax.random.permutation(k, n) for k in jax.random.split(key))
        ul, vl = (u, v) if layer == 0 else (u[:, pu], v[:, pv])
        out.append(np.asarray(jnp.matmul(ul * jnp.asarray(s, jnp.float32), vl.T,
                                         precision=jax.lax.Precision.HIGHEST)))
    return out, s


def scores(ws, residuals, s, rank):
    """Mean quality, worst quality and mean energy of the residuals of ``ws``."""
    optimal = float(np.sqrt(np.sum(s[rank:] ** 2)))
    quality, energy = [], []
    for w, res in zip(ws, residuals):
        w, res = np.asarray(w, np.float64), np.asarray(res, np.float64)
        quality.append(float(np.linalg.norm(res)) / optimal)
        energy.append(float(np.linalg.norm(w - res) ** 2 / np.linalg.norm(w) ** 2))
    return dict(quality=float(np.mean(quality)), quality_max=float(np.max(quality)),
                energy=float(np.mean(energy)))


class Bench:
    def __init__(self, args):
        self.args = args
        self.rows = []
        self.torch = self.peft = None
        if not args.no_peft:
            self.torch = _optional("torch")
            self.peft = None if self.torch is None else _optional("peft")
            if self.torch is not None and args.torch_threads:
                self.torch.set_num_threads(args.torch_threads)

    def _log(self, message):
        if not self.args.quiet:
            print(message, file=sys.stderr, flush=True)

    def _row(self, **row):
        self.rows.append(row)
        self._log("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in row.items()))

    # -- tensorfact ------------------------------------------------------------------------
    def tfa_rows(self, work, ws, s, rank):
        from flax import nnx

        import tensorfact as tfa

        a = self.args
        n = ws[0].shape[0]
        bases = []
        for w in ws:
            base = nnx.Linear(n, n, rngs=nnx.Rngs(0))
            base.kernel[...] = jnp.asarray(w)
            bases.append(base)

        def sync(loras):
            sync_jax([(lo.lora_a[...], lo.lora_b[...], lo.base.kernel[...]) for lo in loras])

        def residuals(loras):
            return [lo.base.kernel[...] for lo in loras]

        def one_by_one(**kw):
            def call():
                rngs = nnx.Rngs(a.seed + 1)
                return [tfa.nn.LoRA(base, rank, init="pissa", rngs=rngs, **kw) for base in bases]
            return call

        calls = [("tfa LoRA(init='pissa')", one_by_one())]
        if len(ws) == 1:
            calls.append(("tfa LoRA(init='pissa', oversample=0, n_power_iter=4)",
                          one_by_one(oversample=0, n_power_iter=4)))
        else:
            stack = jnp.stack([base.kernel[...] for base in bases])
            _, stack_ms, _ = median_ms(lambda: jnp.stack([b.kernel[...] for b in bases]),
                                       sync_jax, a.repeats)
            self._log(f"  jnp.stack of the {len(ws)} kernels: {stack_ms:.1f} ms")

            def split():
                return tfa.nn.principal_split(stack, rank, key=jax.random.key(a.seed + 1))

            def from_layers():
                return tfa.nn.LoRA.from_layers(bases, rank, init="pissa",
                                               rngs=nnx.Rngs(a.seed + 1))

            class Model(nnx.Module):
                def __init__(self):
                    self.layers = nnx.List(bases)

            model = Model()
            rule = tfa.nn.AdapterRule("layers/.*", rank=rank, init="pissa")

            def via_rules():
                adapted, _ = tfa.nn.apply_adapters(model, rule, rngs=nnx.Rngs(a.seed + 1))
                return [layer.adapter for layer in adapted.layers]
            calls[:0] = [("tfa principal_split (stacked result)", split),
                         ("tfa apply_adapters(model, AdapterRule(init='pissa'))", via_rules),
                         ("tfa LoRA.from_layers(bases, init='pissa')", from_layers)]
        repeats = a.one_repeats if len(ws) == 1 else a.repeats
        for label, call in calls:
            out, ms, first = median_ms(call, sync_jax if "stacked" in label else sync, repeats)
            res = out[2] if "stacked" in label else residuals(out)
            extra = dict(stack_ms=stack_ms) if label.startswith("tfa principal_split") else {}
            self._row(work=work, n=n, layers=len(ws), rank=rank, contender=label, ms=ms,
                      compile_s=first, **scores(ws, res, s, rank), **extra)
            del out, res

    # -- PEFT ------------------------------------------------------------------------------
    def peft_row(self, work, ws, s, rank):
        if self.peft is None:
            return
        torch, peft, a = self.torch, self.peft, self.args
        n, names = ws[0].shape[0], [f"lin{i}" for i in range(len(ws))]
        weights_t = [torch.tensor(w.T.copy()) for w in ws]   # torch stores (out, in)

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                for name, w in zip(names, weights_t):
                    lin = torch.nn.utils.skip_init(torch.nn.Linear, n, n)
                    with torch.no_grad():
                        lin.weight.copy_(w)
                        lin.bias.zero_()
                    setattr(self, name, lin)

        config = dict(r=rank, lora_alpha=rank, init_lora_weights="pissa_niter_4",
                      target_modules=names)
        torch.manual_seed(a.seed)
        repeats = a.one_repeats if len(ws) == 1 else a.repeats
        fresh = [Model() for _ in range(repeats + 1)]   # built outside the timing

        def call():
            return peft.get_peft_model(fresh.pop(), peft.LoraConfig(**config))

        def sync(_model):   # torch on the CPU: nothing runs asynchronously
            return None

        model, ms, first = median_ms(call, sync, repeats)
        residuals = [getattr(model.base_model.model, name).base_layer.weight.detach()
                     .double().numpy().T for name in names]
        self._row(work=work, n=n, layers=len(ws), rank=rank, contender="peft pissa_niter_4",
                  ms=ms, compile_s=first, **scores(ws, residuals, s, rank))

    def run(self):
        a = self.args
        for work, n, layers in (("one layer", a.size, 1), ("stack", a.stack_size, a.layers)):
            self._log(f"{work}: {layers} x {n}^2, rank {a.rank} (making the weights)")
            ws, s = weights(n, layers, a.seed)
            optimal = float(np.sum(s[:a.rank] ** 2) / np.sum(s ** 2))
            self._log(f"  optimal energy {optimal:.6f}")
            other = OtherLoad().start()
            self.tfa_rows(work, ws, s, a.rank)
            self.peft_row(work, ws, s, a.rank)
            busy = other.stop()
            peft_rows = [r for r in self.rows if r["work"] == work
                         and r["contender"].startswith("peft")]
            for row in self.rows:
                if row["work"] == work:
                    row["optimal_energy"] = optimal
                    row["other_cores"] = busy
                    row["peft_over_this"] = (peft_rows[0]["ms"] / row["ms"] if peft_rows
                                             else None)
            del ws


def format_table(rows):
    lines = ["| work | layers × n² | rank | contender | ms | first s | quality (worst) | "
             "energy (optimum) | PEFT ms / this |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = "" if r.get("peft_over_this") is None else f"{r['peft_over_this']:.2f}"
        lines.append(f"| {r['work']} | {r['layers']} × {r['n']}² | {r['rank']} | "
                     f"{r['contender']} | {r['ms']:.1f} | {r['compile_s']:.2f} | "
                     f"{r['quality']:.5f} ({r['quality_max']:.5f}) | {r['energy']:.6f} "
                     f"({r['optimal_energy']:.6f}) | {ratio} |")
    return "\n".join(lines)


def environment(bench):
    import flax

    env = dict(python=platform.python_version(), jax=jax.__version__, flax=flax.__version__,
               device=str(jax.devices()[0].device_kind), cpu=cpu_name(), cores=os.cpu_count(),
               OPENBLAS_NUM_THREADS=os.environ.get("OPENBLAS_NUM_THREADS"),
               load_average_1min=round(os.getloadavg()[0], 2))
    for name in ("torch", "peft"):
        mod = getattr(bench, name)
        env[name] = getattr(mod, "__version__", "?") if mod is not None else None
    if bench.torch is not None:
        env["torch_threads"] = bench.torch.get_num_threads()
    return env


def parse_args(argv=None):
    p = parser("Time tensorfact's PiSSA initialisation (one layer with LoRA, a stack with "
               "principal_split) against PEFT's pissa_niter_4, with the captured energy. "
               "Default: 1024^2 and 8 x 4096^2, rank 16.",
               small="128^2 and 2 x 128^2, rank 8: seconds")
    p.add_argument("--size", type=int, help="the single layer's size (square)")
    p.add_argument("--stack-size", type=int, help="the stacked layers' size (square)")
    p.add_argument("--layers", type=int, help="layers in the stack")
    p.add_argument("--rank", type=int, help="LoRA rank")
    p.add_argument("--repeats", type=int, help="timed calls after the first (the stack)")
    p.add_argument("--one-repeats", type=int, help="timed calls after the first (one layer)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-peft", action="store_true", help="skip PEFT")
    p.add_argument("--torch-threads", type=int,
                   help="torch.set_num_threads for PEFT (default: torch's own choice)")
    add_output_flags(p)
    args = p.parse_args(argv)
    apply_preset(args, PRESETS)
    check_positive(p, args, ("size", "stack_size", "layers", "rank", "repeats", "one_repeats"))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    jax.config.update("jax_platforms", "cpu")
    bench = Bench(args)
    env = environment(bench)
    config = {k: v for k, v in vars(args).items() if k not in ("json", "quiet")}
    print("# " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print("# " + ", ".join(f"{k} {v}" for k, v in config.items()))
    bench.run()
    env["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    print(format_table(bench.rows))
    print("# ms per call (median); quality: ‖residual‖ / optimum (1 = exact SVD), mean over "
          "layers (worst); energy: ‖s A B‖² / ‖W‖², mean (optimum)")
    for work in dict.fromkeys(r["work"] for r in bench.rows):
        busy = next(r["other_cores"] for r in bench.rows if r["work"] == work)
        print(f"# {work}: other processes kept {busy} cores busy on average (of "
              f"{os.cpu_count()})")
    out = dict(environment=env, config=config, command=command_line("bench_adapter_init.py",
                                                                     argv),
               results=bench.rows)
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
