"""tangent.intcl: reservoir sampling (uniform inclusion) and IntCL steps re-linearized at the
integrated point, with replay, against gradient descent on explicit Jacobians (float64 NumPy)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import tangent


def normal(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def net(params, x):
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"]


PARAMS = {"w1": normal(0, (4, 6), 0.5), "b1": normal(1, (6,), 0.1), "w2": normal(2, (6, 3), 0.5)}


def test_reservoir_keeps_a_uniform_sample():
    capacity, stream, trials = 4, 12, 3000
    counts = np.zeros(stream)
    rng = np.random.default_rng(0)
    for _ in range(trials):
        buffer, seen = tangent.reservoir([], 0, capacity, range(6), rng)  # two tasks of 6 items
        buffer, seen = tangent.reservoir(buffer, seen, capacity, range(6, 12), rng)
        assert len(buffer) == capacity and seen == stream and len(set(buffer)) == capacity
        counts[buffer] += 1
    # Each item is kept with probability capacity / stream = 1/3; binomial std ~ 0.0086.
    np.testing.assert_allclose(counts / trials, capacity / stream, atol=0.035)
    assert tangent.reservoir([], 0, 5, range(3), rng) == ([0, 1, 2], 3)


def gd_on_explicit_jacobian(params, x, y, d, lr, steps):
    """Full-batch gradient descent on the MSE of f0 + J d, J the Jacobian in w2 at ``params``."""
    flat0, unravel = ravel_pytree({"w2": params["w2"]})
    f = lambda w: net(dict(params, **unravel(w)), x).reshape(-1)
    f0, jac = np.asarray(f(flat0), np.float64), np.asarray(jax.jacfwd(f)(flat0), np.float64)
    target = np.asarray(y, np.float64).reshape(-1)
    for _ in range(steps):
        d = d - lr * jac.T @ (f0 + jac @ d - target) / len(x)
    return d


def test_steps_are_relinearized_at_the_integrated_point_with_replay():
    x1, y1, x2, y2 = normal(3, (6, 4)), normal(4, (6, 3)), normal(5, (5, 4)), normal(6, (5, 3))
    model = tangent.linearize(net, PARAMS, "w2")
    lr, steps = 0.5, 4
    result = tangent.fit_intcl(model, [(x1, y1), (x2, y2)], steps=steps, buffer_size=3, loss="mse",
                               optimizer=optax.sgd(lr))
    # Task 1: the tangent plane at w0. Task 2: the tangent plane at w1 = w0 + d1, trained on task 2
    # together with the 3 task-1 examples kept in the buffer (full batch: all of them each step).
    d1 = gd_on_explicit_jacobian(PARAMS, x1, y1, np.zeros(18), lr, steps)
    np.testing.assert_allclose(np.asarray(result.steps[0]["w2"]).ravel(), d1, rtol=1e-4, atol=1e-6)
    (buffer,) = result.buffers[:1]
    assert len(buffer) == 3 and all(t == 0 for t, _ in buffer)
    kept = np.array([i for _, i in buffer])
    w1 = dict(PARAMS, w2=PARAMS["w2"] + jnp.asarray(d1.reshape(6, 3), jnp.float32))
    d2 = gd_on_explicit_jacobian(w1, jnp.concatenate([x2, x1[kept]]), jnp.concatenate([y2, y1[kept]]),
                                 np.zeros(18), lr, steps)
    np.testing.assert_allclose(np.asarray(result.steps[1]["w2"]).ravel(), d2, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(result.integrated["w2"]).ravel(), d1 + d2, rtol=1e-4, atol=1e-6)
    # The predictor after task 2 is the tangent model at w1 (not at w0).
    np.testing.assert_allclose(result.models[1](result.steps[1], x2),
                               net(w1, x2) + jax.jvp(lambda w: net(dict(PARAMS, w2=w), x2), (w1["w2"],),
                                                     (result.steps[1]["w2"],))[1], rtol=1e-5, atol=1e-6)
    assert len(result.buffers[1]) == 3  # a uniform sample of the 11 examples seen


def test_bad_arguments():
    model = tangent.linearize(net, PARAMS, "w2")
    task = (normal(3, (6, 4)), normal(4, (6, 3)))
    with pytest.raises(ValueError, match="buffer_size=-1"):
        tangent.fit_intcl(model, [task], steps=1, buffer_size=-1, loss="mse", optimizer=optax.sgd(0.1))
    with pytest.raises(ValueError, match="replay_fraction=1"):
        tangent.fit_intcl(model, [task], steps=1, buffer_size=2, replay_fraction=1, loss="mse",
                          optimizer=optax.sgd(0.1))
    with pytest.raises(ValueError, match="steps=0"):
        tangent.fit_intcl(model, [task], steps=0, buffer_size=2, loss="mse", optimizer=optax.sgd(0.1))
