"""Pallas kernels of B'MOJO attention on the padded layout built by ``pallas.py``.

Padded layout (all lengths multiples of ``block``, head_dim and slots padded with zeros / -1):
  q, out, g (output cotangent): (batch, Lp, heads, Dp); k, v, fading k/v: (batch, Lp, kv_heads, Dp)
  memory k/v: (batch, chunks, Mp, kv_heads, Dp), memory_pos (batch, chunks, Mp) int32
  (shared slots are one chunk of length Lp); lse, delta: (batch, heads, Lp) float32.

Query-side kernels (grid (batch, heads, query blocks)) walk, for their query block, only the key
blocks of the in-context band [q0 - W + 1, q1], the fading band [q0 - 2W + 1, q1 - W] and the
snapshots of the chunks the block touches: loop bounds come from the query block, so the cost is
linear in length for fixed W and M. Key-side kernels (grid over key blocks or snapshots) walk the
query blocks that can see their keys. Visibility comes from ``masks``.

Non-finite inputs stay in the rows that see them: masked scores and products with masked
probabilities are selected away (``jnp.where``), never multiplied by 0, and a matmul whose
weights are masked reads the finite part of its other operand (keys in ``dq``, queries in
``dk``); the values arrive finite (``pallas.py``).

  forward:  online softmax; out = sum_j p_j v_j, lse = log sum_j exp(s_j), s_j = scale q.k_j
  tangent:  ds_j = scale (dq.k_j + q.dk_j); dlse = sum_j p_j ds_j;
            dout = sum_j p_j ds_j v_j + p_j dv_j - dlse out
  backward: dp_j = g.v_j; ds_j = p_j (dp_j - delta), delta = rowsum(g * out) - g_lse;
            dq = scale sum_j ds_j k_j; dk_j = scale sum_i ds_ij q_i; dv_j = sum_i p_ij g_i
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from ssm_kernels import _compat
from ssm_kernels._compat import dot as _dot
from ssm_kernels._nonfinite import finite_part
from ssm_kernels.ops.bmojo_attention import masks


@dataclasses.dataclass(frozen=True)
class Config:
    """Static description of one call (hashable: used as a primitive parameter)."""

    length: int          # real length L (<= Lp)
    window: int
    scale: float
    block: int           # query and key block size; Lp % block == 0
    chunk: int           # memory_chunk (Lp for shared slots)
    group: int           # heads // kv_heads
    has_fading: bool
    has_memory: bool
    interpret: bool
    num_warps: int = 4
    num_stages: int = 2


def _div(a, b: int):
    """Floor division of a non-negative traced int by a static int."""
    return lax.div(a, jnp.int32(b))


def _block_range(lo_key, hi_key, block: int):
    """Blocks covering keys [lo_key, hi_key] (lo_key may be < 0; empty when hi_key < 0)."""
    lo = _div(jnp.maximum(lo_key, 0), block)
    hi = _div(jnp.maximum(hi_key + block, 0), block) - 1
    return lo, hi + 1


def _query_side_walk(cfg: Config, q0, seq_sources, mem_refs, mpos_ref, body, carry):
    """Run ``body(carry, loaded, visible)`` over every key block a query block may see.

    seq_sources: [(refs, kind)] with kind "context" or "fading"; refs are whole-sequence refs
    (Lp, Dp) loaded block by block. mem_refs: refs (chunks, Mp, Dp) of the slot source.
    """
    b = cfg.block
    q_pos = q0 + jnp.arange(b)
    q_real = (q_pos < cfg.length)[:, None]
    last = jnp.minimum(q0 + b - 1, cfg.length - 1)
    for refs, kind in seq_sources:
        if kind == "context":
            lo, hi = _block_range(q0 - cfg.window + 1, last, b)
            visible_fn = masks.context_visible
        else:
            lo, hi = _block_range(q0 - 2 * cfg.window + 1, last - cfg.window, b)
            visible_fn = masks.fading_visible

        def step(j, c, refs=refs, visible_fn=visible_fn):
            start = j * b
            k_pos = start + jnp.arange(b)
            loaded = [r[pl.ds(start, b), :] for r in refs]
            visible = visible_fn(q_pos[:, None], k_pos[None, :], cfg.window, cfg.length) & q_real
            return body(c, loaded, visible)

        carry = lax.fori_loop(lo, hi, step, carry)
    if mem_refs:
        def mem_step(c_idx, c):
            loaded = [r[c_idx] for r in mem_refs]
            slot_pos = mpos_ref[c_idx]
            visible = (masks.memory_visible(q_pos[:, None], slot_pos[None, :], cfg.window,
                                            cfg.has_fading)
                       & q_real & (_div(q_pos, cfg.chunk) == c_idx)[:, None])
            return body(c, loaded, visible)

        carry = lax.fori_loop(_div(q0, cfg.chunk), _div(last, cfg.chunk) + 1, mem_step, carry)
    return carry


def _split_refs(cfg: Config, refs, per_source: int):
    """Split kernel refs into ([(seq refs, kind)], mem refs, mpos ref, rest)."""
    refs = list(refs)
    sources = [(refs[:per_source], "context")]
    refs = refs[per_source:]
    if cfg.has_fading:
        sources.append((refs[:per_source], "fading"))
        refs = refs[per_source:]
    mem, mpos = [], None
    if cfg.has_memory:
        mem, mpos, refs = refs[:per_source], refs[per_source], refs[per_source + 1:]
    return sources, mem, mpos, refs


def _forward_kernel(q_ref, *refs, cfg: Config):
    sources, mem, mpos, (out_ref, lse_ref) = _split_refs(cfg, refs, 2)
    acc_t = jnp.promote_types(q_ref.dtype, jnp.float32)
    q = q_ref[...]
    q0 = pl.program_id(2) * cfg.block

    def body(carry, loaded, visible):
        acc, m, l = carry
        k, v = loaded
        s = masks.masked(_dot(q, k, "nt", acc_t) * cfg.scale, visible)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        alpha = jnp.exp(m - m_new)
        p = jnp.where(visible, jnp.exp(s - m_new[:, None]), 0.0)
        l = alpha * l + jnp.sum(p, axis=1)
        acc = alpha[:, None] * acc + _dot(p.astype(v.dtype), v, "nn", acc_t)
        return acc, m_new, l

    b, d = q.shape
    init = (jnp.zeros((b, d), acc_t), jnp.full((b,), masks.MASK_VALUE, acc_t),
            jnp.zeros((b,), acc_t))
    acc, m, l = _query_side_walk(cfg, q0, sources, mem, mpos, body, init)
    l = jnp.where(l > 0, l, 1.0)
    out_ref[...] = (acc / l[:, None]).astype(out_ref.dtype)
    lse_ref[...] = (m + jnp.log(l)).astype(lse_ref.dtype)


def _tangent_kernel(q_ref, dq_ref, out_ref, lse_ref, *refs, cfg: Config):
    sources, mem, mpos, (dout_ref, dlse_ref) = _split_refs(cfg, refs, 4)
    acc_t = jnp.promote_types(q_ref.dtype, jnp.float32)
    q, dq = q_ref[...], dq_ref[...]
    lse = lse_ref[...].astype(acc_t)
    q0 = pl.program_id(2) * cfg.block

    def body(carry, loaded, visible):
        acc, dlse = carry
        k, v, dk, dv = loaded
        s = _dot(q, k, "nt", acc_t) * cfg.scale
        p = jnp.where(visible, jnp.exp(s - lse[:, None]), 0.0)
        ds = (_dot(dq, k, "nt", acc_t) + _dot(q, dk, "nt", acc_t)) * cfg.scale
        pds = jnp.where(visible, p * ds, 0.0)
        acc = acc + _dot(pds.astype(v.dtype), v, "nn", acc_t) + _dot(p.astype(dv.dtype), dv, "nn", acc_t)
        return acc, dlse + jnp.sum(pds, axis=1)

    init = (jnp.zeros(q.shape, acc_t), jnp.zeros(q.shape[:1], acc_t))
    acc, dlse = _query_side_walk(cfg, q0, sources, mem, mpos, body, init)
    out = out_ref[...].astype(acc_t)
    dout_ref[...] = (acc - dlse[:, None] * out).astype(dout_ref.dtype)
    dlse_ref[...] = dlse.astype(dlse_ref.dtype)


def _dq_kernel(q_ref, g_ref, lse_ref, delta_ref, *refs, cfg: Config):
    sources, mem, mpos, (dq_ref,) = _split_refs(cfg, refs, 2)
    acc_t = jnp.promote_types(q_ref.dtype, jnp.float32)
    q, g = q_ref[...], g_ref[...]
    lse, delta = lse_ref[...].astype(acc_t), delta_ref[...].astype(acc_t)
    q0 = pl.program_id(2) * cfg.block

    def body(dq, loaded, visible):
        k, v = loaded
        p = jnp.where(visible, jnp.exp(_dot(q, k, "nt", acc_t) * cfg.scale - lse[:, None]), 0.0)
        ds = jnp.where(visible, p * (_dot(g, v, "nt", acc_t) - delta[:, None]), 0.0)
        return dq + _dot(ds.astype(k.dtype), finite_part(k), "nn", acc_t) * cfg.scale

    dq = _query_side_walk(cfg, q0, sources, mem, mpos, body, jnp.zeros(q.shape, acc_t))
    dq_ref[...] = dq.astype(dq_ref.dtype)


def _key_side_kernel(k_ref, v_ref, *refs, cfg: Config, kind: str):
    """dk, dv (per query head) of one key block ("context"/"fading") or one snapshot ("memory")."""
    if kind == "memory":
        mpos_ref, q_ref, g_ref, lse_ref, delta_ref, dk_ref, dv_ref = refs
        c_idx = pl.program_id(2)
        k_pos = mpos_ref[...]
        first_q = c_idx * cfg.chunk
        last_q = jnp.minimum(first_q + cfg.chunk, cfg.length) - 1
    else:
        q_ref, g_ref, lse_ref, delta_ref, dk_ref, dv_ref = refs
        k0 = pl.program_id(2) * cfg.block
        k_pos = k0 + jnp.arange(cfg.block)
        near, far = (0, cfg.window - 1) if kind == "context" else (cfg.window, 2 * cfg.window - 1)
        first_q = k0 + near
        last_q = jnp.minimum(k0 + cfg.block - 1 + far, cfg.length - 1)
    acc_t = jnp.promote_types(q_ref.dtype, jnp.float32)
    k, v = k_ref[...], v_ref[...]
    b = cfg.block

    def step(i, carry):
        dk, dv = carry
        start = i * b
        q_pos = start + jnp.arange(b)
        q, g = q_ref[pl.ds(start, b), :], g_ref[pl.ds(start, b), :]
        lse = lse_ref[pl.ds(start, b)].astype(acc_t)
        delta = delta_ref[pl.ds(start, b)].astype(acc_t)
        if kind == "memory":
            visible = (masks.memory_visible(q_pos[:, None], k_pos[None, :], cfg.window,
                                            cfg.has_fading)
                       & (_div(q_pos, cfg.chunk) == c_idx)[:, None])
        else:
            visible_fn = masks.context_visible if kind == "context" else masks.fading_visible
            visible = visible_fn(q_pos[:, None], k_pos[None, :], cfg.window, cfg.length)
        visible = visible & (q_pos < cfg.length)[:, None]
        p = jnp.where(visible, jnp.exp(_dot(q, k, "nt", acc_t) * cfg.scale - lse[:, None]), 0.0)
        ds = jnp.where(visible, p * (_dot(g, v, "nt", acc_t) - delta[:, None]), 0.0)
        dv = dv + _dot(p.astype(g.dtype), g, "tn", acc_t)
        dk = dk + _dot(ds.astype(q.dtype), finite_part(q), "tn", acc_t) * cfg.scale
        return dk, dv

    lo = _div(jnp.maximum(first_q, 0), b)
    hi = _div(jnp.maximum(last_q + b, 0), b)
    init = (jnp.zeros(k.shape, acc_t), jnp.zeros(v.shape, acc_t))
    dk, dv = lax.fori_loop(lo, hi, step, init)
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


# ----------------------------------------------------------------------------- pallas_calls


def _specs(cfg: Config, shapes):
    """BlockSpecs for query blocks, whole-sequence kv heads, snapshots, lse rows."""
    lp, dp = shapes["lp"], shapes["dp"]
    chunks, mp = shapes["chunks"], shapes["mp"]
    b, g = cfg.block, cfg.group
    return {
        "q_block": pl.BlockSpec((None, b, None, dp), lambda i, h, j: (i, j, h, 0)),
        "q_all": pl.BlockSpec((None, lp, None, dp), lambda i, h, j: (i, 0, h, 0)),
        "kv_all": pl.BlockSpec((None, lp, None, dp), lambda i, h, j: (i, 0, h // g, 0)),
        "kv_block": pl.BlockSpec((None, b, None, dp), lambda i, h, j: (i, j, h // g, 0)),
        "mem_all": pl.BlockSpec((None, chunks, mp, None, dp),
                                lambda i, h, j: (i, 0, 0, h // g, 0)),
        "mpos_all": pl.BlockSpec((None, chunks, mp), lambda i, h, j: (i, 0, 0)),
        "mem_one": pl.BlockSpec((None, None, mp, None, dp), lambda i, h, j: (i, j, 0, h // g, 0)),
        "mem_one_q": pl.BlockSpec((None, None, mp, None, dp), lambda i, h, j: (i, j, 0, h, 0)),
        "mpos_one": pl.BlockSpec((None, None, mp), lambda i, h, j: (i, j, 0)),
        "row_block": pl.BlockSpec((None, None, b), lambda i, h, j: (i, h, j)),
        "row_all": pl.BlockSpec((None, None, lp), lambda i, h, j: (i, h, 0)),
    }


def _shapes(q, mpos):
    batch, lp, heads, dp = q.shape
    chunks, mp = (mpos.shape[1], mpos.shape[2]) if mpos is not None else (1, 1)
    return {"batch": batch, "lp": lp, "heads": heads, "dp": dp, "chunks": chunks, "mp": mp}


def _call(kernel, cfg: Config, grid, in_specs, out_specs, out_shape, name):
    return _compat.pallas_call(
        kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
        interpret=cfg.interpret, name=name, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _source_operands(cfg: Config, spec, seq, mem, mpos, per_source):
    """Flatten per-source operands and their specs in the order ``_split_refs`` expects."""
    ops, specs = [], []
    for arrays in seq:
        ops += arrays
        specs += [spec["kv_all"]] * per_source
    if cfg.has_memory:
        ops += mem + [mpos]
        specs += [spec["mem_all"]] * per_source + [spec["mpos_all"]]
    return ops, specs


def forward(cfg: Config, q, seq, mem, mpos):
    """seq: [[k, v], ([fk, fv])]; mem: [mk, mv] or []. Returns out (q layout), lse (B, H, Lp)."""
    sh = _shapes(q, mpos)
    spec = _specs(cfg, sh)
    grid = (sh["batch"], sh["heads"], sh["lp"] // cfg.block)
    ops, specs = _source_operands(cfg, spec, seq, mem, mpos, 2)
    lse_dtype = jnp.promote_types(q.dtype, jnp.float32)
    return _call(
        functools.partial(_forward_kernel, cfg=cfg), cfg, grid,
        [spec["q_block"]] + specs, [spec["q_block"], spec["row_block"]],
        [jax.ShapeDtypeStruct(q.shape, q.dtype),
         jax.ShapeDtypeStruct((sh["batch"], sh["heads"], sh["lp"]), lse_dtype)],
        "bmojo_attention_forward")(q, *ops)


def tangent(cfg: Config, q, dq, out, lse, seq, dseq, mem, dmem, mpos):
    """Tangent (dout, dlse) of the forward map at the primal, for tangents dq, dseq, dmem."""
    sh = _shapes(q, mpos)
    spec = _specs(cfg, sh)
    grid = (sh["batch"], sh["heads"], sh["lp"] // cfg.block)
    seq4 = [list(a) + list(d) for a, d in zip(seq, dseq)]
    ops, specs = _source_operands(cfg, spec, seq4, list(mem) + list(dmem), mpos, 4)
    return _call(
        functools.partial(_tangent_kernel, cfg=cfg), cfg, grid,
        [spec["q_block"]] * 3 + [spec["row_block"]] + specs,
        [spec["q_block"], spec["row_block"]],
        [jax.ShapeDtypeStruct(q.shape, out.dtype), jax.ShapeDtypeStruct(lse.shape, lse.dtype)],
        "bmojo_attention_tangent")(q, dq, out, lse, *ops)


def backward(cfg: Config, q, g, lse, delta, seq, mem, mpos):
    """Gradients in float32 (float64 for float64 q); per query head for keys and values
    (the caller sums each group of heads)."""
    sh = _shapes(q, mpos)
    spec = _specs(cfg, sh)
    nb = sh["lp"] // cfg.block
    acc_t = jnp.promote_types(q.dtype, jnp.float32)
    ops, specs = _source_operands(cfg, spec, seq, mem, mpos, 2)
    dq = _call(
        functools.partial(_dq_kernel, cfg=cfg), cfg, (sh["batch"], sh["heads"], nb),
        [spec["q_block"], spec["q_block"], spec["row_block"], spec["row_block"]] + specs,
        spec["q_block"], jax.ShapeDtypeStruct(q.shape, acc_t), "bmojo_attention_dq",
    )(q, g, lse, delta, *ops)
    q_side = [spec["q_all"], spec["q_all"], spec["row_all"], spec["row_all"]]
    per_head = (sh["batch"], sh["lp"], sh["heads"], sh["dp"])
    seq_grads = []
    for (k, v), kind in zip(seq, ("context", "fading")):
        seq_grads.append(_call(
            functools.partial(_key_side_kernel, cfg=cfg, kind=kind), cfg,
            (sh["batch"], sh["heads"], nb), [spec["kv_block"]] * 2 + q_side,
            [spec["q_block"]] * 2,
            [jax.ShapeDtypeStruct(per_head, acc_t)] * 2,
            f"bmojo_attention_dkv_{kind}")(k, v, q, g, lse, delta))
    mem_grads = []
    if cfg.has_memory:
        mk, mv = mem
        shape = (sh["batch"], sh["chunks"], sh["mp"], sh["heads"], sh["dp"])
        mem_grads = _call(
            functools.partial(_key_side_kernel, cfg=cfg, kind="memory"), cfg,
            (sh["batch"], sh["heads"], sh["chunks"]),
            [spec["mem_one"]] * 2 + [spec["mpos_one"]] + q_side, [spec["mem_one_q"]] * 2,
            [jax.ShapeDtypeStruct(shape, acc_t)] * 2,
            "bmojo_attention_dkv_memory")(mk, mv, mpos, q, g, lse, delta)
    return dq, seq_grads, list(mem_grads)
