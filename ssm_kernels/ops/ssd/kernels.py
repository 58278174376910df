"""Pallas kernels of SSD in the kernel layout (see ``xla.py``): forward, tangent and backward.

One program per (batch, head, tile of ``rows`` headdim rows); it walks the chunks of its
sequence in order, carrying its rows of the (headdim, state) float32 state, and does the
intra-chunk work as matmuls on (chunk x state), (chunk x headdim) and (chunk x chunk) tiles. Per chunk, with ``a`` the chunk-local
cumulative log decay, ``L_ij = exp(a_i - a_j) [i >= j]``, ``e = exp(a)``, ``w = exp(a_last - a)``
and ``S`` the state entering the chunk:

    Y     = ((C B^T) * L) X + e * (C S^T)
    S_out = exp(a_last) S + (w * X)^T B

The operand ``a`` (b, h, 2, T) also holds the number of resets (A = -inf) so far in the chunk,
``seg``: a factor that spans a reset (``L_ij`` with ``seg_i != seg_j``, ``e_i`` with
``seg_i > 0``, ``w_j`` and ``exp(a_last)`` with a later reset) is 0, selected, never computed.

``forward`` computes (Y, final state) and optionally the entering state of every chunk; ``tangent``
computes the JVP (dY, dS_final), linear in the tangents, sweeping forward with (S, dS);
``backward`` computes the VJP with a reverse sweep carrying the state cotangent, reading the
chunk-entering states saved by a forward sweep.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from ssm_kernels import _compat
from ssm_kernels._compat import dot as _mm
from ssm_kernels._layout import sum_groups


def _chunk(ref, c, q):
    """Rows [c*q, (c+1)*q) of a (T, ...) ref."""
    return ref[pl.ds(c * q, q)]


def _last(v):
    """v[-1] of a (q,) vector, as a masked sum (no value slicing inside kernels)."""
    idx = jax.lax.broadcasted_iota(jnp.int32, v.shape, 0)
    return jnp.sum(jnp.where(idx == v.shape[0] - 1, v, 0.0))


def _decay(a, seg):
    """(L, e, w, a_last, chunk decay, mask) of a chunk's cumulative log decay ``a`` (q,) and
    reset count ``seg`` (q,); masked before exp, factors that span a reset are 0."""
    q = a.shape[0]
    row = jax.lax.broadcasted_iota(jnp.int32, (q, q), 0)
    col = jax.lax.broadcasted_iota(jnp.int32, (q, q), 1)
    mask = (row >= col) & (seg[:, None] == seg[None, :])
    diff = a[:, None] - a[None, :]
    L = jnp.where(mask, jnp.exp(jnp.where(mask, diff, 0.0)), 0.0)
    a_last, seg_last = _last(a), _last(seg)
    e = jnp.where(seg == 0, jnp.exp(a), 0.0)
    w = jnp.where(seg == seg_last, jnp.exp(a_last - a), 0.0)
    decay = jnp.where(seg_last == 0, jnp.exp(a_last), 0.0)
    return L, e, w, a_last, decay, mask


def _specs(heads, groups, padded, rows, state, chunks):
    """BlockSpecs over the grid (batch, heads, headdim tiles). Rows of the state are independent,
    so a program owns ``rows`` rows of X, Y and the state; B, C, A are shared."""
    per_group = heads // groups
    return dict(
        x=pl.BlockSpec((None, None, padded, rows), lambda b, h, t: (b, h, 0, t)),
        a=pl.BlockSpec((None, None, padded), lambda b, h, t: (b, h, 0)),
        bc=pl.BlockSpec((None, None, padded, state),
                             lambda b, h, t: (b, h // per_group, 0, 0)),
        bc_heads=pl.BlockSpec((None, None, padded, state), lambda b, h, t: (b, h, 0, 0)),
        h=pl.BlockSpec((None, None, rows, state), lambda b, h, t: (b, h, t, 0)),
        states=pl.BlockSpec((None, None, chunks, rows, state),
                                 lambda b, h, t: (b, h, 0, t, 0)),
    )


def _forward_kernel(x_ref, a_ref, s_ref, b_ref, c_ref, h0_ref, out_ref, final_ref, *, q,
                    emit_states):
    chunks = x_ref.shape[0] // q

    def body(c, S):
        x, a, seg, B, C = (_chunk(r, c, q) for r in (x_ref, a_ref, s_ref, b_ref, c_ref))
        L, e, w, _, decay, _ = _decay(a, seg)
        if emit_states:
            out_ref[c] = S
        else:
            y = _mm(_mm(C, B, "nt") * L, x) + e[:, None] * _mm(C, S, "nt")
            out_ref[pl.ds(c * q, q)] = y
        return decay * S + _mm(w[:, None] * x, B, "tn")

    final_ref[...] = jax.lax.fori_loop(0, chunks, body, h0_ref[...])


def _tangent_kernel(x_ref, a_ref, s_ref, b_ref, c_ref, h0_ref, dx_ref, da_ref, db_ref, dc_ref,
                    dh0_ref, dy_ref, dfinal_ref, *, q):
    chunks = x_ref.shape[0] // q

    def body(c, carry):
        S, dS = carry
        x, a, seg, B, C, dx, da, dB, dC = (_chunk(r, c, q) for r in (
            x_ref, a_ref, s_ref, b_ref, c_ref, dx_ref, da_ref, db_ref, dc_ref))
        L, e, w, a_last, decay, mask = _decay(a, seg)
        da_last = _last(da)
        dL = jnp.where(mask, L * (da[:, None] - da[None, :]), 0.0)
        CB = _mm(C, B, "nt")
        dCB = _mm(dC, B, "nt") + _mm(C, dB, "nt")
        G, dG = CB * L, dCB * L + CB * dL
        CS = _mm(C, S, "nt")
        dCS = _mm(dC, S, "nt") + _mm(C, dS, "nt")
        dy = _mm(dG, x) + _mm(G, dx) + e[:, None] * (da[:, None] * CS + dCS)
        dy_ref[pl.ds(c * q, q)] = dy
        dw = w * (da_last - da)
        dS = (decay * (da_last * S + dS) + _mm(w[:, None] * dx + dw[:, None] * x, B, "tn")
              + _mm(w[:, None] * x, dB, "tn"))
        S = decay * S + _mm(w[:, None] * x, B, "tn")
        return S, dS

    _, dfinal_ref[...] = jax.lax.fori_loop(0, chunks, body, (h0_ref[...], dh0_ref[...]))


def _backward_kernel(x_ref, a_ref, s_ref, b_ref, c_ref, states_ref, gy_ref, gfinal_ref,
                     gx_ref, ga_ref, gb_ref, gc_ref, gh0_ref, *, q):
    chunks = x_ref.shape[0] // q

    def body(k, gS):
        c = chunks - 1 - k
        x, a, seg, B, C, gy = (_chunk(r, c, q) for r in (x_ref, a_ref, s_ref, b_ref, c_ref,
                                                          gy_ref))
        S = states_ref[c]
        L, e, w, _, decay, _ = _decay(a, seg)
        CB = _mm(C, B, "nt")
        G = CB * L
        # Y = G X + e * (C S^T)
        gx = _mm(G, gy, "tn")
        gG = _mm(gy, x, "nt")
        gCB, M = gG * L, gG * CB * L
        CS = _mm(C, S, "nt")
        gz = e[:, None] * gy
        gC = _mm(gCB, B) + _mm(gz, S)
        gB = _mm(gCB, C, "tn")
        gS_in = _mm(gz, C, "tn")
        ga = jnp.sum(M, axis=1) - jnp.sum(M, axis=0) + e * jnp.sum(gy * CS, axis=1)
        # S_out = decay * S + (w X)^T B
        gS_in = gS_in + decay * gS
        gxw = _mm(B, gS, "nt")
        gB = gB + _mm(w[:, None] * x, gS)
        gx = gx + w[:, None] * gxw
        gw = w * jnp.sum(gxw * x, axis=1)
        ga_last = jnp.sum(gw) + decay * jnp.sum(gS * S)
        is_last = jax.lax.broadcasted_iota(jnp.int32, (q,), 0) == q - 1
        ga = ga - gw + jnp.where(is_last, ga_last, 0.0)
        for ref, val in ((gx_ref, gx), (ga_ref, ga), (gb_ref, gB), (gc_ref, gC)):
            ref[pl.ds(c * q, q)] = val
        return gS_in

    gh0_ref[...] = jax.lax.fori_loop(0, chunks, body, gfinal_ref[...])


def _setup(X, B, chunk, rows):
    batch, heads, padded, headdim = X.shape
    groups, state = B.shape[1], B.shape[3]
    chunks = padded // chunk
    specs = _specs(heads, groups, padded, rows, state, chunks)
    grid = (batch, heads, headdim // rows)
    sds = lambda *shape: jax.ShapeDtypeStruct(shape, X.dtype)  # noqa: E731
    return (batch, heads, padded, headdim, state, chunks), specs, grid, sds


def _call(kernel, name, grid, interpret, **kwargs):
    return _compat.pallas_call(kernel, grid=grid, interpret=interpret, name=f"ssd_{name}",
                               **kwargs)


def forward(X, a, B, C, h0, *, chunk, interpret, rows, emit_states=False):
    """(Y (b, h, T, p), final (b, h, p, n)); with ``emit_states``: (entering states
    (b, h, chunks, p, n), final) instead. ``a`` (b, h, 2, T): log decay and reset count."""
    (batch, heads, padded, headdim, state, chunks), s, grid, sds = _setup(X, B, chunk, rows)
    out = (sds(batch, heads, chunks, headdim, state) if emit_states
           else sds(batch, heads, padded, headdim))
    return _call(
        functools.partial(_forward_kernel, q=chunk, emit_states=emit_states), "forward", grid,
        interpret, in_specs=[s["x"], s["a"], s["a"], s["bc"], s["bc"], s["h"]],
        out_specs=[s["states"] if emit_states else s["x"], s["h"]],
        out_shape=[out, sds(batch, heads, headdim, state)],
    )(X, a[:, :, 0], a[:, :, 1], B, C, h0)


def tangent(operands, residuals, tangents, *, chunk, interpret, rows):
    """JVP (dY (b, h, T, p), dfinal (b, h, p, n)); linear in the tangents (dX, da, dB, dC, dh0)
    (the reset count ``a[:, :, 1]`` has no tangent)."""
    X, a, B, C, h0 = operands
    dX, da, dB, dC, dh0 = tangents
    (batch, heads, padded, headdim, state, chunks), s, grid, sds = _setup(X, B, chunk, rows)
    primal_specs = [s["x"], s["a"], s["a"], s["bc"], s["bc"], s["h"]]
    return _call(
        functools.partial(_tangent_kernel, q=chunk), "tangent", grid, interpret,
        in_specs=primal_specs + [s["x"], s["a"], s["bc"], s["bc"], s["h"]],
        out_specs=[s["x"], s["h"]],
        out_shape=[sds(batch, heads, padded, headdim), sds(batch, heads, headdim, state)],
    )(X, a[:, :, 0], a[:, :, 1], B, C, h0, dX, da[:, :, 0], dB, dC, dh0)


def backward(operands, residuals, cotangents, *, chunk, interpret, rows):
    """VJP: (gX, ga, gB, gC, gh0) for the cotangents (gY, gfinal); ``ga`` is 0 on the reset
    count row of ``a``.

    A forward sweep (tiled over headdim) saves the chunk-entering states; the reverse sweep runs
    one program per (batch, head), since ga, gB and gC sum over all rows of the state; gB and gC
    come per head and are summed over the heads of each group.
    """
    X, a, B, C, h0 = operands
    states, _ = forward(X, a, B, C, h0, chunk=chunk, interpret=interpret, rows=rows,
                        emit_states=True)
    (batch, heads, padded, headdim, state, chunks), s, grid, sds = _setup(X, B, chunk, X.shape[3])
    gX, ga, gB, gC, gh0 = _call(
        functools.partial(_backward_kernel, q=chunk), "backward", grid, interpret,
        in_specs=[s["x"], s["a"], s["a"], s["bc"], s["bc"], s["states"], s["x"], s["h"]],
        out_specs=[s["x"], s["a"], s["bc_heads"], s["bc_heads"], s["h"]],
        out_shape=[sds(batch, heads, padded, headdim), sds(batch, heads, padded),
                   sds(batch, heads, padded, state), sds(batch, heads, padded, state),
                   sds(batch, heads, headdim, state)],
    )(X, a[:, :, 0], a[:, :, 1], B, C, states, *cotangents)
    groups = B.shape[1]
    ga = jnp.stack([ga, jnp.zeros_like(ga)], axis=2)
    return gX, ga, sum_groups(gB, groups, 1), sum_groups(gC, groups, 1), gh0
