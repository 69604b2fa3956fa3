"""A character-level language model on the Python standard library's own sources, for the
examples that train a small transformer (``finetune_transformer.py``).

* **Texts.** :func:`base_text` is the code of the running interpreter's standard library: the
  top-level modules whose names start with ``a``-``m`` (``abc.py`` … ``modulefinder.py``, sorted,
  about 1.8 MB for CPython 3.11). :func:`shifted_text` is prose from the other modules
  (``n*.py``-``z*.py``): their docstrings alone, without the code (about 0.45 MB). A model
  pre-trained on the code predicts the docstrings clearly worse than its own validation code
  (1.93 against 1.58 nats per character for ``finetune_transformer.py``'s default model), the
  shift that the fine-tuning example adapts to. Both are read from the interpreter's files, so
  they depend on the Python version; nothing is downloaded.
* **Vocabulary.** Printable ASCII and the newline, 96 characters, plus one id (:data:`OTHER`)
  for everything else (tabs, non-ASCII letters).
* **Batches.** :func:`split` keeps the last tenth of a text for validation; :func:`sample_batch`
  draws training windows with a NumPy ``Generator``; :func:`eval_batches` takes fixed, evenly
  spaced windows, so every model is scored on the same characters.
* **Model.** :class:`CharTransformer`: a decoder-only transformer in Flax NNX (``nnx.Embed`` for
  characters and positions, pre-LayerNorm blocks of causal ``nnx.MultiHeadAttention`` and a
  GELU MLP of two ``nnx.Linear``, a final ``nnx.LayerNorm``, an untied ``nnx.Linear`` head, or
  the character table's ``attend`` with ``tied=True``). Layer paths are
  ``blocks/{i}/attn/{query,key,value,out}``, ``blocks/{i}/mlp/{up,down}``, ``embed``, ``pos``
  and ``head``, the names :func:`tensorfact.nn.apply_adapters` rules match.
* **Training.** :func:`train_step` (``nnx.jit``, the variables ``wrt`` selects),
  :func:`make_optimizer` (AdamW with gradient clipping) and :func:`evaluate` (mean
  cross-entropy over fixed batches, in nats per character, from the compiled :func:`logits`).
"""

from __future__ import annotations

import ast
import os
import sysconfig
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

#: The characters with an id of their own: the newline, then ASCII 32 (space) to 126 (``~``).
CHARS = "\n" + "".join(chr(c) for c in range(32, 127))
#: The id of every other character.
OTHER = len(CHARS)
VOCAB = len(CHARS) + 1

_LUT = np.full(128, OTHER, np.int32)
_LUT[[ord(c) for c in CHARS]] = np.arange(len(CHARS), dtype=np.int32)


# -- texts -------------------------------------------------------------------------------------
def stdlib_dir() -> str:
    """The directory of the running interpreter's standard library sources."""
    return sysconfig.get_paths()["stdlib"]


def base_files(first: str = "a", last: str = "m") -> list[str]:
    """The standard library's top-level modules whose names start with ``first``-``last``,
    sorted."""
    root = stdlib_dir()
    names = sorted(n for n in os.listdir(root)
                   if n.endswith(".py") and first <= n[0] <= last)
    if not names:
        raise FileNotFoundError(f"no standard library sources {first}*.py-{last}*.py in {root}: "
                                "this interpreter ships compiled modules only.")
    return [os.path.join(root, n) for n in names]


def base_text(max_chars: int | None = None) -> str:
    """The pre-training text: the code of :func:`base_files`, one file after the other."""
    parts = []
    for path in base_files():
        with open(path, encoding="utf-8", errors="replace") as f:
            parts.append(f.read())
    return "\n".join(parts)[:max_chars]


def docstrings(path: str) -> list[str]:
    """The docstrings of a module file: the module's, then its classes' and functions'
    (``ast.walk`` order), cleaned by ``ast.get_docstring``."""
    with open(path, encoding="utf-8", errors="replace") as f:
        tree = ast.parse(f.read(), filename=path)
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return [d for node in ast.walk(tree) if isinstance(node, kinds)
            if (d := ast.get_docstring(node))]


