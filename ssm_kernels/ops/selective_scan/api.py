"""Public ``selective_scan`` (Mamba-1): validation, pre/post-processing and dispatch.

Layout follows the reference selective scan published with Mamba: (batch, dim, length).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ssm_kernels import _checks, _dispatch
from ssm_kernels.ops.selective_scan import pallas, reference, xla

IMPLEMENTATIONS = _dispatch.table(reference=reference.scan_reference, xla=xla.scan_chunked,
                                  associative=xla.scan_associative, pallas=pallas.scan_pallas,
                                  static_argnames=("chunk_size",))


def _validate(u, delta, A, B, C, D, z, delta_bias, initial_state, chunk_size):
    _checks.check_rank("u", u, 3, "(batch, dim, length)")
    batch, dim, length = u.shape
    _checks.check_rank("A", A, 2, "(dim, state)")
    _checks.check_shape("A", A, (dim, A.shape[1]), "(dim, state)")
    state = A.shape[1]
    _checks.check_shape("delta", delta, u.shape, "(batch, dim, length), like u")
    for name, M in (("B", B), ("C", C)):
        layout = "(batch, state, length) or (batch, groups, state, length)"
        _checks.check_rank(name, M, (3, 4), layout)
        groups = M.shape[1] if M.ndim == 4 else None
        expected = (batch, state, length) if groups is None else (batch, groups, state, length)
        _checks.check_shape(name, M, expected, layout)
        if groups is not None and (groups == 0 or dim % groups):
            raise ValueError(
                f"{name} has shape {tuple(M.shape)}: groups={groups} must divide dim={dim} "
                f"(expected (batch, groups, state, length) with dim % groups == 0)")
    optional = (("D", D, (dim,), "(dim,)"), ("z", z, u.shape, "(batch, dim, length), like u"),
                ("delta_bias", delta_bias, (dim,), "(dim,)"),
                ("initial_state", initial_state, (batch, dim, state), "(batch, dim, state)"))
    for name, x, shape, layout in optional:
        if x is not None:
            _checks.check_rank(name, x, len(shape), layout)
            _checks.check_shape(name, x, shape, layout)
    for name, x in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias), ("initial_state", initial_state)):
        if x is not None:
            _checks.check_float(name, x)
    if chunk_size is not None:
        _checks.check_positive("chunk_size", chunk_size)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, *, chunk_size=None, implementation=None):
    """Mamba-1 selective scan.

    Shapes: ``u``, ``delta``, ``z`` (batch, dim, length); ``A`` (dim, state); ``B``, ``C``
    (batch, state, length) or grouped (batch, groups, state, length), channel d using group
    d // (dim // groups); ``D``, ``delta_bias`` (dim,); ``initial_state`` (batch, dim, state).

    Computes ``dt = delta + delta_bias`` (``softplus(dt)`` if ``delta_softplus``),
    ``h_t = exp(dt_t A) * h_{t-1} + dt_t B_t u_t`` per channel and state,
    ``y_t = sum_n C_t[n] h_t[n] + D u_t`` and, if ``z`` is given, ``y * silu(z)``.

    Computation runs in float32 (float64 if an input is float64). Returns ``(y, last_state)``:
    ``y`` in ``u.dtype``, ``last_state`` (batch, dim, state) in the compute dtype (ours: always
    both, as the other ops; Mamba's ``selective_scan_fn`` returns the state on request).
    ``chunk_size`` is the chunk length of the ``"xla"`` (default: the power of two nearest
    sqrt(2 length), see :func:`.xla.default_chunk`) and Pallas (default 16) forms.
    ``implementation``: ``None`` (auto), ``"xla"`` (chunked), ``"associative"``, ``"reference"``
    (``lax.scan``, one step per position), ``"pallas"`` and ``"interpret"``.

    Length 0 gives an empty ``y`` and ``initial_state`` (zeros if None) as ``last_state``. In
    every implementation, as in the sequential recurrence: an entry ``A[d, n] = -inf`` zeroes
    that state at every step with ``dt > 0`` (``exp(dt A) = 0``, a full reset), and a NaN or
    inf input at step t changes no output before t.
    """
    _validate(u, delta, A, B, C, D, z, delta_bias, initial_state, chunk_size)
    core = _dispatch.resolve("selective_scan", implementation, IMPLEMENTATIONS)
    inputs = [x for x in (u, delta, A, B, C, D, z, delta_bias, initial_state) if x is not None]
    cdt = jnp.promote_types(jnp.float32, jnp.result_type(*inputs))
    batch, dim, _ = u.shape

    uf = u.astype(cdt)
    dt = delta.astype(cdt)
    if delta_bias is not None:
        dt = dt + delta_bias.astype(cdt)[:, None]
    if delta_softplus:
        dt = jax.nn.softplus(dt)
    Bg = (B if B.ndim == 4 else B[:, None]).astype(cdt)
    Cg = (C if C.ndim == 4 else C[:, None]).astype(cdt)
    h0 = (jnp.zeros((batch, dim, A.shape[1]), cdt) if initial_state is None
          else initial_state.astype(cdt))

    if 0 in (*u.shape, A.shape[1]):  # nothing to scan (or no state: C . h = 0)
        y, h_last = jnp.zeros(u.shape, cdt), h0
    else:
        y, h_last = core(uf, dt, A.astype(cdt), Bg, Cg, h0, chunk_size=chunk_size)
    if D is not None:
        y = y + D.astype(cdt)[:, None] * uf
    if z is not None:
        y = y * jax.nn.silu(z.astype(cdt))
    y = y.astype(u.dtype)
    return y, h_last
