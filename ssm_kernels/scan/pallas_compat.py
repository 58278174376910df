"""The one place where the selective-scan kernels depend on the jax version and the backend.

GPU lowering, by jax line (looked up in the jax sources and docs):

- jax 0.10: ``pl.pallas_call`` lowers to Mosaic GPU by default (``jax_pallas_use_mosaic_gpu``
  defaults to True) and warns that Mosaic GPU kernels should move to ``plgpu.kernel``; passing
  ``compiler_params=jax.experimental.pallas.triton.CompilerParams(...)`` selects the Triton lowering.
- jax 0.11 / 0.12: Mosaic GPU stays the default; the Triton lowering is deprecated but still
  selected by the same ``triton.CompilerParams``.

These kernels are scalar-recurrence code (no matmuls, no scratch memory, per-step column/row
loads), which fits the Triton programming model; Mosaic GPU wants warpgroup-shaped arrays and
explicit pipelining. So on GPU we ask for Triton explicitly on every jax line. TPU: Mosaic,
every grid axis "parallel" (the chunk walk is a loop inside the kernel). CPU: ``interpret=True``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl


def call_options(grid_rank: int, interpret: bool) -> dict:
    """Extra ``pl.pallas_call`` keyword arguments for the current backend."""
    if interpret:
        return {}
    backend = jax.default_backend()
    if backend == "gpu":
        from jax.experimental.pallas import triton as pltriton

        return {"compiler_params": pltriton.CompilerParams(num_warps=4, num_stages=1)}
    if backend == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        params = getattr(pltpu, "CompilerParams", None) or pltpu.TPUCompilerParams
        return {"compiler_params": params(dimension_semantics=("parallel",) * grid_rank)}
    return {}


def next_power_of_2(x: int) -> int:
    return pl.next_power_of_2(x)


def shaped_array(shape, dtype):
    """An abstract value for a primitive's abstract evaluation."""
    return jax.core.ShapedArray(tuple(shape), jnp.dtype(dtype))
