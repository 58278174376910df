"""Reference of the selective-scan recurrence: one ``lax.scan`` step per position.

All forms of the op take the *core* arguments prepared by :mod:`.api`:

- ``u``, ``dt``: (batch, dim, length), in the compute dtype, ``dt`` after bias and softplus
- ``A``: (dim, state)
- ``B``, ``C``: grouped (batch, groups, state, length); channel d uses group d // (dim // groups)
- ``h0``: (batch, dim, state)

and return ``(y, h_last)`` with ``h_t = exp(dt_t A) * h_{t-1} + dt_t B_t u_t`` and
``y[b, d, t] = sum_n C_t[n] h_t[d, n]`` (no D term, no gate).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ssm_kernels._layout import repeat_groups


def scan_steps(u, dt, A, B, C, h0, *, chunk: int, length: int | None = None):
    """The recurrence step by step, in chunks of ``chunk`` steps (an outer ``lax.scan``).

    ``A`` may carry a leading batch axis, (batch, dim, state). ``length`` (static): steps from
    ``length`` on are padding, with decay 1 (selected: ``exp(0 * -inf)`` is NaN).
    Returns y (batch, dim, L), h_last (batch, dim, state) and the state entering every chunk,
    grouped as the kernels keep it: (batch, G, chunks, dim // G, state), G = lcm of B's and
    C's groups.
    """
    batch, dim, L = u.shape
    groups, n = math.lcm(B.shape[1], C.shape[1]), B.shape[2]
    B, C = repeat_groups(B, groups, 1), repeat_groups(C, groups, 1)
    nc = L // chunk
    grouped = lambda x: x.reshape(*x.shape[:-2], groups, dim // groups, x.shape[-1])  # noqa: E731
    steps = lambda x: jnp.moveaxis(grouped(x), -1, 0).reshape(nc, chunk, batch, groups, -1)  # noqa: E731
    rows = lambda M: jnp.moveaxis(M, -1, 0).reshape(nc, chunk, batch, groups, 1, n)  # noqa: E731
    real = (jnp.arange(L) < (L if length is None else length)).reshape(nc, chunk)
    A = grouped(A)

    def step(h, inputs):
        u_t, dt_t, B_t, C_t, real_t = inputs
        decay = jnp.exp(dt_t[..., None] * A)
        if length is not None:
            decay = jnp.where(real_t, decay, 1.0)
        h = decay * h + (dt_t * u_t)[..., None] * B_t
        return h, jnp.sum(C_t * h, axis=-1)

    def walk_chunk(h, inputs):
        h_end, y = jax.lax.scan(step, h, inputs)
        return h_end, (y, h)

    h_last, (y, hc) = jax.lax.scan(walk_chunk, grouped(h0),
                                   (steps(u), steps(dt), rows(B), rows(C), real))
    y = jnp.moveaxis(y.reshape(L, batch, groups, -1), 0, -1).reshape(batch, dim, L)
    return y, h_last.reshape(batch, dim, n), jnp.moveaxis(hc, 0, 2)


def scan_reference(u, dt, A, B, C, h0, chunk_size=None):
    """The recurrence one step per position (``chunk_size`` is ignored). Returns (y, h_last)."""
    del chunk_size
    return scan_steps(u, dt, A, B, C, h0, chunk=u.shape[-1])[:2]
