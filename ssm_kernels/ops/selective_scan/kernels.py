"""Pallas kernels of the selective scan: forward, fused tangent (JVP) and backward (VJP).

Kernel layout (prepared by :mod:`.pallas`): ``G`` groups, ``P`` padded channels per group, ``L``
padded length, ``T`` chunk length, ``nc = L // T`` chunks, ``n`` (padded) states:

- ``u``, ``dt``: (batch, G, P, L) -- a time step is a column (channels, 1)
- ``A``: (batch, G, P, n), the same for every batch element (a batch axis for ``vmap``)
- ``B``, ``C``: (batch, G, L, n) -- a time step is a row (1, n)
- states ``h0``: (batch, G, P, n); chunk-start states ``hc``: (batch, G, nc, P, n)

Grid: (batch, G, P // Dt), one program per channel tile of ``Dt`` channels. Each program keeps its
state (Dt, n) in float32 registers / fast memory and walks the chunks in order (a ``fori_loop``),
each chunk's ``T`` steps unrolled, so that no scratch memory is needed (the Triton lowering has
none) and the backward kernel can hold a chunk's recomputed states as values. The forward kernel
writes the state at every chunk start; the backward kernel walks the chunks in reverse and
recomputes the states inside each chunk from those, as the Mamba CUDA kernel does.

``length`` (static; None when ``L`` is the real length) marks the padded steps ``t >= length``:
their decay is 1 (selected, since ``exp(0 * A)`` is NaN for ``A = -inf``, a full reset).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from ssm_kernels import _compat


def _specs(batch, groups, P, L, n, nc, Dt):
    """BlockSpecs of the kernel-layout operands; leading (batch, group) axes squeezed."""
    return {
        "seq": pl.BlockSpec((None, None, Dt, L), lambda b, g, i: (b, g, i, 0)),
        "A": pl.BlockSpec((None, None, Dt, n), lambda b, g, i: (b, g, i, 0)),
        "rows": pl.BlockSpec((None, None, L, n), lambda b, g, i: (b, g, 0, 0)),
        "state": pl.BlockSpec((None, None, Dt, n), lambda b, g, i: (b, g, i, 0)),
        "chunks": pl.BlockSpec((None, None, nc, Dt, n), lambda b, g, i: (b, g, 0, i, 0)),
        "tile_rows": pl.BlockSpec((None, None, None, L, n), lambda b, g, i: (b, g, i, 0, 0)),
    }


def _col(ref, t):
    return ref[:, pl.ds(t, 1)].astype(jnp.float32)  # (Dt, 1)


def _row(ref, t):
    return ref[pl.ds(t, 1), :].astype(jnp.float32)  # (1, n)


def _real(x, t, length, padded_value):
    """``x`` at a real step, ``padded_value`` at a padded one (t >= length)."""
    return x if length is None else jnp.where(t < length, x, padded_value)


def _forward_kernel(u_ref, dt_ref, A_ref, B_ref, C_ref, h0_ref, y_ref, hlast_ref, hc_ref, *, T, nc,
                    length):
    A = A_ref[...].astype(jnp.float32)

    def chunk(c, h):
        hc_ref[c] = h.astype(hc_ref.dtype)
        for s in range(T):
            t = c * T + s
            dt, u = _col(dt_ref, t), _col(u_ref, t)
            h = _real(jnp.exp(dt * A), t, length, 1.0) * h + (dt * u) * _row(B_ref, t)
            y_ref[:, pl.ds(t, 1)] = jnp.sum(h * _row(C_ref, t), axis=1, keepdims=True).astype(y_ref.dtype)
        return h

    h = jax.lax.fori_loop(0, nc, chunk, h0_ref[...].astype(jnp.float32))
    hlast_ref[...] = h.astype(hlast_ref.dtype)


def _tangent_kernel(u_ref, dt_ref, A_ref, B_ref, C_ref, hc_ref,
                    du_ref, ddt_ref, dA_ref, dB_ref, dC_ref, dh0_ref,
                    dy_ref, dhlast_ref, dhc_ref, *, T, nc, length):
    """h and its tangent dh advance together; dh has the same decay plus a forcing term."""
    A, dA = A_ref[...].astype(jnp.float32), dA_ref[...].astype(jnp.float32)

    def chunk(c, dh):
        dhc_ref[c] = dh.astype(dhc_ref.dtype)
        h = hc_ref[c].astype(jnp.float32)
        for s in range(T):
            t = c * T + s
            dt, u, ddt, du = _col(dt_ref, t), _col(u_ref, t), _col(ddt_ref, t), _col(du_ref, t)
            B, dB = _row(B_ref, t), _row(dB_ref, t)
            a = _real(jnp.exp(dt * A), t, length, 1.0)
            da = _real(a * (ddt * A + dt * dA), t, length, 0.0)
            h_new = a * h + (dt * u) * B
            dh = a * dh + da * h + (ddt * u + dt * du) * B + (dt * u) * dB
            dy = jnp.sum(_row(dC_ref, t) * h_new + _row(C_ref, t) * dh, axis=1, keepdims=True)
            dy_ref[:, pl.ds(t, 1)] = dy.astype(dy_ref.dtype)
            h = h_new
        return dh

    dh = jax.lax.fori_loop(0, nc, chunk, dh0_ref[...].astype(jnp.float32))
    dhlast_ref[...] = dh.astype(dhlast_ref.dtype)


def _backward_kernel(u_ref, dt_ref, A_ref, B_ref, C_ref, hc_ref, gy_ref, ghlast_ref, ghc_ref,
                     gu_ref, gdt_ref, gA_ref, gB_ref, gC_ref, gh0_ref, *, T, nc, length):
    """Reverse scan of the adjoint: lam_t = mu + gy_t C_t, mu <- exp(dt_t A) lam_t."""
    A = A_ref[...].astype(jnp.float32)

    def chunk(i, carry):
        mu, gA = carry
        c = nc - 1 - i
        h = hc_ref[c].astype(jnp.float32)
        steps = []
        for s in range(T):  # recompute the chunk's states from its saved start state
            t = c * T + s
            dt, u, B = _col(dt_ref, t), _col(u_ref, t), _row(B_ref, t)
            a = _real(jnp.exp(dt * A), t, length, 1.0)
            h_new = a * h + (dt * u) * B
            steps.append((t, dt, u, B, a, h, h_new))
            h = h_new
        for t, dt, u, B, a, h_prev, h in reversed(steps):
            gy = _col(gy_ref, t)
            lam = mu + gy * _row(C_ref, t)
            lam_B = jnp.sum(lam * B, axis=1, keepdims=True)
            g_decay = lam * h_prev * a  # cotangent of (dt A) through the decay
            gu_ref[:, pl.ds(t, 1)] = (dt * lam_B).astype(gu_ref.dtype)
            gdt = u * lam_B + jnp.sum(g_decay * A, axis=1, keepdims=True)
            gdt_ref[:, pl.ds(t, 1)] = gdt.astype(gdt_ref.dtype)
            gB_ref[pl.ds(t, 1), :] = jnp.sum(lam * (dt * u), axis=0, keepdims=True).astype(gB_ref.dtype)
            gC_ref[pl.ds(t, 1), :] = jnp.sum(gy * h, axis=0, keepdims=True).astype(gC_ref.dtype)
            gA = gA + g_decay * dt
            mu = lam * a
        return mu + ghc_ref[c].astype(jnp.float32), gA

    mu0 = ghlast_ref[...].astype(jnp.float32)
    mu, gA = jax.lax.fori_loop(0, nc, chunk, (mu0, jnp.zeros_like(mu0)))
    gh0_ref[...] = mu.astype(gh0_ref.dtype)
    gA_ref[...] = gA.astype(gA_ref.dtype)


def _call(kernel, name, in_specs, out_specs, out_shape, grid, interpret):
    return _compat.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs,
                               out_shape=out_shape, interpret=interpret, num_stages=1,
                               name=f"selective_scan_{name}")


def _setup(u, A, T, Dt):
    """Sizes, BlockSpecs and the grid (batch, G, P // Dt) of the kernel layout."""
    batch, groups, P, L = u.shape
    n, nc = A.shape[-1], L // T
    return batch, groups, P, L, n, nc, _specs(batch, groups, P, L, n, nc, Dt), (batch, groups, P // Dt)


def forward(u, dt, A, B, C, h0, *, T, Dt, interpret, length=None):
    """Returns y (batch, G, P, L), h_last (batch, G, P, n), chunk-start states (batch, G, nc, P, n)."""
    batch, groups, P, L, n, nc, sp, grid = _setup(u, A, T, Dt)
    f = u.dtype
    return _call(
        functools.partial(_forward_kernel, T=T, nc=nc, length=length), "forward",
        [sp["seq"], sp["seq"], sp["A"], sp["rows"], sp["rows"], sp["state"]],
        [sp["seq"], sp["state"], sp["chunks"]],
        [jax.ShapeDtypeStruct(u.shape, f), jax.ShapeDtypeStruct(h0.shape, f),
         jax.ShapeDtypeStruct((batch, groups, nc, P, n), f)], grid, interpret,
    )(u, dt, A, B, C, h0)


def tangent(operands, residuals, tangents, *, T, Dt, interpret, length=None):
    """Tangents (dy, dh_last, d chunk-start states) of :func:`forward` along the tangents
    (du, ddt, dA, dB, dC, dh0); the residual is the chunk-start states."""
    (u, dt, A, B, C, _), (hc,) = operands, residuals
    batch, groups, P, L, n, nc, sp, grid = _setup(u, A, T, Dt)
    f = u.dtype
    primal_specs = [sp["seq"], sp["seq"], sp["A"], sp["rows"], sp["rows"], sp["chunks"]]
    tangent_specs = [sp["seq"], sp["seq"], sp["A"], sp["rows"], sp["rows"], sp["state"]]
    return _call(
        functools.partial(_tangent_kernel, T=T, nc=nc, length=length), "tangent",
        primal_specs + tangent_specs, [sp["seq"], sp["state"], sp["chunks"]],
        [jax.ShapeDtypeStruct(u.shape, f), jax.ShapeDtypeStruct(tangents[-1].shape, f),
         jax.ShapeDtypeStruct(hc.shape, f)], grid, interpret,
    )(u, dt, A, B, C, hc, *tangents)


def backward(operands, residuals, cotangents, *, T, Dt, interpret, length=None):
    """Cotangents of (u, dt, A, B, C, h0) given those of (y, h_last, chunk-start states).

    The kernel writes ``gB``/``gC`` per channel tile (batch, G, P // Dt, L, n); they are summed here.
    """
    (u, dt, A, B, C, h0), (hc,) = operands, residuals
    batch, groups, P, L, n, nc, sp, grid = _setup(u, A, T, Dt)
    f = u.dtype
    tiles = jax.ShapeDtypeStruct((batch, groups, P // Dt, L, n), f)
    gu, gdt, gA, gB, gC, gh0 = _call(
        functools.partial(_backward_kernel, T=T, nc=nc, length=length), "backward",
        [sp["seq"], sp["seq"], sp["A"], sp["rows"], sp["rows"], sp["chunks"],
         sp["seq"], sp["state"], sp["chunks"]],
        [sp["seq"], sp["seq"], sp["state"], sp["tile_rows"], sp["tile_rows"], sp["state"]],
        [jax.ShapeDtypeStruct(u.shape, f), jax.ShapeDtypeStruct(u.shape, f),
         jax.ShapeDtypeStruct(A.shape, f), tiles, tiles, jax.ShapeDtypeStruct(h0.shape, f)],
        grid, interpret,
    )(u, dt, A, B, C, hc, *cotangents)
    return gu, gdt, gA, jnp.sum(gB, axis=2), jnp.sum(gC, axis=2), gh0
