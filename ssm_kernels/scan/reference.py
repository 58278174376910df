"""Sequential ``lax.scan`` reference of the selective-scan recurrence (one step per position).

All functions here take the *core* arguments prepared by :mod:`ssm_kernels.scan.api`:

- ``u``, ``dt``: (batch, dim, length), already in the compute dtype, ``dt`` after bias/softplus
- ``A``: (dim, state)
- ``B``, ``C``: grouped (batch, groups, state, length); channel d uses group d // (dim // groups)
- ``h0``: (batch, dim, state)

and return ``(y, h_last)`` with ``y[b, d, t] = sum_n C_t[n] h_t[d, n]`` (no D term, no gate) and
``h_t = exp(dt_t A) * h_{t-1} + dt_t B_t u_t``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def expand_groups(M, dim: int):
    """(batch, groups, state, length) -> (batch, dim, state, length), channel d reading group d // (dim // groups)."""
    batch, groups, state, length = M.shape
    M = jnp.broadcast_to(M[:, :, None], (batch, groups, dim // groups, state, length))
    return M.reshape(batch, dim, state, length)


def scan_sequential(u, dt, A, B, C, h0):
    """Reference: one ``lax.scan`` step per position. Returns y (batch, dim, length), h_last (batch, dim, state)."""
    dim = u.shape[1]
    Bd = jnp.moveaxis(expand_groups(B, dim), -1, 0)  # (length, batch, dim, state)
    Cd = jnp.moveaxis(expand_groups(C, dim), -1, 0)
    ut = jnp.moveaxis(u, -1, 0)  # (length, batch, dim)
    dtt = jnp.moveaxis(dt, -1, 0)

    def step(h, inputs):
        u_t, dt_t, B_t, C_t = inputs
        h = jnp.exp(dt_t[..., None] * A) * h + (dt_t * u_t)[..., None] * B_t
        return h, jnp.sum(C_t * h, axis=-1)

    h_last, y = jax.lax.scan(step, h0, (ut, dtt, Bd, Cd))
    return jnp.moveaxis(y, 0, -1), h_last
