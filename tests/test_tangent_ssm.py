"""A model that calls ssm_kernels ops linearizes and trains in tangent space.

The tangent model built on an op's fast form ("xla", and the Pallas kernel in interpret
mode) is checked against ``jax.linearize`` of the same network on the op's ``lax.scan``
reference ("reference"): outputs and gradients of the tangent training loss agree, and
gradient descent on the tangent vector lowers the loss. Ops or implementations not yet in ``ssm_kernels``
are skipped.
"""

import jax
import jax.numpy as jnp
import numpy as np
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
    y, _ = ssm_kernels.ssd(xs, a, bb, cc, chunk_size=4, implementation=implementation)
    return y.reshape(b, l, HEADS * HEADDIM) @ params["w_out"]


def scan_net(params, x, implementation):
    """x (batch, length, DIM) -> (batch, length, DIM) through one Mamba-1 selective scan."""
    u = jnp.swapaxes(x @ params["w_x"], 1, 2)  # (batch, dim, length)
    delta = jnp.swapaxes(x @ params["w_a"], 1, 2)
    bb = jnp.swapaxes(x @ params["w_b"], 1, 2)  # (batch, state, length)
    cc = jnp.swapaxes(x @ params["w_c"], 1, 2)
    y, _ = ssm_kernels.selective_scan(u, delta, params["A"], bb, cc, delta_softplus=True,
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


@pytest.mark.parametrize("implementation", ["xla", "interpret"])
@pytest.mark.parametrize("op", sorted(CASES))
def test_ssm_model_linearizes_and_trains_in_tangent_space(op, implementation):
    net, make_params = CASES[op]
    if not hasattr(ssm_kernels, op):
        pytest.skip(f"ssm_kernels.{op} has not landed yet")
    if implementation not in ssm_kernels.implementations(op):
        pytest.skip(f"ssm_kernels.{op} has no {implementation!r} implementation yet")
    params, x = make_params(), normal(9, (2, LENGTH, DIM))
    # Linearize everything but the input projection.
    fast = tangent.linearize(lambda p, x: net(p, x, implementation), params, r"^(?!w_x)")
    ref = tangent.linearize(lambda p, x: net(p, x, "reference"), params, r"^(?!w_x)")
    d = tangent.TangentVector({p: normal(20 + i, a.shape, 0.1) for i, (p, a) in enumerate(fast.primal().items())})

    # Reference: jax.linearize of the network on the op's lax.scan form.
    w0 = dict(ref.primal())
    ref_lin = lambda d: (lambda y0, f_jvp: y0 + f_jvp(dict(d)))(
        *jax.linearize(lambda w: net(ref.merge(w), x, "reference"), w0))
    target = normal(30, (2, LENGTH, DIM))

    def outputs_and_grad(f):
        """Jitted d -> (f(d), gradient of the tangent training loss): one compile per form."""
        return jax.jit(lambda d: (f(d), jax.grad(lambda d: tangent.mse(f(d), target))(d)))

    run_fast, run_ref = outputs_and_grad(lambda d: fast(d, x)), outputs_and_grad(ref_lin)
    (out_fast, g_fast), (out_ref, g_ref) = run_fast(d), run_ref(d)
    np.testing.assert_allclose(out_fast, out_ref, rtol=1e-4, atol=1e-5)
    for path in fast.trainable:
        np.testing.assert_allclose(g_fast[path], g_ref[path], rtol=1e-3, atol=1e-5)
    # Training in tangent space: steepest descent on d with an exact line search (the loss is
    # quadratic in d, and J g = f_lin(d + g) - f_lin(d) by linearity).
    losses = []
    for _ in range(4):
        out, g = run_fast(d)
        jg = run_fast(d + g)[0] - out
        losses.append(float(tangent.mse(out, target)))
        d = d - (jnp.vdot(out - target, jg) / jnp.vdot(jg, jg)) * g
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.9 * losses[0], losses
