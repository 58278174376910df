"""Selective scan through the Pallas kernels: the op's primitives and the layout around them.

Takes the core arguments of :mod:`.reference` and returns ``(y, h_last)``. B and C are repeated
to ``lcm(groups_B, groups_C)`` groups; channels are split per group and padded to a multiple of
the channel tile; A gets the batch axis every primitive operand has; the length is padded to a
multiple of the chunk with dt = 0 (no input) and the kernels told which steps are padding (decay
1, even where A = -inf), which leaves the state unchanged. Where the kernels lower to Triton the
state is zero-padded to a power of two (zero B, C and initial state there add nothing to y or to
the real states; the padded decays, exp(0) = 1, keep those states at 0). The primitives' residual
is the state entering every chunk; second-order terms differentiate
:func:`.reference.scan_steps` in the kernel layout.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from ssm_kernels import _compat
from ssm_kernels._kernel_op import KernelOp
from ssm_kernels._layout import pad_axis, pow2_at_least, repeat_groups, round_up
from ssm_kernels.ops.selective_scan import kernels
from ssm_kernels.ops.selective_scan.reference import scan_steps

MAX_CHUNK = 256


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Static tiling of the kernels: ``chunk`` steps per chunk (unrolled in the kernels, so at
    most ``MAX_CHUNK``), at most ``channels`` channels per program (a power of two)."""

    chunk: int = 16
    channels: int = 32


def _reference(u, dt, A, B, C, h0, *, T, length, **_):
    """:func:`kernels.forward` in pure JAX (kernel layout in, kernel layout out)."""
    batch, groups, P, L = u.shape
    flat = lambda x: x.reshape(x.shape[0], groups * P, x.shape[-1])  # noqa: E731
    y, h_last, hc = scan_steps(flat(u), flat(dt), flat(A), B.swapaxes(2, 3), C.swapaxes(2, 3),
                               flat(h0), chunk=T, length=length)
    return y.reshape(u.shape), h_last.reshape(h0.shape), hc


OP = KernelOp("selective_scan", forward=kernels.forward, tangent=kernels.tangent,
              backward=kernels.backward, reference=_reference, residuals=(2,))


def scan_pallas(u, dt, A, B, C, h0, chunk_size=None, *, interpret, blocks=BlockSizes(),
                pow2_tiles=None):
    """Selective scan by the Pallas kernels (``interpret=True``: the same kernels on CPU).

    ``chunk_size`` overrides ``blocks.chunk``. ``pow2_tiles`` (default: where the kernels lower
    to Triton) pads the state to a power of two.
    """
    T = blocks.chunk if chunk_size is None else chunk_size
    if T > MAX_CHUNK:
        raise ValueError(f"chunk_size={T} is too large for the Pallas kernels (their chunk steps "
                         f"are unrolled); expected 1 <= chunk_size <= {MAX_CHUNK}")
    batch, dim, length = u.shape
    n = A.shape[-1]
    pow2 = _compat.lowers_to_triton(interpret) if pow2_tiles is None else pow2_tiles
    N = pow2_at_least(n) if pow2 else n
    G = math.lcm(B.shape[1], C.shape[1])
    per_group = dim // G
    Dt = min(blocks.channels, pow2_at_least(per_group))
    P, L = round_up(per_group, Dt), round_up(length, T)

    def channels(x):  # (batch, dim, length) -> (batch, G, P, L)
        x = x.reshape(batch, G, per_group, length)
        return pad_axis(pad_axis(x, 2, P), 3, L)

    def rows(M):  # (batch, g, n, length) -> (batch, G, L, N)
        return repeat_groups(pad_axis(pad_axis(M, 2, N), 3, L).swapaxes(2, 3), G, 1)

    def states(x):  # (batch, dim, n) -> (batch, G, P, N)
        return pad_axis(pad_axis(x.reshape(batch, G, per_group, n), 2, P), 3, N)

    A = jnp.broadcast_to(A, (batch, dim, n))
    y, h_last, _ = OP(channels(u), channels(dt), states(A), rows(B), rows(C), states(h0), T=T,
                      Dt=Dt, interpret=interpret, length=None if L == length else length)
    y = y[:, :, :per_group, :length].reshape(batch, dim, length)
    return y, h_last[:, :, :per_group, :n].reshape(batch, dim, n)
