"""Positional encodings of attention: rotary embeddings (rotate-half form), or none."""

from __future__ import annotations

import enum

import jax.numpy as jnp


class PositionEncoding(str, enum.Enum):
    """``rope``: rotary embeddings on queries and keys; ``none``: no positional encoding (order is
    known only through the causal mask and, in hybrids, the SSM)."""

    ROPE = "rope"
    NONE = "none"


def apply_rope(x, positions, base: float = 10000.0):
    """Rotate ``x`` (..., length, heads, head_dim) by the angles of ``positions`` (length,).

    For channel pairs (i, i + head_dim/2) with frequency ``base ** (-2i / head_dim)``:
    ``(x1, x2) -> (x1 cos(p w) - x2 sin(p w), x2 cos(p w) + x1 sin(p w))``.
    """
    half = x.shape[-1] // 2
    freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle = positions.astype(jnp.float32)[:, None] * freq  # (length, half)
    cos, sin = jnp.cos(angle)[:, None, :], jnp.sin(angle)[:, None, :]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)
