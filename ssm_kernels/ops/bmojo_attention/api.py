"""Public entry point ``bmojo_attention``: validation and dispatch."""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from ssm_kernels import _checks, _dispatch
from ssm_kernels.ops.bmojo_attention.pallas import pallas_attention
from ssm_kernels.ops.bmojo_attention.reference import attention_reference
from ssm_kernels.ops.bmojo_attention.xla import blocked_attention

IMPLEMENTATIONS = _dispatch.table(reference=attention_reference, xla=blocked_attention,
                                  pallas=pallas_attention, static_argnames=("window", "scale", "memory_chunk"))

_SEQ = "(batch, length, kv_heads, head_dim)"


def _check_together(names, values):
    given = [n for n, x in zip(names, values) if x is not None]
    if given and len(given) != len(names):
        missing = [n for n in names if n not in given]
        raise ValueError(
            f"{', '.join(given)} given without {', '.join(missing)}: "
            f"{' / '.join(names)} must be given together or not at all"
        )
    return bool(given)


def _check_memory(memory_k, memory_v, memory_pos, memory_chunk, k_shape, length):
    batch, _, kv_heads, head_dim = k_shape
    _checks.check_rank("memory_k", memory_k, (4, 5),
                       "(batch, slots, kv_heads, head_dim) or "
                       "(batch, chunks, slots, kv_heads, head_dim)")
    _checks.check_float("memory_k", memory_k)
    _checks.check_float("memory_v", memory_v)
    if memory_k.ndim == 4:
        if memory_chunk is not None:
            raise ValueError(
                f"memory_chunk={memory_chunk!r} is only used with per-chunk snapshots; memory_k "
                f"has shape {tuple(memory_k.shape)} (batch, slots, kv_heads, head_dim), so "
                "memory_chunk must be None"
            )
        slots = memory_k.shape[1]
        lead, layout = (batch,), "(batch, slots"
    else:
        if memory_chunk is None:
            raise ValueError(
                f"memory_k has shape {tuple(memory_k.shape)} (per-chunk snapshots); "
                "memory_chunk (a positive int) is required"
            )
        _checks.check_positive("memory_chunk", memory_chunk)
        chunks = -(-length // memory_chunk)
        slots = memory_k.shape[2]
        lead, layout = (batch, chunks), "(batch, chunks = ceil(length / memory_chunk), slots"
    _checks.check_shape("memory_k", memory_k, (*lead, slots, kv_heads, head_dim),
                        layout + ", kv_heads, head_dim)")
    _checks.check_shape("memory_v", memory_v, memory_k.shape, layout + ", kv_heads, head_dim)")
    _checks.check_shape("memory_pos", memory_pos, (*lead, slots), layout + ")")
    if not jnp.issubdtype(memory_pos.dtype, jnp.integer):
        raise ValueError(f"memory_pos has dtype {memory_pos.dtype}; expected an integer dtype "
                         "(int32 positions, -1 for an empty slot)")
    try:  # a traced memory_pos cannot be checked here: such slots are empty (see the docstring)
        positions = np.asarray(memory_pos)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    if positions.size and (positions.min() < -1 or positions.max() >= length):
        raise ValueError(
            f"memory_pos has entries from {positions.min()} to {positions.max()}; expected "
            f"positions in [-1, length={length}): a token position, or -1 for an empty slot")


def bmojo_attention(q, k, v, *, window, fading_k=None, fading_v=None, memory_k=None,
                    memory_v=None, memory_pos=None, memory_chunk=None, scale=None,
                    implementation=None):
    """Attention of each query over three key sources with one softmax (B'MOJO).

    Query i (positions 0..length-1) sees, with W = ``window``:
      in-context keys ``k[j]``,      i - W + 1 <= j <= i;
      fading keys ``fading_k[j]``,   i - 2W + 1 <= j <= i - W   (when given);
      eidetic slots ``memory_k[s]``, 0 <= memory_pos[s] <= i - W (- W more with fading).
    out_i = sum_j softmax_j(scale * q_i . key_j) value_j over all visible keys.

    Args:
      q: (batch, length, heads, head_dim).
      k, v, fading_k, fading_v: (batch, length, kv_heads, head_dim), heads % kv_heads == 0;
        query head h uses kv head h // (heads // kv_heads).
      memory_k, memory_v: (batch, slots, kv_heads, head_dim) shared by every query, or
        per-chunk snapshots (batch, chunks, slots, kv_heads, head_dim), query i reading
        snapshot i // memory_chunk, chunks = ceil(length / memory_chunk).
      memory_pos: integer (batch, slots) or (batch, chunks, slots); -1 marks an empty slot.
        Entries outside [-1, length) are a ValueError when memory_pos is concrete; a traced
        memory_pos (under jit) cannot be checked, and such slots are then empty (never seen).
        A store with 0 slots is the same as no store.
      scale: score scale, a finite positive number, default head_dim ** -0.5.
      implementation: None (auto: "pallas" on GPU/TPU, else "xla"), "xla" (blocked, linear in
        length), "reference" (naive masked attention over every key), "pallas" (flash kernel)
        or "interpret" (the kernel interpreted, runs on CPU).

    Returns:
      out (batch, length, heads, head_dim) in q.dtype and lse (batch, length, heads), the
      log-sum-exp of the scaled visible scores, float32 (float64 for float64 inputs); empty
      for length 0. A NaN or inf input reaches only the queries that see it: a non-finite
      value entry v_j[d] of a visible key enters out_i[d] as it is (NaN, or +/-inf), whatever
      its probability (``nonfinite``); a non-finite query or visible key score makes
      the row's softmax non-finite as in plain attention.
    """
    _checks.check_rank("q", q, 4, "(batch, length, heads, head_dim)")
    _checks.check_rank("k", k, 4, _SEQ)
    for name, x in (("q", q), ("k", k), ("v", v)):
        _checks.check_float(name, x)
    batch, length, heads, head_dim = q.shape
    if head_dim == 0:
        raise ValueError(f"q has shape {tuple(q.shape)}; expected head_dim > 0 in "
                         "(batch, length, heads, head_dim)")
    kv_heads = k.shape[2]
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"k has shape {tuple(k.shape)}; expected kv_heads dividing heads = "
                         f"{heads} in {_SEQ}")
    _checks.check_shape("k", k, (batch, length, kv_heads, head_dim), _SEQ)
    _checks.check_shape("v", v, k.shape, _SEQ)
    _checks.check_positive("window", window)
    if _check_together(("fading_k", "fading_v"), (fading_k, fading_v)):
        for name, x in (("fading_k", fading_k), ("fading_v", fading_v)):
            _checks.check_float(name, x)
            _checks.check_shape(name, x, k.shape, _SEQ)
    if _check_together(("memory_k", "memory_v", "memory_pos"), (memory_k, memory_v, memory_pos)):
        _check_memory(memory_k, memory_v, memory_pos, memory_chunk, k.shape, length)
    elif memory_chunk is not None:
        raise ValueError(f"memory_chunk={memory_chunk!r} given without memory_k / memory_v / "
                         "memory_pos")
    if scale is None:
        scale = head_dim ** -0.5
    elif (isinstance(scale, bool) or not isinstance(scale, numbers.Real)
          or not math.isfinite(scale) or scale <= 0):
        raise ValueError(f"scale must be a finite positive Python number (static); got {scale!r}")
    fn = _dispatch.resolve("bmojo_attention", implementation, IMPLEMENTATIONS)
    if memory_k is not None and memory_pos.shape[-1] == 0:  # 0 slots: the same as no store
        memory_k = memory_v = memory_pos = memory_chunk = None
    if batch * length == 0:
        lse_dtype = jnp.promote_types(q.dtype, jnp.float32)
        return jnp.zeros(q.shape, q.dtype), jnp.zeros((batch, length, heads), lse_dtype)
    return fn(q, k, v, window=window, fading_k=fading_k, fading_v=fading_v, memory_k=memory_k,
              memory_v=memory_v, memory_pos=memory_pos, memory_chunk=memory_chunk,
              scale=float(scale))
