"""Choosing an implementation for an op.

Each public op keeps a table ``{name: function}`` of the implementations that exist for it
(``table``): ``"reference"`` (the op's definition, computed one step or one query at a time),
``"xla"`` (its parallel pure-JAX form), other XLA forms, and ``"pallas"`` / ``"interpret"``
(the Pallas kernels, compiled or interpreted). ``implementation=None`` means: the Pallas kernel
on GPU/TPU when the op has one, XLA elsewhere. Asking for a name the op does not have is an
error, never a silent fallback, and so is asking for the compiled ``"pallas"`` kernels on a
backend without one (CPU: use ``"interpret"``). This is the only place that refuses it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import jax

from ssm_kernels import _compat

ACCELERATORS = ("gpu", "tpu")


def table(*, reference: Callable, xla: Callable, pallas: Callable | None = None,
          static_argnames: tuple[str, ...] = (), **others: Callable) -> dict[str, Callable]:
    """An op's implementations; ``pallas(..., interpret=)`` gives "pallas" and "interpret".

    Every form is jitted once here (``static_argnames`` static), so repeated eager calls of an
    op reuse one compiled program instead of tracing a new closure each time.
    """
    forms = {"reference": reference, "xla": xla, **others}
    if pallas is not None:
        forms.update(pallas=functools.partial(pallas, interpret=False),
                     interpret=functools.partial(pallas, interpret=True))
    return {name: jax.jit(fn, static_argnames=static_argnames) for name, fn in forms.items()}


def resolve(op: str, implementation: str | None, forms: Mapping[str, Callable]) -> Callable:
    """Return the function of ``forms`` that ``implementation`` names (``None``: auto)."""
    backend = _compat.backend()
    if implementation is None:
        on_accelerator = backend in ACCELERATORS
        implementation = "pallas" if on_accelerator and "pallas" in forms else "xla"
    if implementation not in forms:
        raise ValueError(
            f"{op}: implementation={implementation!r} is not available; "
            f"choose one of {sorted(forms)} or None (auto)"
        )
    if implementation == "pallas" and backend not in ACCELERATORS:
        raise ValueError(
            f"{op}: implementation='pallas' needs a GPU or TPU (backend is {backend!r}); use "
            "implementation='interpret' or 'xla' on CPU")
    return forms[implementation]
