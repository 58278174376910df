"""Input validation shared by the public ops.

Every failure is a ``ValueError`` that names the argument, its shape (or value) and what was
expected, so that a user can fix the call without reading the source.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16, jnp.float64)


def check_rank(name: str, x, rank: int | Sequence[int], layout: str) -> None:
    """Raise unless ``x.ndim`` is ``rank`` (or one of ``rank``); ``layout`` names the axes."""
    ranks = (rank,) if isinstance(rank, int) else tuple(rank)
    if x.ndim not in ranks:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)} (rank {x.ndim}); expected rank "
            f"{' or '.join(map(str, ranks))}: {layout}"
        )


def check_shape(name: str, x, expected: Sequence[int], layout: str) -> None:
    """Raise unless ``x.shape == expected``; ``layout`` names the axes, e.g. "(batch, dim, length)"."""
    if tuple(x.shape) != tuple(expected):
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}; expected {tuple(expected)} {layout}"
        )


def check_float(name: str, x, allowed=FLOAT_DTYPES) -> None:
    """Raise unless ``x`` has one of the floating dtypes in ``allowed``."""
    if not any(x.dtype == jnp.dtype(d) for d in allowed):
        names = ", ".join(jnp.dtype(d).name for d in allowed)
        raise ValueError(f"{name} has dtype {x.dtype}; expected one of {names}")


def check_positive(name: str, value: int) -> None:
    """Raise unless ``value`` is a positive Python integer (a static size)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
