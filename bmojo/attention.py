"""Sliding-window attention with RoPE and grouped key/value heads, its decoding ring of keys and
values, and one decode-step attention."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

import ssm_kernels
from ssm_kernels.ops.bmojo_attention import masks

from .config import ModelConfig
from .rope import PositionEncoding, apply_rope


@struct.dataclass
class AttentionCache:
    """Ring buffer of keys and values ``k``, ``v`` (batch, size, kv_heads, head_dim) with their
    positions ``pos`` (size,) int32 (-1: empty); position t lives in slot t % size."""

    k: jax.Array
    v: jax.Array
    pos: jax.Array

    def write(self, t, k, v) -> "AttentionCache":
        """Keep k, v (batch, kv_heads, head_dim) of position t (int32 scalar)."""
        slot = t % self.pos.shape[0]
        put = lambda ring, x: jax.lax.dynamic_update_index_in_dim(ring, x.astype(ring.dtype), slot, axis=1)  # noqa: E731
        return AttentionCache(k=put(self.k, k), v=put(self.v, v), pos=self.pos.at[slot].set(t))

    def read(self, positions):
        """Keys and values (batch, n, kv_heads, head_dim) of the slots of ``positions`` (n,) int32, and
        (n,) bool: whether those slots still hold those positions."""
        slot = positions % self.pos.shape[0]
        return self.k[:, slot], self.v[:, slot], (positions >= 0) & (self.pos[slot] == positions)


class SlidingWindowAttention(nn.Module):
    """Query i attends to tokens i-window+1 .. i (``window >= length``: causal attention).

    Projections: q (d_model -> heads x head_dim), k, v (d_model -> kv_heads x head_dim),
    o (heads x head_dim -> d_model), no biases; RoPE on q and k at the token positions unless
    ``config.position_encoding`` is ``"none"``.
    ``queries``/``keys_values``/``output`` are exposed so that ``BMojoLayer`` can add the
    fading and eidetic sources to the same softmax.
    """

    config: ModelConfig
    window: int

    def setup(self):
        c = self.config
        dense = lambda shape, **kw: nn.DenseGeneral(shape, use_bias=False, dtype=c.dtype, **kw)  # noqa: E731
        self.q_proj = dense((c.n_heads, c.head_dim))
        self.k_proj = dense((c.n_kv_heads, c.head_dim))
        self.v_proj = dense((c.n_kv_heads, c.head_dim))
        self.o_proj = dense(c.d_model, axis=(-2, -1))

    @staticmethod
    def init_cache(config: ModelConfig, batch: int, size: int) -> AttentionCache:
        """An empty ring of ``size`` positions for ``batch`` sequences."""
        kv = lambda: jnp.zeros((batch, size, config.n_kv_heads, config.head_dim), config.dtype)  # noqa: E731
        return AttentionCache(k=kv(), v=kv(), pos=jnp.full((size,), -1, jnp.int32))

    def _position(self, x, positions):
        if self.config.position_encoding == PositionEncoding.NONE:
            return x
        return apply_rope(x, positions, self.config.rope_base)

    def queries(self, x, positions):
        """x: (batch, length, d_model), positions: (length,) -> (batch, length, heads, head_dim)."""
        return self._position(self.q_proj(x), positions)

    def keys_values(self, x, positions):
        """x: (batch, length, d_model) -> k (positions encoded), v: (batch, length, kv_heads, head_dim)."""
        return self._position(self.k_proj(x), positions), self.v_proj(x)

    def output(self, o):
        """o: (batch, length, heads, head_dim) -> (batch, length, d_model)."""
        return self.o_proj(o)

    def __call__(self, x):
        """x: (batch, length, d_model) -> (batch, length, d_model)."""
        positions = jnp.arange(x.shape[1])
        k, v = self.keys_values(x, positions)
        out, _ = ssm_kernels.bmojo_attention(
            self.queries(x, positions), k, v, window=self.window,
            implementation=self.config.attention_implementation)
        return self.output(out)


def attend_step(q, sources, scale=None):
    """Attention of one query per sequence over several key sources, with one softmax.

    q: (batch, heads, head_dim); sources: sequence of (k, v, visible) with k, v
    (batch, n, kv_heads, head_dim) and visible a bool mask broadcastable to (batch, n).
    Keys and values that are not visible never reach the result, even when non-finite.
    Returns (batch, heads, head_dim) in q.dtype.
    """
    batch, heads, head_dim = q.shape
    visible = jnp.concatenate([jnp.broadcast_to(s[2], (batch, s[0].shape[1])) for s in sources], axis=1)
    hide = lambda x: jnp.where(visible[:, :, None, None], x.astype(jnp.float32), 0.0)  # noqa: E731
    k = hide(jnp.concatenate([s[0] for s in sources], axis=1))
    v = hide(jnp.concatenate([s[1] for s in sources], axis=1))
    kv_heads = k.shape[2]
    scale = head_dim ** -0.5 if scale is None else scale
    qg = q.astype(jnp.float32).reshape(batch, kv_heads, heads // kv_heads, head_dim)
    scores = jnp.einsum("bkgd,bskd->bkgs", qg, k) * scale
    scores = masks.masked(scores, visible[:, None, None, :])
    out = jnp.einsum("bkgs,bskd->bkgd", jax.nn.softmax(scores, axis=-1), v)
    return out.reshape(batch, heads, head_dim).astype(q.dtype)
