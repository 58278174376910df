"""Recurrent inference: a fixed-size cache, one-token steps, and jit-compiled generation.

The cache has the same size whatever the number of generated tokens: SSM and conv states, ring
buffers of keys/values for the in-context and fading windows, the eidetic store. Full-attention
blocks keep a ring of ``max_len`` tokens (beyond it they act as sliding windows of ``max_len``).
``params`` below are the variables that ``LanguageModel(config).init`` returns.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from .config import ModelConfig
from .model import LanguageModel, ModelCache, check_tokens


def init_cache(config: ModelConfig, batch: int) -> ModelCache:
    """The empty cache for ``batch`` sequences (``LanguageModel.init_cache``): position 0 and one
    ``LayerCache`` per block."""
    return LanguageModel.init_cache(config, batch)


def _cache_batch(cache: ModelCache) -> int | None:
    leaves = [a for a in jax.tree.leaves(cache.blocks) if getattr(a, "ndim", 0) >= 2]
    return leaves[0].shape[0] if leaves else None


def decode_step(config: ModelConfig, params, cache: ModelCache, token):
    """Feed token (batch,) int at position ``cache.t``; returns (logits (batch, vocab), cache).

    ``token`` must match the cache's batch; concrete ids are checked against the vocabulary.
    """
    batch = _cache_batch(cache)
    check_tokens(token, config.vocab_size, name="token", layout="(batch,)",
                 shape=None if batch is None else (batch,))
    return LanguageModel(config).apply(params, token, cache, method=LanguageModel.step)


@functools.partial(jax.jit, static_argnums=(0, 3), static_argnames=("temperature",))
def _generate(config, params, prompt, steps, rng, temperature):
    step = functools.partial(decode_step, config, params)

    def prefill(cache, token):
        logits, cache = step(cache, token)
        return cache, logits

    cache, logits = jax.lax.scan(prefill, init_cache(config, prompt.shape[0]), prompt.T)

    def sample(carry, key):
        cache, logits = carry
        if temperature > 0:
            token = jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)
        else:
            token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logits, cache = step(cache, token)
        return (cache, logits), token

    _, tokens = jax.lax.scan(sample, (cache, logits[-1]), jax.random.split(rng, steps))
    return jnp.concatenate([prompt, tokens.T], axis=1)


def generate(config: ModelConfig, params, prompt, steps: int, *, temperature: float = 0.0, rng=None):
    """Extend prompt (batch, P) int32 by ``steps`` tokens: greedy (temperature 0) or sampled from
    softmax(logits / temperature) with ``rng``. Returns (batch, P + steps) int32."""
    check_tokens(jnp.asarray(prompt), config.vocab_size, name="prompt")
    prompt = jnp.asarray(prompt, jnp.int32)
    if prompt.shape[1] < 1:
        raise ValueError(f"prompt has shape {tuple(prompt.shape)}; expected (batch, length >= 1)")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps = {steps!r}; expected a positive integer")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature = {temperature!r}; expected a finite number >= 0 (0: greedy)")
    if temperature > 0 and rng is None:
        raise ValueError("rng is None; a PRNG key is needed when temperature > 0")
    rng = jax.random.key(0) if rng is None else rng
    return _generate(config, params, prompt, steps, rng, temperature=float(temperature))
