"""ssd Pallas kernels in interpret mode against the NumPy oracle and the chunked XLA form, in
every autodiff mode: forward, jax.grad (backward kernel), jax.jvp / jax.linearize (tangent
kernel), grad-of-jvp and vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssm_kernels
from tests.test_ssd import make_inputs, oracle

TIGHT = dict(rtol=1e-5, atol=1e-5)
GRAD = dict(rtol=1e-4, atol=1e-4)


def ssd_fn(implementation, block_len=4):
    return lambda X, A, B, C, h0: ssm_kernels.ssd(X, A, B, C, block_len, h0,
                                                  implementation=implementation)


def loss_fn(implementation, block_len=4):
    f = ssd_fn(implementation, block_len)

    def loss(*args):
        Y, final = f(*args)
        Y = Y.astype(jnp.float32)
        return jnp.sum(Y * jnp.cos(Y)) + jnp.sum(jnp.sin(final))
    return loss



@pytest.mark.parametrize("length,block_len,groups,init", [
    (10, 4, 2, True),    # padded last chunk, grouped B/C
    (8, 8, 1, False),    # one full chunk, one group, zero initial state
])
def test_forward_float32(length, block_len, groups, init):
    args = make_inputs(0, length=length, groups=groups, init=init)
    Y, final = ssm_kernels.ssd(*args[:4], block_len, args[4], implementation="interpret")
    Y_ref, final_ref = oracle(*args)
    assert Y.dtype == jnp.float32 and final.dtype == jnp.float32
    np.testing.assert_allclose(Y, Y_ref, **TIGHT)
    np.testing.assert_allclose(final, final_ref, **TIGHT)


def test_jvp_and_linearize_use_tangent_kernel():
    args = make_inputs(1, length=10, groups=2)
    tangents = make_inputs(2, length=10, groups=2)
    f = jax.jit(ssd_fn("interpret"))
    out, t_out = jax.jvp(f, args, tangents)
    _, t_ref = jax.jvp(ssd_fn("xla"), args, tangents)
    y_lin, f_lin = jax.linearize(f, *args)
    for a, b, c in zip(t_out, t_ref, f_lin(*tangents)):
        np.testing.assert_allclose(a, b, **GRAD)
        np.testing.assert_allclose(c, b, **GRAD)
    np.testing.assert_allclose(y_lin[0], oracle(*args)[0], **TIGHT)
    jaxpr = str(jax.make_jaxpr(lambda *a: jax.jvp(ssd_fn("interpret"), a, tangents))(*args))
    assert "ssd_tangent" in jaxpr


def test_grad_uses_backward_kernel():
    args = make_inputs(3, length=10, groups=2)
    grad = jax.grad(loss_fn("interpret"), argnums=range(5))
    g = jax.jit(grad)(*args)
    g_ref = jax.grad(loss_fn("xla"), argnums=range(5))(*args)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, **GRAD)
    assert "ssd_backward" in str(jax.make_jaxpr(grad)(*args))


def test_grad_of_jvp():
    """Gradient of a JVP (training a linearized model containing the op)."""
    args = make_inputs(4, length=7, groups=1)
    tangents = make_inputs(5, length=7, groups=1)

    def g(implementation):
        def h(*a):
            _, (dY, dfinal) = jax.jvp(ssd_fn(implementation), a, tangents)
            return jnp.sum(jnp.cos(dY)) + jnp.sum(dfinal ** 2)
        return jax.grad(h, argnums=range(5))
    for a, b in zip(jax.jit(g("interpret"))(*args), g("xla")(*args)):
        np.testing.assert_allclose(a, b, **GRAD)


def test_jvp_of_grad():
    """Hessian-vector product (forward over reverse): differentiates the backward primitive."""
    args = make_inputs(12, batch=1, length=6, groups=1)
    tangents = make_inputs(13, batch=1, length=6, groups=1)

    def hvp(implementation):
        grad = jax.grad(loss_fn(implementation), argnums=range(5))
        return lambda *a: jax.jvp(grad, a, tangents)[1]
    for a, b in zip(jax.jit(hvp("interpret"))(*args), hvp("xla")(*args)):
        np.testing.assert_allclose(a, b, **GRAD)


def test_vmap_forward_and_grad():
    stacks = [make_inputs(s, batch=1, length=6, groups=2) for s in (6, 7)]
    batched = [jnp.stack(t) for t in zip(*stacks)]
    Y, final = jax.vmap(ssd_fn("interpret"))(*batched)
    for i, inputs in enumerate(stacks):
        Y_ref, final_ref = oracle(*inputs)
        np.testing.assert_allclose(Y[i], Y_ref, **TIGHT)
        np.testing.assert_allclose(final[i], final_ref, **TIGHT)
    g = jax.jit(jax.vmap(jax.grad(loss_fn("interpret"), argnums=(0, 1, 2))))(*batched)
    g_ref = jax.vmap(jax.grad(loss_fn("xla"), argnums=(0, 1, 2)))(*batched)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, **GRAD)


def test_bfloat16_loose():
    args = make_inputs(8, length=9, groups=2, dtype=jnp.bfloat16)
    Y, final = ssm_kernels.ssd(*args[:4], 4, args[4], implementation="interpret")
    assert Y.dtype == jnp.bfloat16 and final.dtype == jnp.float32
    Y_ref, final_ref = oracle(*(t.astype(jnp.float32) for t in args))
    np.testing.assert_allclose(Y.astype(jnp.float32), Y_ref, rtol=3e-2, atol=5e-2)
    np.testing.assert_allclose(final, final_ref, rtol=3e-2, atol=5e-2)
    w = jnp.asarray(np.random.default_rng(10).standard_normal(Y.shape), jnp.float32)

    def linear_loss(implementation):  # cotangent independent of the bf16 rounding of Y
        def loss(*a):
            Y, final = ssd_fn(implementation)(*a)
            return jnp.sum(w * Y.astype(jnp.float32)) + jnp.sum(final)
        return loss
    g = jax.jit(jax.grad(linear_loss("interpret"), argnums=(0, 1, 2)))(*args)
    g_ref = jax.grad(linear_loss("xla"), argnums=(0, 1, 2))(
        *(t.astype(jnp.float32) for t in args))
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a.astype(jnp.float32), b, rtol=5e-2, atol=1e-1)


def test_power_of_two_tiles_and_headdim_tiling():
    """The GPU (Triton) path pads headdim 3 -> 16 and state 5 -> 16 (checked here interpreted);
    headdim_block=8 splits the state rows over two programs in forward and tangent sweeps."""
    from ssm_kernels.duality.pallas import ssd_pallas
    args = make_inputs(11, batch=1, length=20, heads=2, groups=1)
    tangents = make_inputs(14, batch=1, length=20, heads=2, groups=1)
    f = lambda *a: ssd_pallas(*a[:4], 16, a[4], interpret=True, pow2_tiles=True, headdim_block=8)
    Y, final = jax.jit(f)(*args)
    Y_ref, final_ref = oracle(*args)
    np.testing.assert_allclose(Y, Y_ref, **TIGHT)
    np.testing.assert_allclose(final, final_ref, **TIGHT)
    _, t_out = jax.jit(lambda *a: jax.jvp(f, a, tangents))(*args)
    _, t_ref = jax.jvp(ssd_fn("xla", 16), args, tangents)
    for a, b in zip(t_out, t_ref):
        np.testing.assert_allclose(a, b, **GRAD)
    g = jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a)[0])), argnums=(0, 2)))(*args)
    g_ref = jax.grad(lambda *a: jnp.sum(jnp.sin(ssd_fn("xla", 16)(*a)[0])), argnums=(0, 2))(*args)
    for a, b in zip(g, g_ref):
        np.testing.assert_allclose(a, b, **GRAD)
    with pytest.raises(ValueError, match="block_len must be a power of two"):
        ssd_pallas(*args[:4], 12, args[4], interpret=True, pow2_tiles=True)
    with pytest.raises(ValueError, match="headdim_block=5 must divide headdim=16"):
        ssd_pallas(*args[:4], 16, args[4], interpret=True, pow2_tiles=True, headdim_block=5)


def test_kernels_lower_for_cuda_through_triton(monkeypatch):
    """No GPU needed: forward, tangent and backward kernels (with the reset count operand and
    the power-of-two tiles) lower to Triton IR for CUDA; compiling the IR still needs a GPU."""
    from ssm_kernels.duality import _compat
    from ssm_kernels.duality.pallas import ssd_pallas

    triton = pytest.importorskip("jax.experimental.pallas.triton")
    monkeypatch.setattr(_compat, "compiler_params",
                        lambda interpret: triton.CompilerParams(num_warps=4, num_stages=2))
    X = jax.ShapeDtypeStruct((1, 40, 2, 16), jnp.float32)
    A = jax.ShapeDtypeStruct((1, 40, 2), jnp.float32)
    B = jax.ShapeDtypeStruct((1, 40, 1, 16), jnp.float32)
    h0 = jax.ShapeDtypeStruct((1, 2, 16, 16), jnp.float32)

    def grad_and_jvp(X, A, B, C, h0):
        def fn(*x):
            return ssd_pallas(*x, 16, h0, interpret=False, pow2_tiles=True)
        loss = lambda *x: sum(jnp.sum(o) for o in fn(*x))  # noqa: E731
        xs = (X, A, B, C)
        return jax.grad(loss, argnums=(0, 1, 2, 3))(*xs), jax.jvp(fn, xs, xs)

    text = jax.jit(grad_and_jvp).trace(X, A, B, B, h0).lower(
        lowering_platforms=("cuda",)).as_text()
    for name in ("ssd_forward", "ssd_tangent", "ssd_backward"):
        assert name in text, name
