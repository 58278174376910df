"""selective_scan Pallas kernels (interpret mode on CPU) against the references, in every autodiff mode."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssm_kernels
from tests.test_selective_scan import make_inputs, oracle


def scan_fn(names, implementation, delta_softplus=True, chunk_size=4):
    """f(*arrays) -> (y, last_state), arrays ordered as ``names``."""

    def f(*arrays):
        return ssm_kernels.selective_scan(**dict(zip(names, arrays)), delta_softplus=delta_softplus,
                                          return_last_state=True, chunk_size=chunk_size,
                                          implementation=implementation)

    return f


@pytest.mark.parametrize("dtype,options,delta_softplus,dim,groups_b,groups_c,length,chunk_size", [
    # grouped B/C (lcm of the group counts), length not a multiple of the chunk, all options
    ("float32", True, True, 12, 2, 3, 13, 4),
    ("bfloat16", True, True, 12, 2, 3, 13, 4),
    # 40 channels: not a multiple of the 32-channel tile; no softplus, no D/z/bias/initial state
    ("float32", False, False, 40, None, None, 9, None),
])
def test_forward_matches_oracle(dtype, options, delta_softplus, dim, groups_b, groups_c, length,
                                chunk_size):
    dtype = jnp.dtype(dtype)
    args = make_inputs(0, batch=2, dim=dim, length=length, state=3, groups_b=groups_b,
                       groups_c=groups_c, dtype=dtype, options=options)
    names = sorted(args)
    f = jax.jit(scan_fn(names, "interpret", delta_softplus, chunk_size))
    y, h = f(*[args[k] for k in names])
    y_ref, h_ref = oracle(**args, delta_softplus=delta_softplus)
    assert y.dtype == dtype and h.dtype == jnp.float32 and h.shape == (2, dim, 3)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=3e-2, atol=5e-2)
    np.testing.assert_allclose(np.asarray(y, np.float64), y_ref, **tol)
    np.testing.assert_allclose(h, h_ref, rtol=1e-5, atol=1e-5)


def _all_modes(implementation, names, primals, tangents):
    """Primal, jvp, linearize, grad, grad-of-jvp and jvp-of-grad, as one jitted computation."""
    f = scan_fn(names, implementation)
    argnums = tuple(range(len(primals)))

    def loss(*p):
        y, h = f(*p)
        return jnp.sum(jnp.sin(y.astype(jnp.float32))) + jnp.sum(h ** 2)

    def jvp_loss(*p):
        _, (dy, dh) = jax.jvp(f, p, tangents)
        return jnp.sum(dy.astype(jnp.float32) ** 2) + jnp.sum(jnp.cos(dh))

    @jax.jit
    def run(primals):
        out, f_lin = jax.linearize(f, *primals)
        return {"primal": out, "linearize": f_lin(*tangents), "jvp": jax.jvp(f, primals, tangents)[1],
                "grad": jax.grad(loss, argnums)(*primals),
                "grad_of_jvp": jax.grad(jvp_loss, argnums)(*primals),
                "jvp_of_grad": jax.jvp(jax.grad(loss, argnums), primals, tangents)[1]}

    return run(tuple(primals))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_autodiff_modes_match_sequential(dtype):
    """Every autodiff mode of the kernels equals that of the lax.scan reference."""
    dtype = jnp.dtype(dtype)
    shape = dict(batch=2, dim=12, length=11, state=3, groups_b=2, groups_c=3, dtype=dtype)
    args, tans = make_inputs(4, **shape), make_inputs(5, **shape)
    names = sorted(args)
    primals, tangents = tuple(args[k] for k in names), tuple(tans[k] for k in names)
    got = _all_modes("interpret", names, primals, tangents)
    want = _all_modes("sequential", names, primals, tangents)  # same dtype: same output rounding
    tol = dict(rtol=2e-4, atol=2e-4) if dtype == jnp.float32 else dict(rtol=5e-2, atol=1e-1)
    for mode in want:
        jax.tree.map(lambda a, b: np.testing.assert_allclose(
            np.asarray(a, np.float32), np.asarray(b, np.float32), err_msg=mode, **tol),
            got[mode], want[mode])


def test_vmap_over_extra_leading_axis():
    """vmap merges the mapped axis into the batch (shared A) or loops (mapped A); of the scan,
    its grad and its jvp."""
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs),
                           *[make_inputs(s, batch=1, dim=4, length=6, state=2, groups_b=2)
                             for s in (6, 7)])
    names = sorted(stacked)
    a_axis, argnums = names.index("A"), (names.index("A"), names.index("u"))
    f = scan_fn(names, "interpret")
    f_ref = scan_fn(names, "sequential")
    loss = lambda fn, *p: jnp.sum(jnp.tanh(fn(*p)[0])) + jnp.sum(fn(*p)[1])
    xs = [stacked[k] for k in names]
    for shared_A in (True, False):
        in_axes = tuple(None if (shared_A and i == a_axis) else 0 for i in range(len(names)))
        call = list(xs)
        if shared_A:
            call[a_axis] = xs[a_axis][0]
        jvp = lambda fn: lambda *p: jax.jvp(fn, p, tuple(jnp.cos(x) for x in p))
        grad = lambda fn: jax.grad(functools.partial(loss, fn), argnums=argnums)
        for fn_k, fn_r in ((f, f_ref), (grad(f), grad(f_ref)), (jvp(f), jvp(f_ref))):
            got = jax.jit(jax.vmap(fn_k, in_axes=in_axes))(*call)
            want = jax.vmap(fn_r, in_axes=in_axes)(*call)
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                         got, want)


def test_bounded_chunk():
    args = make_inputs(8, batch=1, dim=4, length=5, state=2)
    with pytest.raises(ValueError, match="chunk_size=512 is too large"):
        ssm_kernels.selective_scan(**args, chunk_size=512, implementation="interpret")


def test_kernels_lower_for_cuda_through_triton(monkeypatch):
    """No GPU needed: the kernels, with padded steps (length 37, chunk 16), lower to Triton IR
    for CUDA in forward, tangent and backward; compiling the IR still needs a GPU."""
    from ssm_kernels.scan import pallas_compat
    from ssm_kernels.scan.pallas import scan_pallas

    triton = pytest.importorskip("jax.experimental.pallas.triton")
    monkeypatch.setattr(pallas_compat, "call_options", lambda grid_rank, interpret: {
        "compiler_params": triton.CompilerParams(num_warps=4, num_stages=1)})
    seq = jax.ShapeDtypeStruct((1, 32, 37), jnp.float32)
    A = jax.ShapeDtypeStruct((32, 16), jnp.float32)
    BC = jax.ShapeDtypeStruct((1, 1, 16, 37), jnp.float32)
    h0 = jax.ShapeDtypeStruct((1, 32, 16), jnp.float32)

    def grad_and_jvp(*xs):
        fn = functools.partial(scan_pallas, chunk_size=16, interpret=False)
        loss = lambda *x: sum(jnp.sum(o) for o in fn(*x))  # noqa: E731
        return jax.grad(loss, argnums=tuple(range(6)))(*xs), jax.jvp(fn, xs, xs)

    lowered = jax.jit(grad_and_jvp).trace(seq, seq, A, BC, BC, h0).lower(
        lowering_platforms=("cuda",))
    assert lowered.as_text().count("__gpu$xla.gpu.triton") >= 3  # forward, tangent, backward
