"""SSD through the Pallas kernels: the op's primitives and the layout around them.

The primitives (``_kernel_op.KernelOp``) take the kernel layout of ``xla.to_kernel_layout`` (``a``
holds the cumulative log decay and the reset count), float32 (float64 under x64); second-order
terms differentiate the chunked form ``xla.chunked_core``. The layout change, padding, the
chunk-local cumsum of A and the handling of non-finite inputs (``xla.finite_inputs``,
``xla.nonfinite_seen``) are plain JAX around the primitives, differentiated by JAX.

Where the kernels lower to Triton (power-of-two tiles, dot tiles >= 16) the chunk is rounded up
to such a size (ours: the result is the same map, whatever the chunk; this changes only
rounding and cost), and headdim and state are zero-padded to such sizes (zeros add nothing to Y
or to the state).
"""

from __future__ import annotations

import dataclasses

from ssm_kernels import _compat
from ssm_kernels._kernel_op import KernelOp
from ssm_kernels._layout import pad_axis, pow2_at_least
from ssm_kernels.ops.ssd import kernels
from ssm_kernels.ops.ssd.reference import compute_dtype
from ssm_kernels.ops.ssd.xla import chunked_core, finite_inputs, from_kernel_layout, \
    nonfinite_seen, to_kernel_layout

TRITON_MIN_TILE = 16


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Static tiling: ``headdim`` rows of the state per program (None: 32 when that splits the
    padded headdim, else all of it); it must divide the padded headdim."""

    headdim: int | None = None

    def rows(self, headdim: int) -> int:
        if self.headdim is None:
            return 32 if headdim > 32 and headdim % 32 == 0 else headdim
        if headdim % self.headdim:
            raise ValueError(f"BlockSizes.headdim={self.headdim} must divide headdim={headdim} "
                             "(after padding)")
        return self.headdim


def _reference(X, a, B, C, h0, *, chunk, **_):
    return chunked_core(X, a, B, C, h0, chunk)


OP = KernelOp("ssd", forward=kernels.forward, tangent=kernels.tangent, backward=kernels.backward,
              reference=_reference)


def ssd_pallas(X, A, B, C, h0, chunk_size, *, interpret, blocks=BlockSizes(), pow2_tiles=None):
    """``ssm_kernels.ssd`` through the Pallas kernels (``interpret=True``: interpreted on CPU).

    ``pow2_tiles`` (default: where the kernels lower to Triton) rounds the chunk and pads
    headdim and state as the module docstring says.
    """
    pow2 = _compat.lowers_to_triton(interpret) if pow2_tiles is None else pow2_tiles
    chunk = pow2_at_least(chunk_size, TRITON_MIN_TILE) if pow2 else chunk_size
    dtype = compute_dtype(X, A, B, C, h0)
    Xk, a, Bk, Ck = to_kernel_layout(*finite_inputs(X, A, B, C), chunk, dtype)
    h0 = h0.astype(dtype)
    headdim, state = h0.shape[2:]
    if pow2:
        p, n = (pow2_at_least(d, TRITON_MIN_TILE) for d in (headdim, state))
        Xk, Bk, Ck = pad_axis(Xk, 3, p), pad_axis(Bk, 3, n), pad_axis(Ck, 3, n)
        h0 = pad_axis(pad_axis(h0, 2, p), 3, n)
    Y, final = OP(Xk, a, Bk, Ck, h0, chunk=chunk, interpret=interpret,
                  rows=blocks.rows(Xk.shape[3]))
    return nonfinite_seen(from_kernel_layout(Y[..., :headdim], X.shape[1]),
                          final[:, :, :headdim, :state], X, A, B, C)
