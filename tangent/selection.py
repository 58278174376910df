"""Choosing the trainable (linearized) subset of a parameter tree by path.

A parameter's path is its key path in the pytree joined by ``/``, e.g.
``params/Transformer/encoderblock_11/MlpBlock_0/Dense_0/kernel``. ``trainable`` is one of
``None`` (every leaf), a regular expression (``re.search`` on the path), a sequence of
regular expressions (any may match) or a predicate ``path -> bool``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import jax

Selector = None | str | Sequence[str] | Callable[[str], bool]


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(key_path) -> str:
    """The ``/``-joined string of a ``jax.tree_util`` key path."""
    return "/".join(_key_name(k) for k in key_path)


def paths(tree) -> list[str]:
    """The path of every leaf of ``tree``, in ``jax.tree_util`` flattening order."""
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def predicate(trainable: Selector) -> Callable[[str], bool]:
    """``trainable`` (see the module docstring) as a predicate on paths."""
    if trainable is None:
        return lambda path: True
    if isinstance(trainable, str):
        pattern = re.compile(trainable)
        return lambda path: pattern.search(path) is not None
    if callable(trainable):
        return trainable
    if isinstance(trainable, Sequence) and all(isinstance(t, str) for t in trainable):
        patterns = [re.compile(t) for t in trainable]
        return lambda path: any(p.search(path) for p in patterns)
    raise ValueError(
        f"trainable must be None, a regex string, a sequence of regex strings or a predicate "
        f"path -> bool; got {type(trainable).__name__}"
    )


def select(tree, trainable: Selector) -> tuple[str, ...]:
    """Paths of the leaves of ``tree`` chosen by ``trainable``; ValueError if none is chosen."""
    keep = predicate(trainable)
    chosen = tuple(p for p in paths(tree) if keep(p))
    if not chosen:
        some = ", ".join(paths(tree)[:6])
        raise ValueError(f"trainable={trainable!r} selects no parameter; paths look like: {some}, ...")
    return chosen


def taft(tree, k: int, *, block: str = r"encoderblock_(\d+)",
         extra: Sequence[str] = ("encoder_norm", "head")) -> str:
    """Regex selecting the last ``k`` blocks and the ``extra`` modules (TAFT-k).

    ``block`` is a regex for one path segment with one group capturing the block index
    (default: big_vision ViT names; ``r"layers_(\\d+)"`` fits Linen's automatic names). The
    number of blocks is read from ``tree``. Segments match whole, so ``head`` never
    matches ``MultiHeadDotProductAttention_0``.
    """
    if r"(\d+)" not in block:
        raise ValueError(f"block={block!r} must contain the group (\\d+) capturing the block index")
    pattern = re.compile(rf"(?:^|/){block}(?:/|$)")
    indices = sorted({int(m.group(1)) for p in paths(tree) if (m := pattern.search(p))})
    if not indices:
        raise ValueError(f"block={block!r} matches no path segment of the parameter tree")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= len(indices):
        raise ValueError(f"k must be an integer in [0, {len(indices)}] (the number of blocks); got {k!r}")
    chosen = indices[len(indices) - k:]
    parts = [block.replace(r"(\d+)", str(i)) for i in chosen] + [re.escape(e) for e in extra]
    if not parts:
        raise ValueError("taft with k=0 and no extra modules selects nothing")
    return r"(?:^|/)(?:" + "|".join(parts) + r")(?:/|$)"
