"""Language model: embedding, a stack of blocks (one type per layer), final norm, LM head."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from .blocks import Block
from .config import ModelConfig


class LanguageModel(nn.Module):
    """``__call__(tokens (batch, length) int32) -> (logits (batch, length, vocab) float32, aux)``.

    ``aux`` (scalar float32) is the sum over layers of the innovation predictors' auxiliary
    losses (0.0 when no layer has an eidetic store); training code adds it to the LM loss.
    """

    config: ModelConfig

    def setup(self):
        c = self.config
        self.embed = nn.Embed(c.vocab_size, c.d_model, dtype=c.dtype)
        self.blocks = [Block(c, kind) for kind in c.block_types]
        self.norm = nn.RMSNorm(epsilon=c.norm_eps, dtype=c.dtype)
        if not c.tie_embeddings:
            self.head = nn.Dense(c.vocab_size, use_bias=False, dtype=c.dtype)

    def _logits(self, x):
        x = self.norm(x)
        logits = self.embed.attend(x) if self.config.tie_embeddings else self.head(x)
        return logits.astype(jnp.float32)

    def __call__(self, tokens):
        x = self.embed(tokens)
        aux = jnp.zeros((), jnp.float32)
        for block in self.blocks:
            x, a = block(x)
            aux = aux + a
        return self._logits(x), aux

    def step(self, token, cache):
        """token: (batch,) int32 at position ``cache["t"]`` -> (logits (batch, vocab), new cache)."""
        t = cache["t"]
        x = self.embed(token)
        layers = []
        for block, layer_cache in zip(self.blocks, cache["blocks"]):
            x, layer_cache = block.step(x, layer_cache, t)
            layers.append(layer_cache)
        return self._logits(x), {"t": t + 1, "blocks": tuple(layers)}
