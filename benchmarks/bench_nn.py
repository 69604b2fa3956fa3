"""Times tensorfact's factorized dense layers and PiSSA initialisation against the dense layer,
tensorly-torch and PEFT (issue 8).

* **Layers.** Square layers ``n → n`` (``--sizes``) on a batch of ``--batch`` rows, for the
  kinds ``lowrank`` (``--lowrank-rank``), ``cp`` (``--cp-rank``), ``tucker`` (a common Tucker
  rank ``--tucker-rank`` on every mode) and ``tt`` (TT-matrix rank ``--tt-rank``); the tensor
  kinds tensorize ``n`` as ``balanced_factors(n, --order)`` on both sides (1024 → (32, 32),
  4096 → (64, 64)). Two passes: the forward ``y = x W + b``, and forward + backward (the
  gradient of ``Σ y²`` in the input and in every parameter). Contenders:

    - ``tfa factorized`` / ``tfa auto``: :class:`tensorfact.nn.FactorizedDense` with
      ``contraction="factorized"`` (the reference of the ratios) and ``"auto"``, through
      ``nnx.split`` and ``jax.jit`` (one XLA program per pass);
    - ``nnx.Linear``: Flax's dense layer, jitted the same way;
    - ``tltorch``: tensorly-torch's ``FactorizedLinear(in_shape, out_shape,
      factorization="cp"|"tucker"|"blocktt", rank=..., implementation="factorized")`` at the
      same tensorization and ranks (``blocktt`` is tensorly-torch's TT-matrix); ``lowrank`` has
      no twin there, so a torch ``Linear(n, r, bias=False)`` then ``Linear(r, n)`` stands in;
    - ``torch Linear``: the dense torch layer.

  Torch runs its forward under ``torch.inference_mode()`` and its backward through
  ``torch.autograd.grad`` (no accumulation). Every contender's output is checked against a
  float64 product of its own reconstructed kernel (``err``). FLOPs (2 × multiply-adds, forward)
  are tensorfact's cost model (``FactorizedDense.flops``); ``flops f/d`` is the factorized over
  the dense count. The issue's target (GPU): tensorfact ≥ 3× faster than tensorly-torch, and
  faster than the dense layer wherever ``flops f/d ≤ 1/4``; the ``target`` column says whether
  a row meets it (``-`` where the dense comparison does not apply).
* **PiSSA.** A ``--pissa-size`` square weight with singular values ``(1 + i)^{-1/2}`` (random
  orthogonal singular vectors), rank ``--pissa-rank``: ``tfa.nn.LoRA(base, r, init="pissa")``
  as a user calls it (eager; the randomized SVD inside is one compiled program), the same
  construction under ``nnx.jit``, and PEFT's ``get_peft_model`` with
  ``LoraConfig(r, lora_alpha=r, init_lora_weights="pissa_niter_4")`` on a torch ``nn.Linear``
  inside a one-layer module (a fresh module per call, built outside the timing). Both scales
  are 1. ``quality`` is ``‖W − principal part‖_F`` (the residual left frozen) over the optimal
  ``(Σ_{i>r} σ_i²)^{1/2}``: 1 is the exact truncated SVD. PEFT sketches ``r`` columns with 4
  power iterations (``torch.svd_lowrank``); tensorfact ``r + 8`` columns with 2 (LoRA's
  default). ``bench_adapter_init.py`` adds the batched ``principal_split`` of a stack of layers
  and the captured energy.

Timing: ``_harness.median_ms``: the first call (compile or warm-up) apart, then the median of
``--repeats`` samples of ``--inner`` back-to-back calls (layers) or single calls (PiSSA), each
sample waited for; ms are per call. ``ratio`` = contender ms / ``tfa factorized`` ms for the
layers (> 1: tensorfact faster) and PEFT ms / contender ms for PiSSA. ``--precision highest``
(default) runs every contraction in full float32 (torch TF32 off); ``default`` lets both sides
use TF32 on GPUs that have it.

Baselines are optional: a missing ``torch``, ``tensorly-torch`` or ``peft`` is skipped with the
reason printed. Without ``--gpu`` everything runs on the CPU (JAX forced to the CPU platform,
torch on the CPU with its default threads).

    python benchmarks/bench_nn.py --small                      # CPU smoke, under 30 s
    python benchmarks/bench_nn.py --json out/nn_cpu.json       # CPU: 1024², batch 128
    python benchmarks/bench_nn.py --gpu --json out/nn_gpu.json # GPU: 1024² and 4096², batch 256
"""

