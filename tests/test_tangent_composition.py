"""Tangent-vector algebra, composition as an ensemble, forgetting, and save/load."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tangent


def normal(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def net(params, x):
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"]


PARAMS = {"w1": normal(0, (4, 6), 0.5), "b1": normal(1, (6,), 0.1), "w2": normal(2, (6, 3), 0.5)}
X = normal(3, (5, 4))
call = jax.jit(lambda m, d, x: m(d, x))


def components(model, k):
    return [tangent.TangentVector({p: normal(10 * i + j, a.shape) for j, (p, a) in enumerate(model.primal().items())})
            for i in range(k)]


def test_vector_algebra_against_numpy():
    model = tangent.linearize(net, PARAMS)
    a, b = components(model, 2)
    flat = lambda v: np.concatenate([np.asarray(v[p]).ravel() for p in sorted(v)]).astype(np.float64)
    np.testing.assert_allclose(flat(2.0 * a - b / 4 + (-a)), flat(a) - flat(b) / 4, rtol=1e-6)
    np.testing.assert_allclose(a.dot(b), flat(a) @ flat(b), rtol=1e-5)
    np.testing.assert_allclose(tangent.norm(a), np.linalg.norm(flat(a)), rtol=1e-6)
    with pytest.raises(ValueError, match="same parameter paths"):
        a + tangent.TangentVector({"w1": a["w1"]})


def test_composition_is_the_weighted_ensemble():
    model = tangent.linearize(net, PARAMS, "w1|w2")
    comps = components(model, 3)
    weights = [0.5, 0.3, 0.2]
    ensemble = sum(w * call(model, c, X) for w, c in zip(weights, comps))
    np.testing.assert_allclose(call(model, tangent.compose(comps, weights), X), ensemble, rtol=1e-5, atol=1e-5)
    comp = tangent.Composition(model)
    for i, (c, w) in enumerate(zip(comps, weights)):
        comp.add(f"task{i}", c, weight=10 * w)  # normalised to sum 1
    np.testing.assert_allclose(comp(X), ensemble, rtol=1e-5, atol=1e-5)


def test_forgetting_equals_never_having_learned(tmp_path):
    model = tangent.linearize(net, PARAMS)
    a, b, c = components(model, 3)
    comp = tangent.Composition(model).add("a", a).add("b", b, weight=2.0).add("c", c)
    removed = comp.remove("b")
    assert comp.names == ["a", "c"]
    np.testing.assert_array_equal(removed["w1"], b["w1"])
    never = tangent.Composition(model).add("a", a).add("c", c)
    np.testing.assert_array_equal(comp(X), never(X))
    with pytest.raises(ValueError, match="no component named 'b'"):
        comp.remove("b")
    with pytest.raises(ValueError, match="already in the composition"):
        comp.add("a", a)
    # Save and load with orbax: the same components, weights and outputs.
    comp.add("b", b, weight=2.0)
    comp.save(tmp_path / "comp")
    loaded = tangent.Composition.load(tmp_path / "comp", model)
    assert loaded.names == comp.names and loaded.weights() == comp.weights()
    np.testing.assert_array_equal(loaded(X), comp(X))
