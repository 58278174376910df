"""The three ops in every implementation, against float64 NumPy oracles, in every autodiff mode.

One suite: op x implementation x case x dtype for the forward pass (against ``tests.oracles``),
op x implementation x autodiff mode x dtype for the derivatives (against those of the op's
"reference" form, itself checked against finite differences in float64, and the reference form
against the oracle); inputs from ``benchmarks.kernels`` at its "tiny" sizes. Then what is
particular to one op (identities, block edges, padded GPU tiles), input validation, dispatch,
and checks of the kernels as built for a GPU (they lower to Triton IR for CUDA) and a TPU (one
``dimension_semantics`` entry per grid axis). Kernels run interpreted ("interpret"): f32 tight,
bf16 loose, derivatives looser.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import jaxprs_in_params
from jax.test_util import check_grads

import ssm_kernels
from benchmarks import kernels as cases
from ssm_kernels.ops.bmojo_attention.pallas import BlockSizes as AttentionBlocks
from ssm_kernels.ops.bmojo_attention.pallas import pallas_attention
from ssm_kernels.ops.bmojo_attention.reference import attention_reference
from ssm_kernels.ops.bmojo_attention.xla import blocked_attention
from ssm_kernels.ops.selective_scan.pallas import scan_pallas
from ssm_kernels.ops.ssd.pallas import BlockSizes as SSDBlocks
from ssm_kernels.ops.ssd.pallas import ssd_pallas
from tests import oracles

SCAN, SSD, ATTENTION = "selective_scan", "ssd", "bmojo_attention"
OPS = (SCAN, SSD, ATTENTION)
TINY = {op: cases.SIZES["tiny"][op][0] for op in OPS}
INPUTS = {SCAN: cases.selective_scan_inputs, SSD: cases.ssd_inputs,
          ATTENTION: cases.attention_inputs}
FORMS = {op: [f for f in ssm_kernels.implementations(op) if f != "pallas"] for op in OPS}
TOL = {"float32": dict(rtol=2e-5, atol=2e-5), "bfloat16": dict(rtol=3e-2, atol=5e-2)}
GRAD_TOL = {"float32": dict(rtol=2e-4, atol=2e-4), "bfloat16": dict(rtol=5e-2, atol=1e-1)}
BLOCK = 8  # attention blocks in the forms below: the tests' lengths are not multiples of 8


def attention_form(implementation, block=BLOCK):
    """bmojo_attention's implementation with ``block``-row blocks, scale head_dim ** -0.5."""
    fn = {"reference": attention_reference,
          "xla": functools.partial(blocked_attention, block=block),
          "interpret": functools.partial(pallas_attention, interpret=True,
                                         blocks=AttentionBlocks(block))}[implementation]

    def call(q, k, v, window, **kw):
        return fn(q, k, v, window=window, scale=q.shape[-1] ** -0.5, **kw)
    return call


def form(op, implementation):
    """f(**keyword arrays, **static) -> outputs of ``op`` through ``implementation``."""
    if op == ATTENTION:
        return attention_form(implementation)
    return functools.partial(getattr(ssm_kernels, op), implementation=implementation)


# ------------------------------------------------------------------------------ forward pass

# op: {case: (shape, input options, static call arguments)}; every case uses padding somewhere
FORWARD = {
    SCAN: {
        "grouped-BC-all-options": (TINY[SCAN], dict(groups_b=2, groups_c=3),
                                   dict(delta_softplus=True, chunk_size=4)),
        "40-channels-no-options": ((2, 40, 9, 3), dict(options=False), {}),
        "length-multiple-of-chunk": ((2, 12, 16, 4), dict(groups_b=2), dict(chunk_size=8)),
        "shorter-than-chunk": ((2, 6, 5, 4), dict(groups_c=6, options=False),
                               dict(delta_softplus=True, chunk_size=8)),
        "default-chunk": ((2, 6, 37, 4), dict(groups_b=1, groups_c=3),
                          dict(delta_softplus=True)),
    },
    SSD: {
        "padded-grouped": (TINY[SSD], dict(groups=2), dict(chunk_size=4)),
        "multiple-of-chunk": ((2, 16, 4, 3, 5), {}, dict(chunk_size=4)),
        "shorter-one-group-no-state": ((2, 5, 4, 3, 5), dict(groups=1, init=False),
                                       dict(chunk_size=8)),
        "chunk-1": ((2, 9, 4, 3, 5), {}, dict(chunk_size=1)),
    },
    ATTENTION: {  # (batch, length, heads, kv_heads, head_dim)
        "in-context": ((2, 19, 4, 2, 8), dict(fading=False), dict(window=4)),
        "fading": ((2, 19, 4, 4, 8), {}, dict(window=4)),
        "shared-slots": ((2, 19, 4, 2, 8), dict(memory="shared"), dict(window=3)),
        "chunked-slots": ((2, 19, 4, 1, 8), dict(memory="chunked"), dict(window=5)),
        "no-fading-chunked-slots": ((2, 19, 4, 2, 8), dict(fading=False, memory="chunked"),
                                    dict(window=2)),
        "window-1": ((2, 19, 4, 4, 8), dict(memory="shared"), dict(window=1)),
        "window-above-length": ((2, 19, 4, 2, 8), dict(memory="chunked"), dict(window=30)),
        "slots-inside-windows": ((2, 19, 4, 2, 8), dict(memory="chunked", hide=True),
                                 dict(window=4)),
    },
}
BF16_CASE = {SCAN: "grouped-BC-all-options", SSD: "padded-grouped", ATTENTION: "chunked-slots"}


