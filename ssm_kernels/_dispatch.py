"""Choosing an implementation for an op.

Each public op keeps a table ``{name: function}`` of the implementations that exist for it.
``implementation=None`` means: the Pallas kernel on GPU/TPU when the op has one, XLA elsewhere.
Asking for a name the op does not have is an error, never a silent fallback, and so is asking
for the compiled ``"pallas"`` kernels on a backend without one (CPU: use ``"interpret"``).
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
    if implementation not in table:
        raise ValueError(
            f"{op}: implementation={implementation!r} is not available; "
            f"choose one of {sorted(table)} or None (auto)"
        )
    if implementation == "pallas" and jax.default_backend() not in ACCELERATORS:
        raise ValueError(
            f"{op}: implementation='pallas' needs a GPU or TPU (backend is "
            f"{jax.default_backend()!r}); use implementation='interpret' or 'xla' on CPU"
        )
    return table[implementation]
