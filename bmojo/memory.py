"""Innovation test and eidetic store (pure functions, static capacity).

Innovation (what the fading memory failed to predict). With ``Predictor.FIXED`` (the paper's
Algorithm 1) a fixed, parameter-free predictor forecasts the SSM output ``y_t`` from its own recent
past, and the innovation is the squared prediction error::

    yhat_t = (1 / n_t) sum_{i=1}^{n_t} y_{t-i},   n_t = min(t, k)   (yhat_0 = 0)
    e_t    = || y_t - yhat_t ||^2

a running average of the last ``k`` outputs (equal weights and the shorter average over the first
``k`` tokens are our choice; the paper names a running weighted average without its weights). With
``Predictor.LEARNED`` (ours) a linear map predicts the layer input ``x_t`` from ``y_{t-1}`` and
``e_t = mean_d (x_t - P y_{t-1})^2``, trained by an auxiliary loss (see ``bmojo.layer``).

The store of one layer holds ``slots`` tokens: their keys and values (batch, slots, kv_heads,
head_dim), positions ``pos`` (batch, slots) int32 (-1: empty) and innovation scores ``score``
(batch, slots) float32 (-inf: empty). After chunk c (tokens cC .. cC+C-1) the C tokens that
have just left every window, positions ``cC - H + 1 .. cC + C - H`` (``H`` = the layer's
horizon, see ``LayerSpec.horizon``), are the candidates: each token is a candidate exactly
once. ``update_store`` applies the rule; ``store_snapshots`` runs it over a whole sequence and
returns the store as it was at the start of every chunk, which is what the queries of that
chunk may read. Decoding calls ``update_store`` with the same candidates after the last token of
each chunk.

Rules (``StoreRule``). The paper's (``Selection.ALL`` with ``Eviction.LOWEST``): the store keeps
the ``slots`` highest-innovation tokens seen so far; a candidate enters when its innovation beats
the store's current minimum, which is evicted. Taking candidates one at a time in that way and
keeping the top ``slots`` of (store + candidates) by score give the same store (ties keep the
older token), which is how it is computed. Ours, as options: at most ``topk`` candidates per chunk
(``Selection.TOPK``), or only those above a threshold (``Selection.THRESHOLD``), and eviction of the
oldest entry instead of the lowest-scored one (``Eviction.OLDEST``).
"""

from __future__ import annotations

import dataclasses
import enum
import functools

import jax
import jax.numpy as jnp
from flax import struct

NEG_INF = -jnp.inf


class Predictor(str, enum.Enum):
    """How the innovation is predicted: ``fixed`` running average of the SSM output (paper) or a
    ``learned`` linear map with an auxiliary loss (ours)."""

    FIXED = "fixed"
    LEARNED = "learned"


class Selection(str, enum.Enum):
    """Which candidates of a chunk may enter the store: ``all`` (paper), the ``topk`` by innovation,
    or the top-k of those above a ``threshold`` (ours)."""

    ALL = "all"
    TOPK = "topk"
    THRESHOLD = "threshold"


class Eviction(str, enum.Enum):
    """Which entries leave a full store: the ``lowest``-scored (paper) or the ``oldest`` (ours)."""

    LOWEST = "lowest"
    OLDEST = "oldest"


@dataclasses.dataclass(frozen=True)
class StoreRule:
    """Selection (with ``topk`` and ``threshold`` where it uses them) and eviction of a store."""

    select: Selection = Selection.ALL
    evict: Eviction = Eviction.LOWEST
    topk: int = 1
    threshold: float = 0.0

    @classmethod
    def from_config(cls, config) -> "StoreRule":
        return cls(Selection(config.memory_select), Eviction(config.memory_evict), config.memory_topk,
                   config.memory_threshold)


def innovation(x, prediction):
    """Per-token innovation ``mean_d (x - prediction)^2``: (..., d) -> (...) float32."""
    diff = x.astype(jnp.float32) - prediction.astype(jnp.float32)
    return jnp.mean(diff * diff, axis=-1)


def running_mean_innovation(y, order: int, history=None, start=0):
    """The fixed predictor's innovation ``e_t = ||y_t - mean(y_{t-n_t} .. y_{t-1})||^2``.

    y: (batch, length, d) SSM outputs of positions ``start .. start + length - 1``; ``history``
    (batch, order, d): the ``order`` outputs before them, oldest first (zeros where none exist;
    None at the start of a sequence); ``start``: int32 scalar, outputs seen before ``y``.
    Returns (e (batch, length) float32, the new history: the last ``order`` outputs).
    """
    batch, length, d = y.shape
    y = y.astype(jnp.float32)
    if history is None:
        history = jnp.zeros((batch, order, d), jnp.float32)
    padded = jnp.concatenate([history.astype(jnp.float32), y], axis=1)  # (batch, order + length, d)
    # Missing outputs are zeros in ``padded``, so the sum over the last ``order`` is exact.
    total = sum(padded[:, order - i:order - i + length] for i in range(1, order + 1))
    n = jnp.minimum(start + jnp.arange(length), order).astype(jnp.float32)[None, :, None]
    diff = y - jnp.where(n > 0, total / jnp.maximum(n, 1.0), 0.0)
    return jnp.sum(diff * diff, axis=-1), padded[:, length:]


