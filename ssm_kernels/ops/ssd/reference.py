"""Reference of the SSD recurrence: a ``lax.scan`` over time, one step at a time.

For each batch element and head (``h`` is the (headdim, state) state matrix)::

    h_t = exp(A_t) * h_{t-1} + outer(X_t, B_t)        Y_t = h_t @ C_t
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ssm_kernels._layout import repeat_groups


def compute_dtype(*arrays):
    """float32, or float64 when an input is float64 (bf16/f16 inputs are computed in float32)."""
    return jnp.result_type(jnp.float32, *(t.dtype for t in arrays))


def ssd_reference(X, A, B, C, h0, chunk_size=None):
    """``lax.scan`` over time in ``compute_dtype`` (``chunk_size`` is ignored). Returns (Y, final).

    X (batch, length, heads, headdim); A (batch, length, heads); B, C (batch, length, groups,
    state); h0 (batch, heads, headdim, state).
    """
    del chunk_size
    heads = X.shape[2]
    dtype = compute_dtype(X, A, B, C, h0)
    cast = lambda t: t.astype(dtype)  # noqa: E731
    B, C = repeat_groups(cast(B), heads, 2), repeat_groups(cast(C), heads, 2)

    def step(h, inputs):
        x, a, b, c = inputs  # (batch, heads, headdim), (batch, heads), (batch, heads, state) x2
        h = jnp.exp(a)[..., None, None] * h + x[..., :, None] * b[..., None, :]
        return h, jnp.einsum("bhpn,bhn->bhp", h, c)

    time_major = [jnp.moveaxis(t, 1, 0) for t in (cast(X), cast(A), B, C)]
    final, Y = jax.lax.scan(step, cast(h0), time_major)
    return jnp.moveaxis(Y, 0, 1), final
