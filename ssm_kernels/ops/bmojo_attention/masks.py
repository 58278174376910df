"""Which keys of the three B'MOJO sources a query may see: pure functions of positions.

Every implementation (dense reference, blocked XLA form, Pallas kernel) builds its masks from
these rules, so they agree by construction on what is visible. Positions broadcast; a key
position outside ``[0, length)`` (padding) is never visible.

- in-context window: ``i - W + 1 <= j <= i``
- fading window:     ``i - 2W + 1 <= j <= i - W``
- eidetic slot with token position ``p``: ``0 <= p <= i - W - (W if fading else 0)``
"""

from __future__ import annotations

import jax.numpy as jnp

# Finite "minus infinity" for masked scores: exp underflows to exactly 0 against any real
# score, and a row whose every entry is masked (padding only) stays finite.
MASK_VALUE = -1e30


def in_range(pos, length: int):
    """True where a key position is a real token of a sequence of ``length``."""
    return (pos >= 0) & (pos < length)


def context_visible(q_pos, k_pos, window: int, length: int):
    """In-context window: key ``j`` is visible to query ``i`` iff ``i - W < j <= i``."""
    return in_range(k_pos, length) & (k_pos <= q_pos) & (k_pos > q_pos - window)


def fading_visible(q_pos, k_pos, window: int, length: int):
    """Fading window: key ``j`` is visible to query ``i`` iff ``i - 2W < j <= i - W``."""
    return in_range(k_pos, length) & (k_pos <= q_pos - window) & (k_pos > q_pos - 2 * window)


def memory_horizon(window: int, has_fading: bool) -> int:
    """How far back a slot's token must lie: ``W`` (in-context only) or ``2W`` (with fading)."""
    return 2 * window if has_fading else window


def memory_visible(q_pos, slot_pos, window: int, has_fading: bool):
    """Eidetic slot: visible iff ``0 <= pos <= i - horizon`` (empty slots have ``pos = -1``)."""
    return (slot_pos >= 0) & (slot_pos <= q_pos - memory_horizon(window, has_fading))


def masked(scores, visible):
    """``scores`` where ``visible``, else ``MASK_VALUE`` (no gradient reaches masked entries)."""
    return jnp.where(visible, scores, jnp.asarray(MASK_VALUE, scores.dtype))