from __future__ import annotations

import importlib
import os
import platform
import sys

import numpy as np

import jax
import jax.numpy as jnp

from _harness import (OtherLoad, add_output_flags, apply_preset, check_positive, choices,
                      command_line, cpu_name, ints, median_ms, parser, sync_jax, write_json)

PRESETS = {
    "small": dict(sizes=(256,), batch=32, lowrank_rank=16, cp_rank=16, tucker_rank=4, tt_rank=4,
                  pissa_size=256, pissa_rank=8, repeats=3, inner=2),
    "cpu": dict(sizes=(1024,), batch=128, lowrank_rank=64, cp_rank=64, tucker_rank=16,
                tt_rank=16, pissa_size=1024, pissa_rank=16, repeats=10, inner=3),
    "gpu": dict(sizes=(1024, 4096), batch=256, lowrank_rank=64, cp_rank=64, tucker_rank=16,
                tt_rank=16, pissa_size=4096, pissa_rank=16, repeats=20, inner=10),
}
KINDS = ("lowrank", "cp", "tucker", "tt")
WORKS = ("layers", "pissa")
TLTORCH_NAME = {"cp": "cp", "tucker": "tucker", "tt": "blocktt"}
REF = "tfa factorized"


def _optional(name):
    """The module, or None with the reason printed (a missing baseline is skipped)."""
    try:
        return importlib.import_module(name)
    except Exception as e:  # ImportError, or a broken install of a dependency
        print(f"# skipping the {name} baselines: {type(e).__name__}: {e}", flush=True)
        return None


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


