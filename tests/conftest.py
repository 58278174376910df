"""Fixtures shared by the test modules."""

import jax
import pytest

from ssm_kernels import _compat, _kernel_op


@pytest.fixture
def x64():
    """Run the test with float64 enabled."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def pretend_backend(monkeypatch):
    """``pretend_backend("gpu" | "tpu")``: the ops build their kernels as for that backend
    (compiler parameters, tile padding, dispatch of ``"pallas"``); tracing and lowering (with
    ``lowering_platforms``) still run here. jax's trace caches are cleared on entry and exit, so
    no program traced for the pretended backend is reused."""

    def clear():
        jax.clear_caches()
        _kernel_op._jitted.cache_clear()

    def pretend(name: str):
        clear()
        monkeypatch.setattr(_compat, "backend", lambda: name)

    yield pretend
    clear()
