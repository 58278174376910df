"""What the study measures: recall accuracy at the query positions and each model's total memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import bmojo
from bmojo.config import ATTENTION_TYPES, SSM_TYPES


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
    state = jax.eval_shape(lambda: bmojo.mamba.init_state(model, 1))
    ssm = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))
    total = 0
    for kind in model.block_types:
        if kind in ATTENTION_TYPES:
            total += kv * (min(seq_len, model.max_len) if kind == "attention" else model.window)
        if model.uses_fading(kind):
            total += kv * model.window
        if kind in SSM_TYPES:
            total += ssm
        if model.uses_memory(kind):
            total += kv * model.memory_slots
    return total


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of a list of numbers."""
    values = np.asarray(list(values), np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
