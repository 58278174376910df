"""selective_scan XLA forms against a NumPy float64 oracle, each other, and finite differences."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import ssm_kernels

FORMS = ("sequential", "associative", "xla")


def oracle(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
           initial_state=None):
    """Plain float64 NumPy loop over positions, written from the recurrence's definition."""
    u, delta, A, B, C = (np.asarray(x, np.float64) for x in (u, delta, A, B, C))
    batch, dim, length = u.shape
    state = A.shape[1]
    dt = delta + (0.0 if delta_bias is None else np.asarray(delta_bias, np.float64)[:, None])
    if delta_softplus:
        dt = np.log1p(np.exp(dt))
    if B.ndim == 3:
        B = B[:, None]
    if C.ndim == 3:
        C = C[:, None]
    gb, gc = dim // B.shape[1], dim // C.shape[1]
    h = (np.zeros((batch, dim, state)) if initial_state is None
         else np.asarray(initial_state, np.float64).copy())
    y = np.zeros((batch, dim, length))
    for t in range(length):
        for d in range(dim):
            h[:, d] = (np.exp(dt[:, d, t, None] * A[d]) * h[:, d]
                       + (dt[:, d, t] * u[:, d, t])[:, None] * B[:, d // gb, :, t])
            y[:, d, t] = np.sum(C[:, d // gc, :, t] * h[:, d], axis=-1)
    if D is not None:
        y = y + np.asarray(D, np.float64)[:, None] * u
    if z is not None:
        z = np.asarray(z, np.float64)
        y = y * z / (1.0 + np.exp(-z))
    return y, h


def make_inputs(seed, batch=2, dim=6, length=37, state=4, groups_b=None, groups_c=None,
                dtype=jnp.float32, options=True):
    """Random inputs (NumPy generator: no compilation); ``options`` adds D, z, delta_bias, h0."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape)
    bc = lambda g: (batch, state, length) if g is None else (batch, g, state, length)
    args = {"u": normal(batch, dim, length).astype(dtype),
            "delta": (0.5 * normal(batch, dim, length)).astype(dtype),
            "A": -np.exp(0.5 * normal(dim, state)),
            "B": normal(*bc(groups_b)).astype(dtype),
            "C": normal(*bc(groups_c)).astype(dtype)}
    if options:
        args.update(D=normal(dim), z=normal(batch, dim, length).astype(dtype),
                    delta_bias=0.3 * normal(dim), initial_state=normal(batch, dim, state))
    float_type = jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32
    return {k: jnp.asarray(v, dtype if v.dtype == dtype else float_type) for k, v in args.items()}


@functools.partial(jax.jit, static_argnames=("implementation", "delta_softplus", "chunk_size"))
def run(args, implementation, delta_softplus=True, chunk_size=8):
    return ssm_kernels.selective_scan(**args, delta_softplus=delta_softplus, return_last_state=True,
                                      chunk_size=chunk_size, implementation=implementation)


@pytest.mark.parametrize("implementation", FORMS)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_forms_match_oracle(implementation, dtype):
    dtype = jnp.dtype(dtype)
    args = make_inputs(0, groups_b=3, groups_c=2, dtype=dtype)
    y, h = run(args, implementation)
    y_ref, h_ref = oracle(**args, delta_softplus=True)
    assert y.dtype == dtype and h.dtype == jnp.float32
    assert y.shape == (2, 6, 37) and h.shape == (2, 6, 4)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=3e-2, atol=5e-2)
    np.testing.assert_allclose(np.asarray(y, np.float64), y_ref, **tol)
    np.testing.assert_allclose(np.asarray(h, np.float64), h_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options,delta_softplus,groups_b,groups_c,length,chunk_size", [
    (False, False, None, None, 37, 8),   # plain scan, no softplus
    (True, False, 2, None, 16, 8),       # length a multiple of the chunk
    (False, True, None, 6, 5, 8),        # length shorter than a chunk, one group per channel
    (True, True, 1, 3, 37, None),        # default chunk size
])
def test_options_match_oracle(options, delta_softplus, groups_b, groups_c, length, chunk_size):
    args = make_inputs(1, length=length, groups_b=groups_b, groups_c=groups_c,
                       options=options)
    y_ref, h_ref = oracle(**args, delta_softplus=delta_softplus)
    for implementation in FORMS:
        y, h = run(args, implementation, delta_softplus, chunk_size)
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5, err_msg=implementation)
        np.testing.assert_allclose(h, h_ref, rtol=1e-5, atol=1e-5, err_msg=implementation)


def test_parallel_forms_match_sequential_and_default_output():
    args = make_inputs(2, length=50)
    y_seq, h_seq = run(args, "sequential")
    for implementation in ("associative", "xla", None):
        y, h = run(args, implementation, chunk_size=16)
        np.testing.assert_allclose(y, y_seq, rtol=2e-6, atol=2e-6)
        np.testing.assert_allclose(h, h_seq, rtol=2e-6, atol=2e-6)
    y_only = ssm_kernels.selective_scan(**args, delta_softplus=True)
    np.testing.assert_allclose(y_only, y_seq, rtol=2e-6, atol=2e-6)


def _as_function(args, implementation):
    """f(*arrays) -> (y, last_state) over every array argument, in a fixed order."""
    names = sorted(args)

    def f(*arrays):
        return ssm_kernels.selective_scan(**dict(zip(names, arrays)), delta_softplus=True,
                                          return_last_state=True, chunk_size=4,
                                          implementation=implementation)

    return jax.jit(f), [args[n] for n in names]


def test_derivatives_match_finite_differences():
    """jvp, vjp and their second-order compositions (both modes, order 2) in float64."""
    with jax.enable_x64(True):
        args = make_inputs(3, batch=1, dim=2, length=6, state=2, groups_b=2, dtype=jnp.float64)
        f, primals = _as_function(args, "xla")
        check_grads(f, primals, order=2, modes=("fwd", "rev"), eps=1e-4, atol=1e-5, rtol=1e-5)


def test_autodiff_modes_match_sequential():
    """grad, jvp, linearize and grad-of-jvp of the parallel forms equal those of the reference."""
    args = make_inputs(4, dim=4, length=11, state=3, groups_c=2)
    _, tans = _as_function(make_inputs(5, dim=4, length=11, state=3, groups_c=2), "sequential")
    tans = tuple(tans)

    def loss(fn, *p):
        y, h = fn(*p)
        return jnp.sum(jnp.sin(y)) + jnp.sum(h ** 2)

    def jvp_loss(fn, *p):
        _, (dy, dh) = jax.jvp(fn, p, tans)
        return jnp.sum(dy ** 2) + jnp.sum(jnp.cos(dh))

    @functools.partial(jax.jit, static_argnums=0)
    def all_modes(implementation, primals):
        f, _ = _as_function(args, implementation)
        argnums = tuple(range(len(primals)))
        out, f_lin = jax.linearize(f, *primals)
        return {"linearize_primal": out,
                "linearize": f_lin(*tans),
                "jvp": jax.jvp(f, tuple(primals), tans),
                "grad": jax.grad(functools.partial(loss, f), argnums)(*primals),
                "grad_of_jvp": jax.grad(functools.partial(jvp_loss, f), argnums)(*primals)}

    primals = _as_function(args, "sequential")[1]
    want = all_modes("sequential", primals)
    for implementation in ("xla", "associative"):
        got = all_modes(implementation, primals)
        for name in want:
            jax.tree.map(lambda a, b: np.testing.assert_allclose(
                a, b, rtol=2e-4, atol=2e-4, err_msg=f"{implementation} {name}"),
                got[name], want[name])


def test_vmap_over_extra_leading_axis():
    keys = (6, 7, 8)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs),
                           *[make_inputs(k, length=13, groups_b=2) for k in keys])
    f = lambda a: ssm_kernels.selective_scan(**a, delta_softplus=True, return_last_state=True,
                                             chunk_size=4, implementation="xla")
    y, h = jax.jit(jax.vmap(f))(stacked)
    for i in range(3):
        y_ref, h_ref = oracle(**jax.tree.map(lambda x: x[i], stacked), delta_softplus=True)
        np.testing.assert_allclose(y[i], y_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(h[i], h_ref, rtol=1e-5, atol=1e-5)


def _bad(**changes):
    args = make_inputs(9, batch=2, dim=6, length=9, state=4)
    args.update(changes)
    return args


@pytest.mark.parametrize("args,kwargs,match", [
    (_bad(u=jnp.zeros((2, 6))), {}, r"u has shape \(2, 6\) \(rank 2\); expected rank 3"),
    (_bad(delta=jnp.zeros((2, 6, 8))), {}, r"delta has shape \(2, 6, 8\); expected \(2, 6, 9\)"),
    (_bad(A=jnp.zeros((5, 4))), {}, r"A has shape \(5, 4\); expected \(6, 4\)"),
    (_bad(A=jnp.zeros((6,))), {}, r"A has shape \(6,\) \(rank 1\); expected rank 2"),
    (_bad(B=jnp.zeros((2, 3, 9))), {}, r"B has shape \(2, 3, 9\); expected \(2, 4, 9\)"),
    (_bad(C=jnp.zeros((2, 4, 4, 9))), {}, r"C has shape \(2, 4, 4, 9\): groups=4 must divide dim=6"),
    (_bad(C=jnp.zeros((2, 2, 4, 9, 1))), {}, r"C has shape \(2, 2, 4, 9, 1\) \(rank 5\)"),
    (_bad(D=jnp.zeros((5,))), {}, r"D has shape \(5,\); expected \(6,\)"),
    (_bad(z=jnp.zeros((2, 6, 10))), {}, r"z has shape \(2, 6, 10\); expected \(2, 6, 9\)"),
    (_bad(delta_bias=jnp.zeros((6, 1))), {}, r"delta_bias has shape \(6, 1\) \(rank 2\)"),
    (_bad(initial_state=jnp.zeros((2, 6, 3))), {},
     r"initial_state has shape \(2, 6, 3\); expected \(2, 6, 4\)"),
    (_bad(u=jnp.zeros((2, 6, 9), jnp.int32)), {}, r"u has dtype int32; expected one of"),
    (_bad(B=jnp.zeros((2, 4, 9), jnp.complex64)), {}, r"B has dtype complex64"),
    (_bad(), {"chunk_size": 0}, r"chunk_size must be a positive integer; got 0"),
    (_bad(), {"chunk_size": 2.5}, r"chunk_size must be a positive integer; got 2.5"),
    (_bad(), {"implementation": "cuda"}, r"implementation='cuda' is not available; choose one of"),
])
def test_validation_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ssm_kernels.selective_scan(**args, **kwargs)
