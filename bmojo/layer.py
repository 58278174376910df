"""The B'MOJO layer: fading memory (SSM), innovation test, eidetic store, one attention.

Depending on the block type (see ``bmojo.config``) parts are switched off, which gives the
special cases: attention alone (``"attention"``, ``"swa"``), the SSM alone (``"mamba"``),
SSM + attention over the in-context and fading windows (``"bmojo_f"``), and all three
sources (``"bmojo"``).

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
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

import ssm_kernels
from ssm_kernels.ops.bmojo_attention import masks

from . import mamba, memory, storage
from .attention import SlidingWindowAttention, attend_step
from .config import ATTENTION_TYPES, SSM_TYPES, ModelConfig
from .memory import Predictor


def init_layer_cache(config: ModelConfig, kind: str, batch: int) -> dict:
    """Decoding state of one layer: SSM/conv states, ring buffers of keys/values with their
    positions (-1: empty) for the in-context window (and the store candidates) and the fading
    window, recent innovations, what the predictor needs (the last SSM outputs), the store, and with
    in-storage memory the ring of stored blocks and the slots retrieved for the current chunk."""
    c = config
    cache = {}
    if kind in SSM_TYPES:
        cache["ssm"] = mamba.init_state(c, batch)
    if kind in ATTENTION_TYPES:
        w = c.layer_window(kind)
        size = c.horizon(kind) + c.chunk_size if c.uses_memory(kind) else w
        if c.uses_storage(kind):  # a completed block is read back from this ring
            size = max(size, c.storage_block_size)
        kv = lambda n: jnp.zeros((batch, n, c.n_kv_heads, c.head_dim), c.dtype)  # noqa: E731
        cache.update(k=kv(size), v=kv(size), pos=jnp.full((size,), -1, jnp.int32))
        if c.uses_fading(kind):
            cache.update(fk=kv(2 * w), fv=kv(2 * w), fpos=jnp.full((2 * w,), -1, jnp.int32))
        if c.uses_memory(kind):
            past = 1 if c.innovation == Predictor.LEARNED else c.innovation_order
            cache.update(score=jnp.zeros((batch, size), jnp.float32),
                         f_past=jnp.zeros((batch, past, c.d_model), jnp.float32),
                         store=memory.empty_store(batch, c.memory_slots, c.n_kv_heads, c.head_dim, c.dtype))
        if c.uses_storage(kind):
            b, slots = c.storage_block_size, c.storage_topk * c.storage_block_size
            ring = storage.ring_size(capacity=c.storage_blocks, block=b, chunk=c.chunk_size, horizon=c.horizon(kind))
            cache.update(ring=storage.empty_ring(batch, ring, b, c.n_kv_heads, c.head_dim, c.dtype),
                         retrieved_k=kv(slots), retrieved_v=kv(slots),
                         retrieved_pos=jnp.full((batch, slots), -1, jnp.int32))
    return cache


def _ring_write(buffer, index, value):
    return jax.lax.dynamic_update_index_in_dim(buffer, value.astype(buffer.dtype), index, axis=1)


class BMojoLayer(nn.Module):
    """One mixer layer of block type ``kind``: (batch, L, d_model) -> ((batch, L, d_model), aux).

    ``aux`` is the learned predictor's loss (0 otherwise). With an eidetic store,
    ``apply(..., mutable=["intermediates"])`` also returns the innovation scores ``"innovation"``
    (batch, L) and the final store ``"store"`` (its ``pos`` and ``score``).
    """

    config: ModelConfig
    kind: str = "bmojo"

    def setup(self):
        c, kind = self.config, self.kind
        self.window = c.layer_window(kind)
        self.has_ssm = kind in SSM_TYPES
        self.has_attention = kind in ATTENTION_TYPES
        self.has_fading = c.uses_fading(kind)
        self.has_memory = c.uses_memory(kind)
        self.has_storage = c.uses_storage(kind)
        self.horizon = c.horizon(kind)
        if self.has_ssm:
            self.ssm = mamba.mixer(c)
        if self.has_attention:
            self.attn = SlidingWindowAttention(c, self.window)
        if self.has_memory and c.innovation == Predictor.LEARNED:
            self.predictor = nn.Dense(c.d_model, dtype=c.dtype)

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
        return y + f.astype(y.dtype) if self.has_fading and self.config.ssm_residual else y

    def __call__(self, x):
        c = self.config
        f = self.ssm(x) if self.has_ssm else None
        aux = jnp.zeros((), jnp.float32)
        if not self.has_attention:
            return f, aux
        positions = jnp.arange(x.shape[1])
        k, v = self.attn.keys_values(x, positions)
        q = self.attn.queries(x, positions)
        sources = {}
        if self.has_fading:
            sources["fading_k"], sources["fading_v"] = self.attn.keys_values(f, positions)
        slots = []
        if self.has_memory:
            e, aux, _ = self._innovation(x, f, None, 0)
            self.sow("intermediates", "innovation", e)
            snaps, final = memory.store_snapshots(
                k, v, e, slots=c.memory_slots, chunk=c.chunk_size, horizon=self.horizon,
                rule=memory.StoreRule.from_config(c))
            self.sow("intermediates", "store", {"pos": final["pos"], "score": final["score"]})
            slots.append((snaps["k"], snaps["v"], snaps["pos"]))
        if self.has_storage:
            retrieved = storage.retrieve(q, k, v, stored_pos=slots[0][2] if slots else None,
                                         **self._storage_sizes())
            self.sow("intermediates", "retrieved", retrieved[2])
            slots.append(retrieved)
        if slots:
            sources.update(memory_k=jnp.concatenate([s[0] for s in slots], axis=2),
                           memory_v=jnp.concatenate([s[1] for s in slots], axis=2),
                           memory_pos=jnp.concatenate([s[2] for s in slots], axis=2),
                           memory_chunk=c.chunk_size)
        out, _ = ssm_kernels.bmojo_attention(
            q, k, v, window=self.window, implementation=c.attention_implementation, **sources)
        return self._output(out, f), aux

    def _storage_sizes(self) -> dict:
        c = self.config
        return dict(chunk=c.chunk_size, block=c.storage_block_size, horizon=self.horizon,
                    capacity=c.storage_blocks, topk=c.storage_topk)

    def step(self, x, cache, t):
        """One token x: (batch, d_model) at position t (int32 scalar) -> (y, new cache)."""
        new = dict(cache)
        f = None
        if self.has_ssm:
            f, new["ssm"] = self.ssm.step(x, cache["ssm"])
        if not self.has_attention:
            return f, new
        pos1 = t[None]
        q = self.attn.queries(x[:, None], pos1)[:, 0]
        k, v = self.attn.keys_values(x[:, None], pos1)
        slot = t % cache["pos"].shape[0]
        for name, value in (("k", k[:, 0]), ("v", v[:, 0])):
            new[name] = _ring_write(cache[name], slot, value)
        new["pos"] = cache["pos"].at[slot].set(t)
        w = self.window  # decoding masks: the rules of the attention op, query t, t + 1 tokens so far
        sources = [(new["k"], new["v"], masks.context_visible(t, new["pos"], w, t + 1))]
        if self.has_fading:
            fk, fv = self.attn.keys_values(f[:, None], pos1)
            fslot = t % cache["fpos"].shape[0]
            new["fk"] = _ring_write(cache["fk"], fslot, fk[:, 0])
            new["fv"] = _ring_write(cache["fv"], fslot, fv[:, 0])
            new["fpos"] = cache["fpos"].at[fslot].set(t)
            sources.append((new["fk"], new["fv"], masks.fading_visible(t, new["fpos"], w, t + 1)))
        if self.has_memory:
            e, _, new["f_past"] = self._innovation(x[:, None], f[:, None], cache["f_past"], t)
            new["score"] = cache["score"].at[:, slot].set(e[:, 0])
            store = cache["store"]
            sources.append((store["k"], store["v"],
                            masks.memory_visible(t, store["pos"], w, self.has_fading)))
        if self.has_storage:
            sizes = self._storage_sizes()
            got = storage.ring_retrieve(cache["ring"], q, t, stored_pos=cache["store"]["pos"] if self.has_memory else None,
                                        **{k_: sizes[k_] for k_ in ("block", "horizon", "capacity", "topk")})
            starts = t % self.config.chunk_size == 0
            for name, value in zip(("retrieved_k", "retrieved_v", "retrieved_pos"), got):
                new[name] = jnp.where(starts, value.astype(cache[name].dtype), cache[name])
            sources.append((new["retrieved_k"], new["retrieved_v"],
                            masks.memory_visible(t, new["retrieved_pos"], w, self.has_fading)))
        y = self._output(attend_step(q, sources), f)
        if self.has_memory:
            new["store"] = self._update_store_at_chunk_end(new, store, t)
        if self.has_storage:
            new["ring"] = self._store_completed_block(new, t)
        return y, new

    def _store_completed_block(self, new, t):
        """After the last token of a block, copy the block from the key/value ring into storage."""
        b = self.config.storage_block_size
        pos = t - b + 1 + jnp.arange(b)
        idx = pos % new["pos"].shape[0]
        updated = storage.ring_insert(new["ring"], (t + 1) // b - 1, new["k"][:, idx], new["v"][:, idx])
        done = (t + 1) % b == 0
        return jax.tree.map(lambda a, c: jnp.where(done, a, c), updated, new["ring"])

    def _update_store_at_chunk_end(self, new, store, t):
        c = self.config
        batch = store["pos"].shape[0]
        pos = memory.chunk_candidates(t // c.chunk_size, c.chunk_size, self.horizon)
        idx = pos % new["pos"].shape[0]
        valid = (pos >= 0) & (new["pos"][idx] == pos)
        bcast = lambda a: jnp.broadcast_to(a, (batch, c.chunk_size))  # noqa: E731
        updated = memory.update_store(store, new["k"][:, idx], new["v"][:, idx], bcast(pos),
                                      new["score"][:, idx], bcast(valid),
                                      memory.StoreRule.from_config(c))
        at_end = (t + 1) % c.chunk_size == 0
        return jax.tree.map(lambda a, b: jnp.where(at_end, a, b), updated, store)
