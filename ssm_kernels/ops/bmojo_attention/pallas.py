"""B'MOJO attention through the Pallas kernels: the op's primitives and the layout around them.

The primitives (``_kernel_op.KernelOp``) take the padded layout of ``kernels``: operands
``[q, k, v, (fading_k, fading_v), (memory_k, memory_v, memory_pos)]``, outputs (out, lse). The
tangent kernel is the closed form recomputed from the saved lse, the backward kernels the flash
backward; both read the residuals (out, lse). Second-order terms (grad-of-jvp, jvp-of-grad,
Hessians) differentiate the blocked XLA form (``xla.blocked_attention``) instead: correct, not
kernel-fast. In grad-of-jvp (training a linearized model) the kernels run the forward and
tangent passes and the reverse pass is the XLA form's; in jvp-of-grad the kernels run forward
and backward. Padding, slicing and grouping of heads happen in plain JAX around the primitives,
and so does the handling of non-finite values (``nonfinite``): the kernels get the finite part
of the values and the non-finite values each query sees are added back to their output.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from ssm_kernels import _compat
from ssm_kernels._kernel_op import KernelOp
from ssm_kernels._layout import pad_axis, pow2_at_least, round_up, sum_groups
from ssm_kernels._nonfinite import finite_part
from ssm_kernels.ops.bmojo_attention import kernels, nonfinite
from ssm_kernels.ops.bmojo_attention.xla import DEFAULT_BLOCK, blocked_attention

TRITON_MIN_TILE = 16


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Static tiling: query and key blocks of ``block`` rows (a shorter sequence is one block
    of its length, rounded up to a power of two >= 16 where the kernels lower to Triton)."""

    block: int = DEFAULT_BLOCK


def _unpack(cfg: kernels.Config, operands):
    """-> q, seq [[k, v], ([fk, fv])], mem ([mk, mv] or []), mpos (or None)."""
    q, *rest = operands
    seq = [rest[0:2]] + ([rest[2:4]] if cfg.has_fading else [])
    mem = rest[2 + 2 * cfg.has_fading:4 + 2 * cfg.has_fading] if cfg.has_memory else []
    return q, seq, mem, rest[-1] if cfg.has_memory else None


def _forward(*operands, cfg: kernels.Config):
    return kernels.forward(cfg, *_unpack(cfg, operands))


def _tangent(operands, residuals, tangents, *, cfg: kernels.Config):
    q, seq, mem, mpos = _unpack(cfg, operands)
    dq, dseq, dmem, _ = _unpack(cfg, [*tangents, None])
    return kernels.tangent(cfg, q, dq, *residuals, seq, dseq, mem, dmem, mpos)


def _backward(operands, residuals, cotangents, *, cfg: kernels.Config):
    q, seq, mem, mpos = _unpack(cfg, operands)
    (out, lse), (g_out, g_lse) = residuals, cotangents
    acc_t = lse.dtype
    delta = jnp.sum(g_out.astype(acc_t) * out.astype(acc_t), axis=-1)
    delta = jnp.swapaxes(delta, 1, 2) - g_lse.astype(acc_t)
    dq, seq_grads, mem_grads = kernels.backward(cfg, q, g_out.astype(q.dtype), lse, delta, seq,
                                                mem, mpos)
    kv_heads = q.shape[2] // cfg.group
    grads = [dq, *(sum_groups(g, kv_heads, 2) for pair in seq_grads for g in pair),
             *(sum_groups(g, kv_heads, 3) for g in mem_grads)]
    return [g.astype(x.dtype) for g, x in zip(grads, operands)]


def _reference(*operands, cfg: kernels.Config):
    """``_forward`` in pure JAX on the padded layout."""
    q, seq, mem, mpos = _unpack(cfg, operands)
    fading = seq[1] if cfg.has_fading else (None, None)
    mk, mv = mem if cfg.has_memory else (None, None)
    out, lse = blocked_attention(
        q, *seq[0], window=cfg.window, fading_k=fading[0], fading_v=fading[1], memory_k=mk,
        memory_v=mv, memory_pos=mpos, memory_chunk=cfg.chunk if cfg.has_memory else None,
        scale=cfg.scale)
    return out, jnp.swapaxes(lse, 1, 2)


OP = KernelOp("bmojo_attention", forward=_forward, tangent=_tangent, backward=_backward,
              reference=_reference, residuals=(0, 1))


@functools.partial(jax.jit, static_argnames=("window", "memory_chunk", "scale", "interpret",
                                             "blocks", "pow2_tiles"))
def pallas_attention(q, k, v, *, window, fading_k=None, fading_v=None, memory_k=None,
                     memory_v=None, memory_pos=None, memory_chunk=None, scale, interpret,
                     blocks=BlockSizes(), pow2_tiles=None):
    """``bmojo_attention`` through the Pallas kernels (``interpret=True``: on CPU).

    ``pow2_tiles`` (default: where the kernels lower to Triton) pads head_dim, slots and short
    blocks to powers of two >= 16; tests turn it on in interpret mode to check that padding.
    """
    batch, length, heads, head_dim = q.shape
    pow2 = _compat.lowers_to_triton(interpret) if pow2_tiles is None else pow2_tiles
    tile = lambda n: pow2_at_least(n, TRITON_MIN_TILE) if pow2 else n  # noqa: E731
    block = blocks.block if length >= blocks.block else tile(length)
    lp, dp = round_up(length, block), tile(head_dim)

    def seq(x):
        return pad_axis(pad_axis(x, 1, lp), 3, dp)

    operands = [seq(q), seq(k), seq(finite_part(v))]
    has_fading, has_memory = fading_k is not None, memory_k is not None
    if has_fading:
        operands += [seq(fading_k), seq(finite_part(fading_v))]
    chunk = lp
    if has_memory:
        mk, mv, mpos = memory_k, finite_part(memory_v), memory_pos
        if mk.ndim == 4:  # shared slots: one snapshot read by every query
            mk, mv, mpos = mk[:, None], mv[:, None], mpos[:, None]
        else:
            chunk = memory_chunk
        mp = tile(mk.shape[2])
        chunks = -(-lp // chunk)  # also covers padded query rows (for the pure-JAX fallback)

        def mem(x):
            return pad_axis(pad_axis(pad_axis(x, 1, chunks), 2, mp), 4, dp)

        operands += [mem(mk), mem(mv),
                     pad_axis(pad_axis(mpos.astype(jnp.int32), 1, chunks, -1), 2, mp, -1)]
    cfg = kernels.Config(length=length, window=window, scale=scale, block=block, chunk=chunk,
                         group=heads // k.shape[2], has_fading=has_fading,
                         has_memory=has_memory, interpret=interpret,
                         num_warps=4 if dp <= 64 else 8)
    out, lse = OP(*operands, cfg=cfg)
    out = nonfinite.restore(out[:, :length, :, :head_dim], v, window=window, fading_v=fading_v,
                            memory_v=memory_v, memory_pos=memory_pos, memory_chunk=memory_chunk)
    return out, jnp.swapaxes(lse, 1, 2)[:, :length]