def shifted_text(max_chars: int | None = None) -> str:
    """The shifted text: the docstrings alone of the other modules, ``n*.py``-``z*.py`` (sorted
    by file, blank lines between them): prose, where the base text is mostly code."""
    return "\n\n".join(d for path in base_files("n", "z") for d in docstrings(path))[:max_chars]


def encode(text: str) -> np.ndarray:
    """The ids of ``text``'s characters (int32; :data:`OTHER` for those outside
    :data:`CHARS`)."""
    codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    return np.where(codes < 128, _LUT[np.minimum(codes, 127)], OTHER).astype(np.int32)


def decode(ids) -> str:
    """The text of ``ids`` (``OTHER`` shown as ``"?"``)."""
    table = CHARS + "?"
    return "".join(table[int(i)] for i in np.asarray(ids).ravel())


def split(ids: np.ndarray, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)``: the last ``val_fraction`` of the ids held out."""
    cut = int(round(len(ids) * (1 - val_fraction)))
    return ids[:cut], ids[cut:]


def sample_batch(ids: np.ndarray, rng: np.random.Generator, batch: int, seq_len: int):
    """``batch`` random windows of ``seq_len + 1`` ids (inputs ``[:, :-1]``, targets
    ``[:, 1:]``), as an int32 array ``(batch, seq_len + 1)``."""
    starts = rng.integers(0, len(ids) - seq_len - 1, batch)
    return ids[starts[:, None] + np.arange(seq_len + 1)]


def eval_batches(ids: np.ndarray, n_batches: int, batch: int, seq_len: int) -> np.ndarray:
    """``n_batches`` fixed batches of windows, evenly spaced over ``ids``:
    ``(n_batches, batch, seq_len + 1)``."""
    starts = np.linspace(0, len(ids) - seq_len - 1, n_batches * batch).astype(np.int64)
    windows = ids[starts[:, None] + np.arange(seq_len + 1)]
    return windows.reshape(n_batches, batch, seq_len + 1)


# -- model -------------------------------------------------------------------------------------
class Config(NamedTuple):
    """The transformer's sizes."""

    d_model: int = 64
    heads: int = 4
    layers: int = 2
    seq_len: int = 64
    mlp_ratio: int = 4
    vocab: int = VOCAB
    tied: bool = False


class MLP(nnx.Module):
    def __init__(self, d: int, hidden: int, *, rngs: nnx.Rngs):
        self.up = nnx.Linear(d, hidden, rngs=rngs)
        self.down = nnx.Linear(hidden, d, rngs=rngs)

    def __call__(self, x):
        return self.down(jax.nn.gelu(self.up(x)))


def default_attention(config: Config, rngs: nnx.Rngs) -> nnx.Module:
    """Causal self-attention: ``nnx.MultiHeadAttention`` (called as ``attn(x, mask=mask)``)."""
    return nnx.MultiHeadAttention(config.heads, config.d_model, decode=False, rngs=rngs)


def default_mlp(config: Config, rngs: nnx.Rngs) -> nnx.Module:
    """The feed-forward block: :class:`MLP` ``d → mlp_ratio · d → d``."""
    return MLP(config.d_model, config.mlp_ratio * config.d_model, rngs=rngs)


class Block(nnx.Module):
    """A pre-LayerNorm block: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``."""

    def __init__(self, config: Config, *, rngs: nnx.Rngs,
                 attention: Callable[[Config, nnx.Rngs], nnx.Module] = default_attention,
                 mlp: Callable[[Config, nnx.Rngs], nnx.Module] = default_mlp):
        self.ln1 = nnx.LayerNorm(config.d_model, rngs=rngs)
        self.attn = attention(config, rngs)
        self.ln2 = nnx.LayerNorm(config.d_model, rngs=rngs)
        self.mlp = mlp(config, rngs)

    def __call__(self, x, mask):
        x = x + self.attn(self.ln1(x), mask=mask)
        return x + self.mlp(self.ln2(x))


