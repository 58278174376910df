"""The one module that knows how the Pallas kernels depend on the jax release and the backend.

Lowering, by jax line (from jax's sources and the Pallas changelog):

- GPU, jax 0.10: ``pl.pallas_call`` lowers to Mosaic GPU by default (``jax_pallas_use_mosaic_gpu``
  defaults to True) and to Triton when ``compiler_params`` is
  ``jax.experimental.pallas.triton.CompilerParams``. jax 0.11 / 0.12: the same selection; the
  Triton backend is deprecated but present. Our kernels are written in the Triton style (grid +
  BlockSpecs, ``fori_loop`` walks inside a program, no scratch memory), so on GPU every call asks
  for Triton. Triton tiles need power-of-two sizes (and dots tiles of at least 16): the op
  bindings pad to such sizes where ``lowers_to_triton``.
- TPU: Mosaic (``pltpu.CompilerParams``, named ``TPUCompilerParams`` before), with one
  ``dimension_semantics`` entry per grid axis, all "parallel": the sequential walks (chunks,
  key blocks) are loops inside a program, so grid programs are independent.
- CPU: ``interpret=True`` only; the public ops refuse ``"pallas"`` there (``_dispatch``).

``pl.dot`` moved to the Triton module in 0.10, so the kernels multiply with ``dot`` below
(``lax.dot_general``). ``ShapedArray`` is public as ``jax.core.ShapedArray`` through 0.11.
"""

from __future__ import annotations

import jax
from jax import lax
from jax.experimental import pallas as pl

try:
    from jax.core import ShapedArray
except ImportError:  # pragma: no cover - a later jax may drop the alias
    from jax._src.core import ShapedArray

try:  # deprecated from 0.11; a future jax removes it
    from jax.experimental.pallas import triton as pl_triton
except ImportError:  # pragma: no cover - depends on the installed jax
    pl_triton = None

__all__ = ["ShapedArray", "backend", "compiler_params", "dot", "lowers_to_triton", "pallas_call"]

_CONTRACT = {"nn": ((1,), (0,)), "tn": ((0,), (0,)), "nt": ((1,), (1,))}  # a @ b, a^T b, a b^T


def backend() -> str:
    """The platform the kernels are built for (tests patch it to trace for GPU or TPU)."""
    return jax.default_backend()


def lowers_to_triton(interpret: bool) -> bool:
    """True where a kernel is compiled by Triton: power-of-two tiles, dot tiles >= 16."""
    return not interpret and backend() == "gpu"


def compiler_params(grid_rank: int, *, num_warps: int = 4, num_stages: int = 2):
    """``compiler_params`` of a ``pallas_call`` with a grid of ``grid_rank`` axes (None on CPU)."""
    platform = backend()
    if platform == "gpu":
        if pl_triton is None:
            raise NotImplementedError(
                f"implementation='pallas' needs the Pallas Triton backend, which this jax "
                f"({jax.__version__}) no longer has; use implementation='xla'")
        return pl_triton.CompilerParams(num_warps=num_warps, num_stages=num_stages)
    if platform == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        params = getattr(pltpu, "CompilerParams", None) or pltpu.TPUCompilerParams
        return params(dimension_semantics=("parallel",) * grid_rank)
    return None


def pallas_call(kernel, *, grid, interpret: bool, num_warps: int = 4, num_stages: int = 2,
                **kwargs):
    """``pl.pallas_call`` with this backend's compiler parameters (none when interpreted)."""
    params = None if interpret else compiler_params(len(grid), num_warps=num_warps,
                                                    num_stages=num_stages)
    if params is not None:
        kwargs["compiler_params"] = params
    return pl.pallas_call(kernel, grid=grid, interpret=interpret, **kwargs)


def dot(a, b, form: str = "nn", acc=None):
    """``a @ b`` (``form`` "nn"), ``a^T @ b`` ("tn") or ``a @ b^T`` ("nt") of 2-D tiles,
    accumulated in ``acc`` (default ``a.dtype``)."""
    return lax.dot_general(a, b, (_CONTRACT[form], ((), ())),
                           preferred_element_type=a.dtype if acc is None else acc)