def make_inputs(op, shape, dtype="float32", seed=0, hide=False, **options):
    """Keyword arrays; ``hide``: every slot empty or too recent for every query."""
    args = {n: a for n, a in INPUTS[op](shape, jnp.dtype(dtype), seed=seed, **options).items()
            if a is not None}
    if hide:
        length, window = shape[1], 4
        pos = np.random.default_rng(seed).integers(length - 2 * window, length,
                                                   args["memory_pos"].shape)
        pos[..., ::2] = -1
        args["memory_pos"] = jnp.asarray(pos, jnp.int32)
    return args


def assert_close(got, want, **tol):
    got, want = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert np.shape(g) == np.shape(w)
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w, np.float64), **tol)


FORWARD_PARAMS = [pytest.param(op, name, impl, dtype, id=f"{op}-{name}-{impl}-{dtype}")
                  for op in OPS for name in FORWARD[op] for impl in FORMS[op]
                  for dtype in ("float32", "bfloat16") if dtype == "float32" or name == BF16_CASE[op]]


@pytest.mark.parametrize("op,name,implementation,dtype", FORWARD_PARAMS)
def test_forward_matches_oracle(op, name, implementation, dtype):
    shape, options, static = FORWARD[op][name]
    args = make_inputs(op, shape, dtype, **options)
    arrays = {n: a for n, a in args.items() if hasattr(a, "dtype")}
    static = dict(static, **{n: a for n, a in args.items() if n not in arrays})
    got = jax.jit(lambda a: form(op, implementation)(**a, **static))(arrays)
    want = getattr(oracles, op)(**arrays, **static)
    first = args["q" if op == ATTENTION else "u" if op == SCAN else "X"]
    assert got[0].dtype == first.dtype and got[1].dtype == jnp.float32
    assert_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("implementation", [None, "reference", "xla", "interpret"])
def test_public_function_matches_oracle(op, implementation):
    """Every implementation through ``ssm_kernels.<op>`` (its validation and dispatch)."""
    shape, options, static = FORWARD[op][BF16_CASE[op]]
    args = make_inputs(op, shape, **options)
    got = getattr(ssm_kernels, op)(**args, **static, implementation=implementation)
    assert_close(got, getattr(oracles, op)(**args, **static), **TOL["float32"])


# ------------------------------------------------------------------------------ autodiff modes

