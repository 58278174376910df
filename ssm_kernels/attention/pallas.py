"""B'MOJO attention through Pallas kernels, differentiable in every mode.

Three JAX primitives wrap the kernels of ``pallas_kernels`` on a padded layout:
  ``fwd``      (inputs) -> (out, lse)                       flash forward
  ``tangent``  (inputs, out, lse, tangents) -> (dout, dlse)  linear in the tangents
  ``backward`` (inputs, out, lse, g_out, g_lse) -> grads     linear in (g_out, g_lse)
The JVP rule of ``fwd`` binds ``tangent`` (closed form, recomputed from the saved lse);
the transpose rule of ``tangent`` binds ``backward`` (transpose of the JVP = VJP). So jax.jvp,
jax.linearize, jax.grad and vmap all run the kernels. Second-order terms (the JVP of
``tangent`` and of ``backward``, needed by grad-of-jvp, jvp-of-grad, Hessians) differentiate
the pure-JAX blocked form (``xla.blocked_attention``) instead: correct, not kernel-fast.
In grad-of-jvp (training a linearized model) the kernels run the forward and tangent passes
and the reverse pass is the XLA form's; in jvp-of-grad the kernels run forward and backward.
Padding, slicing and grouping of heads happen in plain JAX around the primitives, and so does
the handling of non-finite values (``nonfinite``): the kernels get the finite part of the values
and the non-finite values each query sees are added back to their output.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ssm_kernels._nonfinite import finite_part
from ssm_kernels.attention import nonfinite
from ssm_kernels.attention import pallas_kernels as kernels
from ssm_kernels.attention.pallas_compat import Primitive, ad, batching, mlir, shaped_array
from ssm_kernels.attention.xla import blocked_attention

DEFAULT_BLOCK = 64


# --------------------------------------------------------------------- operand bookkeeping


def _n_floats(cfg: kernels.Config) -> int:
    return 3 + 2 * cfg.has_fading + 2 * cfg.has_memory


def _n_inputs(cfg: kernels.Config) -> int:
    return _n_floats(cfg) + cfg.has_memory


def _unpack(cfg: kernels.Config, floats, ints):
    """-> q, seq [[k, v], ([fk, fv])], mem ([mk, mv] or []), mpos (or None)."""
    q, rest = floats[0], list(floats[1:])
    seq = [rest[0:2]]
    rest = rest[2:]
    if cfg.has_fading:
        seq.append(rest[0:2])
        rest = rest[2:]
    return q, seq, rest, (ints[0] if cfg.has_memory else None)


def _reference(cfg: kernels.Config, floats, ints):
    """Pure-JAX equivalent of ``fwd`` on the padded layout (used for second-order terms)."""
    q, seq, mem, mpos = _unpack(cfg, floats, ints)
    fading = seq[1] if cfg.has_fading else (None, None)
    mk, mv = mem if cfg.has_memory else (None, None)
    out, lse = blocked_attention(
        q, *seq[0], window=cfg.window, fading_k=fading[0], fading_v=fading[1], memory_k=mk,
        memory_v=mv, memory_pos=mpos, memory_chunk=cfg.chunk if cfg.has_memory else None,
        scale=cfg.scale)
    return out, jnp.swapaxes(lse, 1, 2)


def _zeros_if_symbolic(x, like):
    return jnp.zeros(like.shape, like.dtype) if type(x) is ad.Zero else x


# ---------------------------------------------------------------------------- primitives


fwd_p = Primitive("bmojo_attention_fwd")
tangent_p = Primitive("bmojo_attention_tangent")
backward_p = Primitive("bmojo_attention_backward")
for _p in (fwd_p, tangent_p, backward_p):
    _p.multiple_results = True


def _fwd_impl(*args, cfg):
    nf = _n_floats(cfg)
    q, seq, mem, mpos = _unpack(cfg, args[:nf], args[nf:])
    return kernels.forward(cfg, q, seq, mem, mpos)


def _tangent_impl(*args, cfg):
    nf, ni = _n_floats(cfg), _n_inputs(cfg)
    q, seq, mem, mpos = _unpack(cfg, args[:nf], args[nf:ni])
    out, lse = args[ni:ni + 2]
    dq, dseq, dmem, _ = _unpack(cfg, args[ni + 2:], args[nf:ni])
    return kernels.tangent(cfg, q, dq, out, lse, seq, dseq, mem, dmem, mpos)


def _group_sum(x, axis: int, group: int):
    """Sum per-query-head gradients over each group of ``group`` heads at ``axis``."""
    return x.reshape(*x.shape[:axis], x.shape[axis] // group, group, *x.shape[axis + 1:]).sum(
        axis + 1)


def _backward_impl(*args, cfg):
    nf, ni = _n_floats(cfg), _n_inputs(cfg)
    floats = args[:nf]
    q, seq, mem, mpos = _unpack(cfg, floats, args[nf:ni])
    out, lse, g_out, g_lse = args[ni:ni + 4]
    acc_t = lse.dtype
    delta = jnp.sum(g_out.astype(acc_t) * out.astype(acc_t), axis=-1)
    delta = jnp.swapaxes(delta, 1, 2) - g_lse.astype(acc_t)
    dq, seq_grads, mem_grads = kernels.backward(cfg, q, g_out.astype(q.dtype), lse, delta, seq,
                                                mem, mpos)
    grads = [dq]
    for dk, dv in seq_grads:
        grads += [_group_sum(dk, 2, cfg.group), _group_sum(dv, 2, cfg.group)]
    grads += [_group_sum(d, 3, cfg.group) for d in mem_grads]
    return [g.astype(x.dtype) for g, x in zip(grads, floats)]


def _fwd_abstract(*args, cfg):
    q = args[0]
    b, lp, h, _ = q.shape
    return (shaped_array(q.shape, q.dtype),
            shaped_array((b, h, lp), jnp.promote_types(q.dtype, jnp.float32)))


def _tangent_abstract(*args, cfg):
    ni = _n_inputs(cfg)
    out, lse = args[ni:ni + 2]
    return (shaped_array(out.shape, out.dtype),
            shaped_array(lse.shape, lse.dtype))


def _backward_abstract(*args, cfg):
    return [shaped_array(x.shape, x.dtype) for x in args[:_n_floats(cfg)]]


def _fwd_jvp(primals, tangents, *, cfg):
    nf = _n_floats(cfg)
    out, lse = fwd_p.bind(*primals, cfg=cfg)
    tans = [_zeros_if_symbolic(t, x) for t, x in zip(tangents[:nf], primals[:nf])]
    dout, dlse = tangent_p.bind(*primals, out, lse, *tans, cfg=cfg)
    return (out, lse), (dout, dlse)


def _tangent_transpose(cts, *args, cfg):
    nf, ni = _n_floats(cfg), _n_inputs(cfg)
    out, lse = args[ni:ni + 2]
    g_out, g_lse = (_zeros_if_symbolic(c, x) for c, x in zip(cts, (out, lse)))
    grads = backward_p.bind(*args[:ni], out, lse, g_out, g_lse, cfg=cfg)
    tans = args[ni + 2:]
    return [None] * (ni + 2) + [g if ad.is_undefined_primal(t) else None
                                for g, t in zip(grads, tans)]


def _fallback_jvp(prim, linear_map):
    """JVP of a kernel primitive that is linear in its trailing operands, via pure JAX.

    ``linear_map(cfg, floats, ints, lin)`` is the pure-JAX equivalent of ``prim``; the saved
    (out, lse) operands are recomputed inside it, so their tangents are not needed.
    """
    def jvp(primals, tangents, *, cfg):
        nf, ni = _n_floats(cfg), _n_inputs(cfg)
        floats, ints, lin = primals[:nf], primals[nf:ni], primals[ni + 2:]
        d_floats = [_zeros_if_symbolic(t, x) for t, x in zip(tangents[:nf], floats)]
        d_lin = [_zeros_if_symbolic(t, x) for t, x in zip(tangents[ni + 2:], lin)]
        outs = prim.bind(*primals, cfg=cfg)
        _, d_outs = jax.jvp(lambda f, l: linear_map(cfg, f, ints, l),
                            (list(floats), list(lin)), (d_floats, d_lin))
        return outs, list(d_outs)
    return jvp


def _tangent_reference(cfg, floats, ints, lin):
    return jax.jvp(lambda *f: _reference(cfg, f, ints), tuple(floats), tuple(lin))[1]


def _backward_reference(cfg, floats, ints, lin):
    _, vjp = jax.vjp(lambda *f: _reference(cfg, f, ints), *floats)
    return list(vjp(tuple(lin)))


def _batch_rule(prim):
    """vmap: fold the mapped axis into the batch axis (axis 0 of every operand)."""
    def rule(args, dims, *, cfg):
        n = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
        merged = []
        for a, d in zip(args, dims):
            a = jnp.broadcast_to(a, (n, *a.shape)) if d is None else jnp.moveaxis(a, d, 0)
            merged.append(a.reshape(n * a.shape[1], *a.shape[2:]))
        outs = prim.bind(*merged, cfg=cfg)
        return [o.reshape(n, o.shape[0] // n, *o.shape[1:]) for o in outs], [0] * len(outs)
    return rule


for _p, _impl, _abstract in ((fwd_p, _fwd_impl, _fwd_abstract),
                             (tangent_p, _tangent_impl, _tangent_abstract),
                             (backward_p, _backward_impl, _backward_abstract)):
    _p.def_impl(_impl)
    _p.def_abstract_eval(_abstract)
    mlir.register_lowering(_p, mlir.lower_fun(_impl, multiple_results=True))
    batching.primitive_batchers[_p] = _batch_rule(_p)
ad.primitive_jvps[fwd_p] = _fwd_jvp
ad.primitive_transposes[tangent_p] = _tangent_transpose
ad.primitive_jvps[tangent_p] = _fallback_jvp(tangent_p, _tangent_reference)
ad.primitive_jvps[backward_p] = _fallback_jvp(backward_p, _backward_reference)


# ------------------------------------------------------------------------- public entry


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _pad(x, axis: int, size: int, value=0):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad, constant_values=value)


@functools.partial(jax.jit, static_argnames=("window", "memory_chunk", "scale", "interpret",
                                             "block", "gpu_layout"))
def pallas_attention(q, k, v, *, window, fading_k=None, fading_v=None, memory_k=None,
                     memory_v=None, memory_pos=None, memory_chunk=None, scale, interpret,
                     block=None, gpu_layout=None):
    """``bmojo_attention`` through the Pallas kernels (``interpret=True``: on CPU).

    ``block``: query/key block size (default 64). ``gpu_layout`` (default: not interpret)
    pads head_dim, slots and short blocks to powers of two >= 16 as the Triton lowering
    needs; tests turn it on in interpret mode to check that padding on CPU.
    """
    batch, length, heads, head_dim = q.shape
    on_gpu = (not interpret) if gpu_layout is None else gpu_layout
    block = block or DEFAULT_BLOCK
    if length < block:
        block = max(_next_pow2(length), 16) if on_gpu else length
    lp = -(-length // block) * block
    dp = max(_next_pow2(head_dim), 16) if on_gpu else head_dim

    def seq(x):
        return _pad(_pad(x, 1, lp), 3, dp)

    floats = [seq(q), seq(k), seq(finite_part(v))]
    has_fading, has_memory = fading_k is not None, memory_k is not None
    if has_fading:
        floats += [seq(fading_k), seq(finite_part(fading_v))]
    ints, chunk = [], lp
    if has_memory:
        mk, mv, mpos = memory_k, finite_part(memory_v), memory_pos
        if mk.ndim == 4:  # shared slots: one snapshot read by every query
            mk, mv, mpos = mk[:, None], mv[:, None], mpos[:, None]
        else:
            chunk = memory_chunk
        slots = mk.shape[2]
        mp = max(_next_pow2(slots), 16) if on_gpu else slots
        chunks = -(-lp // chunk)  # also covers padded query rows (for the pure-JAX fallback)

        def mem(x):
            return _pad(_pad(_pad(x, 1, chunks), 2, mp), 4, dp)

        floats += [mem(mk), mem(mv)]
        ints = [_pad(_pad(mpos.astype(jnp.int32), 1, chunks, -1), 2, mp, -1)]
    cfg = kernels.Config(length=length, window=window, scale=scale, block=block, chunk=chunk,
                         group=heads // k.shape[2], has_fading=has_fading,
                         has_memory=has_memory, interpret=interpret,
                         num_warps=4 if dp <= 64 else 8)
    out, lse = fwd_p.bind(*floats, *ints, cfg=cfg)
    out = nonfinite.restore(out[:, :length, :, :head_dim], v, window=window, fading_v=fading_v,
                            memory_v=memory_v, memory_pos=memory_pos, memory_chunk=memory_chunk)
    return out, jnp.swapaxes(lse, 1, 2)[:, :length]
