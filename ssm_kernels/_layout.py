"""Array layout helpers shared by the ops: padding, tile sizes, groups of heads or channels."""

from __future__ import annotations

import jax.numpy as jnp


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= ``n``."""
    return -(-n // multiple) * multiple


def pow2_at_least(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= max(n, minimum): a Triton tile size."""
    return 1 << (max(n, minimum) - 1).bit_length()


def pad_axis(x, axis: int, size: int, value=0):
    """``x`` padded at the end of ``axis`` with ``value`` up to ``size`` entries."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad, constant_values=value)


def repeat_groups(x, members: int, axis: int):
    """Each group at ``axis`` repeated for its members: member i reads group i // (members /
    groups), e.g. (batch, groups, ...) -> (batch, members, ...)."""
    groups = x.shape[axis]
    return x if groups == members else jnp.repeat(x, members // groups, axis=axis)


def sum_groups(x, groups: int, axis: int):
    """The transpose of ``repeat_groups``: per-member values at ``axis`` summed per group."""
    shape = x.shape
    return x.reshape(*shape[:axis], groups, shape[axis] // groups, *shape[axis + 1:]).sum(axis + 1)
