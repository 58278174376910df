"""Version guards for the Pallas kernel (the one place that knows about jax releases).

GPU lowering by jax line (pallas_call without compiler_params):
  - jax 0.10: ``jax_pallas_use_mosaic_gpu`` defaults to True, so a bare pallas_call lowers to
    Mosaic GPU (and warns that pallas_call for Mosaic GPU is deprecated);
  - jax 0.11 / 0.12: Mosaic GPU is the default as well; the Triton backend still works but is
    deprecated from 0.11 (it warns and will be removed).
This kernel is written in the Triton style (dynamic ``fori_loop`` bounds, ``pl.ds`` slices of
whole-sequence blocks), so on GPU it asks for the Triton lowering explicitly by passing
``jax.experimental.pallas.triton.CompilerParams``. On TPU the default Mosaic TPU lowering is
used (not verified: the whole-sequence key blocks would need VMEM-sized inputs).
``interpret=True`` runs everywhere (CPU tests).
"""

from __future__ import annotations

import jax
from jax.extend.core import Primitive  # noqa: F401  (re-exported for pallas.py)
from jax.interpreters import ad, batching, mlir  # noqa: F401

try:
    from jax.core import ShapedArray
except ImportError:  # pragma: no cover - later jax releases may drop the alias
    from jax._src.core import ShapedArray

try:  # removed in a future jax (deprecated from 0.11)
    from jax.experimental.pallas import triton as pl_triton
except ImportError:  # pragma: no cover - depends on the installed jax
    pl_triton = None


def compiler_params(num_warps: int, num_stages: int):
    """Compiler parameters selecting the lowering this kernel is written for, or None."""
    if jax.default_backend() == "gpu":
        if pl_triton is None:
            raise NotImplementedError(
                "bmojo_attention implementation='pallas' needs the Pallas Triton backend, "
                f"which this jax ({jax.__version__}) no longer has; use implementation='xla'"
            )
        return pl_triton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
    return None


def shaped_array(shape, dtype):
    """Abstract value returned by the primitives' abstract evaluation rules."""
    return ShapedArray(tuple(shape), dtype)
