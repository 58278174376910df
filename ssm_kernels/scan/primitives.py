"""JAX primitives around the selective-scan kernels, so that every autodiff mode works.

Three primitives, all in the kernel layout of :mod:`ssm_kernels.scan.kernels`:

- ``forward``  (u, dt, A, B, C, h0)                           -> (y, h_last, hc)
- ``tangent``  (u, dt, A, B, C, hc, du, ddt, dA, dB, dC, dh0)  -> (dy, dh_last, dhc)   linear in d*
- ``backward`` (u, dt, A, B, C, hc, gy, gh_last, ghc)         -> (gu, gdt, gA, gB, gC, gh0)

``hc`` are the states at every chunk start (``hc[:, :, 0] == h0``): the only residual that the
backward kernel needs. Rules:

- JVP of ``forward``: ``forward`` for the primal, the fused ``tangent`` kernel for the tangent
  (the tangent of a linear recurrence is a linear recurrence with the same decay).
- transpose of ``tangent`` (w.r.t. d*): the ``backward`` kernel, a reverse scan. ``jax.grad`` is
  JVP + partial evaluation + transpose, so it runs ``forward`` then ``backward`` and
  ``jax.jvp``/``jax.linearize`` run ``forward`` and ``tangent``.
- second order (grad-of-jvp, jvp-of-grad): the JVPs of ``tangent`` and ``backward`` w.r.t. all
  their inputs fall back to differentiating the pure-JAX form of the same map
  (:func:`reference_forward`, its JVP and its VJP); these run as XLA code, not as kernels.
- vmap: the mapped axis is merged into the batch axis (every operand but ``A``/``dA`` has one,
  and per-batch outputs keep it); a mapped ``A``/``dA`` falls back to ``lax.map``.
- lowering: ``mlir.lower_fun`` of the Pallas call (compiled, or ``interpret=True``).

Static parameters: ``T`` (chunk length), ``Dt`` (channel tile), ``interpret``, ``length`` (the
real length, None when no step is padding; see :mod:`ssm_kernels.scan.kernels`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from ssm_kernels.scan import kernels, pallas_compat


def reference_forward(u, dt, A, B, C, h0, *, T, length=None):
    """Pure-JAX form of the ``forward`` primitive (nested ``lax.scan``: chunks, then steps)."""
    batch, groups, P, L = u.shape
    nc = L // T

    us, dts = (jnp.moveaxis(x, 3, 0).reshape(nc, T, batch, groups, P) for x in (u, dt))
    Bs, Cs = (jnp.moveaxis(M, 2, 0).reshape(nc, T, batch, groups, 1, -1) for M in (B, C))
    real = (jnp.arange(L) < (L if length is None else length)).reshape(nc, T)

    def step(h, inputs):
        u_t, dt_t, B_t, C_t, real_t = inputs
        decay = jnp.where(real_t, jnp.exp(dt_t[..., None] * A), 1.0)
        h = decay * h + (dt_t * u_t)[..., None] * B_t
        return h, jnp.sum(C_t * h, axis=-1)

    def chunk(h, inputs):
        h_end, y = jax.lax.scan(step, h, inputs)
        return h_end, (y, h)

    h_last, (y, hc) = jax.lax.scan(chunk, h0, (us, dts, Bs, Cs, real))
    y = jnp.moveaxis(y.reshape(L, batch, groups, P), 0, 3)
    return y, h_last, jnp.moveaxis(hc, 0, 2)


def _reference_tangent(u, dt, A, B, C, hc, du, ddt, dA, dB, dC, dh0, *, T, length):
    fwd = functools.partial(reference_forward, T=T, length=length)
    return jax.jvp(fwd, (u, dt, A, B, C, hc[:, :, 0]), (du, ddt, dA, dB, dC, dh0))[1]


def _reference_backward(u, dt, A, B, C, hc, gy, ghlast, ghc, *, T, length):
    """VJP of :func:`reference_forward`, with gA per batch element (vmap over the batch)."""

    def one(u, dt, B, C, h0, gy, ghlast, ghc):
        fwd = lambda u, dt, A, B, C, h0: jax.tree.map(
            lambda x: x[0], reference_forward(u[None], dt[None], A, B[None], C[None], h0[None], T=T,
                              length=length))
        return jax.vjp(fwd, u, dt, A, B, C, h0)[1]((gy, ghlast, ghc))

    return jax.vmap(one)(u, dt, B, C, hc[:, :, 0], gy, ghlast, ghc)


def _aval(x):
    return pallas_compat.shaped_array(x.shape, x.dtype)


def _make(name, impl, abstract):
    prim = Primitive(name)
    prim.multiple_results = True
    prim.def_impl(impl)
    prim.def_abstract_eval(abstract)
    mlir.register_lowering(prim, mlir.lower_fun(impl, multiple_results=True))
    return prim


def _forward_impl(*args, **params):
    return kernels.forward(*args, **params)


def _forward_abstract(u, dt, A, B, C, h0, *, T, Dt, interpret, length):
    batch, groups, P, L = u.shape
    hc = pallas_compat.shaped_array((batch, groups, L // T, P, A.shape[-1]), u.dtype)
    return [_aval(u), _aval(h0), hc]


def _tangent_impl(*args, **params):
    return kernels.tangent(*args, **params)


def _tangent_abstract(u, dt, A, B, C, hc, *tangents, T, Dt, interpret, length):
    return [_aval(u), _aval(tangents[-1]), _aval(hc)]


def _backward_impl(*args, **params):
    gu, gdt, gA, gB, gC, gh0 = kernels.backward(*args, **params)
    return [gu, gdt, gA, jnp.sum(gB, axis=2), jnp.sum(gC, axis=2), gh0]


def _backward_abstract(u, dt, A, B, C, hc, gy, ghlast, ghc, *, T, Dt, interpret, length):
    gA = pallas_compat.shaped_array((u.shape[0],) + A.shape, u.dtype)
    return [_aval(u), _aval(dt), gA, _aval(B), _aval(C), _aval(ghlast)]


forward_p = _make("selective_scan_forward", _forward_impl, _forward_abstract)
tangent_p = _make("selective_scan_tangent", _tangent_impl, _tangent_abstract)
backward_p = _make("selective_scan_backward", _backward_impl, _backward_abstract)


def _instantiate(tangents, primals):
    return [ad.instantiate_zeros(t) if isinstance(t, ad.Zero) else t for t in tangents]


def _forward_jvp(primals, tangents, **params):
    outs = forward_p.bind(*primals, **params)
    hc = outs[2]
    touts = tangent_p.bind(*primals[:5], hc, *_instantiate(tangents, primals), **params)
    return outs, touts


def _tangent_transpose(cts, *args, **params):
    primals = args[:6]
    if any(ad.is_undefined_primal(x) for x in primals):
        raise NotImplementedError("selective_scan tangent is linear only in its tangent inputs")
    cts = _instantiate(cts, None)
    grads = backward_p.bind(*primals, *cts, **params)
    grads[2] = jnp.sum(grads[2], axis=0)  # gA comes per batch element
    return [None] * 6 + [g if ad.is_undefined_primal(x) else None for g, x in zip(grads, args[6:])]


def _fallback_jvp(reference):
    """JVP rule that differentiates the pure-JAX form ``reference`` of a primitive."""

    def rule(primals, tangents, *, T, Dt, interpret, length):
        return jax.jvp(functools.partial(reference, T=T, length=length), tuple(primals),
                       tuple(_instantiate(tangents, primals)))

    return rule


ad.primitive_jvps[forward_p] = _forward_jvp
ad.primitive_transposes[tangent_p] = _tangent_transpose
ad.primitive_jvps[tangent_p] = _fallback_jvp(_reference_tangent)
ad.primitive_jvps[backward_p] = _fallback_jvp(_reference_backward)


def _batcher(prim, unbatched_positions):
    """Batching rule: merge the mapped axis into the batch axis (axis 0 of every operand except
    those at ``unbatched_positions``); if one of those is mapped, loop with ``lax.map``."""

    def rule(args, dims, **params):
        size = next(x.shape[d] for x, d in zip(args, dims) if d is not None)
        moved = [x if d is None else jnp.moveaxis(x, d, 0) for x, d in zip(args, dims)]
        if any(dims[i] is not None for i in unbatched_positions):
            mapped = [i for i, d in enumerate(dims) if d is not None]

            def one(xs):
                full = list(moved)
                for i, x in zip(mapped, xs):
                    full[i] = x
                return prim.bind(*full, **params)

            outs = jax.lax.map(one, [moved[i] for i in mapped])
            return outs, [0] * len(outs)
        merged = []
        for i, (x, d) in enumerate(zip(moved, dims)):
            if i in unbatched_positions:
                merged.append(x)
            else:
                x = jnp.broadcast_to(x, (size,) + x.shape) if d is None else x
                merged.append(x.reshape((size * x.shape[1],) + x.shape[2:]))
        outs = prim.bind(*merged, **params)
        outs = [o.reshape((size, o.shape[0] // size) + o.shape[1:]) for o in outs]
        return outs, [0] * len(outs)

    return rule


batching.primitive_batchers[forward_p] = _batcher(forward_p, (2,))
batching.primitive_batchers[tangent_p] = _batcher(tangent_p, (2, 8))
batching.primitive_batchers[backward_p] = _batcher(backward_p, (2,))
