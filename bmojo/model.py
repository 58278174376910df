"""Language model: embedding, a stack of blocks (one type per layer), final norm, LM head."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from .blocks import Block
from .config import ModelConfig
from .layer import LayerCache


def check_tokens(tokens, vocab_size: int, *, name: str = "tokens", shape: tuple | None = None,
                 layout: str = "(batch, length)") -> None:
    """ValueError unless ``tokens`` is an integer array with the axes of ``layout`` (or ``shape``)
    whose ids lie in ``[0, vocab_size)``. Ids are checked only when the array is concrete (outside
    ``jit``); traced ids are the caller's to check, and the model maps bad ones to NaN."""
    rank = len([axis for axis in layout.strip("()").split(",") if axis.strip()])
    if not hasattr(tokens, "ndim") or tokens.ndim != rank or (shape is not None and tuple(tokens.shape) != shape):
        got = tuple(tokens.shape) if hasattr(tokens, "shape") else type(tokens).__name__
        want = shape if shape is not None else f"rank {rank}"
        raise ValueError(f"{name} has shape {got}; expected {want} {layout}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"{name} has dtype {tokens.dtype}; expected integer token ids")
    if isinstance(tokens, jax.core.Tracer) or tokens.size == 0:
        return
    values = np.asarray(tokens)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"{name} holds ids from {low} to {high}; expected ids in [0, {vocab_size}) "
                         f"(vocab_size = {vocab_size})")


@struct.dataclass
class ModelCache:
    """Decoding state of a ``LanguageModel``: ``t`` (int32 scalar), the position of the next token,
    and one ``LayerCache`` per block."""

    t: jax.Array
    blocks: tuple[LayerCache, ...]


class LanguageModel(nn.Module):
    """``__call__(tokens (batch, length) int) -> (logits (batch, length, vocab) float32, aux)``.

    ``aux`` (scalar float32) is the sum over layers of the learned innovation predictors'
    auxiliary losses (0.0 without them); training code adds it to the LM loss. Token ids outside
    ``[0, vocab_size)`` are a ValueError when the ids are concrete; under ``jit`` they cannot be
    checked, and such a token's embedding is NaN (never another token's), which reaches only the
    logits at and after its position.
    """

    config: ModelConfig

    def setup(self):
        c = self.config
        self.embed = nn.Embed(c.vocab_size, c.d_model, dtype=c.dtype)
        self.blocks = [Block(c, kind) for kind in c.block_types]
        self.norm = nn.RMSNorm(epsilon=c.norm_eps, dtype=c.dtype)
        if not c.tie_embeddings:
            self.head = nn.Dense(c.vocab_size, use_bias=False, dtype=c.dtype)

    @staticmethod
    def init_cache(config: ModelConfig, batch: int) -> ModelCache:
        """The decoding state before the first token, for ``batch`` sequences."""
        return ModelCache(t=jnp.zeros((), jnp.int32),
                          blocks=tuple(Block.init_cache(config, kind, batch) for kind in config.block_types))

    def _embed(self, tokens):
        vocab = self.config.vocab_size
        # Out-of-range ids (negative ones included) read past the table, where take fills NaN.
        return self.embed(jnp.where((tokens >= 0) & (tokens < vocab), tokens, vocab))

    def _logits(self, x):
        x = self.norm(x)
        logits = self.embed.attend(x) if self.config.tie_embeddings else self.head(x)
        return logits.astype(jnp.float32)

    def __call__(self, tokens):
        check_tokens(tokens, self.config.vocab_size)
        x = self._embed(tokens)
        aux = jnp.zeros((), jnp.float32)
        for block in self.blocks:
            x, a = block(x)
            aux = aux + a
        return self._logits(x), aux

    def step(self, token, cache: ModelCache):
        """token: (batch,) int at position ``cache.t`` -> (logits (batch, vocab), new cache)."""
        x = self._embed(token)
        layers = []
        for block, layer_cache in zip(self.blocks, cache.blocks):
            x, layer_cache = block.step(x, layer_cache, cache.t)
            layers.append(layer_cache)
        return self._logits(x), ModelCache(t=cache.t + 1, blocks=tuple(layers))
