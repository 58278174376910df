"""Repeated eager calls of the public ops (and of the B'MOJO store) compile nothing new.

Compilations are counted with jax's own monitoring event for a backend compile, so a form that
builds a fresh closure per call (and so traces and compiles a new program each time) fails here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import monitoring

import ssm_kernels
from bmojo import memory

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@pytest.fixture
def compilations():
    """A one-element list holding the number of backend compilations since the fixture began."""
    count = [0]

    def listener(event, duration_secs, **kwargs):
        if event == COMPILE_EVENT:
            count[0] += 1

    monitoring.register_event_duration_secs_listener(listener)
    yield count
    monitoring.unregister_event_duration_listener(listener)


def _rand(rng, *shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32)


def _calls():
    rng = np.random.default_rng(0)
    u, dt = _rand(rng, 1, 8, 40), _rand(rng, 1, 8, 40)
    A, B = -jnp.abs(_rand(rng, 8, 4)), _rand(rng, 1, 4, 40)
    X, B2 = _rand(rng, 1, 40, 2, 4), _rand(rng, 1, 40, 1, 4)
    logA = -jnp.abs(_rand(rng, 1, 40, 2))
    k, score = _rand(rng, 1, 40, 1, 4), _rand(rng, 1, 40)
    calls = {}
    for impl in ssm_kernels.implementations("selective_scan"):
        if impl != "pallas":
            calls[f"selective_scan:{impl}"] = lambda impl=impl: ssm_kernels.selective_scan(
                u, dt, A, B, B, delta_softplus=True, chunk_size=16, implementation=impl)
    for impl in ssm_kernels.implementations("ssd"):
        if impl != "pallas":
            calls[f"ssd:{impl}"] = lambda impl=impl: ssm_kernels.ssd(
                X, logA, B2, B2, chunk_size=16, implementation=impl)
    for impl in ssm_kernels.implementations("bmojo_attention"):
        if impl != "pallas":
            calls[f"bmojo_attention:{impl}"] = lambda impl=impl: ssm_kernels.bmojo_attention(
                X, X, X, window=8, implementation=impl)
    calls["store_snapshots"] = lambda: memory.store_snapshots(
        k, k, score, slots=4, chunk=8, horizon=8, rule=memory.StoreRule())
    return calls


CALLS = _calls()


@pytest.mark.parametrize("name", sorted(CALLS))
def test_repeated_eager_calls_compile_nothing_new(name, compilations):
    call = CALLS[name]
    jax.block_until_ready(call())  # the first call may compile
    compilations[0] = 0
    for _ in range(3):
        jax.block_until_ready(call())
    assert compilations[0] == 0, f"{name}: {compilations[0]} compilations in 3 repeated calls"
