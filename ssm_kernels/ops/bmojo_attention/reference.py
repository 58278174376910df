"""Reference of B'MOJO attention: naive masked attention over every key of every source.

Cost O(length^2): for tests and small inputs. Layouts as in ``bmojo_attention``; query head h
uses kv head ``h // (heads // kv_heads)`` (grouped as (kv_heads, group) below).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ssm_kernels._nonfinite import finite_part
from ssm_kernels.ops.bmojo_attention import masks, nonfinite
from ssm_kernels.ops.bmojo_attention.softmax import joint_softmax


@functools.partial(jax.jit, static_argnames=("window", "memory_chunk", "scale"))
def attention_reference(q, k, v, *, window, fading_k=None, fading_v=None, memory_k=None,
                    memory_v=None, memory_pos=None, memory_chunk=None, scale):
    """out_i = sum_s softmax_j(scale * q_i . key_j over visible keys of all sources) value_j.

    Probabilities multiply the finite part of the values; ``nonfinite.restore`` adds back the
    non-finite values each query sees. Returns out (batch, length, heads, head_dim) in q.dtype
    and lse (batch, length, heads).
    """
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    ct = jnp.promote_types(q.dtype, jnp.float32)
    qg = q.astype(ct).reshape(batch, length, kv_heads, heads // kv_heads, head_dim)
    pos = jnp.arange(length)
    has_fading = fading_k is not None

    scores, values, specs = [], [], []

    def add_sequence_source(keys, vals, visible):
        s = jnp.einsum("blkgd,bmkd->blkgm", qg, keys.astype(ct)) * scale
        scores.append(masks.masked(s, visible[None, :, None, None, :]))
        values.append(finite_part(vals).astype(ct))
        specs.append("blkgm,bmkd->blkgd")

    add_sequence_source(k, v, masks.context_visible(pos[:, None], pos[None, :], window, length))
    if has_fading:
        add_sequence_source(
            fading_k, fading_v, masks.fading_visible(pos[:, None], pos[None, :], window, length)
        )
    if memory_k is not None:
        if memory_k.ndim == 5:  # per-chunk snapshots: query i reads snapshot i // memory_chunk
            snapshot = pos // memory_chunk
            mk, mv, mpos = memory_k[:, snapshot], memory_v[:, snapshot], memory_pos[:, snapshot]
            s = jnp.einsum("blkgd,blmkd->blkgm", qg, mk.astype(ct)) * scale
            specs.append("blkgm,blmkd->blkgd")
        else:
            mv, mpos = memory_v, jnp.broadcast_to(
                memory_pos[:, None, :], (batch, length, memory_pos.shape[-1])
            )
            s = jnp.einsum("blkgd,bmkd->blkgm", qg, memory_k.astype(ct)) * scale
            specs.append("blkgm,bmkd->blkgd")
        visible = masks.memory_visible(pos[None, :, None], mpos, window, has_fading)
        scores.append(masks.masked(s, visible[:, :, None, None, :]))
        values.append(finite_part(mv).astype(ct))

    probs, lse = joint_softmax(scores)
    out = sum(jnp.einsum(spec, p, val) for spec, p, val in zip(specs, probs, values))
    out = out.reshape(batch, length, heads, head_dim).astype(q.dtype)
    out = nonfinite.restore(out, v, window=window, fading_v=fading_v, memory_v=memory_v,
                            memory_pos=memory_pos, memory_chunk=memory_chunk)
    return out, lse.reshape(batch, length, heads)
