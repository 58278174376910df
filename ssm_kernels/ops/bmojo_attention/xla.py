"""Blocked XLA form of B'MOJO attention: cost linear in length for a fixed window.

Queries are cut into blocks of ``block`` rows. Query block b (rows [b*block, (b+1)*block))
can only see keys of the in-context band [b*block - W + 1, (b+1)*block - 1] and of the fading
band [b*block - 2W + 1, (b+1)*block - 1 - W]; each band covers key blocks b + o for a fixed,
static range of offsets o, so the key blocks are gathered once with an index array
(batch, blocks, offsets, block, ...) and every query block scores only its own bands plus the
eidetic slots. Masks come from ``masks``; the softmax is joint over all sources. Probabilities
multiply the finite part of the values (a gathered band also holds keys a query must not see);
``nonfinite.restore`` adds back the non-finite values each query does see.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ssm_kernels._layout import pad_axis
from ssm_kernels._nonfinite import finite_part
from ssm_kernels.ops.bmojo_attention import masks, nonfinite
from ssm_kernels.ops.bmojo_attention.softmax import joint_softmax

DEFAULT_BLOCK = 64


def band_offsets(lo: int, hi: int, block: int, n_blocks: int) -> range:
    """Key-block offsets o such that blocks b + o cover query-relative key range [lo, hi].

    For a query block starting at ``b * block``, keys ``b*block + lo .. b*block + block - 1 + hi``
    lie in blocks ``b + lo // block .. b + (block - 1 + hi) // block``; offsets that point before
    the first block of every query block are dropped. Empty when nothing can be visible.
    """
    first = max(lo // block, -(n_blocks - 1))
    last = (block - 1 + hi) // block
    return range(first, last + 1)


def _gather_band(x, offsets: range, block: int, n_blocks: int):
    """x (batch, n_blocks*block, ...) -> (batch, n_blocks, len(offsets)*block, ...) and positions."""
    idx = jnp.arange(n_blocks)[:, None] + jnp.asarray(list(offsets))[None, :]
    xb = x.reshape(x.shape[0], n_blocks, block, *x.shape[2:])
    gathered = xb[:, jnp.clip(idx, 0, n_blocks - 1)]
    gathered = gathered.reshape(x.shape[0], n_blocks, len(offsets) * block, *x.shape[2:])
    positions = (idx[:, :, None] * block + jnp.arange(block)).reshape(n_blocks, -1)
    return gathered, positions


def _memory_scores(qf, memory_k, memory_chunk, scale):
    """Scores of every query against its slots: (batch, length, kv_heads, group, slots)."""
    if memory_k.ndim == 4:
        return jnp.einsum("blkgd,bmkd->blkgm", qf, memory_k.astype(qf.dtype)) * scale
    batch, length = qf.shape[:2]
    chunks = memory_k.shape[1]
    qc = pad_axis(qf, 1, chunks * memory_chunk).reshape(batch, chunks, memory_chunk, *qf.shape[2:])
    s = jnp.einsum("bcqkgd,bcmkd->bcqkgm", qc, memory_k.astype(qf.dtype)) * scale
    return s.reshape(batch, chunks * memory_chunk, *s.shape[3:])[:, :length]


def _memory_output(p, memory_v, memory_chunk):
    """Probabilities (batch, length, kv_heads, group, slots) times slot values."""
    if memory_v.ndim == 4:
        return jnp.einsum("blkgm,bmkd->blkgd", p, memory_v.astype(p.dtype))
    batch, length = p.shape[:2]
    chunks = memory_v.shape[1]
    pc = pad_axis(p, 1, chunks * memory_chunk).reshape(batch, chunks, memory_chunk, *p.shape[2:])
    o = jnp.einsum("bcqkgm,bcmkd->bcqkgd", pc, memory_v.astype(p.dtype))
    return o.reshape(batch, chunks * memory_chunk, *o.shape[3:])[:, :length]


def _memory_slot_positions(memory_pos, length, memory_chunk):
    """Slot positions seen by each query: (batch, length, slots)."""
    if memory_pos.ndim == 2:
        return jnp.broadcast_to(memory_pos[:, None, :], (memory_pos.shape[0], length,
                                                         memory_pos.shape[1]))
    return memory_pos[:, jnp.arange(length) // memory_chunk]


@functools.partial(jax.jit, static_argnames=("window", "memory_chunk", "scale", "block"))
def blocked_attention(q, k, v, *, window, fading_k=None, fading_v=None, memory_k=None,
                      memory_v=None, memory_pos=None, memory_chunk=None, scale,
                      block=DEFAULT_BLOCK):
    """Same result as ``reference.attention_reference`` at O(length * (2W + block + slots)) cost."""
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads
    block = min(block, length)
    n_blocks = -(-length // block)
    padded = n_blocks * block
    ct = jnp.promote_types(q.dtype, jnp.float32)
    has_fading = fading_k is not None

    qf = q.astype(ct).reshape(batch, length, kv_heads, group, head_dim)
    qb = pad_axis(qf, 1, padded).reshape(batch, n_blocks, block, kv_heads, group, head_dim)
    q_pos = jnp.arange(padded).reshape(n_blocks, block)

    bands = [(k, v, -(window - 1), 0, masks.context_visible)]
    if has_fading:
        bands.append((fading_k, fading_v, -(2 * window - 1), -window, masks.fading_visible))

    scores, band_values = [], []
    for keys, vals, lo, hi, visible_fn in bands:
        offsets = band_offsets(lo, hi, block, n_blocks)
        if len(offsets) == 0:  # no query of this length can see the band
            continue
        kb, k_pos = _gather_band(pad_axis(keys.astype(ct), 1, padded), offsets, block, n_blocks)
        vb, _ = _gather_band(pad_axis(finite_part(vals).astype(ct), 1, padded), offsets, block,
                             n_blocks)
        s = jnp.einsum("bnqkgd,bnskd->bnqkgs", qb, kb) * scale
        visible = visible_fn(q_pos[:, :, None], k_pos[:, None, :], window, length)
        scores.append(masks.masked(s, visible[None, :, :, None, None, :]))
        band_values.append(vb)

    n_bands = len(scores)
    if memory_k is not None:
        s = _memory_scores(qf, memory_k, memory_chunk, scale)
        slot_pos = _memory_slot_positions(memory_pos, length, memory_chunk)
        visible = masks.memory_visible(jnp.arange(length)[None, :, None], slot_pos, window,
                                       has_fading)
        s = masks.masked(s, visible[:, :, None, None, :])
        scores.append(pad_axis(s, 1, padded).reshape(batch, n_blocks, block, *s.shape[2:]))

    probs, lse = joint_softmax(scores)
    out = sum(jnp.einsum("bnqkgs,bnskd->bnqkgd", p, vb)
              for p, vb in zip(probs[:n_bands], band_values))
    out = out.reshape(batch, padded, kv_heads, group, head_dim)[:, :length]
    if memory_k is not None:
        p_mem = probs[n_bands].reshape(batch, padded, *probs[n_bands].shape[3:])[:, :length]
        out = out + _memory_output(p_mem, finite_part(memory_v), memory_chunk)
    out = out.reshape(batch, length, heads, head_dim).astype(q.dtype)
    out = nonfinite.restore(out, v, window=window, fading_v=fading_v, memory_v=memory_v,
                            memory_pos=memory_pos, memory_chunk=memory_chunk)
    lse = lse.reshape(batch, padded, heads)[:, :length]
    return out, lse
