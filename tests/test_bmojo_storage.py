"""In-storage memory: which blocks are retrieved, against a float64 oracle written from the rule; the
decoder's ring retrieves the same; and a trained model recalls a block planted far beyond its window,
fading window and store, which the same model without storage cannot."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import bmojo
from bmojo import storage


def _oracle(q, k, chunk, block, horizon, capacity, topk, stored=None):
    """Per chunk and sequence: the sorted token positions of the retrieved blocks (float64, loops)."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    batch, length, heads, head_dim = q.shape
    group = heads // k.shape[2]
    out = []
    for b in range(batch):
        rows = []
        for start in range(0, length, chunk):
            blocks = [j for j in range(length // block) if (j + 1) * block - 1 <= start - horizon]
            blocks = blocks[-capacity:]
            score = {j: sum(q[b, start, h] @ k[b, j * block:(j + 1) * block, h // group].mean(0)
                            for h in range(heads)) / np.sqrt(head_dim) for j in blocks}
            best = sorted(blocks, key=lambda j: (-score[j], j))[:topk]  # ties: the older block
            pos = {p for j in best for p in range(j * block, (j + 1) * block)}
            if stored is not None:
                pos -= set(np.asarray(stored[b, start // chunk]).tolist())
            rows.append(sorted(pos))
        out.append(rows)
    return out


@pytest.mark.parametrize("chunk, block, horizon, capacity, topk", [(4, 3, 6, 3, 2), (1, 2, 4, 4, 1), (5, 4, 2, 9, 3)])
def test_retrieved_blocks_match_the_oracle(chunk, block, horizon, capacity, topk):
    batch, length, heads, kv_heads, head_dim = 2, 37, 4, 2, 8
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (batch, length, heads, head_dim))
    k = jax.random.normal(keys[1], (batch, length, kv_heads, head_dim))
    v = k + 100.0  # values carry their keys, so the gathered slots can be checked
    stored = jax.random.randint(keys[2], (batch, -(-length // chunk), 3), -1, length)
    rk, rv, pos = storage.retrieve(q, k, v, chunk=chunk, block=block, horizon=horizon, capacity=capacity,
                                   topk=topk, stored_pos=stored)
    assert pos.shape == (batch, -(-length // chunk), topk * block)
    expected = _oracle(q, k, chunk, block, horizon, capacity, topk, stored)
    for b in range(batch):
        for c, want in enumerate(expected[b]):
            got = np.asarray(pos[b, c])
            assert sorted(got[got >= 0].tolist()) == want
            filled = got >= 0
            np.testing.assert_array_equal(np.asarray(rk[b, c])[filled], np.asarray(k[b, got[filled]]))
            np.testing.assert_array_equal(np.asarray(rv[b, c])[filled], np.asarray(k[b, got[filled]]) + 100.0)


def test_the_decoders_ring_retrieves_what_the_parallel_pass_does():
    """Blocks inserted one by one into a small ring (with identical block keys, so ties matter) give
    the same retrievals at every chunk start as the parallel rule."""
    batch, length, heads, kv_heads, head_dim = 2, 40, 2, 1, 4
    chunk, block, horizon, capacity, topk = 4, 4, 8, 3, 2
    q = jax.random.normal(jax.random.key(1), (batch, length, heads, head_dim))
    k = jnp.tile(jax.random.normal(jax.random.key(2), (batch, 1, kv_heads, head_dim)), (1, length, 1, 1))
    k = k.at[:, 12:16].add(1.0)  # one block stands out, the others tie
    _, _, pos = storage.retrieve(q, k, k, chunk=chunk, block=block, horizon=horizon, capacity=capacity, topk=topk)
    size = storage.ring_size(capacity=capacity, block=block, chunk=chunk, horizon=horizon)
    ring = storage.empty_ring(batch, size, block, kv_heads, head_dim, k.dtype)
    for t in range(length):
        if t % chunk == 0:
            _, _, got = storage.ring_retrieve(ring, q[:, t], t, block=block, horizon=horizon, capacity=capacity,
                                              topk=topk)
            np.testing.assert_array_equal(got, pos[:, t // chunk])
        if (t + 1) % block == 0:
            ring = storage.ring_insert(ring, (t + 1) // block - 1, k[:, t + 1 - block:t + 1], k[:, t + 1 - block:t + 1])


def test_a_trained_model_recalls_a_far_block_only_with_its_storage():
    """Sequences: a block of 4 copies of a needle token among filler blocks (0), then fillers, then a
    query token at the last position, whose target is the needle. The needle is 20 tokens back or
    more, beyond the window (2) and the fading window (2) of a one-layer B'MOJO-F (no eidetic store);
    its SSM state is 2 channels wide. Trained with in-storage memory the model answers; the same
    parameters without storage cannot."""
    vocab, length, query = 12, 33, 11
    config = bmojo.ModelConfig(vocab_size=vocab, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, window=2,
                               chunk_size=1, ssm_state=2, d_ff=0, max_len=length, block_types=("bmojo_f",),
                               position_encoding="none", storage_blocks=8, storage_block_size=4, storage_topk=1)
    without = bmojo.ModelConfig(**{**config.to_dict(), "storage_blocks": 0})
    model, plain = bmojo.LanguageModel(config), bmojo.LanguageModel(without)

    def batch(key, n):
        k1, k2 = jax.random.split(key)
        needle = jax.random.randint(k1, (n,), 1, query)
        where = jax.random.randint(k2, (n,), 0, 3)  # block 0, 1 or 2
        pos = jnp.arange(length)
        tokens = jnp.where((pos // 4 == where[:, None]) & (pos < 12), needle[:, None], 0)
        return tokens.at[:, -1].set(query).astype(jnp.int32), needle

    def loss(params, tokens, needle):
        logits, _ = model.apply(params, tokens)
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, -1], needle).mean()

    params = model.init(jax.random.key(0), jnp.zeros((1, length), jnp.int32))
    opt = optax.adam(1e-2)
    state = opt.init(params)

    @jax.jit
    def step(params, state, key):
        g = jax.grad(loss)(params, *batch(key, 32))
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state

    for key in jax.random.split(jax.random.key(1), 300):
        params, state = step(params, state, key)
    tokens, needle = batch(jax.random.key(2), 256)
    accuracy = lambda m: float(jnp.mean(jnp.argmax(jax.jit(m.apply)(params, tokens)[0][:, -1], -1) == needle))  # noqa: E731
    assert accuracy(model) > 0.9
    assert accuracy(plain) < 0.3  # chance is 1/10