AUTODIFF = {  # op: (input options, static call arguments, names of the differentiable inputs)
    SCAN: (dict(groups_b=2, groups_c=3), dict(delta_softplus=True, chunk_size=4),
           ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")),
    SSD: (dict(groups=2), dict(chunk_size=4), ("X", "A", "B", "C", "initial_state")),
    ATTENTION: (dict(memory="chunked", chunk=5), dict(window=3),
                ("q", "k", "v", "fading_k", "fading_v", "memory_k", "memory_v")),
}
MODES = ("jvp", "linearize", "grad", "grad_of_jvp", "jvp_of_grad", "vmap")


def differentiable(op, implementation, dtype, shape=None, seed=0):
    """(f(*arrays) -> outputs, the arrays, tangents); other inputs closed over."""
    options, static, names = AUTODIFF[op]
    args = make_inputs(op, shape or TINY[op], dtype, seed=seed, **options)
    tangents = make_inputs(op, shape or TINY[op], dtype, seed=seed + 1, **options)
    fixed = {n: a for n, a in args.items() if n not in names}

    def f(*xs):
        return form(op, implementation)(**fixed, **dict(zip(names, xs)), **static)
    return f, tuple(args[n] for n in names), tuple(tangents[n] for n in names)


@functools.lru_cache(maxsize=None)
def all_modes(op, implementation, dtype):
    """Every mode of MODES, one jitted program; vmap maps all inputs but the second one."""
    f, primals, tangents = differentiable(op, implementation, dtype)
    argnums = tuple(range(len(primals)))

    def loss(*p):
        return sum(jnp.sum(jnp.sin(o.astype(jnp.float32))) for o in f(*p))

    def jvp_loss(*p):
        return sum(jnp.sum(o.astype(jnp.float32) ** 2) for o in jax.jvp(f, p, tangents)[1])

    grad = jax.grad(loss, argnums)
    in_axes = (0, None) + (0,) * (len(primals) - 2)
    stacked = tuple(x if a is None else jnp.stack([x, 0.5 * x]) for x, a in zip(primals, in_axes))

    @jax.jit
    def run(primals, tangents, stacked):
        out, f_lin = jax.linearize(f, *primals)
        return {"primal": out, "jvp": jax.jvp(f, primals, tangents)[1],
                "linearize": f_lin(*tangents), "grad": grad(*primals),
                "grad_of_jvp": jax.grad(jvp_loss, argnums)(*primals),
                "jvp_of_grad": jax.jvp(grad, primals, tangents)[1],
                "vmap": (jax.vmap(f, in_axes)(*stacked), jax.vmap(grad, in_axes)(*stacked))}

    return jax.tree.map(np.asarray, run(primals, tangents, stacked))


AUTODIFF_PARAMS = [pytest.param(op, impl, dtype, mode, id=f"{op}-{impl}-{dtype}-{mode}")
                   for op in OPS for impl in FORMS[op] if impl != "reference"
                   for dtype in ("float32", "bfloat16") for mode in MODES]


@pytest.mark.parametrize("op,implementation,dtype,mode", AUTODIFF_PARAMS)
def test_autodiff_matches_reference(op, implementation, dtype, mode):
    """jax.jvp, jax.linearize, jax.grad, grad-of-jvp, jvp-of-grad and vmap against the same
    mode of the reference form, in the same dtype (the same output rounding)."""
    got, want = all_modes(op, implementation, dtype), all_modes(op, "reference", dtype)
    assert_close(got[mode], want[mode], **GRAD_TOL[dtype])
    assert_close(got["primal"], want["primal"], **TOL[dtype])


@pytest.mark.parametrize("op", OPS)
def test_xla_derivatives_match_finite_differences(op, x64):
    """JVP and VJP of the "xla" form, and the reverse mode of its tangent map (grad-of-jvp),
    against central finite differences in float64; the "reference" form is checked against
    the oracle above."""
    shape = {SCAN: (1, 6, 6, 2), SSD: (1, 5, 2, 2, 3), ATTENTION: (1, 9, 2, 1, 4)}[op]
    f, xs, ts = differentiable(op, "xla", "float64", shape=shape)
    tol = dict(atol=1e-5, rtol=1e-5, eps=1e-5)
    check_grads(jax.jit(f), xs, order=1, modes=("fwd", "rev"), **tol)
    check_grads(jax.jit(lambda *x: jax.jvp(f, x, ts)[1]), xs, order=1, modes=("rev",), **tol)


@pytest.mark.parametrize("op", OPS)
def test_jvp_and_grad_run_the_tangent_and_backward_kernels(op):
    f, xs, ts = differentiable(op, "interpret", "float32")
    jvp = str(jax.make_jaxpr(lambda *x: jax.jvp(f, x, ts))(*xs))
    grad = str(jax.make_jaxpr(jax.grad(lambda *x: jnp.sum(f(*x)[0])))(*xs))
    assert f"{op}_tangent" in jvp and f"{op}_backward" not in jvp
    assert f"{op}_backward" in grad


def test_selective_scan_xla_form_has_its_own_tangent_and_backward():
    """The chunked XLA form differentiates by its written-out tangent and backward (states
    recomputed from the chunk starts), not by autodiff of its forward scans."""
    f, xs, ts = differentiable(SCAN, "xla", "float32")
    jvp = str(jax.make_jaxpr(lambda *x: jax.jvp(f, x, ts))(*xs))
    grad = str(jax.make_jaxpr(jax.grad(lambda *x: jnp.sum(f(*x)[0])))(*xs))
    assert "selective_scan_xla_tangent" in jvp and "selective_scan_xla_backward" not in jvp
    assert "selective_scan_xla_backward" in grad


# ------------------------------------------------------------------------------ selective_scan


def test_selective_scan_chunk_of_the_kernels_is_bounded():
    args = make_inputs(SCAN, (1, 4, 5, 2))
    with pytest.raises(ValueError, match="chunk_size=512 is too large"):
        ssm_kernels.selective_scan(**args, chunk_size=512, implementation="interpret")


def test_selective_scan_kernels_with_the_gpu_state_padding():
    """State 5 padded to 8 (as for Triton), interpreted: forward and gradients unchanged."""
    args = make_inputs(SCAN, (2, 12, 11, 5), groups_b=2, groups_c=1, options=False)
    core = (args["u"], jax.nn.softplus(args["delta"]), args["A"], args["B"], args["C"],
            jnp.zeros((2, 12, 5)))

    def f(pow2):
        return lambda *a: scan_pallas(*a, 4, interpret=True, pow2_tiles=pow2)
    y, h = jax.jit(f(True))(*core)
    assert_close((y, h), oracles.selective_scan(**args, delta_softplus=True), **TOL["float32"])
    loss = lambda fn: jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(fn(*a)[0])), (0, 2, 3)))  # noqa: E731
    assert_close(loss(f(True))(*core), loss(f(False))(*core), **GRAD_TOL["float32"])


