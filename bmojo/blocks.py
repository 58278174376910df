"""SwiGLU MLP and the pre-norm residual block around a mixer layer."""

from __future__ import annotations

import flax.linen as nn

from .config import BlockType, ModelConfig
from .layer import BMojoLayer, LayerCache


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``, hidden width ``d_ff``, no biases."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=c.dtype, name=name)  # noqa: E731
        return dense(c.d_model, "down")(nn.silu(dense(c.d_ff, "gate")(x)) * dense(c.d_ff, "up")(x))


class Block(nn.Module):
    """``x + mixer(norm(x))`` then ``x + mlp(norm(x))`` (no MLP when ``d_ff == 0``)."""

    config: ModelConfig
    kind: BlockType | str = BlockType.BMOJO

    def setup(self):
        c = self.config
        self.mixer_norm = nn.RMSNorm(epsilon=c.norm_eps, dtype=c.dtype)
        self.mixer = BMojoLayer(c, self.kind)
        if c.d_ff:
            self.mlp_norm = nn.RMSNorm(epsilon=c.norm_eps, dtype=c.dtype)
            self.mlp = MLP(c)

    @staticmethod
    def init_cache(config: ModelConfig, kind: BlockType | str, batch: int) -> LayerCache:
        """The decoding state of the block (its mixer's; the MLP has none)."""
        return BMojoLayer.init_cache(config, kind, batch)

    def _mlp(self, x):
        return x + self.mlp(self.mlp_norm(x)) if self.config.d_ff else x

    def __call__(self, x):
        """x: (batch, length, d_model) -> (x, aux loss of the mixer)."""
        y, aux = self.mixer(self.mixer_norm(x))
        return self._mlp(x + y), aux

    def step(self, x, cache: LayerCache, t):
        """x: (batch, d_model) at position t -> (x, new cache)."""
        y, cache = self.mixer.step(self.mixer_norm(x), cache, t)
        return self._mlp(x + y), cache
