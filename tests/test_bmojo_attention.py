"""bmojo_attention (dense and blocked XLA forms) against an independent NumPy float64 oracle."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import ssm_kernels
from ssm_kernels.attention.xla import blocked_attention

FORMS = ("dense", "xla")


def oracle(q, k, v, window, fading_k=None, fading_v=None, memory_k=None, memory_v=None,
           memory_pos=None, memory_chunk=None, scale=None):
    """Loop over queries; list the visible keys of every source explicitly; float64."""
    f64 = lambda x: None if x is None else np.asarray(x, np.float64)  # noqa: E731
    q, k, v, fading_k, fading_v, memory_k, memory_v = map(
        f64, (q, k, v, fading_k, fading_v, memory_k, memory_v))
    batch, length, heads, head_dim = q.shape
    group = heads // k.shape[2]
    scale = head_dim ** -0.5 if scale is None else scale
    horizon = window + (window if fading_k is not None else 0)
    out = np.zeros(q.shape)
    lse = np.zeros(q.shape[:3])
    for b in range(batch):
        for i in range(length):
            for h in range(heads):
                kh = h // group
                keys, vals = [], []
                for j in range(max(0, i - window + 1), i + 1):
                    keys.append(k[b, j, kh])
                    vals.append(v[b, j, kh])
                if fading_k is not None:
                    for j in range(max(0, i - 2 * window + 1), i - window + 1):
                        keys.append(fading_k[b, j, kh])
                        vals.append(fading_v[b, j, kh])
                if memory_k is not None:
                    mk, mv, mp = memory_k[b], memory_v[b], memory_pos[b]
                    if np.ndim(memory_k) == 5:
                        c = i // memory_chunk
                        mk, mv, mp = mk[c], mv[c], mp[c]
                    for s in range(len(mp)):
                        if 0 <= mp[s] <= i - horizon:
                            keys.append(mk[s, kh])
                            vals.append(mv[s, kh])
                scores = scale * np.stack(keys) @ q[b, i, h]
                m = scores.max()
                w = np.exp(scores - m)
                lse[b, i, h] = m + np.log(w.sum())
                out[b, i, h] = (w / w.sum()) @ np.stack(vals)
    return out, lse


def make_inputs(seed, batch=2, length=19, heads=4, kv_heads=2, head_dim=8, fading=True,
                memory=None, slots=5, chunk=6, dtype=jnp.float32):
    """memory: None, "shared" or "chunked"; slot positions cover empty, visible and hidden slots."""
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return jnp.asarray(rng.standard_normal(shape), dtype)

    args = {"q": normal(batch, length, heads, head_dim),
            "k": normal(batch, length, kv_heads, head_dim),
            "v": normal(batch, length, kv_heads, head_dim)}
    if fading:
        args["fading_k"] = normal(batch, length, kv_heads, head_dim)
        args["fading_v"] = normal(batch, length, kv_heads, head_dim)
    if memory is not None:
        lead = (batch,) if memory == "shared" else (batch, -(-length // chunk))
        args["memory_k"] = normal(*lead, slots, kv_heads, head_dim)
        args["memory_v"] = normal(*lead, slots, kv_heads, head_dim)
        args["memory_pos"] = jnp.asarray(rng.integers(-1, length, (*lead, slots)), jnp.int32)
        if memory == "chunked":
            args["memory_chunk"] = chunk
    return args


def run(form, args, window, **kw):
    args = dict(args)
    return ssm_kernels.bmojo_attention(args.pop("q"), args.pop("k"), args.pop("v"),
                                       window=window, implementation=form, **args, **kw)


def assert_matches_oracle(got, args, window, atol, rtol):
    want_out, want_lse = oracle(*(args[n] for n in ("q", "k", "v")), window,
                                **{n: a for n, a in args.items() if n not in "qkv"})
    out, lse = got
    assert out.dtype == args["q"].dtype and lse.dtype == jnp.float32
    np.testing.assert_allclose(np.float64(out), want_out, atol=atol, rtol=rtol)
    np.testing.assert_allclose(np.float64(lse), want_lse, atol=atol, rtol=rtol)


CASES = [  # (window, fading, memory, kv_heads)
    (4, False, None, 2),
    (4, True, None, 4),
    (3, True, "shared", 2),
    (5, True, "chunked", 1),
    (2, False, "chunked", 2),
    (1, True, "shared", 4),
    (30, True, "chunked", 2),   # W >= length: full causal, fading and slots never visible
]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("window,fading,memory,kv_heads", CASES)
def test_float32_matches_oracle(form, window, fading, memory, kv_heads):
    args = make_inputs(0, fading=fading, memory=memory, kv_heads=kv_heads)
    assert_matches_oracle(run(form, args, window), args, window, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("block,window", [(1, 3), (4, 3), (4, 8), (8, 11)])
def test_blocked_form_block_edges(block, window):
    """Blocks smaller than, equal to and larger than W; length not a multiple of the block."""
    args = make_inputs(1, length=21, memory="chunked")
    got = blocked_attention(**args, window=window, scale=args["q"].shape[-1] ** -0.5, block=block)
    assert_matches_oracle(got, args, window, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("form", FORMS)
def test_bfloat16_matches_oracle(form):
    args = make_inputs(2, memory="chunked", dtype=jnp.bfloat16)
    assert_matches_oracle(run(form, args, 4), args, 4, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("window", [None, 5])
def test_in_context_only_is_dot_product_attention(form, window):
    """W >= length: causal attention; otherwise local_window_size=(W - 1, 0)."""
    args = make_inputs(3, fading=False)
    length = args["q"].shape[1]
    reference = jax.jit(functools.partial(
        jax.nn.dot_product_attention, is_causal=True, return_residual=True,
        local_window_size=None if window is None else (window - 1, 0)))
    want, want_lse = reference(args["q"], args["k"], args["v"])
    out, lse = run(form, args, length + 3 if window is None else window)
    np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(lse, want_lse, atol=1e-5, rtol=1e-5)


def lse_merge(parts):
    """Combine (out, lse) of attentions over disjoint key sets into the joint attention."""
    lse = functools.reduce(jnp.logaddexp, [l for _, l in parts])
    return sum(o * jnp.exp(l - lse)[..., None] for o, l in parts), lse


def test_sources_merge_by_log_sum_exp(form="xla"):
    """Joint = lse-merge of separate runs: in-context, fading (a shifted in-context run), slots."""
    window = 3
    args = make_inputs(4, memory="shared", kv_heads=4)

    @jax.jit
    def joint_and_merged(args):
        q, k, v = args["q"], args["k"], args["v"]
        ctx = run(form, {"q": q, "k": k, "v": v}, window)
        # query i >= W sees fading keys i-2W+1..i-W: an in-context window over fading_k shifted by W
        fad = run(form, {"q": q[:, window:], "k": args["fading_k"][:, :-window],
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
        return run(form, args, window), lse_merge([ctx, fad, mem]), visible

    joint, want, visible = joint_and_merged(args)
    assert bool(visible.any()) and bool((~visible).any())
    np.testing.assert_allclose(joint[0], want[0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(joint[1], want[1], atol=1e-5, rtol=1e-5)


def test_fading_copy_of_keys_doubles_the_window(form="xla"):
    args = make_inputs(5, fading=False)
    args2 = dict(args, fading_k=args["k"], fading_v=args["v"])
    for got, want in zip(run(form, args2, 3), run(form, args, 6)):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("fading", [False, True])
def test_empty_and_hidden_slots_change_nothing(form, fading):
    """Empty slots (pos -1) and slots whose tokens are still inside a window are masked."""
    window = 4
    args = make_inputs(6, fading=fading, memory="shared")
    length = args["q"].shape[1]
    base = {n: args[n] for n in ("q", "k", "v", "fading_k", "fading_v") if n in args}
    want = run(form, base, window)
    horizon = 2 * window if fading else window
    rng = np.random.default_rng(0)
    # every slot either empty or at a position p > length - 1 - horizon: too recent for all queries
    hidden = rng.integers(length - horizon, length, args["memory_pos"].shape)
    empty = np.full(args["memory_pos"].shape, -1, np.int32)
    for pos in (empty, hidden.astype(np.int32)):
        got = run(form, dict(args, memory_pos=pos), window)
        np.testing.assert_allclose(got[0], want[0], atol=1e-6, rtol=0)
        np.testing.assert_allclose(got[1], want[1], atol=1e-6, rtol=0)
    # one slot exactly at the horizon of the last query becomes visible to it only
    pos = empty.copy()
    pos[:, 0] = length - 1 - horizon
    got = run(form, dict(args, memory_pos=pos), window)
    np.testing.assert_allclose(got[0][:, :-1], want[0][:, :-1], atol=1e-6, rtol=0)
    assert not np.allclose(got[0][:, -1], want[0][:, -1])


def test_vmap_matches_loop():
    args = make_inputs(7, memory="chunked")
    stacked = {n: np.stack([a, a[::-1]]) for n, a in args.items() if n != "memory_chunk"}
    fn = functools.partial(ssm_kernels.bmojo_attention, window=3, memory_chunk=6,
                           implementation="xla")
    names = ("q", "k", "v", "fading_k", "fading_v", "memory_k", "memory_v", "memory_pos")

    def call(*xs):
        return fn(*xs[:3], **dict(zip(names[3:], xs[3:])))

    got = jax.jit(jax.vmap(call))(*(stacked[n] for n in names))
    for i in range(2):
        want = call(*(stacked[n][i] for n in names))
        np.testing.assert_allclose(got[0][i], want[0], atol=1e-6)
        np.testing.assert_allclose(got[1][i], want[1], atol=1e-6)


DIFF_NAMES = ("q", "k", "v", "fading_k", "fading_v", "memory_k", "memory_v")


def differentiable(form, args, window):
    """f(q, k, v, fading_k, fading_v, memory_k, memory_v) -> (out, lse); positions closed over."""
    fixed = {n: a for n, a in args.items() if n not in DIFF_NAMES}

    def f(*xs):
        return run(form, dict(fixed, **dict(zip(DIFF_NAMES, xs))), window)

    return f, tuple(args[n] for n in DIFF_NAMES)


def test_autodiff_matches_finite_differences():
    """jvp and vjp, then jvp-of-jvp and grad-of-jvp (the tangent map, jitted) in float64."""
    with jax.enable_x64(True):
        args = make_inputs(8, batch=1, length=9, heads=2, kv_heads=1, head_dim=4,
                           memory="chunked", slots=3, chunk=4, dtype=jnp.float64)
        f, xs = differentiable("xla", args, 2)
        tangents = make_inputs(10, batch=1, length=9, heads=2, kv_heads=1, head_dim=4,
                               memory="chunked", slots=3, chunk=4, dtype=jnp.float64)
        ts = tuple(tangents[n] for n in DIFF_NAMES)
        check_grads(jax.jit(f), xs, order=1, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)
        tangent_map = jax.jit(lambda *xs: jax.jvp(f, xs, ts)[1])
        check_grads(tangent_map, xs, order=1, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)


def test_linearize_matches_jvp():
    with jax.enable_x64(True):
        args = make_inputs(9, batch=1, length=9, heads=2, kv_heads=1, head_dim=4,
                           memory="shared", slots=3, dtype=jnp.float64)
        f, xs = differentiable("xla", args, 2)
        tangents = make_inputs(10, batch=1, length=9, heads=2, kv_heads=1, head_dim=4,
                               memory="shared", slots=3, dtype=jnp.float64)
        ts = tuple(tangents[n] for n in DIFF_NAMES)
        primal, f_lin = jax.linearize(f, *xs)
        want_primal, want_tangent = jax.jvp(f, xs, ts)
        for got, want in zip((primal, f_lin(*ts)), (want_primal, want_tangent)):
            np.testing.assert_allclose(got[0], want[0], atol=1e-12)
            np.testing.assert_allclose(got[1], want[1], atol=1e-12)


def test_validation_errors():
    args = make_inputs(11, length=8, memory="chunked", chunk=4)
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
    bad(r"implementation='triton' is not available; choose one of "
        r"\['dense', 'interpret', 'pallas', 'xla'\]", implementation="triton")
