"""Vision Transformer (Dosovitskiy et al. 2021) in Flax Linen, with big_vision parameter names.

Parameter tree (so that a big_vision ``.npz`` checkpoint loads by name)::

    embedding/{kernel,bias}        patch embedding, a Conv with stride = patch size
    pos_embedding                  (1, patches, width), added to the patch tokens
    cls                            (1, 1, width), prepended after the position embedding
    Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1,
                                  MlpBlock_0/{Dense_0, Dense_1}}
    Transformer/encoder_norm
    head/{kernel,bias}             applied to the final cls token

Pre-norm blocks: ``x = x + MHSA(LN(x)); x = x + MLP(LN(x))`` with a GELU MLP.

``ViT(config)(x, start=i, stop=j)`` runs blocks ``i .. j-1`` only: with ``start == 0`` the
input is images (batch, H, W, C) and the patch embedding runs first, otherwise tokens
(batch, 1 + patches, width); with ``stop == depth`` the final norm and head run and the
output is logits (batch, classes), otherwise tokens. So ``ViT(x) == ViT(ViT(x, stop=i), start=i)``,
which lets frozen features before block ``i`` be cached.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Shapes of a ViT; ``ViTConfig.preset(name, **overrides)`` for named sizes."""

    num_classes: int = 10
    image_size: int = 32
    patch_size: int = 8
    width: int = 64
    depth: int = 12
    mlp_dim: int = 128
    num_heads: int = 4
    dtype: str = "float32"

    PRESETS = {
        "tiny": dict(num_classes=10, image_size=32, patch_size=8, width=64, depth=12, mlp_dim=128, num_heads=4),
        "B/16": dict(num_classes=1000, image_size=224, patch_size=16, width=768, depth=12, mlp_dim=3072,
                     num_heads=12),
    }

    @classmethod
    def preset(cls, name: str, **overrides) -> "ViTConfig":
        if name not in cls.PRESETS:
            raise ValueError(f"unknown ViT preset {name!r}; choose one of {sorted(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} must be a multiple of patch_size={self.patch_size}")
        if self.width % self.num_heads:
            raise ValueError(f"width={self.width} must be a multiple of num_heads={self.num_heads}")


class MlpBlock(nn.Module):
    mlp_dim: int
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        x = nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype, name="Dense_0")(x))
        return nn.Dense(width, dtype=self.dtype, name="Dense_1")(x)


class Encoder1DBlock(nn.Module):
    mlp_dim: int
    num_heads: int
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm_0")(x)
        y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype,
                                            name="MultiHeadDotProductAttention_0")(y, y)
        x = x + y
        y = nn.LayerNorm(dtype=self.dtype, name="LayerNorm_1")(x)
        return x + MlpBlock(self.mlp_dim, self.dtype, name="MlpBlock_0")(y)


class Encoder(nn.Module):
    depth: int
    mlp_dim: int
    num_heads: int
    dtype: str = "float32"

    @nn.compact
    def __call__(self, x, start: int = 0, stop: int | None = None):
        stop = self.depth if stop is None else stop
        for i in range(start, stop):
            x = Encoder1DBlock(self.mlp_dim, self.num_heads, self.dtype, name=f"encoderblock_{i}")(x)
        if stop == self.depth:
            x = nn.LayerNorm(dtype=self.dtype, name="encoder_norm")(x)
        return x


class ViT(nn.Module):
    """ViT classifier with a cls token; see the module docstring for ``start``/``stop``."""

    config: ViTConfig

    @nn.compact
    def __call__(self, x, *, start: int = 0, stop: int | None = None):
        cfg = self.config
        stop = cfg.depth if stop is None else stop
        if not 0 <= start <= stop <= cfg.depth:
            raise ValueError(f"need 0 <= start <= stop <= depth={cfg.depth}; got start={start}, stop={stop}")
        if start == 0:
            want = (cfg.image_size, cfg.image_size)
            if x.ndim != 4 or tuple(x.shape[1:3]) != want:
                raise ValueError(f"images have shape {tuple(x.shape)}; expected (batch, {want[0]}, {want[1]}, channels)")
            x = nn.Conv(cfg.width, (cfg.patch_size,) * 2, strides=(cfg.patch_size,) * 2, padding="VALID",
                        dtype=cfg.dtype, name="embedding")(x)
            n = x.shape[0]
            x = x.reshape(n, -1, cfg.width)
            pos = self.param("pos_embedding", nn.initializers.normal(stddev=1 / np.sqrt(cfg.width)),
                             (1, cfg.num_patches, cfg.width))
            x = x + pos.astype(x.dtype)
            cls = self.param("cls", nn.initializers.zeros, (1, 1, cfg.width))
            x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (n, 1, 1)), x], axis=1)
        elif x.ndim != 3 or x.shape[1:] != (1 + cfg.num_patches, cfg.width):
            raise ValueError(f"tokens have shape {tuple(x.shape)}; expected (batch, {1 + cfg.num_patches}, {cfg.width})")
        x = Encoder(cfg.depth, cfg.mlp_dim, cfg.num_heads, cfg.dtype, name="Transformer")(x, start, stop)
        if stop < cfg.depth:
            return x
        return nn.Dense(cfg.num_classes, dtype=cfg.dtype, name="head")(x[:, 0])
