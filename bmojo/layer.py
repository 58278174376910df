"""The B'MOJO layer: fading memory (SSM), innovation test, eidetic store, one attention.

Depending on the block type (``bmojo.config.BlockType``; what each holds is its
``ModelConfig.layer_spec``) parts are switched off, which gives the special cases: attention
alone (``"attention"``, ``"swa"``), the SSM alone (``"mamba"``), SSM + attention over the
in-context and fading windows (``"bmojo_f"``), and all three sources (``"bmojo"``).

For input x (batch, L, d_model), window W, chunk C:
  f = SSM(x)
  e = innovation of each token (``bmojo.memory``): the paper's fixed predictor
      e_t = ||f_t - mean(f_{t-k} .. f_{t-1})||^2, or our learned one
      e_t = mean_d (x_t - P f_{t-1})^2 with aux = mean_t e_t (stop-gradient on x and f: it
      trains only P)
  store: ``memory.store_snapshots`` on (k_t, v_t, stop_gradient(e_t)), one snapshot per chunk
  storage (optional): ``storage.retrieve``, the most relevant far-past blocks per chunk
  out = o(bmojo_attention(q(x), k(x), v(x), fading = k(f), v(f), slots = snapshots + retrieved))
The fading window is f[i-2W+1 .. i-W]. Our option ``ssm_residual`` adds f to the output.

Decoding (``step``) carries a ``LayerCache`` made by ``BMojoLayer.init_cache``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

import ssm_kernels
from ssm_kernels.ops.bmojo_attention import masks

from . import mamba, memory, storage
from .attention import AttentionCache, SlidingWindowAttention, attend_step
from .config import BlockType, LayerSpec, ModelConfig
from .memory import Predictor


@struct.dataclass
class MemoryCache:
    """Decoding state of the eidetic store: ``score`` (batch, size) float32, the innovations of the
    tokens in the layer's context ring (same slots); ``f_past`` (batch, innovation_order or 1,
    d_model) float32, the last SSM outputs the predictor reads; ``store``, the store of
    ``bmojo.memory`` (k, v, pos, score)."""

    score: jax.Array
    f_past: jax.Array
    store: memory.Store


@struct.dataclass
class LayerCache:
    """Decoding state of one layer; a part the layer does not have is None.

    ``ssm``: the mixer's states; ``context``: keys/values of the in-context window (kept, with an
    eidetic store, until they have been store candidates; with in-storage memory, at least one
    block); ``fading``: keys/values of the fading window (2W positions); ``memory``: the eidetic
    store and what updates it; ``storage``: stored blocks and the slots retrieved for the chunk.
    """

    ssm: mamba.MambaCache | None
    context: AttentionCache | None
    fading: AttentionCache | None
    memory: MemoryCache | None
    storage: storage.StorageCache | None


class BMojoLayer(nn.Module):
    """One mixer layer of block type ``kind``: (batch, L, d_model) -> ((batch, L, d_model), aux).

    ``aux`` is the learned predictor's loss (0 otherwise). With an eidetic store,
    ``apply(..., mutable=["intermediates"])`` also returns the innovation scores ``"innovation"``
    (batch, L) and the final store ``"store"`` (its ``pos`` and ``score``).
    """

    config: ModelConfig
    kind: BlockType | str = BlockType.BMOJO

    def setup(self):
        c = self.config
        self.spec = c.layer_spec(self.kind)
        if self.spec.has_ssm:
            self.ssm = mamba.mixer_type(self.spec.ssm)(c)
        if self.spec.has_attention:
            self.attn = SlidingWindowAttention(c, self.spec.window)
        if self.spec.learned_predictor:
            self.predictor = nn.Dense(c.d_model, dtype=c.dtype)

    @staticmethod
    def init_cache(config: ModelConfig, kind: BlockType | str, batch: int) -> LayerCache:
        """The decoding state of a layer of block type ``kind`` before the first token, for ``batch``
        sequences."""
        c, spec = config, config.layer_spec(kind)
        ssm = mamba.mixer_type(spec.ssm).init_cache(c, batch) if spec.has_ssm else None
        if not spec.has_attention:
            return LayerCache(ssm=ssm, context=None, fading=None, memory=None, storage=None)
        size = spec.horizon + c.chunk_size if spec.memory else spec.window
        if spec.storage:  # a completed block is read back from the context ring
            size = max(size, c.storage_block_size)
        eidetic = stored = None
        if spec.memory:
            past = 1 if spec.learned_predictor else c.innovation_order
            eidetic = MemoryCache(
                score=jnp.zeros((batch, size), jnp.float32),
                f_past=jnp.zeros((batch, past, c.d_model), jnp.float32),
                store=memory.empty_store(batch, c.memory_slots, c.n_kv_heads, c.head_dim, c.dtype))
        if spec.storage:
            stored = storage.empty_cache(batch, **_storage_sizes(c, spec), chunk=c.chunk_size,
                                         kv_heads=c.n_kv_heads, head_dim=c.head_dim, dtype=c.dtype)
        return LayerCache(
            ssm=ssm, context=SlidingWindowAttention.init_cache(c, batch, size),
            fading=SlidingWindowAttention.init_cache(c, batch, 2 * spec.window) if spec.fading else None,
            memory=eidetic, storage=stored)

    def _innovation(self, x, f, f_past, start):
        """Innovations (batch, L) of x, f (batch, L, d) at positions start..; f_past: the SSM
        outputs before f (cache layout). Returns (e, aux, new f_past)."""
        f = jax.lax.stop_gradient(f)
        if self.config.innovation == Predictor.FIXED:
            e, f_past = memory.running_mean_innovation(f, self.config.innovation_order, f_past, start)
            return e, jnp.zeros((), jnp.float32), f_past
        before = jnp.zeros_like(f[:, :1]) if f_past is None else f_past.astype(f.dtype)
        f_prev = jnp.concatenate([before, f[:, :-1]], axis=1)
        e = memory.innovation(jax.lax.stop_gradient(x), self.predictor(f_prev))
        return e, jnp.mean(e), f[:, -1:].astype(jnp.float32)

    def _output(self, out, f):
        """o(attention) (+ f with ``ssm_residual``)."""
        y = self.attn.output(out)
        return y + f.astype(y.dtype) if self.spec.fading and self.config.ssm_residual else y

    def __call__(self, x):
        c, spec = self.config, self.spec
        f = self.ssm(x) if spec.has_ssm else None
        aux = jnp.zeros((), jnp.float32)
        if not spec.has_attention:
            return f, aux
        positions = jnp.arange(x.shape[1])
        k, v = self.attn.keys_values(x, positions)
        q = self.attn.queries(x, positions)
        sources = {}
        if spec.fading:
            sources["fading_k"], sources["fading_v"] = self.attn.keys_values(f, positions)
        slots = []
        if spec.memory:
            e, aux, _ = self._innovation(x, f, None, 0)
            self.sow("intermediates", "innovation", e)
            snaps, final = memory.store_snapshots(
                k, v, e, slots=c.memory_slots, chunk=c.chunk_size, horizon=spec.horizon,
                rule=memory.StoreRule.from_config(c))
            self.sow("intermediates", "store", {"pos": final.pos, "score": final.score})
            slots.append((snaps.k, snaps.v, snaps.pos))
        if spec.storage:
            retrieved = storage.retrieve(q, k, v, stored_pos=slots[0][2] if slots else None,
                                         chunk=c.chunk_size, **_storage_sizes(c, spec))
            self.sow("intermediates", "retrieved", retrieved[2])
            slots.append(retrieved)
        if slots:
            sources.update(memory_k=jnp.concatenate([s[0] for s in slots], axis=2),
                           memory_v=jnp.concatenate([s[1] for s in slots], axis=2),
                           memory_pos=jnp.concatenate([s[2] for s in slots], axis=2),
                           memory_chunk=c.chunk_size)
        out, _ = ssm_kernels.bmojo_attention(
            q, k, v, window=spec.window, implementation=c.attention_implementation, **sources)
        return self._output(out, f), aux

    def step(self, x, cache: LayerCache, t):
        """One token x: (batch, d_model) at position t (int32 scalar) -> (y, new cache)."""
        spec = self.spec
        f = None
        if spec.has_ssm:
            f, ssm = self.ssm.step(x, cache.ssm)
            cache = cache.replace(ssm=ssm)
        if not spec.has_attention:
            return f, cache
        pos1 = t[None]
        q = self.attn.queries(x[:, None], pos1)[:, 0]
        k, v = self.attn.keys_values(x[:, None], pos1)
        cache = cache.replace(context=cache.context.write(t, k[:, 0], v[:, 0]))
        # decoding masks: the rules of the attention op for query t with t + 1 tokens so far
        w, context = spec.window, cache.context
        sources = [(context.k, context.v, masks.context_visible(t, context.pos, w, t + 1))]
        if spec.fading:
            fk, fv = self.attn.keys_values(f[:, None], pos1)
            fading = cache.fading.write(t, fk[:, 0], fv[:, 0])
            cache = cache.replace(fading=fading)
            sources.append((fading.k, fading.v, masks.fading_visible(t, fading.pos, w, t + 1)))
        if spec.memory:
            e, _, f_past = self._innovation(x[:, None], f[:, None], cache.memory.f_past, t)
            score = cache.memory.score.at[:, t % context.pos.shape[0]].set(e[:, 0])
            cache = cache.replace(memory=cache.memory.replace(score=score, f_past=f_past))
            store = cache.memory.store
            sources.append((store.k, store.v, masks.memory_visible(t, store.pos, w, spec.fading)))
        if spec.storage:
            cache = cache.replace(storage=self._retrieve_at_chunk_start(cache, q, t))
            retrieved = cache.storage
            sources.append((retrieved.k, retrieved.v, masks.memory_visible(t, retrieved.pos, w, spec.fading)))
        y = self._output(attend_step(q, sources), f)
        if spec.memory:
            cache = cache.replace(memory=cache.memory.replace(store=self._update_store_at_chunk_end(cache, t)))
        if spec.storage:
            cache = cache.replace(storage=cache.storage.replace(ring=self._store_completed_block(cache, t)))
        return y, cache

    def _retrieve_at_chunk_start(self, cache: LayerCache, q, t) -> storage.StorageCache:
        """At the first token of a chunk, the slots retrieved with its query q (batch, heads, head_dim)."""
        c, old = self.config, cache.storage
        stored_pos = cache.memory.store.pos if self.spec.memory else None
        k, v, pos = storage.ring_retrieve(old.ring, q, t, stored_pos=stored_pos, **_storage_sizes(c, self.spec))
        starts = t % c.chunk_size == 0
        keep = lambda new, before: jnp.where(starts, new.astype(before.dtype), before)  # noqa: E731
        return old.replace(k=keep(k, old.k), v=keep(v, old.v), pos=keep(pos, old.pos))

    def _store_completed_block(self, cache: LayerCache, t) -> storage.StorageRing:
        """After the last token of a block, copy the block from the context ring into storage."""
        b, ring = self.config.storage_block_size, cache.storage.ring
        k, v, _ = cache.context.read(t - b + 1 + jnp.arange(b))
        updated = storage.ring_insert(ring, (t + 1) // b - 1, k, v)
        done = (t + 1) % b == 0
        return jax.tree.map(lambda new, old: jnp.where(done, new, old), updated, ring)

    def _update_store_at_chunk_end(self, cache: LayerCache, t) -> memory.Store:
        """After the last token of a chunk, offer the store the tokens that have just left every
        window (``memory.chunk_candidates``)."""
        c, store = self.config, cache.memory.store
        batch = store.pos.shape[0]
        pos = memory.chunk_candidates(t // c.chunk_size, c.chunk_size, self.spec.horizon)
        k, v, valid = cache.context.read(pos)
        score = cache.memory.score[:, pos % cache.context.pos.shape[0]]
        bcast = lambda a: jnp.broadcast_to(a, (batch, c.chunk_size))  # noqa: E731
        updated = memory.update_store(store, k, v, bcast(pos), score, bcast(valid), memory.StoreRule.from_config(c))
        at_end = (t + 1) % c.chunk_size == 0
        return jax.tree.map(lambda new, old: jnp.where(at_end, new, old), updated, store)


def _storage_sizes(config: ModelConfig, spec: LayerSpec) -> dict:
    """The sizes of in-storage memory that ``bmojo.storage`` takes (all but the chunk)."""
    return dict(block=config.storage_block_size, horizon=spec.horizon, capacity=config.storage_blocks,
                topk=config.storage_topk)
