"""SSD through the Pallas kernels, differentiable in every mode.

Three primitives in the kernel layout (``xla.to_kernel_layout``; ``a`` holds the cumulative log
decay and the reset count), all float32 (float64 under x64):

- ``ssd_forward``:  (X, a, B, C, h0) -> (Y, final)                      forward kernel
- ``ssd_tangent``:  (X, a, B, C, h0, dX, da, dB, dC, dh0) -> (dY, dfinal) tangent kernel,
  linear in the last five operands
- ``ssd_backward``: (X, a, B, C, h0, gY, gfinal) -> (gX, ga, gB, gC, gh0) backward kernel
  (reverse sweep over chunks)

Rules: JVP(ssd_forward) = (ssd_forward, ssd_tangent); transpose(ssd_tangent) = ssd_backward, so
``jax.jvp``/``jax.linearize`` run the tangent kernel and ``jax.grad`` runs the backward kernel.
Second-order terms (JVP of ``ssd_tangent`` and of ``ssd_backward``, reached by grad-of-jvp,
jvp-of-jvp, hessians) differentiate the pure-JAX chunked form of the same maps
(``xla.chunked_core``); their primal values still come from the kernels. ``vmap`` folds the mapped
axis into the batch axis. The layout change, padding, the chunk-local cumsum of A and the
handling of non-finite inputs (``xla.finite_inputs``, ``xla.nonfinite_seen``) are plain JAX
around the primitives, differentiated by JAX.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.interpreters import ad

from ssm_kernels.duality import _compat, kernels
from ssm_kernels.duality.primitives import batched_primitive
from ssm_kernels.duality.reference import compute_dtype
from ssm_kernels.duality.xla import (chunked_core, finite_inputs, from_kernel_layout,
                                     nonfinite_seen, to_kernel_layout)


def _sum_groups(g_heads, groups):
    batch, heads = g_heads.shape[:2]
    return g_heads.reshape(batch, groups, heads // groups, *g_heads.shape[2:]).sum(axis=2)


def _backward_impl(X, a, B, C, h0, gY, gfinal, **params):
    gX, ga, gB, gC, gh0 = kernels.backward(X, a, B, C, h0, gY, gfinal, **params)
    groups = B.shape[1]
    ga = jnp.stack([ga, jnp.zeros_like(ga)], axis=2)  # the reset count has no gradient
    return gX, ga, _sum_groups(gB, groups), _sum_groups(gC, groups), gh0


forward_p = batched_primitive("ssd_forward", kernels.forward)
tangent_p = batched_primitive("ssd_tangent", kernels.tangent)
backward_p = batched_primitive("ssd_backward", _backward_impl)


def _core(block_len):
    return lambda X, a, B, C, h0: chunked_core(X, a, B, C, h0, block_len)


def _instantiate(tangents):
    """Symbolic zero tangents/cotangents -> arrays of zeros (the kernels take every operand)."""
    return [ad.instantiate_zeros(t) for t in tangents]


def _forward_jvp(primals, tangents, **params):
    tangents = _instantiate(tangents)
    out = forward_p.bind(*primals, **params)
    return out, tangent_p.bind(*primals, *tangents, **params)


def _tangent_transpose(cts, *args, **params):
    primals, tangents = args[:5], args[5:]
    if any(ad.is_undefined_primal(p) for p in primals):
        raise NotImplementedError("ssd_tangent is linear only in its tangent operands")
    gY, gfinal = _instantiate(cts)
    grads = backward_p.bind(*primals, gY, gfinal, **params)
    return [None] * 5 + [g if ad.is_undefined_primal(t) else None
                         for t, g in zip(tangents, grads)]


def _tangent_reference(block_len):
    def tangent(*args):
        return jax.jvp(_core(block_len), args[:5], args[5:])[1]
    return tangent


def _backward_reference(block_len):
    def backward(*args):
        return jax.vjp(_core(block_len), *args[:5])[1](tuple(args[5:]))
    return backward


def _second_order_jvp(prim, reference):
    """JVP rule: kernel primal, tangent from differentiating the pure-JAX reference."""
    def rule(primals, tangents, **params):
        tangents = _instantiate(tangents)
        out = prim.bind(*primals, **params)
        _, t_out = jax.jvp(reference(params["block_len"]), tuple(primals), tuple(tangents))
        return out, list(t_out)
    return rule


ad.primitive_jvps[forward_p] = _forward_jvp
ad.primitive_transposes[tangent_p] = _tangent_transpose
ad.primitive_jvps[tangent_p] = _second_order_jvp(tangent_p, _tangent_reference)
ad.primitive_jvps[backward_p] = _second_order_jvp(backward_p, _backward_reference)


def _pad_tiles(Xk, Bk, Ck, h0, block_len):
    """Zero-pad headdim and state to powers of two >= 16 (zeros add nothing to Y or the state)."""
    if block_len < 16 or block_len & (block_len - 1):
        raise ValueError(f"block_len must be a power of two >= 16 for the GPU (Triton) "
                         f"kernels; got {block_len}")
    size = lambda d: max(16, 1 << (d - 1).bit_length())
    pad_to = lambda t, dims: jnp.pad(t, [(0, 0)] * (t.ndim - len(dims)) +
                                     [(0, size(d) - d) for d in dims])
    headdim, state = h0.shape[2:]
    return (pad_to(Xk, (headdim,)), pad_to(Bk, (state,)), pad_to(Ck, (state,)),
            pad_to(h0, (headdim, state)))


def ssd_pallas(X, A, B, C, block_len, initial_states, *, interpret, pow2_tiles=None,
               headdim_block=None):
    """``ssm_kernels.ssd`` through the Pallas kernels (``interpret=True``: interpreted on CPU).

    ``pow2_tiles`` (default: only for the GPU/Triton lowering) pads headdim and state to powers
    of two >= 16 and requires such a ``block_len``. ``headdim_block``: state rows per program
    (default ``kernels.default_headdim_block``); it must divide the (padded) headdim.
    """
    dtype = compute_dtype(X, A, B, C, initial_states)
    Xk, a, Bk, Ck = to_kernel_layout(*finite_inputs(X, A, B, C), block_len, dtype)
    h0 = initial_states.astype(dtype)
    headdim, state = h0.shape[2:]
    if _compat.needs_pow2_tiles(interpret) if pow2_tiles is None else pow2_tiles:
        Xk, Bk, Ck, h0 = _pad_tiles(Xk, Bk, Ck, h0, block_len)
    Y, final = forward_p.bind(Xk, a, Bk, Ck, h0, block_len=block_len, interpret=interpret,
                              headdim_block=headdim_block)
    return nonfinite_seen(from_kernel_layout(Y[..., :headdim], X.shape[1]),
                          final[:, :, :headdim, :state], X, A, B, C)