# ------------------------------------------------------------------------------------------ ssd


def test_ssd_long_strong_decay_stays_finite_and_exact():
    """Strong decay over many chunks: the masked segment sum stays finite and exact."""
    args = make_inputs(SSD, (2, 70, 2, 3, 4), seed=1)
    args["A"] = args["A"] * 20.0
    Y, final = ssm_kernels.ssd(**args, chunk_size=16, implementation="xla")
    assert np.isfinite(Y).all()
    assert_close((Y, final), ssm_kernels.ssd(**args, chunk_size=16, implementation="reference"),
                 rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda a: ssm_kernels.ssd(**dict(args, A=a), chunk_size=16)[0].sum())(args["A"])
    assert np.isfinite(g).all()


def test_ssd_equals_selective_scan_for_scalar_decay_per_head():
    """Mamba-style parameterization: A_t = dt_t * a_h, X_t = dt_t * x_t. Then SSD is the selective
    scan over dim = heads * headdim channels (channel h * headdim + p) with u = x, delta = dt
    (no softplus), A[channel, :] = a_h, and B/C grouped with the same groups."""
    rng = np.random.default_rng(11)
    batch, length, heads, headdim, state, groups = 2, 10, 4, 3, 5, 2
    dt = np.log1p(np.exp(rng.standard_normal((batch, length, heads)))).astype(np.float32)
    a = -np.exp(rng.standard_normal(heads)).astype(np.float32)
    x = rng.standard_normal((batch, length, heads, headdim)).astype(np.float32)
    B = rng.standard_normal((batch, length, groups, state)).astype(np.float32)
    C = rng.standard_normal((batch, length, groups, state)).astype(np.float32)
    h0 = rng.standard_normal((batch, heads, headdim, state)).astype(np.float32)

    Y, final = ssm_kernels.ssd(dt[..., None] * x, dt * a, B, C, h0, chunk_size=4)

    dim = heads * headdim
    u = x.reshape(batch, length, dim).transpose(0, 2, 1)
    delta = np.repeat(dt, headdim, axis=2).transpose(0, 2, 1)
    A_ss = np.repeat(np.repeat(a, headdim)[:, None], state, axis=1)
    to_ss = lambda M: M.transpose(0, 2, 3, 1)  # noqa: E731  (batch, groups, state, length)
    y, last = ssm_kernels.selective_scan(u, delta, A_ss, to_ss(B), to_ss(C),
                                         initial_state=h0.reshape(batch, dim, state),
                                         implementation="reference")
    assert_close((Y, final), (np.asarray(y).transpose(0, 2, 1).reshape(Y.shape),
                              np.asarray(last).reshape(final.shape)), rtol=1e-5, atol=1e-5)


def test_ssd_kernels_with_the_gpu_tiles_and_headdim_tiling():
    """As built for Triton, interpreted: chunk 12 -> 16, headdim 3 -> 16 and state 5 -> 16;
    BlockSizes(headdim=8) splits the state rows over two programs (forward and tangent)."""
    args = make_inputs(SSD, (1, 20, 2, 3, 5), seed=11, groups=1)
    names = ("X", "A", "B", "C", "initial_state")
    xs = tuple(args[n] for n in names)
    ts = tuple(make_inputs(SSD, (1, 20, 2, 3, 5), seed=14, groups=1)[n] for n in names)

    def f(*a):
        return ssd_pallas(*a, 12, interpret=True, pow2_tiles=True, blocks=SSDBlocks(headdim=8))

    def g(*a):
        return ssm_kernels.ssd(*a, chunk_size=12, implementation="xla")
    assert_close(jax.jit(f)(*xs), oracles.ssd(**args), **TOL["float32"])
    assert_close(jax.jit(lambda *a: jax.jvp(f, a, ts))(*xs), jax.jvp(g, xs, ts),
                 **GRAD_TOL["float32"])
    loss = lambda fn: jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(fn(*a)[0])), (0, 2)))  # noqa: E731
    assert_close(loss(f)(*xs), loss(g)(*xs), **GRAD_TOL["float32"])
    with pytest.raises(ValueError, match=r"BlockSizes.headdim=5 must divide headdim=16"):
        ssd_pallas(*xs, 16, interpret=True, pow2_tiles=True, blocks=SSDBlocks(headdim=5))


# ------------------------------------------------------------------------------ bmojo_attention


def run_attention(implementation, args, window, **kw):
    args = dict(args)
    return ssm_kernels.bmojo_attention(args.pop("q"), args.pop("k"), args.pop("v"), window=window,
                                       implementation=implementation, **args, **kw)


