"""ssd: chunked XLA form and sequential reference against a NumPy float64 oracle, autodiff
against finite differences, and the identity with the selective scan for a per-head scalar decay."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import ssm_kernels

FORMS = ("xla", "sequential")


def x64():
    """float64 context, guarded across jax releases (jax.enable_x64 vs jax.experimental)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64
    return enable_x64()


def make_inputs(seed, batch=2, length=13, heads=4, headdim=3, state=5, groups=None,
                dtype=np.float32, init=True):
    rng = np.random.default_rng(seed)
    groups = groups or heads
    X = rng.standard_normal((batch, length, heads, headdim))
    A = -np.log1p(np.exp(rng.standard_normal((batch, length, heads))))  # -softplus: decays
    B = rng.standard_normal((batch, length, groups, state))
    C = rng.standard_normal((batch, length, groups, state))
    h0 = rng.standard_normal((batch, heads, headdim, state)) if init else None
    cast = lambda t: None if t is None else jnp.asarray(t.astype(np.float32)).astype(dtype)
    return cast(X), cast(A), cast(B), cast(C), cast(h0)


def oracle(X, A, B, C, h0=None):
    """NumPy float64 loop over time, heads and channels of the recurrence in the docstring."""
    X, A, B, C = (np.asarray(t, np.float64) for t in (X, A, B, C))
    batch, length, heads, headdim = X.shape
    per_group = heads // B.shape[2]
    h = np.zeros((batch, heads, headdim, B.shape[3])) if h0 is None else np.array(h0, np.float64)
    Y = np.zeros_like(X)
    for t in range(length):
        for hd in range(heads):
            g = hd // per_group
            h[:, hd] = (np.exp(A[:, t, hd])[:, None, None] * h[:, hd]
                        + X[:, t, hd, :, None] * B[:, t, g, None, :])
            Y[:, t, hd] = np.einsum("bpn,bn->bp", h[:, hd], C[:, t, g])
    return Y, h


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("length,block_len,groups,init", [
    (16, 4, None, True),    # multiple of block_len
    (13, 4, 2, True),       # padded last chunk, grouped B/C
    (5, 8, 1, False),       # shorter than one block, one group, zero initial state
    (9, 1, None, True),     # block_len 1: every step its own chunk
])
def test_forward_float32_matches_oracle(form, length, block_len, groups, init):
    X, A, B, C, h0 = make_inputs(0, length=length, groups=groups, init=init)
    Y, final = ssm_kernels.ssd(X, A, B, C, block_len, h0, implementation=form)
    Y_ref, final_ref = oracle(X, A, B, C, h0)
    assert Y.dtype == jnp.float32 and final.dtype == jnp.float32
    assert Y.shape == X.shape and final.shape == final_ref.shape
    np.testing.assert_allclose(Y, Y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(final, final_ref, rtol=1e-5, atol=1e-5)


def test_chunked_equals_sequential_long_decay():
    """Strong decay over many chunks: the masked segment sum stays finite and exact."""
    X, A, B, C, h0 = make_inputs(1, length=70, heads=2, state=4)
    A = A * 20.0
    Y1, f1 = ssm_kernels.ssd(X, A, B, C, 16, h0, implementation="xla")
    Y2, f2 = ssm_kernels.ssd(X, A, B, C, 16, h0, implementation="sequential")
    assert np.isfinite(Y1).all()
    np.testing.assert_allclose(Y1, Y2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f1, f2, rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda a: ssm_kernels.ssd(X, a, B, C, 16, h0, implementation="xla")[0].sum())(A)
    assert np.isfinite(g).all()


@pytest.mark.parametrize("form", FORMS)
def test_bfloat16_loose(form):
    X, A, B, C, h0 = make_inputs(2, length=11, groups=2, dtype=jnp.bfloat16)
    Y, final = ssm_kernels.ssd(X, A, B, C, 4, h0, implementation=form)
    assert Y.dtype == jnp.bfloat16 and final.dtype == jnp.float32
    Y_ref, final_ref = oracle(X.astype(jnp.float32), A.astype(jnp.float32), B.astype(jnp.float32),
                              C.astype(jnp.float32), h0.astype(jnp.float32))
    np.testing.assert_allclose(Y.astype(jnp.float32), Y_ref, rtol=3e-2, atol=5e-2)
    np.testing.assert_allclose(final, final_ref, rtol=3e-2, atol=5e-2)


def test_default_implementation_on_cpu_is_xla():
    X, A, B, C, h0 = make_inputs(3, length=6)
    Y, final = ssm_kernels.ssd(X, A, B, C, 4, h0)
    Y_ref, final_ref = oracle(X, A, B, C, h0)
    np.testing.assert_allclose(Y, Y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(final, final_ref, rtol=1e-5, atol=1e-5)


def test_xla_autodiff_against_finite_differences():
    """jax.grad, jax.jvp, jax.linearize and grad-of-jvp of the chunked form, in float64, all five
    inputs (padded last chunk), each checked against central finite differences."""
    with x64():
        X, A, B, C, h0 = make_inputs(4, batch=1, length=5, heads=2, headdim=2, state=3, groups=1,
                                     dtype=jnp.float64)
        args = (X, A, B, C, h0)
        w = jnp.asarray(np.random.default_rng(5).standard_normal(X.shape))
        v = make_inputs(14, batch=1, length=5, heads=2, headdim=2, state=3, groups=1,
                        dtype=jnp.float64)

        def f(*a):
            Y, final = ssm_kernels.ssd(*a[:4], 2, a[4], implementation="xla")
            return jnp.sum(w * Y) + jnp.sum(jnp.sin(final)), Y

        def f_jvp(*a):  # a scalar function of the JVP: its gradient is the grad-of-jvp
            _, (s, Y) = jax.jvp(f, a, v)
            return s + jnp.sum(jnp.cos(Y))

        tol = dict(eps=1e-5, atol=1e-6, rtol=1e-6)
        check_grads(f, args, order=1, modes=("fwd", "rev", "lin"), **tol)
        check_grads(f_jvp, args, order=1, modes=("rev",), **tol)


def test_xla_derivatives_match_sequential():
    """Reverse, forward and linearized derivatives of the chunked form equal the reference's (float32)."""
    X, A, B, C, h0 = make_inputs(6, length=10, groups=2)
    tangents = make_inputs(7, length=10, groups=2)

    def f(form):
        return jax.jit(lambda *a: ssm_kernels.ssd(*a[:4], 4, a[4], implementation=form))
    args = (X, A, B, C, h0)
    loss = lambda form: (lambda *a: jnp.sum(f(form)(*a)[0] ** 2) + jnp.sum(f(form)(*a)[1]))
    g1 = jax.jit(jax.grad(loss("xla"), argnums=range(5)))(*args)
    g2 = jax.jit(jax.grad(loss("sequential"), argnums=range(5)))(*args)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    _, t1 = jax.jvp(f("xla"), args, tangents)
    _, t2 = jax.jvp(f("sequential"), args, tangents)
    _, lin = jax.linearize(f("xla"), *args)
    for a, b, c in zip(t1, t2, lin(*tangents)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(c, b, rtol=1e-4, atol=1e-4)


def test_vmap_over_extra_axis():
    stacks = [make_inputs(s, length=9, groups=2) for s in (8, 9, 10)]
    X, A, B, C, h0 = (jnp.stack(t) for t in zip(*stacks))
    Y, final = jax.vmap(lambda *a: ssm_kernels.ssd(*a[:4], 4, a[4], implementation="xla"))(
        X, A, B, C, h0)
    for i, inputs in enumerate(stacks):
        Y_ref, final_ref = oracle(*inputs)
        np.testing.assert_allclose(Y[i], Y_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(final[i], final_ref, rtol=1e-5, atol=1e-5)


def test_equals_selective_scan_for_scalar_decay_per_head():
    """Mamba-style parameterization: A_t = dt_t * a_h, X_t = dt_t * x_t. Then SSD is the selective
    scan over dim = heads * headdim channels (channel h * headdim + p) with u = x, delta = dt
    (no softplus), A[channel, :] = a_h, and B/C grouped with the same groups."""
    selective_scan = ssm_kernels.selective_scan
    rng = np.random.default_rng(11)
    batch, length, heads, headdim, state, groups = 2, 10, 4, 3, 5, 2
    dt = np.log1p(np.exp(rng.standard_normal((batch, length, heads)))).astype(np.float32)
    a = -np.exp(rng.standard_normal(heads)).astype(np.float32)
    x = rng.standard_normal((batch, length, heads, headdim)).astype(np.float32)
    B = rng.standard_normal((batch, length, groups, state)).astype(np.float32)
    C = rng.standard_normal((batch, length, groups, state)).astype(np.float32)
    h0 = rng.standard_normal((batch, heads, headdim, state)).astype(np.float32)

    Y, final = ssm_kernels.ssd(dt[..., None] * x, dt * a, B, C, 4, h0, implementation="xla")

    dim = heads * headdim
    u = x.reshape(batch, length, dim).transpose(0, 2, 1)
    delta = np.repeat(dt, headdim, axis=2).transpose(0, 2, 1)
    A_ss = np.repeat(np.repeat(a, headdim)[:, None], state, axis=1)
    to_ss = lambda M: M.transpose(0, 2, 3, 1)  # (batch, groups, state, length)
    y, last = selective_scan(u, delta, A_ss, to_ss(B), to_ss(C), delta_softplus=False,
                             initial_state=h0.reshape(batch, dim, state), return_last_state=True,
                             implementation="sequential")
    np.testing.assert_allclose(Y, np.asarray(y).transpose(0, 2, 1).reshape(Y.shape),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(final, np.asarray(last).reshape(final.shape), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change,match", [
    (lambda X, A, B, C, h0: (X[0], A, B, C, h0), r"X has shape \(13, 4, 3\)"),
    (lambda X, A, B, C, h0: (X, A[:, :5], B, C, h0), r"A has shape \(2, 5, 4\); expected \(2, 13, 4\)"),
    (lambda X, A, B, C, h0: (X, A, B[:, :, :3], C[:, :, :3], h0), r"B has shape \(2, 13, 3, 5\)"),
    (lambda X, A, B, C, h0: (X, A, B, C[..., :2], h0), r"C has shape \(2, 13, 4, 2\)"),
    (lambda X, A, B, C, h0: (X, A, B, C, h0[..., :2]), r"initial_states has shape \(2, 4, 3, 2\)"),
    (lambda X, A, B, C, h0: (X.astype(jnp.int32), A, B, C, h0), r"X has dtype int32"),
])
def test_validation_errors(change, match):
    args = change(*make_inputs(12))
    with pytest.raises(ValueError, match=match):
        ssm_kernels.ssd(*args[:4], 4, args[4])


def test_bad_block_len_and_implementation():
    X, A, B, C, h0 = make_inputs(13)
    with pytest.raises(ValueError, match="block_len"):
        ssm_kernels.ssd(X, A, B, C, 0, h0)
    with pytest.raises(ValueError, match="implementation='nope'"):
        ssm_kernels.ssd(X, A, B, C, 4, h0, implementation="nope")