class Bench:
    def __init__(self, args):
        self.args = args
        self.rows = []
        self.torch = None if args.no_torch else _optional("torch")
        self.tltorch = self.peft = None
        if self.torch is not None:
            torch = self.torch
            self.device = "cuda" if args.gpu else "cpu"
            if args.gpu and not torch.cuda.is_available():
                raise SystemExit("--gpu: torch does not see a CUDA device")
            tf32 = args.precision == "default"
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            self.tltorch = None if args.no_tltorch else _optional("tltorch")
            self.peft = None if args.no_peft else _optional("peft")
        self.precision = (jax.lax.Precision.HIGHEST if args.precision == "highest" else None)

    def _log(self, message):
        if not self.args.quiet:
            print(message, file=sys.stderr, flush=True)

    def _row(self, **row):
        self.rows.append(row)
        self._log("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in row.items()))

    def _sync_torch(self, _out):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def _time(self, call, sync, inner):
        """``(out, ms per call, first s)`` for ``inner`` back-to-back calls per sample."""
        def many():
            for _ in range(inner):
                out = call()
            return out
        out, ms, first = median_ms(many, sync, self.args.repeats)
        return out, ms / inner, first

    # -- layers ----------------------------------------------------------------------------
    def _jax_passes(self, layer, x):
        """Jitted forward and forward + backward of an NNX layer (state as an argument)."""
        from flax import nnx

        graphdef, state = nnx.split(layer)

        def fwd(state, x):
            return nnx.merge(graphdef, state)(x)

        def loss(state, x):
            return jnp.sum(fwd(state, x) ** 2)

        fwd_jit = jax.jit(fwd)
        bwd_jit = jax.jit(jax.grad(loss, argnums=(0, 1)))
        return {"fwd": lambda: fwd_jit(state, x), "fwd+bwd": lambda: bwd_jit(state, x)}

    def _torch_passes(self, module, x):
        torch = self.torch
        params = list(module.parameters())
        x_req = x.clone().requires_grad_(True)

        def fwd():
            with torch.inference_mode():
                return module(x)

        def bwd():
            y = module(x_req)
            return torch.autograd.grad((y * y).sum(), [x_req] + params)
        return {"fwd": fwd, "fwd+bwd": bwd}

    def _run_layer(self, n, kind, label, passes, reference, n_params, flops, x64):
        """Times both passes of one contender and records the rows."""
        for name, call in passes.items():
            sync = self._sync_torch if label.startswith(("tltorch", "torch")) else sync_jax
            out, ms, first = self._time(call, sync, self.args.inner)
            err = None
            if name == "fwd":
                host = out.detach().cpu().numpy() if hasattr(out, "detach") else np.asarray(out)
                err = _rel(host, reference)
            self._row(work="layer", n=n, kind=kind, pass_=name, contender=label, ms=ms,
                      compile_s=first, params=n_params, flops_ratio=flops, err=err)

    def layers(self):
        from flax import nnx

        import tensorfact as tfa

        a = self.args
        rng = np.random.default_rng(a.seed)
        for n in a.sizes:
            x_np = rng.standard_normal((a.batch, n), dtype=np.float32)
            x64 = x_np.astype(np.float64)
            x = jnp.asarray(x_np)
            x_t = (self.torch.tensor(x_np, device=self.device) if self.torch is not None
                   else None)
            dense = nnx.Linear(n, n, precision=self.precision, rngs=nnx.Rngs(a.seed))
            dense_ref = (x64 @ np.asarray(dense.kernel[...], np.float64)
                         + np.asarray(dense.bias[...], np.float64))
            self._log(f"n = {n}, batch {a.batch}: dense")
            self._run_layer(n, "dense", "nnx.Linear", self._jax_passes(dense, x), dense_ref,
                            n * n + n, 1.0, x64)
            if self.torch is not None:
                torch = self.torch
                torch.manual_seed(a.seed)
                lin = torch.nn.Linear(n, n, device=self.device)
                self._run_layer(n, "dense", "torch Linear", self._torch_passes(lin, x_t),
                                self._torch_ref(x64, lin.weight, lin.bias), n * n + n, 1.0,
                                x64)
            for kind in a.kinds:
                self._log(f"n = {n}, batch {a.batch}: {kind}")
                self._layer_kind(n, kind, x, x_t, x64, tfa, nnx)

    def _torch_ref(self, x64, weight, bias):
        w = weight.detach().cpu().double().numpy()
        return x64 @ w.T + bias.detach().cpu().double().numpy()

    def _layer_kind(self, n, kind, x, x_t, x64, tfa, nnx):
        a = self.args
        rank = {"lowrank": a.lowrank_rank, "cp": a.cp_rank, "tucker": a.tucker_rank,
                "tt": a.tt_rank}[kind]
        shape = None if kind == "lowrank" else tfa.nn.balanced_factors(n, a.order)
        layers = {}
        for impl in ("factorized", "dense", "auto"):
            layers[impl] = tfa.nn.FactorizedDense(
                n, n, kind=kind, rank=rank, in_shape=shape, out_shape=shape,
                contraction=impl, precision=self.precision, rngs=nnx.Rngs(a.seed))
        layer = layers["factorized"]
        flops = layer.flops(a.batch)
        ratio = flops["factorized"] / flops["plain"]
        ref = (x64 @ np.asarray(layer.dense_weight(), np.float64)
               + np.asarray(layer.bias[...], np.float64))
        for impl, lay in layers.items():
            label = f"tfa {impl}" + (f" ({lay.choose_contraction(a.batch)})"
                                     if impl == "auto" else "")
            self._run_layer(n, kind, label, self._jax_passes(lay, x), ref, lay.n_params,
                            ratio, x64)
        if self.torch is None:
            return
        torch = self.torch
        torch.manual_seed(a.seed)
        if kind == "lowrank":
            module = torch.nn.Sequential(
                torch.nn.Linear(n, layer.rank, bias=False, device=self.device),
                torch.nn.Linear(layer.rank, n, device=self.device))
            weight = module[1].weight @ module[0].weight
            label, bias = "torch 2-Linear low rank", module[1].bias
        elif self.tltorch is None:
            return
        else:
            rank = layer.rank
            if kind == "tucker":  # tensorly-torch orders the modes (out..., in...)
                p = len(layer.in_shape)
                rank = tuple(rank[p:]) + tuple(rank[:p])
            module = self.tltorch.FactorizedLinear(
                tuple(layer.in_shape), tuple(layer.out_shape), factorization=TLTORCH_NAME[kind],
                rank=rank if kind != "cp" else int(rank), implementation="factorized",
                device=self.device)
            weight = module.weight.to_matrix()
            label, bias = f"tltorch {TLTORCH_NAME[kind]}", module.bias
        n_params = sum(p.numel() for p in module.parameters())
        self._run_layer(n, kind, label, self._torch_passes(module, x_t),
                        self._torch_ref(x64, weight, bias), n_params, ratio, x64)

    # -- PiSSA -----------------------------------------------------------------------------
    def pissa(self):
        from flax import nnx

        import tensorfact as tfa

        a = self.args
        n, r = a.pissa_size, a.pissa_rank
        key_u, key_v = jax.random.split(jax.random.key(a.seed))
        s = (1.0 + np.arange(n)) ** -0.5
        u = jnp.linalg.qr(jax.random.normal(key_u, (n, n)))[0]
        v = jnp.linalg.qr(jax.random.normal(key_v, (n, n)))[0]
        w = jax.block_until_ready(jnp.matmul(u * jnp.asarray(s, jnp.float32), v.T,
                                             precision=jax.lax.Precision.HIGHEST))
        w_np = np.asarray(w)
        optimal = float(np.sqrt(np.sum(s[r:] ** 2)))
        self._log(f"PiSSA: {n} x {n}, rank {r}")

        base = nnx.Linear(n, n, precision=self.precision, rngs=nnx.Rngs(0))
        base.kernel[...] = w

        def eager():
            return tfa.nn.LoRA(base, r, init="pissa", rngs=nnx.Rngs(a.seed + 1))

        @nnx.jit
        def jitted(base, rngs):
            return tfa.nn.LoRA(base, r, init="pissa", rngs=rngs)

        def sync(lora):
            sync_jax((lora.lora_a[...], lora.lora_b[...], lora.base.kernel[...]))

        for label, call in (("tfa LoRA(init='pissa')", eager),
                            ("tfa LoRA(init='pissa') under nnx.jit",
                             lambda: jitted(base, nnx.Rngs(a.seed + 1)))):
            lora, ms, first = median_ms(call, sync, a.repeats)
            residual = np.asarray(lora.base.kernel[...], np.float64)  # W - principal part
            quality = float(np.linalg.norm(residual) / optimal)
            self._row(work="pissa", n=n, rank=r, contender=label, ms=ms, compile_s=first,
                      quality=quality)
        if self.peft is None:
            return
        torch, peft, device = self.torch, self.peft, self.device

        class Tiny(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.utils.skip_init(torch.nn.Linear, n, n, device=device)

            def forward(self, x):
                return self.lin(x)

        weight_t = torch.tensor(w_np.T.copy(), device=self.device)  # torch stores (out, in)
        def make():
            model = Tiny()
            with torch.no_grad():
                model.lin.weight.copy_(weight_t)
                model.lin.bias.zero_()
            return model

        fresh = [make() for _ in range(a.repeats + 1)]  # built outside the timing
        config = dict(r=r, lora_alpha=r, init_lora_weights="pissa_niter_4",
                      target_modules=["lin"])

        def call():
            return peft.get_peft_model(fresh.pop(), peft.LoraConfig(**config))

        model, ms, first = median_ms(call, self._sync_torch, a.repeats)
        residual = model.base_model.model.lin.base_layer.weight.detach().cpu().double().numpy()
        self._row(work="pissa", n=n, rank=r, contender="peft pissa_niter_4", ms=ms,
                  compile_s=first, quality=float(np.linalg.norm(residual) / optimal))

    # -- summary ---------------------------------------------------------------------------
    def finish(self):
        layer = [r for r in self.rows if r["work"] == "layer"]
        for row in layer:
            same = [q for q in layer if q["n"] == row["n"] and q["pass_"] == row["pass_"]]
            ref = [q for q in same if q["kind"] == row["kind"] and q["contender"] == REF]
            row["ratio"] = row["ms"] / ref[0]["ms"] if ref else None
        for row in layer:
            if not row["contender"].startswith("tfa"):
                continue
            same = [q for q in layer if q["n"] == row["n"] and q["pass_"] == row["pass_"]]
            base = [q for q in same if q["kind"] == row["kind"]
                    and q["contender"].startswith(("tltorch", "torch 2-Linear"))]
            dense = [q for q in same if q["contender"] == "nnx.Linear"]
            row["vs_tltorch"] = base[0]["ms"] / row["ms"] if base else None
            row["vs_dense"] = dense[0]["ms"] / row["ms"] if dense else None
            checks = []
            if base and row["kind"] != "lowrank":
                checks.append(row["vs_tltorch"] >= 3)
            if dense and row["flops_ratio"] <= 0.25:
                checks.append(row["vs_dense"] > 1)
            row["target"] = ("-" if not checks else "met" if all(checks) else "MISSED")
        pissa = [r for r in self.rows if r["work"] == "pissa"]
        peft_rows = [r for r in pissa if r["contender"].startswith("peft")]
        for row in pissa:
            row["ratio"] = peft_rows[0]["ms"] / row["ms"] if peft_rows else None


def format_tables(rows):
    def f(v, fmt):
        return "" if v is None else format(v, fmt)

    lines = ["| n | kind | pass | contender | ms | compile s | params | flops f/d | err | "
             "ratio | vs tltorch | vs nnx.Linear | target |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r["work"] != "layer":
            continue
        lines.append(
            f"| {r['n']} | {r['kind']} | {r['pass_']} | {r['contender']} | {r['ms']:.3f} | "
            f"{r['compile_s']:.2f} | {r['params']:,} | {r['flops_ratio']:.3f} | "
            f"{f(r['err'], '.1e')} | {f(r.get('ratio'), '.2f')} | "
            f"{f(r.get('vs_tltorch'), '.2f')} | {f(r.get('vs_dense'), '.2f')} | "
            f"{r.get('target', '')} |")
    pissa = [r for r in rows if r["work"] == "pissa"]
    if pissa:
        lines += ["", "| n | rank | PiSSA init | ms | first s | quality | peft/this |",
                  "|---|---|---|---:|---:|---:|---:|"]
        for r in pissa:
            lines.append(f"| {r['n']} | {r['rank']} | {r['contender']} | {r['ms']:.1f} | "
                         f"{r['compile_s']:.2f} | {r['quality']:.4f} | "
                         f"{f(r.get('ratio'), '.2f')} |")
    return "\n".join(lines)


def environment(bench):
    import flax

    env = dict(python=platform.python_version(), jax=jax.__version__, flax=flax.__version__,
               device=str(jax.devices()[0].device_kind), cpu=cpu_name(), cores=os.cpu_count(),
               load_average_1min=round(os.getloadavg()[0], 2))
    for name in ("torch", "tltorch", "peft"):
        mod = getattr(bench, name)
        env[name] = getattr(mod, "__version__", "?") if mod is not None else None
    if bench.torch is not None:
        env["torch_threads"] = bench.torch.get_num_threads()
        env["torch_opt_einsum"] = bench.torch.backends.opt_einsum.is_available()
        if bench.device == "cuda":
            env["torch_device"] = bench.torch.cuda.get_device_name()
    if bench.tltorch is not None:
        env["tensorly"] = importlib.import_module("tensorly").__version__
    return env


# ----------------------------------------------------------------------------------------------
# command line


def parse_args(argv=None):
    p = parser("Time tensorfact's FactorizedDense (forward, forward+backward) against nnx.Linear, "
               "tensorly-torch FactorizedLinear and torch Linear, and PiSSA initialisation "
               "against PEFT. Default: the CPU preset (1024^2, batch 128).",
               small="256^2, batch 32, small ranks: under 30 s",
               gpu="JAX on the GPU and torch on CUDA; 1024^2 and 4096^2, batch 256, PiSSA on "
                   "4096^2")
    p.add_argument("--sizes", type=ints("--sizes"),
                   help="square layer sizes n (n -> n), comma list")
    p.add_argument("--batch", type=int, help="rows of the input")
    p.add_argument("--kinds", type=choices("--kinds", KINDS), default=KINDS,
                   help=f"comma list among {','.join(KINDS)} (default: all)")
    p.add_argument("--order", type=int, default=2,
                   help="factors of n for cp/tucker/tt (balanced_factors; default 2)")
    p.add_argument("--lowrank-rank", type=int, help="matrix rank of lowrank")
    p.add_argument("--cp-rank", type=int, help="CP rank")
    p.add_argument("--tucker-rank", type=int, help="Tucker rank on every mode")
    p.add_argument("--tt-rank", type=int, help="maximal TT-matrix rank")
    p.add_argument("--pissa-size", type=int, help="PiSSA weight size (square)")
    p.add_argument("--pissa-rank", type=int, help="PiSSA / LoRA rank")
    p.add_argument("--which", type=choices("--which", WORKS), default=WORKS,
                   help="comma list among layers,pissa (default: both)")
    p.add_argument("--precision", choices=("highest", "default"), default="highest",
                   help="highest: full float32 everywhere (torch TF32 off); default: JAX's "
                        "and torch's TF32 on GPUs that have it")
    p.add_argument("--repeats", type=int, help="timed samples after the first call")
    p.add_argument("--inner", type=int, help="back-to-back layer calls per sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-torch", action="store_true", help="skip every torch baseline")
    p.add_argument("--no-tltorch", action="store_true", help="skip tensorly-torch")
    p.add_argument("--no-peft", action="store_true", help="skip PEFT")
    add_output_flags(p)
    args = p.parse_args(argv)
    args.gpu = args.preset == "gpu"
    apply_preset(args, PRESETS)
    check_positive(p, args, ("batch", "order", "lowrank_rank", "cp_rank", "tucker_rank",
                             "tt_rank", "pissa_size", "pissa_rank", "repeats", "inner"))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.gpu:
        if jax.default_backend() != "gpu":
            raise SystemExit(f"--gpu: JAX's backend is {jax.default_backend()!r}, not 'gpu'")
    else:
        jax.config.update("jax_platforms", "cpu")
    bench = Bench(args)
    env = environment(bench)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
              if k not in ("json", "quiet")}
    print("# " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print("# " + ", ".join(f"{k} {v}" for k, v in config.items()))
    other = OtherLoad().start()
    for work in args.which:
        getattr(bench, work)()
    bench.finish()
    env["other_processes_cores"] = other.stop()
    env["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    print(format_tables(bench.rows))
    print("# ms per call (median); ratio: this/tfa factorized (layers), peft/this (PiSSA); "
          "vs X: X ms / this ms (> 1: tensorfact faster); target (GPU): >= 3x tltorch, and "
          "> 1x nnx.Linear where flops f/d <= 0.25")
    print(f"# other processes kept {env['other_processes_cores']} cores busy on average (of "
          f"{os.cpu_count()}); load average {env['load_average_1min']} at the start, "
          f"{env['load_average_1min_end']} at the end")
    out = dict(environment=env, config=config, command=command_line("bench_nn.py", argv),
               results=bench.rows)
    write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
