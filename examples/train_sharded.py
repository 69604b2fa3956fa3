"""Data- and model-parallel training of a factorized network
=========================================================

Data- and model-parallel training of a factorized network with Flax NNX sharding.

A small sequence classifier built from tensorfact's factorized layers,

    ids (B, L) ─ TTEmbed ─ mean over L ─ FactorizedDense(kind="tt") ─ GELU
               ─ FactorizedDense(kind="lowrank") ─ logits (B, C),

trained with Adam on a device mesh of shape ``(n_data, n_model)`` with axes ``("data",
"model")``. The layout uses only JAX's and Flax's own machinery (no hand-written collectives):

* **data parallel**: every batch is split over ``"data"`` (``NamedSharding(mesh, P("data"))``)
  and the activations are pinned there with ``jax.lax.with_sharding_constraint``; the gradient
  of the mean loss is then reduced over ``"data"`` by the SPMD partitioner;
* **model parallel**: the factors carry Flax ``out_sharding`` metadata through the layers'
  ``partitioning=`` argument (:data:`PARTITIONING`): each TT core ``(r_{k-1}, m_k, n_k, r_k)``
  of the embedding and of the hidden TT-matrix is split along its output digit ``n_k``, and the
  low-rank head ``W = U Vᵀ`` is split along its rank, Megatron style (``x U`` comes out split
  over ``"model"``, ``(x U) Vᵀ`` is summed over it; Shoeybi et al., "Megatron-LM: Training
  Multi-Billion Parameter Language Models Using Model Parallelism", 2019). The Adam moments
  inherit the same layout (``nnx.Optimizer`` copies the metadata).

:func:`build` creates the model and optimizer in one compiled program whose output layout
comes from the annotations (``nnx.get_named_sharding``), so each device only ever computes
and holds its own blocks; :func:`place` moves an existing model (say, one restored from a
checkpoint) onto a mesh the same way. Each device holds ``1/n_model`` of the factors and of
their Adam moments, plus the small replicated biases (``benchmarks/bench_sharding.py``
measures it). The layers are those of
Novikov et al., "Tensorizing Neural Networks" (NeurIPS 2015) and Hrinchuk et al., "Tensorized
Embedding Layers" (Findings of EMNLP 2020).

**Task.** Token ids are uniform over a vocabulary of ``10·10·10`` ids; a teacher scores each
token by the sum of one random vector per decimal digit, ``s(i) = D_1[i_1] + D_2[i_2] +
D_3[i_3] ∈ R^C`` (a TT-rank-2 table, so a TT embedding can represent it), and the label of a
sequence is ``argmax_c mean_t s(ids_t)_c``.

The mesh has ``jax.device_count() / n_model`` × ``n_model`` devices, ``--model-parallel N``
(default 2 when the device count is even, else 1); on one device it is ``(1, 1)`` and the same
code runs unchanged. Try it on 8 CPU devices::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
        python examples/train_sharded.py --quick --model-parallel 4

On many hosts, call ``jax.distributed.initialize()`` first (``jax.devices()`` then lists every
host's devices) and build each global batch with ``jax.make_array_from_process_local_data``
from the host's own rows; the rest of the script is unchanged.

Usage::

    python examples/train_sharded.py [--quick] [--model-parallel N] [--steps S] \\
        [--out train_sharded.png]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

try:
    import tensorfact  # noqa: F401
except ImportError:  # run from a checkout without installing it
    # (sphinx-gallery runs the examples from examples/ without __file__)
    _here = os.path.abspath(globals().get("__file__", "_"))
    sys.path.insert(0, os.path.dirname(os.path.dirname(_here)))

from tensorfact.nn import FactorizedDense, TTEmbed  # noqa: E402
from tensorfact.sharding import make_mesh  # noqa: E402

try:  # optional progress bar
    from tqdm import tqdm as _progress
except ImportError:  # pragma: no cover - depends on the environment
    def _progress(it, **_):
        return it


@dataclass(frozen=True)
class Config:
    """Sizes of the task and the model (the defaults keep every split even for up to 4
    model-parallel devices: the output digits are ``(4, 4, 4)`` and ``(8, 4, 4)``, rank 16)."""

    vocab: int = 1000          # 10 · 10 · 10
    seq_len: int = 8
    embed: int = 64            # 4 · 4 · 4
    hidden: int = 128          # 8 · 4 · 4
    classes: int = 16
    tt_rank: int = 8
    head_rank: int = 16
    learning_rate: float = 1e-2
    teacher_seed: int = 1234   # the labelling rule, the same for training and held-out data


# The documented layout: layer → parameter → PartitionSpec (parameters not named: replicated).
PARTITIONING = {
    "embed": {"cores": P(None, None, "model", None)},    # TT embedding: output digit n_k
    "hidden": {"cores": P(None, None, "model", None)},   # TT-matrix: output digit J_k
    "head": {"u": P(None, "model"), "vt": P("model", None)},   # low rank: the rank
}
DATA_SPEC = P("data")   # batches (and activations): rows over "data"


def _constrain(x, spec):
    """Pins ``x`` to ``spec`` on the current mesh; a no-op when there is none (the unsharded
    reference run), so the same model code runs with and without a mesh."""
    if jax.sharding.get_abstract_mesh().empty:
        return x
    return jax.lax.with_sharding_constraint(x, spec)


class Classifier(nnx.Module):
    """TT embedding → mean pool → TT dense → GELU → low-rank dense (see the module docstring).

    Example:
      >>> model = Classifier(Config(), rngs=nnx.Rngs(0))
      >>> model(jnp.zeros((2, 8), jnp.int32)).shape
      (2, 16)
    """

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs, partitioning=None):
        part = partitioning or {}
        self.embed = TTEmbed(cfg.vocab, cfg.embed, rank=cfg.tt_rank, rngs=rngs,
                             partitioning=part.get("embed"))
        self.hidden = FactorizedDense(cfg.embed, cfg.hidden, kind="tt", rank=cfg.tt_rank,
                                      contraction="factorized", rngs=rngs,
                                      partitioning=part.get("hidden"))
        self.head = FactorizedDense(cfg.hidden, cfg.classes, kind="lowrank",
                                    rank=cfg.head_rank, contraction="factorized",
                                    rngs=rngs, partitioning=part.get("head"))

    def __call__(self, ids):
        h = _constrain(self.embed(ids).mean(axis=1), DATA_SPEC)   # (B, embed)
        h = _constrain(nnx.gelu(self.hidden(h)), DATA_SPEC)       # (B, hidden)
        return _constrain(self.head(h), DATA_SPEC)                # (B, classes)


def make_data(seed: int, n: int, cfg: Config = Config()):
    """``n`` sequences of ``cfg.seq_len`` ids and their teacher labels (module docstring), drawn
    on the host with NumPy, as a data pipeline would."""
    tables = np.random.default_rng(cfg.teacher_seed).standard_normal((3, 10, cfg.classes))
    ids = np.random.default_rng(seed).integers(0, cfg.vocab, (n, cfg.seq_len), dtype=np.int32)
    scores = sum(tables[k][(ids // 10 ** (2 - k)) % 10] for k in range(3))   # (n, L, C)
    return ids, np.argmax(scores.mean(axis=1), axis=-1).astype(np.int32)


def loss_fn(model, ids, labels):
    """Mean softmax cross-entropy of the model's logits."""
    logits = model(ids)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@nnx.jit
