"""Property tests (hypothesis): drawn shapes (length 1, lengths that are not a multiple of the
chunk or block), windows, chunk and block sizes and dtypes; every implementation of each op
against its reference form, float32 tight and bfloat16 loose.

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
from benchmarks.kernels import attention_inputs, selective_scan_inputs, ssd_inputs
from ssm_kernels.ops.bmojo_attention.pallas import BlockSizes, pallas_attention
from ssm_kernels.ops.bmojo_attention.xla import blocked_attention

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
    batch, length, kv_heads = (draw(st.integers(1, 2)), draw(st.integers(1, 20)),
                               draw(st.sampled_from([1, 2])))
    shape = (batch, length, kv_heads * draw(st.sampled_from([1, 2])), kv_heads,
             draw(st.integers(1, 8)))
    case = dict(fading=draw(st.booleans()), memory=draw(st.sampled_from([None, "shared", "chunked"])),
                slots=draw(st.integers(1, 4)), chunk=draw(st.integers(1, 8)), dtype=draw(dtypes))
    return shape, case, draw(st.integers(1, 12)), draw(st.integers(1, 8)), draw(st.integers(0, 99))


@pytest.mark.parametrize("implementation", ["xla", "interpret"])
@PROPERTY
@given(attention_cases())
@example(drawn=((1, 1, 2, 1, 3), dict(fading=True, memory="chunked", slots=2, chunk=1,
                                      dtype=jnp.float32), 1, 4, 0))
def test_attention_matches_reference(implementation, drawn):
    shape, case, window, block, seed = drawn
    args = attention_inputs(shape, seed=seed, **case)
    q, k, v = (args.pop(n) for n in "qkv")
    scale = shape[-1] ** -0.5
    form = {"xla": functools.partial(blocked_attention, block=block),
            "interpret": functools.partial(pallas_attention, interpret=True,
                                           blocks=BlockSizes(block))}[implementation]
    chunk = args.pop("memory_chunk", None)
    got = jax.jit(functools.partial(form, window=window, scale=scale,
                                    memory_chunk=chunk))(q, k, v, **args)
    want = jax.jit(functools.partial(ssm_kernels.bmojo_attention, window=window,
                                     memory_chunk=chunk, implementation="reference"))(q, k, v,
                                                                                      **args)
    assert_close(got, want, case["dtype"])


@st.composite
def ssd_cases(draw):
    heads = draw(st.sampled_from([1, 2, 4]))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 24)), heads, draw(st.integers(1, 5)),
             draw(st.integers(1, 6)))
    case = dict(groups=draw(st.sampled_from([g for g in (1, 2, 4) if heads % g == 0])),
                dtype=draw(dtypes), init=draw(st.booleans()))
    return shape, case, draw(st.sampled_from([1, 2, 3, 4, 8, 16])), draw(st.integers(0, 99))


@pytest.mark.parametrize("implementation", ["xla", "interpret"])
@PROPERTY
@given(ssd_cases())
@example(drawn=((1, 1, 2, 2, 3), dict(groups=1, dtype=jnp.float32, init=True), 4, 0))
def test_ssd_matches_reference(implementation, drawn):
    shape, case, chunk_size, seed = drawn
    args = ssd_inputs(shape, seed=seed, **case)

    def run(implementation):
        return jax.jit(functools.partial(ssm_kernels.ssd, chunk_size=chunk_size,
                                         implementation=implementation))(**args)

    assert_close(run(implementation), run("reference"), case["dtype"])


@st.composite
def scan_cases(draw):
    dim = draw(st.integers(1, 6))
    groups = st.sampled_from([None] + [g for g in (1, 2, 3) if dim % g == 0])
    shape = (draw(st.integers(1, 2)), dim, draw(st.integers(1, 24)), draw(st.integers(1, 4)))
    case = dict(groups_b=draw(groups), groups_c=draw(groups), dtype=draw(dtypes),
                options=draw(st.booleans()))
    return shape, case, draw(st.integers(1, 8)), draw(st.booleans()), draw(st.integers(0, 99))


@pytest.mark.parametrize("implementation", ["associative", "xla", "interpret"])
@PROPERTY
@given(scan_cases())
@example(drawn=((1, 2, 1, 2), dict(groups_b=None, groups_c=1, dtype=jnp.float32, options=True),
                4, True, 0))
def test_selective_scan_matches_reference(implementation, drawn):
    shape, case, chunk_size, softplus, seed = drawn
    args = selective_scan_inputs(shape, seed=seed, **case)

    def run(implementation):
        return jax.jit(functools.partial(
            ssm_kernels.selective_scan, delta_softplus=softplus, chunk_size=chunk_size,
            implementation=implementation))(**args)

    assert_close(run(implementation), run("reference"), case["dtype"])
