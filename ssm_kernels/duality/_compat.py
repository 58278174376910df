"""The one place where Pallas API differences between jax releases and backends are handled.

GPU lowering by jax line (from jax's sources and the Pallas changelog):
- jax 0.10: ``pallas_call`` lowers to Mosaic GPU by default (config ``jax_pallas_use_mosaic_gpu``,
  default True; ``pallas_call`` + Mosaic GPU warns that ``plgpu.kernel`` is its future API) and
  to Triton when ``compiler_params`` is ``jax.experimental.pallas.triton.CompilerParams``.
- jax 0.11 / 0.12: same selection; the Triton backend is marked deprecated ("will be removed in
  a future version") but still present.
These kernels are grid + BlockSpec kernels with in-kernel ``dot_general`` on (block_len x state)
and (block_len x headdim) tiles and a sequential loop over chunks inside each program, the shape
that the Triton lowering handles, so on GPU we pass the Triton compiler parameters explicitly.
TPU: Mosaic (``pltpu.CompilerParams``); every block spans whole trailing dims of its array, so
the (8, 128) tiling rule is met for any headdim/state (Mosaic pads internally).
``pl.dot`` is deprecated from 0.10 (moved to the Triton module), hence ``lax.dot_general``.
"""

from __future__ import annotations

import jax
from jax.experimental import pallas as pl


def compiler_params(interpret: bool):
    """Backend-specific ``compiler_params`` for ``pl.pallas_call`` (None in interpret mode)."""
    if interpret:
        return None
    backend = jax.default_backend()
    if backend == "gpu":
        from jax.experimental.pallas import triton as pltriton
        return pltriton.CompilerParams(num_warps=4, num_stages=2)
    if backend == "tpu":
        from jax.experimental.pallas import tpu as pltpu
        return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel"))
    raise ValueError(
        f"implementation='pallas' needs a GPU or TPU backend; the default backend is {backend!r}. "
        "Use implementation='interpret' (the same kernel, interpreted) or 'xla' on CPU.")


def needs_pow2_tiles(interpret: bool) -> bool:
    """True where the kernels lower to Triton, whose loads/stores need power-of-two sizes and
    whose dots need every tile dimension >= 16."""
    return not interpret and jax.default_backend() == "gpu"


def pallas_call(kernel, *, interpret: bool, **kwargs):
    """``pl.pallas_call`` with this module's backend parameters."""
    params = compiler_params(interpret)
    if params is not None:
        kwargs["compiler_params"] = params
    return pl.pallas_call(kernel, interpret=interpret, **kwargs)


BlockSpec = pl.BlockSpec
ds = pl.ds
