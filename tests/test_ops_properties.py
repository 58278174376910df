"""Property tests (hypothesis): drawn shapes (length 1, lengths that are not a multiple of the
chunk or block), windows, chunk and block sizes and dtypes; every implementation of each op
against its sequential or dense reference, float32 tight and bfloat16 loose.

Few examples per implementation (plus one of length 1), derandomized (the same draws on every
run) and without a deadline: each example compiles its shapes once.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import ssm_kernels
from ssm_kernels.attention.pallas import pallas_attention
from ssm_kernels.attention.xla import blocked_attention
from tests.test_bmojo_attention import make_inputs as attention_inputs
from tests.test_selective_scan import make_inputs as scan_inputs
from tests.test_ssd import make_inputs as ssd_inputs

PROPERTY = settings(max_examples=5, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])
TOLERANCE = {jnp.float32: dict(rtol=1e-4, atol=1e-4), jnp.bfloat16: dict(rtol=3e-2, atol=3e-2)}
dtypes = st.sampled_from([jnp.float32, jnp.bfloat16])


def assert_close(got, want, dtype):
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(np.float64(g), np.float64(w), **TOLERANCE[dtype])


@st.composite
def attention_cases(draw):
    case = dict(batch=draw(st.integers(1, 2)), length=draw(st.integers(1, 20)),
                kv_heads=draw(st.sampled_from([1, 2])),
                head_dim=draw(st.integers(1, 8)), fading=draw(st.booleans()),
                memory=draw(st.sampled_from([None, "shared", "chunked"])),
                slots=draw(st.integers(1, 4)), chunk=draw(st.integers(1, 8)), dtype=draw(dtypes))
    case["heads"] = case["kv_heads"] * draw(st.sampled_from([1, 2]))
    return case, draw(st.integers(1, 12)), draw(st.integers(1, 8)), draw(st.integers(0, 99))


@pytest.mark.parametrize("implementation", ["xla", "interpret"])
@PROPERTY
@given(attention_cases())
@example(drawn=(dict(batch=1, length=1, heads=2, kv_heads=1, head_dim=3, fading=True,
                     memory="chunked", slots=2, chunk=1, dtype=jnp.float32), 1, 4, 0))
def test_attention_matches_dense(implementation, drawn):
    case, window, block, seed = drawn
    args = attention_inputs(seed, **case)
    q, k, v = (args.pop(n) for n in "qkv")
    scale = case["head_dim"] ** -0.5
    form = {"xla": blocked_attention,
            "interpret": functools.partial(pallas_attention, interpret=True)}[implementation]
    chunk = args.pop("memory_chunk", None)
    got = jax.jit(functools.partial(form, window=window, scale=scale, block=block,
                                    memory_chunk=chunk))(q, k, v, **args)
    want = jax.jit(functools.partial(ssm_kernels.bmojo_attention, window=window,
                                     memory_chunk=chunk, implementation="dense"))(q, k, v, **args)
    assert_close(got, want, case["dtype"])


@st.composite
def ssd_cases(draw):
    heads = draw(st.sampled_from([1, 2, 4]))
    case = dict(batch=draw(st.integers(1, 2)), length=draw(st.integers(1, 24)), heads=heads,
                headdim=draw(st.integers(1, 5)), state=draw(st.integers(1, 6)),
                groups=draw(st.sampled_from([g for g in (1, 2, 4) if heads % g == 0])),
                dtype=draw(dtypes), init=draw(st.booleans()))
    return case, draw(st.sampled_from([1, 2, 3, 4, 8, 16])), draw(st.integers(0, 99))


@pytest.mark.parametrize("implementation", ["xla", "interpret"])
@PROPERTY
@given(ssd_cases())
@example(drawn=(dict(batch=1, length=1, heads=2, headdim=2, state=3, groups=1,
                     dtype=jnp.float32, init=True), 4, 0))
def test_ssd_matches_sequential(implementation, drawn):
    case, block_len, seed = drawn
    X, A, B, C, h0 = ssd_inputs(seed, **case)

    def run(implementation):
        return jax.jit(functools.partial(ssm_kernels.ssd, block_len=block_len,
                                         implementation=implementation))(X, A, B, C,
                                                                         initial_states=h0)

    assert_close(run(implementation), run("sequential"), case["dtype"])


@st.composite
def scan_cases(draw):
    dim = draw(st.integers(1, 6))
    groups = st.sampled_from([None] + [g for g in (1, 2, 3) if dim % g == 0])
    case = dict(batch=draw(st.integers(1, 2)), dim=dim, length=draw(st.integers(1, 24)),
                state=draw(st.integers(1, 4)), groups_b=draw(groups), groups_c=draw(groups),
                dtype=draw(dtypes), options=draw(st.booleans()))
    return case, draw(st.integers(1, 8)), draw(st.booleans()), draw(st.integers(0, 99))


@pytest.mark.parametrize("implementation", ["associative", "xla", "interpret"])
@PROPERTY
@given(scan_cases())
@example(drawn=(dict(batch=1, dim=2, length=1, state=2, groups_b=None, groups_c=1,
                     dtype=jnp.float32, options=True), 4, True, 0))
def test_selective_scan_matches_sequential(implementation, drawn):
    case, chunk_size, softplus, seed = drawn
    args = scan_inputs(seed, **case)

    def run(implementation):
        return jax.jit(functools.partial(
            ssm_kernels.selective_scan, delta_softplus=softplus, return_last_state=True,
            chunk_size=chunk_size, implementation=implementation))(**args)

    assert_close(run(implementation), run("sequential"), case["dtype"])
