"""Innovation test and eidetic store (pure functions, static capacity).

The store of one layer holds ``slots`` tokens: their keys and values (batch, slots, kv_heads,
head_dim), positions ``pos`` (batch, slots) int32 (-1: empty) and innovation scores ``score``
(batch, slots) float32 (-inf: empty). After chunk c (tokens cC .. cC+C-1) the C tokens that
have just left every window, positions ``cC - H + 1 .. cC + C - H`` (``H`` = the layer's
horizon, see ``ModelConfig.horizon``), are the candidates: each token is a candidate exactly
once. ``update_store`` applies the rule; ``store_snapshots`` runs it over a whole sequence and
returns the store as it was at the start of every chunk, which is what the queries of that
chunk may read. Decoding calls ``update_store`` with the same candidates after the last token of
each chunk.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class StoreRule:
    """Selection (``"topk"``, or ``"threshold"``: the top-k among scores > threshold) and eviction
    (``"oldest"`` position first, or ``"lowest"`` score first)."""

    topk: int
    select: str = "topk"
    threshold: float = 0.0
    evict: str = "oldest"

    @classmethod
    def from_config(cls, config) -> "StoreRule":
        return cls(config.memory_topk, config.memory_select, config.memory_threshold, config.memory_evict)


def innovation(x, prediction):
    """Per-token innovation ``mean_d (x - prediction)^2``: (..., d) -> (...) float32."""
    diff = x.astype(jnp.float32) - prediction.astype(jnp.float32)
    return jnp.mean(diff * diff, axis=-1)


def empty_store(batch: int, slots: int, kv_heads: int, head_dim: int, dtype=jnp.float32) -> dict:
    return {"k": jnp.zeros((batch, slots, kv_heads, head_dim), dtype),
            "v": jnp.zeros((batch, slots, kv_heads, head_dim), dtype),
            "pos": jnp.full((batch, slots), -1, jnp.int32),
            "score": jnp.full((batch, slots), NEG_INF, jnp.float32)}


def _gather(x, idx):
    """x: (batch, n, ...), idx: (batch, m) -> (batch, m, ...)."""
    return jax.vmap(lambda a, i: a[i])(x, idx)


def update_store(store: dict, k, v, pos, score, valid, rule: StoreRule) -> dict:
    """Insert selected candidates into ``store``.

    k, v: (batch, C, kv_heads, head_dim) candidate keys/values; pos: (batch, C) int32 positions;
    score: (batch, C) innovations; valid: (batch, C) bool (candidate exists).
    Selection keeps up to ``rule.topk`` valid candidates with the largest scores (``threshold``:
    only scores > ``rule.threshold``); then the store keeps the ``slots`` entries with the
    largest priority among old and selected ones (priority = position for ``"oldest"`` eviction,
    score for ``"lowest"``).
    """
    slots = store["pos"].shape[1]
    eligible = valid & (score > rule.threshold) if rule.select == "threshold" else valid
    masked = jnp.where(eligible, score.astype(jnp.float32), NEG_INF)
    top, idx = jax.lax.top_k(masked, min(rule.topk, masked.shape[1]))
    chosen = top > NEG_INF
    merged = {"k": jnp.concatenate([store["k"], _gather(k, idx).astype(store["k"].dtype)], axis=1),
              "v": jnp.concatenate([store["v"], _gather(v, idx).astype(store["v"].dtype)], axis=1),
              "pos": jnp.concatenate([store["pos"], jnp.where(chosen, _gather(pos, idx), -1)], axis=1),
              "score": jnp.concatenate([store["score"], top], axis=1)}
    occupied = merged["pos"] >= 0
    key = merged["pos"].astype(jnp.float32) if rule.evict == "oldest" else merged["score"]
    priority = jnp.where(occupied, key, NEG_INF)
    kept, keep = jax.lax.top_k(priority, slots)
    out = {name: _gather(a, keep) for name, a in merged.items()}
    empty = kept == NEG_INF
    out["pos"] = jnp.where(empty, -1, out["pos"])
    out["score"] = jnp.where(empty, NEG_INF, out["score"])
    return out


def chunk_candidates(chunk_index, chunk: int, horizon: int):
    """Positions (C,) of the tokens that leave every window during chunk ``chunk_index``."""
    return chunk_index * chunk - horizon + 1 + jnp.arange(chunk)


def store_snapshots(k, v, score, *, slots: int, chunk: int, horizon: int, rule: StoreRule):
    """Run the store over a sequence; returns (snapshots, final store).

    k, v: (batch, length, kv_heads, head_dim); score: (batch, length).
    snapshots: the store at the start of each chunk, with a chunk axis after batch:
    k/v (batch, chunks, slots, kv_heads, head_dim), pos/score (batch, chunks, slots).
    """
    batch, length, kv_heads, head_dim = k.shape
    chunks = -(-length // chunk)

    def body(store, c):
        pos = chunk_candidates(c, chunk, horizon)
        valid = (pos >= 0) & (pos < length)
        safe = jnp.clip(pos, 0, length - 1)
        new = update_store(store, k[:, safe], v[:, safe], jnp.broadcast_to(pos, (batch, chunk)),
                           score[:, safe], jnp.broadcast_to(valid, (batch, chunk)), rule)
        return new, store

    final, snaps = jax.lax.scan(body, empty_store(batch, slots, kv_heads, head_dim, k.dtype),
                                jnp.arange(chunks))
    return jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), snaps), final
