"""Choosing an implementation for an op.

Each public op keeps a table ``{name: function}`` of the implementations that exist for it.
``implementation=None`` means: the Pallas kernel on GPU/TPU when the op has one, XLA elsewhere.
Asking for a name the op does not have is an error, never a silent fallback.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax

ACCELERATORS = ("gpu", "tpu")


def resolve(op: str, implementation: str | None, table: Mapping[str, Callable]) -> Callable:
    """Return the function of ``table`` that ``implementation`` names (``None``: auto)."""
    if implementation is None:
        on_accelerator = jax.default_backend() in ACCELERATORS
        implementation = "pallas" if on_accelerator and "pallas" in table else "xla"
    try:
        return table[implementation]
    except KeyError:
        raise ValueError(
            f"{op}: implementation={implementation!r} is not available; "
            f"choose one of {sorted(table)} or None (auto)"
        ) from None