def loss_and_grads(model, ids, labels):
    """The loss and its gradient with respect to the model's parameters (an ``nnx.State``)."""
    return nnx.value_and_grad(loss_fn)(model, ids, labels)


@nnx.jit
def train_step(model, optimizer, ids, labels):
    """One Adam step; returns the loss before it."""
    loss, grads = nnx.value_and_grad(loss_fn)(model, ids, labels)
    optimizer.update(model, grads)
    return loss


def make_model_mesh(model_parallel: int | None = None):
    """A ``("data", "model")`` mesh of every device: ``(n / model_parallel, model_parallel)``,
    with ``model_parallel`` 2 by default when the device count is even, else 1."""
    n = jax.device_count()
    mp = (2 if n % 2 == 0 else 1) if model_parallel is None else model_parallel
    if not isinstance(mp, int) or mp < 1 or n % mp:
        raise ValueError(f"model_parallel must be a positive divisor of the device count {n}, "
                         f"got {model_parallel!r}.")
    return make_mesh((n // mp, mp), ("data", "model"))


def build(mesh, cfg: Config = Config(), seed: int = 0, partitioning=PARTITIONING):
    """The model and its Adam optimizer, created on ``mesh`` by one compiled program whose
    outputs are laid out by the annotations (``nnx.get_named_sharding``): each device computes
    and keeps only its own blocks, so no device ever holds a whole parameter it does not own."""
    def create():
        model = Classifier(cfg, rngs=nnx.Rngs(seed), partitioning=partitioning)
        return model, nnx.Optimizer(model, optax.adam(cfg.learning_rate), wrt=nnx.Param)

    with jax.set_mesh(mesh):
        graphdef, abstract = nnx.split(nnx.eval_shape(create))   # shapes and metadata only
        shardings = nnx.get_named_sharding(abstract, mesh)
        state = jax.jit(lambda: nnx.split(create())[1], out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def place(tree, mesh):
    """Moves an existing model (or optimizer, or a tuple of them: anything ``nnx.state``
    takes), e.g. one restored from a checkpoint or built with ``nnx.use_eager_sharding(False)``,
    onto ``mesh`` with the layout of its annotations (unannotated arrays are replicated);
    returns ``tree``, updated in place."""
    state = nnx.state(tree)
    nnx.update(tree, jax.device_put(state, nnx.get_named_sharding(state, mesh)))
    return tree


def shard_batch(mesh, *arrays):
    """The arrays with their rows split over ``"data"``."""
    return tuple(jax.device_put(a, NamedSharding(mesh, DATA_SPEC)) for a in arrays)


def layout(model) -> dict[str, tuple]:
    """``{"layer/param[/k]": spec}``: the ``.sharding.spec`` each parameter actually has, with
    every entry of the spec (padded with None to the parameter's rank)."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = var.get_value()
        spec = tuple(value.sharding.spec) if isinstance(value.sharding, NamedSharding) else ()
        out["/".join(map(str, path))] = spec + (None,) * (value.ndim - len(spec))
    return out


def bytes_per_device(tree) -> dict[str, int]:
    """Bytes of the arrays of ``tree`` held by each device (from ``addressable_shards``)."""
    out = {}
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            key = str(shard.device)
            out[key] = out.get(key, 0) + shard.data.nbytes
    return out


def train(mesh, cfg: Config, *, steps: int, batch_size: int, seed: int = 0, progress=True):
    """Trains for ``steps`` Adam steps on fresh batches; returns ``(losses, model)``."""
    model, optimizer = build(mesh, cfg, seed)
    ids, labels = make_data(seed + 1, steps * batch_size, cfg)
    ids = ids.reshape(steps, batch_size, cfg.seq_len)
    labels = labels.reshape(steps, batch_size)
    losses = []
    bar = _progress(range(steps), desc="train", disable=not progress) if progress else \
        range(steps)
    # XLA:CPU runs the collectives of all its simulated devices on one shared thread pool: with
    # several steps in flight their rendezvous can starve each other on a machine with few
    # cores (and abort), so there each step is awaited; accelerators keep dispatching ahead.
    wait = jax.default_backend() == "cpu" and mesh.size > 1
    with jax.set_mesh(mesh):
        for step in bar:
            batch = shard_batch(mesh, ids[step], labels[step])
            losses.append(train_step(model, optimizer, *batch))
            if wait:
                losses[-1].block_until_ready()
            if progress and hasattr(bar, "set_postfix") and step % 10 == 0:
                bar.set_postfix(loss=f"{float(losses[-1]):.3f}")
    return np.asarray(jnp.stack(losses)), model


def accuracy(model, mesh, ids, labels) -> float:
    """Fraction of sequences the model labels as the teacher does."""
    with jax.set_mesh(mesh):
        ids, labels = shard_batch(mesh, ids, labels)
        return float(jnp.mean(jnp.argmax(model(ids), axis=-1) == labels))


def plot(losses, mesh_shape, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    ax.plot(np.arange(len(losses)), losses, lw=1.4)
    window = max(len(losses) // 20, 1)
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window - 1, len(losses)), smooth, lw=2.0, label=f"mean of {window}")
        ax.legend()
    ax.set_xlabel("Adam step")
    ax.set_ylabel("cross-entropy")
    shape = " × ".join(f"{n} {a}" for a, n in mesh_shape.items())
    ax.set_title(f"TT embedding + TT / low-rank dense, mesh {shape}")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None):
    """Runs the example; returns ``(losses, layout)`` with ``layout = {"mesh": {axis: size},
    "params": {path: spec}}`` as the parameters were placed."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--quick", "--small", action="store_true",
                        help="a fast smoke run (few steps)")
    parser.add_argument("--steps", type=int, default=None, help="Adam steps (default 400)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="global batch (default 256; 64 with --quick)")
    parser.add_argument("--model-parallel", type=int, default=None,
                        help="devices on the 'model' axis (default 2 if the count is even)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    parser.add_argument("--out", default="train_sharded.png", help="loss-curve PNG path")
    args = parser.parse_args(argv)
    steps = args.steps or (40 if args.quick else 400)
    batch = args.batch_size or (64 if args.quick else 256)
    mesh = make_model_mesh(args.model_parallel)
    n_data = mesh.shape["data"]
    if batch % n_data:
        parser.error(f"--batch-size {batch} must be divisible by the {n_data} 'data' devices")
    cfg = Config()
    print(f"{jax.device_count()} {jax.devices()[0].platform} device(s), mesh "
          f"{dict(mesh.shape)}")
    start = time.perf_counter()
    losses, model = train(mesh, cfg, steps=steps, batch_size=batch, seed=args.seed,
                          progress=not args.no_progress)
    elapsed = time.perf_counter() - start
    test_ids, test_labels = make_data(args.seed + 2, 512, cfg)
    acc = accuracy(model, mesh, test_ids, test_labels)
    placed = layout(model)
    per_device = bytes_per_device(nnx.state(model, nnx.Param))
    print(f"loss {losses[0]:.3f} → {losses[-5:].mean():.3f} in {steps} steps "
          f"({elapsed:.1f} s); held-out accuracy {acc:.1%} (chance {1 / cfg.classes:.1%})")
    print(f"parameter bytes per device: max {max(per_device.values())}, "
          f"all devices {sum(per_device.values())}")
    for path, spec in placed.items():
        print(f"  {path:18s} {spec}")
    plot(losses, dict(mesh.shape), args.out)
    print(f"figure written to {args.out}")
    return losses, {"mesh": dict(mesh.shape), "params": placed}


if __name__ == "__main__":
    main()
