"""The kernel layout of the selective scan, shared by the Pallas kernels and the XLA chunked form.

From the core arguments of :mod:`.reference`: B and C are repeated to ``G = lcm(groups_B,
groups_C)`` groups; channels are split per group (and padded to ``P`` channels per group); A
gets the batch axis every primitive operand has; the length is padded to a multiple of the chunk
``T`` with dt = 0 (no input) and the kernels told which steps are padding (decay 1, even where
A = -inf), which leaves the state unchanged; the state may be zero-padded to ``N`` (zero B, C and
initial state there add nothing to y or to the real states; the padded decays, exp(0) = 1, keep
those states at 0). Kernel layout:

- ``u``, ``dt``: (batch, G, P, L); ``A``: (batch, G, P, N); ``B``, ``C``: (batch, G, L, N)
- states ``h0``, ``h_last``: (batch, G, P, N); chunk-start states ``hc``: (batch, G, nc, P, N)
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from ssm_kernels._layout import pad_axis, repeat_groups, round_up
from ssm_kernels.ops.selective_scan.reference import scan_steps


def to_kernel_layout(u, dt, A, B, C, h0, *, T: int, P: int, N: int):
    """Core arguments -> kernel-layout operands and the static ``length`` (None: no padding)."""
    batch, dim, length = u.shape
    n = A.shape[-1]
    G = math.lcm(B.shape[1], C.shape[1])
    per_group, L = dim // G, round_up(length, T)

    def channels(x):  # (batch, dim, length) -> (batch, G, P, L)
        x = x.reshape(batch, G, per_group, length)
        return pad_axis(pad_axis(x, 2, P), 3, L)

    def rows(M):  # (batch, g, n, length) -> (batch, G, L, N)
        return repeat_groups(pad_axis(pad_axis(M, 2, N), 3, L).swapaxes(2, 3), G, 1)

    def states(x):  # (batch, dim, n) -> (batch, G, P, N)
        return pad_axis(pad_axis(x.reshape(batch, G, per_group, n), 2, P), 3, N)

    A = jnp.broadcast_to(A, (batch, dim, n))
    operands = (channels(u), channels(dt), states(A), rows(B), rows(C), states(h0))
    return operands, None if L == length else length


def from_kernel_layout(y, h_last, *, dim: int, length: int, n: int):
    """Kernel-layout (y, h_last) -> (batch, dim, length), (batch, dim, n)."""
    batch, G = y.shape[:2]
    per_group = dim // G
    return (y[:, :, :per_group, :length].reshape(batch, dim, length),
            h_last[:, :, :per_group, :n].reshape(batch, dim, n))


def reference_in_kernel_layout(u, dt, A, B, C, h0, *, T, length, **_):
    """The kernels' forward map (y, h_last, hc) in pure JAX, kernel layout in and out: what
    second-order derivatives of the kernel ops differentiate."""
    batch, groups, P, L = u.shape
    flat = lambda x: x.reshape(x.shape[0], groups * P, x.shape[-1])  # noqa: E731
    y, h_last, hc = scan_steps(flat(u), flat(dt), flat(A), B.swapaxes(2, 3), C.swapaxes(2, 3),
                               flat(h0), chunk=T, length=length)
    return y.reshape(u.shape), h_last.reshape(h0.shape), hc