@pytest.mark.parametrize("implementation", ["reference", "xla", "interpret"])
@pytest.mark.parametrize("window", [None, 5])
def test_attention_in_context_only_is_dot_product_attention(implementation, window):
    """W >= length: causal attention; otherwise local_window_size=(W - 1, 0)."""
    args = make_inputs(ATTENTION, (2, 19, 4, 2, 8), seed=3, fading=False)
    want = jax.jit(functools.partial(
        jax.nn.dot_product_attention, is_causal=True, return_residual=True,
        local_window_size=None if window is None else (window - 1, 0)))(args["q"], args["k"],
                                                                        args["v"])
    got = run_attention(implementation, args, 22 if window is None else window)
    assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_attention_sources_merge_by_log_sum_exp():
    """Joint = lse-merge of separate runs: in-context, fading (a shifted in-context run), slots."""
    window = 3
    args = make_inputs(ATTENTION, (2, 19, 4, 4, 8), seed=4, memory="shared")

    def merge(parts):
        lse = functools.reduce(jnp.logaddexp, [part[1] for part in parts])
        return sum(o * jnp.exp(l - lse)[..., None] for o, l in parts), lse

    @jax.jit
    def joint_and_merged(args):
        q, k, v = args["q"], args["k"], args["v"]
        ctx = run_attention("xla", {"q": q, "k": k, "v": v}, window)
        # query i >= W sees fading keys i-2W+1..i-W: an in-context window over fading_k shifted by W
        fad = run_attention("xla", {"q": q[:, window:], "k": args["fading_k"][:, :-window],
                                    "v": args["fading_v"][:, :-window]}, window)
        fad = (jnp.zeros_like(q).at[:, window:].set(fad[0]),
               jnp.full(q.shape[:3], -jnp.inf).at[:, window:].set(fad[1]))
        # slots on their own: masked dense attention; rows with no visible slot get lse = -inf
        pos, i = args["memory_pos"][:, None, :], jnp.arange(q.shape[1])[None, :, None]
        visible = (pos >= 0) & (pos <= i - 2 * window)
        mem, mem_lse = jax.nn.dot_product_attention(
            q, args["memory_k"], args["memory_v"], mask=visible[:, None], return_residual=True)
        none = ~visible.any(-1)[..., None]
        mem = (jnp.where(none[..., None], 0.0, mem), jnp.where(none, -jnp.inf, mem_lse))
        return run_attention("xla", args, window), merge([ctx, fad, mem]), visible

    joint, want, visible = joint_and_merged(args)
    assert bool(visible.any()) and bool((~visible).any())
    assert_close(joint, want, rtol=1e-5, atol=1e-5)


