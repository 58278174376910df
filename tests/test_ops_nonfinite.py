"""NaN and inf inputs, full resets, zero-size inputs and empty stores through every
implementation of the three ops, against the float64 NumPy oracles (``tests.oracles``).

A NaN or inf planted at step t must leave every output before t bit-for-bit as with the clean
input; from t on the outputs (and final states) must be non-finite exactly where the oracle's
are, and equal to it elsewhere. Gradients and tangents of the earlier outputs through the
kernels must be finite (and equal) wherever those of the reference are.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssm_kernels
from benchmarks.kernels import attention_inputs, selective_scan_inputs, ssd_inputs
from tests.oracles import bmojo_attention as attention_oracle
from tests.oracles import selective_scan as scan_oracle
from tests.oracles import ssd as ssd_oracle

VALUES = (np.nan, np.inf, -np.inf)
TOL = dict(rtol=2e-5, atol=2e-5)
GRAD = dict(rtol=1e-4, atol=1e-4)
T = 6  # the planted step


def plant(args, name, index, value):
    x = np.array(args[name])
    x[index] = value
    return dict(args, **{name: jnp.asarray(x)})


def assert_same_bits(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


def assert_like_oracle(got, want):
    """Non-finite exactly where the oracle is; equal to it elsewhere."""
    got, want = np.float64(got), np.asarray(want)
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], **TOL)


def assert_finite_where_reference_is(got, want):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        g, w = np.asarray(g), np.asarray(w)
        finite = np.isfinite(w)
        assert np.isfinite(g[finite]).all()
        np.testing.assert_allclose(g[finite], w[finite], **GRAD)


def oracle_quietly(oracle, *args, **kwargs):
    with np.errstate(all="ignore"):
        return oracle(*args, **kwargs)


# ------------------------------------------------------------------------- bmojo_attention

WINDOW, CHUNK = 2, 4


def _attention_case():
    """Fading window and per-chunk slots (memory_chunk CHUNK); slot 0 of the last snapshot
    holds token T."""
    args = attention_inputs((1, 11, 2, 1, 4), seed=3, memory="chunked", slots=3, chunk=CHUNK)
    del args["memory_chunk"]
    args["memory_pos"] = jnp.asarray([[[0, -1, 1], [2, 3, -1], [T, 1, 4]]], jnp.int32)
    return args


ATTENTION_PLANTS = [(name, (0, T, 0, 1)) for name in ("q", "k", "v", "fading_k", "fading_v")]
ATTENTION_PLANTS += [(name, (0, 2, 0, 0, 1)) for name in ("memory_k", "memory_v")]


def _attention(implementation, **static):
    def f(q, k, v, **kw):
        return ssm_kernels.bmojo_attention(q, k, v, window=WINDOW, implementation=implementation,
                                           **kw, **static)
    return f


@pytest.mark.parametrize("implementation", ["reference", "xla", "interpret"])
def test_attention_nonfinite_reaches_only_the_queries_that_see_it(implementation):
    args = _attention_case()
    f = jax.jit(_attention(implementation, memory_chunk=CHUNK))
    clean_out, clean_lse = f(**args)
    for name, index in ATTENTION_PLANTS:
        for value in VALUES:
            planted = plant(args, name, index, value)
            out, lse = f(**planted)
            assert_same_bits(out[:, :T], clean_out[:, :T])
            assert_same_bits(lse[:, :T], clean_lse[:, :T])
            want_out, want_lse = oracle_quietly(attention_oracle, window=WINDOW,
                                                memory_chunk=CHUNK, **planted)
            assert_like_oracle(out, want_out)
            assert_like_oracle(lse, want_lse)
    # a value visible to query T..T+1 only: its column is NaN / inf there and nowhere else
    out, _ = f(**plant(args, "v", (0, T, 0, 1), np.inf))
    assert np.isposinf(out[0, T:T + WINDOW, :, 1]).all()
    assert np.isfinite(np.delete(np.asarray(out[0]), np.s_[T:T + WINDOW], axis=0)).all()
    # shared slots (one snapshot for all queries), without fading: slot 1 holds token T
    shared = attention_inputs((1, 11, 2, 1, 4), seed=4, fading=False, memory="shared", slots=3)
    shared["memory_pos"] = jnp.asarray([[1, T, -1]], jnp.int32)
    g = jax.jit(_attention(implementation))
    for name in ("memory_k", "memory_v"):
        for value in VALUES:
            planted = plant(shared, name, (0, 1, 0, 2), value)
            out, lse = g(**planted)
            want_out, want_lse = oracle_quietly(attention_oracle, window=WINDOW, **planted)
            assert_like_oracle(out, want_out)
            assert_like_oracle(lse, want_lse)
            assert np.isfinite(out[:, :T + WINDOW]).all()


def test_attention_kernel_gradients_of_earlier_outputs_stay_finite():
    """jax.grad and jax.jvp through the interpreted kernels (backward and tangent kernels)
    against the reference form, for a loss over the outputs before the planted step."""
    args = _attention_case()
    names = [n for n in args if n != "memory_pos"]
    clean = tuple(args[n] for n in names)

    def derivatives(implementation):
        f = _attention(implementation, memory_pos=args["memory_pos"], memory_chunk=CHUNK)

        def loss(*xs):
            out, lse = f(**dict(zip(names, xs)))
            return jnp.sum(jnp.sin(out[:, :T])) + jnp.sum(jnp.cos(lse[:, :T]))

        grad = jax.grad(loss, argnums=tuple(range(len(names))))
        return jax.jit(lambda *xs: (grad(*xs), jax.jvp(loss, xs, clean)[1]))

    kernel, reference = derivatives("interpret"), derivatives("reference")
    for name, index in ATTENTION_PLANTS:
        for value in (np.nan, np.inf):
            xs = [plant(args, name, index, value)[n] for n in names]
            assert_finite_where_reference_is(kernel(*xs), reference(*xs))


@pytest.mark.parametrize("implementation", ["reference", "xla", "interpret"])
def test_attention_empty_inputs_and_empty_store(implementation):
    f = _attention(implementation)
    q = jnp.ones((2, 0, 4, 8), jnp.bfloat16)
    k = jnp.ones((2, 0, 2, 8), jnp.bfloat16)
    out, lse = f(q, k, k, fading_k=k, fading_v=k, memory_k=jnp.ones((2, 0, 3, 2, 8)),
                 memory_v=jnp.ones((2, 0, 3, 2, 8)), memory_pos=jnp.zeros((2, 0, 3), jnp.int32),
                 memory_chunk=4)
    assert out.shape == (2, 0, 4, 8) and out.dtype == jnp.bfloat16
    assert lse.shape == (2, 0, 4) and lse.dtype == jnp.float32
    args = attention_inputs((2, 9, 4, 2, 8), seed=4)
    without = f(**args)
    for lead in ((2,), (2, 3)):  # shared and per-chunk stores with 0 slots: no store
        store = dict(memory_k=jnp.ones((*lead, 0, 2, 8)), memory_v=jnp.ones((*lead, 0, 2, 8)),
                     memory_pos=jnp.zeros((*lead, 0), jnp.int32),
                     memory_chunk=4 if len(lead) == 2 else None)
        for got, want in zip(f(**args, **store), without):
            assert_same_bits(got, want)


@pytest.mark.parametrize("implementation", ["reference", "xla", "interpret"])
def test_attention_traced_out_of_range_memory_pos_means_empty_slots(implementation):
    """Under jit memory_pos cannot be range-checked: positions outside [-1, length) act as -1."""
    args = attention_inputs((1, 9, 4, 2, 8), seed=5, memory="shared", slots=4)
    f = jax.jit(_attention(implementation))
    out_of_range = args["memory_pos"].at[0, :2].set(jnp.asarray([9, -7]))
    empty = args["memory_pos"].at[0, :2].set(-1)
    for got, want in zip(f(**dict(args, memory_pos=out_of_range)),
                         f(**dict(args, memory_pos=empty))):
        assert_same_bits(got, want)


# -------------------------------------------------------------------------------------- ssd

BLOCK = 4


def _ssd(implementation):
    return jax.jit(functools.partial(ssm_kernels.ssd, chunk_size=BLOCK,
                                     implementation=implementation))


SSD_PLANTS = [("X", (0, T, 1, 2)), ("A", (0, T, 0)), ("B", (0, T, 0, 3)), ("C", (0, T, 1, 0))]


@pytest.mark.parametrize("implementation", ["reference", "xla", "interpret"])
def test_ssd_nonfinite_reaches_only_later_steps(implementation):
    args = ssd_inputs((1, 11, 2, 3, 4), seed=6, groups=2)
    f = _ssd(implementation)
    clean, _ = f(**args)
    for name, index in SSD_PLANTS:
        for value in VALUES if name != "A" else (np.nan, np.inf):  # A = -inf: a reset, below
            planted = plant(args, name, index, value)
            Y, final = f(**planted)
            assert_same_bits(Y[:, :T], clean[:, :T])
            want_Y, want_final = oracle_quietly(ssd_oracle, **planted)
            assert_like_oracle(Y, want_Y)
            assert_like_oracle(final, want_final)


@pytest.mark.parametrize("implementation", ["reference", "xla", "interpret"])
def test_ssd_minus_inf_decay_is_a_full_reset(implementation):
    """A = -inf at the first step, mid-chunk, at a chunk start and at a chunk end, twice in one
    chunk; the length is not a multiple of the chunk."""
    X, A, B, C, h0 = ssd_inputs((1, 14, 2, 3, 4), seed=7, groups=1).values()
    A = A.at[0, jnp.asarray([0, 5, 6, 8, 11, 12]), jnp.asarray([0, 1, 1, 0, 0, 0])].set(-jnp.inf)
    Y, final = _ssd(implementation)(X, A, B, C, initial_state=h0)
    want_Y, want_final = ssd_oracle(X, A, B, C, h0)
    np.testing.assert_allclose(Y, want_Y, **TOL)
    np.testing.assert_allclose(final, want_final, **TOL)


def test_ssd_kernel_gradients_of_earlier_outputs_stay_finite():
    """Gradients and tangents (backward and tangent kernels) of a loss over the steps before
    the planted one, and through resets, against those of the reference form wherever
    the reference's are finite."""
    X, A, B, C, h0 = ssd_inputs((1, 11, 2, 3, 4), seed=8, groups=2).values()
    A = A.at[0, 2, 1].set(-jnp.inf)  # a reset before T as well

    def derivatives(implementation):
        def loss(*xs):
            Y, _ = ssm_kernels.ssd(*xs, chunk_size=BLOCK, implementation=implementation)
            return jnp.sum(jnp.sin(Y[:, :T]))
        grad = jax.grad(loss, argnums=tuple(range(5)))
        tangents = (X, jnp.ones_like(A), B, C, h0)
        return jax.jit(lambda *xs: (grad(*xs), jax.jvp(loss, xs, tangents)[1]))

    got_fn, want_fn = derivatives("interpret"), derivatives("reference")
    args = dict(X=X, A=A, B=B, C=C, initial_state=h0)
    for name, index in SSD_PLANTS:
        for value in (np.nan, np.inf):
            xs = list(plant(args, name, index, value).values())
            assert_finite_where_reference_is(got_fn(*xs), want_fn(*xs))
    got, want = got_fn(*args.values()), want_fn(*args.values())  # resets only: all finite
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(got))
    assert_finite_where_reference_is(got, want)


