"""What the study measures: recall accuracy at the query positions and each model's total memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import bmojo


def masked_accuracy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
    """logits (batch, length, vocab), targets and mask (batch, length) -> sums over the masked positions:
    correct = sum_t mask_t [argmax logits_t == target_t], count = sum_t mask_t."""
    hit = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return {"correct": jnp.sum(hit * mask), "count": jnp.sum(mask)}


def memory_floats(model: bmojo.ModelConfig, seq_len: int) -> int:
    """Total memory of a model reading a sequence of `seq_len` tokens, in floats, as B'MOJO's MQAR figure
    counts it (SSM state + eidetic memory + KV cache), summed over layers:

    - attention keys and values it can read: full attention 2 L kv_heads head_dim (L = seq_len), a
      window 2 W kv_heads head_dim, B'MOJO's fading window another 2 W kv_heads head_dim;
    - the SSM's recurrent and convolution states;
    - B'MOJO's eidetic store, 2 M kv_heads head_dim.

    Bookkeeping of the decoder (positions, scores, candidates waiting to enter the store) is not
    counted, so this is at most the size of `bmojo.init_cache`.
    """
    kv = 2 * model.n_kv_heads * model.head_dim
    state = jax.eval_shape(lambda: bmojo.mamba.mixer_type(model.ssm_kind).init_cache(model, 1))
    ssm = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))
    total = 0
    for spec in model.layer_specs():
        if spec.has_attention:
            total += kv * (min(seq_len, spec.window) if spec.kind == bmojo.BlockType.ATTENTION else spec.window)
        if spec.fading:
            total += kv * spec.window
        if spec.has_ssm:
            total += ssm
        if spec.memory:
            total += kv * model.memory_slots
    return total


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of a list of numbers."""
    values = np.asarray(list(values), np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
