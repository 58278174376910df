"""Innovation and eidetic store against plain-Python oracles written from the rules: the paper's
fixed running-average predictor, the paper's keep-the-most-surprising store (tokens inserted one at a
time, each evicting the current minimum when it beats it), our top-k / threshold / oldest options,
and constructed sequences whose surprising tokens are known."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bmojo
from bmojo import memory


def _insert_one_at_a_time(store, candidates, slots, evict):
    """The paper's rule, literally: a candidate enters a full store only if it beats the entry that
    eviction would remove (lowest score, or the oldest with "oldest" eviction), which leaves."""
    for j, score in candidates:
        if len(store) < slots:
            store.append((j, score))
            continue
        victim = min(store, key=(lambda e: e[1]) if evict == "lowest" else (lambda e: e[0]))
        if (score if evict == "lowest" else j) > (victim[1] if evict == "lowest" else victim[0]):
            store.remove(victim)
            store.append((j, score))
    return store


def _oracle(scores, chunk, horizon, slots, rule):
    """Snapshots (per chunk: sorted positions) of the store for one sequence, rule applied literally."""
    length = len(scores)
    store, snapshots = [], []
    for c in range(-(-length // chunk)):
        snapshots.append(sorted(p for p, _ in store))
        cands = [j for j in range(c * chunk - horizon + 1, (c + 1) * chunk - horizon + 1) if 0 <= j < length]
        if rule.select == "threshold":
            cands = [j for j in cands if scores[j] > rule.threshold]
        if rule.select != "all":
            cands = sorted(sorted(cands, key=lambda j: -scores[j])[:rule.topk])
        store = _insert_one_at_a_time(store, [(j, scores[j]) for j in cands], slots, rule.evict)
    return snapshots, sorted(p for p, _ in store)


def _fixed_innovation_oracle(f, order):
    """e_t = ||f_t - mean of the (up to) ``order`` outputs before t||^2, float64 loops."""
    f = np.asarray(f, np.float64)
    e = np.zeros(f.shape[:2])
    for b in range(f.shape[0]):
        for t in range(f.shape[1]):
            past = f[b, max(0, t - order):t]
            pred = past.mean(0) if len(past) else np.zeros(f.shape[2])
            e[b, t] = np.sum((f[b, t] - pred) ** 2)
    return e


@pytest.mark.parametrize("select, evict", [("all", "lowest"), ("all", "oldest"), ("topk", "oldest"),
                                           ("topk", "lowest"), ("threshold", "oldest"),
                                           ("threshold", "lowest")])
def test_store_rule_matches_oracle(select, evict):
    batch, length, chunk, horizon, slots = 2, 30, 4, 6, 3
    scores = jax.random.uniform(jax.random.key(0), (batch, length))
    rule = memory.StoreRule(select=memory.Selection(select), evict=memory.Eviction(evict), topk=2,
                            threshold=0.5)
    # keys/values carry their own position so that the stored ones can be traced back
    pos_code = jnp.arange(length, dtype=jnp.float32)[None, :, None, None] + 100.0 * jnp.arange(batch)[:, None, None, None]
    k = jnp.broadcast_to(pos_code, (batch, length, 1, 2))
    snaps, final = memory.store_snapshots(k, -k, scores, slots=slots, chunk=chunk, horizon=horizon, rule=rule)
    assert snaps.pos.shape == (batch, -(-length // chunk), slots)
    for b in range(batch):
        expected, expected_final = _oracle(np.asarray(scores[b]).tolist(), chunk, horizon, slots, rule)
        for c, want in enumerate(expected):
            pos = np.asarray(snaps.pos[b, c])
            assert sorted(pos[pos >= 0].tolist()) == want
            filled = pos >= 0
            np.testing.assert_array_equal(np.asarray(snaps.k[b, c, :, 0, 0])[filled], pos[filled] + 100 * b)
            np.testing.assert_array_equal(np.asarray(snaps.score[b, c])[filled], np.asarray(scores[b])[pos[filled]])
            assert bool(jnp.all(jnp.isneginf(snaps.score[b, c][~filled])))
        final_pos = np.asarray(final.pos[b])
        assert sorted(final_pos[final_pos >= 0].tolist()) == expected_final


def test_fixed_innovation_matches_oracle_and_continues_across_calls():
    f = jax.random.normal(jax.random.key(0), (2, 11, 5))
    e, _ = memory.running_mean_innovation(f, 4)
    np.testing.assert_allclose(e, _fixed_innovation_oracle(f, 4), rtol=1e-5, atol=1e-6)
    # decoding feeds one output at a time with the history: the same innovations
    history, steps = None, []
    for t in range(11):
        e_t, history = memory.running_mean_innovation(f[:, t:t + 1], 4, history, t)
        steps.append(e_t[:, 0])
    np.testing.assert_allclose(jnp.stack(steps, 1), e, rtol=1e-5, atol=1e-6)


def test_store_keeps_exactly_the_surprising_tokens_of_a_constructed_sequence():
    """A constant SSM output with spikes at known positions: a spike of size s has innovation
    d s^2, the tokens after it at most d (s/4)^2, so the paper's rule with as many slots as spikes
    must end holding exactly the spikes, whatever their order; the oldest-first option instead
    keeps the latest tokens, surprising or not."""
    length, d, chunk, horizon = 40, 3, 4, 8
    spikes = {6: 3.0, 11: 5.0, 17: 4.0, 26: 3.5}
    f = np.ones((1, length, d))
    for j, size in spikes.items():
        f[0, j] += size
    e, _ = memory.running_mean_innovation(jnp.asarray(f, jnp.float32), 4)
    k = jnp.broadcast_to(jnp.arange(length, dtype=jnp.float32)[None, :, None, None], (1, length, 1, 2))
    last = (length - 1) // chunk * chunk - horizon + chunk  # newest token that was a candidate
    for evict, expected in (("lowest", sorted(spikes)), ("oldest", list(range(last - 3, last + 1)))):
        rule = memory.StoreRule(memory.Selection.ALL, memory.Eviction(evict))
        _, final = memory.store_snapshots(k, k, e, slots=len(spikes), chunk=chunk, horizon=horizon, rule=rule)
        assert sorted(np.asarray(final.pos[0]).tolist()) == expected
    np.testing.assert_allclose(np.sort(np.asarray(e[0]))[-4:], sorted(d * s * s for s in spikes.values()),
                               rtol=1e-5)


@pytest.mark.parametrize("select", ["all", "topk"])
def test_layer_innovation_and_store_follow_the_paper_rule(select):
    """A B'MOJO layer (paper defaults): its sown innovations equal the float64 oracle applied to
    its own SSM output, and its final store is what the literal insertion rule keeps."""
    length, chunk, slots = 29, 4, 5
    config = bmojo.ModelConfig(vocab_size=8, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, window=4,
                               chunk_size=chunk, ssm_state=4, memory_slots=slots, memory_select=select,
                               memory_topk=2, d_ff=0, block_types=("bmojo",))
    layer = bmojo.BMojoLayer(config, "bmojo")
    x = jax.random.normal(jax.random.key(0), (2, length, 16))
    params = layer.init(jax.random.key(1), x)
    _, state = layer.apply(params, x, mutable=["intermediates"])
    f = layer.apply(params, x, method=lambda m, x: m.ssm(x))
    expected = _fixed_innovation_oracle(f, config.innovation_order)
    np.testing.assert_allclose(state["intermediates"]["innovation"][0], expected, rtol=1e-4, atol=1e-6)
    store = state["intermediates"]["store"][0]
    rule = memory.StoreRule.from_config(config)
    for b in range(2):
        _, final = _oracle(expected[b].tolist(), chunk, config.layer_spec("bmojo").horizon, slots, rule)
        pos = np.asarray(store["pos"][b])
        assert sorted(pos[pos >= 0].tolist()) == final


def test_learned_predictor_option_stores_the_most_surprising_tokens():
    """Our learned-predictor option: a constant input with a few surprising tokens; the predictor
    forecasts the constant, so the innovation is the distance of each token from it and only the
    surprising tokens pass the threshold. Two of them (21, 22) are candidates after the same chunk:
    with at most one selection per chunk only the stronger (22) enters. Four enter a store of
    three slots with lowest-score eviction: the least surprising one (10) is evicted."""
    evict, slots, expected = "lowest", 3, [3, 13, 22]
    length, d = 32, 16
    surprise = {3: 3.0, 10: 1.0, 13: 4.0, 21: 1.5, 22: 5.0}
    config = bmojo.ModelConfig(vocab_size=8, d_model=d, n_layers=1, n_heads=2, n_kv_heads=1, window=4,
                               chunk_size=4, ssm_state=4, memory_slots=slots, memory_topk=1,
                               innovation="learned", memory_select="threshold", memory_threshold=0.1,
                               memory_evict=evict, d_ff=0, block_types=("bmojo",))
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
