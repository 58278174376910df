"""Chunked matmul form of SSD (the state-space-duality algorithm) in pure JAX.

The sequence is cut into chunks of ``chunk`` steps (padded at the end with A = 0, X = 0,
which leaves the state unchanged). With ``a_i`` the cumulative sum of A inside a chunk:

1. intra-chunk ("diagonal" block), an attention-like masked matmul:
   ``Y_i += sum_{j<=i} (C_i . B_j) exp(a_i - a_j) X_j``;
2. each chunk's own contribution to the state at its end:
   ``S_c = sum_j exp(a_last - a_j) outer(X_j, B_j)``;
3. inter-chunk state passing (an associative scan over chunks, starting from the initial state):
   ``H_c = exp(a_last(c)) H_{c-1} + S_c``;
4. off-diagonal contribution of the state entering each chunk: ``Y_i += exp(a_i) H_{c-1} @ C_i``.

A step with ``A = -inf`` is a full reset (``exp(A) = 0``: the state is zeroed, as in the
sequential recurrence). ``a - a`` would be ``-inf + inf = NaN`` across it, so the cumulative sum
skips such steps and a second row counts the resets so far in the chunk (``seg``): a decay
between steps i and j is ``exp(a_i - a_j)`` when no reset lies between them (same ``seg``), else 0.

The core works in the head-major "kernel layout" shared with the Pallas kernels:
X (batch, heads, padded_length, headdim), a (batch, heads, 2, padded_length) holding the
chunk-local cumulative log decay and the reset count, B, C (batch, groups, padded_length, state).

Other non-finite inputs (NaN or inf in X, B, C; NaN or +inf in A): a masked weight of 0 times a
NaN at a later step would leak it backwards, and ``a_i - a_j`` is NaN for every pair after a
NaN in A. So the chunked forms compute with the finite part of the inputs (``finite_inputs``)
and mark with NaN the outputs and final-state entries that the sequential recurrence carries
the NaN or inf into (``nonfinite_seen``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ssm_kernels._layout import pad_axis, repeat_groups, round_up
from ssm_kernels._nonfinite import finite_part, if_any_nonfinite, poison
from ssm_kernels.ops.ssd.reference import compute_dtype


def segsum_decay(a_cum, seg):
    """``L[..., i, j] = exp(a_cum_i - a_cum_j)`` for ``i >= j`` with no reset in between
    (``seg_i == seg_j``), else 0.

    The mask is applied before the exponential (and again after it), so the upper triangle never
    produces inf, and no inf or NaN reaches values or gradients of any order.
    """
    q = a_cum.shape[-1]
    mask = jnp.tril(jnp.ones((q, q), dtype=bool)) & (seg[..., :, None] == seg[..., None, :])
    diff = a_cum[..., :, None] - a_cum[..., None, :]
    return jnp.where(mask, jnp.exp(jnp.where(mask, diff, 0.0)), 0.0)


def to_kernel_layout(X, A, B, C, chunk, dtype):
    """(batch, length, ...) inputs -> padded head-major layout and chunk-local cumsum of A.

    Returns X (b, h, T, p), a (b, h, 2, T), B, C (b, g, T, n) in ``dtype``, T = length rounded
    up to a multiple of ``chunk`` (zero padding: A = 0, X = 0 leave the state unchanged);
    ``a[:, :, 0]`` is the chunk-local cumulative sum of A over steps that are not resets
    (A = -inf), ``a[:, :, 1]`` the number of resets so far in the chunk.
    """
    batch, length, heads = X.shape[:3]
    padded = round_up(length, chunk)
    X, A, B, C = (pad_axis(t.astype(dtype), 1, padded) for t in (X, A, B, C))
    A = jnp.moveaxis(A, 1, 2).reshape(batch, heads, padded // chunk, chunk)
    reset = A == -jnp.inf
    a_cum = jnp.cumsum(jnp.where(reset, jnp.zeros((), dtype), A), axis=-1)
    seg = jnp.cumsum(reset.astype(dtype), axis=-1)
    a = jnp.stack([a_cum, seg], axis=2).reshape(batch, heads, 2, padded)
    head_major = lambda t: jnp.moveaxis(t, 1, 2)
    return head_major(X), a, head_major(B), head_major(C)


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


def chunked_core(X, a, B, C, h0, chunk):
    """Chunked SSD in the kernel layout (see module docstring). Returns (Y (b, h, T, p), final)."""
    batch, heads, padded, headdim = X.shape
    chunks = padded // chunk
    split = lambda t: t.reshape(t.shape[0], t.shape[1], chunks, chunk, *t.shape[3:])  # noqa: E731
    X, a_cum, seg = split(X), split(a[:, :, 0]), split(a[:, :, 1])    # (b, h, c, q, ...)
    B, C = (split(repeat_groups(t, heads, 1)) for t in (B, C))        # (b, h, c, q, n)

    scores = jnp.einsum("bhcin,bhcjn->bhcij", C, B) * segsum_decay(a_cum, seg)
    y_diag = jnp.einsum("bhcij,bhcjp->bhcip", scores, X)

    seg_last = seg[..., -1:]
    to_end = jnp.where(seg == seg_last, jnp.exp(a_cum[..., -1:] - a_cum), 0.0)  # (b, h, c, q)
    chunk_states = jnp.einsum("bhcjn,bhcj,bhcjp->bhcpn", B, to_end, X)
    chunk_log_decay = jnp.where(seg_last[..., 0] == 0, a_cum[..., -1], -jnp.inf)
    entering, final = pass_states(chunk_log_decay, chunk_states, h0)

    from_start = jnp.where(seg == 0, jnp.exp(a_cum), 0.0)
    y_off = jnp.einsum("bhcin,bhcpn,bhci->bhcip", C, entering, from_start)
    return (y_diag + y_off).reshape(batch, heads, padded, headdim), final


def finite_inputs(X, A, B, C):
    """X, A, B, C with their non-finite entries replaced by 0, except A = -inf (a reset)."""
    A = jnp.where(jnp.isnan(A) | (A == jnp.inf), jnp.zeros((), A.dtype), A)
    return finite_part(X), A, finite_part(B), finite_part(C)


def nonfinite_seen(Y, final, X, A, B, C):
    """NaN in Y (b, L, h, p) and final (b, h, p, n) wherever the sequential recurrence meets a
    non-finite input: ``X[t, h, p]`` reaches ``Y[s >= t, h, p]`` and ``final[h, p, :]``;
    ``A[t, h]`` (NaN or +inf) reaches ``Y[s >= t, h, :]`` and ``final[h]``; ``B[t, g, n]``
    reaches ``Y[s >= t, heads of g, :]`` and ``final[heads of g, :, n]``; ``C[t, g, n]`` reaches
    ``Y[t, heads of g, :]``. Runs only when an input holds a NaN or inf."""

    def mark(outputs):
        Y, final = outputs
        to_heads = lambda m, axis: repeat_groups(m, X.shape[2], axis)  # noqa: E731
        bad_x = ~jnp.isfinite(X)                                      # (b, L, h, p)
        bad_a = jnp.isnan(A) | (A == jnp.inf)                         # (b, L, h)
        bad_b = ~jnp.isfinite(B)                                      # (b, L, g, n)
        step_b = to_heads(jnp.any(bad_b, axis=-1), 2)                 # (b, L, h)
        step_c = to_heads(jnp.any(~jnp.isfinite(C), axis=-1), 2)      # (b, L, h)
        carried = bad_x | (bad_a | step_b)[..., None]
        rows = (jnp.cumsum(carried.astype(jnp.int32), axis=1) > 0) | step_c[..., None]
        seen = ((jnp.any(bad_x, axis=1) | jnp.any(bad_a, axis=1)[..., None])[..., :, None]
                | to_heads(jnp.any(bad_b, axis=1), 1)[..., None, :])
        return poison(Y, rows), poison(final, seen)

    return if_any_nonfinite(mark, (Y, final), X, A, B, C)


def ssd_chunked(X, A, B, C, h0, chunk_size):
    """Chunked SSD in ``compute_dtype``. Shapes as ``ssm_kernels.ssd``; returns (Y, final state)."""
    dtype = compute_dtype(X, A, B, C, h0)
    Xk, a, Bk, Ck = to_kernel_layout(*finite_inputs(X, A, B, C), chunk_size, dtype)
    Y, final = chunked_core(Xk, a, Bk, Ck, h0.astype(dtype), chunk_size)
    return nonfinite_seen(from_kernel_layout(Y, X.shape[1]), final, X, A, B, C)
