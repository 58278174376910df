"""One differentiable, batchable op from three kernels and a pure-JAX reference of the forward map.

``KernelOp(name, forward=..., tangent=..., backward=..., reference=..., residuals=...)`` defines
three JAX primitives, ``<name>_forward``, ``<name>_tangent`` and ``<name>_backward``, and binds
the first with ``op(*operands, **params)``. Contract of the four functions (all take the op's
static ``params`` as keywords; every operand and result has a leading batch axis):

- ``forward(*operands) -> outs`` and ``reference(*operands) -> outs``: the same map, as kernels
  and in pure JAX. Floating operands are differentiable; integer ones (positions) are not, and
  come after them.
- ``tangent(operands, residuals, tangents) -> touts``: the JVP, linear in ``tangents`` (one per
  floating operand); ``residuals`` are the outputs at the indices ``residuals`` of the forward.
- ``backward(operands, residuals, cotangents) -> grads``: the VJP (one gradient per floating
  operand), linear in the cotangents of the outputs.

Rules: the JVP of ``forward`` binds ``forward`` and ``tangent``; the transpose of ``tangent`` (in
its tangents) binds ``backward``. So ``jax.jvp`` and ``jax.linearize`` run the tangent kernel and
``jax.grad`` the backward kernel. Second order (grad-of-jvp, jvp-of-grad, Hessians): the JVPs of
``tangent`` and ``backward`` keep the kernel's values and take their tangents from the JVP and VJP
of ``reference`` (XLA code, not kernels); the residual operands' tangents are not needed there,
since ``reference`` recomputes them. Symbolic zero tangents and cotangents are instantiated (the
kernels take every operand). ``vmap`` folds the mapped axis into the batch axis. Eager calls run
one jitted program per set of params; lowering is ``mlir.lower_fun`` of the kernel function.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from ssm_kernels._compat import ShapedArray


def _differentiable(x) -> bool:
    return jnp.issubdtype(x.dtype, jnp.inexact)


@functools.lru_cache(maxsize=None)
def _jitted(fn, params):
    return jax.jit(functools.partial(fn, **dict(params)))


@functools.lru_cache(maxsize=None)
def _abstract(fn, params, avals):
    outs = jax.eval_shape(functools.partial(fn, **dict(params)), *avals)
    return [ShapedArray(o.shape, o.dtype) for o in outs]


def _primitive(name: str, fn) -> Primitive:
    """A multiple-results primitive computed by ``fn(*arrays, **params)``, batched by folding."""
    prim = Primitive(name)
    prim.multiple_results = True

    def batch(args, dims, **params):
        size = next(x.shape[d] for x, d in zip(args, dims) if d is not None)

        def fold(x, d):
            x = jnp.broadcast_to(x, (size, *x.shape)) if d is None else jnp.moveaxis(x, d, 0)
            return x.reshape(size * x.shape[1], *x.shape[2:])

        outs = prim.bind(*map(fold, args, dims), **params)
        return [o.reshape(size, o.shape[0] // size, *o.shape[1:]) for o in outs], [0] * len(outs)

    key = lambda params: tuple(sorted(params.items()))  # noqa: E731
    prim.def_impl(lambda *args, **params: _jitted(fn, key(params))(*args))
    prim.def_abstract_eval(lambda *avals, **params: _abstract(fn, key(params), avals))
    mlir.register_lowering(prim, mlir.lower_fun(fn, multiple_results=True))
    batching.primitive_batchers[prim] = batch
    return prim


class KernelOp:
    """Primitives and autodiff rules of one op (see the module docstring)."""

    def __init__(self, name: str, *, forward, tangent, backward, reference, residuals=()):
        self.reference, self.residuals = reference, tuple(residuals)
        split = self._split
        self.forward_p = _primitive(f"{name}_forward", forward)
        self.tangent_p = _primitive(
            f"{name}_tangent", lambda *a, operands, **p: tangent(*split(a, operands), **p))
        self.backward_p = _primitive(
            f"{name}_backward", lambda *a, operands, **p: backward(*split(a, operands), **p))
        ad.primitive_jvps[self.forward_p] = self._forward_jvp
        ad.primitive_transposes[self.tangent_p] = self._tangent_transpose
        ad.primitive_jvps[self.tangent_p] = self._second_order(self.tangent_p, self._ref_tangent)
        ad.primitive_jvps[self.backward_p] = self._second_order(self.backward_p, self._ref_backward)

    def __call__(self, *operands, **params):
        return self.forward_p.bind(*operands, **params)

    def _split(self, args, n: int):
        """Flat (operands, residuals, linear operands) of a tangent or backward primitive."""
        k = n + len(self.residuals)
        return list(args[:n]), list(args[n:k]), list(args[k:])

    def _forward_jvp(self, primals, tangents, **params):
        outs = self.forward_p.bind(*primals, **params)
        res = [outs[i] for i in self.residuals]
        tans = [ad.instantiate_zeros(t) for t, x in zip(tangents, primals) if _differentiable(x)]
        return outs, self.tangent_p.bind(*primals, *res, *tans, operands=len(primals), **params)

    def _tangent_transpose(self, cts, *args, operands, **params):
        ops, res, tans = self._split(args, operands)
        if any(ad.is_undefined_primal(x) for x in ops + res):
            raise NotImplementedError("a kernel tangent is linear only in its tangent operands")
        grads = self.backward_p.bind(*ops, *res, *map(ad.instantiate_zeros, cts),
                                     operands=operands, **params)
        return [None] * len(ops + res) + [g if ad.is_undefined_primal(t) else None
                                          for g, t in zip(grads, tans)]

    def _differentiable_map(self, ops, params):
        """(reference as a function of the floating operands, those operands)."""
        floats = [i for i, x in enumerate(ops) if _differentiable(x)]

        def fn(*xs):
            full = list(ops)
            for i, x in zip(floats, xs):
                full[i] = x
            return tuple(self.reference(*full, **params))

        return fn, [ops[i] for i in floats]

    @staticmethod
    def _ref_tangent(fn, xs, lin):
        return jax.jvp(fn, tuple(xs), tuple(lin))[1]

    @staticmethod
    def _ref_backward(fn, xs, lin):
        return jax.vjp(fn, *xs)[1](tuple(lin))

    def _second_order(self, prim, linear_map):
        """JVP of a tangent or backward primitive: the kernel's values, and the tangents of
        ``linear_map(reference, floating operands, linear operands)`` (pure JAX)."""

        def jvp(primals, tangents, *, operands, **params):
            outs = prim.bind(*primals, operands=operands, **params)
            ops, _, lin = self._split(primals, operands)
            d_ops, _, d_lin = self._split(tangents, operands)
            fn, xs = self._differentiable_map(ops, params)
            d_xs = [ad.instantiate_zeros(t) for t, x in zip(d_ops, ops) if _differentiable(x)]
            _, d_outs = jax.jvp(lambda xs, lin: linear_map(fn, xs, lin), (xs, lin),
                                (d_xs, [ad.instantiate_zeros(t) for t in d_lin]))
            return outs, list(d_outs)

        return jvp
