"""Generic helper: a JAX primitive around a (Pallas) implementation function.

``batched_primitive(name, impl)`` returns a multiple-results primitive that
- evaluates eagerly and lowers (``mlir.lower_fun``) through ``impl(*arrays, **params)``,
- infers its output shapes with ``jax.eval_shape(impl)``,
- batches under ``vmap`` by folding the mapped axis into the leading axis that every operand and
  result of ``impl`` is required to have (unmapped operands are broadcast).
Differentiation rules (JVP, transpose) are op-specific and registered by the caller.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import batching, mlir

try:  # public through jax 0.10; guarded in case a later release moves it
    from jax.core import ShapedArray
except ImportError:  # pragma: no cover
    from jax._src.core import ShapedArray


def batched_primitive(name: str, impl) -> Primitive:
    """Primitive ``name`` computed by ``impl(*arrays, **static_params) -> tuple of arrays``."""
    prim = Primitive(name)
    prim.multiple_results = True
    def eager(*args, **params):
        return _cached_jit(impl, tuple(sorted(params.items())))(*args)

    def abstract_eval(*avals, **params):
        outs = jax.eval_shape(functools.partial(impl, **params), *avals)
        return [ShapedArray(o.shape, o.dtype) for o in outs]

    def batch_rule(args, dims, **params):
        # dims[i] is the mapped axis of operand i, or None where it is not mapped
        size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)

        def fold(a, d):
            a = (jnp.broadcast_to(a, (size, *a.shape)) if d is None
                 else jnp.moveaxis(a, d, 0))
            return a.reshape(size * a.shape[1], *a.shape[2:])

        outs = prim.bind(*map(fold, args, dims), **params)
        return [o.reshape(size, o.shape[0] // size, *o.shape[1:]) for o in outs], [0] * len(outs)

    prim.def_impl(eager)
    prim.def_abstract_eval(abstract_eval)
    mlir.register_lowering(prim, mlir.lower_fun(impl, multiple_results=True))
    batching.primitive_batchers[prim] = batch_rule
    return prim


@functools.lru_cache(maxsize=None)
def _cached_jit(impl, params):
    """One compiled function per (impl, static params) for eager calls."""
    return jax.jit(functools.partial(impl, **dict(params)))
