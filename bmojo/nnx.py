"""B'MOJO for Flax NNX: the Linen modules wrapped with ``flax.nnx.bridge.ToNNX``.

Parameters are created at construction (from ``rngs``), as NNX modules do, and are ``nnx.Param``
variables of the module: ``nnx.split``, ``nnx.state``, ``nnx.Optimizer`` and ``nnx.jit`` work on
them as on any NNX module. The computation is the Linen one (``bmojo.BMojoLayer``,
``bmojo.LanguageModel``), so both APIs give the same numbers for the same parameters.

    layer = bmojo.nnx.BMojoLayer(config, "bmojo", rngs=nnx.Rngs(0))
    y, aux = layer(x)                                  # x: (batch, L, d_model)
    cache = layer.init_cache(batch)
    y_t, cache = layer.step(x[:, t], cache, t)         # one token, t an int32 scalar
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from . import layer as layer_lib
from . import model as model_lib
from .config import BlockType, ModelConfig


class BMojoLayer(nnx.Module):
    """NNX form of ``bmojo.BMojoLayer``: (batch, L, d_model) -> ((batch, L, d_model), aux)."""

    def __init__(self, config: ModelConfig, kind: BlockType | str = BlockType.BMOJO, *, rngs: nnx.Rngs):
        self.config, self.kind = config, kind
        self.linen = nnx.bridge.ToNNX(layer_lib.BMojoLayer(config, kind), rngs=rngs)
        self.linen.lazy_init(jnp.zeros((1, config.chunk_size, config.d_model), config.dtype))

    def __call__(self, x):
        return self.linen(x)

    def init_cache(self, batch: int) -> layer_lib.LayerCache:
        """The empty decoding state of this layer for ``batch`` sequences."""
        return layer_lib.BMojoLayer.init_cache(self.config, self.kind, batch)

    def step(self, x, cache: layer_lib.LayerCache, t):
        """One token x: (batch, d_model) at position t (int32 scalar) -> (y, new cache)."""
        return self.linen(x, cache, t, method="step")


class LanguageModel(nnx.Module):
    """NNX form of ``bmojo.LanguageModel``: tokens (batch, L) -> (logits (batch, L, vocab), aux)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.linen = nnx.bridge.ToNNX(model_lib.LanguageModel(config), rngs=rngs)
        self.linen.lazy_init(jnp.zeros((1, config.chunk_size), jnp.int32))

    def __call__(self, tokens):
        return self.linen(tokens)

    def init_cache(self, batch: int) -> model_lib.ModelCache:
        """The empty decoding cache for ``batch`` sequences (as ``bmojo.init_cache``)."""
        return model_lib.LanguageModel.init_cache(self.config, batch)

    def step(self, token, cache: model_lib.ModelCache):
        """token: (batch,) int at position ``cache.t`` -> (logits (batch, vocab), new cache)."""
        return self.linen(token, cache, method="step")
