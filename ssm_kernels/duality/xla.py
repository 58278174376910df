"""Chunked matmul form of SSD (the state-space-duality algorithm) in pure JAX.

The sequence is cut into chunks of ``block_len`` steps (padded at the end with A = 0, X = 0,
which leaves the state unchanged). With ``a_i`` the cumulative sum of A inside a chunk:

1. intra-chunk ("diagonal" block), an attention-like masked matmul:
   ``Y_i += sum_{j<=i} (C_i . B_j) exp(a_i - a_j) X_j``;
2. each chunk's own contribution to the state at its end:
   ``S_c = sum_j exp(a_last - a_j) outer(X_j, B_j)``;
3. inter-chunk state passing (an associative scan over chunks, starting from the initial state):
   ``H_c = exp(a_last(c)) H_{c-1} + S_c``;
4. off-diagonal contribution of the state entering each chunk: ``Y_i += exp(a_i) H_{c-1} @ C_i``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ssm_kernels.duality.reference import compute_dtype, expand_groups


def segsum_decay(a_cum):
    """``L[..., i, j] = exp(a_cum_i - a_cum_j)`` for ``i >= j``, else 0.

    The mask is applied before the exponential (and again after it), so the upper triangle never
    produces inf, and no inf or NaN reaches values or gradients of any order.
    """
    q = a_cum.shape[-1]
    causal = jnp.tril(jnp.ones((q, q), dtype=bool))
    diff = a_cum[..., :, None] - a_cum[..., None, :]
    return jnp.where(causal, jnp.exp(jnp.where(causal, diff, 0.0)), 0.0)


def pad_to_chunks(X, A, B, C, block_len):
    """Pad the length axis (axis 1) of every input to a multiple of ``block_len`` with zeros."""
    length = X.shape[1]
    pad = -length % block_len
    if pad == 0:
        return X, A, B, C
    widths = lambda t: [(0, 0), (0, pad)] + [(0, 0)] * (t.ndim - 2)
    return tuple(jnp.pad(t, widths(t)) for t in (X, A, B, C))


def pass_states(chunk_log_decay, chunk_states, initial_states):
    """States entering each chunk and the final state.

    chunk_log_decay (batch, chunks, heads); chunk_states (batch, chunks, heads, headdim, state);
    initial_states (batch, heads, headdim, state). Returns (entering (batch, chunks, heads,
    headdim, state), final (batch, heads, headdim, state)).
    """

    def combine(left, right):
        (a1, s1), (a2, s2) = left, right
        return a1 + a2, jnp.exp(a2)[..., None, None] * s1 + s2

    log_decay, states = jax.lax.associative_scan(combine, (chunk_log_decay, chunk_states), axis=1)
    after = jnp.exp(log_decay)[..., None, None] * initial_states[:, None] + states
    entering = jnp.concatenate([initial_states[:, None], after[:, :-1]], axis=1)
    return entering, after[:, -1]


def ssd_chunked(X, A, B, C, block_len, initial_states):
    """Chunked SSD in ``compute_dtype``. Shapes as ``ssm_kernels.ssd``; returns (Y, final state)."""
    batch, length, heads, headdim = X.shape
    dtype = compute_dtype(X, A, B, C, initial_states)
    cast = lambda t: t.astype(dtype)
    X, A = cast(X), cast(A)
    B, C = expand_groups(cast(B), heads), expand_groups(cast(C), heads)
    X, A, B, C = pad_to_chunks(X, A, B, C, block_len)
    chunks = X.shape[1] // block_len

    split = lambda t: t.reshape(batch, chunks, block_len, *t.shape[2:])
    X, A, B, C = split(X), split(A), split(B), split(C)        # (b, c, q, h, ...)
    a_cum = jnp.cumsum(jnp.moveaxis(A, 3, 2), axis=-1)          # (b, c, h, q)

    decay = segsum_decay(a_cum)                                 # (b, c, h, q, q)
    scores = jnp.einsum("bcihn,bcjhn->bchij", C, B) * decay
    y_diag = jnp.einsum("bchij,bcjhp->bcihp", scores, X)

    to_end = jnp.exp(a_cum[..., -1:] - a_cum)                   # (b, c, h, q)
    chunk_states = jnp.einsum("bcjhn,bchj,bcjhp->bchpn", B, to_end, X)
    entering, final = pass_states(a_cum[..., -1], chunk_states, cast(initial_states))

    y_off = jnp.einsum("bcihn,bchpn,bchi->bcihp", C, entering, jnp.exp(a_cum))
    Y = (y_diag + y_off).reshape(batch, chunks * block_len, heads, headdim)[:, :length]
    return Y, final
