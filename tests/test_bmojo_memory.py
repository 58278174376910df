"""Eidetic store: the chunked selection/eviction rule against a plain-Python oracle, and a
constructed sequence whose surprising tokens are known ending up in a B'MOJO layer's store."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bmojo
from bmojo import memory


def _oracle(scores, chunk, horizon, slots, rule):
    """Snapshots (per chunk: sorted positions) of the store for one sequence, rule applied literally."""
    length = len(scores)
    store, snapshots = [], []
    for c in range(-(-length // chunk)):
        snapshots.append(sorted(p for p, _ in store))
        cands = [j for j in range(c * chunk - horizon + 1, (c + 1) * chunk - horizon + 1) if 0 <= j < length]
        if rule.select == "threshold":
            cands = [j for j in cands if scores[j] > rule.threshold]
        chosen = sorted(cands, key=lambda j: -scores[j])[:rule.topk]
        pool = store + [(j, scores[j]) for j in chosen]
        key = (lambda e: e[0]) if rule.evict == "oldest" else (lambda e: e[1])
        store = sorted(pool, key=key, reverse=True)[:slots]
    return snapshots, sorted(p for p, _ in store)


@pytest.mark.parametrize("select", ["topk", "threshold"])
@pytest.mark.parametrize("evict", ["oldest", "lowest"])
def test_store_rule_matches_oracle(select, evict):
    batch, length, chunk, horizon, slots = 2, 30, 4, 6, 3
    scores = jax.random.uniform(jax.random.key(0), (batch, length))
    rule = memory.StoreRule(topk=2, select=select, threshold=0.5, evict=evict)
    # keys/values carry their own position so that the stored ones can be traced back
    pos_code = jnp.arange(length, dtype=jnp.float32)[None, :, None, None] + 100.0 * jnp.arange(batch)[:, None, None, None]
    k = jnp.broadcast_to(pos_code, (batch, length, 1, 2))
    snaps, final = memory.store_snapshots(k, -k, scores, slots=slots, chunk=chunk, horizon=horizon, rule=rule)
    assert snaps["pos"].shape == (batch, -(-length // chunk), slots)
    for b in range(batch):
        expected, expected_final = _oracle(np.asarray(scores[b]).tolist(), chunk, horizon, slots, rule)
        for c, want in enumerate(expected):
            pos = np.asarray(snaps["pos"][b, c])
            assert sorted(pos[pos >= 0].tolist()) == want
            filled = pos >= 0
            np.testing.assert_array_equal(np.asarray(snaps["k"][b, c, :, 0, 0])[filled], pos[filled] + 100 * b)
            np.testing.assert_array_equal(np.asarray(snaps["score"][b, c])[filled], np.asarray(scores[b])[pos[filled]])
            assert bool(jnp.all(jnp.isneginf(snaps["score"][b, c][~filled])))
        final_pos = np.asarray(final["pos"][b])
        assert sorted(final_pos[final_pos >= 0].tolist()) == expected_final


def test_layer_store_holds_the_most_surprising_tokens():
    """A constant input with a few surprising tokens; the predictor forecasts the constant, so the
    innovation is the distance of each token from it and only the surprising tokens pass the
    threshold. Two of them (21, 22) are candidates after the same chunk: with at most one
    selection per chunk only the stronger (22) enters. Four enter a store of three slots with
    lowest-score eviction: the least surprising one (10) is evicted."""
    evict, slots, expected = "lowest", 3, [3, 13, 22]
    length, d = 32, 16
    surprise = {3: 3.0, 10: 1.0, 13: 4.0, 21: 1.5, 22: 5.0}
    config = bmojo.ModelConfig(vocab_size=8, d_model=d, n_layers=1, n_heads=2, n_kv_heads=1, window=4,
                               chunk_size=4, ssm_state=4, memory_slots=slots, memory_topk=1,
                               memory_select="threshold", memory_threshold=0.1, memory_evict=evict, d_ff=0, block_types=("bmojo",))
    base = jax.random.normal(jax.random.key(0), (d,))
    direction = jax.random.normal(jax.random.key(1), (d,))
    x = jnp.tile(base, (1, length, 1))
    for j, size in surprise.items():
        x = x.at[0, j].add(size * direction)
    layer = bmojo.BMojoLayer(config, "bmojo")
    params = jax.jit(layer.init)(jax.random.key(2), x)
    p = params["params"]["predictor"]
    params["params"]["predictor"] = {"kernel": jnp.zeros_like(p["kernel"]), "bias": base}
    (y, aux), state = jax.jit(lambda p, x: layer.apply(p, x, mutable=["intermediates"]))(params, x)
    store = state["intermediates"]["store"][0]
    pos = np.asarray(store["pos"][0])
    assert sorted(pos[pos >= 0].tolist()) == expected
    # the last chunk's candidates end at 8 * 4 - 2 * 4 = 24: everything surprising up to there was seen
    innovation = {j: float(jnp.mean((size * direction) ** 2)) for j, size in surprise.items()}
    np.testing.assert_allclose(np.sort(np.asarray(store["score"][0])[pos >= 0]),
                               sorted(innovation[j] for j in expected), rtol=1e-5)
    np.testing.assert_allclose(float(aux), sum(innovation.values()) / length, rtol=1e-5)
