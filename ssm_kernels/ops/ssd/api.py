"""Public entry point ``ssd``: validation and dispatch to an implementation."""

from __future__ import annotations

import jax.numpy as jnp

from ssm_kernels import _checks, _dispatch
from ssm_kernels.ops.ssd.pallas import ssd_pallas
from ssm_kernels.ops.ssd.reference import compute_dtype, ssd_reference
from ssm_kernels.ops.ssd.xla import ssd_chunked

IMPLEMENTATIONS = _dispatch.table(reference=ssd_reference, xla=ssd_chunked, pallas=ssd_pallas,
                                  static_argnames=("chunk_size",))


def _validate(X, A, B, C, initial_state, chunk_size):
    _checks.check_rank("X", X, 4, "(batch, length, heads, headdim)")
    batch, length, heads, headdim = X.shape
    _checks.check_shape("A", A, (batch, length, heads), "(batch, length, heads)")
    _checks.check_rank("B", B, 4, "(batch, length, groups, state)")
    groups, state = B.shape[2], B.shape[3]
    if B.shape[:2] != (batch, length) or groups == 0 or heads % groups:
        raise ValueError(
            f"B has shape {tuple(B.shape)}; expected (batch={batch}, length={length}, groups, state) "
            f"with heads={heads} divisible by groups")
    _checks.check_shape("C", C, B.shape, "(batch, length, groups, state), the shape of B")
    if initial_state is not None:
        _checks.check_shape("initial_state", initial_state, (batch, heads, headdim, state),
                            "(batch, heads, headdim, state)")
    for name, t in (("X", X), ("A", A), ("B", B), ("C", C), ("initial_state", initial_state)):
        if t is not None:
            _checks.check_float(name, t)
    _checks.check_positive("chunk_size", chunk_size)


def ssd(X, A, B, C, initial_state=None, *, chunk_size=64, implementation=None):
    """Mamba-2 state-space-duality scan (scalar decay per head).

    Per batch element and head, with the state ``h`` a (headdim, state) matrix::

        h_t = exp(A_t) * h_{t-1} + outer(X_t, B_t)        Y_t = h_t @ C_t

    Args:
      X: (batch, length, heads, headdim) inputs (already multiplied by dt in Mamba-2).
      A: (batch, length, heads) log decay (already multiplied by dt; negative for decay).
      B, C: (batch, length, heads, state), or grouped (batch, length, groups, state) with
        heads % groups == 0; head h uses group h // (heads // groups).
      initial_state: optional (batch, heads, headdim, state) state before the first step.
      chunk_size: chunk length of the chunked forms (any length is padded internally; the
        GPU kernels round it up to a power of two >= 16, see ``pallas``).
      implementation: None (auto: "pallas" on GPU/TPU, else "xla"), "xla" (chunked matmul
        form), "reference" (``lax.scan``, one step at a time), "pallas" (Pallas kernels) or
        "interpret" (the same kernels interpreted, runs on CPU).

    Returns:
      Y (batch, length, heads, headdim) in X.dtype and the final state
      (batch, heads, headdim, state) in float32. Computation is float32 (float64 when an input
      is float64, e.g. for finite-difference checks under x64). Length 0 gives an empty Y and
      the initial state (zeros if none) as the final state.

    A step with ``A = -inf`` is a full reset (the state is zeroed), in every implementation. A
    NaN or inf input at step t changes no output before t. From t on, "reference" computes the
    recurrence as written; the chunked forms ("xla", "pallas", "interpret") give NaN in every
    output and final-state entry the recurrence carries a non-finite input into (where the
    recurrence may give +/-inf instead), see ``xla.nonfinite_seen``.
    """
    X, A, B, C = map(jnp.asarray, (X, A, B, C))
    h0 = None if initial_state is None else jnp.asarray(initial_state)
    _validate(X, A, B, C, h0, chunk_size)
    fn = _dispatch.resolve("ssd", implementation, IMPLEMENTATIONS)
    if h0 is None:
        batch, _, heads, headdim = X.shape
        h0 = jnp.zeros((batch, heads, headdim, B.shape[-1]), jnp.float32)
    if 0 in X.shape[:2] or 0 in h0.shape[2:]:  # nothing to scan: Y is all zeros
        Y, final = jnp.zeros(X.shape, X.dtype), h0
    else:
        Y, final = fn(X, A, B, C, h0, chunk_size=chunk_size)
    return Y.astype(X.dtype), final.astype(compute_dtype(X, A, B, C, h0))
