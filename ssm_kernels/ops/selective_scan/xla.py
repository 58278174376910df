"""XLA forms of the selective-scan recurrence: chunked (forward, tangent and backward written out,
vectorised over chunks) and associative scan.

Same core arguments and results as :func:`.reference.scan_reference`.

The chunked form ``scan_chunked`` is the op's "xla" implementation. It runs the kernel layout of
:mod:`.layout` through a :class:`~ssm_kernels._kernel_op.KernelOp` whose three "kernels" are the
pure-JAX functions below, in the algorithm of the Pallas kernels (the state at every chunk start
is the only residual; the backward pass recomputes the states inside a chunk), but with every
chunk advanced at once: a ``lax.scan`` over the ``T`` steps of a chunk carries the states of all
``nc`` chunks, ``h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t``, and one over the chunks links them,
``h_start[c + 1] = D_c h_start[c] + h_local[c]`` (``D_c``: the chunk's product of decays,
``h_local``: its end state from a zero start). So a sequence costs about 2 T + nc loop steps
(forward) instead of L, each on (state, channels, batch, groups, chunks) arrays that XLA fuses
and vectorises. Sums over the state or channel axis are written as a tree of slice additions
(:func:`_sum_leading`): XLA:CPU's reduce of a non-minor axis is ~20x slower at these sizes.

Measured on CPU (``python -m benchmarks.xla_forms``): see the README's performance section.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ssm_kernels._kernel_op import KernelOp
from ssm_kernels._layout import repeat_groups
from ssm_kernels.ops.selective_scan import layout



def default_chunk(length: int) -> int:
    """The chunk length when none is given (ours, from CPU measurements): the power of two
    nearest sqrt(2 length), within [8, 256], which balances the ~2 T steps inside chunks
    against the ``length / T`` steps across them."""
    return min(256, max(8, 1 << round(math.log2(math.sqrt(2 * max(length, 1))))))


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


# ----------------------------------------------------------------- step layout of the kernels
# Inside the kernels a step t of every chunk is a slice of a (T, ...) array: channel values
# (T, P, batch, G, nc), state rows (T, N, batch, G, nc); states are (N, P, batch, G, nc).


def _steps(x, T):
    """(batch, G, K, L) -> (T, K, batch, G, nc)."""
    batch, G, K, L = x.shape
    return x.reshape(batch, G, K, L // T, T).transpose(4, 2, 0, 1, 3)


def _unsteps(x):
    """(T, K, batch, G, nc) -> (batch, G, K, nc * T)."""
    T, K, batch, G, nc = x.shape
    return x.transpose(2, 3, 1, 4, 0).reshape(batch, G, K, nc * T)


def _row_steps(M, T):
    """(batch, G, L, N) -> (T, N, batch, G, nc)."""
    batch, G, L, N = M.shape
    return M.reshape(batch, G, L // T, T, N).transpose(3, 4, 0, 1, 2)


def _unrow_steps(x):
    """(T, N, batch, G, nc) -> (batch, G, nc * T, N)."""
    T, N, batch, G, nc = x.shape
    return x.transpose(2, 3, 4, 0, 1).reshape(batch, G, nc * T, N)


def _state(x):
    """(batch, G, P, N) -> (N, P, batch, G)."""
    return x.transpose(3, 2, 0, 1)


def _unstate(x):
    """(N, P, batch, G) -> (batch, G, P, N)."""
    return x.transpose(2, 3, 1, 0)


def _chunk_states(hc):
    """(batch, G, nc, P, N) -> (N, P, batch, G, nc)."""
    return hc.transpose(4, 3, 0, 1, 2)


def _unchunk_states(x):
    """(N, P, batch, G, nc) -> (batch, G, nc, P, N)."""
    return x.transpose(2, 3, 4, 1, 0)


def _sum_leading(x, axis: int = 0):
    """Sum over ``axis`` (a leading one) as a tree of slice additions, which XLA fuses into one
    vectorised elementwise loop."""
    while x.shape[axis] > 1:
        n = x.shape[axis]
        half = n // 2
        pair = (jax.lax.slice_in_dim(x, 0, half, axis=axis)
                + jax.lax.slice_in_dim(x, half, 2 * half, axis=axis))
        x = pair if n % 2 == 0 else jnp.concatenate(
            [pair, jax.lax.slice_in_dim(x, 2 * half, n, axis=axis)], axis=axis)
    return jnp.squeeze(x, axis)


class _Steps:
    """The kernel operands of one call in step layout, and the per-step decay."""

    def __init__(self, u, dt, A, B, C, *, T, length):
        _, _, _, L = u.shape
        nc = L // T
        self.T, self.nc = T, nc
        self.u, self.dt = _steps(u, T), _steps(dt, T)
        self.x = self.u * self.dt                              # dt_t u_t: (T, P, batch, G, nc)
        self.B, self.C = _row_steps(B, T), _row_steps(C, T)   # (T, N, batch, G, nc)
        self.A = _state(A)[..., None]                          # (N, P, batch, G, 1)
        real = None if length is None else (jnp.arange(L) < length).reshape(nc, T).T
        self.real = real                                       # (T, nc) or None

    def decay(self, dt_t, real_t):
        """exp(dt_t A) (N, P, batch, G, nc); 1 on padded steps (exp(0 * -inf) is NaN)."""
        a = jnp.exp(dt_t[None] * self.A)
        return a if real_t is None else jnp.where(real_t, a, 1.0)

    def across(self, h0, h_local, D):
        """Link the chunks: the state entering every chunk (N, P, batch, G, nc) and the last one.
        h0: (N, P, batch, G); h_local, D: (N, P, batch, G, nc)."""
        def step(h, inputs):
            local, decay = inputs
            return decay * h + local, h

        h_last, hc = jax.lax.scan(step, h0, (jnp.moveaxis(h_local, -1, 0),
                                             jnp.moveaxis(D, -1, 0)))
        return jnp.moveaxis(hc, 0, -1), h_last


def forward(u, dt, A, B, C, h0, *, T, length=None):
    """Returns y (batch, G, P, L), h_last (batch, G, P, N) and the chunk-start states
    (batch, G, nc, P, N)."""
    s = _Steps(u, dt, A, B, C, T=T, length=length)
    zeros = jnp.zeros((*s.A.shape[:-1], s.nc), u.dtype)

    def local(carry, step):  # every chunk from a zero state: its end state and product of decays
        h, D = carry
        dt_t, x_t, B_t, real_t = step
        a = s.decay(dt_t, real_t)
        return (a * h + x_t[None] * B_t[:, None], a * D), None

    (h_local, D), _ = jax.lax.scan(local, (zeros, jnp.ones_like(zeros)), (s.dt, s.x, s.B, s.real))
    hs, h_last = s.across(_state(h0), h_local, D)

    def emit(h, step):
        dt_t, x_t, B_t, C_t, real_t = step
        h = s.decay(dt_t, real_t) * h + x_t[None] * B_t[:, None]
        return h, _sum_leading(C_t[:, None] * h)

    _, y = jax.lax.scan(emit, hs, (s.dt, s.x, s.B, s.C, s.real))
    return _unsteps(y), _unstate(h_last), _unchunk_states(hs)


def tangent(operands, residuals, tangents, *, T, length=None):
    """Tangents (dy, dh_last, d chunk-start states) of :func:`forward` along (du, ddt, dA, dB,
    dC, dh0): ``dh_t = a_t dh_{t-1} + a_t (ddt_t A + dt_t dA) h_{t-1} + (ddt_t u_t + dt_t du_t)
    B_t + dt_t u_t dB_t``, the same recurrence as ``h`` with another input, and
    ``dy_t = sum_n dC_t h_t + C_t dh_t``; ``h`` is recomputed from the chunk-start states."""
    (u, dt, A, B, C, _), (hc,) = operands, residuals
    du, ddt, dA, dB, dC, dh0 = tangents
    s = _Steps(u, dt, A, B, C, T=T, length=length)
    ddts, dAs = _steps(ddt, T), _state(dA)[..., None]
    dBs, dCs = _row_steps(dB, T), _row_steps(dC, T)
    dxs = ddts * s.u + s.dt * _steps(du, T)
    inputs = (s.dt, s.x, s.B, ddts, dxs, dBs, s.real)

    def advance(h, dh, dt_t, x_t, B_t, ddt_t, dx_t, dB_t, real_t):
        a = s.decay(dt_t, real_t)
        da = a * (ddt_t[None] * s.A + dt_t[None] * dAs)
        if real_t is not None:
            da = jnp.where(real_t, da, 0.0)
        h_new = a * h + x_t[None] * B_t[:, None]
        dh = a * dh + da * h + dx_t[None] * B_t[:, None] + x_t[None] * dB_t[:, None]
        return h_new, dh, a

    def local(carry, step):  # every chunk's tangent from a zero tangent at its start
        h, dh, D = carry
        h, dh, a = advance(h, dh, *step)
        return (h, dh, a * D), None

    hs = _chunk_states(hc)
    zeros = jnp.zeros_like(hs)
    (_, dh_local, D), _ = jax.lax.scan(local, (hs, zeros, jnp.ones_like(zeros)), inputs)
    dhs, dh_last = s.across(_state(dh0), dh_local, D)

    def emit(carry, step):
        *step, C_t, dC_t = step
        h, dh, _ = advance(*carry, *step)
        return (h, dh), _sum_leading(dC_t[:, None] * h + C_t[:, None] * dh)

    _, dy = jax.lax.scan(emit, (hs, dhs), (*inputs, s.C, dCs))
    return _unsteps(dy), _unstate(dh_last), _unchunk_states(dhs)


def backward(operands, residuals, cotangents, *, T, length=None):
    """Cotangents of (u, dt, A, B, C, h0) given those of (y, h_last, chunk-start states).

    The adjoint ``lam_t = mu_t + gy_t C_t`` with ``mu_{t-1} = exp(dt_t A) lam_t`` runs backwards
    through each chunk from the adjoint arriving at its end; those are linked across the chunks
    as the states are (from each chunk's adjoint at its start from a zero end), then each chunk
    is walked backwards again beside its recomputed states to form the gradients.
    """
    (u, dt, A, B, C, _), (hc,) = operands, residuals
    gy, gh_last, ghc = cotangents
    s = _Steps(u, dt, A, B, C, T=T, length=length)
    gys = _steps(gy, T)
    hs = _chunk_states(hc)
    zeros = jnp.zeros_like(hs)

    def local(carry, step):  # adjoint at every chunk start from a zero adjoint at its end
        mu, D = carry
        dt_t, C_t, gy_t, real_t = step
        a = s.decay(dt_t, real_t)
        return (a * (mu + gy_t[None] * C_t[:, None]), a * D), None

    (mu_local, D), _ = jax.lax.scan(local, (zeros, jnp.ones_like(zeros)),
                                    (s.dt, s.C, gys, s.real), reverse=True)

    def link(mu, inputs):  # mu: adjoint of the state at the end of chunk c
        local_c, decay, ghc_c = inputs
        return decay * mu + local_c + ghc_c, mu

    moved = (jnp.moveaxis(x, -1, 0) for x in (mu_local, D, _chunk_states(ghc)))
    gh0, mu_end = jax.lax.scan(link, _state(gh_last), tuple(moved), reverse=True)
    mu_end = jnp.moveaxis(mu_end, 0, -1)

    def recompute(h, step):
        dt_t, x_t, B_t, real_t = step
        return s.decay(dt_t, real_t) * h + x_t[None] * B_t[:, None], h

    _, h_prev = jax.lax.scan(recompute, hs, (s.dt, s.x, s.B, s.real))

    def grads(carry, step):
        mu, gA = carry
        h_prev_t, dt_t, u_t, x_t, B_t, C_t, gy_t, real_t = step
        a = s.decay(dt_t, real_t)
        h = a * h_prev_t + x_t[None] * B_t[:, None]
        lam = mu + gy_t[None] * C_t[:, None]
        lam_B = _sum_leading(lam * B_t[:, None])
        g_decay = lam * h_prev_t * a  # cotangent of dt_t A through the decay
        g = (dt_t * lam_B,                                            # u
             u_t * lam_B + _sum_leading(g_decay * s.A),               # dt
             _sum_leading(lam * x_t[None], axis=1),                   # B
             _sum_leading(gy_t[None] * h, axis=1))                    # C
        return (lam * a, gA + g_decay * dt_t[None]), g

    (_, gA), (gu, gdt, gB, gC) = jax.lax.scan(
        grads, (mu_end, zeros), (h_prev, s.dt, s.u, s.x, s.B, s.C, gys, s.real), reverse=True)
    return (_unsteps(gu), _unsteps(gdt), _unstate(jnp.sum(gA, axis=-1)),
            _unrow_steps(gB), _unrow_steps(gC), _unstate(gh0))


OP = KernelOp("selective_scan_xla", forward=forward, tangent=tangent, backward=backward,
              reference=layout.reference_in_kernel_layout, residuals=(2,))


def scan_chunked(u, dt, A, B, C, h0, chunk_size: int | None = None):
    """Chunked form (see the module docstring); ``chunk_size`` steps per chunk (default
    :func:`default_chunk`, at most the length). The length is padded to a multiple of the chunk."""
    batch, dim, length = u.shape
    n = A.shape[-1]
    T = min(default_chunk(length) if chunk_size is None else chunk_size, length)
    per_group = dim // math.lcm(B.shape[1], C.shape[1])
    operands, real_length = layout.to_kernel_layout(u, dt, A, B, C, h0, T=T, P=per_group, N=n)
    y, h_last, _ = OP(*operands, T=T, length=real_length)
    return layout.from_kernel_layout(y, h_last, dim=dim, length=length, n=n)
