"""Non-finite values reach exactly the queries that see them, in every implementation.

A masked probability is 0 and ``0 * nan = nan``: multiplying the probabilities by values that
hold a NaN or inf at a key query i cannot see would still turn out_i into NaN. So every
implementation multiplies the probabilities by the finite part of the values (non-finite
entries replaced by 0, ``_nonfinite.finite_part``) and ``restore`` then adds back, for each
query, the non-finite value entries of the keys it sees:

    out_i[d] += sum of the non-finite v_j[d] over the keys j visible to query i

(NaN where one is NaN or +inf meets -inf, else +inf or -inf), a pass that runs only when a
value holds a NaN or inf (``_nonfinite.if_any_nonfinite``). That is the masked sum
``sum_j p_ij v_j[d]`` over the visible keys, except that a visible non-finite entry counts even
where its probability underflows to 0 (ours: the plain product would give ``0 * inf = NaN``).
Queries and keys need no such care: masked scores are selected away (``masks.masked``) before
the softmax. Visibility follows ``masks``; slot positions outside ``[0, length)`` are empty.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ssm_kernels._nonfinite import if_any_nonfinite
from ssm_kernels.ops.bmojo_attention import masks


def _kinds(x):
    """(3, *x.shape) int32 flags of x: NaN, +inf, -inf."""
    return jnp.stack([jnp.isnan(x), x == jnp.inf, x == -jnp.inf]).astype(jnp.int32)


def _band_counts(flags, lo, hi):
    """flags (3, batch, length, kv, d); per query i the sum over key positions [lo_i, hi_i)."""
    prefix = jnp.pad(jnp.cumsum(flags, axis=2), [(0, 0), (0, 0), (1, 0), (0, 0), (0, 0)])
    return prefix[:, :, hi] - prefix[:, :, lo]


def _memory_counts(flags, memory_pos, memory_chunk, horizon: int, length: int):
    """flags (3, batch, [chunks,] slots, kv, d): per query the sum over its visible slots.

    Slot s of snapshot c is visible to the queries i of chunk c with i >= pos_s + horizon, a
    range [lo, hi): counts are a cumulative sum of +flags at lo and -flags at hi.
    """
    if memory_pos.ndim == 2:  # shared slots: one snapshot for the whole sequence
        flags, memory_pos, memory_chunk = flags[:, :, None], memory_pos[:, None], length
    batch, chunks = memory_pos.shape[:2]
    pos = jnp.minimum(memory_pos.astype(jnp.int32), length)  # no overflow in pos + horizon
    first = (jnp.arange(chunks, dtype=jnp.int32) * memory_chunk)[:, None]
    lo = jnp.maximum(pos + horizon, first)
    hi = jnp.minimum(first + memory_chunk, length)
    used = (pos >= 0) & (lo < hi)
    lo, hi = jnp.where(used, lo, length), jnp.where(used, hi, length)  # row `length` is dropped
    b = jnp.arange(batch)[:, None, None]
    delta = jnp.zeros((3, batch, length + 1, *flags.shape[-2:]), jnp.int32)
    delta = delta.at[:, b, lo].add(flags).at[:, b, hi].add(-flags)
    return jnp.cumsum(delta, axis=2)[:, :, :length]


def restore(out, v, *, window: int, fading_v=None, memory_v=None, memory_pos=None,
            memory_chunk=None):
    """Add to ``out`` (batch, length, heads, head_dim), computed from the finite part of the
    values, the non-finite value entries each query sees (module docstring). Layouts as in
    ``bmojo_attention``; ``out`` itself (same bits) where every value is finite. Its derivative
    is the identity in ``out`` (what is added does not depend on any differentiable input), so
    the derivative passes carry no test and no residual."""
    return _restore(window, memory_chunk, out, v, fading_v, memory_v, memory_pos)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _restore(window, memory_chunk, out, v, fading_v, memory_v, memory_pos):
    batch, length, heads, head_dim = out.shape
    kv_heads = v.shape[2]

    def add_seen(out):
        i = np.arange(length)
        clip = lambda x: np.clip(x, 0, length)  # noqa: E731
        counts = _band_counts(_kinds(v), clip(i - window + 1), clip(i + 1))
        if fading_v is not None:
            counts = counts + _band_counts(_kinds(fading_v), clip(i - 2 * window + 1),
                                           clip(i - window + 1))
        if memory_v is not None:
            horizon = masks.memory_horizon(window, fading_v is not None)
            counts = counts + _memory_counts(_kinds(memory_v), memory_pos, memory_chunk,
                                             horizon, length)
        nan, pos, neg = (c[:, :, :, None, :] for c in counts)  # broadcast over each head group
        extra = jnp.where((nan > 0) | ((pos > 0) & (neg > 0)), jnp.nan,
                          jnp.where(pos > 0, jnp.inf, -jnp.inf)).astype(out.dtype)
        grouped = out.reshape(batch, length, kv_heads, heads // kv_heads, head_dim)
        grouped = jnp.where(nan + pos + neg > 0, grouped + extra, grouped)
        return grouped.reshape(out.shape)

    return if_any_nonfinite(add_seen, out, v, fading_v, memory_v)


@_restore.defjvp
def _restore_jvp(window, memory_chunk, primals, tangents):
    return _restore(window, memory_chunk, *primals), tangents[0]
