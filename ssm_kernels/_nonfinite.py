"""Helpers that keep NaN and inf out of the terms a causal mask excludes.

A masked weight is 0, and ``0 * nan = nan``, ``0 * inf = nan``: a matmul of masked weights
with inputs that hold a non-finite entry at a position the mask excludes would still carry it
into the output. The ops therefore multiply masked weights by ``finite_part(x)`` only, and
put the non-finite entries back where the output really depends on them, a pass that runs
only when an input holds a NaN or inf (``if_any_nonfinite``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def finite_part(x):
    """``x`` with its NaN and +/-inf entries replaced by 0 (``None`` passes through)."""
    if x is None:
        return None
    return jnp.where(jnp.isfinite(x), x, jnp.zeros((), x.dtype))


def poison(x, seen):
    """NaN where ``seen`` (a boolean mask broadcasting to ``x``), else ``x`` unchanged."""
    return jnp.where(seen, jnp.asarray(jnp.nan, x.dtype), x)


def if_any_nonfinite(fn, operand, *inputs):
    """``fn(operand)`` if any of ``inputs`` (None skipped) holds a NaN or inf, else ``operand``.

    A ``lax.cond``: on finite inputs only the test runs (under ``vmap`` both branches run).
    """
    bad = [jnp.any(~jnp.isfinite(x)) for x in inputs if x is not None]
    return jax.lax.cond(jnp.any(jnp.stack(bad)), fn, lambda x: x, operand)
