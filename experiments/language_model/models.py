"""The models of the comparison: preset configs at matched parameter count, their length limit and
the size of their decoding state.

Every preset gets the experiment's width, heads, window and SSM state. The Transformer
(`transformer` at `n_layers` x `d_ff`) sets the parameter target; every other preset with an MLP keeps
`n_layers` and gets the MLP width d_ff (a multiple of `ff_multiple`) whose parameter count is closest
to the target; the MLP-free presets (mamba, mamba2: a Mamba block has no MLP) get the closest depth
instead (the Mamba paper's models are about twice as deep as the Transformers they match). This
matching rule is ours; the count of every model is stated in the results table. "PRESET+storage" is
PRESET's matched model with in-storage memory in its B'MOJO(-F) layers (no extra parameters).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

import bmojo
from experiments.language_model.config import Config, split_name


def base_fields(config: Config, vocab_size: int) -> dict:
    """ModelConfig fields shared by every preset."""
    return dict(vocab_size=vocab_size, d_model=config.d_model, n_heads=config.n_heads,
                n_kv_heads=config.n_kv_heads, window=config.window, ssm_state=config.ssm_state,
                memory_slots=config.memory_slots, max_len=config.max_len, dtype=config.dtype,
                attention_implementation=config.attention_implementation)


def is_hybrid(name: str) -> bool:
    """A preset that mixes SSM and attention blocks (its SSM is `Config.hybrid_ssm`)."""
    specs = bmojo.preset(name).layer_specs()
    return any(s.has_ssm for s in specs) and any(s.has_attention for s in specs)


def model_config(config: Config, name: str, vocab_size: int) -> bmojo.ModelConfig:
    """The `ModelConfig` of model `name` (a preset, or "PRESET+storage") with its parameter count
    matched to the Transformer's."""
    name, storage = split_name(name)
    matched = _matched(config, name, vocab_size)
    if not storage:
        return matched
    return dataclasses.replace(matched, storage_blocks=config.storage_blocks,
                               storage_block_size=config.storage_block_size,
                               storage_topk=config.storage_topk)


def _matched(config: Config, name: str, vocab_size: int) -> bmojo.ModelConfig:
    fields = base_fields(config, vocab_size)
    if is_hybrid(name):
        fields["ssm_kind"] = config.hybrid_ssm
    target = bmojo.preset("transformer", n_layers=config.n_layers, d_ff=config.d_ff,
                          **base_fields(config, vocab_size)).num_params()
    if name == "transformer":
        candidates = [dict(n_layers=config.n_layers, d_ff=config.d_ff)]
    elif bmojo.preset(name).d_ff:
        top = max(config.d_ff, config.ff_multiple) * 2
        candidates = [dict(n_layers=config.n_layers, d_ff=f)
                      for f in range(config.ff_multiple, top + 1, config.ff_multiple)]
    else:
        candidates = [dict(n_layers=n) for n in range(1, 4 * config.n_layers + 1)]
    configs = [bmojo.preset(name, **fields, **c) for c in candidates]
    return min(configs, key=lambda m: (abs(m.num_params() - target), m.num_params()))


def max_length(model: bmojo.ModelConfig) -> int | None:
    """The longest sequence `model` supports: `max_len` when it has full-attention blocks (beyond it
    they would silently become sliding windows), else None (no limit)."""
    return model.max_len if "attention" in model.block_types else None


def check_length(model: bmojo.ModelConfig, length: int, name: str = "model") -> None:
    """ValueError naming the limit if `model` cannot take sequences of `length` tokens."""
    limit = max_length(model)
    if limit is not None and length > limit:
        raise ValueError(f"{name}: sequences of {length} tokens are longer than its max_len = {limit} "
                         "(full attention); build it with a larger max_len")


def decoding_floats(model: bmojo.ModelConfig, context: int) -> int:
    """Floats in the decoding state (`bmojo.init_cache`, everything the decoder keeps, bookkeeping
    included) of one sequence after `context` tokens: constant for recurrent models; full attention
    keeps every token, so its cache is built for max_len = `context`."""
    if max_length(model) is not None:
        model = dataclasses.replace(model, max_len=context)
    cache = jax.eval_shape(lambda: bmojo.init_cache(model, 1))
    return sum(x.size for x in jax.tree.leaves(cache) if jnp.issubdtype(x.dtype, jnp.floating))