def test_attention_fading_copy_of_keys_doubles_the_window():
    args = make_inputs(ATTENTION, (2, 19, 4, 2, 8), seed=5, fading=False)
    doubled = dict(args, fading_k=args["k"], fading_v=args["v"])
    assert_close(run_attention("xla", doubled, 3), run_attention("xla", args, 6),
                 rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", ["reference", "xla"])
@pytest.mark.parametrize("fading", [False, True])
def test_attention_empty_and_hidden_slots_change_nothing(implementation, fading):
    """Empty slots (pos -1) and slots whose tokens are still inside a window are masked."""
    window = 4
    args = make_inputs(ATTENTION, (2, 19, 4, 2, 8), seed=6, fading=fading, memory="shared")
    length = args["q"].shape[1]
    base = {n: a for n, a in args.items() if not n.startswith("memory")}
    want = run_attention(implementation, base, window)
    horizon = 2 * window if fading else window
    rng = np.random.default_rng(0)
    # every slot either empty or at a position p > length - 1 - horizon: too recent for all queries
    hidden = rng.integers(length - horizon, length, args["memory_pos"].shape)
    empty = np.full(args["memory_pos"].shape, -1, np.int32)
    for pos in (empty, hidden.astype(np.int32)):
        assert_close(run_attention(implementation, dict(args, memory_pos=pos), window), want,
                     atol=1e-6, rtol=0)
    # one slot exactly at the horizon of the last query becomes visible to it only
    pos = empty.copy()
    pos[:, 0] = length - 1 - horizon
    got = run_attention(implementation, dict(args, memory_pos=pos), window)
    np.testing.assert_allclose(got[0][:, :-1], want[0][:, :-1], atol=1e-6, rtol=0)
    assert not np.allclose(got[0][:, -1], want[0][:, -1])


@pytest.mark.parametrize("block,window", [(1, 3), (4, 3), (4, 8), (8, 11)])
def test_attention_blocked_form_block_edges(block, window):
    """Blocks smaller than, equal to and larger than W; length not a multiple of the block."""
    args = make_inputs(ATTENTION, (2, 21, 4, 2, 8), seed=1, memory="chunked")
    assert_close(attention_form("xla", block)(**args, window=window),
                 oracles.bmojo_attention(**args, window=window), **TOL["float32"])


def test_attention_kernels_with_the_gpu_tiles():
    """As built for Triton, interpreted, bf16: block 16 > length 13, head_dim 8 -> 16 and 5
    slots -> 16; forward and gradients against the XLA form."""
    args = make_inputs(ATTENTION, (2, 13, 4, 2, 8), "bfloat16", seed=2, memory="chunked")
    names = AUTODIFF[ATTENTION][2]

    def kernel(**a):
        return pallas_attention(**a, window=3, scale=8 ** -0.5, interpret=True,
                                blocks=AttentionBlocks(16), pow2_tiles=True)

    def loss(fn):
        def total(*xs):
            out, lse = fn(**dict(args, **dict(zip(names, xs))))
            return jnp.sum(out.astype(jnp.float32) ** 2) + jnp.sum(lse)
        return jax.jit(jax.grad(total, tuple(range(len(names)))))

    got = kernel(**args)
    assert got[0].dtype == jnp.bfloat16 and got[1].dtype == jnp.float32
    assert_close(got, attention_form("xla")(**args, window=3), rtol=2e-2, atol=2e-2)
    xla = functools.partial(attention_form("xla"), window=3)
    assert_close(loss(kernel)(*(args[n] for n in names)), loss(xla)(*(args[n] for n in names)),
                 rtol=5e-2, atol=5e-2)


# ------------------------------------------------------------------------- validation, dispatch


def _scan_bad(**changes):
    return dict(make_inputs(SCAN, (2, 6, 9, 4), seed=9), **changes)


@pytest.mark.parametrize("args,kwargs,match", [
    (_scan_bad(u=jnp.zeros((2, 6))), {}, r"u has shape \(2, 6\) \(rank 2\); expected rank 3"),
    (_scan_bad(delta=jnp.zeros((2, 6, 8))), {}, r"delta has shape \(2, 6, 8\); expected \(2, 6, 9\)"),
    (_scan_bad(A=jnp.zeros((5, 4))), {}, r"A has shape \(5, 4\); expected \(6, 4\)"),
    (_scan_bad(A=jnp.zeros((6,))), {}, r"A has shape \(6,\) \(rank 1\); expected rank 2"),
    (_scan_bad(B=jnp.zeros((2, 3, 9))), {}, r"B has shape \(2, 3, 9\); expected \(2, 4, 9\)"),
    (_scan_bad(C=jnp.zeros((2, 4, 4, 9))), {}, r"C has shape \(2, 4, 4, 9\): groups=4 must divide dim=6"),
    (_scan_bad(C=jnp.zeros((2, 2, 4, 9, 1))), {}, r"C has shape \(2, 2, 4, 9, 1\) \(rank 5\)"),
    (_scan_bad(D=jnp.zeros((5,))), {}, r"D has shape \(5,\); expected \(6,\)"),
    (_scan_bad(z=jnp.zeros((2, 6, 10))), {}, r"z has shape \(2, 6, 10\); expected \(2, 6, 9\)"),
    (_scan_bad(delta_bias=jnp.zeros((6, 1))), {}, r"delta_bias has shape \(6, 1\) \(rank 2\)"),
    (_scan_bad(initial_state=jnp.zeros((2, 6, 3))), {},
     r"initial_state has shape \(2, 6, 3\); expected \(2, 6, 4\)"),
    (_scan_bad(u=jnp.zeros((2, 6, 9), jnp.int32)), {}, r"u has dtype int32; expected one of"),
    (_scan_bad(B=jnp.zeros((2, 4, 9), jnp.complex64)), {}, r"B has dtype complex64"),
    (_scan_bad(), {"chunk_size": 0}, r"chunk_size must be a positive integer; got 0"),
    (_scan_bad(), {"chunk_size": 2.5}, r"chunk_size must be a positive integer; got 2.5"),
])
def test_selective_scan_validation_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ssm_kernels.selective_scan(**args, **kwargs)


@pytest.mark.parametrize("change,match", [
    (dict(X=lambda x: x[0]), r"X has shape \(13, 4, 3\)"),
    (dict(A=lambda a: a[:, :5]), r"A has shape \(2, 5, 4\); expected \(2, 13, 4\)"),
    (dict(B=lambda b: b[:, :, :3], C=lambda c: c[:, :, :3]), r"B has shape \(2, 13, 3, 5\)"),
    (dict(C=lambda c: c[..., :2]), r"C has shape \(2, 13, 4, 2\)"),
    (dict(initial_state=lambda h: h[..., :2]), r"initial_state has shape \(2, 4, 3, 2\)"),
    (dict(X=lambda x: x.astype(jnp.int32)), r"X has dtype int32"),
    (dict(chunk_size=lambda _: 0), r"chunk_size must be a positive integer; got 0"),
])
def test_ssd_validation_errors(change, match):
    args = make_inputs(SSD, (2, 13, 4, 3, 5), seed=12)
    args.update({name: fn(args.get(name)) for name, fn in change.items()})
    with pytest.raises(ValueError, match=match):
        ssm_kernels.ssd(**args)


def test_attention_validation_errors():
    args = make_inputs(ATTENTION, (2, 8, 4, 2, 8), seed=11, memory="chunked", chunk=4)
    q, k, v = args["q"], args["k"], args["v"]
    mem = {n: args[n] for n in ("memory_k", "memory_v", "memory_pos", "memory_chunk")}

    def bad(match, **kw):
        call = dict(q=q, k=k, v=v, window=2)
        call.update(kw)
        with pytest.raises(ValueError, match=match):
            ssm_kernels.bmojo_attention(call.pop("q"), call.pop("k"), call.pop("v"), **call)

    bad(r"q has shape \(8, 4, 8\) \(rank 3\)", q=q[0])
    bad(r"k has shape .*expected rank 4", k=k[0])
    bad(r"k has shape \(2, 8, 3, 8\); expected kv_heads dividing heads", k=jnp.zeros((2, 8, 3, 8)))
    bad(r"k has shape \(2, 7, 2, 8\); expected \(2, 8, 2, 8\)", k=k[:, :7])
    bad(r"v has shape \(2, 8, 2, 4\); expected \(2, 8, 2, 8\)", v=v[..., :4])
    bad(r"q has dtype int32", q=q.astype(jnp.int32))
    for w in (0, -1, 2.0, True, None):
        bad(r"window must be a positive integer", window=w)
    bad(r"fading_k given without fading_v", fading_k=k)
    bad(r"fading_v has shape \(2, 7, 2, 8\); expected \(2, 8, 2, 8\)", fading_k=k,
        fading_v=v[:, :7])
    bad(r"memory_k, memory_v given without memory_pos",
        memory_k=mem["memory_k"], memory_v=mem["memory_v"])
    bad(r"memory_k has shape \(2, 2, 5\) \(rank 3\).*\(batch, slots",
        **dict(mem, memory_k=mem["memory_k"][..., 0, 0]))
    bad(r"memory_chunk \(a positive int\) is required", **dict(mem, memory_chunk=None))
    bad(r"memory_k has shape \(2, 2, 5, 2, 8\); expected \(2, 3, 5, 2, 8\)",
        **dict(mem, memory_chunk=3))
    bad(r"memory_chunk must be a positive integer", **dict(mem, memory_chunk=0))
    bad(r"memory_v has shape \(2, 2, 4, 2, 8\); expected \(2, 2, 5, 2, 8\)",
        **dict(mem, memory_v=mem["memory_v"][:, :, :4]))
    bad(r"memory_pos has shape \(2, 5\); expected \(2, 2, 5\)",
        **dict(mem, memory_pos=mem["memory_pos"][:, 0]))
    bad(r"memory_pos has dtype float32; expected an integer",
        **dict(mem, memory_pos=mem["memory_pos"].astype(jnp.float32)))
    bad(r"memory_chunk=4 is only used with per-chunk snapshots",
        **dict(mem, memory_k=mem["memory_k"][:, 0], memory_v=mem["memory_v"][:, 0],
               memory_pos=mem["memory_pos"][:, 0]))
    bad(r"memory_chunk=4 given without memory_k", memory_chunk=4)
    for scale in (-1.0, 0.0, float("nan"), float("inf"), jnp.float32(0.5)):
        bad(r"scale must be a finite positive Python number", scale=scale)
    for p in (-2, 8):  # outside [-1, length=8)
        bad(rf"memory_pos has entries from {min(p, -1)} to {max(p, 7)}; expected positions in "
            r"\[-1, length=8\)", **dict(mem, memory_pos=mem["memory_pos"].at[1, 1, 2].set(p)))


def _tiny_call(op, implementation):
    shape, options, static = FORWARD[op][BF16_CASE[op]]
    args = make_inputs(op, shape, **options)
    return getattr(ssm_kernels, op)(**args, **static, implementation=implementation)


@pytest.mark.parametrize("op", OPS)
def test_unknown_implementation_is_an_error(op):
    names = str(sorted(ssm_kernels.implementations(op))).replace("[", r"\[").replace("]", r"\]")
    with pytest.raises(ValueError, match=rf"{op}: implementation='cuda' is not available; "
                                         rf"choose one of {names}"):
        _tiny_call(op, "cuda")
    with pytest.raises(ValueError, match=r"op='lstm' is not an op of ssm_kernels"):
        ssm_kernels.implementations("lstm")


@pytest.mark.parametrize("op", OPS)
def test_compiled_pallas_on_cpu_is_an_error_naming_the_alternative(op, pretend_backend):
    pretend_backend("cpu")
    with pytest.raises(ValueError, match=rf"{op}: implementation='pallas' needs a GPU or TPU.*'interpret'"):
        _tiny_call(op, "pallas")


def test_auto_picks_pallas_only_on_accelerators(pretend_backend):
    forms = ssm_kernels.ops.ssd.api.IMPLEMENTATIONS
    for backend, expected in (("cpu", "xla"), ("gpu", "pallas"), ("tpu", "pallas")):
        pretend_backend(backend)
        assert ssm_kernels._dispatch.resolve("ssd", None, forms) is forms[expected]


# --------------------------------------------------------------- kernels as built for GPU / TPU

LOWERING = {  # op: shapes (as for Triton: GPU padding of odd sizes, padded chunks) and statics
    SCAN: [(1, 32, 37, 16), (1, 32, 37, 5)],   # state 5: padded to 8 for Triton
    SSD: [(1, 40, 2, 24, 20)],                 # chunk 12 -> 16, headdim 24 and state 20 -> 32
    ATTENTION: [(1, 96, 2, 2, 64)],            # bf16, W 32, snapshots every 32 tokens
}


def gpu_problem(op, shape):
    """(f(*arrays) -> outputs, abstract arrays) with implementation="pallas"."""
    if op == SCAN:
        options, static = dict(groups_b=1, groups_c=1, options=False), dict(chunk_size=16)
    elif op == SSD:
        options, static = dict(groups=1), dict(chunk_size=12)
    else:
        options, static = dict(memory="chunked", chunk=32, dtype="bfloat16"), dict(window=32)
    dtype = options.pop("dtype", "float32")
    args = make_inputs(op, shape, dtype, **options)
    names = [n for n, a in args.items() if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.inexact)]
    fixed = {n: a for n, a in args.items() if n not in names}

    def f(*xs):
        return getattr(ssm_kernels, op)(**fixed, **dict(zip(names, xs)), **static,
                                        implementation="pallas")
    return f, [jax.ShapeDtypeStruct(args[n].shape, args[n].dtype) for n in names]


