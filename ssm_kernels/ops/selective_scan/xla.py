"""Parallel XLA forms of the selective-scan recurrence: associative scan and chunked scan.

Same core arguments and results as :func:`.reference.scan_reference`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ssm_kernels._layout import pad_axis, repeat_groups, round_up

DEFAULT_CHUNK = 64


def _combine(left, right):
    """Compose two affine maps h -> a h + b (left first): (a_l a_r, a_r b_l + b_r)."""
    a_l, b_l = left
    a_r, b_r = right
    return a_l * a_r, a_r * b_l + b_r


def scan_associative(u, dt, A, B, C, h0, chunk_size=None):
    """``lax.associative_scan`` over the length axis of the pairs (exp(dt A), dt B u)."""
    del chunk_size
    dim = u.shape[1]
    a = jnp.exp(dt[:, :, :, None] * A[None, :, None, :])  # (batch, dim, length, state)
    b = (dt * u)[..., None] * jnp.swapaxes(repeat_groups(B, dim, 1), -1, -2)
    b = b.at[:, :, 0].add(a[:, :, 0] * h0)  # fold the initial state into the first step
    _, h = jax.lax.associative_scan(_combine, (a, b), axis=2)
    y = jnp.sum(h * jnp.swapaxes(repeat_groups(C, dim, 1), -1, -2), axis=-1)
    return y, h[:, :, -1]


def scan_chunked(u, dt, A, B, C, h0, chunk_size: int | None = None):
    """Chunked form: a scan inside every chunk (vectorised over chunks) from a zero state, a
    ``lax.scan`` over chunks carrying the state, then the correction
    ``y_t += sum_n C_t[n] exp(sum_{s<=t in chunk} dt_s A[n]) h_start[n]``.

    The length is padded to a multiple of ``chunk_size`` with dt = 0 (decay 1, no input), so the
    padding leaves the state unchanged; where ``A`` has a -inf entry (a full reset) the decay
    of the padded steps is selected to be 1, since ``exp(0 * -inf)`` is NaN.
    """
    batch, dim, length = u.shape
    T = min(DEFAULT_CHUNK if chunk_size is None else chunk_size, length)
    padded = round_up(length, T)
    nc = padded // T
    u, dt, B, C = (pad_axis(x, -1, padded) for x in (u, dt, B, C))

    def chunks(x):  # (..., nc*T) -> (T, ..., nc)
        return jnp.moveaxis(x.reshape(*x.shape[:-1], nc, T), -1, 0)

    def per_channel(M):  # (batch, groups, state, nc) -> (batch, dim, nc, state)
        return repeat_groups(jnp.swapaxes(M, -1, -2), dim, 1)

    uc, dtc, Bc, Cc = chunks(u), chunks(dt), chunks(B), chunks(C)

    def intra(carry, inputs, mask_padding):
        h, logdecay = carry  # (batch, dim, nc, state) each
        u_t, dt_t, B_t, C_t, real_t = inputs
        B_t, C_t = per_channel(B_t), per_channel(C_t)
        step = dt_t[..., None] * A[None, :, None, :]
        if mask_padding:
            step = jnp.where(real_t, step, 0.0)
        h = jnp.exp(step) * h + (dt_t * u_t)[..., None] * B_t
        logdecay = logdecay + step
        y_t = jnp.sum(C_t * h, axis=-1)
        corr_t = C_t * jnp.exp(logdecay)  # weight of the chunk's start state in y_t
        return (h, logdecay), (y_t, corr_t)

    def intra_scan(mask_padding):
        zeros = jnp.zeros((batch, dim, nc, A.shape[-1]), u.dtype)
        real = chunks(jnp.arange(padded) < length)[..., None]  # (T, nc, 1)
        return jax.lax.scan(functools.partial(intra, mask_padding=mask_padding),
                            (zeros, zeros), (uc, dtc, Bc, Cc, real))

    if padded > length:
        (h_end, logdecay_end), (y_local, corr) = jax.lax.cond(
            jnp.any(A == -jnp.inf), lambda: intra_scan(True), lambda: intra_scan(False))
    else:
        (h_end, logdecay_end), (y_local, corr) = intra_scan(False)

    def inter(h, inputs):
        h_local_end, total = inputs
        return jnp.exp(total) * h + h_local_end, h

    h_last, h_start = jax.lax.scan(
        inter, h0, (jnp.moveaxis(h_end, 2, 0), jnp.moveaxis(logdecay_end, 2, 0)))
    h_start = jnp.moveaxis(h_start, 0, 2)  # (batch, dim, nc, state)
    y = y_local + jnp.sum(corr * h_start[None], axis=-1)  # (T, batch, dim, nc)
    y = jnp.moveaxis(y, 0, -1).reshape(batch, dim, padded)[..., :length]
    return y, h_last
