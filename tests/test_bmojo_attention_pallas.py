"""The Pallas kernel of bmojo_attention (interpret mode, CPU) against the XLA forms."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssm_kernels
from ssm_kernels.attention.pallas import pallas_attention
from tests.test_bmojo_attention import DIFF_NAMES, make_inputs, run

SCALE = 8 ** -0.5  # head_dim 8 in make_inputs


def kernel(args, window, block=8, gpu_layout=False):
    """The kernel in interpret mode with small blocks (lengths below are not multiples of 8)."""
    args = dict(args)
    return pallas_attention(args.pop("q"), args.pop("k"), args.pop("v"), window=window,
                            scale=SCALE, interpret=True, block=block, gpu_layout=gpu_layout,
                            **args)


def close(got, want, atol, rtol=None):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.float32(g), np.float32(w), atol=atol,
                                   rtol=atol if rtol is None else rtol)


def hide_slots(args, window):
    """Every slot empty or too recent for every query (inside a window): all must be masked."""
    length = args["q"].shape[1]
    horizon = 2 * window if "fading_k" in args else window
    pos = np.random.default_rng(0).integers(length - horizon, length, args["memory_pos"].shape)
    pos[..., ::2] = -1
    return dict(args, memory_pos=jnp.asarray(pos, jnp.int32))


FORWARD_CASES = {  # name: (window, make_inputs kwargs, hide slots)
    "window-below-block": (3, dict(fading=False, kv_heads=2), False),
    "three-sources-chunked": (3, dict(memory="chunked", kv_heads=1), False),
    "shared-slots-no-fading": (2, dict(fading=False, memory="shared", kv_heads=4), False),
    "full-causal-W>=L": (25, dict(memory="shared", kv_heads=2), False),
    "slots-inside-windows": (4, dict(memory="chunked", kv_heads=2), True),
}


@pytest.mark.parametrize("name", FORWARD_CASES)
def test_forward_matches_reference(name):
    window, kw, hidden = FORWARD_CASES[name]
    args = make_inputs(0, length=19, **kw)
    if hidden:
        args = hide_slots(args, window)
        base = {n: a for n, a in args.items() if not n.startswith("memory")}
        close(kernel(args, window), run("dense", base, window), atol=1e-5)
    close(kernel(args, window), run("dense", args, window), atol=1e-5)


def test_public_entry_point_and_empty_store():
    """implementation='interpret' (default block: one block of 19 rows); empty store."""
    args = make_inputs(1, length=19, memory="chunked")
    args["memory_pos"] = jnp.full_like(args["memory_pos"], -1)
    base = {n: a for n, a in args.items() if not n.startswith("memory")}
    close(run("interpret", args, 3), run("dense", base, 3), atol=1e-5)


def test_bfloat16_forward_and_grad():
    """Also the GPU layout: block 16 > length 13, head_dim 8 -> 16, 5 slots -> 16."""
    args = make_inputs(2, length=13, memory="chunked", dtype=jnp.bfloat16)
    kernel_fn = functools.partial(kernel, block=16, gpu_layout=True)

    def loss(f, xs):
        out, lse = f(dict(args, **dict(zip(DIFF_NAMES, xs))))
        return jnp.sum(out.astype(jnp.float32) ** 2) + jnp.sum(lse)

    xs = [args[n] for n in DIFF_NAMES]
    got = kernel_fn(args, 3)
    want = run("xla", args, 3)
    assert got[0].dtype == jnp.bfloat16 and got[1].dtype == jnp.float32
    close(got, want, atol=2e-2)
    grad_kernel = jax.jit(jax.grad(functools.partial(loss, lambda a: kernel_fn(a, 3))))(xs)
    grad_xla = jax.jit(jax.grad(functools.partial(loss, lambda a: run("xla", a, 3))))(xs)
    close(grad_kernel, grad_xla, atol=5e-2)


@pytest.fixture(scope="module")
def problem():
    """All three sources, grouped heads, length 13 (block 8: padding), W = 3 < block."""
    args = make_inputs(3, length=13, memory="chunked", chunk=5, kv_heads=2)
    xs = tuple(args[n] for n in DIFF_NAMES)
    rng = np.random.default_rng(4)
    ts = tuple(jnp.asarray(rng.standard_normal(x.shape), x.dtype) for x in xs)

    def as_fn(form):
        if form == "kernel":
            return lambda *x: kernel(dict(args, **dict(zip(DIFF_NAMES, x))), 3)
        return lambda *x: run("xla", dict(args, **dict(zip(DIFF_NAMES, x))), 3)

    return as_fn, xs, ts


def test_jvp_and_linearize(problem):
    as_fn, xs, ts = problem
    want = jax.jit(lambda *x: jax.jvp(as_fn("xla"), x, ts))(*xs)
    close(jax.jit(lambda *x: jax.jvp(as_fn("kernel"), x, ts))(*xs), want, atol=2e-5)
    primal, f_lin = jax.linearize(as_fn("kernel"), *xs)
    close((primal, jax.jit(f_lin)(*ts)), want, atol=2e-5)


def test_grad_with_output_and_lse_cotangents(problem):
    as_fn, xs, ts = problem

    def loss(f):
        def fn(*x):
            out, lse = f(*x)
            return jnp.sum(out * ts[0]) + jnp.sum(jnp.sin(lse))
        return jax.jit(jax.grad(fn, argnums=tuple(range(len(xs)))))

    close(loss(as_fn("kernel"))(*xs), loss(as_fn("xla"))(*xs), atol=2e-5)


def test_grad_of_jvp(problem):
    """The training step of a linearized model: reverse mode through the tangent map."""
    as_fn, xs, ts = problem

    def objective(f):
        def fn(*x):
            dout, dlse = jax.jvp(f, x, ts)[1]
            return jnp.sum(dout ** 2) + jnp.sum(dlse * jnp.arange(dlse.shape[1])[:, None])
        return jax.jit(jax.grad(fn, argnums=tuple(range(len(xs)))))

    close(objective(as_fn("kernel"))(*xs), objective(as_fn("xla"))(*xs), atol=1e-4)


def test_jvp_of_grad(problem):
    """Forward-over-reverse (Hessian-vector products) runs through the backward primitive."""
    as_fn, xs, ts = problem

    def hvp(f):
        grad = jax.grad(lambda *x: jnp.sum(f(*x)[0] * ts[0]) + jnp.sum(f(*x)[1] ** 2),
                        argnums=tuple(range(len(xs))))
        return jax.jit(lambda *x: jax.jvp(grad, x, ts))

    close(hvp(as_fn("kernel"))(*xs), hvp(as_fn("xla"))(*xs), atol=1e-4)


def test_vmap_of_forward_and_grad(problem):
    as_fn, xs, ts = problem
    stacked = [jnp.stack([x, 0.5 * x]) for x in xs]

    def loss(f):
        return jax.grad(lambda *x: jnp.sum(f(*x)[0] * ts[0]))

    for transform in (lambda f: f, loss):
        got = jax.jit(jax.vmap(transform(as_fn("kernel"))))(*stacked)
        want = jax.jit(jax.vmap(transform(as_fn("xla"))))(*stacked)
        close(got, want, atol=2e-5)


def test_auto_picks_pallas_only_on_accelerators():
    fn = ssm_kernels._dispatch.resolve("bmojo_attention", None,
                                       ssm_kernels.attention.api.IMPLEMENTATIONS)
    expected = "pallas" if jax.default_backend() in ("gpu", "tpu") else "xla"
    assert fn is ssm_kernels.attention.api.IMPLEMENTATIONS[expected]


def test_kernels_lower_for_cuda_through_triton(monkeypatch):
    """No GPU needed: the GPU path (Triton params, padded layout) lowers to Triton IR for CUDA.

    Catches kernel code the Triton lowering rejects; compiling the IR still needs a GPU.
    """
    from ssm_kernels.attention import pallas_compat, pallas_kernels

    if pallas_compat.pl_triton is None:
        pytest.skip("this jax has no Pallas Triton backend")
    monkeypatch.setattr(pallas_kernels, "compiler_params",
                        lambda warps, stages: pallas_compat.pl_triton.CompilerParams(
                            num_warps=warps, num_stages=stages))
    length, window = 96, 32
    seq = jax.ShapeDtypeStruct((1, length, 2, 64), jnp.bfloat16)
    mem = jax.ShapeDtypeStruct((1, length // window, 16, 2, 64), jnp.bfloat16)
    pos = jax.ShapeDtypeStruct((1, length // window, 16), jnp.int32)
    attend = functools.partial(pallas_attention, window=window, memory_chunk=window,
                               scale=0.125, interpret=False)

    def grad_and_jvp(q, k, v, fk, fv, mk, mv, mp):
        def fn(*x):
            return attend(*x[:3], fading_k=x[3], fading_v=x[4], memory_k=x[5], memory_v=x[6],
                          memory_pos=mp)

        def loss(*x):
            out, lse = fn(*x)
            return jnp.sum(out.astype(jnp.float32)) + jnp.sum(lse)

        xs = (q, k, v, fk, fv, mk, mv)
        return jax.grad(loss, argnums=tuple(range(7)))(*xs), jax.jvp(fn, xs, xs)

    text = jax.jit(grad_and_jvp).trace(seq, seq, seq, seq, seq, mem, mem, pos).lower(
        lowering_platforms=("cuda",)).as_text()
    for name in ("fwd", "tangent", "dq", "dkv_context", "dkv_fading", "dkv_memory"):
        assert f"bmojo_attention_{name}" in text, name