def grad_and_jvp(f):
    def run(*xs):
        loss = lambda *x: sum(jnp.sum(o.astype(jnp.float32)) for o in f(*x))  # noqa: E731
        return jax.grad(loss, tuple(range(len(xs))))(*xs), jax.jvp(f, xs, xs)
    return run


KERNEL_NAMES = {SCAN: ["selective_scan_forward", "selective_scan_tangent", "selective_scan_backward"],
                SSD: ["ssd_forward", "ssd_tangent", "ssd_backward"],
                ATTENTION: [f"bmojo_attention_{k}" for k in ("forward", "tangent", "dq", "dkv_context",
                                                             "dkv_fading", "dkv_memory")]}


@pytest.mark.parametrize("op,shape", [(op, s) for op in OPS for s in LOWERING[op]])
def test_kernels_lower_for_cuda_through_triton(op, shape, pretend_backend):
    """No GPU needed: forward, tangent and backward kernels, as built for a GPU (Triton
    parameters, power-of-two tiles), lower to Triton IR for CUDA; compiling it needs a GPU."""
    pretend_backend("gpu")
    f, avals = gpu_problem(op, shape)
    text = jax.jit(grad_and_jvp(f)).trace(*avals).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") >= len(KERNEL_NAMES[op])
    for name in KERNEL_NAMES[op]:
        assert name in text, name