@pytest.mark.parametrize("implementation", ["reference", "xla", "interpret"])
def test_ssd_zero_length_returns_the_initial_state(implementation):
    X, B = jnp.ones((2, 0, 4, 3), jnp.bfloat16), jnp.ones((2, 0, 2, 5))
    h0 = jnp.arange(2 * 4 * 3 * 5, dtype=jnp.float32).reshape(2, 4, 3, 5)
    for init, want in ((h0, h0), (None, jnp.zeros_like(h0))):
        Y, final = ssm_kernels.ssd(X, jnp.ones((2, 0, 4)), B, B, initial_state=init,
                                   implementation=implementation)
        assert Y.shape == X.shape and Y.dtype == X.dtype
        assert_same_bits(final, want)


# --------------------------------------------------------------------------- selective_scan

SCAN_IMPLEMENTATIONS = ["reference", "associative", "xla", "interpret"]
SCAN_PLANTS = [("u", (0, 1, T)), ("delta", (0, 2, T)), ("B", (0, 0, T)), ("C", (0, 2, T)),
               ("z", (0, 3, T))]


def _scan(implementation):
    return jax.jit(functools.partial(
        ssm_kernels.selective_scan, delta_softplus=True, chunk_size=4,
        implementation=implementation))


@pytest.mark.parametrize("implementation", SCAN_IMPLEMENTATIONS)
def test_selective_scan_nonfinite_reaches_only_later_steps(implementation):
    args = selective_scan_inputs((1, 4, 11, 3), seed=9)
    f = _scan(implementation)
    clean, _ = f(**args)
    for name, index in SCAN_PLANTS:
        for value in VALUES:
            planted = plant(args, name, index, value)
            y, last = f(**planted)
            assert_same_bits(y[..., :T], clean[..., :T])
            want_y, want_last = oracle_quietly(scan_oracle, delta_softplus=True, **planted)
            assert_like_oracle(y, want_y)
            assert_like_oracle(last, want_last)


