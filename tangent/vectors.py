"""Tangent-vector algebra.

A tangent vector ``d`` holds one array per trainable parameter, keyed by parameter path
(see ``tangent.selection``). ``TangentVector`` is a pytree (so ``jax.grad``, ``vmap``,
``jit`` and optax see its arrays) with ``+``, ``-``, scalar ``*`` and ``/``, ``dot`` and
``norm``. The functions below work on any pytree, ``TangentVector`` or not.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp


def dot(a, b) -> jax.Array:
    """``<a, b> = sum_leaves sum(a * b)`` in float32."""
    leaves = jax.tree.leaves(jax.tree.map(
        lambda x, y: jnp.sum(x.astype(jnp.float32) * y.astype(jnp.float32)), a, b))
    return sum(leaves, jnp.zeros((), jnp.float32))


def norm(a) -> jax.Array:
    """Euclidean norm ``sqrt(<a, a>)`` over all leaves."""
    return jnp.sqrt(dot(a, a))


def weighted_sum(vectors: Sequence, weights: Sequence) -> object:
    """``sum_i weights[i] * vectors[i]`` (same structure as each vector)."""
    if len(vectors) != len(weights) or not vectors:
        raise ValueError(
            f"vectors and weights must be non-empty and of equal length; got {len(vectors)} "
            f"vectors and {len(weights)} weights")
    total = jax.tree.map(lambda x: weights[0] * x, vectors[0])
    for w, v in zip(weights[1:], vectors[1:]):
        total = jax.tree.map(lambda t, x, w=w: t + w * x, total, v)
    return total


@jax.tree_util.register_pytree_with_keys_class
class TangentVector(Mapping):
    """A mapping ``path -> array`` over the trainable parameters, with vector-space operations."""

    def __init__(self, arrays: Mapping[str, jax.Array]):
        self._arrays = dict(arrays)

    # Mapping interface.
    def __getitem__(self, path: str):
        return self._arrays[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(getattr(v, 'shape', ()))}" for k, v in self._arrays.items())
        return f"TangentVector({{{shapes}}})"

    # Pytree interface: children sorted by path, so equal path sets give equal structures.
    def tree_flatten_with_keys(self):
        keys = tuple(sorted(self._arrays))
        return [(jax.tree_util.DictKey(k), self._arrays[k]) for k in keys], keys

    @classmethod
    def tree_unflatten(cls, keys, children):
        return cls(dict(zip(keys, children)))

    # Vector space.
    def _check(self, other) -> None:
        if not isinstance(other, Mapping) or set(other) != set(self._arrays):
            raise ValueError("tangent vectors must hold the same parameter paths to be combined")

    def __add__(self, other):
        self._check(other)
        return TangentVector({k: v + other[k] for k, v in self._arrays.items()})

    def __sub__(self, other):
        self._check(other)
        return TangentVector({k: v - other[k] for k, v in self._arrays.items()})

    def __neg__(self):
        return TangentVector({k: -v for k, v in self._arrays.items()})

    def __mul__(self, scalar):
        if isinstance(scalar, Mapping):
            raise ValueError("use dot(a, b) for the inner product of two tangent vectors")
        return TangentVector({k: scalar * v for k, v in self._arrays.items()})

    __rmul__ = __mul__

    def __truediv__(self, scalar):
        return TangentVector({k: v / scalar for k, v in self._arrays.items()})

    def dot(self, other) -> jax.Array:
        self._check(other)
        return dot(self, TangentVector(other))

    def norm(self) -> jax.Array:
        return norm(self)


def stack(vectors: Sequence):
    """Stack K vectors of one structure into one with a leading components axis (K, ...)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *vectors)


def unstack(stacked) -> list:
    """Inverse of ``stack``: the K vectors along the leading axis."""
    k = jax.tree.leaves(stacked)[0].shape[0]
    return [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(k)]
