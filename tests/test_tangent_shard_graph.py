"""tangent.shard_graph: neighbourhoods and expected forgetting cost in closed form; forgetting an
example retrains exactly its shard's holders and equals training without it."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tangent
from tangent import ShardGraph


def normal(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def net(params, x):
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"]


PARAMS = {"w1": normal(0, (4, 6), 0.5), "b1": normal(1, (6,), 0.1), "w2": normal(2, (6, 3), 0.5)}


def test_graphs_and_expected_cost_in_closed_form():
    k, n = 6, 10
    ring = ShardGraph.ring(k, 2)
    assert ring.neighbourhood(0) == (0, 1, 5) and ring.holders(3) == (2, 3, 4)
    assert ShardGraph.complete(k).neighbourhood(2) == tuple(range(k))
    assert ShardGraph.disconnected(k).neighbourhood(4) == (4,)
    # Equal shards of n: a node of degree g holds (g + 1) n examples and each shard is held by
    # g + 1 nodes, so a deletion retrains g + 1 components on (g + 1)^2 n examples.
    for graph, g in ((ShardGraph.disconnected(k), 0), (ring, 2), (ShardGraph.ring(k, 4), 4),
                     (ShardGraph.complete(k), k - 1)):
        cost = graph.expected_cost([n] * k)
        assert cost == {"components": g + 1, "examples": (g + 1) ** 2 * n, "fraction": (g + 1) ** 2 / k}
    # Unequal shards: averaged over examples, not shards.
    path = ShardGraph(3, ((0, 1),))
    assert path.expected_cost([1, 3, 4])["components"] == pytest.approx((1 * 2 + 3 * 2 + 4 * 1) / 8)


@pytest.mark.parametrize("edges, message", [(((0, 3),), r"edge \(0, 3\) names an unknown shard"),
                                            (((1, 1),), "self-loop"), (((0, -1),), "unknown shard")])
def test_edges_must_name_known_shards(edges, message):
    with pytest.raises(ValueError, match=message):
        ShardGraph(3, edges)


def test_forgetting_retrains_exactly_the_holders_and_equals_training_without():
    x = normal(3, (24, 4))
    y = np.random.default_rng(4).integers(0, 3, 24)
    model = tangent.linearize(net, PARAMS, "w2|b1")
    shards = list(np.random.default_rng(5).permutation(24).reshape(6, 4))
    graph = ShardGraph.ring(6, 2)
    kw = dict(steps=lambda n: 3, optimizer=optax.sgd(0.3), batch_size=4)
    safe = tangent.ShardedComposition(model, graph, x, y, [s.copy() for s in shards], **kw)
    before = {i: v for i, v in safe.components.items()}
    example = int(shards[3][1])
    with pytest.raises(ValueError, match="example 99 is in no shard"):
        safe.forget([example, 99])
    assert all(len(s) == 4 for s in safe.shards)  # the refused request changed nothing
    assert safe.forget([example]) == (2, 3, 4) == graph.holders(3)
    for i in (0, 1, 5):  # not retrained: untouched
        for p in model.trainable:
            np.testing.assert_array_equal(safe.components[i][p], before[i][p])
    for i in (2, 3, 4):  # retrained: their data lost the example
        assert example not in safe.data(i)
        assert not np.array_equal(safe.components[i]["w2"], before[i]["w2"])
    without = [s[s != example] for s in shards]
    fresh = tangent.ShardedComposition(model, graph, x, y, without, **kw)
    for i in range(6):
        for p in model.trainable:
            np.testing.assert_allclose(safe.components[i][p], fresh.components[i][p], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(model(safe.vector(), x), model(fresh.vector(), x), rtol=1e-5, atol=1e-6)