@pytest.mark.parametrize("implementation", SCAN_IMPLEMENTATIONS)
def test_selective_scan_minus_inf_decay_is_a_full_reset(implementation):
    """A = -inf: exp(dt A) = 0 at every step; length 11 is not a multiple of the chunk (4)."""
    args = selective_scan_inputs((1, 4, 11, 3), seed=10)
    args["A"] = args["A"].at[1, 2].set(-jnp.inf).at[3, 0].set(-jnp.inf)
    y, last = _scan(implementation)(**args)
    want_y, want_last = scan_oracle(delta_softplus=True, **args)
    np.testing.assert_allclose(y, want_y, **TOL)
    np.testing.assert_allclose(last, want_last, **TOL)


def test_selective_scan_kernel_gradients_of_earlier_outputs_stay_finite():
    """As for ssd: the backward and tangent kernels against the reference form."""
    args = selective_scan_inputs((1, 4, 11, 3), seed=11)
    names = list(args)

    def derivatives(implementation):
        def loss(*xs):
            y, _ = ssm_kernels.selective_scan(**dict(zip(names, xs)), delta_softplus=True,
                                              chunk_size=4, implementation=implementation)
            return jnp.sum(jnp.sin(y[..., :T]))
        grad = jax.grad(loss, argnums=tuple(range(len(names))))
        tangents = tuple(args.values())
        return jax.jit(lambda *xs: (grad(*xs), jax.jvp(loss, xs, tangents)[1]))

    got_fn, want_fn = derivatives("interpret"), derivatives("reference")
    for name, index in SCAN_PLANTS:
        for value in (np.nan, np.inf):
            xs = list(plant(args, name, index, value).values())
            assert_finite_where_reference_is(got_fn(*xs), want_fn(*xs))


@pytest.mark.parametrize("implementation", SCAN_IMPLEMENTATIONS)
def test_selective_scan_zero_length_returns_the_initial_state(implementation):
    args = selective_scan_inputs((2, 4, 0, 3), seed=12)
    y, last = ssm_kernels.selective_scan(**args, implementation=implementation)
    assert y.shape == (2, 4, 0) and y.dtype == args["u"].dtype
    assert_same_bits(last, args["initial_state"])
