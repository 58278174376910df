"""Choosing an implementation: unknown names and compiled kernels without an accelerator are errors."""

import jax
import jax.numpy as jnp
import pytest

import ssm_kernels


def _calls():
    x = jnp.ones((1, 4, 5))
    yield "selective_scan", lambda impl: ssm_kernels.selective_scan(
        x, x, -jnp.ones((4, 2)), jnp.ones((1, 2, 5)), jnp.ones((1, 2, 5)), implementation=impl)
    q = jnp.ones((1, 5, 2, 4))
    yield "ssd", lambda impl: ssm_kernels.ssd(
        q, -jnp.ones((1, 5, 2)), q, q, block_len=4, implementation=impl)
    yield "bmojo_attention", lambda impl: ssm_kernels.bmojo_attention(
        q, q, q, window=3, implementation=impl)


CALLS = dict(_calls())


@pytest.mark.parametrize("op", CALLS)
def test_unknown_implementation_is_an_error(op):
    with pytest.raises(ValueError, match=rf"{op}: implementation='cuda' is not available"):
        CALLS[op]("cuda")


@pytest.mark.parametrize("op", CALLS)
@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks the CPU refusal")
def test_compiled_pallas_on_cpu_is_an_error_naming_the_alternative(op):
    with pytest.raises(ValueError, match=rf"{op}: implementation='pallas' needs a GPU or TPU.*'interpret'"):
        CALLS[op]("pallas")