class CharTransformer(nnx.Module):
    """A decoder-only transformer over character ids: ``model(ids)`` with ``ids`` of shape
    ``(batch, t)``, ``t ≤ config.seq_len``, returns logits ``(batch, t, vocab)``.

    ``attention(config, rngs)`` builds each block's attention (default: causal
    ``nnx.MultiHeadAttention``); it is called as ``attn(x, mask=mask)`` with the causal
    ``mask`` of ``nnx.make_causal_mask``. ``mlp(config, rngs)`` builds each block's
    feed-forward part (default: :func:`default_mlp`)."""

    def __init__(self, config: Config = Config(), *, rngs: nnx.Rngs,
                 attention: Callable[[Config, nnx.Rngs], nnx.Module] = default_attention,
                 mlp: Callable[[Config, nnx.Rngs], nnx.Module] = default_mlp):
        self.config = config
        self.embed = nnx.Embed(config.vocab, config.d_model, rngs=rngs)
        self.pos = nnx.Embed(config.seq_len, config.d_model, rngs=rngs)
        self.blocks = nnx.List([Block(config, rngs=rngs, attention=attention, mlp=mlp)
                                for _ in range(config.layers)])
        self.ln_f = nnx.LayerNorm(config.d_model, rngs=rngs)
        self.head = None if config.tied else nnx.Linear(config.d_model, config.vocab,
                                                        rngs=rngs)

    def __call__(self, ids):
        t = ids.shape[-1]
        x = self.embed(ids) + self.pos(jnp.arange(t))
        mask = nnx.make_causal_mask(ids)
        for block in self.blocks:
            x = block(x, mask)
        x = self.ln_f(x)
        return self.embed.attend(x) if self.head is None else self.head(x)


def n_params(model, wrt=nnx.Param) -> int:
    """The number of scalars in the variables ``wrt`` selects."""
    return sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(model, wrt)))


# -- training ----------------------------------------------------------------------------------
def loss_fn(model, batch):
    """Mean next-character cross-entropy (nats) of ``batch`` ``(b, t + 1)``."""
    logits = model(batch[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()


def _matrices(params):
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(model, learning_rate, *, wrt=nnx.Param, weight_decay: float = 0.0,
                   clip: float = 1.0) -> nnx.Optimizer:
    """AdamW (``learning_rate`` a float or an optax schedule) on the variables ``wrt``
    selects, after clipping the gradient's global norm to ``clip``; the weight decay (none by
    default) on matrices only, not on biases, LayerNorm scales or vectors.

    This is ``optax.adamw``'s chain (``scale_by_adam``, ``add_decayed_weights``,
    ``scale_by_learning_rate``) with Adam run on one flat vector of every selected parameter
    (``optax.flatten``): the same update, and a program that XLA compiles about a third faster
    on a CPU than one Adam per array."""
    parts = [optax.clip_by_global_norm(clip), optax.flatten(optax.scale_by_adam())]
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay, mask=_matrices))
    parts.append(optax.scale_by_learning_rate(learning_rate))
    return nnx.Optimizer(model, optax.chain(*parts), wrt=wrt)


@nnx.jit(static_argnames="wrt")
def train_step(model, optimizer, batch, wrt=nnx.Param):
    """One AdamW step on the variables ``wrt`` selects (the optimizer's ``wrt``); returns the
    batch loss."""
    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt))(model, batch)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def logits(model, ids):
    """``model(ids)``, compiled."""
    return model(ids)


def cross_entropy(logits_, targets) -> np.ndarray:
    """Per-character cross-entropy (nats) of ``logits_`` ``(..., vocab)`` against integer
    ``targets``, in float64 NumPy."""
    z = np.asarray(logits_, np.float64)
    z = z - z.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(log_p, np.asarray(targets)[..., None], -1)[..., 0]


def evaluate(model, batches) -> float:
    """Mean cross-entropy (nats per character) over ``batches`` (from :func:`eval_batches`),
    the logits from :func:`logits` (one compilation per model structure, shared with any
    other use of :func:`logits`)."""
    return float(np.mean([cross_entropy(logits(model, jnp.asarray(b[:, :-1])), b[:, 1:])
                          for b in batches]))
