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

The core works in the head-major "kernel layout" shared with the Pallas kernels:
X (batch, heads, padded_length, headdim), a (batch, heads, padded_length) chunk-local cumulative
log decay, B, C (batch, groups, padded_length, state).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ssm_kernels.duality.reference import compute_dtype


def segsum_decay(a_cum):
    """``L[..., i, j] = exp(a_cum_i - a_cum_j)`` for ``i >= j``, else 0.

    The mask is applied before the exponential (and again after it), so the upper triangle never
    produces inf, and no inf or NaN reaches values or gradients of any order.
    """
    q = a_cum.shape[-1]
    causal = jnp.tril(jnp.ones((q, q), dtype=bool))
    diff = a_cum[..., :, None] - a_cum[..., None, :]
    return jnp.where(causal, jnp.exp(jnp.where(causal, diff, 0.0)), 0.0)


def to_kernel_layout(X, A, B, C, block_len, dtype):
    """(batch, length, ...) inputs -> padded head-major layout and chunk-local cumsum of A.

    Returns X (b, h, T, p), a (b, h, T), B, C (b, g, T, n) in ``dtype``, T = length rounded up
    to a multiple of ``block_len`` (zero padding: A = 0, X = 0 leave the state unchanged).
    """
    batch, length = X.shape[:2]
    pad = -length % block_len
    prep = lambda t: jnp.pad(t.astype(dtype), [(0, 0), (0, pad)] + [(0, 0)] * (t.ndim - 2))
    X, A, B, C = (prep(t) for t in (X, A, B, C))
    heads, padded = X.shape[2], X.shape[1]
    A = jnp.moveaxis(A, 1, 2).reshape(batch, heads, padded // block_len, block_len)
    a_cum = jnp.cumsum(A, axis=-1).reshape(batch, heads, padded)
    head_major = lambda t: jnp.moveaxis(t, 1, 2)
    return head_major(X), a_cum, head_major(B), head_major(C)


def from_kernel_layout(Y, length):
    """(b, h, T, p) -> (b, length, h, p)."""
    return jnp.moveaxis(Y, 2, 1)[:, :length]


def pass_states(chunk_log_decay, chunk_states, initial_states):
    """States entering each chunk and the final state.

    chunk_log_decay (b, h, chunks); chunk_states (b, h, chunks, p, n); initial_states (b, h, p, n).
    Returns (entering (b, h, chunks, p, n), final (b, h, p, n)).
    """

    def combine(left, right):
        (a1, s1), (a2, s2) = left, right
        return a1 + a2, jnp.exp(a2)[..., None, None] * s1 + s2

    log_decay, states = jax.lax.associative_scan(combine, (chunk_log_decay, chunk_states), axis=2)
    after = jnp.exp(log_decay)[..., None, None] * initial_states[:, :, None] + states
    entering = jnp.concatenate([initial_states[:, :, None], after[:, :, :-1]], axis=2)
    return entering, after[:, :, -1]


def chunked_core(X, a_cum, B, C, initial_states, block_len):
    """Chunked SSD in the kernel layout (see module docstring). Returns (Y (b, h, T, p), final)."""
    batch, heads, padded, headdim = X.shape
    chunks = padded // block_len
    per_group = heads // B.shape[1]
    split = lambda t: t.reshape(t.shape[0], t.shape[1], chunks, block_len, *t.shape[3:])
    X, a_cum = split(X), split(a_cum)                                  # (b, h, c, q, ...)
    B, C = (split(jnp.repeat(t, per_group, axis=1)) for t in (B, C))   # (b, h, c, q, n)

    scores = jnp.einsum("bhcin,bhcjn->bhcij", C, B) * segsum_decay(a_cum)
    y_diag = jnp.einsum("bhcij,bhcjp->bhcip", scores, X)

    to_end = jnp.exp(a_cum[..., -1:] - a_cum)                          # (b, h, c, q)
    chunk_states = jnp.einsum("bhcjn,bhcj,bhcjp->bhcpn", B, to_end, X)
    entering, final = pass_states(a_cum[..., -1], chunk_states, initial_states)

    y_off = jnp.einsum("bhcin,bhcpn,bhci->bhcip", C, entering, jnp.exp(a_cum))
    return (y_diag + y_off).reshape(batch, heads, padded, headdim), final


def ssd_chunked(X, A, B, C, block_len, initial_states):
    """Chunked SSD in ``compute_dtype``. Shapes as ``ssm_kernels.ssd``; returns (Y, final state)."""
    dtype = compute_dtype(X, A, B, C, initial_states)
    Xk, a_cum, Bk, Ck = to_kernel_layout(X, A, B, C, block_len, dtype)
    Y, final = chunked_core(Xk, a_cum, Bk, Ck, initial_states.astype(dtype), block_len)
    return from_kernel_layout(Y, X.shape[1]), final