def pallas_calls(jaxpr):
    """Every ``pallas_call`` equation in ``jaxpr``, inside its sub-jaxprs and in the programs of
    the kernel primitives (traced from their implementation)."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            found.append(eqn)
        elif eqn.primitive.name.startswith(OPS) and eqn.primitive.name.endswith(
                ("_forward", "_tangent", "_backward")):
            inner = jax.make_jaxpr(functools.partial(eqn.primitive.impl, **eqn.params))(
                *(v.aval for v in eqn.invars))
            found += pallas_calls(inner.jaxpr)
        for sub in jaxprs_in_params(eqn.params):
            found += pallas_calls(sub)
    return found


@pytest.mark.parametrize("op", OPS)
def test_tpu_compiler_params_have_one_entry_per_grid_axis(op, pretend_backend):
    """As built for a TPU (Mosaic): every kernel's ``dimension_semantics`` has one entry per
    axis of its grid (traced here, not lowered)."""
    pretend_backend("tpu")
    f, avals = gpu_problem(op, LOWERING[op][0])
    calls = pallas_calls(jax.make_jaxpr(grad_and_jvp(f))(*avals).jaxpr)
    assert {eqn.params["name"] for eqn in calls} == set(KERNEL_NAMES[op])
    for eqn in calls:
        grid = eqn.params["grid_mapping"].grid
        semantics = eqn.params["compiler_params"].dimension_semantics
        assert len(semantics) == len(grid) == 3, (eqn.params["name"], grid, semantics)
