"""Selective scan through the Pallas kernels: layout preparation around the primitives.

Takes the core arguments of :mod:`ssm_kernels.scan.reference` and returns ``(y, h_last)``.
B and C are repeated to ``lcm(groups_B, groups_C)`` groups; channels are split per group and
padded to a multiple of the channel tile; the length is padded to a multiple of the chunk with
dt = 0 (no input) and the kernels told which steps are padding (decay 1, even where A = -inf),
which leaves the state unchanged.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from ssm_kernels.scan import pallas_compat
from ssm_kernels.scan.primitives import forward_p

DEFAULT_CHUNK = 16
BLOCK_DIM = 32
MAX_CHUNK = 256


def scan_pallas(u, dt, A, B, C, h0, chunk_size=None, *, interpret=False, block_dim=BLOCK_DIM):
    """Selective scan by the Pallas kernels (``interpret=True``: the same kernels on CPU)."""
    T = DEFAULT_CHUNK if chunk_size is None else chunk_size
    if T > MAX_CHUNK:
        raise ValueError(f"chunk_size={T} is too large for the Pallas kernels (their chunk steps "
                         f"are unrolled); expected 1 <= chunk_size <= {MAX_CHUNK}")
    batch, dim, length = u.shape
    n = A.shape[-1]
    G = math.lcm(B.shape[1], C.shape[1])
    per_group = dim // G
    Dt = min(block_dim, pallas_compat.next_power_of_2(per_group))
    P = -(-per_group // Dt) * Dt
    L = -(-length // T) * T

    def channels(x):  # (batch, dim, length) -> (batch, G, P, L)
        x = x.reshape(batch, G, per_group, length)
        return jnp.pad(x, ((0, 0), (0, 0), (0, P - per_group), (0, L - length)))

    def rows(M):  # (batch, g, n, length) -> (batch, G, L, n)
        M = jnp.repeat(M, G // M.shape[1], axis=1)
        return jnp.pad(jnp.swapaxes(M, 2, 3), ((0, 0), (0, 0), (0, L - length), (0, 0)))

    def states(x):  # (..., dim, n) -> (..., G, P, n)
        x = x.reshape(*x.shape[:-2], G, per_group, n)
        return jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, P - per_group), (0, 0)])

    y, h_last, _ = forward_p.bind(channels(u), channels(dt), states(A), rows(B), rows(C),
                                  states(h0), T=T, Dt=Dt, interpret=interpret,
                                  length=None if L == length else length)
    y = y[:, :, :per_group, :length].reshape(batch, dim, length)
    return y, h_last[:, :, :per_group].reshape(batch, dim, n)
