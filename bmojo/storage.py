"""In-storage memory: blocks of far-past tokens retrieved by relevance into reserved attention slots.

After B'MOJO's "in-storage" memory and its follow-up Expansion Span (SE-Attn). The past is cut into
blocks of ``B`` tokens (block j holds positions jB .. jB+B-1). Every complete block leaves its keys
and values and a block key, the mean of its keys, in a store of ``capacity`` blocks outside the
layer's fixed state (the oldest blocks leave first). At the start of every chunk c (tokens
cC .. cC+C-1) the chunk's first query scores the stored blocks that ended at least ``H`` tokens
before the chunk (``H``: the layer's horizon, so a retrieved token is never also in a window),

    s_j = sum_h q_{cC, h} . kbar_{j, kv(h)} / sqrt(head_dim),

and the ``r`` best blocks fill ``r * B`` reserved slots of the attention's slot source, with their
tokens' real positions, for every query of the chunk. The selection (top-r) is exact and carries no
gradient; the attention over the retrieved keys and values is differentiable. Tokens that the
eidetic store already holds are not repeated.

Our choices, since the published scoring and block sizes were not available to us: the mean key
as block key, the chunk's first query as its summary (causal, and decoding can retrieve at that
token; ``chunk_size = 1`` retrieves for every token), scores summed over heads (slots are shared
by the key-value heads), oldest-first eviction, and the gap of ``H`` tokens. Cost per chunk: the
scores of at most ``capacity`` blocks and ``r * B`` more attended tokens, so the layer stays linear
in length for fixed ``capacity``, ``r`` and ``B``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

NEG_INF = -jnp.inf


def last_eligible(chunk_start, block: int, horizon: int):
    """Index of the newest block that ended at least ``horizon`` tokens before ``chunk_start`` (its
    last token at ``chunk_start - horizon`` or earlier); -1 when there is none."""
    return (chunk_start - horizon + 1) // block - 1


def eligible(index, chunk_start, *, block: int, horizon: int, capacity: int):
    """True for the block indices the chunk starting at ``chunk_start`` may retrieve: ended at least
    ``horizon`` tokens before it and among the ``capacity`` newest such blocks."""
    last = last_eligible(chunk_start, block, horizon)
    return (index >= 0) & (index <= last) & (index > last - capacity)


def block_keys(k, block: int):
    """Mean key of every complete block: k (batch, L, kv_heads, head_dim) -> (batch, L // B, kv_heads,
    head_dim) float32."""
    batch, length, kv_heads, head_dim = k.shape
    blocks = length // block
    k = k[:, :blocks * block].astype(jnp.float32)
    return k.reshape(batch, blocks, block, kv_heads, head_dim).mean(axis=2)


def scores(q, keys):
    """Relevance of blocks to chunk summaries: q (batch, ..., heads, head_dim), keys (batch, n,
    kv_heads, head_dim) -> (batch, ..., n): sum over heads of q . key / sqrt(head_dim)."""
    heads, head_dim = q.shape[-2:]
    kv_heads = keys.shape[-2]
    grouped = q.astype(jnp.float32).reshape(*q.shape[:-2], kv_heads, heads // kv_heads, head_dim)
    return jnp.einsum("b...kgd,bnkd->b...n", grouped, keys.astype(jnp.float32)) / math.sqrt(head_dim)


def _token_positions(index, ok, block: int):
    """Block indices (..., r) -> token positions (..., r * B), -1 where ``ok`` is False."""
    pos = index[..., None] * block + jnp.arange(block)
    pos = jnp.where(ok[..., None], pos, -1)
    return pos.reshape(*pos.shape[:-2], -1)


def exclude(pos, stored):
    """``pos`` (..., S) with -1 wherever the eidetic store ``stored`` (..., M) holds the token."""
    if stored is None or stored.shape[-1] == 0:
        return pos
    dup = jnp.any((pos[..., :, None] == stored[..., None, :]) & (pos[..., :, None] >= 0), axis=-1)
    return jnp.where(dup, -1, pos)


def retrieve(q, k, v, *, chunk: int, block: int, horizon: int, capacity: int, topk: int, stored_pos=None):
    """Retrieved slots of every chunk of a sequence (the parallel forward pass).

    q: (batch, L, heads, head_dim); k, v: (batch, L, kv_heads, head_dim); stored_pos: the eidetic
    store's positions per chunk (batch, chunks, M) or None. Returns k, v (batch, chunks, r * B,
    kv_heads, head_dim) and pos (batch, chunks, r * B) (-1: empty slot).
    """
    batch, length, kv_heads, head_dim = k.shape
    starts = jnp.arange(0, length, chunk)
    keys = block_keys(k, block)  # (batch, blocks, kv_heads, head_dim)
    blocks = keys.shape[1]
    if blocks == 0 or length == 0:
        empty = jnp.full((batch, len(starts), topk * block), -1, jnp.int32)
        zeros = jnp.zeros((*empty.shape, kv_heads, head_dim), k.dtype)
        return zeros, zeros, empty
    s = scores(q[:, starts], keys)  # (batch, chunks, blocks)
    ok = eligible(jnp.arange(blocks)[None, :], starts[:, None], block=block, horizon=horizon,
                  capacity=capacity)
    top, index = jax.lax.top_k(jnp.where(ok, s, NEG_INF), min(topk, blocks))
    pos = _token_positions(index, top > NEG_INF, block)
    if topk > blocks:  # fewer blocks than slots: the rest stay empty
        pos = jnp.pad(pos, ((0, 0), (0, 0), (0, (topk - blocks) * block)), constant_values=-1)
    pos = exclude(pos, stored_pos)
    safe = jnp.clip(pos, 0, length - 1)
    gather = jax.vmap(lambda a, p: a[p])
    return gather(k, safe), gather(v, safe), pos


def ring_size(*, capacity: int, block: int, chunk: int, horizon: int) -> int:
    """Blocks a decoder keeps: the ``capacity`` retrievable ones and those not yet old enough."""
    return capacity + -(-(chunk + horizon) // block) + 1


@struct.dataclass
class StorageRing:
    """Decoding store of blocks: keys/values ``k``, ``v`` (batch, size, B, kv_heads, head_dim), block
    keys ``key`` (batch, size, kv_heads, head_dim) float32 and block indices ``index`` (size,) (-1:
    empty); block j lives in entry j % size."""

    k: jax.Array
    v: jax.Array
    key: jax.Array
    index: jax.Array


@struct.dataclass
class StorageCache:
    """Decoding state of a layer's in-storage memory: the ``ring`` of stored blocks and the slots
    retrieved for the current chunk, ``k``, ``v`` (batch, r * B, kv_heads, head_dim) and ``pos``
    (batch, r * B) (-1: empty)."""

    ring: StorageRing
    k: jax.Array
    v: jax.Array
    pos: jax.Array


def empty_ring(batch: int, size: int, block: int, kv_heads: int, head_dim: int, dtype) -> StorageRing:
    """A ring of ``size`` blocks of ``block`` tokens, all empty."""
    return StorageRing(k=jnp.zeros((batch, size, block, kv_heads, head_dim), dtype),
                       v=jnp.zeros((batch, size, block, kv_heads, head_dim), dtype),
                       key=jnp.zeros((batch, size, kv_heads, head_dim), jnp.float32),
                       index=jnp.full((size,), -1, jnp.int32))


def empty_cache(batch: int, *, capacity: int, block: int, chunk: int, horizon: int, topk: int,
                kv_heads: int, head_dim: int, dtype) -> StorageCache:
    """The decoding state before the first token: an empty ring (``ring_size`` blocks) and
    ``topk * block`` empty slots."""
    size = ring_size(capacity=capacity, block=block, chunk=chunk, horizon=horizon)
    slots = topk * block
    kv = lambda: jnp.zeros((batch, slots, kv_heads, head_dim), dtype)  # noqa: E731
    return StorageCache(ring=empty_ring(batch, size, block, kv_heads, head_dim, dtype), k=kv(), v=kv(),
                        pos=jnp.full((batch, slots), -1, jnp.int32))


def ring_insert(ring: StorageRing, index, k, v) -> StorageRing:
    """Store block ``index`` (int32 scalar) with keys/values (batch, B, kv_heads, head_dim)."""
    slot = index % ring.index.shape[0]
    put = lambda a, x: jax.lax.dynamic_update_index_in_dim(a, x.astype(a.dtype), slot, axis=1)  # noqa: E731
    return StorageRing(k=put(ring.k, k), v=put(ring.v, v), key=put(ring.key, k.astype(jnp.float32).mean(axis=1)),
                       index=ring.index.at[slot].set(index))


def ring_retrieve(ring: StorageRing, q, chunk_start, *, block: int, horizon: int, capacity: int, topk: int,
                  stored_pos=None):
    """Retrieval for the chunk starting at ``chunk_start`` with its first query q (batch, heads,
    head_dim). Returns k, v (batch, r * B, kv_heads, head_dim) and pos (batch, r * B). Blocks are
    ranked by index before the top-r, so ties go to the older block as in ``retrieve``."""
    order = jnp.argsort(ring.index)  # ascending block index (empty entries first, masked)
    index = ring.index[order]
    s = scores(q, ring.key[:, order])  # (batch, size)
    ok = eligible(index, chunk_start, block=block, horizon=horizon, capacity=capacity)
    count = min(topk, index.shape[0])
    top, picked = jax.lax.top_k(jnp.where(ok[None], s, NEG_INF), count)
    pos = _token_positions(index[picked], top > NEG_INF, block)
    pos = exclude(pos, stored_pos)
    take = lambda a: jax.vmap(lambda x, i: x[i])(a[:, order], picked)  # noqa: E731
    shape = (q.shape[0], count * block, *ring.k.shape[3:])
    return take(ring.k).reshape(shape), take(ring.v).reshape(shape), pos
