"""Selective scan through the Pallas kernels: the op's primitives and its block sizes.

Takes the core arguments of :mod:`.reference` and returns ``(y, h_last)``, through the kernel
layout of :mod:`.layout`. Where the kernels lower to Triton the state is zero-padded to a power
of two. The primitives' residual is the state entering every chunk; second-order terms
differentiate :func:`.layout.reference_in_kernel_layout`.
"""

from __future__ import annotations

import dataclasses
import math

from ssm_kernels import _compat
from ssm_kernels._kernel_op import KernelOp
from ssm_kernels._layout import pow2_at_least, round_up
from ssm_kernels.ops.selective_scan import kernels, layout

MAX_CHUNK = 256


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Static tiling of the kernels: ``chunk`` steps per chunk (unrolled in the kernels, so at
    most ``MAX_CHUNK``), at most ``channels`` channels per program (a power of two)."""

    chunk: int = 16
    channels: int = 32


OP = KernelOp("selective_scan", forward=kernels.forward, tangent=kernels.tangent,
              backward=kernels.backward, reference=layout.reference_in_kernel_layout,
              residuals=(2,))


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
    per_group = dim // math.lcm(B.shape[1], C.shape[1])
    Dt = min(blocks.channels, pow2_at_least(per_group))
    operands, real_length = layout.to_kernel_layout(u, dt, A, B, C, h0, T=T,
                                                    P=round_up(per_group, Dt), N=N)
    y, h_last, _ = OP(*operands, T=T, Dt=Dt, interpret=interpret, length=real_length)
    return layout.from_kernel_layout(y, h_last, dim=dim, length=length, n=n)
