"""Sequential (``lax.scan``) reference of the SSD recurrence, one time step at a time.

For each batch element and head (``h`` is the (headdim, state) state matrix)::

    h_t = exp(A_t) * h_{t-1} + outer(X_t, B_t)        Y_t = h_t @ C_t
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def expand_groups(M, heads: int):
    """(batch, length, groups, state) -> (batch, length, heads, state); head h uses group h // (heads // groups)."""
    groups = M.shape[2]
    return M if groups == heads else jnp.repeat(M, heads // groups, axis=2)


def compute_dtype(*arrays):
    """float32, or float64 when an input is float64 (bf16/f16 inputs are computed in float32)."""
    return jnp.result_type(jnp.float32, *(t.dtype for t in arrays))


def ssd_sequential(X, A, B, C, block_len, initial_states):
    """``lax.scan`` over time in ``compute_dtype``; ``block_len`` is ignored. Returns (Y, final state).

    X (batch, length, heads, headdim); A (batch, length, heads); B, C (batch, length, groups, state);
    initial_states (batch, heads, headdim, state).
    """
    del block_len
    heads = X.shape[2]
    dtype = compute_dtype(X, A, B, C, initial_states)
    cast = lambda t: t.astype(dtype)
    B, C = expand_groups(cast(B), heads), expand_groups(cast(C), heads)

    def step(h, inputs):
        x, a, b, c = inputs  # (batch, heads, headdim), (batch, heads), (batch, heads, state) x2
        h = jnp.exp(a)[..., None, None] * h + x[..., :, None] * b[..., None, :]
        return h, jnp.einsum("bhpn,bhn->bhp", h, c)

    time_major = [jnp.moveaxis(t, 1, 0) for t in (cast(X), cast(A), B, C)]
    final, Y = jax.lax.scan(step, cast(initial_states), time_major)
    return jnp.moveaxis(Y, 0, 1), final