@struct.dataclass
class Store:
    """The eidetic store: ``k``, ``v`` (batch, slots, kv_heads, head_dim) of the stored tokens,
    their positions ``pos`` (batch, slots) int32 (-1: empty slot) and innovations ``score``
    (batch, slots) float32 (-inf: empty). Snapshots per chunk carry a chunk axis after batch."""

    k: jax.Array
    v: jax.Array
    pos: jax.Array
    score: jax.Array


def empty_store(batch: int, slots: int, kv_heads: int, head_dim: int, dtype=jnp.float32) -> Store:
    return Store(k=jnp.zeros((batch, slots, kv_heads, head_dim), dtype),
                 v=jnp.zeros((batch, slots, kv_heads, head_dim), dtype),
                 pos=jnp.full((batch, slots), -1, jnp.int32),
                 score=jnp.full((batch, slots), NEG_INF, jnp.float32))


def _gather(x, idx):
    """x: (batch, n, ...), idx: (batch, m) -> (batch, m, ...)."""
    return jax.vmap(lambda a, i: a[i])(x, idx)


def update_store(store: Store, k, v, pos, score, valid, rule: StoreRule) -> Store:
    """Insert selected candidates into ``store``.

    k, v: (batch, C, kv_heads, head_dim) candidate keys/values; pos: (batch, C) int32 positions;
    score: (batch, C) innovations; valid: (batch, C) bool (candidate exists).
    Selection keeps the valid candidates (``TOPK``/``THRESHOLD``: at most ``rule.topk`` of them with
    the largest scores; ``THRESHOLD``: only scores > ``rule.threshold``); then the store keeps the
    ``slots`` entries with the largest priority among old and selected ones (priority = score for
    ``LOWEST`` eviction, position for ``OLDEST``; ties keep the entry already in the store).
    A NaN score counts as the lowest possible, so it never evicts a stored token.
    """
    slots = store.pos.shape[1]
    score = jnp.where(jnp.isnan(score), NEG_INF, score.astype(jnp.float32))
    eligible = valid & (score > rule.threshold) if rule.select == Selection.THRESHOLD else valid
    masked = jnp.where(eligible, score, NEG_INF)
    count = masked.shape[1] if rule.select == Selection.ALL else min(rule.topk, masked.shape[1])
    top, idx = jax.lax.top_k(masked, count)
    chosen = jnp.take_along_axis(eligible, idx, axis=1)
    merged = Store(k=jnp.concatenate([store.k, _gather(k, idx).astype(store.k.dtype)], axis=1),
                   v=jnp.concatenate([store.v, _gather(v, idx).astype(store.v.dtype)], axis=1),
                   pos=jnp.concatenate([store.pos, jnp.where(chosen, _gather(pos, idx), -1)], axis=1),
                   score=jnp.concatenate([store.score, jnp.where(chosen, top, NEG_INF)], axis=1))
    occupied = merged.pos >= 0
    if rule.evict == Eviction.OLDEST:
        priority = jnp.where(occupied, merged.pos.astype(jnp.float32), NEG_INF)
    else:
        # Occupied entries rank by score (even a score of -inf beats an empty entry).
        priority = jnp.where(occupied, merged.score, NEG_INF)
        priority = jnp.where(occupied & jnp.isneginf(priority), jnp.finfo(jnp.float32).min, priority)
    _, keep = jax.lax.top_k(priority, slots)
    out = jax.tree.map(lambda a: _gather(a, keep), merged)
    empty = out.pos < 0
    return out.replace(pos=jnp.where(empty, -1, out.pos), score=jnp.where(empty, NEG_INF, out.score))


def chunk_candidates(chunk_index, chunk: int, horizon: int):
    """Positions (C,) of the tokens that leave every window during chunk ``chunk_index``."""
    return chunk_index * chunk - horizon + 1 + jnp.arange(chunk)


@functools.partial(jax.jit, static_argnames=("slots", "chunk", "horizon", "rule"))
def store_snapshots(k, v, score, *, slots: int, chunk: int, horizon: int, rule: StoreRule):
    """Run the store over a sequence; returns (snapshots, final store). Jitted (the sizes and
    ``rule`` static), so repeated eager calls compile once.

    k, v: (batch, length, kv_heads, head_dim); score: (batch, length).
    snapshots: the ``Store`` at the start of each chunk, with a chunk axis after batch:
    k/v (batch, chunks, slots, kv_heads, head_dim), pos/score (batch, chunks, slots).
    """
    batch, length, kv_heads, head_dim = k.shape
    chunks = -(-length // chunk)
    store = empty_store(batch, slots, kv_heads, head_dim, k.dtype)
    if length == 0:  # no chunk, no snapshot
        return jax.tree.map(lambda a: jnp.zeros((batch, 0, *a.shape[1:]), a.dtype), store), store

    def body(store, c):
        pos = chunk_candidates(c, chunk, horizon)
        valid = (pos >= 0) & (pos < length)
        safe = jnp.clip(pos, 0, length - 1)
        new = update_store(store, k[:, safe], v[:, safe], jnp.broadcast_to(pos, (batch, chunk)),
                           score[:, safe], jnp.broadcast_to(valid, (batch, chunk)), rule)
        return new, store

    final, snaps = jax.lax.scan(body, store, jnp.arange(chunks))
    return jax.tree.map(lambda a: jnp.moveaxis(a, 0, 1), snaps), final
