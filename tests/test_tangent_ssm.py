"""A model that calls ssm_kernels ops linearizes and trains in tangent space.

The tangent model built on an op's fast form ("xla") is checked against ``jax.linearize``
of the same network on the op's ``lax.scan`` reference ("sequential"), and the tangent
vectors trained with either form agree. Ops not yet in ``ssm_kernels`` are skipped; the
Pallas interpret path joins the parametrisation when the kernels land.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ssm_kernels
import tangent


def normal(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


DIM, HEADS, HEADDIM, STATE, LENGTH = 4, 2, 3, 4, 10


def ssd_net(params, x, implementation):
    """x (batch, length, DIM) -> (batch, length, DIM) through one SSD mixer."""
    b, l, _ = x.shape
    xs = (x @ params["w_x"]).reshape(b, l, HEADS, HEADDIM)
    a = -jax.nn.softplus(x @ params["w_a"])  # log-decay (batch, length, heads)
    bb = (x @ params["w_b"]).reshape(b, l, 1, STATE)
    cc = (x @ params["w_c"]).reshape(b, l, 1, STATE)
    y, _ = ssm_kernels.ssd(xs, a, bb, cc, block_len=4, implementation=implementation)
    return y.reshape(b, l, HEADS * HEADDIM) @ params["w_out"]


def scan_net(params, x, implementation):
    """x (batch, length, DIM) -> (batch, length, DIM) through one Mamba-1 selective scan."""
    u = jnp.swapaxes(x @ params["w_x"], 1, 2)  # (batch, dim, length)
    delta = jnp.swapaxes(x @ params["w_a"], 1, 2)
    bb = jnp.swapaxes(x @ params["w_b"], 1, 2)  # (batch, state, length)
    cc = jnp.swapaxes(x @ params["w_c"], 1, 2)
    y = ssm_kernels.selective_scan(u, delta, params["A"], bb, cc, delta_softplus=True,
                                   implementation=implementation)
    return jnp.swapaxes(y, 1, 2) @ params["w_out"]


def ssd_params():
    return {"w_x": normal(0, (DIM, HEADS * HEADDIM), 0.5), "w_a": normal(1, (DIM, HEADS), 0.5),
            "w_b": normal(2, (DIM, STATE), 0.5), "w_c": normal(3, (DIM, STATE), 0.5),
            "w_out": normal(4, (HEADS * HEADDIM, DIM), 0.5)}


def scan_params():
    inner = HEADS * HEADDIM
    return {"w_x": normal(0, (DIM, inner), 0.5), "w_a": normal(1, (DIM, inner), 0.5),
            "A": -jnp.exp(normal(5, (inner, STATE), 0.3)), "w_b": normal(2, (DIM, STATE), 0.5),
            "w_c": normal(3, (DIM, STATE), 0.5), "w_out": normal(4, (inner, DIM), 0.5)}


CASES = {"ssd": (ssd_net, ssd_params), "selective_scan": (scan_net, scan_params)}


@pytest.mark.parametrize("op", sorted(CASES))
def test_ssm_model_linearizes_and_trains_in_tangent_space(op):
    if not hasattr(ssm_kernels, op):
        pytest.skip(f"ssm_kernels.{op} has not landed yet")
    net, make_params = CASES[op]
    params, x = make_params(), normal(9, (2, LENGTH, DIM))
    # Linearize everything but the input projection.
    fast = tangent.linearize(lambda p, x: net(p, x, "xla"), params, r"^(?!w_x)")
    ref = tangent.linearize(lambda p, x: net(p, x, "sequential"), params, r"^(?!w_x)")
    d = tangent.TangentVector({p: normal(20 + i, a.shape, 0.1) for i, (p, a) in enumerate(fast.primal().items())})

    w0 = dict(ref.primal())
    y0, f_jvp = jax.linearize(lambda w: net(ref.merge(w), x, "sequential"), w0)
    np.testing.assert_allclose(jax.jit(lambda m, d, x: m(d, x))(fast, d, x), y0 + f_jvp(dict(d)),
                               rtol=1e-4, atol=1e-5)

    target = normal(30, y0.shape)
    kw = dict(loss="mse", optimizer=optax.adam(0.05), steps=8)
    trained = tangent.fit(fast, x, target, **kw)
    assert trained.losses[-1] < 0.9 * trained.losses[0]
    reference = tangent.fit(ref, x, target, **kw)
    for path in fast.trainable:
        np.testing.assert_allclose(trained.tangent[path], reference.tangent[path], rtol=1e-3, atol=1e-4)
